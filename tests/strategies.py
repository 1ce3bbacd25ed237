"""Hypothesis strategies that generate random differentiable-NAS supernets.

``supernets()`` draws a :class:`SupernetSpec`: a tree of frozen config
dataclasses (so hypothesis shrinks towards small, plain supernets and prints a
readable failing example) whose ``build()`` returns a fresh float64 model, its
example inputs and the plain-tensor architecture weights::

    @given(supernets())
    def test_something(spec):
        model, inputs, arch_tensors = spec.build()

What is drawn (see DESIGN.md, "Vocabulary", for the graph shapes):

* 1-2 cells, each NAS-Bench-201-like (node ``i`` sums the edges from every
  ``j < i``; edges in an ``nn.ModuleDict`` keyed ``"i<-j"``) or DARTS-like
  (two preprocessed cell inputs, intermediate nodes summing an edge from every
  earlier state, output the channel concatenation of the intermediate nodes);
  reduction cells make the edges leaving the cell inputs stride 2;
* channels 2-6, spatial 5-9 (odd, even, non-square), batch 2, optional stem;
* per edge 2-6 candidates (repetition allowed) from :data:`OP_KINDS`, with
  random kernel (1/3/5/7, sometimes non-square), dilation, depthwise or dense,
  bias, BatchNorm ``affine`` / ``track_running_stats`` / momentum / eps, pool
  ``count_include_pad``; on stride-2 edges the identity is a
  FactorizedReduce and the zero a strided slice;
* per edge one of the weighted-sum shapes of :data:`SUM_SHAPES`;
* architecture weights held as an ``nn.Parameter``, as a plain tensor with
  ``requires_grad`` (returned in ``arch_tensors``) or passed as a model input;
  transformed by softmax, sigmoid, nothing, or a straight-through Gumbel
  one-hot (random in forward); computed by the network and passed to the
  cell's ``forward``, or computed by the cell from its own alphas; optionally
  one alpha tensor shared by cells of the same shape;
* occasionally a module instance used by two candidates (same or different
  edge of a cell), and edges whose candidates share one leading ReLU.

BatchNorm running statistics and affine parameters are randomised at build
time; all randomness of ``build()`` comes from the spec's ``seed``.

Forwards only use what a NAS-aware fx tracer must support: iteration over a
proxy of known length (``zip(ops, weights)``), Python control flow on
constructor-time attributes, ``x.shape`` arithmetic; never ``.item()`` or
branches on tensor values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

__all__ = [
    "OP_KINDS",
    "SUM_SHAPES",
    "BNConfig",
    "OpConfig",
    "Reuse",
    "EdgeConfig",
    "CellConfig",
    "ArchConfig",
    "SupernetConfig",
    "SupernetSpec",
    "MixedEdge",
    "supernet_configs",
    "supernets",
]

DTYPE = torch.float64

#: Candidate kinds, simplest first (hypothesis shrinks towards the front).
OP_KINDS = (
    "conv",  # Conv2d alone: a directly weighted linear candidate
    "identity",  # nn.Identity (stride 2: FactorizedReduce)
    "passthrough",  # a module whose forward is `return x` (stride 2: FactorizedReduce)
    "zero_mul",  # x.mul(0.)
    "zero_like",  # torch.zeros_like(x)
    "zero_new",  # x.new_zeros(shape)
    "avg_pool",  # AvgPool2d, optionally followed by BN
    "max_pool",  # MaxPool2d, optionally followed by BN
    "relu_conv_bn",  # ReLU -> Conv2d -> BN
    "sep_conv",  # ReLU -> depthwise -> pointwise -> BN (dilated: DARTS dil_conv)
    "double_sep",  # two stacked sep_conv (DARTS sep_conv)
)

ZERO_KINDS = ("zero_mul", "zero_like", "zero_new")

#: How an edge spells its weighted sum ``Σ_m w_m · op_m(x)``.
SUM_SHAPES = (
    "sum_out_first",  # sum(op(x) * w for op, w in zip(ops, weights))      (NAS-Bench-201)
    "sum_w_first",  # sum(w * op(x) for w, op in zip(weights, ops))        (DARTS)
    "stack_view",  # torch.sum(torch.stack(outs) * weights.view(-1,1,1,1,1), 0)
    "stack_view_none",  # the same with a zero tensor concatenated ("none")  (NNI cell)
    "running",  # res = out0 * w[0]; res = res + out_k * w[k]           (NNI layer)
    "einsum",  # torch.einsum("m,mnchw->nchw", weights, stack)
    "broadcast_stack",  # (weights[:, None, None, None, None] * stack).sum(0)
)


# --------------------------------------------------------------------------- #
# configs
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class BNConfig:
    affine: bool = False
    track_running_stats: bool = False
    momentum: Optional[float] = 0.1
    eps: float = 1e-5

    def __str__(self) -> str:
        flags = [f for f, on in (("affine", self.affine), ("track", self.track_running_stats)) if on]
        if self.track_running_stats:
            flags.append(f"m={self.momentum}")
        if self.eps != 1e-5:
            flags.append(f"eps={self.eps:g}")
        return "bn(" + ",".join(flags) + ")"


@dataclass(frozen=True)
class OpConfig:
    """One candidate. Fields a kind does not use keep their defaults."""

    kind: str
    kernel: Tuple[int, int] = (3, 3)
    dilation: int = 1
    depthwise: bool = False
    bias: bool = False
    count_include_pad: bool = True
    bn: Optional[BNConfig] = None

    def __str__(self) -> str:
        k = self.kind
        if k in ("conv", "relu_conv_bn", "sep_conv", "double_sep"):
            parts = [f"k={self.kernel[0]}x{self.kernel[1]}"]
            if self.dilation != 1:
                parts.append(f"d={self.dilation}")
            if self.depthwise and k in ("conv", "relu_conv_bn"):
                parts.append("dw")
            if self.bias and k in ("conv", "relu_conv_bn"):
                parts.append("bias")
        elif k in ("avg_pool", "max_pool"):
            parts = [f"k={self.kernel[0]}"]
            if k == "avg_pool" and not self.count_include_pad:
                parts.append("no_pad_count")
        else:
            parts = []
        if self.bn is not None:
            parts.append(str(self.bn))
        return f"{k}({', '.join(parts)})" if parts else k


@dataclass(frozen=True)
class Reuse:
    """This candidate is the same module instance as candidate ``op`` of edge ``edge`` of the cell."""

    edge: int
    op: int

    def __str__(self) -> str:
        return f"same_as(edge {self.edge}, op {self.op})"


@dataclass(frozen=True)
class EdgeConfig:
    src: int  # index of the input state / node
    dst: int  # index of the node the edge feeds
    stride: int
    ops: Tuple[Union[OpConfig, Reuse], ...]
    weighted_sum: str
    share_relu: bool = False  # one ReLU instance leads every candidate that starts with a ReLU

    @property
    def n_weights(self) -> int:
        return len(self.ops) + (1 if self.weighted_sum == "stack_view_none" else 0)


@dataclass(frozen=True)
class CellConfig:
    kind: str  # "nb201" | "darts"
    n_nodes: int  # nb201: nodes including the input; darts: intermediate nodes
    reduction: bool
    edges: Tuple[EdgeConfig, ...]

    @property
    def arch_width(self) -> int:
        return max(e.n_weights for e in self.edges)


@dataclass(frozen=True)
class ArchConfig:
    storage: str = "param"  # "param" | "plain" | "input"
    transform: str = "softmax"  # "softmax" | "sigmoid" | "none" | "gumbel_st"
    owner: str = "network"  # "network" (passed to cell.forward) | "cell" (cell computes its own)
    share_across_cells: bool = False
    tau: float = 1.0


@dataclass(frozen=True)
class SupernetConfig:
    channels: int
    height: int
    width: int
    stem: bool
    cells: Tuple[CellConfig, ...]
    arch: ArchConfig
    output: str  # "tensor" | "tuple" | "dict"
    seed: int
    batch: int = 2


# --------------------------------------------------------------------------- #
# candidate modules
# --------------------------------------------------------------------------- #


class Passthrough(nn.Module):
    """The hand-written identity: ``return x``."""

    def forward(self, x):
        return x


class ZeroMul(nn.Module):
    """``none`` as ``x.mul(0.)`` (strided: ``x[:, :, ::2, ::2].mul(0.)``)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return x.mul(0.0)


