"""One forward pass over prompts: SAE features at the read position and log P(opening) by teacher forcing.

A probe goes in as an `EncodedPrompt`; out come its SAE features at the configured position
and the log-probability of every refusal (and compliance) opening, in the same pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from smda_core.model.chat import EncodedPrompt
from smda_core.model.loading import capture_residual
from smda_core.model.training import pad_sequences


@dataclass
class Readout:
    """What one pass over the probes yields.

    Shapes: `logp_openings` (n, n_openings) log P(opening | prompt) for every opening given;
    `features` either sparse COO over all SAE features or dense (n, k) for chosen features;
    `hidden` (n, d) residual at the read position (pooled for mean) when asked.
    """

    logp_openings: np.ndarray
    coo_probe: np.ndarray | None = None
    coo_feature: np.ndarray | None = None
    coo_value: np.ndarray | None = None
    dense: np.ndarray | None = None
    hidden_tokens: list[torch.Tensor] = field(default_factory=list)


def _branches(openings: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Shortest set of continuations that, appended to a prompt, teacher-force every opening.

    An opening r needs r[:-1] after the prompt; a branch that extends another covers it.
    Openings sharing their first tokens (the demo's 'i cannot', 'i refuse') need one branch.
    """
    prefixes = sorted({tuple(o[:-1]) for o in openings}, key=len, reverse=True)
    kept: list[tuple[int, ...]] = []
    for p in prefixes:
        if not any(k[: len(p)] == p for k in kept):
            kept.append(p)
    return kept


def pool_features(acts: torch.Tensor, position: str) -> torch.Tensor:
    """Pool SAE activations (t, K) of the read tokens into one vector: mean, max, or the single token."""
    if position == "max":
        return acts.max(0).values
    return acts.mean(0)


@torch.no_grad()
def read_probes(model, sae, layer: int, prompts: Sequence[EncodedPrompt], openings: Sequence[tuple[int, ...]], *,
                position: str = "end_of_turn", batch_size: int = 64, pad_id: int = 0, padding_side: str = "right",
                feature_ids: np.ndarray | None = None, keep_hidden: bool = False, progress: bool = True,
                desc: str = "features+behaviour") -> Readout:
    """One forward pass per batch gives, for every probe, its SAE features and log P(opening).

    Each probe is extended by the openings' shared prefixes (`_branches`): with a causal
    model the prompt's positions are unchanged by what follows, so features are read from
    the first branch and every opening is scored by teacher forcing in the same pass.
    """
    branches = _branches(openings)
    covers = np.array([[br[: len(o) - 1] == tuple(o[:-1]) for o in openings] for br in branches], dtype=bool)
    span = max(len(o) for o in openings)
    device = next(model.parameters()).device
    sae_dtype = sae.W_enc.dtype
    n = len(prompts)
    logp = np.zeros((n, len(openings)), dtype=np.float64)
    coo_p, coo_f, coo_v = [], [], []
    dense = np.zeros((n, len(feature_ids))) if feature_ids is not None else None
    hidden: list = [None] * n if keep_hidden else []
    order = sorted(range(n), key=lambda i: len(prompts[i].input_ids))  # similar lengths share a batch: less padding
    rows = [(i, b) for i in order for b in range(len(branches))]
    per_batch = max(1, batch_size)
    bar = tqdm(total=n, desc=desc, disable=not progress, mininterval=1.0, leave=False)
    for start in range(0, len(rows), per_batch * len(branches)):
        chunk = rows[start: start + per_batch * len(branches)]
        seqs = [list(prompts[i].input_ids) + list(branches[b]) for i, b in chunk]
        ids, mask, offsets = pad_sequences(seqs, pad_id, side=padding_side)
        width = ids.shape[1]
        position_ids = (mask.cumsum(1) - 1).clamp_min(0)
        with capture_residual(model, layer) as store:
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device))
        logits = out.logits
        resid = store["h"]
        # Teacher forcing, vectorised: log-softmax at the last prompt token and the branch tokens.
        lasts = torch.tensor([offsets[r] + len(prompts[i].input_ids) - 1 for r, (i, _) in enumerate(chunk)])
        pos = (lasts[:, None] + torch.arange(span)[None, :]).clamp(max=width - 1).to(logits.device)
        lp = torch.log_softmax(logits[torch.arange(len(chunk), device=logits.device)[:, None], pos].double(), dim=-1)
        probe_idx = np.array([i for i, _ in chunk])
        branch_idx = np.array([b for _, b in chunk])
        for j, o in enumerate(openings):
            score = lp[:, torch.arange(len(o)), torch.tensor(o)].sum(-1).cpu().numpy()
            use = covers[branch_idx, j]
            logp[probe_idx[use], j] = score[use]
        first_branch = [(r, i, offsets[r]) for r, (i, b) in enumerate(chunk) if b == 0]
        if position in ("end_of_turn", "last"):
            rs = torch.tensor([r for r, _, _ in first_branch])
            cols = torch.tensor([off + prompts[i].read_positions(position)[0] for _, i, off in first_branch])
            h = resid[rs.to(resid.device), cols.to(resid.device)].to(sae_dtype)
            pooled = sae.encode(h)
            if keep_hidden:
                for (_, i, _), hi in zip(first_branch, h.detach().cpu()):
                    hidden[i] = hi[None, :]
        else:
            pooled_rows = []
            for r, i, off in first_branch:
                h = resid[r, [off + q for q in prompts[i].read_positions(position)]].to(sae_dtype)
                if keep_hidden:
                    hidden[i] = h.detach().cpu()
                pooled_rows.append(pool_features(sae.encode(h), position))
            pooled = torch.stack(pooled_rows)
        idx = [i for _, i, _ in first_branch]
        if feature_ids is not None:
            dense[idx] = pooled[:, torch.as_tensor(np.array(feature_ids), device=pooled.device)].double().cpu().numpy()
        else:
            nzr, nzc = torch.nonzero(pooled, as_tuple=True)
            coo_p.append(np.asarray(idx, dtype=np.int64)[nzr.cpu().numpy()])
            coo_f.append(nzc.cpu().numpy().astype(np.int64))
            coo_v.append(pooled[nzr, nzc].double().cpu().numpy())
        bar.update(len(first_branch))
    bar.close()
    readout = Readout(logp_openings=logp, hidden_tokens=hidden, dense=dense)
    if feature_ids is None:
        readout.coo_probe = np.concatenate(coo_p) if coo_p else np.zeros(0, np.int64)
        readout.coo_feature = np.concatenate(coo_f) if coo_f else np.zeros(0, np.int64)
        readout.coo_value = np.concatenate(coo_v) if coo_v else np.zeros(0)
        order_nz = np.lexsort((readout.coo_feature, readout.coo_probe))  # stored sorted by (probe, feature)
        readout.coo_probe, readout.coo_feature, readout.coo_value = (
            readout.coo_probe[order_nz], readout.coo_feature[order_nz], readout.coo_value[order_nz])
    return readout



