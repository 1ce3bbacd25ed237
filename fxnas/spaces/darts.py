"""The DARTS search network (Liu et al., ICLR 2019), written for fxnas.

Architecture (as in the DARTS search code, CIFAR-10 variant):

    stem:  Conv3x3(3 -> stem_multiplier*C, no bias) -> BatchNorm2d
    cells: ``layers`` cells; cells ``layers//3`` and ``2*layers//3`` are
           reduction cells (channels doubled, stride-2 edges from the inputs)
    head:  global average pool -> Linear

A cell preprocesses its two inputs (``preprocess0``: FactorizedReduce after a
reduction cell, else ReLU-Conv1x1-BN; ``preprocess1``: ReLU-Conv1x1-BN), then
computes ``steps`` nodes; node ``i`` sums one mixed edge from each earlier
state (2 + i of them): 14 edges for 4 steps, stored flat in ``cell.edges``
(edge ``k`` of node ``i`` is ``edges[sum(2..i+1) + j]``).  The cell outputs the
concatenation of its last ``multiplier`` nodes.

Each mixed edge is :class:`DartsMixedOp` and spells its sum weight first::

    sum(w * op(x) for w, op in zip(weights, self.ops))

Pools are followed by ``BatchNorm2d(affine=False)`` inside the mixed op (as in
the DARTS search code).  The network computes ``softmax(alphas_normal)`` or
``softmax(alphas_reduce)`` once per cell, inside ``forward``.

``alphas="tensor"`` keeps the alphas as plain tensors with
``requires_grad=True`` (neither Parameters nor buffers, so they are not in
``state_dict()`` and not in ``parameters()``), exactly as the original code
does; ``.to()`` / ``.double()`` / ``.cuda()`` still move them, in place
(the same tensor objects, like Parameters), which the original code does not.
``alphas="parameter"`` registers them as ``nn.Parameter``.

Extensions for the search (off by default):

* ``forward(images, weights_normal=None, weights_reduce=None)``: a search
  strategy may pass the ``(14, num_ops)`` candidate weights of each cell type
  itself; ``None`` computes them from the alphas as before.
* ``kept_edges={"normal": [...], "reduce": [...]}``: build only these edges
  (FTSO's operator stage); a dropped edge is a parameter-free
  :class:`DroppedEdge` placeholder that the cell skips.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .arch_weights import arch_weights, check_weighting
from .interface import ArchGroup
from .operations import DARTS_OPS, FactorizedReduce, ReLUConvBN, make_op

__all__ = [
    "Genotype",
    "DartsMixedOp",
    "DartsCell",
    "DartsSupernet",
    "DroppedEdge",
    "parse_genotype",
    "num_cell_edges",
    "cell_node_edges",
]

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

ALPHA_KINDS = ("parameter", "tensor")


def num_cell_edges(steps: int) -> int:
    """Mixed edges in a cell with ``steps`` intermediate nodes (14 for 4)."""
    return sum(2 + i for i in range(steps))


def cell_node_edges(steps: int) -> List[List[int]]:
    """Edge indices of the incoming edges of every intermediate node."""
    rows, start = [], 0
    for i in range(steps):
        rows.append(list(range(start, start + 2 + i)))
        start += 2 + i
    return rows


class DroppedEdge(nn.Module):
    """Placeholder for an edge that ``kept_edges`` removed; the cell skips it."""

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:  # pragma: no cover - never called
        raise RuntimeError("a dropped edge is never evaluated")


def _with_pool_bn(op: nn.Module, name: str, C: int, track_running_stats: bool) -> nn.Module:
    """Append the search-time ``BatchNorm2d(affine=False)`` to pooling candidates."""
    if "pool" in name:
        return nn.Sequential(op, nn.BatchNorm2d(C, affine=False, track_running_stats=track_running_stats))
    return op


class DartsMixedOp(nn.Module):
    """One mixed edge: all candidates on ``C`` channels, ``forward(x, weights)``."""

    def __init__(self, C: int, stride: int, op_names: Sequence[str], track_running_stats: bool = True):
        super().__init__()
        self.ops = nn.ModuleList(
            _with_pool_bn(make_op(name, C, C, stride, False, track_running_stats), name, C, track_running_stats)
            for name in op_names
        )

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class DartsCell(nn.Module):
    """A DARTS search cell (normal or reduction); ``forward(s0, s1, weights)``.

    ``kept_edges`` (edge indices) builds only those edges; the others are
    :class:`DroppedEdge` placeholders, absent from the node sums.
    """

    mixed_op_class = DartsMixedOp

    def __init__(
        self,
        steps: int,
        multiplier: int,
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        op_names: Sequence[str],
        track_running_stats: bool = True,
        kept_edges: Optional[Sequence[int]] = None,
        **mixed_op_kwargs,
    ):
        super().__init__()
        num_edges = num_cell_edges(steps)
        self.kept_edges: List[int] = list(range(num_edges)) if kept_edges is None else sorted(set(kept_edges))
        for rows in cell_node_edges(steps):
            if not set(rows) & set(self.kept_edges):
                raise ValueError(f"kept_edges={self.kept_edges} leaves a node without an incoming edge")
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, 2, False, track_running_stats)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, 1, False, track_running_stats)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, 1, False, track_running_stats)
        self.edges = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                if len(self.edges) not in self.kept_edges:
                    self.edges.append(DroppedEdge())
                    continue
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(self.mixed_op_class(C, stride, op_names, track_running_stats, **mixed_op_kwargs))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            node = sum(
                self.edges[offset + j](h, weights[offset + j])
                for j, h in enumerate(states)
                if not isinstance(self.edges[offset + j], DroppedEdge)
            )
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self.multiplier :], dim=1)


def parse_genotype(weights, op_names: Sequence[str], steps: int) -> List[Tuple[str, int]]:
    """DARTS's discretisation of one cell type.

    ``weights`` is a (num_edges, num_ops) nested list (or array) of edge
    weights.  For every node keep the two incoming edges whose strongest
    non-``none`` candidate is largest, each with that candidate.
    """
    candidate_ids = [k for k, name in enumerate(op_names) if name != "none"]
    gene: List[Tuple[str, int]] = []
    start = 0
    for i in range(steps):
        n_in = 2 + i
        best_per_edge = []
        for j in range(n_in):
            row = weights[start + j]
            k_best = max(candidate_ids, key=lambda k: row[k])
            best_per_edge.append((row[k_best], j, k_best))
        top_two = sorted(best_per_edge, key=lambda item: -item[0])[:2]
        gene.extend((op_names[k], j) for _, j, k in top_two)
        start += n_in
    return gene


class DartsSupernet(nn.Module):
    """DARTS search network; ``forward(images) -> logits``.

    Args:
        C: initial channels; layers: number of cells; steps: intermediate
            nodes per cell; multiplier: nodes concatenated as cell output;
            stem_multiplier: stem width factor; num_classes: classifier size.
        ops: candidate names (default: the 8 DARTS primitives).
        alphas: ``"parameter"`` (nn.Parameter) or ``"tensor"`` (plain tensors
            with ``requires_grad=True``, as in the original DARTS code).
        weights: ``"softmax"`` or ``"gumbel"`` (straight-through Gumbel
            one-hot, sampled once per forward for each cell type).
        track_running_stats: BatchNorm flag of the cells (DARTS: True).
        tau: initial Gumbel temperature.
        kept_edges: ``None`` or ``{"normal": [edge, ...], "reduce": [...]}``:
            build only these edges of each cell type (FTSO's operator stage).
    """

    cell_class = DartsCell

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
        kept_edges: Optional[Mapping[str, Sequence[int]]] = None,
        **cell_kwargs,
    ):
        super().__init__()
        if kept_edges is not None:
            kept_edges = {kind: sorted(set(kept_edges[kind])) for kind in ("normal", "reduce")}
        self.kept_edges = kept_edges
        if alphas not in ALPHA_KINDS:
            raise ValueError(f"alphas must be one of {ALPHA_KINDS}, got {alphas!r}")
        self._config = dict(
            C=C,
            layers=layers,
            steps=steps,
            multiplier=multiplier,
            stem_multiplier=stem_multiplier,
            num_classes=num_classes,
            ops=list(ops),
            alphas=alphas,
            weights=weights,
            track_running_stats=track_running_stats,
            tau=tau,
            kept_edges=kept_edges,
            **cell_kwargs,
        )
        self.C = C
        self.layers = layers
        self.steps = steps
        self.multiplier = multiplier
        self.op_names = list(ops)
        self.alphas_kind = alphas
        self.weighting = check_weighting(weights)
        self.tau = float(tau)

        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        C_prev_prev, C_prev, C_curr = C_stem, C_stem, C
        reduction_prev = False
        self.cells = nn.ModuleList()
        for index in range(layers):
            reduction = index in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = self.cell_class(
                steps,
                multiplier,
                C_prev_prev,
                C_prev,
                C_curr,
                reduction,
                reduction_prev,
                self.op_names,
                track_running_stats,
                kept_edges=None if kept_edges is None else kept_edges["reduce" if reduction else "normal"],
                **cell_kwargs,
            )
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self._arch_names: List[str] = []
        self._init_arch()

    # --- architecture tensors ------------------------------------------------

    def _register_arch(self, name: str, value: torch.Tensor) -> None:
        """Store an architecture tensor as a Parameter or a plain leaf tensor."""
        if self.alphas_kind == "parameter":
            setattr(self, name, nn.Parameter(value))
        else:
            setattr(self, name, value.requires_grad_(True))
        self._arch_names.append(name)

    def _init_arch(self) -> None:
        """``alphas_normal`` / ``alphas_reduce``: (14, num_ops), 1e-3 * N(0, 1)."""
        shape = (num_cell_edges(self.steps), len(self.op_names))
        self._register_arch("alphas_normal", 1e-3 * torch.randn(shape))
        self._register_arch("alphas_reduce", 1e-3 * torch.randn(shape))

    def arch_parameters(self) -> List[torch.Tensor]:
        """The architecture tensors (``[alphas_normal, alphas_reduce]``, plus
        any a subclass adds), as the same objects the forward reads."""
        return [getattr(self, name) for name in self._arch_names]

    def weight_parameters(self) -> List[nn.Parameter]:
        """Every parameter except the architecture ones."""
        arch_ids = {id(t) for t in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch_ids]

    def _apply(self, fn, *args, **kwargs):
        # Plain-tensor alphas are invisible to nn.Module; move/cast them too,
        # in place (``tensor.data = ...``, as nn.Module does for Parameters),
        # so the tensor objects -- and whatever holds them: an optimizer, a
        # traced graph -- stay the same.
        result = super()._apply(fn, *args, **kwargs)
        if self.alphas_kind == "tensor":
            for name in self._arch_names:
                tensor = getattr(self, name)
                with torch.no_grad():
                    converted = fn(tensor)
                    grad = None if tensor.grad is None else fn(tensor.grad)
                if converted is tensor:
                    continue
                if torch._has_compatible_shallow_copy_type(tensor, converted):
                    tensor.data = converted
                    tensor.grad = grad
                else:
                    setattr(self, name, converted.detach().requires_grad_(tensor.requires_grad))
        return result

    def set_tau(self, tau: float) -> None:
        """Set the Gumbel temperature (used when ``weights="gumbel"``)."""
        self.tau = float(tau)

    # --- forward -------------------------------------------------------------

    def _presampled_weights(self) -> Optional[Dict[bool, torch.Tensor]]:
        """Gumbel mode samples one architecture per forward (per cell type)."""
        if self.weighting != "gumbel":
            return None
        return {
            False: arch_weights(self.alphas_normal, "gumbel", self.tau),
            True: arch_weights(self.alphas_reduce, "gumbel", self.tau),
        }

    def cell_arch_inputs(self, cell: DartsCell, presampled, given=None) -> Tuple[torch.Tensor, ...]:
        """The architecture arguments passed to ``cell`` after ``(s0, s1)``.

        ``given`` maps forward argument names to tensors the caller passed
        (``None`` entries: compute from the alphas)."""
        kind = "reduce" if cell.reduction else "normal"
        if given is not None and given.get(f"weights_{kind}") is not None:
            return (given[f"weights_{kind}"],)
        if presampled is not None:
            return (presampled[cell.reduction],)
        alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
        return (arch_weights(alphas, "softmax", self.tau),)

    def _forward_cells(self, inputs: torch.Tensor, given: Dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
        presampled = None
        if any(given.get(f"weights_{kind}") is None for kind in ("normal", "reduce")):
            presampled = self._presampled_weights()
        s0 = s1 = self.stem(inputs)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, *self.cell_arch_inputs(cell, presampled, given))
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def forward(
        self,
        inputs: torch.Tensor,
        weights_normal: Optional[torch.Tensor] = None,
        weights_reduce: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits; ``weights_normal`` / ``weights_reduce`` (``(14, num_ops)``)
        override the weights computed from the alphas."""
        return self._forward_cells(inputs, {"weights_normal": weights_normal, "weights_reduce": weights_reduce})

    # --- the search interface -------------------------------------------------

    def node_edges(self) -> List[List[int]]:
        """Edge indices of the incoming edges of every intermediate node."""
        return cell_node_edges(self.steps)

    def _group_betas(self, kind: str) -> Optional[torch.Tensor]:
        return None

    def arch_groups(self) -> List[ArchGroup]:
        """Two groups, ``normal`` and ``reduce``."""
        groups = []
        for kind in ("normal", "reduce"):
            betas = self._group_betas(kind)
            kept = None if self.kept_edges is None else list(self.kept_edges[kind])
            groups.append(
                ArchGroup(
                    name=kind,
                    alphas=getattr(self, f"alphas_{kind}"),
                    betas=betas,
                    node_edges=self.node_edges(),
                    weights_arg=f"weights_{kind}",
                    edge_weights_arg=None if betas is None else f"edge_weights_{kind}",
                    kept_edges=None if kept is not None and len(kept) == num_cell_edges(self.steps) else kept,
                )
            )
        return groups

    def arch_input_names(self) -> List[str]:
        """The forward arguments after the images, in order."""
        return ["weights_normal", "weights_reduce"]

    # --- the discrete architecture -------------------------------------------

    def edge_weights_for_genotype(self, reduction: bool) -> torch.Tensor:
        """(num_edges, num_ops) weights that :meth:`genotype` ranks."""
        alphas = self.alphas_reduce if reduction else self.alphas_normal
        return torch.softmax(alphas.detach().float(), dim=-1)

    def _genotype_scores(self, reduction: bool, scores) -> List[List[float]]:
        kind = "reduce" if reduction else "normal"
        if scores is None:
            weights = self.edge_weights_for_genotype(reduction)
        else:
            weights = scores[kind].detach().float().clone()
        if self.kept_edges is not None:
            # A dropped edge ranks below every kept one.
            dropped = [e for e in range(weights.shape[0]) if e not in set(self.kept_edges[kind])]
            weights[dropped] = -1.0
        return weights.tolist()

    def genotype(self, scores: Optional[Mapping[str, torch.Tensor]] = None) -> Genotype:
        """DARTS's rule: per node, the top-2 incoming edges by their strongest
        non-``none`` weight, each with that candidate.

        ``scores`` (``{"normal": (14, num_ops), "reduce": ...}``) replaces the
        softmax of the alphas as the ranking (a strategy's own view, e.g.
        ROME's topology-masked weights); dropped edges (``kept_edges``) are
        never chosen while a kept one is left."""
        normal = parse_genotype(self._genotype_scores(False, scores), self.op_names, self.steps)
        reduce = parse_genotype(self._genotype_scores(True, scores), self.op_names, self.steps)
        concat = list(range(2 + self.steps - self.multiplier, self.steps + 2))
        return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)

    def new(self, **overrides) -> "DartsSupernet":
        """A fresh network of the same configuration, on the same device and
        dtype, whose architecture tensors hold copies of this one's values
        (the network weights are freshly initialised, as in DARTS's ``new()``;
        second-order DARTS loads them afterwards).  ``overrides`` change
        constructor arguments (then the alphas are copied only where the
        shapes agree)."""
        reference = next(self.parameters())
        clone = type(self)(**{**self._config, **overrides}).to(device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            for mine, theirs in zip(clone.arch_parameters(), self.arch_parameters()):
                if mine.shape == theirs.shape:
                    mine.copy_(theirs)
        return clone

    def extra_repr(self) -> str:
        text = (
            f"C={self.C}, layers={self.layers}, steps={self.steps}, multiplier={self.multiplier}, "
            f"ops={self.op_names}, alphas={self.alphas_kind!r}, weights={self.weighting!r}"
        )
        if self.kept_edges is not None:
            text += f", kept_edges={self.kept_edges}"
        return text
