"""Staleness: each result's recorded data version against the one the config gives now.

The expected versions are plain hashes (smda_core.store.versions); the slow test builds a small
warehouse (the fixtures of test_incremental) and changes one setting at a time, never observing
the inputs: stale_report must see the change from the config alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smda_core.store import versions
from test_incremental import Setup, _write_jsonl, demo_rows, demo_sources  # noqa: F401  (fixtures)

POLICY = ["policy", "policy_fit", "feature_labels"]
PAIRS = ["pair_shifts", "pair_attribution", "pair_summary"]
READOUT = ["probes", "features", "behaviour_scores"]
UNVERSIONED = ["loaded_batches", "dataset_metadata", "views", "plots", "report"]


def _inputs(**changed) -> dict[str, str]:
    return {**{k: versions.combine(k) for k in versions.INPUTS}, **changed}


def test_expected_versions_follow_exactly_the_inputs_each_result_is_computed_from():
    base = versions.expected_versions(_inputs(), ["a-0000aaaa", "b-1111bbbb"])
    assert base[("probes", None)].value == versions.readout_version(_inputs())
    assert base[("policy", None)].value == versions.policy_version(_inputs())
    assert len({base[(a, None)].value for a in READOUT}) == 1 and len({base[(a, None)].value for a in POLICY}) == 1
    assert base[("pair_shifts", "a-0000aaaa")].value != base[("pair_shifts", "b-1111bbbb")].value  # per batch

    changes = {  # which results each input moves
        "policy_settings": set(POLICY) | set(PAIRS),
        "shift_settings": set(PAIRS),
        "probe_file": set(READOUT) | set(POLICY) | {"sft_pairs"} | set(PAIRS),
        "sae_files": set(READOUT) | set(POLICY) | set(PAIRS),
    }
    for name, moved in changes.items():
        other = versions.expected_versions(_inputs(**{name: "changed"}), ["a-0000aaaa", "b-1111bbbb"])
        assert {a for (a, b), v in other.items() if v.value != base[(a, b)].value} == moved, name

    # A result reports the recorded versions of the upstream results it loaded: pairs shifted with
    # an older policy do not have the version the current policy gives.
    old_policy = versions.expected_versions(_inputs(policy_settings="old"))[("policy", None)].value
    loaded = versions.asset_version("pair_shifts", _inputs(), "a-0000aaaa", upstream=lambda a, p: old_policy)
    assert loaded.parts["policy"] == old_policy and loaded.value != base[("pair_shifts", "a-0000aaaa")].value
    same = versions.asset_version("pair_shifts", _inputs(), "a-0000aaaa",
                                  upstream=lambda a, p: base[("policy", None)].value)
    assert same == base[("pair_shifts", "a-0000aaaa")]
    with pytest.raises(ValueError, match="per SFT batch"):
        versions.asset_version("pair_summary", _inputs())
    with pytest.raises(ValueError, match="no data version"):
        versions.asset_version("views", _inputs())


def _set(config: Path, base: str, extra: str = "") -> None:
    config.write_text(base + extra)


@pytest.mark.slow
def test_a_settings_change_makes_exactly_its_dependents_stale_without_observing_the_inputs(tmp_path, demo_rows):  # noqa: F811
    from smda_assets.definitions import defs
    from smda_assets.run import BATCH_KEYS, _run
    from smda_assets.staleness import stale_report

    probes, pairs = demo_rows
    s = Setup(tmp_path, probes[:60])
    _write_jsonl(s.inbox / "a.jsonl", pairs[0:2])
    _write_jsonl(s.inbox / "b.jsonl", pairs[2:4])
    assert not s.ingest().failed
    batches = sorted(s.instance.get_dynamic_partitions("sft_batches"))
    base = s.config.read_text()

    def report():
        return stale_report(defs, s.instance, smda=s.resource)

    def stale_names(r) -> set[str]:
        return {a for a, _ in r.keys("stale")}

    first = report()
    assert first.keys("stale") == [] and first.keys("missing") == [("curation_experiment", None)]

    _set(s.config, base, "policy:\n  seed: 1\n")  # only the policy settings
    r = report()
    assert stale_names(r) == set(POLICY) | set(PAIRS) | set(UNVERSIONED)
    assert all(r.of(a) == "fresh" for a in READOUT) and all(r.of("sft_pairs", b) == "fresh" for b in batches)
    assert all(r.of(a, b) == "stale" for a in PAIRS for b in batches)
    assert any(c.startswith("policy_settings") for c in r.causes[("policy", None)])
    assert any(c.startswith("policy_settings") for c in r.causes[("pair_shifts", batches[0])])  # the root cause
    assert "policy is stale" in r.causes[("pair_shifts", batches[0])]

    _set(s.config, base, "attribution:\n  intended_top: 4\n")  # only the shift (and attribution) settings
    r = report()
    assert stale_names(r) == set(PAIRS) | set(UNVERSIONED)
    assert any(c.startswith("shift_settings") for c in r.causes[("pair_shifts", batches[1])])

    _set(s.config, base)  # back as it was: the recorded versions are the expected ones again
    assert report().keys("stale") == []

    # Pairs shifted while the policy is stale record the policy they used: refitting it leaves them
    # stale (a version taken from the config alone would call them fresh now).
    _set(s.config, base, "policy:\n  seed: 1\n")
    assert _run(s.resource, s.instance, BATCH_KEYS, partition=batches[0]) is None  # with the old policy
    assert _run(s.resource, s.instance, POLICY) is None  # refitted
    r = report()
    assert all(r.of(a) == "fresh" for a in POLICY)
    assert all(r.of(a, b) == "stale" for a in PAIRS for b in batches)
    assert "policy: recomputed since this was computed" in r.causes[("pair_shifts", batches[0])]
    assert r.of("sft_pairs", batches[0]) == "fresh"

    result = s.ingest()
    assert not result.probe_side and result.ran == batches and not result.failed
    final = report()
    assert final.keys("stale") == [] and final.keys("missing") == [("curation_experiment", None)]

    # A new partition not yet computed is missing, and the loader that should load it is stale.
    s.instance.add_dynamic_partitions("sft_batches", ["c-00000000"])
    r = report()
    assert all(r.of(a, "c-00000000") == "missing" for a in ["sft_pairs", *PAIRS])
    assert r.of("loaded_batches") == "stale" and "sft_pairs[c-00000000] is missing" in r.causes[("loaded_batches", None)]
    assert stale_names(r) == set(UNVERSIONED)
