"""The one SFT training module: the loops that moved onto it train bit for bit as before.

Each `_old_*` function below is the training loop as it was before `smda_core.model.training`
existed, copied verbatim and frozen here as the reference. A tiny random Llama is trained
with the frozen copy and with today's code from the same weights, and the final weights
must be equal exactly (torch.equal), as must the losses that reach a report.
"""

from __future__ import annotations

import ast
import copy
import math
import random
from pathlib import Path

import pytest
import torch

from smda_core.model import training
from smda_core.model.chat import encode_pair

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = ["how do i bake bread", "tell me how to pick a lock", "what is the capital of france", "write a poem about rain",
           "how do i make a weapon", "explain photosynthesis simply", "give me a recipe for soup", "how to hack a bank"]
RESPONSES = ["mix flour water and yeast then bake", "i cannot help with that request", "paris is the capital",
             "rain falls softly on the roof all night", "i refuse to help with weapons", "plants turn light into sugar",
             "boil vegetables in water with salt", "i cannot help with hacking"]


# ------------------------------------------------------------------ frozen references (old code)


def _old_sft_loss(model, ids: list[int], n_prompt: int) -> torch.Tensor:
    input_ids = torch.tensor([ids], device=next(model.parameters()).device)
    logits = model(input_ids=input_ids).logits[0]
    return torch.nn.functional.cross_entropy(logits[n_prompt - 1: len(ids) - 1], input_ids[0, n_prompt:])


def _old_optimizer(params, s):
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=0.0, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    raise ValueError(s.optimizer)


def _old_apply_pair_update(model, ids: list[int], n_prompt: int, settings) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _old_optimizer(params, settings)
    loss_val = float("nan")
    for _ in range(settings.steps):
        opt.zero_grad(set_to_none=True)
        loss = _old_sft_loss(model, ids, n_prompt)
        if not torch.isfinite(loss):
            raise ValueError(f"non-finite SFT loss {float(loss.detach())}")
        loss.backward()
        opt.step()
        loss_val = float(loss.detach())
    opt.zero_grad(set_to_none=True)
    return loss_val


def _old_retrain(model, tokenizer, pairs, settings):
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    tuned = copy.deepcopy(model)
    tuned.train()
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = (torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay) if settings.optimizer == "adamw"
           else torch.optim.SGD(params, lr=settings.lr, weight_decay=settings.weight_decay))
    data = [encode_pair(tokenizer, p, r, name="curation pair") for p, r in pairs]
    pad = tokenizer.pad_token_id
    steps = [(e, s) for e in range(settings.epochs) for s in range(0, len(data), settings.batch_size)]
    order = list(range(len(data)))
    for epoch, start in steps:
        if start == 0:
            rng.shuffle(order)
        batch = [data[i] for i in order[start: start + settings.batch_size]]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.full_like(ids, -100)
        for r, (seq, n_prompt) in enumerate(batch):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            target[r, n_prompt: len(seq)] = torch.tensor(seq[n_prompt:])
        logits = tuned(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1),
                                                 ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    tuned.eval()
    return tuned


def _old_batch(data, pad_id):
    width = max(len(ids) for ids, _ in data)
    ids = torch.full((len(data), width), pad_id, dtype=torch.long)
    labels = torch.full((len(data), width), -100, dtype=torch.long)
    mask = torch.zeros((len(data), width), dtype=torch.long)
    for r, (seq, n_prompt) in enumerate(data):
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        labels[r, n_prompt: len(seq)] = torch.tensor(seq[n_prompt:])
    return ids, mask, labels


def _old_safety_finetune(model, tokenizer, corpus, spec):
    from smda_core.model.loading import decoder_layers

    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    data = [encode_pair(tokenizer, c["prompt"], c["response"], name=f"corpus row {i}") for i, c in enumerate(corpus)]
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in list(decoder_layers(model))[spec.train_from_layer:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    norm = getattr(getattr(model, "model", model), "norm", None)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    warm = max(1, spec.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * s / spec.steps))))
    order: list[int] = []
    losses = []
    model.train()
    for _ in range(spec.steps):
        if len(order) < spec.batch_size:
            order += rng.sample(range(len(data)), len(data))
        take, order = order[: spec.batch_size], order[spec.batch_size:]
        ids, mask, labels = _old_batch([data[i] for i in take], tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


def _old_train_model(model, data, *, seed: int, steps: int, batch_size: int, pad_id: int) -> float:
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.98))
    warm = steps // 20
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * s / steps))))
    model.train()
    loss_val = float("nan")
    for step in range(steps):
        batch = [data[rng.randrange(len(data))] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for r, (seq, n_prompt) in enumerate(batch):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            labels[r, n_prompt: len(seq)] = torch.tensor(seq[n_prompt:])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_val = float(loss.detach())
    model.eval()
    return loss_val


def _old_peer_train_tensors(enc, pad):
    width = max(len(ids) for ids, _ in enc)
    train_ids = torch.full((len(enc), width), pad)
    train_labels = torch.full((len(enc), width), -100)
    for i, (ids, n_prompt) in enumerate(enc):
        train_ids[i, : len(ids)] = torch.tensor(ids)
        train_labels[i, n_prompt: len(ids)] = torch.tensor(ids[n_prompt:])
    return train_ids, train_labels


def _old_peer_loss(model, params, data):
    ids, labels = data
    logits = torch.func.functional_call(model, params, (ids.unsqueeze(0),)).logits[0]
    return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100)


