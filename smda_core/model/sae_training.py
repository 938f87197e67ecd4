"""Train a sae-lens TopK SAE on residual-stream activations (the demo's SAE, and `smda sae train`).

The trainer only sees an iterator of activation chunks (like sae-lens's DataProvider), so it
does not care where the activations come from.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from smda_core.config import SAETrainingSettings
from smda_core.hashing import path_hash


@dataclass(frozen=True)
class SAEReport:
    """How good the SAE is: sparsity (L0), faithfulness (explained variance), dead-feature share."""

    l0: float
    explained_variance: float
    dead_share: float
    d_in: int
    d_sae: int
    k: int
    n_tokens: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _new_sae(d_in: int, d_sae: int, k: int, hook_name: str, model_name: str):
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu",
                        apply_b_dec_to_input=True, metadata=SAEMetadata(hook_name=hook_name, model_name=model_name))
    return TopKSAE(cfg)


def train_topk_sae(acts: torch.Tensor, *, d_sae: int, k: int, hook_name: str, model_name: str,
                   steps: int = 3000, batch_size: int = 1024, lr: float = 2e-3, seed: int = 0,
                   progress: bool = True):
    """Fit a TopK SAE to `acts` (n_tokens, d_in) by minimising reconstruction MSE with Adam.

    The decoder starts as the transposed encoder with unit-norm rows and b_dec at the data
    median-ish mean, the usual recipe that keeps dead features rare.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    acts = acts.float()
    n, d_in = acts.shape
    sae = _new_sae(d_in, d_sae, k, hook_name, model_name)
    with torch.no_grad():
        w = torch.randn(d_in, d_sae, generator=gen)
        w = w / w.norm(dim=0, keepdim=True)
        sae.W_enc.copy_(w * 0.5)
        sae.W_dec.copy_(w.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(acts.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (steps - s) / (0.2 * steps)))
    for step in tqdm(range(steps), desc="train SAE", disable=not progress, mininterval=1.0):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x = acts[idx]
        recon = sae.decode(sae.encode(x))
        loss = (recon - x).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # keep decoder rows unit-norm so activations carry the scale
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
    sae.eval()
    return sae, evaluate_sae(sae, iter([acts]))


@torch.no_grad()
def evaluate_sae(sae, chunks: Iterator[torch.Tensor]) -> SAEReport:
    """L0, explained variance (1 − SSE/SST over all tokens) and share of never-active features."""
    sse = 0.0
    total_sq = 0.0
    total_sum = None
    n = 0
    l0_sum = 0.0
    fired = None
    for x in chunks:
        x = x.to(sae.W_enc.dtype)
        f = sae.encode(x)
        recon = sae.decode(f)
        sse += float((recon - x).pow(2).sum())
        total_sq += float(x.pow(2).sum())
        s = x.sum(0)
        total_sum = s if total_sum is None else total_sum + s
        n += x.shape[0]
        active = f > 0
        l0_sum += float(active.sum())
        fired = active.any(0) if fired is None else fired | active.any(0)
    sst = total_sq - float((total_sum ** 2).sum()) / n
    return SAEReport(l0=l0_sum / n, explained_variance=1.0 - sse / sst, dead_share=float((~fired).float().mean()),
                     d_in=int(sae.cfg.d_in), d_sae=int(sae.cfg.d_sae), k=int(getattr(sae.cfg, "k", 0)), n_tokens=n)


# ---------------------------------------------------------------------------------------------
# `smda sae train`: an SAE for any HF causal LM from a corpus, streamed in activation chunks.
# ---------------------------------------------------------------------------------------------

TRAINER_VERSION = 1



def _encode_corpus(tokenizer, rows: list[dict], max_tokens: int) -> list[list[int]]:
    """Token ids per corpus row: chat-formatted prompt + response, or plain `text`."""
    from smda_core.model.chat import encode_pair, encode_prompt

    out = []
    for i, r in enumerate(rows):
        if "prompt" in r and r.get("response"):
            ids, _ = encode_pair(tokenizer, r["prompt"], r["response"], name=f"corpus row {i}", max_tokens=10**6)
        elif "prompt" in r:
            ids = encode_prompt(tokenizer, r["prompt"], name=f"corpus row {i}", max_tokens=10**6).input_ids
        elif "text" in r:
            ids = tokenizer(r["text"], add_special_tokens=True)["input_ids"]
        else:
            raise ValueError(f"corpus row {i}: needs `prompt` + `response` or `text`")
        out.append(list(ids[:max_tokens]))
    return out