class ZeroLike(nn.Module):
    """``none`` as ``torch.zeros_like(x)``."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.zeros_like(x)


class ZeroNew(nn.Module):
    """``none`` as ``x.new_zeros(shape)``, the shape computed from ``x.shape``."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride > 1:
            s = self.stride
            return x.new_zeros(x.shape[0], x.shape[1], (x.shape[2] + s - 1) // s, (x.shape[3] + s - 1) // s)
        return x.new_zeros(x.shape)


class FactorizedReduce(nn.Module):
    """Stride-2 identity: ReLU, two 1x1 stride-2 convs (the second shifted by one pixel), concat, BN.

    The input is padded by one on the bottom/right before the shift, so odd
    sizes give ``ceil(H / 2)`` like every other stride-2 candidate.
    """

    def __init__(self, C_in: int, C_out: int, relu: nn.Module, bn: nn.Module):
        super().__init__()
        self.relu = relu
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, bias=False)
        self.bn = bn

    def forward(self, x):
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class MixedEdge(nn.Module):
    """``Σ_m w_m · op_m(x)``, spelled as ``weighted_sum`` says (one of :data:`SUM_SHAPES`)."""

    def __init__(self, ops: List[nn.Module], weighted_sum: str, n_weights: int, arch_width: int):
        super().__init__()
        self.ops = nn.ModuleList(ops)  # the same instance may appear twice
        self.weighted_sum = weighted_sum
        self.slice_weights = n_weights < arch_width
        self.n_weights = n_weights

    def forward(self, x, weights):
        if self.slice_weights:
            weights = weights[: self.n_weights]
        shape = self.weighted_sum
        if shape == "sum_out_first":
            return sum(op(x) * w for op, w in zip(self.ops, weights))
        if shape == "sum_w_first":
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        if shape == "running":
            res = self.ops[0](x) * weights[0]
            for k in range(1, len(self.ops)):
                res = res + self.ops[k](x) * weights[k]
            return res
        stacked = torch.stack([op(x) for op in self.ops])
        if shape == "stack_view":
            return torch.sum(stacked * weights.view(-1, 1, 1, 1, 1), 0)
        if shape == "stack_view_none":
            stacked = torch.cat([stacked, torch.zeros_like(stacked[:1])])
            return torch.sum(stacked * weights.view(-1, 1, 1, 1, 1), 0)
        if shape == "einsum":
            return torch.einsum("m,mnchw->nchw", weights, stacked)
        if shape == "broadcast_stack":
            return (weights[:, None, None, None, None] * stacked).sum(0)
        raise ValueError(shape)


