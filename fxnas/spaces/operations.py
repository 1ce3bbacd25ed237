"""Candidate operations of differentiable-NAS search spaces.

Every candidate is a small ``nn.Module`` built by a factory with the common
signature ``factory(C_in, C_out, stride, affine, track_running_stats)``; the
factories live in :data:`OPS`, keyed by the conventional candidate names used
by NAS-Bench-201 / AutoDL (``nor_conv_3x3``, ``dua_sepc_3x3`` ...) and by the
DARTS search code (``sep_conv_3x3``, ``dil_conv_3x3`` ...).

Conventions (chosen to match the public search code the names come from):

* NAS-Bench-201 convolutions (``nor_conv_*``) and the AutoDL separable
  convolutions (``dua_sepc_*``, ``dil_sepc_*``) give their last (pointwise)
  convolution a bias exactly when the following BatchNorm is *not* affine
  (``bias = not affine``), so in search (``affine=False``) they have a bias.
  Depthwise convolutions never have one.
* DARTS candidates (``sep_conv_*``, ``dil_conv_*``) and ``skip_connect``'s
  :class:`FactorizedReduce` never use a bias.
* Pools are applied to the input itself, with no ReLU and no BatchNorm; the
  DARTS mixed op appends a ``BatchNorm2d(affine=False)`` itself (see
  :mod:`fxnas.spaces.darts`).  When a pool must change the channel count, a
  1x1 :class:`ReLUConvBN` runs first.

All forwards are straight-line tensor code (no ``.item()``, no data-dependent
control flow), so they trace with torch.fx.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import torch
import torch.nn as nn

__all__ = [
    "Zero",
    "Identity",
    "FactorizedReduce",
    "ReLUConvBN",
    "ReLUSepConvBN",
    "DualSepConv",
    "Pooling",
    "OPS",
    "OpFactory",
    "NB201_OPS",
    "NB201_DARTS_OPS",
    "NB201_LARGE_OPS",
    "DARTS_OPS",
    "make_op",
]


class Zero(nn.Module):
    """The ``none`` candidate: an all-zero output of the candidate's shape.

    Written as real search code writes it, ``x.mul(0.)`` (strided:
    ``x[:, :, ::s, ::s].mul(0.)``), so the result stays connected to ``x`` in
    the graph.  When the channel count changes, ``x.new_zeros`` is used.
    """

    def __init__(self, C_in: int, C_out: int, stride: int):
        super().__init__()
        self.C_in = C_in
        self.C_out = C_out
        self.stride = stride
        self.is_zero = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.C_in == self.C_out:
            return x.mul(0.0)
        return x.new_zeros(x.shape[0], self.C_out, x.shape[2], x.shape[3])

    def extra_repr(self) -> str:
        return f"C_in={self.C_in}, C_out={self.C_out}, stride={self.stride}"


class Identity(nn.Module):
    """The ``skip_connect`` candidate when shape is preserved: returns ``x``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FactorizedReduce(nn.Module):
    """``skip_connect`` for a stride-2 edge (or a channel change).

    Stride 2: ReLU, then two 1x1 stride-2 convolutions producing half of the
    output channels each, the second one reading ``x`` shifted by one pixel
    (zero-padded bottom/right, then ``[:, :, 1:, 1:]``, so odd sizes work);
    the halves are concatenated and batch-normalised.
    Stride 1 (only a channel change): ReLU, one 1x1 convolution, BatchNorm.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        stride: int = 2,
        affine: bool = False,
        track_running_stats: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"FactorizedReduce supports stride 1 or 2, got {stride}")
        self.C_in = C_in
        self.C_out = C_out
        self.stride = stride
        self.relu = nn.ReLU(inplace=False)
        if stride == 2:
            half = C_out // 2
            self.convs = nn.ModuleList(
                [
                    nn.Conv2d(C_in, half, 1, stride=2, padding=0, bias=bias),
                    nn.Conv2d(C_in, C_out - half, 1, stride=2, padding=0, bias=bias),
                ]
            )
            self.pad = nn.ConstantPad2d((0, 1, 0, 1), 0.0)
        else:
            self.conv = nn.Conv2d(C_in, C_out, 1, stride=1, padding=0, bias=bias)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        if self.stride == 2:
            shifted = self.pad(x)[:, :, 1:, 1:]
            out = torch.cat([self.convs[0](x), self.convs[1](shifted)], dim=1)
        else:
            out = self.conv(x)
        return self.bn(out)

    def extra_repr(self) -> str:
        return f"C_in={self.C_in}, C_out={self.C_out}, stride={self.stride}"


class ReLUConvBN(nn.Module):
    """ReLU -> Conv2d -> BatchNorm2d (the ``nor_conv_kxk`` candidate)."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int = 1,
        affine: bool = False,
        track_running_stats: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv = nn.Conv2d(
            C_in, C_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias
        )
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.relu(x)))


