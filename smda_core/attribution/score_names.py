"""The names of the pair scores in `v_pair_summary`, in one place: every list of scores the product uses
(separation, stability, tier agreement, curation) is built from these.

`score` is the recommended one (the config's `attribution.score`, copied under its own name too).
"""

LOGODDS = ("margin_shift", "local_shift", "worst_group_shift", "specific_shift", "harm_shift")
"""Computed from the re-measured log-odds of refusal over the probes (DESIGN §4 "Log-odds scores")."""

COMBINED = ("keep_score",)
"""The worse of a pair's measured harm (`harm_shift`) and its contradiction of the policy (`screen_consistency`)."""

DEFAULT = "keep_score"
"""The recommended score unless the config names another (`attribution.score`)."""

KIND_FREE = ("score", *COMBINED, *LOGODDS, "screen_consistency")
"""Higher = a better pair to keep, whatever the prompt; none reads a pair's kind, label or category."""

PAPER = ("alignment_refit", "alignment_linear")
"""The paper's alignment under each Δβ estimate; `alignment` is the primary estimate's."""

BY_PROMPT_KIND = ("correctness_shift", "dy_harmful", "dy_harmless")
"""Read with the pair's prompt kind in mind (their good direction depends on it)."""

ALL = (*KIND_FREE, *PAPER, *BY_PROMPT_KIND)
"""Every score compared across pairs (separation, stability)."""

ONE_METHOD = (*KIND_FREE, "alignment", *BY_PROMPT_KIND)
"""Every score with alignment under one Δβ estimate (a tier that has one: the agreement of tiers)."""
