"""Kernel algebra: pure tensor functions behind merge_linear, fold_eval_bn and kernel_norm.

Nothing here knows about torch.fx or holds nn.Module state; the runtime module
(`fxnas.modules.MergedConv`) and the passes are thin layers over these functions.

Conventions
- A convolution kernel has shape ``(out_channels, in_channels // groups, *kernel_size)``;
  its number of spatial dims is ``kernel.dim() - 2`` (1d, 2d and 3d are supported).
- A Linear weight ``(out_features, in_features)`` is a kernel with 0 spatial dims.
- Convolutions are PyTorch's: cross-correlation, zero padding, symmetric padding.
- Every function is differentiable in its tensor arguments and keeps their dtype
  and device, so the architecture gradient flows through a merged kernel.

The central identity (DESIGN.md, merge_linear) is

    Σ_m w_m · ℓ_m(x)  ==  conv(x; Σ_m w_m · E(K_m), Σ_m w_m · b_m)

where ``E`` embeds each candidate kernel into one common geometry (dilation made
dense, zero-padded to a common size, grouped made block-diagonal). `plan_merge`
computes ``E`` once as flat index maps; `merge_kernels` applies it with a single
``index_add``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

#: ``F.conv1d`` / ``conv2d`` / ``conv3d`` by number of spatial dims
CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

IntOrTuple = Union[int, Sequence[int]]

# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


def _as_tuple(value: IntOrTuple, n: int, name: str) -> tuple[int, ...]:
    """``3 -> (3, 3)`` for n == 2; a sequence is checked to have n entries."""
    if isinstance(value, int):
        return (value,) * n
    result = tuple(int(v) for v in value)
    if len(result) != n:
        raise ValueError(f"{name} needs {n} entries (one per spatial dim), got {result}")
    return result


def _spatial_dims(kernel: torch.Tensor) -> int:
    return kernel.dim() - 2


def _channel_view_shape(kernel: torch.Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a per-output-channel vector against ``kernel``."""
    return (-1,) + (1,) * (kernel.dim() - 1)


