"""The behaviour y of DESIGN §2, from the log-probabilities of the openings (numpy, no model).

The model runtime scores every refusal (and compliance) opening by teacher forcing; this module
turns those log-probabilities into y and the soft refusal score people read.
"""

from __future__ import annotations

import numpy as np

from smda_core.errors import SMDAError

BEHAVIOURS = ("log_refusal", "refusal_prob", "log_odds", "contrast")


def behaviour_from_logp(logp_refusal: np.ndarray, kind: str, logp_compliance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """y per DESIGN §2 and the soft refusal score `refusal_prob` = Σ_r P(r | prompt).

    `logp_refusal` (n, R): log-probabilities of R same-length refusal openings (disjoint events,
    so their probabilities add); `logp_compliance` (n, C) for `contrast`.
    """
    log_refusal = np.logaddexp.reduce(logp_refusal, axis=1)
    prob = np.exp(log_refusal)
    if kind == "log_refusal":
        y = log_refusal
    elif kind == "refusal_prob":
        y = prob
    elif kind == "log_odds":
        y = log_refusal - np.log1p(-np.minimum(prob, 1 - 1e-12))
    elif kind == "contrast":
        if logp_compliance is None or logp_compliance.shape[1] == 0:
            raise SMDAError("behaviour.kind=contrast needs behaviour.compliance_openings")
        y = log_refusal - np.logaddexp.reduce(logp_compliance, axis=1)
    else:
        raise SMDAError(f"behaviour.kind '{kind}' is unknown; use one of {', '.join(BEHAVIOURS)}")
    return y, prob
