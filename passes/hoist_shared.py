"""hoist_shared: compute equivalent nodes that read the same inputs once.

Partial Module Sharing, exact form (our reconstruction of TopoNAS's PMS).
Identity (exact, bit for bit)::

    f(x), f'(x)  with  f ≡ f'   ->   one f(x) read by both consumers

Two nodes are equivalent when they read the same input nodes with the same
constant arguments and either

* call pure, stateless operations with equal signatures: the same function,
  or modules of the same type and hyper-parameters (ReLU, pooling, identity,
  BatchNorm with ``track_running_stats=False`` and no affine parameters...);
  the signature includes argument *types* (``1`` and ``1.0`` differ); or
* call the very same module (or function) that is deterministic and has no
  side effects (a Conv2d called twice on one tensor).

Never merged: modules with state updates (BatchNorm tracking running
statistics), random operations (dropout, Gumbel noise), in-place operations
and every node that reads a tensor mutated in place somewhere in the graph,
and nodes traced under different grad modes.

Before (a NAS-Bench-201 cell: six ReLUs on one tensor, across three edges)::

    r0 = relu_a(x); r1 = relu_b(x); … conv_a(r0); conv_b(r1); …

After::

    r0 = relu_a(x); … conv_a(r0); conv_b(r0); …

One sweep in topological order reaches the fixed point: once ``relu_b`` is
replaced by ``relu_a``, the pools or convolutions that read them have equal
inputs and merge in the same sweep (the hierarchical topology).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch.fx as fx

from fxnas.analysis import describe_node
from fxnas.graph_utils import (
    is_deterministic_module,
    is_inplace,
    is_pure_stateless_module,
    is_random,
    is_side_effect_free,
    literal_key,
    module_hyperparameters,
    module_of,
    mutated_nodes,
)
from fxnas.passes_base import PassResult

__all__ = ["hoist_shared", "node_signature"]


def _argument_key(value: Any) -> Any:
    if isinstance(value, fx.Node):
        return ("node", value)
    if isinstance(value, (tuple, list)):
        keys = tuple(_argument_key(v) for v in value)
        return None if any(k is None for k in keys) else (type(value), keys)
    if isinstance(value, dict):
        keys = tuple((k, _argument_key(v)) for k, v in sorted(value.items()))
        return None if any(k[1] is None for k in keys) else (dict, keys)
    return literal_key(value)


def node_signature(node: fx.Node, gm: fx.GraphModule, mutated: set[fx.Node]) -> Any:
    """A hashable key equal for equivalent nodes, or None when ``node`` must not be merged."""
    if node.op not in ("call_module", "call_function", "call_method", "get_attr"):
        return None
    if node in mutated or any(arg in mutated for arg in node.all_input_nodes):
        return None
    if node.op == "get_attr":
        return ("get_attr", node.target)
    if is_inplace(node, gm) or is_random(node, gm) or not is_side_effect_free(node, gm):
        return None
    args, kwargs = _argument_key(node.args), _argument_key(node.kwargs)
    if args is None or kwargs is None:
        return None
    grad = node.meta.get("grad_enabled", True)
    if node.op == "call_module":
        module = module_of(node, gm)
        if is_pure_stateless_module(module):
            return ("module", module_hyperparameters(module), args, kwargs, grad)
        if is_deterministic_module(module):
            return ("same-module", id(module), args, kwargs, grad)
        return None
    return (node.op, node.target, args, kwargs, grad)


def hoist_shared(gm: fx.GraphModule) -> PassResult:
    """Merge equivalent nodes across candidates and edges (see module docstring)."""
    graph = gm.graph
    mutated = mutated_nodes(graph, gm)
    representative: dict[Any, fx.Node] = {}
    merged: Counter[str] = Counter()
    merged_modules: list[tuple[str, str]] = []
    changed = False
    for node in list(graph.nodes):
        key = node_signature(node, gm, mutated)
        if key is None:
            continue
        try:
            keeper = representative.setdefault(key, node)
        except TypeError:  # an unhashable constant slipped through
            continue
        if keeper is node:
            continue
        if node.op == "call_module":
            merged[describe_node(node, gm)] += 1
            merged_modules.append((str(node.target), str(keeper.target)))
        elif node.op != "get_attr":
            merged[describe_node(node, gm)] += 1
        node.replace_all_uses_with(keeper)
        graph.erase_node(node)
        changed = True
    stats = {"hoisted": sum(merged.values()), "by_operation": dict(merged.most_common()), "modules": merged_modules}
    return PassResult(gm, changed, stats)
