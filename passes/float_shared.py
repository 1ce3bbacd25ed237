"""float_shared: Floating Module Sharing (topo mode; approximate by design).

Our reconstruction of TopoNAS's FMS. In a group ``G`` of candidates of one
mixed edge whose paths from a node ``h`` are ``ℓ_m → s_m → rest_m``, with
``ℓ_m`` linear and the ``s_m`` structurally equal but distinct instances (a
BatchNorm per candidate; the pointwise conv of a separable conv), the ``s_m``
float past the merge and become one shared ``s``::

    Σ_{m∈G} w_m · s_m(ℓ_m(h))  ->  W_G · s( Σ_{m∈G} (w_m / W_G) · ℓ_m(h) ),   W_G = Σ_{m∈G} w_m

The inner sum is one merged convolution (:class:`fxnas.modules.MergedCandidates`,
its kernels normalised by the ``kernel_norm`` pass that follows). Floating
continues over every next module that is structurally equal in all members.
Where the paths then continue differently (a double-stacked separable conv
beside a single-stage dilated conv: unaligned levels of non-linearity), the
group splits into the members that end (``T``) and those that continue
(``C``), which share the floated prefix ``z = s(…)``, and the rule recurses
on ``C`` from ``z``::

    y_G = W_T · z + W_C · y_C(z),   y_C = the rule applied to C with weights w_m / W_C

Each subgroup's total weight and the relative weights inside it stay
functions of the original ``w_m``, so every ``alpha`` still gets a gradient.

A floated module with parameters or running statistics (a pointwise conv, an
affine BatchNorm) is weight-tied for the group: the first member's module is
used, and its parameters and running statistics are set to the mean of the
group's copies when the pass runs. The other copies stay registered (so
``state_dict`` keys and loading keep working) but are no longer called.

Before (NAS-Bench-201 edge, after hoist_shared)::

    bn1 = bn_1x1(conv_1x1(relu)); bn3 = bn_3x3(conv_3x3(relu))
    mixed = weighted_sum([x, bn1, bn3, pool], [w1, w2, w3, w4])

After::

    W = weight_total([w2, w3]); relative = relative_weights([w2, w3], W)     # w_m / W
    merged = floated_conv_…(relu, relative); z = bn_1x1(merged)
    mixed = weighted_sum([x, pool, z], [w1, w4, W])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn

from fxnas import ops
from fxnas.analysis import Candidate, MixedEdge, find_mixed_edges
from fxnas.graph_utils import (
    data_inputs,
    input_dependent_nodes,
    is_pure_stateless_module,
    is_random,
    is_side_effect_free,
    literal_key,
    module_hyperparameters,
)
from fxnas.linearity import linear_view
from fxnas.modules import MergedCandidates
from fxnas.passes_base import PassResult
from fxnas.rewrite import copy_meta, unique_module_name

__all__ = ["float_shared"]


@dataclass
class _Member:
    chain: list[fx.Node]  # the remaining operations, in order
    weight: fx.Node
    name: str
    attached: bool  # chain[0] already reads the group's input (else it must be re-applied)


def _chain(candidate: Candidate, dependent: set[fx.Node]) -> tuple[fx.Node, list[fx.Node]] | None:
    """``(h, [n_1, …, n_k = c_m])`` when the candidate's private path is a single-input chain from ``h``."""
    if candidate.output is None or not candidate.path or len(candidate.frontier) != 1:
        return None
    previous = candidate.frontier[0]
    for node in candidate.path:
        inputs = data_inputs(node, dependent)
        if inputs != [previous] or _reads_twice(node, previous):
            return None
        previous = node
    return (candidate.frontier[0], list(candidate.path)) if previous is candidate.output else None


def _reads_twice(node: fx.Node, value: fx.Node) -> bool:
    return sum(1 for a in node.all_input_nodes if a is value) > 1


