"""PC-DARTS (Xu et al., ICLR 2020): partial channels + edge normalisation.

Same network as :class:`fxnas.spaces.darts.DartsSupernet`, with two changes:

* :class:`PartialMixedOp` runs its candidates on the first ``C // k``
  channels only; the other channels bypass the edge (max-pooled 2x2 when the
  candidates stride) and are concatenated back, followed by a channel shuffle
  with ``k`` groups.  Whether the edge strided is decided, as the PC-DARTS
  code does, by the shape branch ``if temp1.shape[2] == x.shape[2]``.
* Every edge output is multiplied by an edge-normalisation weight: the betas
  (``betas_normal`` / ``betas_reduce``, shape ``(num_edges,)``) go through a
  softmax over the incoming edges of each node, and node ``i`` computes
  ``sum(edge_weights[e] * edge_e(h, weights[e]) ...)``.

As in the PC-DARTS code, the 2x2 bypass pool needs even sizes at the
reduction cells (input sizes divisible by 4).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
import torch.nn as nn

from .darts import DartsCell, DartsSupernet, DroppedEdge, _with_pool_bn, num_cell_edges
from .operations import DARTS_OPS, make_op

__all__ = ["channel_shuffle", "edge_normalisation_weights", "PartialMixedOp", "PCDartsCell", "PCDartsSupernet"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (ShuffleNet's channel shuffle)."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


def edge_normalisation_weights(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """Softmax of ``betas`` over the 2 + i incoming edges of each node i, concatenated."""
    per_node = []
    start = 0
    for i in range(steps):
        end = start + 2 + i
        per_node.append(torch.softmax(betas[start:end], dim=-1))
        start = end
    return torch.cat(per_node, dim=0)


class PartialMixedOp(nn.Module):
    """A mixed edge on ``C // partial_k`` channels; ``forward(x, weights)``."""

    def __init__(
        self,
        C: int,
        stride: int,
        op_names: Sequence[str],
        track_running_stats: bool = True,
        partial_k: int = 4,
    ):
        super().__init__()
        if C % partial_k != 0:
            raise ValueError(f"C={C} must be divisible by partial_k={partial_k}")
        self.partial_k = partial_k
        C_active = C // partial_k
        self.bypass_pool = nn.MaxPool2d(2, 2)
        self.ops = nn.ModuleList(
            _with_pool_bn(
                make_op(name, C_active, C_active, stride, False, track_running_stats),
                name,
                C_active,
                track_running_stats,
            )
            for name in op_names
        )

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x_active = x[:, : channels // self.partial_k, :, :]
        x_bypass = x[:, channels // self.partial_k :, :, :]
        temp1 = sum(w * op(x_active) for w, op in zip(weights, self.ops))
        if temp1.shape[2] == x.shape[2]:
            out = torch.cat([temp1, x_bypass], dim=1)
        else:
            out = torch.cat([temp1, self.bypass_pool(x_bypass)], dim=1)
        return channel_shuffle(out, self.partial_k)


class PCDartsCell(DartsCell):
    """DARTS cell whose edges are partial and scaled by edge-normalisation weights."""

    mixed_op_class = PartialMixedOp

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, edge_weights: torch.Tensor
    ) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            node = sum(
                edge_weights[offset + j] * self.edges[offset + j](h, weights[offset + j])
                for j, h in enumerate(states)
                if not isinstance(self.edges[offset + j], DroppedEdge)
            )
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self.multiplier :], dim=1)


class PCDartsSupernet(DartsSupernet):
    """PC-DARTS search network; ``forward(images) -> logits``.

    Same arguments as :class:`DartsSupernet` plus ``partial_k`` (PC-DARTS's
    K, 4: the fraction 1/K of channels that go through the candidates).
    ``arch_parameters()`` returns ``[alphas_normal, alphas_reduce,
    betas_normal, betas_reduce]``.  ``forward`` also accepts the edge weights
    (``edge_weights_normal`` / ``edge_weights_reduce``, shape ``(14,)``).
    """

    cell_class = PCDartsCell

    def __init__(
        self,
        C: int = 16,
        layers: int = 8,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        num_classes: int = 10,
        ops: Sequence[str] = DARTS_OPS,
        alphas: str = "parameter",
        weights: str = "softmax",
        track_running_stats: bool = True,
        tau: float = 1.0,
        partial_k: int = 4,
        kept_edges: Optional[Mapping[str, Sequence[int]]] = None,
    ):
        super().__init__(
            C=C,
            layers=layers,
            steps=steps,
            multiplier=multiplier,
            stem_multiplier=stem_multiplier,
            num_classes=num_classes,
            ops=ops,
            alphas=alphas,
            weights=weights,
            track_running_stats=track_running_stats,
            tau=tau,
            partial_k=partial_k,
            kept_edges=kept_edges,
        )
        self.partial_k = partial_k

    def _init_arch(self) -> None:
        """DARTS alphas plus ``betas_normal`` / ``betas_reduce`` of shape (14,)."""
        super()._init_arch()
        edges = num_cell_edges(self.steps)
        self._register_arch("betas_normal", 1e-3 * torch.randn(edges))
        self._register_arch("betas_reduce", 1e-3 * torch.randn(edges))

    def cell_arch_inputs(self, cell, presampled, given=None):
        (weights,) = super().cell_arch_inputs(cell, presampled, given)
        kind = "reduce" if cell.reduction else "normal"
        if given is not None and given.get(f"edge_weights_{kind}") is not None:
            return weights, given[f"edge_weights_{kind}"]
        betas = self.betas_reduce if cell.reduction else self.betas_normal
        return weights, edge_normalisation_weights(betas, self.steps)

    def forward(
        self,
        inputs: torch.Tensor,
        weights_normal: Optional[torch.Tensor] = None,
        weights_reduce: Optional[torch.Tensor] = None,
        edge_weights_normal: Optional[torch.Tensor] = None,
        edge_weights_reduce: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits; every given weight tensor overrides the one computed from
        the alphas / betas."""
        return self._forward_cells(
            inputs,
            {
                "weights_normal": weights_normal,
                "weights_reduce": weights_reduce,
                "edge_weights_normal": edge_weights_normal,
                "edge_weights_reduce": edge_weights_reduce,
            },
        )

    def _group_betas(self, kind: str):
        return getattr(self, f"betas_{kind}")

    def arch_input_names(self):
        return ["weights_normal", "weights_reduce", "edge_weights_normal", "edge_weights_reduce"]

    def edge_weights_for_genotype(self, reduction: bool) -> torch.Tensor:
        """Candidate weights scaled by the edge-normalisation weights (PC-DARTS)."""
        weights = super().edge_weights_for_genotype(reduction)
        betas = self.betas_reduce if reduction else self.betas_normal
        return weights * edge_normalisation_weights(betas.detach().float(), self.steps)[:, None]
