"""canonicalize_mixed_sums: one ``weighted_sum`` node per mixed edge.

Identity (exact up to floating-point reordering of the additions)::

    Σ_m c_m · w_m  (any spelling)  ->  weighted_sum([c_0, …, c_M-1], [w_0, …, w_M-1])

Before (NAS-Bench-201, Python ``sum`` over a generator)::

    mul = relu_conv_bn * getitem_2; add = 0 + mul; mul_1 = x * getitem_3; add_1 = add + mul_1 …

After::

    mixed = fxnas.ops.weighted_sum([relu_conv_bn, x, …], [getitem_2, getitem_3, …])

A raw sum that holds several edges (a node summing the edges from all
previous nodes) becomes the sum of one ``weighted_sum`` per edge plus its
other addends. Stacked forms (``torch.stack`` + ``torch.sum``, ``einsum``)
get explicit ``w[m]`` nodes; a zero slice concatenated for an implicit
"none" becomes an explicit ``zeros_like`` candidate (pruned next). Later
passes then need one recogniser instead of one per spelling.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from fxnas import ops
from fxnas.analysis import MixedEdge, WeightedSum, find_mixed_edges
from fxnas.passes_base import PassResult
from fxnas.rewrite import copy_meta

__all__ = ["canonicalize_mixed_sums"]


def _weight_node(graph: fx.Graph, candidate) -> fx.Node:
    if candidate.weight.node is not None:
        return candidate.weight.node
    return graph.call_function(operator.getitem, (candidate.weight.vector, candidate.weight.index))


def _edge_sum(graph: fx.Graph, edge: MixedEdge, root: fx.Node) -> fx.Node:
    present = [c.output for c in edge.candidates if c.output is not None]
    candidates, weights = [], []
    for candidate in edge.candidates:
        output = candidate.output
        if output is None:  # an implicit zero slice
            output = copy_meta(graph.call_function(torch.zeros_like, (present[0],)), root)
        candidates.append(output)
        weights.append(_weight_node(graph, candidate))
    node = graph.call_function(ops.weighted_sum, (candidates, weights))
    copy_meta(node, root)
    node.meta["fxnas_candidate_modules"] = [c.module for c in edge.candidates]
    node.meta["fxnas_edge_name"] = edge.name
    return node


def _rewrite_sum(gm: fx.GraphModule, match: WeightedSum, edges: list[MixedEdge]) -> None:
    graph = gm.graph
    with graph.inserting_before(match.root):
        parts = [_edge_sum(graph, edge, match.root) for edge in edges]
        covered = {c.output for e in edges for c in e.candidates}
        leftovers = [t.product for t in match.terms if t.candidate not in covered and t.product is not None]
        parts.extend(leftovers)
        parts.extend(match.other_addends)
        total = parts[0]
        for part in parts[1:]:
            total = copy_meta(graph.call_function(operator.add, (total, part)), match.root)
    match.root.replace_all_uses_with(total)


def canonicalize_mixed_sums(gm: fx.GraphModule) -> PassResult:
    """Rewrite every mixed edge into one :func:`fxnas.ops.weighted_sum` node (see module docstring)."""
    by_sum: dict[fx.Node, tuple[WeightedSum, list[MixedEdge]]] = {}
    for edge in find_mixed_edges(gm):
        if edge.form == "canonical":
            continue
        match = edge.weighted_sum
        by_sum.setdefault(match.root, (match, []))[1].append(edge)
    forms: dict[str, int] = {}
    # Last sum first: rewriting a sum replaces its root, which later edges may read
    # (as their input, or as a pass-through candidate). Going backwards, no analysed
    # edge still waiting to be rewritten ever refers to a node that is gone.
    for match, edges in reversed(list(by_sum.values())):
        _rewrite_sum(gm, match, edges)
        forms[match.form] = forms.get(match.form, 0) + len(edges)
    return PassResult(gm, bool(by_sum), {"edges_canonicalized": sum(forms.values()), "forms": forms})