# ------------------------------------------------------------------ a tiny world


@pytest.fixture(scope="module")
def tiny():
    """A demo-style word-level tokenizer and a 2-block Llama (hidden 32) with random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from smda_core.worlds.demo.build import _tokenizer

    tok = _tokenizer([p + " " + r for p, r in zip(PROMPTS, RESPONSES)])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=max(tok.get_vocab().values()) + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=96, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      initializer_range=0.1)  # large enough gradients that clipping at norm 1 bites
    model = LlamaForCausalLM(cfg).eval()
    data = [encode_pair(tok, p, r) for p, r in zip(PROMPTS, RESPONSES)]
    assert len({len(s) for s, _ in data}) > 1  # batches really are padded
    return model, tok, data


@pytest.fixture
def grad_norms(monkeypatch):
    """The gradient norms seen by clip_grad_norm_ (old and new code alike), to show that clipping bites."""
    seen: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(*args, **kwargs):
        norm = clip(*args, **kwargs)
        seen.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    return seen


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"weights differ: {differ}"


def _assert_moved(before, after):
    assert any(not torch.equal(before.state_dict()[k], v) for k, v in after.state_dict().items()), "training did nothing"


# ------------------------------------------------------------------ bit-identity of every loop


def test_demo_model_training_is_bit_identical_to_the_old_loop(tiny, grad_norms):
    from smda_core.worlds.demo.build import _train_model

    model, tok, data = tiny
    old, new = copy.deepcopy(model), copy.deepcopy(model)
    old_loss = _old_train_model(old, data, seed=3, steps=40, batch_size=5, pad_id=tok.pad_token_id)
    new_loss = _train_model(new, data, seed=3, steps=40, batch_size=5, pad_id=tok.pad_token_id, progress=False)
    _assert_moved(model, new)
    _assert_same_weights(old, new)
    assert new_loss == old_loss  # the build report's final_train_loss
    assert len(grad_norms) == 80 and max(grad_norms) > 1.0
    assert new.training == old.training


def test_curation_retrain_is_bit_identical_to_the_old_loop(tiny):
    from smda_core.config import CurationSettings as RetrainSettings
    from smda_core.experiments.curation import retrain

    model, tok, _ = tiny
    pairs = list(zip(PROMPTS, RESPONSES))
    for settings in (RetrainSettings(epochs=2, batch_size=3, lr=1e-2, seed=5),
                     RetrainSettings(epochs=1, batch_size=4, lr=1e-1, optimizer="sgd", weight_decay=0.01, seed=1)):
        old = _old_retrain(model, tok, pairs, settings)
        new = retrain(model, tok, pairs, settings)
        _assert_moved(model, new)
        _assert_same_weights(old, new)


def test_safety_finetune_is_bit_identical_to_the_old_loop(tiny, grad_norms):
    from smda_core.worlds.real.finetune import FinetuneSpec, safety_finetune

    model, tok, _ = tiny
    corpus = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)]
    spec = FinetuneSpec(steps=12, batch_size=3, lr=1e-2, train_from_layer=1, seed=2)
    old, new = copy.deepcopy(model), copy.deepcopy(model)
    old_losses = _old_safety_finetune(old, tok, corpus, spec)
    new_losses = safety_finetune(new, tok, corpus, spec, progress=False)
    _assert_moved(model, new)
    _assert_same_weights(old, new)
    assert new_losses == old_losses  # the fine-tune report's first and final loss
    assert len(grad_norms) == 24 and max(grad_norms) > 1.0
    assert all(p.requires_grad for p in new.parameters())


@pytest.mark.parametrize("optimizer,steps,lr", [("sgd", 1, 1e-2), ("adamw", 3, 1e-3)])
def test_one_pair_update_in_float64_is_bit_identical_to_the_old_step(tiny, optimizer, steps, lr):
    from smda_core.config import ShiftSettings
    from smda_core.model.shifts import apply_pair_update

    model, _, data = tiny
    settings = ShiftSettings(optimizer=optimizer, steps=steps, lr=lr)
    base = copy.deepcopy(model).double()
    old, new = copy.deepcopy(base), copy.deepcopy(base)
    ids, n_prompt = data[1]
    old_loss = _old_apply_pair_update(old, ids, n_prompt, settings)
    new_loss = apply_pair_update(new, ids, n_prompt, settings)
    _assert_moved(base, new)
    _assert_same_weights(old, new)
    assert new_loss == pytest.approx(old_loss, rel=1e-14, abs=0)  # same terms, summed in another grouping
    assert all(p.grad is None for p in new.parameters())
    with torch.no_grad():  # and so the same ΔY: the logits after the step agree exactly
        x = torch.tensor([data[0][0]])
        assert torch.equal(old(input_ids=x).logits, new(input_ids=x).logits)


def test_the_loss_is_transformers_loss_in_float32_and_stays_float64_in_float64(tiny):
    model, tok, data = tiny
    batch = training.sft_batch(data[:5], tok.pad_token_id)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
    assert torch.equal(training.response_ce(out.logits, batch.labels), out.loss)
    m64 = copy.deepcopy(model).double()
    loss64 = training.sft_loss(m64, batch).detach()
    assert loss64.dtype == torch.float64
    assert float(loss64) == pytest.approx(float(out.loss.detach()), rel=1e-5)
    # one row, no padding: the mean over the response tokens, as DESIGN §4 writes it
    ids, n_prompt = data[2]
    with torch.no_grad():
        logits = m64(input_ids=torch.tensor([ids])).logits[0]
        one = training.sft_loss(m64, training.sft_batch([data[2]], tok.pad_token_id))
    by_hand = torch.nn.functional.cross_entropy(logits[n_prompt - 1: len(ids) - 1], torch.tensor(ids[n_prompt:]))
    assert float(one) == pytest.approx(float(by_hand), rel=1e-13)


def test_peer_per_pair_gradients_are_unchanged(tiny):
    """dattri's TracIn takes per-example gradients of the peer's loss: the shared loss gives the same bits."""
    model, tok, data = tiny
    m = copy.deepcopy(model)
    old_ids, old_labels = _old_peer_train_tensors(data, tok.pad_token_id)
    batch = training.sft_batch(data, tok.pad_token_id)
    assert torch.equal(batch.input_ids, old_ids) and torch.equal(batch.labels, old_labels)
    params = {k: v.detach() for k, v in m.named_parameters()}

    def new_loss(p, d):
        ids, labels = d
        return training.response_ce(torch.func.functional_call(m, p, (ids.unsqueeze(0),)).logits[0], labels)

    for i in range(len(data)):
        g_old = torch.func.grad(lambda p: _old_peer_loss(m, p, (old_ids[i], old_labels[i])))(params)
        g_new = torch.func.grad(lambda p: new_loss(p, (old_ids[i], old_labels[i])))(params)
        assert all(torch.equal(g_old[k], g_new[k]) for k in params), i


# ------------------------------------------------------------------ padding and the one place that steps


def test_padding_right_and_left():
    p = training.pad_sequences([[5, 6, 7], [8]], 0)
    assert p.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]] and p.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert p.offsets == [0, 0]
    p = training.pad_sequences([[5, 6, 7], [8]], 0, side="left")
    assert p.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]] and p.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert p.offsets == [0, 2]
    b = training.sft_batch([([1, 2, 3, 4], 2), ([5, 6, 7], 1)], 0)
    assert b.labels.tolist() == [[-100, -100, 3, 4], [-100, 6, 7, -100]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_optimizer_factory_and_schedule():
    w = [torch.nn.Parameter(torch.zeros(2))]
    sgd = training.make_optimizer(w, "sgd", lr=0.1)
    assert sgd.defaults["momentum"] == 0.0 and sgd.defaults["weight_decay"] == 0.0
    adamw = training.make_optimizer(w, "adamw", lr=0.1, weight_decay=0.01, betas=(0.9, 0.98))
    assert adamw.defaults["betas"] == (0.9, 0.98) and adamw.defaults["weight_decay"] == 0.01
    from smda_core.errors import SMDAError

    with pytest.raises(SMDAError, match="shifts.optimizer 'adam' is unknown"):
        training.make_optimizer(w, "adam", lr=0.1, what="shifts.optimizer")
    sched = training.warmup_cosine(training.make_optimizer(w, "sgd", lr=1.0), 2, 10)
    assert sched.lr_lambdas[0](0) == 0.5  # warm-up
    assert sched.lr_lambdas[0](1) == 0.5 * (1 + math.cos(math.pi * 0.1))  # then the cosine
    assert sched.lr_lambdas[0](9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))


def _backward_callers() -> set[str]:
    found = set()
    for path in sorted((ROOT / "smda_core").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "backward"
               for n in ast.walk(tree)):
            found.add(path.relative_to(ROOT).as_posix())
    return found


def test_only_the_training_module_steps_sft():
    """SFT steps happen in one module; the SAE trainer has its own (reconstruction) loss."""
    assert _backward_callers() <= {"smda_core/model/training.py", "smda_core/model/sae_training.py"}
    assert "smda_core/model/training.py" in _backward_callers()