def arch_transform(alphas: torch.Tensor, transform: str, tau: float) -> torch.Tensor:
    """Architecture weights from raw alphas (rows: edges, columns: candidates)."""
    if transform == "softmax":
        return F.softmax(alphas, dim=-1)
    if transform == "sigmoid":
        return torch.sigmoid(alphas)
    if transform == "none":
        return alphas
    if transform == "gumbel_st":  # GDAS's straight-through Gumbel one-hot, dense form
        gumbels = -torch.empty_like(alphas).exponential_().log()
        probs = ((alphas.log_softmax(dim=-1) + gumbels) / tau).softmax(dim=-1)
        index = probs.max(-1, keepdim=True)[1]
        one_hot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
        return one_hot - probs.detach() + probs
    raise ValueError(transform)


class _AlphaOwner(nn.Module):
    """Holds raw alphas as an nn.Parameter or as a plain tensor attribute."""

    def _set_alphas(self, alphas: Optional[torch.Tensor], storage: str, transform: str, tau: float) -> None:
        self.arch_transform_name = transform
        self.tau = tau
        if alphas is None:
            return
        if storage == "param":
            self.alphas = alphas if isinstance(alphas, nn.Parameter) else nn.Parameter(alphas)
        else:  # a plain tensor attribute, as DARTS's alphas_normal
            object.__setattr__(self, "alphas", alphas)


