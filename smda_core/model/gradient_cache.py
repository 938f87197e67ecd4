"""G, the probe gradients of the gradient tier, computed once and kept as a safetensors file.

G depends on the model and SAE weights, the probes, the openings, the policy's features and ΔX
functionals, and the gradient and shift settings; nothing about the pairs. So every batch scored
against the same policy, and every Ray worker of a batch, reads the same G instead of computing it:
the step that starts a batch computes it (or finds it), and the shard tasks load the file. The file
is named by the hash of everything it depends on; a changed input is a new file, and only the
newest `keep` files stay in the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from smda_core.config import GradientSettings, ShiftSettings
from smda_core.model.gradients import GradientTier, ProbeGradients
from smda_core.model.shifts import ProbeSetup

log = logging.getLogger(__name__)


def probe_gradients_key(model, sae, setup: ProbeSetup, feature_ids: np.ndarray, x_weights: np.ndarray,
                        settings: ShiftSettings, gradient: GradientSettings) -> str:
    """SHA-256 of everything G is computed from (the weights' bytes, not their file names)."""
    h = hashlib.sha256()
    for module in (model, sae):
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    probes = [[list(e.input_ids), list(e.read_positions(setup.position))] for e in setup.prompts]
    h.update(json.dumps([probes, setup.refusal_openings, setup.compliance_openings, setup.behaviour, setup.position,
                         setup.hook_layer, setup.pad_id, settings.dtype,
                         gradient.model_dump(exclude={"pair_batch"})], default=list).encode())
    h.update(np.ascontiguousarray(feature_ids, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(x_weights, dtype=np.float64).tobytes())
    return h.hexdigest()


def cached_probe_gradients(folder: Path | None, model, sae, setup: ProbeSetup, feature_ids: np.ndarray,
                           x_weights: np.ndarray, settings: ShiftSettings, gradient: GradientSettings, *,
                           keep: int = 2, progress: bool = False) -> tuple[GradientTier, str, Path | None]:
    """The gradient tier prepared with G from `folder` when it holds G for these inputs, else computed and saved there.

    Returns (tier, key, file); `folder` None computes G without keeping it (file None).
    """
    key = probe_gradients_key(model, sae, setup, feature_ids, x_weights, settings, gradient)
    path = Path(folder) / f"G-{key[:16]}.safetensors" if folder is not None else None
    G = ProbeGradients.load(path, key=key) if path is not None and path.exists() else None
    if G is not None:
        log.info("probe gradients read from %s (computed once in %.0f s)", path, G.seconds)
    tier = GradientTier.prepare(model, sae, setup, feature_ids, x_weights, settings, gradient, probe_grads=G,
                                progress=progress)
    if path is not None and G is None:
        tier.probe_grads.save(path, key=key)
        _prune(path.parent, keep)
    return tier, key, path


def _prune(folder: Path, keep: int) -> None:
    """Only the newest `keep` G files stay (each is probes × gradient dimension floats)."""
    files = sorted(folder.glob("G-*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)
