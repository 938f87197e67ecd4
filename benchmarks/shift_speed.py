"""Seconds per pair of measured shifts, and the ratio to the floor.

Floor = one plain forward+backward pass on the pair plus one plain forward pass over all
probes, in the same measurement dtype, timed in this same process.
"""

import copy
import time

import torch

from _world import demo_world, padded_batches

N_PAIRS = 20


def main() -> None:
    from smda_core.api import fit_policy, measure_probes, measure_shifts, read_pairs
    from smda_core.model.chat import encode_pair
    from smda_core.model.training import sft_batch, sft_loss

    world = demo_world()
    policy = fit_policy(measure_probes(world, progress=False), world.config.policy)
    pairs = read_pairs(world.sources, world.probes, world.config).slice(0, N_PAIRS)
    settings = world.config.shifts
    t0 = time.perf_counter()
    shifts = measure_shifts(world, policy, pairs, progress=False)
    per_pair = (time.perf_counter() - t0) / N_PAIRS

    model = copy.deepcopy(world.model).to(getattr(torch, settings.dtype))
    pad, bs = world.tokenizer.pad_token_id, settings.batch_size
    opening = world.refusal_openings[0][0]  # the probes are scored with one branch token appended
    batches = padded_batches([list(p.input_ids) + [opening] for p in world.encoded], pad, bs)
    encoded = [encode_pair(world.tokenizer, p, r) for p, r in zip(pairs["prompt"].to_pylist(), pairs["response"].to_pylist())]
    t0 = time.perf_counter()
    for ids, n_prompt in encoded:
        sft_loss(model, sft_batch([(ids, n_prompt)], pad)).backward()
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b_ids, b_mask in batches:
                model(input_ids=b_ids, attention_mask=b_mask)
    floor = (time.perf_counter() - t0) / N_PAIRS
    print(f"pairs={N_PAIRS} probes={len(world.encoded)} dtype={settings.dtype} optimizer={settings.optimizer} steps={settings.steps}")
    print(f"measured shifts: {per_pair:.3f} s/pair (median in-loop {float(sorted(shifts.seconds)[N_PAIRS // 2]):.3f})   "
          f"floor: {floor:.3f} s/pair   ratio: {per_pair / floor:.2f}")


if __name__ == "__main__":
    main()