class ReLUSepConvBN(nn.Module):
    """One separable stage: ReLU -> depthwise kxk -> pointwise 1x1 -> BatchNorm2d.

    Alone with dilation 2 this is DARTS's ``dil_conv_kxk`` / AutoDL's
    ``dil_sepc_kxk``; two stacked stages form :class:`DualSepConv`.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int = 1,
        affine: bool = False,
        track_running_stats: bool = True,
        pointwise_bias: bool = False,
    ):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.depthwise = nn.Conv2d(
            C_in,
            C_in,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=C_in,
            bias=False,
        )
        self.pointwise = nn.Conv2d(C_in, C_out, 1, padding=0, bias=pointwise_bias)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(self.relu(x))))


class DualSepConv(nn.Module):
    """Two stacked separable stages (DARTS ``sep_conv_kxk``, AutoDL ``dua_sepc_kxk``).

    The first stage carries the stride and keeps ``C_in`` channels; the second
    has stride 1 and maps to ``C_out``.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int = 1,
        affine: bool = False,
        track_running_stats: bool = True,
        pointwise_bias: bool = False,
    ):
        super().__init__()
        common = dict(
            dilation=dilation,
            affine=affine,
            track_running_stats=track_running_stats,
            pointwise_bias=pointwise_bias,
        )
        self.stage_a = ReLUSepConvBN(C_in, C_in, kernel_size, stride, padding, **common)
        self.stage_b = ReLUSepConvBN(C_in, C_out, kernel_size, 1, padding, **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage_b(self.stage_a(x))


class Pooling(nn.Module):
    """3x3 average (``count_include_pad=False``) or max pooling, padding 1.

    If ``C_in != C_out`` a 1x1 :class:`ReLUConvBN` (``preprocess``) runs first.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        stride: int,
        mode: str,
        affine: bool = False,
        track_running_stats: bool = True,
    ):
        super().__init__()
        if C_in != C_out:
            self.preprocess = ReLUConvBN(
                C_in, C_out, 1, 1, 0, 1, affine, track_running_stats, bias=not affine
            )
        else:
            self.preprocess = None
        if mode == "avg":
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        elif mode == "max":
            self.pool = nn.MaxPool2d(3, stride=stride, padding=1)
        else:
            raise ValueError(f"unknown pooling mode {mode!r} (expected 'avg' or 'max')")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocess is not None:
            x = self.preprocess(x)
        return self.pool(x)


OpFactory = Callable[[int, int, int, bool, bool], nn.Module]


def _nor_conv(kernel_size: int) -> OpFactory:
    """NAS-Bench-201 ``nor_conv_kxk``: ReLU-Conv(bias = not affine)-BN."""

    def factory(C_in, C_out, stride, affine, track_running_stats):
        return ReLUConvBN(
            C_in,
            C_out,
            kernel_size,
            stride,
            kernel_size // 2,
            1,
            affine,
            track_running_stats,
            bias=not affine,
        )

    return factory


def _sep_conv(kernel_size: int, *, dual: bool, dilation: int, pointwise_bias_if_not_affine: bool):
    """Separable candidates; padding keeps the spatial size at stride 1."""
    padding = dilation * (kernel_size - 1) // 2
    cls = DualSepConv if dual else ReLUSepConvBN

    def factory(C_in, C_out, stride, affine, track_running_stats):
        return cls(
            C_in,
            C_out,
            kernel_size,
            stride,
            padding,
            dilation,
            affine,
            track_running_stats,
            pointwise_bias=pointwise_bias_if_not_affine and not affine,
        )

    return factory


def _skip_connect(C_in, C_out, stride, affine, track_running_stats):
    if stride == 1 and C_in == C_out:
        return Identity()
    return FactorizedReduce(C_in, C_out, stride, affine, track_running_stats, bias=False)


#: name -> factory(C_in, C_out, stride, affine, track_running_stats)
OPS: Dict[str, OpFactory] = {
    "none": lambda C_in, C_out, stride, affine, trs: Zero(C_in, C_out, stride),
    "skip_connect": _skip_connect,
    "avg_pool_3x3": lambda C_in, C_out, stride, affine, trs: Pooling(
        C_in, C_out, stride, "avg", affine, trs
    ),
    "max_pool_3x3": lambda C_in, C_out, stride, affine, trs: Pooling(
        C_in, C_out, stride, "max", affine, trs
    ),
    # NAS-Bench-201 / AutoDL
    "nor_conv_1x1": _nor_conv(1),
    "nor_conv_3x3": _nor_conv(3),
    "nor_conv_5x5": _nor_conv(5),
    "nor_conv_7x7": _nor_conv(7),
    "dua_sepc_3x3": _sep_conv(3, dual=True, dilation=1, pointwise_bias_if_not_affine=True),
    "dua_sepc_5x5": _sep_conv(5, dual=True, dilation=1, pointwise_bias_if_not_affine=True),
    "dil_sepc_3x3": _sep_conv(3, dual=False, dilation=2, pointwise_bias_if_not_affine=True),
    "dil_sepc_5x5": _sep_conv(5, dual=False, dilation=2, pointwise_bias_if_not_affine=True),
    # DARTS
    "sep_conv_3x3": _sep_conv(3, dual=True, dilation=1, pointwise_bias_if_not_affine=False),
    "sep_conv_5x5": _sep_conv(5, dual=True, dilation=1, pointwise_bias_if_not_affine=False),
    "dil_conv_3x3": _sep_conv(3, dual=False, dilation=2, pointwise_bias_if_not_affine=False),
    "dil_conv_5x5": _sep_conv(5, dual=False, dilation=2, pointwise_bias_if_not_affine=False),
}

#: NAS-Bench-201 search space (xautodl ``SearchSpaceNames["nas-bench-201"]``).
NB201_OPS: List[str] = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]

#: xautodl's ``SearchSpaceNames["darts"]``: DARTS-like candidates on the NB201 skeleton.
NB201_DARTS_OPS: List[str] = [
    "none",
    "skip_connect",
    "dua_sepc_3x3",
    "dua_sepc_5x5",
    "dil_sepc_3x3",
    "dil_sepc_5x5",
    "avg_pool_3x3",
    "max_pool_3x3",
]

#: NB201 plus larger plain convolutions (several kernel sizes to merge).
NB201_LARGE_OPS: List[str] = NB201_OPS + ["nor_conv_5x5", "nor_conv_7x7"]

#: The eight DARTS primitives, in the DARTS search code's order.
DARTS_OPS: List[str] = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]


def make_op(
    name: str,
    C_in: int,
    C_out: int,
    stride: int = 1,
    affine: bool = False,
    track_running_stats: bool = True,
) -> nn.Module:
    """Build candidate ``name`` from :data:`OPS` (clear error for unknown names)."""
    try:
        factory = OPS[name]
    except KeyError:
        raise KeyError(f"unknown candidate operation {name!r}; known: {sorted(OPS)}") from None
    return factory(C_in, C_out, stride, affine, track_running_stats)
