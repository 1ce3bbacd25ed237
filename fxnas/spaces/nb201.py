"""The NAS-Bench-201 search supernet (the DARTS-V1 / GDAS skeleton of AutoDL).

Skeleton (same layers and parameter shapes as xautodl's ``TinyNetworkDarts``):

    stem:  Conv3x3(3 -> C, no bias) -> BatchNorm2d(C)
    cells: N search cells (C), ResNet reduction block (C -> 2C, stride 2),
           N search cells (2C), ResNet reduction block (2C -> 4C, stride 2),
           N search cells (4C)                       -- one flat ModuleList
    head:  lastact = BatchNorm2d -> ReLU, global average pool, Linear

A search cell is a complete DAG on ``max_nodes`` nodes; edge ``i<-j`` is an
``nn.ModuleList`` of candidates stored in ``cell.edges["i<-j"]`` (module names
such as ``cells.0.edges.1<-0.3`` are deliberately not Python identifiers, as
in xautodl).  All search cells share one architecture tensor ``alphas`` of
shape ``(num_edges, num_ops)``; edge rows follow the order
``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2`` (xautodl's sorted order for
``max_nodes <= 10``).

Differences from xautodl worth knowing:

* ``forward`` returns the **logits only** (xautodl returns ``(features, logits)``).
* The architecture Parameter is called ``alphas``; ``arch_parameters()`` is a
  method returning ``[alphas]`` (xautodl's Parameter is itself called
  ``arch_parameters``).  ``get_alphas()`` is an alias.
* ReLUs are not in-place.
* As in xautodl, the AvgPool2d(2, 2) shortcut of the reduction blocks needs
  input sizes divisible by 4 (32x32 CIFAR, 16x16 ImageNet16).
* ``weights="gumbel"`` is the dense straight-through Gumbel one-hot form of
  GDAS (traceable), not GDAS's ``.item()``-indexed single path.

Extensions for the search (all off by default, so the default network is the
xautodl one):

* ``forward(images, arch_weights=None, edge_weights=None)``: a search strategy
  may compute the ``(num_edges, num_ops)`` candidate weights itself (Gumbel,
  ROME's sampling, masks) and pass them in; ``None`` computes them from the
  alphas as before.  A network traced with the weights as inputs is
  independent of how they are computed.
* ``partial_k > 1`` with ``edge_normalisation=True``: the PC-DARTS form of the
  cell (candidates on ``C // partial_k`` channels, the rest bypasses the edge,
  channel shuffle; each edge output scaled by a per-node softmax of ``betas``).
* ``kept_edges``: build only these edges (FTSO's second stage); the others
  contribute nothing and have no modules.

The stem, the reduction blocks and ``lastact`` use affine BatchNorm with
running statistics regardless of ``affine`` / ``track_running_stats``, which,
as in xautodl, apply to the candidates of the search cells only.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .arch_weights import arch_weights, check_weighting
from .interface import ArchGroup, node_softmax
from .operations import NB201_OPS, ReLUConvBN, make_op
from .pcdarts import channel_shuffle

__all__ = [
    "SUM_STYLES",
    "NB201SearchCell",
    "ResNetReductionBlock",
    "NB201Supernet",
    "edge_key",
    "genotype_to_arch_str",
    "weighted_sum_output_first",
    "weighted_sum_weight_first",
    "weighted_sum_stack",
    "weighted_sum_running",
    "weighted_sum_einsum",
]


def edge_key(i: int, j: int) -> str:
    """Name of the edge from node ``j`` to node ``i`` (``"i<-j"``)."""
    return f"{i}<-{j}"


# --- the ways real supernets spell an edge's weighted sum --------------------
# Each takes the edge's candidates (an nn.ModuleList), the edge input and the
# edge's weight row (shape (num_ops,)).


def weighted_sum_output_first(candidates: nn.ModuleList, x: torch.Tensor, weights: torch.Tensor):
    """``sum(op(x) * w for op, w in zip(ops, weights))`` (NAS-Bench-201 code)."""
    return sum(op(x) * w for op, w in zip(candidates, weights))


def weighted_sum_weight_first(candidates: nn.ModuleList, x: torch.Tensor, weights: torch.Tensor):
    """``sum(w * op(x) for w, op in zip(weights, ops))`` (DARTS code)."""
    return sum(w * op(x) for w, op in zip(weights, candidates))


def weighted_sum_stack(candidates: nn.ModuleList, x: torch.Tensor, weights: torch.Tensor):
    """``torch.sum(torch.stack(outs) * weights.view(-1, 1, 1, 1, 1), 0)`` (NNI cell)."""
    outputs = torch.stack([op(x) for op in candidates])
    return torch.sum(outputs * weights.view(-1, 1, 1, 1, 1), 0)


def weighted_sum_running(candidates: nn.ModuleList, x: torch.Tensor, weights: torch.Tensor):
    """``res = out0 * w[0]; res = res + out_k * w[k]`` (NNI mixed layer)."""
    result = candidates[0](x) * weights[0]
    for k in range(1, len(candidates)):
        result = result + candidates[k](x) * weights[k]
    return result


def weighted_sum_einsum(candidates: nn.ModuleList, x: torch.Tensor, weights: torch.Tensor):
    """``torch.einsum('k,knchw->nchw', weights, torch.stack(outs))``."""
    return torch.einsum("k,knchw->nchw", weights, torch.stack([op(x) for op in candidates]))


#: sum_style name -> function spelling the weighted sum.
SUM_STYLES: Dict[str, Callable] = {
    "output_first": weighted_sum_output_first,
    "weight_first": weighted_sum_weight_first,
    "stack": weighted_sum_stack,
    "running": weighted_sum_running,
    "einsum": weighted_sum_einsum,
}


class NB201SearchCell(nn.Module):
    """A complete-DAG search cell: node ``i`` sums the mixed edges ``i<-j``, j < i.

    ``forward(x, weights, edge_weights=None)`` takes the weight matrix of all
    edges (``(num_edges, num_ops)``) and, optionally, one scale per edge
    (``(num_edges,)``), and returns the last node.

    ``partial_k > 1`` runs the candidates on the first ``C // partial_k``
    channels only (PC-DARTS); ``kept_edges`` (edge keys) builds only those
    edges, the others are absent from the sum.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        stride: int,
        max_nodes: int,
        op_names: Sequence[str],
        affine: bool = False,
        track_running_stats: bool = False,
        sum_style: str = "output_first",
        partial_k: int = 1,
        kept_edges: Optional[Sequence[str]] = None,
    ):
        super().__init__()
        if sum_style not in SUM_STYLES:
            raise ValueError(f"sum_style must be one of {sorted(SUM_STYLES)}, got {sum_style!r}")
        if partial_k < 1:
            raise ValueError(f"partial_k must be >= 1, got {partial_k}")
        if partial_k > 1 and (C_in != C_out or stride != 1 or C_out % partial_k != 0):
            raise ValueError(
                f"partial channels need C_in == C_out divisible by partial_k and stride 1 "
                f"(got C_in={C_in}, C_out={C_out}, stride={stride}, partial_k={partial_k})"
            )
        self.op_names = list(op_names)
        self.max_nodes = max_nodes
        self.in_dim = C_in
        self.out_dim = C_out
        self.sum_style = sum_style
        self.partial_k = partial_k
        self.edge_keys: List[str] = [edge_key(i, j) for i in range(1, max_nodes) for j in range(i)]
        self.edge2index: Dict[str, int] = {key: k for k, key in enumerate(self.edge_keys)}
        self.num_edges = len(self.edge_keys)
        if kept_edges is not None:
            unknown = set(kept_edges) - set(self.edge_keys)
            if unknown:
                raise ValueError(f"unknown edges {sorted(unknown)}; the cell's edges are {self.edge_keys}")
        self.kept_edges: List[str] = [k for k in self.edge_keys if kept_edges is None or k in set(kept_edges)]
        for i in range(1, max_nodes):
            if not any(edge_key(i, j) in self.kept_edges for j in range(i)):
                raise ValueError(f"kept_edges leaves node {i} without an incoming edge")
        self.edges = nn.ModuleDict()
        for i in range(1, max_nodes):
            for j in range(i):
                if edge_key(i, j) not in self.kept_edges:
                    continue
                edge_stride = stride if j == 0 else 1
                edge_C_in = (C_in if j == 0 else C_out) // partial_k
                self.edges[edge_key(i, j)] = nn.ModuleList(
                    make_op(name, edge_C_in, C_out // partial_k, edge_stride, affine, track_running_stats)
                    for name in self.op_names
                )

    def _edge(self, key: str, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        weighted_sum = SUM_STYLES[self.sum_style]
        if self.partial_k == 1:
            return weighted_sum(self.edges[key], x, weights)
        active = x.shape[1] // self.partial_k
        mixed = weighted_sum(self.edges[key], x[:, :active, :, :], weights)
        return channel_shuffle(torch.cat([mixed, x[:, active:, :, :]], dim=1), self.partial_k)

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, edge_weights: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        nodes = [x]
        for i in range(1, self.max_nodes):
            incoming = []
            for j in range(i):
                key = edge_key(i, j)
                if key not in self.edges:  # dropped edge (kept_edges)
                    continue
                index = self.edge2index[key]
                out = self._edge(key, nodes[j], weights[index])
                if edge_weights is not None:
                    out = edge_weights[index] * out
                incoming.append(out)
            nodes.append(sum(incoming))
        return nodes[-1]

    def extra_repr(self) -> str:
        text = (
            f"nodes={self.max_nodes}, C_in={self.in_dim}, C_out={self.out_dim}, "
            f"sum_style={self.sum_style!r}"
        )
        if self.partial_k > 1:
            text += f", partial_k={self.partial_k}"
        if len(self.kept_edges) < self.num_edges:
            text += f", kept_edges={self.kept_edges}"
        return text


class ResNetReductionBlock(nn.Module):
    """The fixed reduction block between stages (a stride-2 ResNet basic block).

    ``conv_b(conv_a(x)) + shortcut(x)`` with ReLU-Conv3x3-BN convolutions and a
    shortcut of AvgPool2d(2, 2) followed by a 1x1 convolution.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        self.in_dim = C_in
        self.out_dim = C_out
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1, 1, affine, track_running_stats, bias=not affine)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, 1, affine, track_running_stats, bias=not affine)
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(C_in, C_out, kernel_size=1, stride=1, padding=0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NB201Supernet(nn.Module):
    """NAS-Bench-201 search supernet; ``forward(images) -> logits``.

    Args:
        C: channels of the first stage (then 2C, 4C).
        N: search cells per stage.
        max_nodes: nodes per cell (4 in NAS-Bench-201: 6 edges).
        num_classes: classifier outputs.
        ops: candidate names (see :data:`fxnas.spaces.operations.OPS`).
        affine, track_running_stats: BatchNorm flags of the candidates.
        weights: ``"softmax"`` (DARTS) or ``"gumbel"`` (straight-through
            Gumbel one-hot, GDAS/ROME dense form; temperature ``tau``).
        sum_style: how each edge spells its weighted sum, one of
            :data:`SUM_STYLES`.
        tau: initial Gumbel temperature (see :meth:`set_tau`).
        partial_k: PC-DARTS's K; candidates see ``C // partial_k`` channels
            (1: all channels, the xautodl network).
        edge_normalisation: PC-DARTS edge normalisation; adds the Parameter
            ``betas`` (num_edges,), softmax-ed over the incoming edges of each
            node, scaling every edge output.
        kept_edges: edge keys (``"i<-j"``) to build; the others are dropped
            from every cell (FTSO's operator stage). ``None``: all edges.
    """

    def __init__(
        self,
        C: int = 16,
        N: int = 5,
        max_nodes: int = 4,
        num_classes: int = 10,
        ops: Sequence[str] = NB201_OPS,
        affine: bool = False,
        track_running_stats: bool = False,
        weights: str = "softmax",
        sum_style: str = "output_first",
        tau: float = 1.0,
        partial_k: int = 1,
        edge_normalisation: bool = False,
        kept_edges: Optional[Sequence[str]] = None,
    ):
        super().__init__()
        self._config = dict(
            C=C,
            N=N,
            max_nodes=max_nodes,
            num_classes=num_classes,
            ops=list(ops),
            affine=affine,
            track_running_stats=track_running_stats,
            weights=weights,
            sum_style=sum_style,
            tau=tau,
            partial_k=partial_k,
            edge_normalisation=edge_normalisation,
            kept_edges=None if kept_edges is None else list(kept_edges),
        )
        self.C = C
        self.N = N
        self.max_nodes = max_nodes
        self.op_names = list(ops)
        self.weighting = check_weighting(weights)
        self.sum_style = sum_style
        self.tau = float(tau)
        self.partial_k = partial_k
        self.edge_normalisation = bool(edge_normalisation)

        self.stem = nn.Sequential(nn.Conv2d(3, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C))
        stage_channels = [C, 2 * C, 4 * C]
        self.cells = nn.ModuleList()
        C_prev = C
        for stage, C_stage in enumerate(stage_channels):
            if stage > 0:
                self.cells.append(ResNetReductionBlock(C_prev, C_stage))
            for _ in range(N):
                self.cells.append(
                    NB201SearchCell(
                        C_stage,
                        C_stage,
                        1,
                        max_nodes,
                        self.op_names,
                        affine,
                        track_running_stats,
                        sum_style,
                        partial_k=partial_k,
                        kept_edges=kept_edges,
                    )
                )
            C_prev = C_stage
        probe = NB201SearchCell(1, 1, 1, max_nodes, [], sum_style=sum_style)
        self.edge_keys: List[str] = probe.edge_keys
        self.edge2index: Dict[str, int] = probe.edge2index
        kept = set(self.edge_keys if kept_edges is None else kept_edges)
        self.kept_edges: List[str] = [key for key in self.edge_keys if key in kept]

        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(self.edge_keys), len(self.op_names)))
        if self.edge_normalisation:
            self.betas = nn.Parameter(1e-3 * torch.randn(len(self.edge_keys)))

    # --- forward -------------------------------------------------------------

    def forward(
        self,
        inputs: torch.Tensor,
        arch_weights: Optional[torch.Tensor] = None,
        edge_weights: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits of the supernet; architecture weights are computed once and
        shared by every search cell.

        ``arch_weights`` (``(num_edges, num_ops)``) and ``edge_weights``
        (``(num_edges,)``, with ``edge_normalisation``) override the weights
        computed from ``alphas`` / ``betas``."""
        weights = self._candidate_weights() if arch_weights is None else arch_weights
        if edge_weights is None and self.edge_normalisation:
            edge_weights = node_softmax(self.betas, self.node_edges())
        feature = self.stem(inputs)
        for cell in self.cells:
            if isinstance(cell, NB201SearchCell):
                feature = cell(feature, weights, edge_weights)
            else:
                feature = cell(feature)
        out = self.lastact(feature)
        out = self.global_pooling(out)
        out = out.view(out.size(0), -1)
        return self.classifier(out)

    # --- parameters ----------------------------------------------------------

    def _candidate_weights(self) -> torch.Tensor:
        return arch_weights(self.alphas, self.weighting, self.tau)

    def arch_parameters(self) -> List[torch.Tensor]:
        """The architecture tensors: ``[alphas]`` (``[alphas, betas]`` with
        edge normalisation)."""
        return [self.alphas, self.betas] if self.edge_normalisation else [self.alphas]

    get_alphas = arch_parameters

    def weight_parameters(self) -> List[nn.Parameter]:
        """Every parameter except the architecture ones."""
        arch_ids = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch_ids]

    def set_tau(self, tau: float) -> None:
        """Set the Gumbel temperature (used when ``weights="gumbel"``)."""
        self.tau = float(tau)

    # --- the search interface -------------------------------------------------

    def node_edges(self) -> List[List[int]]:
        """Rows of the incoming edges of every intermediate node (node 1, 2, ...)."""
        return [[self.edge2index[edge_key(i, j)] for j in range(i)] for i in range(1, self.max_nodes)]

    def arch_groups(self) -> List[ArchGroup]:
        """One group: all search cells share ``alphas`` (and ``betas``)."""
        kept = [self.edge2index[k] for k in self.kept_edges]
        return [
            ArchGroup(
                name="cell",
                alphas=self.alphas,
                betas=self.betas if self.edge_normalisation else None,
                node_edges=self.node_edges(),
                weights_arg="arch_weights",
                edge_weights_arg="edge_weights" if self.edge_normalisation else None,
                kept_edges=None if len(kept) == len(self.edge_keys) else kept,
            )
        ]

    def arch_input_names(self) -> List[str]:
        """The forward arguments after the images, in order."""
        return ["arch_weights", "edge_weights"] if self.edge_normalisation else ["arch_weights"]

    def new(self, **overrides) -> "NB201Supernet":
        """A fresh network of the same configuration (``overrides`` change
        constructor arguments), on the same device and dtype."""
        reference = next(self.parameters())
        return type(self)(**{**self._config, **overrides}).to(device=reference.device, dtype=reference.dtype)

    # --- the discrete architecture -------------------------------------------

    def genotype(
        self, scores: Union[None, torch.Tensor, Mapping[str, torch.Tensor]] = None
    ) -> List[Tuple[Tuple[str, int], ...]]:
        """The argmax architecture, one tuple of ``(op, input_node)`` per node.

        Same layout as ``nas_201_api.NASBench201API.str2lists``:
        ``[(("op", 0),), (("op", 0), ("op", 1)), ...]``.  ``scores`` (a
        ``(num_edges, num_ops)`` tensor, or ``{"cell": tensor}``) replaces the
        alphas as the ranking; an edge that is dropped (``kept_edges``) or
        whose scores are all zero (a strategy's topology mask) is ``none``.
        """
        if isinstance(scores, Mapping):
            scores = scores["cell"]
        with torch.no_grad():
            ranking = (self.alphas if scores is None else scores).detach().float()
            best = ranking.argmax(dim=-1).tolist()
            silent = (ranking == 0).all(dim=-1).tolist()
        nodes = []
        for i in range(1, self.max_nodes):
            node = []
            for j in range(i):
                key = edge_key(i, j)
                row = self.edge2index[key]
                dropped = key not in self.kept_edges or (scores is not None and silent[row])
                node.append(("none" if dropped else self.op_names[best[row]], j))
            nodes.append(tuple(node))
        return nodes

    def arch_str(self, scores: Union[None, torch.Tensor, Mapping[str, torch.Tensor]] = None) -> str:
        """The NAS-Bench-201 arch string, e.g. ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
        return genotype_to_arch_str(self.genotype(scores))

    def extra_repr(self) -> str:
        text = (
            f"C={self.C}, N={self.N}, max_nodes={self.max_nodes}, ops={self.op_names}, "
            f"weights={self.weighting!r}, sum_style={self.sum_style!r}"
        )
        if self.partial_k > 1 or self.edge_normalisation:
            text += f", partial_k={self.partial_k}, edge_normalisation={self.edge_normalisation}"
        if len(self.kept_edges) < len(self.edge_keys):
            text += f", kept_edges={self.kept_edges}"
        return text


def genotype_to_arch_str(genotype: Sequence[Sequence[Tuple[str, int]]]) -> str:
    """``[(("op", 0),), (("op", 0), ("op", 1)), ...]`` -> ``|op~0|+|op~0|op~1|+...``."""
    return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|" for node in genotype)
