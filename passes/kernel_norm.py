"""kernel_norm: per-candidate kernel normalisation of floated groups (topo mode).

Our reconstruction of TopoNAS's kernel normalisation. Floating a group's
BatchNorms past the merge (``float_shared``) removed the per-candidate
normalisation that made ``w_m`` reflect the choice rather than the kernel's
magnitude. Each candidate kernel is therefore normalised per output channel
before the merge, differentiably::

    K̂_m[c] = K_m[c] / (‖K_m[c]‖₂ + ε)

so that, for white input, every candidate contributes unit variance per
output channel. A conv bias that the following BatchNorm cancels (it
subtracts the batch mean) is dropped.

Before::

    floated = floated_conv_…(relu, [w2 / W, w3 / W])      # Σ (w_m/W) · conv(h; K_m, b_m)

After::

    floated = floated_conv_…(relu, [w2 / W, w3 / W])      # Σ (w_m/W) · conv(h; K̂_m)

(The same node; its module now normalises kernels and has no bias.)
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from fxnas.modules import MergedCandidates
from fxnas.passes_base import PassResult

__all__ = ["kernel_norm", "KERNEL_NORM_EPS"]

#: ε of the normalisation (the module stores it; changing this affects new simplifications only).
KERNEL_NORM_EPS = 1e-5


def _followed_by_batchnorm(node: fx.Node, gm: fx.GraphModule) -> bool:
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module":
        return False
    return isinstance(gm.get_submodule(users[0].target), nn.modules.batchnorm._BatchNorm)


def kernel_norm(gm: fx.GraphModule) -> PassResult:
    """Normalise the kernels of every floated merged group (see module docstring)."""
    normalized = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if not isinstance(module, MergedCandidates) or not module.floated or module.merged.plan.normalize:
            continue
        drop_bias = _followed_by_batchnorm(node, gm)
        gm.add_submodule(node.target, module.with_kernel_normalization(drop_bias=drop_bias, eps=KERNEL_NORM_EPS))
        normalized.append(str(node.target) + (" (bias dropped)" if drop_bias and module.merged.plan.has_bias else ""))
    return PassResult(gm, bool(normalized), {"normalized": len(normalized), "modules": normalized})
