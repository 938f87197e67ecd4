"""Features + behaviour over a plain forward pass of the same batches (goal: ratio ≤ 1.15).

Both run in this process on the demo world's probes, same batch size, same padding, best
of several repeats; the plain pass is `model(input_ids, attention_mask)` and nothing else.
"Same batches" = the token sequences the extraction feeds the model: each prompt plus the
shared prefix of the refusal openings (one token for the demo's openings), needed to score
2-token openings by teacher forcing. The ratio against prompt-only batches is printed too.
"""

import time

import torch

from _world import demo_world, padded_batches


def best_of(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    from smda_core.model.readout import read_probes

    world = demo_world()
    prompts, bs, pad = world.encoded, world.config.features.batch_size, world.tokenizer.pad_token_id
    from smda_core.model.readout import _branches

    branch = list(_branches(world.refusal_openings)[0])
    batches = padded_batches([list(p.input_ids) + branch for p in prompts], pad, bs)
    prompt_only = padded_batches([list(p.input_ids) for p in prompts], pad, bs)

    @torch.no_grad()
    def plain(which=batches):
        for ids, mask in which:
            world.model(input_ids=ids, attention_mask=mask)

    def full():
        read_probes(world.model, world.sae, world.hook_layer, prompts, world.refusal_openings, batch_size=bs,
                    pad_id=pad, position=world.config.features.position, progress=False)

    plain(), full()  # warm up
    t_plain, t_full = best_of(plain), best_of(full)
    t_prompt = best_of(lambda: plain(prompt_only))
    print(f"probes={len(prompts)} batch_size={bs} position={world.config.features.position} branch tokens={len(branch)}")
    print(f"plain forward of the same batches: {t_plain:.4f} s   features+behaviour: {t_full:.4f} s   "
          f"ratio: {t_full / t_plain:.3f} (goal ≤ 1.15)")
    print(f"plain forward of the prompts alone: {t_prompt:.4f} s   ratio: {t_full / t_prompt:.3f}")


if __name__ == "__main__":
    main()