class NB201Cell(_AlphaOwner):
    """Node ``i`` = Σ_{j<i} edge ``"i<-j"``(node j); returns the last node."""

    def __init__(self, edges: Dict[str, MixedEdge], n_nodes: int, pre: Optional[nn.Module]):
        super().__init__()
        self.pre = pre
        self.edges = nn.ModuleDict(edges)
        self.n_nodes = n_nodes
        self.edge2index = {key: i for i, key in enumerate(edges)}

    def forward(self, x, weights=None):
        if weights is None:
            weights = arch_transform(self.alphas, self.arch_transform_name, self.tau)
        if self.pre is not None:
            x = self.pre(x)
        nodes = [x]
        for i in range(1, self.n_nodes):
            nodes.append(
                sum(self.edges[f"{i}<-{j}"](nodes[j], weights[self.edge2index[f"{i}<-{j}"]]) for j in range(i))
            )
        return nodes[-1]


class DartsCell(_AlphaOwner):
    """Two preprocessed inputs; intermediate node = Σ over every earlier state; concat of intermediates."""

    def __init__(self, pre0: nn.Module, pre1: nn.Module, ops: List[MixedEdge], n_inter: int):
        super().__init__()
        self.preprocess0 = pre0
        self.preprocess1 = pre1
        self._ops = nn.ModuleList(ops)
        self.n_inter = n_inter

    def forward(self, s0, s1, weights=None):
        if weights is None:
            weights = arch_transform(self.alphas, self.arch_transform_name, self.tau)
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        for _ in range(self.n_inter):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.n_inter :], dim=1)


