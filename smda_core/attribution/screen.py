"""The `screen` tier's scores (DESIGN §4 "Three tiers"): the policy read on each pair's own prompt, no step.

`screen_consistency` (the policy's predicted refusal of the prompt against whether the response opens
with a refusal) and `policy_projection`, the projection of the prompt's policy features on the policy
direction (Σ_j β_j Z_j, the predicted behaviour without the intercept: the cheap approximation Concept
Influence uses). Pure numpy.
"""

from __future__ import annotations

import numpy as np

from smda_core.attribution.logodds import screen_consistency
from smda_core.policy.fit import Policy


def screen_scores(policy: Policy, prompt_X: np.ndarray, response_refuses: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair (m,): screen_consistency, policy_projection, and `score` (= screen_consistency, the tier's only
    kind-free score); prompt_X (m, k) raw policy features of each pair's prompt."""
    predicted = policy.predict(np.asarray(prompt_X, dtype=np.float64))
    consistency = screen_consistency(predicted, policy.threshold, response_refuses)
    return {"screen_consistency": consistency, "policy_projection": predicted - policy.intercept, "score": consistency,
            "response_refuses": np.asarray(response_refuses, dtype=bool)}
