"""Runtime modules inserted by the passes: thin nn.Module wrappers over `fxnas.kernels`.

`MergedConv` computes a mixed edge's linear candidates as one convolution:

    Σ_m w_m · ℓ_m(x)  ==  conv(x; Σ_m w_m E(K_m), Σ_m w_m b_m)
                          + Σ_{exclude-pad pools p} w_p · border_correction_p(x)

It owns no parameters: the candidates' original weights and biases and the
architecture weights arrive as forward arguments, so the rewritten graph shares
Parameter objects with the user's model and its state_dict keys do not change.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from fxnas.kernels import (
    LinearCandidate,
    as_weight_vector,
    add_avg_pool_border_correction,
    merge_biases,
    merge_kernels,
    plan_merge,
)

__all__ = ["MergedConv", "candidate_from_module"]

_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
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
    ) -> None:
        super().__init__()
        self.plan = plan_merge(candidates, normalize=normalize_kernels, eps=eps)
        self.register_buffer("merge_index", self.plan.index.clone(), persistent=False)

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
        kernel = self.merged_kernel(weights, kernels)
        bias = merge_biases(plan, weights, biases)
        if plan.spatial_dims == 0:
            return F.linear(x, kernel, bias)

        # Unbatched (C, *spatial) input: conv accepts it, the border correction
        # wants a batch dim.
        unbatched = x.dim() == plan.spatial_dims + 1
        if unbatched:
            x = x.unsqueeze(0)
        conv = _CONV_FUNCTIONS[plan.spatial_dims]
        out = conv(x, kernel, bias, plan.stride, plan.padding, plan.dilation, plan.groups)
        for fix in plan.border_corrections:
            # The conv computed the include-pad pool; this adds the exclude-pad
            # difference on the border strips only.
            scale = weights[fix.candidate] * fix.scale
            out = add_avg_pool_border_correction(out, x, fix.kernel_size, fix.stride, fix.padding, scale)
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        kinds = ", ".join(c.describe() for c in self.plan.candidates)
        text = f"candidates=[{kinds}], merged={self.plan.describe()}"
        if self.plan.normalize:
            text += f", normalize_kernels=True, eps={self.plan.eps:g}"
        return text