class Supernet(nn.Module):
    """Stem, cells, optional head; arch weights held as the config says."""

    def __init__(self, cfg: SupernetConfig):
        super().__init__()
        arch = cfg.arch
        C = cfg.channels
        self.cfg_output = cfg.output
        self.arch_storage = arch.storage
        self.arch_owner = arch.owner
        self.arch_transform_name = arch.transform
        self.tau = arch.tau
        self.stem = (
            nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C)) if cfg.stem else None
        )
        # (channels, height, width) of every state so far
        shapes = [(C, cfg.height, cfg.width)]
        cells = []
        alphas: List[torch.Tensor] = []
        alpha_by_shape: Dict[Tuple[int, int], torch.Tensor] = {}
        self.cell_kinds: List[str] = []
        self.cell_rows: List[Tuple[int, int, int]] = []  # (first row, n rows, width) in the input alphas
        row = 0
        for cell_cfg in cfg.cells:
            cell, out_shape = _build_cell(cell_cfg, C, shapes)
            shapes.append(out_shape)
            cells.append(cell)
            self.cell_kinds.append(cell_cfg.kind)
            n_edges, width = len(cell_cfg.edges), cell_cfg.arch_width
            self.cell_rows.append((row, n_edges, width))
            row += n_edges
            if arch.storage == "input":
                cell._set_alphas(None, arch.storage, arch.transform, arch.tau)
                continue
            a = alpha_by_shape.get((n_edges, width)) if arch.share_across_cells else None
            if a is None:
                a = (0.5 * torch.randn(n_edges, width, dtype=DTYPE)).requires_grad_(True)
                if arch.storage == "param":
                    a = nn.Parameter(a)
                alpha_by_shape[(n_edges, width)] = a
            alphas.append(a)
            cell._set_alphas(a if arch.owner == "cell" else None, arch.storage, arch.transform, arch.tau)
        self.cells = nn.ModuleList(cells)
        self.n_alpha_rows = row
        self.alpha_width = max(c.arch_width for c in cfg.cells)
        if arch.storage != "input" and arch.owner == "network":
            if arch.storage == "param":
                self.arch_parameters = nn.ParameterList(alphas)  # shared entries are deduplicated by name lookup
            else:
                for i, a in enumerate(alphas):
                    object.__setattr__(self, f"alphas_{i}", a)
        self.plain_alphas = tuple(_unique(alphas)) if arch.storage == "plain" else ()
        C_last = shapes[-1][0]
        self.head = nn.Linear(C_last, 3) if cfg.output != "tensor" else None

    def _network_weights(self, c: int, alphas_input):
        if self.arch_storage == "input":
            first, n, width = self.cell_rows[c]
            a = alphas_input[first : first + n]
            if width < self.alpha_width:
                a = a[:, :width]
        elif self.arch_storage == "param":
            a = self.arch_parameters[c]
        else:
            a = getattr(self, f"alphas_{c}")
        return arch_transform(a, self.arch_transform_name, self.tau)

    def forward(self, x):
        return self._forward(x, None)

    def _forward(self, x, alphas):
        s = self.stem(x) if self.stem is not None else x
        states = [s]
        for c, cell in enumerate(self.cells):
            weights = self._network_weights(c, alphas) if self.arch_owner == "network" else None
            if self.cell_kinds[c] == "nb201":
                s = cell(states[-1], weights)
            else:
                s = cell(states[-2] if len(states) > 1 else states[-1], states[-1], weights)
            states.append(s)
        if self.cfg_output == "tensor":
            return s
        logits = self.head(s.mean((2, 3)))
        if self.cfg_output == "tuple":
            return s, logits
        return {"features": s, "logits": logits}


class SupernetWithAlphaInput(Supernet):
    """The same network, its raw alphas (all cells' rows stacked) passed as a forward argument."""

    def forward(self, x, alphas):
        return self._forward(x, alphas)


def _unique(tensors):
    seen = set()
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            yield t


