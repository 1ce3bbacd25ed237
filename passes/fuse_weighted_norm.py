"""fuse_weighted_norm: fold an architecture weight into the BatchNorm that ends a candidate.

Identity (exact, up to rounding; ``x̂`` the normalised input)::

    w · bn(x) = bn_w(x),   bn_w: the same batch norm with affine ``(w·γ, w·β)``

Statistics and running-statistics updates are those of ``bn``
(:func:`fxnas.modules.weighted_batch_norm`). The product ``w · bn(x)`` makes
autograd keep ``bn(x)`` for the gradient of ``w``; batch norm's backward
computes the gradient of its (scaled) weight from the input it saves anyway.
Every candidate ending in a BatchNorm (ReLU-Conv-BN, separable convs, DARTS
pools, a floated group) saves one activation less.

A BatchNorm with running statistics that the graph calls more than once
(one module shared by several candidates) is fused in place, so that the
order of its statistics updates is unchanged.

Before::

    bn = cells_0_edges_1_0_3_bn(conv)
    mixed = weighted_sum([x, bn], [w1, w3])

After::

    weighted_bn = self.weighted_cells_0_edges_1_0_3_bn(conv, w3)
    mixed = weighted_sum([x, weighted_bn], [w1, None])
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from fxnas.analysis import find_mixed_edges
from fxnas.graph_utils import is_stateful_module, module_call_counts
from fxnas.modules import FoldedConvBN, WeightedBatchNorm
from fxnas.passes_base import PassResult
from fxnas.rewrite import copy_meta, unique_module_name

__all__ = ["fuse_weighted_norm"]


def _stateful_parts(module: nn.Module) -> list[nn.Module]:
    return [module.bn] if isinstance(module, FoldedConvBN) else [module]


def _batchnorm_input(node: fx.Node, consumer: fx.Node, gm: fx.GraphModule) -> fx.Node | None:
    """The input of ``node`` when it is a BatchNorm (or FoldedConvBN) call read only by ``consumer``."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs or set(node.users) != {consumer}:
        return None
    if not isinstance(gm.get_submodule(node.target), (nn.modules.batchnorm._BatchNorm, FoldedConvBN)):
        return None
    return node.args[0] if isinstance(node.args[0], fx.Node) else None


def _position(graph: fx.Graph, bn_node: fx.Node, weight: fx.Node, ws: fx.Node, once: bool) -> fx.Node | None:
    """Where the fused node goes: before the weighted sum if the BatchNorm is called only here;
    otherwise at the BatchNorm's own place, so its calls keep their order (None: not possible)."""
    if once:
        return ws
    order = {n: i for i, n in enumerate(graph.nodes)}
    return bn_node if order[weight] < order[bn_node] else None


def fuse_weighted_norm(gm: fx.GraphModule) -> PassResult:
    """Fold each candidate's architecture weight into its final BatchNorm (see module docstring)."""
    graph = gm.graph
    fused: list[str] = []
    calls = module_call_counts(gm)
    for edge in find_mixed_edges(gm):
        if edge.form != "canonical":
            continue
        node = edge.output
        candidates, weights = list(node.args[0]), list(node.args[1])
        changed = False
        for k, (candidate, weight) in enumerate(zip(candidates, weights)):
            if weight is None:
                continue
            x = _batchnorm_input(candidate, node, gm)
            if x is None or list(node.args[0]).count(candidate) > 1:
                continue  # one BatchNorm output weighted twice: fusing both would run it twice
            source = gm.get_submodule(candidate.target)
            once = not is_stateful_module(source) or all(calls.get(id(m), 0) <= 1 for m in _stateful_parts(source))
            anchor = _position(graph, candidate, weight, node, once)
            if anchor is None:
                continue
            name = unique_module_name(gm, f"weighted_{candidate.target}")
            gm.add_submodule(name, WeightedBatchNorm(source))
            with graph.inserting_before(anchor):
                replacement = graph.call_module(name, (x, weight))
            copy_meta(replacement, candidate, same_value=True)
            candidates[k], weights[k] = replacement, None
            fused.append(str(candidate.target))
            changed = True
        if changed:
            old = [c for c, w in zip(node.args[0], node.args[1]) if c not in candidates]
            node.args = (candidates, weights)
            for stale in old:
                if not stale.users:
                    graph.erase_node(stale)
    return PassResult(gm, bool(fused), {"fused": len(fused), "batchnorms": fused})
