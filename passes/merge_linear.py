"""merge_linear: merge the linear candidates that read one tensor into one convolution.

Reparameterisation (exact, up to floating-point reordering)::

    Σ_{m∈G} w_m · ℓ_m(h)  =  conv(h; Σ_{m∈G} w_m · E(K_m), Σ_{m∈G} w_m · b_m)

for a group ``G`` of candidates of one mixed edge that each apply one linear
operator ``ℓ_m`` to the same node ``h`` of the hierarchical topology: a
convolution or Linear, an average pooling (a constant kernel; with
``count_include_pad=False`` the border divisors are handled exactly by a
border correction), an identity (a delta kernel), or a conv + BatchNorm
folded by ``fold_eval_bn`` (linear while the BatchNorm is in eval mode; in
training those candidates run unmerged inside the same module). ``E`` embeds
each kernel in the common geometry (see :mod:`fxnas.kernels`).

Before (NAS-Bench-201 edge after hoist_shared: skip and pool read ``x``)::

    pool = pool_3x3(x)
    mixed = weighted_sum([x, relu_conv_bn_1x1, relu_conv_bn_3x3, pool], [w1, w2, w3, w4])

After::

    merged_conv_cells_0_edges_1_0 = self.merged_conv_cells_0_edges_1_0(x, [w1, w4])
    mixed = weighted_sum([merged_conv_cells_0_edges_1_0, …], [None, w2, w3])

(``None``: the merged term carries its weights inside.) Groups must agree on
stride and output grid (``fxnas.kernels.plan_merge`` decides); a group is
merged only when the merged operator costs no more multiply-accumulates than
the candidates apart (a depthwise 5x5 beside a dense 1x1 stays apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from fxnas.analysis import MixedEdge, find_mixed_edges
from fxnas.kernels import LinearCandidate, merge_cost, plan_merge, separate_cost
from fxnas.linearity import LinearView, identity_view, linear_view
from fxnas.graph_utils import is_stateful_module, module_call_counts
from fxnas.modules import FoldedConvBN, MergedCandidates
from fxnas.passes_base import PassResult
from fxnas.rewrite import copy_meta, unique_module_name

__all__ = ["merge_linear", "linear_groups"]


@dataclass
class _Member:
    position: int  # index in the weighted_sum's argument lists
    view: LinearView
    name: str


def _members_by_input(edge: MixedEdge, gm: fx.GraphModule) -> dict[fx.Node, list[_Member]]:
    node = edge.output
    calls: dict[int, int] = {}

    def called_elsewhere(module) -> bool:
        if not calls:  # counted only when a candidate with state asks (a graph walk per edge)
            calls.update(module_call_counts(gm))
        return calls.get(id(module), 0) > 1

    candidates, weights = node.args
    names = node.meta.get("fxnas_candidate_modules") or [None] * len(candidates)
    groups: dict[fx.Node, list[_Member]] = {}
    for position, (candidate, weight) in enumerate(zip(candidates, weights)):
        if weight is None:
            continue
        view = linear_view(candidate, gm) or identity_view(candidate)
        if view is None:
            continue
        if view.source is not None and not _private_to(candidate, node):
            # A candidate with state (a BatchNorm updating running statistics in training) is
            # computed inside the merged module: only when nothing else reads it.
            continue
        if view.source is not None and is_stateful_module(view.source) and (
            candidates.count(candidate) > 1
            or (isinstance(view.source, FoldedConvBN) and called_elsewhere(view.source.bn))
        ):
            # a stateful module called elsewhere too (or one node weighted twice in this sum):
            # running it inside the merge would repeat or reorder its statistics updates
            continue
        label = names[position] or candidate.name
        groups.setdefault(view.reads, []).append(_Member(position, view, label))
    return groups


def _private_to(candidate: fx.Node, consumer: fx.Node) -> bool:
    return set(candidate.users) == {consumer}


def _clusters(members: list[_Member]) -> list[list[_Member]]:
    """Greedy clusters of members whose kernels embed into one geometry, worth merging."""
    clusters: list[list[_Member]] = []
    for member in members:
        for cluster in clusters:
            if _mergeable([m.view.candidate for m in cluster] + [member.view.candidate]):
                cluster.append(member)
                break
        else:
            clusters.append([member])
    return [c for c in clusters if len(c) >= 2]


def _mergeable(candidates: list[LinearCandidate]) -> bool:
    try:
        plan = plan_merge(candidates)
    except ValueError:
        return False
    return merge_cost(plan) <= separate_cost(candidates)


def linear_groups(edge: MixedEdge, gm: fx.GraphModule) -> list[list[_Member]]:
    """The groups of ``edge``'s candidates that ``merge_linear`` would merge (analysis only)."""
    return [cluster for members in _members_by_input(edge, gm).values() for cluster in _clusters(members)]


def _rewrite(gm: fx.GraphModule, edge: MixedEdge, clusters: list[list[_Member]]) -> list[str]:
    graph, node = gm.graph, edge.output
    candidates, weights = list(node.args[0]), list(node.args[1])
    names = list(node.meta.get("fxnas_candidate_modules") or [None] * len(candidates))
    merged_positions: dict[int, fx.Node] = {}
    dropped: set[int] = set()
    done = []
    for cluster in clusters:
        module = MergedCandidates(
            [m.view.candidate for m in cluster], [m.view.source for m in cluster], names=[m.name for m in cluster]
        )
        name = unique_module_name(gm, f"merged_conv_{edge.name}")
        gm.add_submodule(name, module)
        with graph.inserting_before(node):
            merged = graph.call_module(name, (cluster[0].view.reads, [weights[m.position] for m in cluster]))
        copy_meta(merged, node)
        copy_meta(merged, cluster[0].view.node, same_value=True)  # same shape as every member
        first, *rest = sorted(m.position for m in cluster)
        merged_positions[first] = merged
        dropped.update(rest)
        names[first] = "merged(" + ", ".join(m.name for m in cluster) + ")"
        done.append(f"{edge.name}: {module.merged.plan.describe()} <- " + ", ".join(m.name for m in cluster))
    new_candidates, new_weights, new_names = [], [], []
    for position, (candidate, weight) in enumerate(zip(candidates, weights)):
        if position in dropped:
            continue
        if position in merged_positions:
            candidate, weight = merged_positions[position], None
        new_candidates.append(candidate)
        new_weights.append(weight)
        new_names.append(names[position])
    node.args = (new_candidates, new_weights)
    node.meta["fxnas_candidate_modules"] = new_names
    # The members now run inside the merged module: their own nodes go (a stateful one,
    # FoldedConvBN in training, must not run twice), unless something else still reads them.
    erased: set[fx.Node] = set()
    for cluster in clusters:
        for member in cluster:
            stale = member.view.node
            if stale is not member.view.reads and not stale.users and stale not in erased:
                graph.erase_node(stale)
                erased.add(stale)
    return done


def merge_linear(gm: fx.GraphModule) -> PassResult:
    """Merge groups of linear candidates into :class:`fxnas.modules.MergedCandidates` (see module docstring)."""
    merged: list[str] = []
    for edge in reversed(find_mixed_edges(gm)):
        if edge.form != "canonical":
            continue
        clusters = linear_groups(edge, gm)
        if clusters:
            merged[:0] = _rewrite(gm, edge, clusters)
    return PassResult(gm, bool(merged), {"merged_groups": len(merged), "groups": merged})