def _bn(cfg: BNConfig, C: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(C, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine, track_running_stats=cfg.track_running_stats)


def _same_padding(kernel: Tuple[int, int], dilation: int) -> Tuple[int, int]:
    return (dilation * (kernel[0] - 1) // 2, dilation * (kernel[1] - 1) // 2)


def _sep(C: int, op: OpConfig, stride: int, relu: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        relu,
        nn.Conv2d(C, C, op.kernel, stride, _same_padding(op.kernel, op.dilation), op.dilation, groups=C, bias=False),
        nn.Conv2d(C, C, 1, bias=False),
        _bn(op.bn, C),
    )


def _build_op(op: OpConfig, C: int, stride: int, shared_relu: Optional[nn.Module]) -> nn.Module:
    def relu() -> nn.Module:
        return shared_relu if shared_relu is not None else nn.ReLU(inplace=False)

    k = op.kind
    if k in ("conv", "relu_conv_bn"):
        conv = nn.Conv2d(
            C, C, op.kernel, stride, _same_padding(op.kernel, op.dilation), op.dilation,
            groups=C if op.depthwise else 1, bias=op.bias,
        )
        return conv if k == "conv" else nn.Sequential(relu(), conv, _bn(op.bn, C))
    if k == "sep_conv":
        return _sep(C, op, stride, relu())
    if k == "double_sep":
        second = dataclasses.replace(op, dilation=1)
        return nn.Sequential(_sep(C, op, stride, relu()), _sep(C, second, 1, nn.ReLU(inplace=False)))
    if k in ("avg_pool", "max_pool"):
        size = op.kernel[0]
        if k == "avg_pool":
            pool = nn.AvgPool2d(size, stride, size // 2, count_include_pad=op.count_include_pad)
        else:
            pool = nn.MaxPool2d(size, stride, size // 2)
        return pool if op.bn is None else nn.Sequential(pool, _bn(op.bn, C))
    if k in ("identity", "passthrough"):
        if stride == 1:
            return nn.Identity() if k == "identity" else Passthrough()
        return FactorizedReduce(C, C, relu(), _bn(op.bn, C))
    if k == "zero_mul":
        return ZeroMul(stride)
    if k == "zero_like":
        return ZeroLike(stride)
    if k == "zero_new":
        return ZeroNew(stride)
    raise ValueError(k)


def _relu_conv_bn_1x1(C_in: int, C_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=False))


def _build_cell(cfg: CellConfig, C: int, shapes: List[Tuple[int, int, int]]):
    width = cfg.arch_width
    built: Dict[Tuple[int, int], nn.Module] = {}
    edges: List[MixedEdge] = []
    for e, edge in enumerate(cfg.edges):
        shared_relu = nn.ReLU(inplace=False) if edge.share_relu else None
        ops = []
        for m, op in enumerate(edge.ops):
            if isinstance(op, Reuse):
                module = built[(op.edge, op.op)]
            else:
                module = _build_op(op, C, edge.stride, shared_relu)
            built[(e, m)] = module
            ops.append(module)
        edges.append(MixedEdge(ops, edge.weighted_sum, edge.n_weights, width))

    def reduce(size: int) -> int:
        return (size + 1) // 2 if cfg.reduction else size

    if cfg.kind == "nb201":
        C_in, H, W = shapes[-1]
        pre = _relu_conv_bn_1x1(C_in, C) if C_in != C else None
        cell = NB201Cell({f"{edge.dst}<-{edge.src}": m for edge, m in zip(cfg.edges, edges)}, cfg.n_nodes, pre)
        return cell, (C, reduce(H), reduce(W))
    (C0, H0, W0), (C1, H1, W1) = shapes[-2] if len(shapes) > 1 else shapes[-1], shapes[-1]
    if (H0, W0) != (H1, W1):
        pre0 = FactorizedReduce(C0, C, nn.ReLU(inplace=False), nn.BatchNorm2d(C, affine=False))
    else:
        pre0 = _relu_conv_bn_1x1(C0, C)
    cell = DartsCell(pre0, _relu_conv_bn_1x1(C1, C), edges, cfg.n_nodes)
    return cell, (C * cfg.n_nodes, reduce(H1), reduce(W1))


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, nn.modules.batchnorm._BatchNorm):
                continue
            if m.track_running_stats:
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=generator, dtype=DTYPE))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=generator, dtype=DTYPE))
                m.num_batches_tracked.fill_(int(torch.randint(0, 5, (), generator=generator)))
            if m.affine:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=generator, dtype=DTYPE))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=generator, dtype=DTYPE))


# --------------------------------------------------------------------------- #
# the spec hypothesis hands to tests
# --------------------------------------------------------------------------- #


