"""Runtime modules inserted by the passes: thin nn.Module wrappers over `fxnas.kernels`.

`MergedConv` computes a mixed edge's linear candidates as one convolution:

    Σ_m w_m · ℓ_m(x)  ==  conv(x; Σ_m w_m E(K_m), Σ_m w_m b_m)
                          + Σ_{exclude-pad pools p} w_p · border_correction_p(x)

It owns no parameters: the candidates' original weights and biases and the
architecture weights arrive as forward arguments, so the rewritten graph shares
Parameter objects with the user's model and its state_dict keys do not change.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from fxnas.kernels import (
    CONV_FUNCTIONS,
    fold_batchnorm,
    LinearCandidate,
    as_weight_vector,
    add_avg_pool_border_correction,
    cheapest_partition,
    diagonal_sum,
    merge_biases,
    merge_kernels,
    plan_merge,
)

__all__ = [
    "MergedConv",
    "candidate_from_module",
    "ModuleReferences",
    "FoldedConvBN",
    "MergedCandidates",
    "WeightedBatchNorm",
    "weighted_batch_norm",
]

_CONV_TYPES = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_POOL_TYPES = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}


def _conv_padding(module: nn.modules.conv._ConvNd) -> tuple[int, ...]:
    """Integer padding of a conv; 'same' is accepted only where it is symmetric."""
    if module.padding == "valid":
        return (0,) * len(module.kernel_size)
    if module.padding == "same":
        extents = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        if any(e % 2 for e in extents):
            raise ValueError(
                f"{module}: padding='same' with an even extent pads asymmetrically; "
                "it cannot be expressed as one symmetric conv padding"
            )
        return tuple(e // 2 for e in extents)
    return tuple(module.padding)


def candidate_from_module(
    module: nn.Module, channels: Optional[int] = None, spatial_dims: Optional[int] = None
) -> LinearCandidate:
    """Describe a Conv1d/2d/3d, Linear, AvgPool1d/2d/3d or Identity as a `LinearCandidate`.

    Pools and Identity do not know their channel count: pass ``channels`` (and
    ``spatial_dims`` for Identity). Raises ValueError for anything not mergeable
    (transposed convs, non-zero padding modes, asymmetric 'same' padding).
    """
    if type(module) in _CONV_TYPES:
        if module.padding_mode != "zeros":
            raise ValueError(f"{module}: padding_mode={module.padding_mode!r} is not a zero-padded conv")
        return LinearCandidate.conv(
            module.in_channels, module.out_channels, module.kernel_size, module.stride,
            _conv_padding(module), module.dilation, module.groups, module.bias is not None,
            spatial_dims=_CONV_TYPES[type(module)],
        )
    if isinstance(module, nn.Linear):
        return LinearCandidate.linear(module.in_features, module.out_features, module.bias is not None)
    if type(module) in _POOL_TYPES:
        if channels is None:
            raise ValueError(f"{module}: pass channels= (a pool does not know its channel count)")
        return LinearCandidate.avg_pool(
            channels, module.kernel_size, module.stride, module.padding,
            count_include_pad=module.count_include_pad,
            divisor_override=getattr(module, "divisor_override", None),  # AvgPool1d has none
            ceil_mode=module.ceil_mode, spatial_dims=_POOL_TYPES[type(module)],
        )
    if isinstance(module, nn.Identity):
        if channels is None or spatial_dims is None:
            raise ValueError("nn.Identity: pass channels= and spatial_dims=")
        return LinearCandidate.identity(channels, spatial_dims)
    raise ValueError(f"{type(module).__name__} is not a mergeable linear candidate")


def grouped_conv2d_cpu(x, weight, bias, stride, padding, dilation, groups: int) -> torch.Tensor:
    """``F.conv2d`` for grouped (depthwise) kernels on CPU, with a faster backward.

    The forward is ``F.conv2d`` itself. The backward is the same
    ``convolution_backward`` computed on channels-last copies of the input
    and the incoming gradient: oneDNN's depthwise kernel-gradient is several
    times slower on NCHW tensors (5.3 ms against 1.3 ms for a 5x5 over
    16x16x32x32 on one core). The copies are made in backward, so autograd
    saves nothing more than the convolution would.
    """
    if torch.compiler.is_compiling():  # the compiler plans its own backward
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return _GroupedConv2dCPU.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups)


class _GroupedConv2dCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        channels_last = torch.channels_last
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad.contiguous(memory_format=channels_last), x.contiguous(memory_format=channels_last), weight,
            [weight.shape[0]] if ctx.has_bias else None, list(stride), list(padding), list(dilation), False,
            [0, 0], groups, [bool(need_x), bool(need_w), bool(need_b and ctx.has_bias)])
        if grad_x is not None:
            grad_x = grad_x.contiguous()
        return grad_x, grad_w, grad_b, None, None, None, None


class MergedConv(nn.Module):
    """``Σ_m w_m · ℓ_m(x)`` over linear candidates, computed as one conv / linear.

    Built once from the candidates' geometry (`LinearCandidate`s); the merge plan's
    index maps are stored as a non-persistent buffer, so they follow ``.to(device)``
    and stay out of ``state_dict``. Per call the merged kernel costs one index_add
    over the concatenated scaled kernels.

    forward(x, weights, kernels, biases):
        weights  M scalar tensors (or a 1-D tensor of M), the architecture weights w_m
        kernels  M tensors aligned with the candidates: the original weight, or None
                 for identity / pool candidates
        biases   M tensors or None (None where a candidate has no bias); the whole
                 argument may be None when no candidate has a bias
    Gradients reach x, every weight, every kernel and every bias.

    With ``normalize_kernels=True`` (kernel_norm) each kernel, constant ones
    included, is normalised per output channel before the merge.
    """

    def __init__(
        self,
        candidates: Sequence[LinearCandidate],
        normalize_kernels: bool = False,
        eps: float = 1e-5,
        split: bool = True,
    ) -> None:
        super().__init__()
        self.plan = plan_merge(candidates, normalize=normalize_kernels, eps=eps)
        self.register_buffer("merge_index", self.plan.index.clone(), persistent=False)
        self.diagonal_terms = self.plan.diagonal_terms  # only identities / pools: see forward
        # Where one common kernel costs more than running subsets apart (a 5x5 with dilation 2
        # beside a dense 3x3 would need a 9x9), the sum runs as a few merged convolutions.
        self.part_indices: Optional[tuple[tuple[int, ...], ...]] = None
        self.parts: Optional[nn.ModuleList] = None
        if split:
            partition = cheapest_partition(list(candidates), normalize_kernels, eps)
            if len(partition) > 1:
                self.part_indices = partition
                self.parts = nn.ModuleList(
                    MergedConv([candidates[m] for m in part], normalize_kernels, eps, split=False)
                    for part in partition
                )

    def normalized(self, drop_bias: bool, eps: float = 1e-5) -> "MergedConv":
        """This merge with kernels normalised per output channel (and, optionally, no biases).

        Reuses the index maps when no candidate has a constant kernel (whose
        value normalisation changes); otherwise plans again.
        """
        candidates = [dataclasses.replace(c, has_bias=False) if drop_bias else c for c in self.plan.candidates]
        if self.parts is not None or any(v is not None for v in self.plan.constant_values):
            return MergedConv(candidates, normalize_kernels=True, eps=eps)
        result = MergedConv.__new__(MergedConv)
        nn.Module.__init__(result)
        result.plan = dataclasses.replace(self.plan, candidates=tuple(candidates), normalize=True, eps=eps)
        result.register_buffer("merge_index", self.merge_index, persistent=False)
        result.part_indices, result.parts = None, None
        result.diagonal_terms = result.plan.diagonal_terms
        return result

    @property
    def candidates(self) -> tuple[LinearCandidate, ...]:
        return self.plan.candidates

    def merged_kernel(self, weights, kernels) -> torch.Tensor:
        """The merged kernel ``Σ_m w_m E(K_m)`` (exposed for inspection and tests)."""
        return merge_kernels(self.plan, weights, kernels, index=self.merge_index)

    def forward(
        self,
        x: torch.Tensor,
        weights: Union[torch.Tensor, Sequence[torch.Tensor]],
        kernels: Sequence[Optional[torch.Tensor]],
        biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
    ) -> torch.Tensor:
        plan = self.plan
        weights = as_weight_vector(weights, len(plan.candidates))
        if self.parts is not None:
            total = None
            for indices, part in zip(self.part_indices, self.parts):
                out = part(x, weights[list(indices)], [kernels[m] for m in indices],
                           None if biases is None else [biases[m] for m in indices])
                total = out if total is None else total + out
            return total
        terms = self.diagonal_terms
        if terms is not None and x.dim() == plan.spatial_dims + 2:
            # Only identities and pools: no kernel to learn, so no kernel gradient to pay for.
            dtype = torch.promote_types(x.dtype, weights.dtype)
            return diagonal_sum(x.to(dtype), weights.to(dtype), terms)
        kernel = self.merged_kernel(weights, kernels)
        bias = merge_biases(plan, weights, biases)
        # Same type promotion as the unmerged Σ w_m·ℓ_m(x) (float32 weights, float64 features, ...).
        dtype = torch.promote_types(x.dtype, kernel.dtype)
        x, kernel = x.to(dtype), kernel.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        if plan.spatial_dims == 0:
            return F.linear(x, kernel, bias)

        # Unbatched (C, *spatial) input: conv accepts it, the border correction
        # wants a batch dim.
        unbatched = x.dim() == plan.spatial_dims + 1
        if unbatched:
            x = x.unsqueeze(0)
        conv = CONV_FUNCTIONS[plan.spatial_dims]
        if plan.groups > 1 and plan.spatial_dims == 2 and x.device.type == "cpu":
            out = grouped_conv2d_cpu(x, kernel, bias, plan.stride, plan.padding, plan.dilation, plan.groups)
        else:
            out = conv(x, kernel, bias, plan.stride, plan.padding, plan.dilation, plan.groups)
        for fix in plan.border_corrections:
            # The conv computed the include-pad pool; this adds the exclude-pad
            # difference on the border strips only.
            scale = weights[fix.candidate] * fix.scale
            out = add_avg_pool_border_correction(out, x, fix.kernel_size, fix.stride, fix.padding, scale)
        return out.squeeze(0) if unbatched else out

    def describe_geometry(self) -> str:
        """The convolution(s) that run: one merged geometry, or ``a + b`` when split by cost."""
        if self.parts is None:
            return self.plan.describe()
        return " + ".join(part.plan.describe() for part in self.parts)

    def extra_repr(self) -> str:
        kinds = ", ".join(c.describe() for c in self.plan.candidates)
        text = f"candidates=[{kinds}], merged={self.describe_geometry()}"
        if self.plan.normalize:
            text += f", normalize_kernels=True, eps={self.plan.eps:g}"
        return text


# ---------------------------------------------------------------------------------------
# Modules the passes insert into rewritten graphs
# ---------------------------------------------------------------------------------------


class ModuleReferences:
    """Modules a runtime module computes with but does not own.

    The referenced modules stay registered where they are in the user's model
    (so ``state_dict`` keys, ``.to()`` and optimizers are unaffected); holding
    them in a plain object keeps ``nn.Module`` from registering them twice.
    ``deepcopy`` and pickling keep the references pointing at the copies of
    the very same modules.
    """

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = tuple(modules)

    def __getitem__(self, index: int) -> nn.Module:
        return self.modules[index]

    def __len__(self) -> int:
        return len(self.modules)


def _linear_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


class FoldedConvBN(nn.Module):
    """``bn(conv(x))``: exactly that in training, one convolution in eval mode.

    Identity (eval mode, BatchNorm with running statistics)::

        bn(conv(x; K, b)) = conv(x; K·s, (b - μ)·s + β),   s = γ / sqrt(σ² + ε)

    The fold is recomputed from the live parameters and running statistics at
    every eval call (never a stale copy), and the mode is the BatchNorm's own:
    while it is in training mode this module runs ``bn(conv(x))`` unchanged,
    batch statistics and running-statistics updates included.
    """

    def __init__(self, conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        if not bn.track_running_stats:
            raise ValueError(f"{bn} keeps no running statistics: it is not affine in eval mode")
        self.refs = ModuleReferences(conv, bn)
        # The folded operator always has a bias, (b - μ)·s + β, also when the conv has none.
        self.candidate = dataclasses.replace(candidate_from_module(conv), has_bias=True)

    @property
    def conv(self) -> nn.Module:
        return self.refs[0]

    @property
    def bn(self) -> nn.modules.batchnorm._BatchNorm:
        return self.refs[1]

    @property
    def uses_batch_statistics(self) -> bool:
        return self.bn.training

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode kernel and bias of ``bn ∘ conv``."""
        conv, bn = self.conv, self.bn
        return fold_batchnorm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_batch_statistics:
            return self.bn(self.conv(x))
        kernel, bias = self.folded()
        return _linear_forward(self.conv, x, kernel, bias)

    def weighted(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``weight · self(x)``; in training with the weight folded into the batch norm (saves less)."""
        if self.uses_batch_statistics:
            return weighted_batch_norm(self.bn, self.conv(x), weight)
        return self(x) * weight

    def extra_repr(self) -> str:
        return f"{self.candidate.describe()} + {type(self.bn).__name__} folded in eval mode"

    def describe(self) -> str:
        return f"Conv+BN({self.candidate.describe()}, folded in eval)"


class MergedCandidates(nn.Module):
    """``Σ_m w_m · ℓ_m(h)`` for linear candidates of one mixed edge, as one convolution.

    ``ℓ_m`` is an identity, an average pooling, a convolution / Linear (its
    kernel is read from the original module at every call), or a
    :class:`FoldedConvBN`, which is linear only while its BatchNorm is in eval
    mode. While any such BatchNorm uses batch statistics (training), those
    candidates run unmerged, exactly as in the original graph, and the always
    linear ones stay merged; otherwise everything is one convolution
    (:class:`MergedConv`).

    forward(h, weights): ``weights`` holds the M scalar architecture weights.
    """

    def __init__(
        self,
        candidates: Sequence[LinearCandidate],
        sources: Sequence[Optional[nn.Module]],
        names: Sequence[str] = (),
        normalize_kernels: bool = False,
        eps: float = 1e-5,
        floated: bool = False,
    ) -> None:
        super().__init__()
        if len(candidates) != len(sources):
            raise ValueError("one source module (or None) per candidate")
        self.names = tuple(names)
        self.floated = floated  # built by float_shared: a (topo-mode) group whose normalisation was floated out
        self.sources = ModuleReferences(*sources)  # None for identity / pooling candidates
        self.has_source = tuple(s is not None for s in sources)
        self.merged = MergedConv(candidates, normalize_kernels=normalize_kernels, eps=eps)
        self.batch_dependent = tuple(isinstance(s, FoldedConvBN) for s in sources)
        always = [m for m, dependent in enumerate(self.batch_dependent) if not dependent]
        self.always_linear = tuple(always)
        self.linear_part = (
            MergedConv([candidates[m] for m in always], normalize_kernels=normalize_kernels, eps=eps)
            if always and len(always) < len(candidates) else None
        )

    def with_kernel_normalization(self, drop_bias: bool, eps: float = 1e-5) -> "MergedCandidates":
        """The same group with every kernel normalised per output channel (kernel_norm), biases dropped."""
        result = copy.copy(self)  # shares the references; only the merged convolutions change
        result._modules = dict(self._modules)
        result.merged = self.merged.normalized(drop_bias, eps)
        if self.linear_part is not None:
            result.linear_part = self.linear_part.normalized(drop_bias, eps)
        return result

    def _kernel_and_bias(self, m: int) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        if not self.has_source[m]:
            return None, None
        source = self.sources[m]
        if isinstance(source, FoldedConvBN):
            return source.folded()
        return source.weight, source.bias

    def _merged(self, conv: MergedConv, h: torch.Tensor, indices: Sequence[int], weights) -> torch.Tensor:
        pairs = [self._kernel_and_bias(m) for m in indices]
        biases = [b for _, b in pairs] if conv.plan.has_bias else None
        return conv(h, [weights[m] for m in indices], [k for k, _ in pairs], biases)

    def forward(self, h: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        batch_statistics = any(
            dependent and self.sources[m].uses_batch_statistics for m, dependent in enumerate(self.batch_dependent)
        )
        if not batch_statistics:
            return self._merged(self.merged, h, range(len(self.has_source)), weights)
        total = None
        if self.always_linear:
            conv = self.linear_part if self.linear_part is not None else self.merged
            total = self._merged(conv, h, self.always_linear, weights)
        for m, dependent in enumerate(self.batch_dependent):
            if dependent:
                term = self.sources[m].weighted(h, weights[m])
                total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return self.merged.extra_repr()

    def describe(self) -> str:
        kind = "Floated" if self.floated else "Merged"
        geometry = self.merged.describe_geometry().replace(" stride 1x1", "").replace(" pad 1x1", "")
        return f"{kind}({len(self.has_source)} -> {geometry})"


def weighted_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight · bn(x)`` that does not keep ``bn(x)`` alive for backward.

    The forward is exactly the original's: ``bn(x)`` (same statistics, same
    running-statistics update, following ``_BatchNorm.forward`` step by step),
    then the product with ``weight``, bit for bit. What changes is what
    autograd keeps: the product ``w · bn(x)`` saves ``bn(x)`` for the gradient
    of ``w``; here only ``x`` (which batch norm saves anyway) and the
    per-channel statistics are kept, and one batch-norm backward gives::

        ∂L/∂w = ⟨bn(x), g⟩ = Σ_c (γ_c·Σ g·x̂ + β_c·Σ g),   ∂L/∂x = w · bn'(x)ᵀ g

    so a candidate ending in a BatchNorm saves one activation less. (Bitwise
    equal values matter: a feature map with zero variance sits on a ReLU kink,
    where any reordering of the arithmetic flips a gradient.) Under
    ``torch.compile`` it is the plain ``bn(x) * w``: the compiler plans the
    backward itself.
    """
    bn._check_input_dim(x)
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_statistics = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    running_mean = bn.running_mean if track else None
    running_var = bn.running_var if track else None
    if torch.compiler.is_compiling():
        # Under torch.compile the plain product: the compiler decides what to save and recompute.
        normalized = F.batch_norm(x, running_mean, running_var, bn.weight, bn.bias, use_batch_statistics, factor,
                                  bn.eps)
        return normalized * weight
    return _WeightedBatchNorm.apply(
        x, weight, bn.weight, bn.bias, running_mean, running_var, use_batch_statistics, factor, bn.eps
    )


class _WeightedBatchNorm(torch.autograd.Function):
    """``w · batch_norm(x)`` saving ``x`` and the per-channel statistics, not ``batch_norm(x)``.

    One batch-norm backward (torch's own kernel, called with ``dy = g`` and a
    unit scale where the BatchNorm has none) yields everything: the input
    gradient (times ``w``), the per-channel sums ``Σ g·x̂`` and ``Σ g``, from
    which ``∂L/∂γ = w·Σ g·x̂``, ``∂L/∂β = w·Σ g`` and
    ``∂L/∂w = Σ_c (γ_c·Σ g·x̂ + β_c·Σ g)`` follow without recomputing ``bn(x)``.
    """

    @staticmethod
    def forward(ctx, x, weight, gamma, beta, running_mean, running_var, batch_stats, momentum, eps):  # type: ignore[override]
        # The running statistics an eval-mode call normalised with are copied: the caller may update them later.
        stats = (None, None) if batch_stats else (running_mean.clone(), running_var.clone())
        normalized, save_mean, save_invstd = torch.native_batch_norm(
            x, gamma, beta, running_mean, running_var, batch_stats, momentum, eps)
        ctx.batch_stats, ctx.eps = batch_stats, eps
        ctx.save_for_backward(x, weight, gamma, beta, *stats, save_mean, save_invstd)
        return normalized * weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, gamma, beta, mean, var, save_mean, save_invstd = ctx.saved_tensors
        needs_x, needs_w, needs_gamma, needs_beta = ctx.needs_input_grad[:4]
        scale = gamma if gamma is not None else x.new_ones(x.shape[1])
        want_xhat_sums = needs_w or (needs_gamma and gamma is not None)
        want_sums = (needs_w and beta is not None) or (needs_beta and beta is not None)
        grad_in, sum_g_xhat, sum_g = torch.ops.aten.native_batch_norm_backward(
            grad, x, scale, mean, var, save_mean, save_invstd, ctx.batch_stats, ctx.eps,
            [bool(needs_x), bool(want_xhat_sums), bool(want_sums)])
        w = weight.to(grad.dtype)
        grad_x = grad_in * w if needs_x else None
        grad_gamma = (sum_g_xhat * w).to(gamma.dtype) if needs_gamma and gamma is not None else None
        grad_beta = (sum_g * w).to(beta.dtype) if needs_beta and beta is not None else None
        grad_w = None
        if needs_w:
            total = sum_g_xhat.sum() if gamma is None else (sum_g_xhat * gamma).sum()
            if beta is not None:
                total = total + (sum_g * beta).sum()
            grad_w = total.reshape(weight.shape).to(weight.dtype)
        return grad_x, grad_w, grad_gamma, grad_beta, None, None, None, None, None


class WeightedBatchNorm(nn.Module):
    """``w · bn(x)`` for a candidate ending in a BatchNorm: see :func:`weighted_batch_norm`.

    ``source`` is the BatchNorm, or a :class:`FoldedConvBN` (then ``x`` is the
    conv's input and eval mode uses the folded convolution).
    """

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        if not isinstance(source, (nn.modules.batchnorm._BatchNorm, FoldedConvBN)):
            raise TypeError(f"expected a BatchNorm or FoldedConvBN, got {type(source).__name__}")
        self.refs = ModuleReferences(source)

    @property
    def source(self) -> nn.Module:
        return self.refs[0]

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        source = self.source
        if isinstance(source, FoldedConvBN):
            return source.weighted(x, weight)
        return weighted_batch_norm(source, x, weight)

    def extra_repr(self) -> str:
        return f"w * {self.source}"

    def describe(self) -> str:
        inner = self.source.describe() if isinstance(self.source, FoldedConvBN) else type(self.source).__name__
        return f"w·{inner}"