@torch.no_grad()
def greedy_refused(model, prompts: Sequence[EncodedPrompt], refusal_openings: Sequence[tuple[int, ...]], *,
                   n_tokens: int = 4, batch_size: int = 64, pad_id: int = 0, progress: bool = True) -> np.ndarray:
    """`refused` labels: does the greedy answer start with a refusal opening? (no external judge)."""
    device = next(model.parameters()).device
    out = np.zeros(len(prompts), dtype=bool)
    n_tokens = max(n_tokens, max(len(o) for o in refusal_openings))
    for start in tqdm(range(0, len(prompts), batch_size), desc="greedy labels", disable=not progress, leave=False):
        batch = prompts[start: start + batch_size]
        ids, mask, _ = pad_sequences([p.input_ids for p in batch], pad_id, side="left")  # left padding for generation
        width = ids.shape[1]
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=n_tokens,
                             do_sample=False, pad_token_id=pad_id)
        new = gen[:, width:].cpu().tolist()
        for r, toks in enumerate(new):
            out[start + r] = any(tuple(toks[: len(o)]) == tuple(o) for o in refusal_openings)
    return out


@torch.no_grad()
def token_maxima(model, sae, layer: int, prompts: Sequence[EncodedPrompt], *, batch_size: int = 64, pad_id: int = 0,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every prompt and SAE feature active on one of its user tokens: the largest activation and the token
    where it fires (COO: prompt index, feature, activation, token index), so that a feature can be shown as the
    texts that light it up most with their strongest token marked."""
    device = next(model.parameters()).device
    sae_dtype = sae.W_enc.dtype
    out_p, out_f, out_v, out_t = [], [], [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc="feature examples", disable=not progress, leave=False):
        batch = prompts[start: start + batch_size]
        ids, mask, _ = pad_sequences([p.input_ids for p in batch], pad_id)
        with capture_residual(model, layer) as store:
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
        for r, p in enumerate(batch):
            pos = list(p.user_positions)
            acts = sae.encode(store["h"][r, pos].to(sae_dtype))  # (T, K)
            best, where = acts.max(0)
            nz = torch.nonzero(best > 0).flatten()
            out_p.append(np.full(len(nz), start + r, dtype=np.int64))
            out_f.append(nz.cpu().numpy().astype(np.int64))
            out_v.append(best[nz].double().cpu().numpy())
            out_t.append(np.asarray(pos, dtype=np.int64)[where[nz].cpu().numpy()])
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
    return cat(out_p, np.int64), cat(out_f, np.int64), cat(out_v, np.float64), cat(out_t, np.int64)