class SupernetSpec:
    """A drawn supernet: ``build()`` makes it; ``repr`` describes it readably."""

    def __init__(self, config: SupernetConfig):
        self.config = config

    @property
    def n_mixed_edges(self) -> int:
        return sum(len(c.edges) for c in self.config.cells)

    def build(self) -> Tuple[nn.Module, Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
        """A fresh float64 ``(model, example_inputs, arch_tensors)``; deterministic in the config."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = (SupernetWithAlphaInput if cfg.arch.storage == "input" else Supernet)(cfg)
            model.to(DTYPE)
            generator = torch.Generator().manual_seed(cfg.seed + 1)
            _randomise_batchnorm(model, generator)
            in_channels = 3 if cfg.stem else cfg.channels
            x = torch.randn(cfg.batch, in_channels, cfg.height, cfg.width, generator=generator, dtype=DTYPE)
            inputs: Tuple[torch.Tensor, ...] = (x,)
            if cfg.arch.storage == "input":
                alphas = 0.5 * torch.randn(model.n_alpha_rows, model.alpha_width, generator=generator, dtype=DTYPE)
                inputs = (x, alphas)
        return model, inputs, model.plain_alphas

    def describe(self) -> str:
        cfg = self.config
        a = cfg.arch
        arch = f"{a.storage}/{a.transform}@{a.owner}" + (" shared" if a.share_across_cells else "")
        if a.transform == "gumbel_st":
            arch += f" tau={a.tau}"
        lines = [
            f"Supernet(C={cfg.channels}, HxW={cfg.height}x{cfg.width}, batch={cfg.batch}, stem={cfg.stem}, "
            f"arch={arch}, output={cfg.output}, seed={cfg.seed})"
        ]
        for c, cell in enumerate(cfg.cells):
            nodes = "nodes" if cell.kind == "nb201" else "intermediate nodes"
            lines.append(f"  cell {c}: {cell.kind}, {cell.n_nodes} {nodes}{', reduction' if cell.reduction else ''}")
            for e, edge in enumerate(cell.edges):
                extras = [edge.weighted_sum] + (["stride 2"] if edge.stride != 1 else []) + (["shared relu"] if edge.share_relu else [])
                ops = ", ".join(str(op) for op in edge.ops)
                lines.append(f"    edge {e} ({edge.dst}<-{edge.src}) [{'; '.join(extras)}]: {ops}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.describe()


# --------------------------------------------------------------------------- #
# strategies
# --------------------------------------------------------------------------- #


def bn_configs() -> st.SearchStrategy[BNConfig]:
    return st.builds(
        BNConfig,
        affine=st.booleans(),
        track_running_stats=st.booleans(),
        momentum=st.sampled_from((0.1, None, 0.5)),
        eps=st.sampled_from((1e-5, 1e-3)),
    )


@st.composite
def op_configs(draw, stride: int = 1) -> OpConfig:
    kind = draw(st.sampled_from(OP_KINDS))
    if kind in ("conv", "relu_conv_bn", "sep_conv", "double_sep"):
        kh = draw(st.sampled_from((1, 3, 5, 7)))
        kw = draw(st.sampled_from((1, 3, 5, 7))) if draw(st.booleans()) else kh  # sometimes non-square
        dilation = draw(st.sampled_from((1, 2)))
        dense_kind = kind in ("conv", "relu_conv_bn")
        return OpConfig(
            kind,
            kernel=(kh, kw),
            dilation=dilation,
            depthwise=draw(st.booleans()) if dense_kind else False,
            bias=draw(st.booleans()) if dense_kind else False,
            bn=None if kind == "conv" else draw(bn_configs()),
        )
    if kind in ("avg_pool", "max_pool"):
        size = draw(st.sampled_from((3, 5)))
        exclude_pad = draw(st.booleans()) if kind == "avg_pool" else False
        bn = draw(bn_configs()) if draw(st.booleans()) else None
        return OpConfig(kind, kernel=(size, size), count_include_pad=not exclude_pad, bn=bn)
    if kind in ("identity", "passthrough") and stride != 1:
        return OpConfig(kind, bn=draw(bn_configs()))  # FactorizedReduce
    return OpConfig(kind)


@st.composite
def edge_configs(draw, src: int, dst: int, stride: int, max_ops: int = 6) -> EdgeConfig:
    n_ops = draw(st.integers(2, max_ops))
    ops = tuple(draw(op_configs(stride)) for _ in range(n_ops))
    return EdgeConfig(
        src=src,
        dst=dst,
        stride=stride,
        ops=ops,
        weighted_sum=draw(st.sampled_from(SUM_SHAPES)),
        share_relu=draw(st.booleans()),
    )


@st.composite
def cell_configs(draw, max_ops: int = 6) -> CellConfig:
    kind = draw(st.sampled_from(("nb201", "darts")))
    reduction = draw(st.booleans())
    edges = []
    if kind == "nb201":
        n_nodes = draw(st.integers(2, 4))
        for i in range(1, n_nodes):
            for j in range(i):
                edges.append(draw(edge_configs(j, i, 2 if reduction and j == 0 else 1, max_ops)))
    else:
        n_nodes = draw(st.integers(1, 3))
        for i in range(n_nodes):
            for j in range(2 + i):
                edges.append(draw(edge_configs(j, 2 + i, 2 if reduction and j < 2 else 1, max_ops)))
    edges = _draw_reuses(draw, edges)
    return CellConfig(kind, n_nodes, reduction, tuple(edges))


def _draw_reuses(draw, edges: List[EdgeConfig]) -> List[EdgeConfig]:
    """Occasionally make a candidate the same instance as an earlier one of the same stride.

    A reused candidate is never itself a reuse, and a reuse is never reused.
    """
    picks = draw(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), max_size=2))
    if not picks:
        return edges
    ops = [list(e.ops) for e in edges]
    slots = [(e, m) for e in range(len(edges)) for m in range(len(ops[e]))]
    sources_used = set()
    for target_pick, source_pick in picks:
        targets = [s for s in slots if not isinstance(ops[s[0]][s[1]], Reuse) and s not in sources_used]
        if not targets:
            break
        e, m = targets[target_pick % len(targets)]
        sources = [
            s for s in slots
            if s < (e, m) and edges[s[0]].stride == edges[e].stride and not isinstance(ops[s[0]][s[1]], Reuse)
        ]
        if not sources:
            continue
        e2, m2 = sources[source_pick % len(sources)]
        ops[e][m] = Reuse(e2, m2)
        sources_used.add((e2, m2))
    return [dataclasses.replace(edge, ops=tuple(o)) for edge, o in zip(edges, ops)]


def arch_configs() -> st.SearchStrategy[ArchConfig]:
    @st.composite
    def draw_arch(draw):
        storage = draw(st.sampled_from(("param", "plain", "input")))
        transform = draw(st.sampled_from(("softmax", "none", "sigmoid", "gumbel_st")))
        owner = "network" if storage == "input" else draw(st.sampled_from(("network", "cell")))
        share = False if storage == "input" else draw(st.booleans())
        tau = draw(st.sampled_from((1.0, 0.5))) if transform == "gumbel_st" else 1.0
        return ArchConfig(storage, transform, owner, share, tau)

    return draw_arch()


@st.composite
def supernet_configs(draw, max_cells: int = 2, max_ops: int = 6) -> SupernetConfig:
    channels = draw(st.integers(2, 6))
    height = draw(st.integers(5, 9))
    width = draw(st.integers(5, 9)) if draw(st.booleans()) else height
    stem = draw(st.booleans())
    arch = draw(arch_configs())
    n_cells = draw(st.integers(1, max_cells))
    cells = tuple(draw(cell_configs(max_ops)) for _ in range(n_cells))
    output = draw(st.sampled_from(("tensor", "tuple", "dict")))
    seed = draw(st.integers(0, 2**16))
    return SupernetConfig(channels, height, width, stem, cells, arch, output, seed)


@st.composite
def supernets(draw, max_cells: int = 2, max_ops: int = 6) -> SupernetSpec:
    """Random float64 supernets; see the module docstring for what is covered.

    Drawn inside a composite (not ``.map``) so that a failing example prints
    as :meth:`SupernetSpec.describe`, not as nested dataclass constructors.
    """
    return SupernetSpec(draw(supernet_configs(max_cells, max_ops)))