def _shared_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix every sequence shares (BOS, chat template, system prompt)."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for j in range(n):
        if any(s[j] != first[j] for s in seqs):
            return j
    return n


def first_read_position(seqs: list[list[int]], skip_template_prefix: bool) -> int:
    """First position whose residual is used: after the shared prefix, whose residuals are the same
    vector in every sequence (and the attention sink at position 0, whose norm dwarfs the rest)."""
    return max(1, _shared_prefix(seqs)) if skip_template_prefix else 1


class _StopForward(Exception):
    pass


@torch.no_grad()
def residual_batches(model, seqs: list[list[int]], layer: int, start_pos: int, pad_id: int, batch_size: int = 16):
    """Yield (index of the next sequence, residual vectors after block `layer`) batch by batch.

    The forward pass stops at the hooked block: the upper blocks and the LM head are never run.
    """
    from smda_core.model.loading import decoder_layers
    from smda_core.model.training import pad_sequences

    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, output):
        store["h"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    device = next(model.parameters()).device
    try:
        for s in range(0, len(seqs), batch_size):
            batch = seqs[s: s + batch_size]
            ids, mask, _ = pad_sequences(batch, pad_id)
            try:
                model(input_ids=ids.to(device), attention_mask=mask.to(device))
            except _StopForward:
                pass
            keep = mask.bool().clone()
            keep[:, :start_pos] = False
            yield s + len(batch), store["h"][keep.to(store["h"].device)].float().cpu()
    finally:
        handle.remove()


class ActivationStore:
    """Residual activations on disk in chunks (`chunk_00000.pt`, …): collected once, read one at a time.

    Chunk 0 holds the held-out evaluation tokens (the first sequences of the shuffled corpus).
    Collection resumes after the last complete chunk.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def chunks(self) -> list[Path]:
        return sorted(self.root.glob("chunk_*.pt"))

    def complete(self) -> bool:
        return self.manifest.exists()

    def collect(self, model, seqs: list[list[int]], spec: SAETrainingSettings, pad_id: int, progress: bool = True) -> dict:
        import json

        if self.complete():
            return json.loads(self.manifest.read_text())
        start_pos = first_read_position(seqs, spec.skip_template_prefix)
        done = self.chunks()
        next_seq, n_tok = 0, 0
        if done:
            last = torch.load(done[-1], weights_only=True)
            next_seq, n_tok = int(last["next_seq"]), int(last["n_total"])
        target = spec.n_tokens + spec.eval_tokens
        buf: list[torch.Tensor] = []
        buf_n = 0
        idx = len(done)
        bar = tqdm(total=target, initial=n_tok, desc="collect activations", disable=not progress, mininterval=1.0, unit="tok")
        gen = residual_batches(model, seqs[next_seq:], spec.hook_layer, start_pos, pad_id)
        for consumed, h in gen:
            buf.append(h)
            buf_n += h.shape[0]
            bar.update(h.shape[0])
            limit = spec.eval_tokens if idx == 0 else spec.chunk_tokens
            if buf_n >= limit or n_tok + buf_n >= target or next_seq + consumed == len(seqs):
                n_tok += buf_n
                self._write(idx, torch.cat(buf), next_seq + consumed, n_tok)
                idx, buf, buf_n = idx + 1, [], 0
                if n_tok >= target:
                    break
        gen.close()
        bar.close()
        if idx < 2:
            raise ValueError(f"corpus too small: {n_tok} activation tokens, need more than eval_tokens={spec.eval_tokens}")
        info = {"n_tokens_train": n_tok - int(torch.load(self.chunks()[0], weights_only=True)["acts"].shape[0]),
                "n_chunks": idx, "start_position": start_pos, "n_sequences_used": min(len(seqs), next_seq + consumed),
                "corpus_exhausted": n_tok < target}
        self.manifest.write_text(json.dumps(info, indent=2))
        return info

    def _write(self, idx: int, acts: torch.Tensor, next_seq: int, n_total: int) -> None:
        path = self.root / f"chunk_{idx:05d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"acts": acts.contiguous(), "next_seq": next_seq, "n_total": n_total}, tmp)
        tmp.rename(path)

    def load(self, idx: int) -> torch.Tensor:
        return torch.load(self.chunks()[idx], weights_only=True)["acts"]

    def eval_chunk(self) -> torch.Tensor:
        return self.load(0)

    def n_train_chunks(self) -> int:
        return len(self.chunks()) - 1


def _batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    acts = pre.relu()
    flat = acts.flatten()
    top = torch.topk(flat, k * pre.shape[0])
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)


class _Trainable(torch.nn.Module):
    """The SAE's parameters in training: a per-architecture activation, unit-norm decoder rows."""

    def __init__(self, d_in: int, spec: SAETrainingSettings, mean: torch.Tensor, gen: torch.Generator):
        super().__init__()
        w = torch.randn(d_in, spec.d_sae, generator=gen)
        w = w / w.norm(dim=0, keepdim=True)
        self.W_enc = torch.nn.Parameter(w * 0.5)
        self.W_dec = torch.nn.Parameter(w.T.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(spec.d_sae))
        self.b_dec = torch.nn.Parameter(mean.clone())
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.spec = spec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        arch = self.spec.architecture
        if arch == "topk":
            vals, idx = torch.topk(pre, self.spec.k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        elif arch == "batchtopk":
            f = _batch_topk(pre, self.spec.k)
            with torch.no_grad():
                pos = f[f > 0]
                if pos.numel():
                    self.threshold.mul_(0.99).add_(0.01 * pos.min().double())
        else:
            f = pre.relu()
        return f, f @ self.W_dec + self.b_dec


def _to_sae_lens(t: _Trainable, scale: float, hook_name: str, model_name: str):
    """The trained weights as a sae-lens inference SAE, with the input scale folded in."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = t.W_enc.shape
    common = dict(d_in=int(d_in), d_sae=int(d_sae), dtype="float32", device="cpu", apply_b_dec_to_input=True,
                  metadata=SAEMetadata(hook_name=hook_name, model_name=model_name))
    arch = t.spec.architecture
    if arch == "topk":
        sae = TopKSAE(TopKSAEConfig(k=t.spec.k, **common))
    elif arch == "batchtopk":
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    else:
        sae = StandardSAE(StandardSAEConfig(**common))
    with torch.no_grad():  # x·scale is what the SAE was trained on: fold the scale into the weights
        sae.W_enc.copy_(t.W_enc * scale)
        sae.b_enc.copy_(t.b_enc)
        sae.W_dec.copy_(t.W_dec / scale)
        sae.b_dec.copy_(t.b_dec / scale)
        if arch == "batchtopk":
            sae.threshold.copy_(torch.full((int(d_sae),), float(t.threshold)))
    return sae.eval()



def sae_cache_key(model_path: str | Path, rows: list[dict], spec: SAETrainingSettings) -> str:
    """Hash of the inputs: model files, corpus content, training spec, trainer version."""
    import hashlib
    import json

    payload = json.dumps({"model": path_hash(model_path) if Path(model_path).is_dir() else str(model_path),
                          "corpus": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest(),
                          "spec": spec.identity(), "version": TRAINER_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


class TrainingPaused(Exception):
    """Raised by `train_sae_on_model(stop_after=N)` after checkpointing at step N; call again to resume."""


def train_sae_on_model(model_path: str | Path, rows: list[dict], spec: SAETrainingSettings, cache_dir: str | Path, *,
                       model=None, tokenizer=None, progress: bool = True, stop_after: int | None = None) -> tuple[Path, dict]:
    """Train (or reuse) an SAE on the residual stream after block `spec.hook_layer` of an HF causal LM.

    Returns the sae-lens directory (`SAE.load_from_disk` loads it) and its report. Activations
    are streamed to disk in chunks and read back one chunk at a time, so memory stays flat;
    training checkpoints every `checkpoint_every` steps and resumes after an interruption
    (bit for bit: the batch order is part of the checkpoint). `stop_after=N` checkpoints at
    step N and raises TrainingPaused (a time-boxed run).
    """
    import json
    import os
    import random
    import shutil
    import time

    key = sae_cache_key(model_path, rows, spec)
    root = Path(cache_dir) / f"sae-{key}"
    out = root / "sae"
    if (root / "report.json").exists():
        return out, json.loads((root / "report.json").read_text())
    t0 = time.perf_counter()
    if model is None or tokenizer is None:
        from smda_core.model.loading import load_model

        model, tokenizer = load_model(str(model_path))
    rows = list(rows)
    random.Random(spec.seed).shuffle(rows)
    seqs = _encode_corpus(tokenizer, rows, spec.max_seq_tokens)
    store = ActivationStore(root / "activations")
    info = store.collect(model.eval(), seqs, spec, tokenizer.pad_token_id or 0, progress=progress)
    t_collect = time.perf_counter()

    gen = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    first = store.load(1)
    scale = float(math.sqrt(first.shape[1]) / first.norm(dim=1).mean())  # mean ‖x·scale‖ = √d_in
    trainable = _Trainable(first.shape[1], spec, first.mean(0) * scale, gen)
    opt = torch.optim.Adam(trainable.parameters(), lr=spec.lr)
    decay = max(1, int(0.2 * spec.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (spec.steps - s) / decay))
    ckpt = root / "checkpoint.pt"
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        trainable.load_state_dict(state["sae"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        step, scale = int(state["step"]), float(state["scale"])
    n_chunks = store.n_train_chunks()
    bar = tqdm(total=spec.steps, initial=step, desc="train SAE", disable=not progress, mininterval=1.0)
    chunk_id, acts, perm, pos = -1, None, None, 0
    if ckpt.exists() and state.get("chunk_id", -1) >= 1:
        chunk_id, perm, pos = int(state["chunk_id"]), state["perm"], int(state["pos"])
        acts = store.load(chunk_id) * scale
    while step < spec.steps:
        if acts is None or pos + spec.batch_size > len(perm):
            chunk_id = 1 + int(torch.randint(0, n_chunks, (1,), generator=gen))
            acts = store.load(chunk_id) * scale
            perm, pos = torch.randperm(acts.shape[0], generator=gen), 0
            if len(perm) < spec.batch_size:
                perm = perm.repeat(spec.batch_size // len(perm) + 1)
        x = acts[perm[pos: pos + spec.batch_size]]
        pos += spec.batch_size
        f, recon = trainable(x)
        loss = (recon - x).pow(2).sum(-1).mean()
        if spec.architecture == "standard":
            loss = loss + spec.l1_coefficient * (f * trainable.W_dec.norm(dim=1)).sum(-1).mean() / math.sqrt(x.shape[1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if spec.architecture != "standard":
            with torch.no_grad():
                trainable.W_dec.div_(trainable.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        step += 1
        bar.update(1)
        if (step % spec.checkpoint_every == 0 or step == stop_after) and step < spec.steps:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"sae": trainable.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": gen.get_state(), "step": step, "scale": scale, "chunk_id": chunk_id, "perm": perm,
                        "pos": pos}, tmp)
            tmp.rename(ckpt)
            if step == stop_after:
                bar.close()
                raise TrainingPaused(f"paused at step {step} of {spec.steps}; checkpoint {ckpt}")
    bar.close()
    hook_name = f"blocks.{spec.hook_layer}.hook_resid_post"
    sae = _to_sae_lens(trainable, scale, hook_name, str(model_path))
    report = evaluate_sae(sae, iter([store.eval_chunk()])).as_dict()
    report.update({"architecture": spec.architecture, "hook_name": hook_name, "n_tokens_train": info["n_tokens_train"],
                   "n_tokens_requested": spec.n_tokens, "corpus_exhausted": bool(info.get("corpus_exhausted", False)),
                   "n_tokens_eval": report.pop("n_tokens"), "start_position": info["start_position"],
                   "input_scale": scale, "steps": spec.steps, "key": key, "spec": spec.model_dump(mode="json"),
                   "seconds": {"collect": t_collect - t0, "train": time.perf_counter() - t_collect}})
    tmp = root / f"sae.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_model(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    (root / "report.json").write_text(json.dumps(report, indent=2))
    ckpt.unlink(missing_ok=True)
    return out, report


def short_corpus_warning(report: dict, n_tokens: int) -> str | None:
    """A sentence when the SAE saw fewer activation tokens than asked (the corpus ran out), else None.

    Training then repeats the tokens it has: the SAE may be over-fitted and its features fewer or noisier
    than the setting promises, which a user should hear about rather than find out.
    """
    got = int(report.get("n_tokens_train", n_tokens))
    # the held-out chunk can take a batch more than eval_tokens, so "fewer" alone is no sign; running out is
    if not report.get("corpus_exhausted", got < 0.9 * n_tokens):
        return None
    return (f"the corpus gave {got:,} training tokens of the {n_tokens:,} asked for (sae_training.n_tokens): the SAE "
            f"repeats them over its steps; add corpus files (--corpus) or lower --tokens")


def read_corpus(files) -> list[dict]:
    """Rows of JSONL corpus files: `prompt` (+ `response`) or `text`; other fields are ignored."""
    import json

    rows = []
    for f in files:
        for n, line in enumerate(Path(f).read_text().splitlines(), 1):
            if line.strip():
                r = json.loads(line)
                keep = {k: r[k] for k in ("prompt", "response", "text") if k in r}
                if not keep:
                    from smda_core.errors import InputError

                    raise InputError("a corpus row needs `prompt` (+ `response`) or `text`", path=f"{f}:{n}")
                rows.append(keep)
    return rows