def _structure(node: fx.Node, gm: fx.GraphModule):
    """A key equal for nodes that do the same thing to their input (distinct module instances allowed)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        shapes = tuple((n, tuple(t.shape)) for n, t in list(module.named_parameters()) + list(module.named_buffers()))
        return ("module", module_hyperparameters(module), shapes, len(node.args), tuple(sorted(node.kwargs)))
    if node.op in ("call_function", "call_method"):
        others = tuple(literal_key(a) if not isinstance(a, fx.Node) else "input" for a in node.args)
        kwargs = tuple((k, literal_key(v)) for k, v in sorted(node.kwargs.items()))
        if any(k is None for k in others) or any(v is None for _, v in kwargs):
            return None
        return (node.op, node.target, others, kwargs)
    return None


class _Builder:
    """Graph surgery for one edge: new nodes go right before the edge's weighted_sum."""

    def __init__(self, gm: fx.GraphModule, edge: MixedEdge):
        self.gm, self.edge, self.graph = gm, edge, gm.graph
        self.anchor = edge.output
        self.log: list[str] = []

    def node(self, op: str, target, args, kwargs=None, like: fx.Node | None = None) -> fx.Node:
        """A new node before the anchor; ``like``: a node whose value (shape, dtype) it has."""
        with self.graph.inserting_before(self.anchor):
            node = self.graph.create_node(op, target, args, kwargs or {})
        if like is not None:
            copy_meta(node, like, same_value=True)
        return copy_meta(node, self.anchor)

    def total(self, weights: list[fx.Node]) -> fx.Node:
        if len(weights) == 1:
            return weights[0]
        return self.node("call_function", ops.weight_total, (list(weights),), like=weights[0])

    def apply(self, template: fx.Node, value: fx.Node) -> fx.Node:
        """``template``'s operation applied to ``value`` instead of its own input."""
        with self.graph.inserting_before(self.anchor):
            node = self.graph.node_copy(template, lambda n: value if n is template.all_input_nodes[0] else n)
        node.meta.pop("fxnas_value", None)
        copy_meta(node, template, same_value=True)  # the same operation on a tensor of the same shape
        return copy_meta(node, self.anchor)

    def apply_chain(self, chain: list[fx.Node], value: fx.Node) -> fx.Node:
        for template in chain:
            value = self.apply(template, value)
        return value


def _tie(modules: list[nn.Module]) -> None:
    """Set the first module's parameters and running statistics to the mean over the group."""
    first = modules[0]
    with torch.no_grad():
        for name, tensor in list(first.named_parameters()) + list(first.named_buffers()):
            if not tensor.is_floating_point():
                continue
            copies = [dict(list(m.named_parameters()) + list(m.named_buffers()))[name] for m in modules]
            tensor.copy_(torch.stack([c.detach().to(tensor.dtype) for c in copies]).mean(0))


def _unchanged(builder: _Builder, h: fx.Node, member: _Member) -> tuple[fx.Node, fx.Node]:
    value = member.chain[-1] if member.attached else builder.apply_chain(member.chain, h)
    return value, member.weight


