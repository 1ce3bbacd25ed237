"""What a search strategy needs to know about a supernet's architecture tensors.

Every supernet of :mod:`fxnas.spaces` describes its architecture parameters as
a list of :class:`ArchGroup` (``model.arch_groups()``): one group per set of
cells that share alphas (NAS-Bench-201: ``"cell"``; DARTS: ``"normal"`` and
``"reduce"``).  A group says which forward arguments receive its weights, so a
strategy can compute them itself (softmax, Gumbel, ROME's sampling, masks) and
call ``model(images, **inputs)`` -- or, positionally, in the order of
``model.arch_input_names()``, which is what a traced/simplified network takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

__all__ = ["ArchGroup", "node_softmax"]


@dataclass(frozen=True)
class ArchGroup:
    """The architecture tensors of one set of cells.

    Attributes:
        name: ``"cell"`` (NAS-Bench-201), ``"normal"`` or ``"reduce"`` (DARTS).
        alphas: the model's own ``(num_edges, num_ops)`` candidate logits.
        betas: the model's ``(num_edges,)`` edge-normalisation logits
            (PC-DARTS), or ``None``.
        node_edges: for every intermediate node, the rows (edge indices) of
            its incoming edges.
        weights_arg: the forward argument that takes ``(num_edges, num_ops)``
            candidate weights.
        edge_weights_arg: the forward argument that takes ``(num_edges,)``
            edge weights, or ``None`` when the model has no edge weights.
        kept_edges: rows of the edges that exist (``None``: all of them).
    """

    name: str
    alphas: torch.Tensor
    betas: Optional[torch.Tensor]
    node_edges: List[List[int]]
    weights_arg: str
    edge_weights_arg: Optional[str]
    kept_edges: Optional[List[int]] = None

    @property
    def num_edges(self) -> int:
        return int(self.alphas.shape[0])

    @property
    def num_ops(self) -> int:
        return int(self.alphas.shape[1])


def node_softmax(scores: torch.Tensor, node_edges: Sequence[Sequence[int]]) -> torch.Tensor:
    """Softmax of ``scores`` (one per edge) over the incoming edges of every node.

    Written with an index and a scatter rather than Python slicing so that it
    works for any edge order (NAS-Bench-201 and DARTS number edges
    differently); an edge that belongs to no node gets weight 0.
    """
    out = torch.zeros_like(scores)
    for rows in node_edges:
        index = torch.as_tensor(list(rows), dtype=torch.long, device=scores.device)
        out = out.index_copy(0, index, torch.softmax(scores.index_select(0, index), dim=0))
    return out
