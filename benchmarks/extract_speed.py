"""Features + behaviour over a plain forward pass of the same batches (goal: ratio ≤ 1.15).

Both run in this process on the demo world's probes, same batch size, same padding, best
of several repeats; the plain pass is `model(input_ids, attention_mask)` and nothing else.
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
    from smda_core.runtime import read_probes

    world = demo_world()
    prompts, bs, pad = world.encoded, world.config.features.batch_size, world.tokenizer.pad_token_id
    batches = padded_batches([list(p.input_ids) for p in prompts], pad, bs)

    @torch.no_grad()
    def plain():
        for ids, mask in batches:
            world.model(input_ids=ids, attention_mask=mask)

    def full():
        read_probes(world.model, world.sae, world.hook_layer, prompts, world.refusal_openings, batch_size=bs,
                    pad_id=pad, position=world.config.features.position, progress=False)

    plain(), full()  # warm up
    t_plain, t_full = best_of(plain), best_of(full)
    print(f"probes={len(prompts)} batch_size={bs} position={world.config.features.position}")
    print(f"plain forward: {t_plain:.4f} s   features+behaviour: {t_full:.4f} s   ratio: {t_full / t_plain:.3f} (goal ≤ 1.15)")


if __name__ == "__main__":
    main()
