"""Architecture sampling: Gumbel one-hot operations and Gumbel-Top-k edges.

All samples are drawn with torch's RNG (the global one unless a
``generator`` is given), so ``--seed`` and the checkpointed RNG state make a
search reproducible.  Everything here runs *outside* the compiled network:
the network only ever sees the resulting weight tensors.

Straight-through estimators: the forward value is the hard (discrete) sample,
the gradient is that of a relaxed sample, ``hard - soft.detach() + soft``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "gumbel_noise",
    "gumbel_one_hot",
    "top_k_indices",
    "relaxed_top_k",
    "gumbel_top_k",
    "node_top_k_mask",
]


def gumbel_noise(like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard Gumbel noise ``-log(E)``, ``E ~ Exp(1)``, shaped like ``like``."""
    exponential = torch.empty_like(like, dtype=like.dtype).exponential_(generator=generator)
    return -exponential.log()


def gumbel_one_hot(
    logits: torch.Tensor, tau: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """GDAS's straight-through Gumbel one-hot over the last dimension.

    Value: ``one_hot(argmax(log_softmax(logits) + g))``; gradient: that of
    ``softmax((log_softmax(logits) + g) / tau)``.
    """
    perturbed = (F.log_softmax(logits, dim=-1) + gumbel_noise(logits, generator)) / tau
    soft = F.softmax(perturbed, dim=-1)
    hard = torch.zeros_like(soft).scatter(-1, soft.argmax(dim=-1, keepdim=True), 1.0)
    return hard - soft.detach() + soft


def top_k_indices(
    logits: torch.Tensor, k: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """``k`` indices per row sampled *without replacement* (the Gumbel-Top-k trick).

    The indices of the ``k`` largest ``log_softmax(logits) + g`` are a sample
    of ``k`` distinct categories drawn one after the other, each with
    probability proportional to ``softmax(logits)`` among those not yet drawn.
    Works on any leading shape (a batch of independent rows).
    """
    perturbed = F.log_softmax(logits.detach(), dim=-1) + gumbel_noise(logits.detach(), generator)
    return perturbed.topk(k, dim=-1).indices


def relaxed_top_k(perturbed: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """A differentiable k-hot: the sum of ``k`` successive softmaxes, each one
    suppressing what the previous ones chose (relaxed subset sampling, Xie &
    Ermon 2019).  Rows sum to ``k``; as ``tau -> 0`` it tends to the hard
    top-k of ``perturbed``."""
    logits = perturbed
    k_hot = torch.zeros_like(perturbed)
    for _ in range(k):
        one_hot = F.softmax(logits / tau, dim=-1)
        k_hot = k_hot + one_hot
        logits = logits + torch.log1p(-one_hot.clamp(max=1.0 - 1e-6))
    return k_hot


def gumbel_top_k(
    logits: torch.Tensor, k: int, tau: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Straight-through Gumbel-Top-k mask over the last dimension.

    Value: exactly ``k`` ones per row at ``k`` categories sampled without
    replacement; gradient: that of :func:`relaxed_top_k` of the same
    perturbed logits.
    """
    n = logits.shape[-1]
    if k >= n:
        return torch.ones_like(logits)
    perturbed = F.log_softmax(logits, dim=-1) + gumbel_noise(logits, generator)
    index = perturbed.detach().topk(k, dim=-1).indices
    hard = torch.zeros_like(logits).scatter(-1, index, 1.0)
    soft = relaxed_top_k(perturbed, k, tau)
    return hard - soft.detach() + soft


def node_top_k_mask(
    scores: torch.Tensor,
    node_edges: Sequence[Sequence[int]],
    k: int,
    tau: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """A ``(num_edges,)`` mask keeping ``min(k, in-degree)`` incoming edges per node.

    ``tau=None``: the deterministic top-k of ``scores`` (discretisation, no
    gradient).  Otherwise :func:`gumbel_top_k` per node (ROME's edge
    sampling).  Edges that belong to no node get 0.
    """
    mask = torch.zeros_like(scores)
    for rows in node_edges:
        index = torch.as_tensor(list(rows), dtype=torch.long, device=scores.device)
        node_scores = scores.index_select(0, index)
        if tau is None:
            chosen = node_scores.detach().topk(min(k, len(rows))).indices
            node_mask = torch.zeros_like(node_scores).scatter(0, chosen, 1.0)
        else:
            node_mask = gumbel_top_k(node_scores, k, tau, generator)
        mask = mask.index_copy(0, index, node_mask)
    return mask
