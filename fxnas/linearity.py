"""Which candidate nodes are linear operators of a single input (analysis, read-only).

``merge_linear`` merges the candidates of an edge that apply one linear
operator to the same tensor ``h``: a convolution or Linear module, an average
pooling, an identity (an ``nn.Identity`` call, or ``h`` itself as the
candidate), or a :class:`fxnas.modules.FoldedConvBN` (linear in eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx
import torch.nn as nn

from .kernels import LinearCandidate
from .modules import FoldedConvBN, candidate_from_module
from .values import tensor_meta

__all__ = ["LinearView", "linear_view", "identity_view"]

_LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


@dataclass(frozen=True)
class LinearView:
    """``node = ℓ(reads)`` with ``ℓ`` linear: its geometry and where its kernel lives."""

    node: fx.Node
    reads: fx.Node
    candidate: LinearCandidate
    source: nn.Module | None  # Conv/Linear or FoldedConvBN whose kernel the merge reads; None: constant


def _channels_and_dims(node: fx.Node) -> tuple[int, int] | None:
    meta = tensor_meta(node)
    if meta is None or len(meta.shape) < 2:
        return None
    return int(meta.shape[1]), len(meta.shape) - 2


def identity_view(node: fx.Node) -> LinearView | None:
    """``node`` read as an identity candidate of itself."""
    layout = _channels_and_dims(node)
    if layout is None:
        return None
    channels, dims = layout
    return LinearView(node, node, LinearCandidate.identity(channels, dims), None)


def linear_view(node: fx.Node, root: nn.Module) -> LinearView | None:
    """``node`` as a linear operator of its single tensor input, or None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    (h,) = node.args
    if not isinstance(h, fx.Node):
        return None
    layout = _channels_and_dims(h)
    if layout is None:
        return None
    channels, dims = layout
    module = root.get_submodule(node.target)
    try:
        if isinstance(module, FoldedConvBN):
            candidate, source = module.candidate, module
        elif type(module) in _LINEAR_MODULES:
            candidate, source = candidate_from_module(module), module
        elif type(module) in _POOLS:
            candidate, source = candidate_from_module(module, channels=channels), None
        elif type(module) is nn.Identity:
            candidate, source = LinearCandidate.identity(channels, dims), None
        else:
            return None
    except ValueError:
        return None
    if candidate.spatial_dims not in (0, dims) or (candidate.spatial_dims == 0 and len(tensor_meta(h).shape) != 2):
        return None
    if candidate.in_channels != (channels if candidate.spatial_dims else int(tensor_meta(h).shape[-1])):
        return None
    return LinearView(node, h, candidate, source)