def _is_pure(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return is_pure_stateless_module(gm.get_submodule(node.target))
    return node.op in ("call_function", "call_method") and is_side_effect_free(node, gm) and not is_random(node, gm)


def _shared_prefix(chains: list[list[fx.Node]], gm: fx.GraphModule) -> int:
    """How many leading operations all ``chains`` have in common (structurally)."""
    length = 0
    while all(len(c) > length for c in chains):
        keys = {_structure(c[length], gm) for c in chains}
        if len(keys) != 1 or None in keys:
            break
        length += 1
    return length


def _float(builder: _Builder, h: fx.Node, members: list[_Member], depth: int = 0) -> list[tuple[fx.Node, fx.Node]]:
    """Terms ``(value, weight)`` replacing ``Σ_m w_m · chain_m(h)`` (see the module docstring).

    Members whose first operation is linear and whose next operation is
    structurally equal form a group; everything else is kept as it is.
    """
    gm = builder.gm
    shared = _shared_prefix([m.chain for m in members], gm) if len(members) > 1 else 0
    shared = next((k for k in range(shared) if not _is_pure(members[0].chain[k], gm)), shared)
    if shared and not all(m.attached for m in members):
        # A common pure prefix (the ReLU that starts the second stage of every separable
        # conv) is applied once to h, as hoist_shared would have done.
        for template in members[0].chain[:shared]:
            h = builder.apply(template, h)
        members = [_Member(m.chain[shared:], m.weight, m.name, attached=False) for m in members]
        if any(not m.chain for m in members):
            ended = [m for m in members if not m.chain]
            members = [m for m in members if m.chain]
            return [(h, builder.total([m.weight for m in ended]))] + (_float(builder, h, members, depth) if members else [])
    groups: dict[object, list[_Member]] = {}
    terms: list[tuple[fx.Node, fx.Node]] = []
    for member in members:
        view = linear_view(member.chain[0], gm)
        linear = view is not None and (not member.attached or view.reads is h)
        if linear and len(member.chain) > 1 and _structure(member.chain[1], gm) is not None:
            groups.setdefault(_structure(member.chain[1], gm), []).append(member)
        else:
            terms.append(_unchanged(builder, h, member))
    for group in groups.values():
        if len(group) < 2:
            terms.extend(_unchanged(builder, h, m) for m in group)
            continue
        terms.extend(_float_group(builder, h, group, depth))
    return terms


def _float_group(builder: _Builder, h: fx.Node, group: list[_Member], depth: int) -> list[tuple[fx.Node, fx.Node]]:
    gm = builder.gm
    views = [linear_view(m.chain[0], gm) for m in group]
    try:
        module = MergedCandidates([v.candidate for v in views], [v.source for v in views],
                                  names=[m.name for m in group], floated=True)
    except ValueError:  # the linear parts do not embed into one convolution
        return [_unchanged(builder, h, m) for m in group]
    prefix = _shared_prefix([m.chain[1:] for m in group], gm)
    group_weight = builder.total([m.weight for m in group])
    relative = builder.node("call_function", ops.relative_weights, ([m.weight for m in group], group_weight))
    name = unique_module_name(gm, f"floated_conv_{builder.edge.name}")
    gm.add_submodule(name, module)
    z = builder.node("call_module", name, (h, relative), like=group[0].chain[0])
    floated = []
    for k in range(1, prefix + 1):
        templates = [m.chain[k] for m in group]
        if templates[0].op == "call_module":
            _tie([gm.get_submodule(t.target) for t in templates])
            floated.append(str(templates[0].target))
        else:
            floated.append(str(getattr(templates[0].target, "__name__", templates[0].target)))
        z = builder.apply(templates[0], z)
    builder.log.append(
        f"{builder.edge.name}: {' + '.join(m.name for m in group)} -> one conv, floated {', '.join(floated)}"
        + (f" (level {depth + 1})" if depth else "")
    )
    rest = [m.chain[prefix + 1:] for m in group]
    ended = [m for m, r in zip(group, rest) if not r]
    going = [_Member(r, m.weight, m.name, attached=False) for m, r in zip(group, rest) if r]
    terms: list[tuple[fx.Node, fx.Node]] = []
    if ended:
        terms.append((z, builder.total([m.weight for m in ended])))
    if going:
        terms.extend(_float(builder, z, going, depth + 1))
    return terms


def _rewrite_edge(gm: fx.GraphModule, edge: MixedEdge, dependent: set[fx.Node]) -> list[str]:
    node = edge.output
    candidates, weights = list(node.args[0]), list(node.args[1])
    names = list(node.meta.get("fxnas_candidate_modules") or [None] * len(candidates))
    by_input: dict[fx.Node, list[tuple[int, _Member]]] = {}
    for position, candidate in enumerate(edge.candidates):
        if weights[position] is None or candidate.zero:
            continue
        chain = _chain(candidate, dependent)
        if chain is None or len(chain[1]) < 2:
            continue
        h, nodes = chain
        member = _Member(nodes, weights[position], names[position] or nodes[-1].name, attached=True)
        by_input.setdefault(h, []).append((position, member))
    builder = _Builder(gm, edge)
    replaced: set[int] = set()
    extra: list[tuple[fx.Node, fx.Node, str]] = []
    for h, entries in by_input.items():
        if len(entries) < 2:
            continue
        before = len(builder.log)
        terms = _float(builder, h, [m for _, m in entries])
        if len(builder.log) == before:
            continue  # nothing merged for this input: keep the candidates as they are
        replaced.update(p for p, _ in entries)
        label = _short_names([m.name for _, m in entries])
        extra.extend((value, weight, label) for value, weight in terms)
    if not replaced:
        return []
    kept = [i for i in range(len(candidates)) if i not in replaced]
    node.args = ([candidates[i] for i in kept] + [v for v, _, _ in extra],
                 [weights[i] for i in kept] + [w for _, w, _ in extra])
    node.meta["fxnas_candidate_modules"] = [names[i] for i in kept] + [f"floated({label})" for _, _, label in extra]
    # The replaced candidates' own paths are gone from the function (their BatchNorms no
    # longer update their statistics: part of the approximation), so they must not run.
    for entries in by_input.values():
        for position, member in entries:
            if position in replaced:
                for stale in reversed(member.chain):
                    if not stale.users:
                        builder.graph.erase_node(stale)
    return builder.log


def _short_names(names: list[str]) -> str:
    """``a.b.ops.4, a.b.ops.5`` -> ``a.b.ops.4, a.b.ops.5`` as qualified names (kept whole for diff)."""
    return ", ".join(names)


def float_shared(gm: fx.GraphModule) -> PassResult:
    """Floating Module Sharing over every mixed edge (see module docstring)."""
    dependent = input_dependent_nodes(gm.graph)
    log: list[str] = []
    for edge in reversed(find_mixed_edges(gm)):
        if edge.form == "canonical":
            log[:0] = _rewrite_edge(gm, edge, dependent)
    return PassResult(gm, bool(log), {"floated_groups": len(log), "groups": log})
