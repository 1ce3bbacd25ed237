"""prune_zero: drop candidates whose output is identically zero.

Identity (exact)::

    Σ_m w_m · c_m  with  c_z ≡ 0   ->   Σ_{m≠z} w_m · c_m

``w_z · 0 = 0`` and ``∂/∂w_z = ⟨0, g⟩ = 0``, so outputs and every gradient
are unchanged; the architecture gradient of ``alpha`` still flows through the
softmax Jacobian of the remaining candidates. Only difference: a NaN or Inf in
``x`` no longer propagates through ``x * 0``.

Before::

    zero = x.mul(0.0)
    mixed = weighted_sum([zero, x, relu_conv_bn], [w0, w1, w2])

After::

    mixed = weighted_sum([x, relu_conv_bn], [w1, w2])

A zero candidate is kept when removing it would change the output's shape
(broadcasting) or would delete a node with side effects (a BatchNorm updating
its running statistics on the way to ``x.mul(0)``), and when it is the only
candidate left.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from fxnas import ops
from fxnas.analysis import Candidate, MixedEdge, find_mixed_edges
from fxnas.graph_utils import is_side_effect_free
from fxnas.passes_base import PassResult
from fxnas.rewrite import copy_meta
from fxnas.values import tensor_meta

__all__ = ["prune_zero"]


def _shape(node: fx.Node) -> tuple | None:
    meta = tensor_meta(node)
    return tuple(meta.shape) if meta is not None else None


def _prunable(candidate: Candidate, gm: fx.GraphModule) -> bool:
    if not candidate.zero or candidate.output is None:
        return False
    return all(is_side_effect_free(node, gm) for node in candidate.path)


def _keeps_shape(edge: MixedEdge, kept: list[Candidate]) -> bool:
    out = _shape(edge.output)
    shapes = [_shape(c.output) for c in kept]
    if out is None or any(s is None for s in shapes):
        return False
    try:
        return tuple(torch.broadcast_shapes(*shapes)) == out
    except RuntimeError:
        return False


def prune_zero(gm: fx.GraphModule) -> PassResult:
    """Remove identically-zero candidates from canonical mixed edges (see module docstring)."""
    graph = gm.graph
    pruned: list[str] = []
    # Last edge first, so no edge still to be visited refers to a replaced node.
    for edge in reversed(find_mixed_edges(gm)):
        if edge.form != "canonical":
            continue
        zero = [c for c in edge.candidates if _prunable(c, gm)]
        kept = [c for c in edge.candidates if c not in zero]
        if not zero or not kept or not _keeps_shape(edge, kept):
            continue
        old = edge.output
        with graph.inserting_before(old):
            new = graph.call_function(
                ops.weighted_sum, ([c.output for c in kept], [old.args[1][c.index] for c in kept])
            )
        copy_meta(new, old, same_value=True)
        modules = old.meta.get("fxnas_candidate_modules") or [None] * len(edge.candidates)
        new.meta["fxnas_candidate_modules"] = [modules[c.index] for c in kept]
        new.meta["fxnas_edge_name"] = old.meta.get("fxnas_edge_name", edge.name)
        old.replace_all_uses_with(new)
        graph.erase_node(old)
        pruned[:0] = [f"{edge.name}: {c.name}" for c in zero]
    return PassResult(gm, bool(pruned), {"pruned": len(pruned), "pruned_candidates": pruned})
