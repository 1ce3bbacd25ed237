"""Architecture weights computed from alphas with plain torch ops (traceable).

``softmax``: the DARTS relaxation, ``softmax(alpha, -1)``.
``gumbel``: the dense straight-through Gumbel one-hot of GDAS / ROME,
``hardwts = one_hot - probs.detach() + probs``, whose forward value is exactly
one-hot while its gradient is that of the Gumbel-softmax ``probs``.  The
sample is drawn with torch's RNG inside the graph (``exponential_``), never
with Python ``random`` or ``.item()``, so a trace keeps it as a node and
re-samples on every call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["WEIGHTINGS", "softmax_weights", "gumbel_straight_through", "arch_weights"]

#: The accepted values of the builders' ``weights=`` argument.
WEIGHTINGS = ("softmax", "gumbel")


def softmax_weights(alphas: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax over the candidates (last dimension)."""
    return F.softmax(alphas, dim=-1)


def gumbel_straight_through(alphas: torch.Tensor, tau: float) -> torch.Tensor:
    """Straight-through Gumbel one-hot weights, one row per edge.

    ``probs = softmax((log_softmax(alpha) + g) / tau)`` with Gumbel noise
    ``g = -log(Exp(1))``; the returned tensor equals ``one_hot(argmax probs)``
    in value and has the gradient of ``probs``.
    """
    gumbels = -torch.empty_like(alphas).exponential_().log()
    logits = (F.log_softmax(alphas, dim=-1) + gumbels) / tau
    probs = F.softmax(logits, dim=-1)
    index = probs.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(probs).scatter(-1, index, 1.0)
    return one_hot - probs.detach() + probs


def arch_weights(alphas: torch.Tensor, weighting: str, tau: float) -> torch.Tensor:
    """Dispatch on ``weighting`` (one of :data:`WEIGHTINGS`)."""
    if weighting == "softmax":
        return softmax_weights(alphas)
    if weighting == "gumbel":
        return gumbel_straight_through(alphas, tau)
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")


def check_weighting(weighting: str) -> str:
    """Validate a ``weights=`` constructor argument and return it."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weights must be one of {WEIGHTINGS}, got {weighting!r}")
    return weighting
