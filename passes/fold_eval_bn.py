"""fold_eval_bn: make conv → BatchNorm candidates linear in eval mode.

Identity (exact in eval mode; a BatchNorm with running statistics is affine)::

    bn(conv(h; K, b)) = conv(h; K·s, (b - μ)·s + β),   s = γ / sqrt(σ² + ε)

Before (a ReLU-Conv-BN candidate, after hoist_shared)::

    conv = cells_0_edges_1_0_3_conv(relu); bn = cells_0_edges_1_0_3_bn(conv)
    mixed = weighted_sum([…, bn, …], […])

After::

    folded = folded_cells_0_edges_1_0_3_conv(relu)      # FoldedConvBN(conv, bn)
    mixed = weighted_sum([…, folded, …], […])

:class:`fxnas.modules.FoldedConvBN` runs ``bn(conv(h))`` unchanged while the
BatchNorm is in training mode (batch statistics, running-statistics updates)
and the folded convolution in eval mode, reading the live parameters and
statistics at every call: calling ``.train()`` or ``.eval()`` later is always
exact. ``merge_linear`` (next) treats folded candidates as linear operators,
so in eval mode every ReLU-Conv-BN candidate on one tensor becomes part of
one convolution.

Only candidate outputs are folded (the conv's output must feed nothing but
the BatchNorm); BatchNorms without running statistics normalise with batch
statistics in both modes and are left alone.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from fxnas.analysis import find_mixed_edges
from fxnas.modules import FoldedConvBN
from fxnas.passes_base import PassResult
from fxnas.rewrite import copy_meta, unique_module_name

__all__ = ["fold_eval_bn"]

_FOLDABLE_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _conv_bn_pair(node: fx.Node, gm: fx.GraphModule) -> tuple[fx.Node, nn.Module, nn.Module] | None:
    """``(conv node, conv, bn)`` when ``node`` is a BatchNorm (running stats) applied to a conv's only output."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    bn = gm.get_submodule(node.target)
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not bn.track_running_stats:
        return None
    conv_node = node.args[0]
    if not isinstance(conv_node, fx.Node) or conv_node.op != "call_module" or len(conv_node.users) != 1:
        return None
    if len(conv_node.args) != 1 or conv_node.kwargs:
        return None
    conv = gm.get_submodule(conv_node.target)
    if type(conv) not in _FOLDABLE_LINEAR or getattr(conv, "padding_mode", "zeros") != "zeros":
        return None
    if conv.weight.shape[0] != bn.num_features:
        return None
    return conv_node, conv, bn


def fold_eval_bn(gm: fx.GraphModule) -> PassResult:
    """Replace conv → BatchNorm candidates by :class:`FoldedConvBN` calls (see module docstring)."""
    graph = gm.graph
    folded: list[str] = []
    seen: set[fx.Node] = set()
    for edge in find_mixed_edges(gm):
        if edge.form != "canonical":
            continue
        for candidate in edge.candidates:
            node = candidate.output
            if node is None or node in seen:
                continue
            pair = _conv_bn_pair(node, gm)
            # Only a candidate's own conv -> BN (not, say, the stem's BN that an identity candidate reads).
            if pair is None or node not in candidate.path or pair[0] not in candidate.path:
                continue
            seen.add(node)
            conv_node, conv, bn = pair
            name = unique_module_name(gm, "folded_" + str(conv_node.target))
            gm.add_submodule(name, FoldedConvBN(conv, bn))
            with graph.inserting_before(node):
                replacement = graph.call_module(name, (conv_node.args[0],))
            copy_meta(replacement, node, same_value=True)
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
            graph.erase_node(conv_node)
            folded.append(f"{conv_node.target} + {node.target}")
    return PassResult(gm, bool(folded), {"folded": len(folded), "pairs": folded})