def _size_text(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


# ---------------------------------------------------------------------------------------
# Kernel embeddings: pad, centre, dilate, group -> dense
# ---------------------------------------------------------------------------------------


def pad_kernel(kernel: torch.Tensor, before: IntOrTuple, after: IntOrTuple) -> torch.Tensor:
    """Zero-pad the spatial dims of a kernel: ``K'[..., before + i] = K[..., i]``.

    Identity (per spatial dim, q zeros on both sides):
        ``conv(x, K, padding=p) == conv(x, pad_kernel(K, q, q), padding=p + q)``.

    ``before`` / ``after`` are given in spatial-dim order (dim 0 first). F.pad wants
    them last-dim-first; getting that order wrong is invisible with square kernels,
    which is why this function exists and is tested with non-square ones.

    Example: a (1, 3) kernel padded with before=(1, 1), after=(1, 1) becomes (3, 5).
    """
    n = _spatial_dims(kernel)
    before = _as_tuple(before, n, "before")
    after = _as_tuple(after, n, "after")
    if min(before + after, default=0) < 0:
        raise ValueError(f"pad_kernel only adds zeros; got before={before}, after={after}")
    pads: list[int] = []
    for d in reversed(range(n)):  # F.pad: last dim first
        pads += [before[d], after[d]]
    if not any(pads):
        return kernel
    return F.pad(kernel, pads)


def center_kernel(kernel: torch.Tensor, size: IntOrTuple) -> torch.Tensor:
    """Embed a kernel in the centre of a larger zero kernel of spatial ``size``.

    Identity: ``conv(x, K, padding=p) == conv(x, center_kernel(K, k + 2q), padding=p + q)``.
    Every size difference must be even (otherwise there is no centre).
    """
    n = _spatial_dims(kernel)
    size = _as_tuple(size, n, "size")
    extra = [s - k for s, k in zip(size, kernel.shape[2:])]
    if any(e < 0 or e % 2 for e in extra):
        raise ValueError(
            f"cannot centre a {_size_text(kernel.shape[2:])} kernel in {_size_text(size)}: "
            "each size difference must be even and non-negative"
        )
    half = [e // 2 for e in extra]
    return pad_kernel(kernel, half, half)


def dilate_kernel(kernel: torch.Tensor, dilation: IntOrTuple) -> torch.Tensor:
    """Dense kernel of size ``d*(k-1)+1`` with ``d-1`` zeros between taps.

    Identity: ``conv(x, K, dilation=d, padding=p) == conv(x, dilate_kernel(K, d), padding=p)``.
    Example: taps [a, b, c] with d=2 become [a, 0, b, 0, c].
    """
    n = _spatial_dims(kernel)
    dilation = _as_tuple(dilation, n, "dilation")
    if all(d == 1 for d in dilation):
        return kernel
    size = [d * (k - 1) + 1 for d, k in zip(dilation, kernel.shape[2:])]
    dense = kernel.new_zeros(tuple(kernel.shape[:2]) + tuple(size))
    # Writing into a strided view is recorded by autograd (CopySlices), so the
    # result stays differentiable with respect to ``kernel``.
    dense[(slice(None), slice(None)) + tuple(slice(None, None, d) for d in dilation)] = kernel
    return dense


def grouped_to_dense(kernel: torch.Tensor, groups: int) -> torch.Tensor:
    """Block-diagonal dense kernel of a grouped convolution.

    Identity: ``conv(x, K, groups=g) == conv(x, grouped_to_dense(K, g), groups=1)``.
    Output channel o of group h = o // (out/g) only sees input channels of group h,
    so the dense kernel is zero outside the diagonal blocks. A depthwise kernel
    (C, 1, k) becomes a (C, C, k) kernel that is diagonal in its channel dims.
    """
    if groups == 1:
        return kernel
    out_channels, in_per_group = kernel.shape[:2]
    if out_channels % groups:
        raise ValueError(f"{out_channels} output channels are not divisible by groups={groups}")
    spatial = tuple(kernel.shape[2:])
    ones = (1,) * len(spatial)
    blocks = kernel.reshape(groups, out_channels // groups, 1, in_per_group, *spatial)
    eye = torch.eye(groups, dtype=kernel.dtype, device=kernel.device)
    eye = eye.reshape(groups, 1, groups, 1, *ones)
    return (blocks * eye).reshape(out_channels, groups * in_per_group, *spatial)


# ---------------------------------------------------------------------------------------
# Constant kernels: identity and average pooling
# ---------------------------------------------------------------------------------------


def identity_kernel(
    channels: int,
    spatial_dims: int,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device] = None,
    depthwise: bool = True,
) -> torch.Tensor:
    """Delta kernel of the identity map.

    Identity: ``conv(x, identity_kernel(C, n), groups=C) == x`` (depthwise form, shape
    (C, 1, 1, ...)) and ``conv(x, identity_kernel(C, n, depthwise=False)) == x`` (dense
    form, shape (C, C, 1, ...)). With ``spatial_dims=0`` the dense form is the (C, C)
    identity matrix, i.e. ``F.linear(x, I) == x``.
    """
    ones = (1,) * spatial_dims
    if depthwise:
        if spatial_dims == 0:
            raise ValueError("a Linear weight has no groups: use depthwise=False for spatial_dims=0")
        return torch.ones((channels, 1) + ones, dtype=dtype, device=device)
    eye = torch.eye(channels, dtype=dtype, device=device)
    return eye.reshape((channels, channels) + ones)


def avg_pool_kernel(
    channels: int,
    kernel_size: Sequence[int],
    divisor: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Depthwise constant kernel ``1/divisor`` of shape (C, 1, *kernel_size).

    Identity (divisor defaults to prod(kernel_size)):
        ``conv(x, K, stride=s, padding=p, groups=C)
          == avg_pool(x, k, s, p, count_include_pad=True, ceil_mode=False)``
    and with ``divisor=d`` it equals ``avg_pool(..., divisor_override=d)`` for either
    value of count_include_pad. For ``count_include_pad=False`` without a divisor
    override add `avg_pool_border_correction`.
    """
    kernel_size = tuple(int(k) for k in kernel_size)
    if divisor is None:
        divisor = math.prod(kernel_size)
    return torch.full((channels, 1) + kernel_size, 1.0 / divisor, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------
# Folding and composing: BatchNorm after conv, pointwise conv after conv
# ---------------------------------------------------------------------------------------


def fold_batchnorm(
    kernel: torch.Tensor,
    bias: Optional[torch.Tensor],
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    gamma: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the convolution (or Linear) before it.

    Identity, with ``s = gamma / sqrt(running_var + eps)`` per output channel:
        ``bn(conv(x; K, b)) == conv(x; s·K, s·(b - running_mean) + beta)``
    A missing bias counts as 0, missing affine parameters as gamma=1, beta=0.
    The folded kernel keeps ``kernel.dtype``; the folded bias keeps ``bias.dtype``
    (``kernel.dtype`` when there was no bias). The arithmetic runs in the promoted
    dtype so a float64 kernel is not rounded through float32 running statistics.
    Only valid in eval mode: in training BatchNorm normalises with batch statistics.
    """
    compute = torch.promote_types(kernel.dtype, running_var.dtype)
    scale = torch.rsqrt(running_var.to(compute) + eps)
    if gamma is not None:
        scale = scale * gamma.to(compute)
    bias_dtype = kernel.dtype if bias is None else bias.dtype
    shifted = -running_mean.to(compute) if bias is None else bias.to(compute) - running_mean.to(compute)
    new_bias = shifted * scale
    if beta is not None:
        new_bias = new_bias + beta.to(compute)
    new_kernel = kernel.to(compute) * scale.reshape(_channel_view_shape(kernel))
    return new_kernel.to(kernel.dtype), new_bias.to(bias_dtype)


def compose_pointwise(
    kernel: torch.Tensor,
    bias: Optional[torch.Tensor],
    pw_kernel: torch.Tensor,
    pw_bias: Optional[torch.Tensor],
    groups: int = 1,
    pw_groups: int = 1,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Dense kernel of a 1x1 convolution applied after a (grouped or dense) convolution.

    Identity, with P the (out, mid) matrix of the 1x1 conv:
        ``pw(conv(x; K, b, groups=g); P, c) == conv(x; P·dense(K), P·b + c, groups=1)``
    The first conv keeps its stride, padding and dilation. ``pw_kernel`` may be a
    (out, mid/pw_groups, 1, ...) conv kernel or an (out, mid) Linear weight (then
    this composes two Linear layers). The bias is None only when both are None.

    Note the cost: a depthwise k×k followed by a 1x1 (a separable conv) becomes a
    dense k×k, which is more MACs than the pair; compose only when the composed
    kernel then merges with something (see `merge_cost`).
    """
    if any(s != 1 for s in pw_kernel.shape[2:]):
        raise ValueError(f"pw_kernel must be pointwise (1x1), got shape {tuple(pw_kernel.shape)}")
    dense = grouped_to_dense(kernel, groups)  # (mid, in, *k)
    pointwise = grouped_to_dense(pw_kernel, pw_groups)
    pointwise = pointwise.reshape(pointwise.shape[0], pointwise.shape[1])  # (out, mid)
    if pointwise.shape[1] != dense.shape[0]:
        raise ValueError(
            f"pointwise conv reads {pointwise.shape[1]} channels but the conv before it "
            f"produces {dense.shape[0]}"
        )
    composed = torch.tensordot(pointwise, dense, dims=1)  # (out, in, *k)
    new_bias = None
    if bias is not None:
        new_bias = pointwise @ bias
    if pw_bias is not None:
        new_bias = pw_bias if new_bias is None else new_bias + pw_bias
    return composed, new_bias


def normalize_per_output_channel(kernel: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``K[c] / (‖K[c]‖₂ + eps)`` for every output channel c (kernel_norm).

    For white unit-variance input every output channel of the normalised kernel
    has variance ‖K̂[c]‖² ≈ 1, so a candidate's architecture weight is no longer
    confounded with its kernel's magnitude. Differentiable; at an all-zero channel
    the gradient of the norm is 0 (PyTorch masks it), so no NaN appears. The norm
    is unchanged by zero padding, dilation and group expansion, so normalising
    before or after the embedding ``E`` is the same.
    """
    norms = torch.linalg.vector_norm(kernel.reshape(kernel.shape[0], -1), dim=1)
    return kernel / (norms + eps).reshape(_channel_view_shape(kernel))


# ---------------------------------------------------------------------------------------
# Average pooling with count_include_pad=False: exact border correction
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PoolAxis:
    """Geometry of one spatial dim of an average pool (no ceil_mode).

    Outputs ``[0, lo)`` have windows starting in the leading padding, outputs
    ``[hi, n_out)`` have windows ending in the trailing padding; ``[lo, hi)`` is the
    interior where both divisors equal the full window size.
    """

    length: int
    kernel: int
    stride: int
    padding: int
    n_out: int
    lo: int
    hi: int

    @classmethod
    def build(cls, length: int, kernel: int, stride: int, padding: int) -> "_PoolAxis":
        n_out = (length + 2 * padding - kernel) // stride + 1
        if n_out < 1:
            raise ValueError(f"pool window {kernel} does not fit input size {length} + 2*{padding}")
        lo = min(n_out, -(-padding // stride))  # ceil(padding / stride)
        # window of output o ends (exclusive) at o*s - p + k; it is past the input
        # when o*s > L + p - k, i.e. o >= floor((L + p - k) / s) + 1.
        hi = (length + padding - kernel) // stride + 1
        hi = max(lo, min(n_out, hi))
        return cls(length, kernel, stride, padding, n_out, lo, hi)

    def input_span(self, a: int, b: int) -> tuple[int, int]:
        """Input positions [start, end) read by outputs [a, b), padding included."""
        return a * self.stride - self.padding, (b - 1) * self.stride - self.padding + self.kernel

    def valid_counts(self, a: int, b: int, device: torch.device) -> torch.Tensor:
        """Number of non-padding positions in the windows of outputs [a, b)."""
        start = torch.arange(a, b, device=device) * self.stride - self.padding
        return torch.clamp(start + self.kernel, max=self.length) - torch.clamp(start, min=0)


def _window_counts(axes: Sequence[_PoolAxis], ranges: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Non-padding inputs in the window of every output of the box ``ranges`` (integral, broadcast per dim)."""
    counts = None
    for d, (axis, (a, b)) in enumerate(zip(axes, ranges)):
        shape = [1] * len(axes)
        shape[d] = b - a
        per_dim = axis.valid_counts(a, b, device).reshape(shape)
        counts = per_dim if counts is None else counts * per_dim
    return counts


def _region_correction(
    x: torch.Tensor, axes: Sequence[_PoolAxis], ranges: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """``avg_excl - avg_incl`` on the output box ``ranges`` (one [a, b) per dim).

    Only the input slab those outputs read is touched: it is sliced out, zero-padded
    where it reaches past the input, and box-summed; then
    ``S / n_valid - S / prod(k)`` is the difference of the two divisors.
    """
    slab = x
    pads: list[int] = []
    for d, (axis, (a, b)) in enumerate(zip(axes, ranges)):
        start, end = axis.input_span(a, b)
        first, last = max(start, 0), min(end, axis.length)
        slab = slab.narrow(2 + d, first, last - first)
        pads = [first - start, end - last] + pads  # F.pad: last dim first
    if any(pads):
        slab = F.pad(slab, pads)
    sums = box_sum(slab, [a.kernel for a in axes], [a.stride for a in axes], [0] * len(axes))
    counts = _window_counts(axes, ranges, x.device)
    full = math.prod(a.kernel for a in axes)
    return sums / counts.to(sums.dtype) - sums / full


def _add_correction_recursive(
    out: torch.Tensor,
    x: torch.Tensor,
    axes: Sequence[_PoolAxis],
    scale: Union[float, torch.Tensor],
    dim: int,
    ranges: list[tuple[int, int]],
) -> torch.Tensor:
    """Add ``scale * correction`` to ``out`` (outputs already restricted to ``ranges``).

    Splits spatial dim ``dim`` into [leading border | interior | trailing border].
    Border slabs get their correction computed over the full extent of the later
    dims; the interior part recurses to the next dim. When every dim is interior
    the correction is exactly zero and ``out`` is returned untouched. The union of
    border slabs is covered exactly once, so the work is O(border area).
    """
    if dim == len(axes):
        return out
    axis = axes[dim]
    later = [(0, a.n_out) for a in axes[dim + 1 :]]
    pieces = []
    for a, b, is_border in ((0, axis.lo, True), (axis.lo, axis.hi, False), (axis.hi, axis.n_out, True)):
        if b <= a:
            continue
        part = out.narrow(2 + dim, a, b - a)
        if is_border:
            part = part + scale * _region_correction(x, axes, ranges + [(a, b)] + later)
        else:
            part = _add_correction_recursive(part, x, axes, scale, dim + 1, ranges + [(a, b)])
        pieces.append(part)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2 + dim)


def _pool_axes(
    x: torch.Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple], padding: IntOrTuple
) -> list[_PoolAxis]:
    n = x.dim() - 2
    if n < 1:
        raise ValueError(f"expected a batched (N, C, *spatial) input, got shape {tuple(x.shape)}")
    kernel_size = _as_tuple(kernel_size, n, "kernel_size")
    stride = kernel_size if stride is None else _as_tuple(stride, n, "stride")
    padding = _as_tuple(padding, n, "padding")
    return [_PoolAxis.build(x.shape[2 + d], kernel_size[d], stride[d], padding[d]) for d in range(n)]


def add_avg_pool_border_correction(
    out: torch.Tensor,
    x: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    scale: Union[float, torch.Tensor] = 1.0,
) -> torch.Tensor:
    """``out + scale * avg_pool_border_correction(x, ...)``, touching only the border.

    This is how `MergedConv` turns ``conv(x, 1/prod(k))`` into an exact
    count_include_pad=False pool without a second full-size pass. For autograd
    the correction is recomputed in backward from ``x`` (which the convolution
    saves anyway) instead of saving its border slabs: it is cheap, and the
    merged operator then saves nothing beyond what the convolution saves.
    """
    axes = _pool_axes(x, kernel_size, stride, padding)
    expected = tuple(x.shape[:2]) + tuple(a.n_out for a in axes)
    if tuple(out.shape) != expected:
        raise ValueError(f"out has shape {tuple(out.shape)}, the pool produces {expected}")
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor(float(scale), dtype=out.dtype, device=out.device)
    return _BorderCorrection.apply(out, x, scale, tuple(axes))


class _BorderCorrection(torch.autograd.Function):
    """``out + scale · correction(x)`` whose backward recomputes the (border-only) correction."""

    @staticmethod
    def forward(ctx, out, x, scale, axes):  # type: ignore[override]
        ctx.axes = axes
        ctx.save_for_backward(x, scale)
        return _add_correction_recursive(out, x, axes, scale, 0, [])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, scale = ctx.saved_tensors
        grad_x = grad_scale = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(ctx.needs_input_grad[1])
                zeros = grad.new_zeros(grad.shape)
                correction = _add_correction_recursive(zeros, leaf, ctx.axes, 1.0, 0, [])
            if ctx.needs_input_grad[1]:
                (grad_x,) = torch.autograd.grad(correction, leaf, grad * scale)
            if ctx.needs_input_grad[2]:
                grad_scale = (correction.detach() * grad).sum().reshape(scale.shape).to(scale.dtype)
        return grad, grad_x, grad_scale, None


def avg_pool_border_correction(
    x: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
) -> torch.Tensor:
    """``avg_pool(x, count_include_pad=False) - avg_pool(x, count_include_pad=True)``.

    Both pools sum the same window; they differ only in the divisor, and only for
    outputs whose window overlaps the padding. So

        ``pool_excl(x) == conv(x, 1/prod(k), groups=C) + avg_pool_border_correction(x)``

    exactly. The correction is computed on the border strips alone (the rows /
    columns / planes whose windows touch padding); the interior of the result is
    exactly zero. ``x`` is batched (N, C, *spatial) with 1 to 3 spatial dims;
    ``stride`` defaults to ``kernel_size`` as in nn.AvgPool; no ceil_mode.
    Example (1d, k=3, s=1, p=1, x=[1, 2, 3]): excl = [1.5, 2, 2.5],
    incl = [1, 2, 5/3], correction = [0.5, 0, 5/6].
    """
    axes = _pool_axes(x, kernel_size, stride, padding)
    zeros = x.new_zeros(tuple(x.shape[:2]) + tuple(a.n_out for a in axes))
    return _add_correction_recursive(zeros, x, axes, 1.0, 0, [])


# ---------------------------------------------------------------------------------------
# Parameter-free diagonal candidates (identity, average pooling): a direct weighted sum
# ---------------------------------------------------------------------------------------


def _ones_kernel(x: torch.Tensor, kernel_size: Sequence[int]) -> torch.Tensor:
    return x.new_ones((x.shape[1], 1) + tuple(kernel_size))


def box_sum(x: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> torch.Tensor:
    """Zero-padded window sums of a batched (N, C, *spatial) tensor: a depthwise convolution with ones.

    ``avg_pool(x, count_include_pad=True) == box_sum(x) / prod(k)``. A
    convolution with a constant kernel needs no kernel gradient, and on CPU
    it is several times faster than ``avg_pool`` forward and backward.
    """
    n = x.dim() - 2
    return CONV_FUNCTIONS[n](x, _ones_kernel(x, kernel_size), None, tuple(stride), tuple(padding), 1, x.shape[1])


def box_sum_transpose(
    grad: torch.Tensor, input_shape: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
    padding: Sequence[int],
) -> torch.Tensor:
    """The adjoint of :func:`box_sum`: the gradient of ``<grad, box_sum(x)>`` with respect to ``x``."""
    n = grad.dim() - 2
    conv_input_grad = (torch.nn.grad.conv1d_input, torch.nn.grad.conv2d_input, torch.nn.grad.conv3d_input)[n - 1]
    return conv_input_grad(tuple(input_shape), _ones_kernel(grad, kernel_size), grad, tuple(stride),
                           tuple(padding), 1, grad.shape[1])


@functools.lru_cache(maxsize=128)
def _valid_count_map(spatial, kernel_size, stride, padding, device, dtype) -> torch.Tensor:
    axes = [_PoolAxis.build(*geometry) for geometry in zip(spatial, kernel_size, stride, padding)]
    return _window_counts(axes, [(0, axis.n_out) for axis in axes], device).to(dtype)


def valid_count_map(
    spatial: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
    device: torch.device, dtype: torch.dtype,
) -> torch.Tensor:
    """Number of non-padding inputs in every pooling window (shape: the output's spatial shape).

    ``avg_pool(x, count_include_pad=False) == box_sum(x) / valid_count_map(...)``:
    both pools sum the same window and differ only in the divisor. Cached per
    geometry, device and dtype (treat the result as read-only).
    """
    key = (tuple(spatial), tuple(kernel_size), tuple(stride), tuple(padding), torch.device(device), dtype)
    if torch.compiler.is_compiling():  # the compiler constant-folds it; no cache lookup in the graph
        return _valid_count_map.__wrapped__(*key)
    return _valid_count_map(*key)


@dataclass(frozen=True)
class DiagonalTerm:
    """One parameter-free candidate ``ℓ(x)`` of a :func:`diagonal_sum`.

    ``kind`` 'identity': ``value · x``; 'box': ``value · box_sum(x)``;
    'box_over_count': ``value · box_sum(x) / valid_count_map`` (exclude-pad pooling).
    """

    kind: str
    value: float
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()

    @classmethod
    def of(cls, candidate: "LinearCandidate", value: float, scale: float) -> "DiagonalTerm":
        """The term of an identity / pool candidate whose merged kernel value is ``value``.

        An exclude-pad pool merges as ``value`` (= ``scale / prod(k)``) times the
        window sum plus ``scale`` times the border correction, which together are
        ``scale · box_sum / count``.
        """
        if candidate.kind == "identity":
            return cls("identity", value)
        geometry = dict(kernel_size=candidate.kernel_size, stride=candidate.stride, padding=candidate.padding)
        if candidate.needs_border_correction:
            return cls("box_over_count", scale, **geometry)
        return cls("box", value, **geometry)

    def output_scale(self, x: torch.Tensor, out_dtype: torch.dtype) -> Union[float, torch.Tensor]:
        """The factor the window sum is multiplied by: ``value``, or ``value / count`` per position."""
        if self.kind != "box_over_count":
            return self.value
        counts = valid_count_map(x.shape[2:], self.kernel_size, self.stride, self.padding, x.device, out_dtype)
        return self.value / counts

    def window_sum(self, x: torch.Tensor) -> torch.Tensor:
        return box_sum(x, self.kernel_size, self.stride, self.padding)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "identity":
            return x * self.value
        summed = self.window_sum(x)
        return summed * self.output_scale(x, summed.dtype)


def diagonal_sum(x: torch.Tensor, weights: torch.Tensor, terms: Sequence[DiagonalTerm]) -> torch.Tensor:
    """``Σ_m w_m · ℓ_m(x)`` for parameter-free diagonal candidates, term by term.

    The same value as one depthwise convolution with the merged kernel
    ``Σ_m w_m E(K_m)`` (plus border corrections), computed without the
    kernel: the gradient of ``w_m`` is ``<grad, ℓ_m(x)>`` instead of a
    depthwise *kernel* gradient, which is the slow part of that convolution
    on CPU. Autograd saves only ``x``; backward needs one adjoint window sum
    per pool and no recomputation:

        ∂L/∂x = Σ_m w_m · ℓ_mᵀ(g),   ∂L/∂w_m = <g, ℓ_m(x)> = <ℓ_mᵀ(g), x>,
        ℓᵀ(g) = value·g (identity) or box_sumᵀ(g · scale) (pools).
    """
    if torch.compiler.is_compiling():  # plain differentiable ops: the compiler plans the backward itself
        return sum(term(x) * weights[m] for m, term in enumerate(terms))
    return _DiagonalSum.apply(x, weights, tuple(terms))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a.reshape(-1), b.reshape(-1))


class _DiagonalSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weights, terms):  # type: ignore[override]
        ctx.terms = terms
        ctx.save_for_backward(x, weights)
        total = None
        for m, term in enumerate(terms):
            if term.kind == "identity":
                part = x * (weights[m] * term.value)
            else:
                summed = term.window_sum(x)
                part = summed.mul_(term.output_scale(x, summed.dtype) * weights[m])
            total = part if total is None else total.add_(part)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weights = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = None
        grad_w = [] if need_w else None
        for m, term in enumerate(ctx.terms):
            if term.kind == "identity":
                if need_w:
                    grad_w.append(_dot(grad, x) * term.value)
                part = grad * (weights[m] * term.value) if need_x else None
            else:
                # <g·s, box(x)> = <boxᵀ(g·s), x>: the adjoint needed for ∂L/∂x also gives ∂L/∂w_m.
                scaled = grad * term.output_scale(x, grad.dtype)
                part = box_sum_transpose(scaled, x.shape, term.kernel_size, term.stride, term.padding)
                if need_w:
                    grad_w.append(_dot(part, x))
                part = part.mul_(weights[m]) if need_x else None
            if part is not None:
                grad_x = part if grad_x is None else grad_x.add_(part)
        if need_w:
            grad_w = torch.stack(grad_w).to(weights.dtype)
        return grad_x, grad_w, None


# ---------------------------------------------------------------------------------------
# Merge planning: candidates, alignment, index maps
# ---------------------------------------------------------------------------------------

CANDIDATE_KINDS = ("conv", "identity", "avg_pool", "linear")


@dataclass(frozen=True)
class LinearCandidate:
    """The geometry of one linear candidate of a mixed edge (no tensors).

    ``kind`` is 'conv' (Conv1d/2d/3d, zero padding), 'linear' (nn.Linear, 0 spatial
    dims), 'identity' or 'avg_pool'. Tuples are per spatial dim; ints are expanded
    in ``__post_init__``. Identity and average pooling are *diagonal*: they are
    stored as depthwise kernels (groups = channels) whose values are constants the
    plan knows, so no tensor is passed for them.
    Use the constructors `conv`, `linear`, `identity`, `avg_pool` for readability.
    """

    kind: str
    in_channels: int
    out_channels: int
    spatial_dims: int
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    has_bias: bool = False
    count_include_pad: bool = True
    divisor_override: Optional[int] = None
    ceil_mode: bool = False

    def __post_init__(self) -> None:
        if self.kind not in CANDIDATE_KINDS:
            raise ValueError(f"unknown candidate kind {self.kind!r}; expected one of {CANDIDATE_KINDS}")
        n = self.spatial_dims
        if not 0 <= n <= 3:
            raise ValueError(f"spatial_dims must be 0 to 3, got {n}")
        defaults = {"kernel_size": 1, "stride": None, "padding": 0, "dilation": 1}
        for name, default in defaults.items():
            value = getattr(self, name)
            if value == () or value is None:
                value = self.kernel_size if name == "stride" and self.kind == "avg_pool" else default
                value = 1 if value is None else value
            object.__setattr__(self, name, _as_tuple(value, n, name))
        self._validate()

    def _validate(self) -> None:
        kind, n = self.kind, self.spatial_dims
        if kind == "linear" and n != 0:
            raise ValueError("a 'linear' candidate has spatial_dims=0")
        if kind in ("conv", "avg_pool") and n == 0:
            raise ValueError(f"a {kind!r} candidate needs 1 to 3 spatial dims")
        if kind in ("identity", "avg_pool"):
            if self.in_channels != self.out_channels:
                raise ValueError(f"{kind} needs in_channels == out_channels")
            # Diagonal: stored as a depthwise kernel (C, 1, *k), also with 0 spatial dims.
            object.__setattr__(self, "groups", self.in_channels)
            if self.has_bias:
                raise ValueError(f"{kind} has no bias")
        if kind == "identity" and (set(self.kernel_size + self.stride) - {1} or any(self.padding)):
            raise ValueError("identity has kernel_size 1, stride 1 and padding 0")
        if kind == "avg_pool" and set(self.dilation) - {1}:
            raise ValueError("average pooling has no dilation")
        if kind == "linear" and self.groups != 1:
            raise ValueError("a Linear candidate has groups=1")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"channels {self.in_channels}->{self.out_channels} not divisible by groups={self.groups}"
            )
        if min(self.kernel_size + self.stride + self.dilation, default=1) < 1 or min(self.padding, default=0) < 0:
            raise ValueError(f"invalid geometry in {self}")

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def conv(
        cls,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        spatial_dims: int = 2,
    ) -> "LinearCandidate":
        return cls("conv", in_channels, out_channels, spatial_dims, kernel_size, stride, padding,
                   dilation, groups, bias)

    @classmethod
    def linear(cls, in_features: int, out_features: int, bias: bool = True) -> "LinearCandidate":
        return cls("linear", in_features, out_features, 0, has_bias=bias)

    @classmethod
    def identity(cls, channels: int, spatial_dims: int = 2) -> "LinearCandidate":
        return cls("identity", channels, channels, spatial_dims)

    @classmethod
    def avg_pool(
        cls,
        channels: int,
        kernel_size: IntOrTuple,
        stride: Optional[IntOrTuple] = None,
        padding: IntOrTuple = 0,
        count_include_pad: bool = True,
        divisor_override: Optional[int] = None,
        ceil_mode: bool = False,
        spatial_dims: int = 2,
    ) -> "LinearCandidate":
        return cls("avg_pool", channels, channels, spatial_dims, kernel_size,
                   () if stride is None else stride, padding,
                   count_include_pad=count_include_pad, divisor_override=divisor_override,
                   ceil_mode=ceil_mode)

    # -- derived properties -----------------------------------------------------------------

    @property
    def is_diagonal(self) -> bool:
        """Output channel c reads input channel c only (identity, pooling, depthwise conv)."""
        return self.groups == self.in_channels == self.out_channels

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        """Shape of the kernel this candidate contributes (depthwise for identity/pool)."""
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    @property
    def extent(self) -> tuple[int, ...]:
        """Input span of one window minus one: ``dilation * (kernel_size - 1)`` per dim."""
        return tuple(d * (k - 1) for d, k in zip(self.dilation, self.kernel_size))

    @property
    def constant_value(self) -> Optional[float]:
        """The single value of an identity / pool kernel; None for learned kernels."""
        if self.kind == "identity":
            return 1.0
        if self.kind == "avg_pool":
            return 1.0 / (self.divisor_override or math.prod(self.kernel_size))
        return None

    @property
    def needs_border_correction(self) -> bool:
        """count_include_pad=False changes the divisor only where windows touch padding."""
        return (
            self.kind == "avg_pool"
            and not self.count_include_pad
            and self.divisor_override is None
            and any(self.padding)
        )

    def macs_per_output(self) -> int:
        """Multiply-accumulates per output position (all output channels)."""
        if self.kind == "identity":
            return 0
        return self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel_size)

    def describe(self) -> str:
        """Short human-readable form, e.g. ``conv 3x5 dil 2 pad 2x4``."""
        if self.kind == "identity":
            return "identity"
        if self.kind == "linear":
            return f"linear {self.in_channels}->{self.out_channels}"
        text = f"{self.kind} {_size_text(self.kernel_size)}"
        if set(self.dilation) != {1}:
            text += f" dil {_size_text(self.dilation)}"
        if any(self.padding):
            text += f" pad {_size_text(self.padding)}"
        if set(self.stride) != {1}:
            text += f" stride {_size_text(self.stride)}"
        if self.kind == "conv" and self.groups > 1:
            text += " depthwise" if self.is_diagonal else f" groups {self.groups}"
        if self.kind == "avg_pool":
            if self.divisor_override:
                text += f" divisor {self.divisor_override}"
            elif not self.count_include_pad:
                text += " exclude-pad"
        return text


@dataclass(frozen=True)
class BorderCorrection:
    """A count_include_pad=False pool candidate: add ``scale * w_m * correction(x)``."""

    candidate: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    scale: float = 1.0


@dataclass(frozen=True, eq=False)
class MergePlan:
    """The common geometry of a merge and the precomputed embedding index maps.

    ``index`` concatenates, candidate after candidate, one flat position in the
    merged kernel for every element of the candidate's kernel (in its row-major
    order, shape ``candidates[m].kernel_shape``); ``segment_sizes`` splits it.
    ``constant_values[m]`` is the value of an identity / pool kernel (already
    normalised when ``normalize``), None where the caller passes a kernel.
    """

    candidates: tuple[LinearCandidate, ...]
    spatial_dims: int
    in_channels: int
    out_channels: int
    groups: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    index: torch.Tensor = field(repr=False)
    segment_sizes: tuple[int, ...]
    constant_values: tuple[Optional[float], ...]
    border_corrections: tuple[BorderCorrection, ...]
    normalize: bool = False
    eps: float = 1e-5

    @property
    def merged_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    @property
    def merged_numel(self) -> int:
        return math.prod(self.merged_shape)

    @property
    def has_bias(self) -> bool:
        return any(c.has_bias for c in self.candidates)

    @property
    def diagonal_terms(self) -> Optional[tuple[DiagonalTerm, ...]]:
        """The candidates as :class:`DiagonalTerm` when every one is an identity or a pool, else None."""
        if self.spatial_dims == 0 or any(v is None for v in self.constant_values):
            return None
        scales = {fix.candidate: fix.scale for fix in self.border_corrections}
        return tuple(
            DiagonalTerm.of(c, value, scales.get(m, 1.0))
            for m, (c, value) in enumerate(zip(self.candidates, self.constant_values))
        )

    def index_maps(self) -> tuple[torch.Tensor, ...]:
        """The per-candidate flat index tensors (views into ``index``)."""
        return tuple(torch.split(self.index, self.segment_sizes))

    def describe(self) -> str:
        if self.spatial_dims == 0:
            return f"linear {self.in_channels}->{self.out_channels}"
        text = f"conv{self.spatial_dims}d {_size_text(self.kernel_size)}"
        if set(self.dilation) != {1}:
            text += f" dil {_size_text(self.dilation)}"
        text += f" pad {_size_text(self.padding)} stride {_size_text(self.stride)} groups {self.groups}"
        return text


def _check_mergeable(candidates: Sequence[LinearCandidate]) -> None:
    """Raise ValueError naming the first reason the candidates cannot merge exactly."""
    if len(candidates) == 0:
        raise ValueError("cannot merge an empty list of candidates")
    first = candidates[0]

    def name(m: int) -> str:
        return f"candidate {m} ({candidates[m].describe()})"

    for m, c in enumerate(candidates):
        if c.spatial_dims != first.spatial_dims:
            raise ValueError(
                f"cannot merge: {name(m)} has {c.spatial_dims} spatial dims, {name(0)} has {first.spatial_dims}"
            )
        if (c.in_channels, c.out_channels) != (first.in_channels, first.out_channels):
            raise ValueError(
                f"cannot merge: {name(m)} maps {c.in_channels}->{c.out_channels} channels, "
                f"{name(0)} maps {first.in_channels}->{first.out_channels}"
            )
        if c.ceil_mode:
            raise ValueError(f"cannot merge exactly: {name(m)} uses ceil_mode, whose last window is clipped")
        if c.stride != first.stride:
            raise ValueError(
                f"cannot merge: different strides, {name(m)} has stride {c.stride}, "
                f"{name(0)} has {first.stride}"
            )
        for d in range(c.spatial_dims):
            # Output o of candidate m reads input window [o*s - p, o*s - p + e]; the
            # windows of all candidates must be centred alike, i.e. p - e/2 equal
            # (doubled to stay in integers). With equal strides this also makes the
            # output sizes equal for every input size.
            if 2 * c.padding[d] - c.extent[d] != 2 * first.padding[d] - first.extent[d]:
                raise ValueError(
                    f"cannot merge exactly: output grids are misaligned in spatial dim {d}: "
                    f"padding - dilation*(kernel_size-1)/2 is "
                    f"{c.padding[d] - c.extent[d] / 2:g} for {name(m)} but "
                    f"{first.padding[d] - first.extent[d] / 2:g} for {name(0)}"
                )


def _candidate_index(
    c: LinearCandidate,
    groups: int,
    kernel_size: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> torch.Tensor:
    """Flat merged-kernel position of every element of ``c``'s kernel (row-major).

    Channels: element (o, i) of a g-grouped kernel reads global input channel
    ``(o // (out/g)) * (in/g) + i``; in the merged G-grouped kernel that is local
    channel ``global - (o // (out/G)) * (in/G)`` (G divides g, so it stays in range).
    Space: tap j reads input ``o*s - p_m + d_m*j``; the merged kernel reads
    ``o*s - P + D*t``, so ``t = (P - p_m + d_m*j) / D``.
    """
    out_channels, in_channels = c.out_channels, c.in_channels
    in_per_group = in_channels // c.groups
    o = torch.arange(out_channels).reshape(-1, 1)
    local = torch.arange(in_per_group).reshape(1, -1)
    global_in = (o // (out_channels // c.groups)) * in_per_group + local
    merged_local = global_in - (o // (out_channels // groups)) * (in_channels // groups)
    channel_flat = o * (in_channels // groups) + merged_local  # (out, in/g)

    spatial_flat = torch.zeros((), dtype=torch.long)
    for d in range(c.spatial_dims):
        offsets = padding[d] - c.padding[d] + c.dilation[d] * torch.arange(c.kernel_size[d])
        taps = offsets // dilation[d]
        spatial_flat = spatial_flat.unsqueeze(-1) * kernel_size[d] + taps
    spatial_shape = (1, 1) + tuple(c.kernel_size)
    flat = channel_flat.reshape(out_channels, in_per_group, *(1,) * c.spatial_dims) * math.prod(kernel_size)
    return (flat + spatial_flat.reshape(spatial_shape)).reshape(-1)


def _normalized_constant(c: LinearCandidate, eps: float) -> tuple[float, float]:
    """(normalised value, scale) of a constant kernel: ``v / (|v|·sqrt(taps) + eps)``."""
    value = c.constant_value
    scale = 1.0 / (abs(value) * math.sqrt(math.prod(c.kernel_size)) + eps)
    return value * scale, scale


def plan_merge(
    candidates: Sequence[LinearCandidate], normalize: bool = False, eps: float = 1e-5
) -> MergePlan:
    """Check the candidates merge exactly, choose the common geometry, build index maps.

    Geometry: merged padding ``P = max p_m``; merged dilation ``D`` = the gcd of every
    tap offset ``P - p_m + d_m*j`` (so two dilation-2 convs merge into a dilation-2
    kernel, not a dense one twice as wide); merged kernel ``(max(P - p_m + e_m))/D + 1``;
    merged groups ``G = gcd(g_m)`` where diagonal candidates count as g = C (all
    depthwise -> depthwise; any dense -> dense; groups 2 and 4 -> 2).
    ``normalize`` (kernel_norm) normalises every kernel per output channel before the
    merge; constant kernels get their normalised value here, and an exclude-pad
    pool's correction is scaled by the same factor.
    Raises ValueError when no exact merge exists (different strides, misaligned
    output grids, different channels, ceil_mode pools).
    """
    candidates = tuple(candidates)
    _check_mergeable(candidates)
    first = candidates[0]
    n = first.spatial_dims

    groups = 1 if n == 0 else math.gcd(*(c.groups for c in candidates))
    padding = tuple(max(c.padding[d] for c in candidates) for d in range(n))
    dilation = []
    kernel_size = []
    for d in range(n):
        step = 0
        for c in candidates:
            step = math.gcd(step, padding[d] - c.padding[d])
            if c.kernel_size[d] > 1:
                step = math.gcd(step, c.dilation[d])
        step = max(step, 1)
        reach = max(padding[d] - c.padding[d] + c.extent[d] for c in candidates)
        dilation.append(step)
        kernel_size.append(reach // step + 1)

    index = torch.cat(
        [_candidate_index(c, groups, kernel_size, padding, dilation) for c in candidates]
    )
    constants: list[Optional[float]] = []
    corrections: list[BorderCorrection] = []
    for m, c in enumerate(candidates):
        value, scale = c.constant_value, 1.0
        if value is not None and normalize:
            value, scale = _normalized_constant(c, eps)
        constants.append(value)
        if c.needs_border_correction:
            corrections.append(BorderCorrection(m, c.kernel_size, c.stride, c.padding, scale))

    return MergePlan(
        candidates=candidates,
        spatial_dims=n,
        in_channels=first.in_channels,
        out_channels=first.out_channels,
        groups=groups,
        kernel_size=tuple(kernel_size),
        stride=first.stride,
        padding=padding,
        dilation=tuple(dilation),
        index=index,
        segment_sizes=tuple(math.prod(c.kernel_shape) for c in candidates),
        constant_values=tuple(constants),
        border_corrections=tuple(corrections),
        normalize=normalize,
        eps=eps,
    )


# ---------------------------------------------------------------------------------------
# Applying a plan
# ---------------------------------------------------------------------------------------


def as_weight_vector(weights: Union[torch.Tensor, Sequence], count: int) -> torch.Tensor:
    """Sequence of scalar tensors (or a 1-D tensor) -> 1-D tensor of ``count`` weights."""
    if isinstance(weights, torch.Tensor):
        vector = weights.reshape(-1)
    else:
        vector = torch.stack([torch.as_tensor(w).reshape(()) for w in weights])
    if vector.numel() != count:
        raise ValueError(f"expected {count} architecture weights (one per candidate), got {vector.numel()}")
    return vector


def merge_kernels(
    plan: MergePlan,
    weights: Union[torch.Tensor, Sequence],
    kernels: Sequence[Optional[torch.Tensor]],
    index: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The merged kernel ``Σ_m w_m · E(K_m)`` built with one ``index_add``.

    ``kernels[m]`` is candidate m's original weight (shape ``kernel_shape``), or None
    for identity / pool candidates, whose constant kernels come from the plan (as a
    broadcast scalar, never materialised). Differentiable w.r.t. every weight and
    kernel: the backward of index_add w.r.t. its source is an index_select.
    ``index`` overrides ``plan.index`` (a module passes its device-resident buffer).
    """
    weights = as_weight_vector(weights, len(plan.candidates))
    if len(kernels) != len(plan.candidates):
        raise ValueError(f"expected {len(plan.candidates)} kernels, got {len(kernels)}")
    pieces = []
    for m, (c, kernel, size) in enumerate(zip(plan.candidates, kernels, plan.segment_sizes)):
        constant = plan.constant_values[m]
        if constant is not None:
            if kernel is not None:
                raise ValueError(f"candidate {m} ({c.describe()}) has a constant kernel: pass None")
            pieces.append((weights[m] * constant).expand(size))
            continue
        if kernel is None or tuple(kernel.shape) != c.kernel_shape:
            got = None if kernel is None else tuple(kernel.shape)
            raise ValueError(f"candidate {m} ({c.describe()}) needs a kernel of shape {c.kernel_shape}, got {got}")
        if plan.normalize:
            kernel = normalize_per_output_channel(kernel, plan.eps)
        pieces.append((weights[m] * kernel).reshape(-1))
    dtype = pieces[0].dtype
    for piece in pieces[1:]:
        dtype = torch.promote_types(dtype, piece.dtype)
    source = torch.cat([p.to(dtype) for p in pieces])
    index = plan.index if index is None else index
    if index.device != source.device:
        index = index.to(source.device)
    merged = source.new_zeros(plan.merged_numel).index_add(0, index, source)
    return merged.reshape(plan.merged_shape)


def merge_biases(
    plan: MergePlan,
    weights: Union[torch.Tensor, Sequence],
    biases: Optional[Sequence[Optional[torch.Tensor]]],
) -> Optional[torch.Tensor]:
    """``Σ_m w_m · b_m`` over the candidates with a bias; None when none has one.

    Biases are not normalised by ``plan.normalize`` (kernel_norm rescales kernels;
    biases a following BatchNorm cancels are dropped by the pass, not here).
    """
    if not plan.has_bias:
        if biases is not None and any(b is not None for b in biases):
            raise ValueError("a bias was passed for a candidate declared without bias")
        return None
    weights = as_weight_vector(weights, len(plan.candidates))
    if biases is None or len(biases) != len(plan.candidates):
        raise ValueError(f"expected {len(plan.candidates)} biases (None where absent)")
    total = None
    for m, (c, bias) in enumerate(zip(plan.candidates, biases)):
        if c.has_bias != (bias is not None):
            raise ValueError(
                f"candidate {m} ({c.describe()}) declares has_bias={c.has_bias} but got "
                f"{'a tensor' if bias is not None else 'None'}"
            )
        if bias is not None:
            term = weights[m] * bias
            total = term if total is None else total + term
    return total


def merge_cost(plan: MergePlan) -> int:
    """MACs per output position of the merged operator.

    ``out * (in/G) * prod(K)``. The border correction of exclude-pad pools and the
    per-call kernel build do not scale with the output area and are not counted.
    """
    return plan.out_channels * (plan.in_channels // plan.groups) * math.prod(plan.kernel_size)


def separate_cost(candidates: Sequence[LinearCandidate]) -> int:
    """MACs per output position of running the candidates apart and summing.

    Each candidate's own MACs plus one multiply-add per output channel for the
    ``w_m ·`` weighting. Compare with `merge_cost`: e.g. a dense 3x3 (C²·9) plus a
    depthwise 5x5 (C·25) merge into a dense 5x5 (C²·25), which is not worth it.
    """
    return sum(c.macs_per_output() + c.out_channels for c in candidates)


def cheapest_partition(
    candidates: Sequence[LinearCandidate], normalize: bool = False, eps: float = 1e-5
) -> tuple[tuple[int, ...], ...]:
    """Split mergeable candidates into groups, each merged into one operator, at least cost.

    One merged kernel must cover every candidate's taps: a depthwise 5x5 with
    dilation 2 (extent 9) beside a dense depthwise 3x3 needs a 9x9 kernel, 81
    taps where the two apart have 34. Starting from every candidate alone,
    the two groups whose union saves the most (``merge_cost`` of the union
    against the groups apart, ``separate_cost``'s per-candidate weighting
    included) are merged, until no union saves anything. Returns the groups
    as sorted index tuples, in order of their first member.
    """
    groups: list[tuple[int, ...]] = [(m,) for m in range(len(candidates))]

    def cost(group: tuple[int, ...]) -> Optional[int]:
        members = [candidates[m] for m in group]
        if len(members) == 1:
            return separate_cost(members)
        try:
            plan = plan_merge(members, normalize=normalize, eps=eps)
        except ValueError:
            return None
        return merge_cost(plan) + plan.out_channels

    costs = {g: cost(g) for g in groups}
    while True:
        best, best_saving = None, 0
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                union = tuple(sorted(a + b))
                if union not in costs:
                    costs[union] = cost(union)
                if costs[union] is None:
                    continue
                saving = costs[a] + costs[b] - costs[union]
                if saving > best_saving or (best is None and saving == 0):  # ties merge, as in merge_linear
                    best, best_saving = (a, b, union), saving
        if best is None:
            break
        a, b, union = best
        groups = [g for g in groups if g not in (a, b)] + [union]
    return tuple(sorted(groups, key=lambda g: g[0]))
