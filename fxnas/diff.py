"""``fxnas.diff``: what a simplification changed, read from the two graphs.

``diff(original_gm, simplified_gm)`` compares the traced supernet with the
GraphModule that ``fxnas.simplify`` returned and says, for every node of the
original graph that is gone, what happened to it and which node of the
simplified graph computes its value now:

* **pruned**    -- a node of an identically-zero candidate (``x.mul(0.)``),
  removed from its weighted sum, with the weight that scaled it;
* **hoisted**   -- an equivalent node reading the same inputs now computes it
  (six ReLUs of one tensor become one);
* **merged**    -- it runs inside a merged operator (a ``MergedCandidates``
  convolution that also computes other candidates);
* **floated**   -- a module that one shared module of the same kind replaced
  after the merge (topological mode);
* **rewritten** -- the products and additions of a weighted sum, now one
  ``weighted_sum`` node;
* **removed**   -- anything else that is gone (dead code).

Nodes of the simplified graph that the original did not have are **added**.

Everything is derived from the graphs themselves: node names (the passes
keep the names of the nodes they do not replace), node signatures (target,
module hyper-parameters and inputs), the nodes that read a removed node,
the mixed edges found on both sides, and the modules a new runtime module
refers to. The explain report is only used for its per-pass node counts.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
from torch.fx.node import map_aggregate

from .analysis import MixedEdge, describe_node, find_mixed_edges
from .graph_utils import common_prefix, is_pure_stateless_module, literal_key, module_hyperparameters, module_path
from .report import operation_counts
from .tracing import FXNAS_META_KEY, is_fxnas_traced, trace
from .values import propagate_values

__all__ = ["diff", "GraphDiff", "NodeChange", "EdgeChange", "KINDS", "analysed_edges", "candidate_labels",
           "is_runtime_module", "node_label", "runtime_summary"]

#: The kinds of change, in the order they are reported.
KINDS = ("pruned", "hoisted", "merged", "floated", "rewritten", "removed", "added")

_KIND_TEXT = {
    "pruned": "zero candidates removed from their sums",
    "hoisted": "computed once by an equivalent node",
    "merged": "now computed inside a merged operator",
    "floated": "replaced by one shared module after the merge",
    "rewritten": "weighted-sum arithmetic, now weighted_sum nodes",
    "removed": "removed (dead code)",
    "added": "new nodes",
}


# --------------------------------------------------------------------------- data


@dataclass
class NodeChange:
    """What happened to one node of the original graph (or, for ``added``, of the simplified one).

    ``module`` is the qualified name of the original module a ``call_module``
    node called; ``into`` the node of the simplified graph that computes the
    value now (``into_module``: the module it calls). ``edge`` and
    ``candidate`` say which mixed edge and candidate the node belonged to.
    """

    kind: str
    node: str
    operation: str
    module: str | None = None
    into: str | None = None
    into_operation: str | None = None
    into_module: str | None = None
    edge: str | None = None
    candidate: str | None = None


@dataclass
class EdgeChange:
    """One mixed edge before and after: its candidates, which were pruned and which merged."""

    name: str
    candidates_before: list[str]
    candidates_after: list[str]
    pruned: list[str] = field(default_factory=list)
    merged: list[dict[str, Any]] = field(default_factory=list)  # {"into", "operation", "members"}


@dataclass
class GraphDiff:
    """The readable difference between a supernet graph and its simplified form.

    ``str(d)`` is a short summary; ``to_dict()`` / ``to_json()`` hold every change.
    """

    nodes_before: int
    nodes_after: int
    kept: int
    changes: list[NodeChange]
    edges: list[EdgeChange]
    operations_before: dict[str, int]
    operations_after: dict[str, int]
    passes: list[dict[str, Any]] = field(default_factory=list)

    # -- queries --------------------------------------------------------------

    def of_kind(self, kind: str) -> list[NodeChange]:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
        return [c for c in self.changes if c.kind == kind]

    @property
    def pruned(self) -> list[NodeChange]:
        return self.of_kind("pruned")

    @property
    def hoisted(self) -> list[NodeChange]:
        return self.of_kind("hoisted")

    @property
    def merged(self) -> list[NodeChange]:
        return self.of_kind("merged")

    @property
    def floated(self) -> list[NodeChange]:
        return self.of_kind("floated")

    @property
    def rewritten(self) -> list[NodeChange]:
        return self.of_kind("rewritten")

    @property
    def removed(self) -> list[NodeChange]:
        return self.of_kind("removed")

    @property
    def added(self) -> list[NodeChange]:
        return self.of_kind("added")

    def counts(self) -> dict[str, int]:
        """Number of changed nodes per kind (every kind present, zeros included)."""
        counted = Counter(c.kind for c in self.changes)
        return {kind: counted.get(kind, 0) for kind in KINDS}

    def status(self) -> dict[str, str]:
        """node name -> kind, for the original nodes that changed and the added ones."""
        return {c.node: c.kind for c in self.changes}

    @property
    def candidates_before(self) -> int:
        return sum(len(e.candidates_before) for e in self.edges)

    @property
    def candidates_after(self) -> int:
        return sum(len(e.candidates_after) for e in self.edges)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["counts"] = self.counts()
        return data

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **({"indent": 2} | kwargs))

    # -- the summary ------------------------------------------------------------

    def __str__(self) -> str:
        removed = sum(1 for c in self.changes if c.kind != "added")
        lines = [
            f"fxnas.diff: {self.nodes_before} -> {self.nodes_after} nodes "
            f"({self.kept} kept, {removed} gone, {len(self.added)} added)"
        ]
        if self.edges:
            lines[0] += (f"; {len(self.edges)} mixed edges, "
                         f"{self.candidates_before} -> {self.candidates_after} candidates")
        for kind in KINDS:
            changes = self.of_kind(kind)
            if changes:
                lines.append("")
                lines.extend(_summarise_kind(kind, changes, self.edges))
        changed = {k: (self.operations_before.get(k, 0), self.operations_after.get(k, 0))
                   for k in set(self.operations_before) | set(self.operations_after)}
        changed = {k: v for k, v in changed.items() if v[0] != v[1]}
        if changed:
            lines.append("")
            ordered = sorted(changed.items(), key=lambda kv: (kv[1][1] - kv[1][0], kv[0]))
            lines.append("  operations: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in ordered))
        return "\n".join(lines)


def _names(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit})" if len(items) > limit else "")


def _summarise_kind(kind: str, changes: list[NodeChange], edges: list[EdgeChange]) -> list[str]:
    modules = [c for c in changes if c.module is not None]
    by_operation = Counter(c.operation for c in (modules or changes))
    by_kind_of_operation = Counter(c.operation.split("(")[0] for c in changes)
    head = f"  {kind:<10}{len(changes):>5} nodes: {_KIND_TEXT[kind]}"
    lines = [head]
    if kind == "pruned":
        candidates = list(dict.fromkeys(c.candidate or c.node for c in changes))
        lines.append(f"{'':16}{len(candidates)} candidates: {_names(candidates)}")
        return lines
    if kind == "rewritten":
        ops = Counter(c.operation for c in changes)
        into = Counter(c.into_operation.split("(")[0] for c in {c.into: c for c in changes if c.into}.values())
        lines.append(f"{'':16}{', '.join(f'{k} x{v}' for k, v in ops.most_common(4))} -> "
                     + ", ".join(f"{k} x{v}" for k, v in into.most_common(3)))
        return lines
    if kind == "added":
        lines.append(f"{'':16}" + ", ".join(f"{k} x{v}" for k, v in by_kind_of_operation.most_common(6)))
        return lines
    if kind == "merged":
        groups = [g for e in edges for g in e.merged]
        if groups:
            lines[0] += f"; {len(groups)} groups of candidates"
            for group in groups[:4]:
                lines.append(f"{'':16}{group['into']} ({group['operation']}) <- {_names(group['members'], 4)}")
            if len(groups) > 4:
                lines.append(f"{'':16}... and {len(groups) - 4} more groups")
            intos = {g["into"] for g in groups}
            others = Counter((c.operation.split("(")[0], (c.into_operation or "?").split("(")[0])
                             for c in modules if c.into not in intos)
            if others:
                lines.append(f"{'':16}and " + ", ".join(f"{a} x{n} -> {b}" for (a, b), n in others.most_common(4)))
            return lines
    if modules:
        lines[0] += f" ({len(modules)} module calls: " + ", ".join(
            f"{k} x{v}" for k, v in by_operation.most_common(4)) + ")"
        grouped: dict[str, list[str]] = {}
        for change in modules:
            key = f"{change.into_module or change.into or '-'}"
            grouped.setdefault(key, []).append(change.module)
        arrow = {"hoisted": "also computes", "merged": "<-", "floated": "<-"}.get(kind, "")
        for into, names in list(grouped.items())[:4]:
            if kind == "removed":
                lines.append(f"{'':16}{_names(names, 4)}")
                break
            lines.append(f"{'':16}{into}  {arrow}  {_names(names)}")
        if len(grouped) > 4 and kind != "removed":
            lines.append(f"{'':16}... and {len(grouped) - 4} more")
    else:
        lines.append(f"{'':16}" + ", ".join(f"{k} x{v}" for k, v in by_operation.most_common(6)))
    return lines


# ------------------------------------------------------------ shared helpers


def analysed_edges(gm: fx.GraphModule) -> list[MixedEdge]:
    """``find_mixed_edges(gm)``, computing missing node values first; [] when that is impossible."""
    if is_fxnas_traced(gm) and any("fxnas_value" not in n.meta for n in gm.graph.nodes):
        try:
            propagate_values(gm, gm.meta[FXNAS_META_KEY]["example_inputs"], only_missing=True)
        except Exception:  # noqa: BLE001 - a drawing or diff without edges beats none at all
            return []
    try:
        return find_mixed_edges(gm)
    except Exception:  # noqa: BLE001
        return []


def is_runtime_module(module: Any) -> bool:
    """Whether ``module`` is one of fxnas's own runtime modules (a merged convolution...)."""
    if not isinstance(module, torch.nn.Module):
        return False
    name = type(module).__module__
    return name.startswith("fxnas.") and not name.startswith("fxnas.spaces")


def candidate_labels(edge: MixedEdge) -> list[str]:
    """A distinct qualified name for every candidate of ``edge`` where one can be found.

    The analysis names a candidate after its module; where several candidates
    get the same name (a DARTS MixedOp whose ``sum`` the tracer records in
    the MixedOp itself), the name is recomputed from the module stacks of the
    candidate's own nodes: the first module below what all candidates share.
    """
    names = [c.name for c in edge.candidates]
    duplicated = {n for n, k in Counter(names).items() if k > 1}
    if not duplicated:
        return names
    stacks = []
    for candidate in edge.candidates:
        nodes = candidate.path or candidate.chain
        paths = [module_path(n) for n in nodes if module_path(n)]
        stacks.append(common_prefix(paths) if paths else [])
    common = common_prefix([s for s in stacks if s])
    labels = []
    for name, stack, candidate in zip(names, stacks, edge.candidates):
        if name in duplicated and len(stack) > len(common):
            labels.append(stack[len(common)])
        elif name in duplicated and candidate.zero:
            labels.append(f"{name} (zero)")
        else:
            labels.append(name)
    return labels


_NAME_TOKEN = re.compile(r"[^\s,()\[\]]+")


def _tokens(text: str) -> list[str]:
    return _NAME_TOKEN.findall(text or "")


# ---------------------------------------------------------------- signatures


def _operation(node: fx.Node, gm: fx.GraphModule) -> str:
    return node_label(node, gm)


def node_label(node: fx.Node, gm: fx.GraphModule) -> str:
    """``describe_node``, plus a short summary for fxnas's runtime modules.

    ``MergedCandidates(2 -> conv2d 3x3, groups 16)``: how many candidates a
    merged operator computes and its merged geometry (from ``extra_repr``).
    """
    try:
        label = describe_node(node, gm)
    except AttributeError:  # a module deleted from the simplified graph
        return str(node.target)
    if node.op == "call_module":
        module = _module(gm, node.target)
        if is_runtime_module(module) and not callable(getattr(module, "describe", None)):
            summary = runtime_summary(module)  # modules that describe themselves already say it
            if summary:
                label = f"{label}({summary})" if "(" not in label else f"{label} {summary}"
    return label


_NOISE = re.compile(r"\s*(pad [0-9x]+|stride 1(x1)*|groups 1\b|stride)\s*")


def runtime_summary(module: torch.nn.Module, limit: int = 48) -> str:
    """A compact form of a runtime module's ``extra_repr`` (merged geometry, candidate count)."""
    try:
        text = module.extra_repr().splitlines()[0] if module.extra_repr() else ""
    except Exception:  # noqa: BLE001 - a label is not worth an exception
        return ""
    count = ""
    listed = re.search(r"candidates=\[([^\]]*)\]", text)
    if listed:
        count = f"{len([p for p in listed.group(1).split(',') if p.strip()])} -> "
    merged = re.search(r"merged=([^,=]+?)(?:,\s*\w+=|$)", text)
    if merged:
        text = merged.group(1)
    text = re.sub(r"\s+", " ", _NOISE.sub(" ", text)).strip()
    if len(text) > 30:  # nested module reprs: keep their type names only
        text = re.sub(r"\(([^()]*)\)", "", text)
    text = re.sub(r" groups (\d+)", r", groups \1", text)
    text = count + text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _module(gm: fx.GraphModule, target: str) -> torch.nn.Module | None:
    try:
        return gm.get_submodule(target)
    except AttributeError:
        return None


def _argument_key(value: Any, resolve: Callable[[fx.Node], Any]) -> Any:
    if isinstance(value, fx.Node):
        resolved = resolve(value)
        return None if resolved is None else ("node", resolved)
    if isinstance(value, (tuple, list)):
        keys = tuple(_argument_key(v, resolve) for v in value)
        return None if any(k is None for k in keys) else (type(value), keys)
    if isinstance(value, dict):
        keys = tuple((k, _argument_key(v, resolve)) for k, v in sorted(value.items()))
        return None if any(k[1] is None for k in keys) else (dict, keys)
    return literal_key(value)


def _signature(node: fx.Node, gm: fx.GraphModule, resolve: Callable[[fx.Node], Any]) -> Any:
    """A key equal for nodes that compute the same value (inputs resolved by ``resolve``)."""
    if node.op == "call_module":
        module = _module(gm, node.target)
        if module is None:
            return None
        identity = (("module", module_hyperparameters(module)) if is_pure_stateless_module(module)
                    else ("same-module", node.target))
    elif node.op in ("call_function", "call_method", "get_attr"):
        identity = (node.op, node.target)
    else:
        return None
    args, kwargs = _argument_key(node.args, resolve), _argument_key(node.kwargs, resolve)
    if args is None or kwargs is None:
        return None
    key = (identity, args, kwargs, node.meta.get("grad_enabled", True))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _flat_arguments(node: fx.Node) -> list[Any]:
    """The leaves of a node's arguments (nodes and constants), in order."""
    flat: list[Any] = []
    map_aggregate((node.args, node.kwargs), flat.append)
    return flat


def _referenced_objects(module: torch.nn.Module, depth: int = 8) -> set[int]:
    """ids of the modules and tensors a runtime module computes with, registered or not.

    A runtime module may register the modules it reads (a child) or only
    refer to them through a plain attribute (``ModuleReferences``), so that
    the state dict keeps the user's names: both count.
    """
    seen: set[int] = set()

    def visit(value: Any, level: int) -> None:
        if id(value) in seen or level > depth or isinstance(value, (str, bytes, int, float, type)):
            return
        if isinstance(value, torch.Tensor):
            seen.add(id(value))
        elif isinstance(value, torch.nn.Module):
            seen.update(id(m) for m in value.modules())
            seen.update(id(t) for t in list(value.parameters()) + list(value.buffers()))
            for attribute in vars(value).values():
                if not isinstance(attribute, dict):  # the registered containers are covered above
                    visit(attribute, level + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item, level + 1)
        elif hasattr(value, "__dict__"):
            for attribute in vars(value).values():
                visit(attribute, level + 1)

    visit(module, 0)
    seen.discard(id(module))
    return seen


# ------------------------------------------------------------------- the diff


def _as_graph_module(original: torch.nn.Module, simplified: fx.GraphModule) -> fx.GraphModule:
    if isinstance(original, fx.GraphModule):
        return original
    if isinstance(original, torch.nn.Module) and is_fxnas_traced(simplified):
        # Trace the user's model with the shapes the simplified module was traced with.
        from .values import TensorMetadata

        examples = []
        for value in simplified.meta[FXNAS_META_KEY]["example_inputs"]:
            if isinstance(value, TensorMetadata):
                examples.append(torch.zeros(tuple(value.shape), dtype=value.dtype))
            else:
                examples.append(value)
        return trace(original, tuple(examples))
    raise TypeError("fxnas.diff(original, simplified): original must be the GraphModule from fxnas.trace "
                    f"(or the nn.Module that was simplified), got {type(original).__name__}")


def _stored_report(simplified: fx.GraphModule):
    if is_fxnas_traced(simplified):
        return simplified.meta[FXNAS_META_KEY].get("report")
    return None


def diff(original: torch.nn.Module, simplified: fx.GraphModule, report: Any = None) -> GraphDiff:
    """What changed between ``original`` (the traced supernet) and ``simplified``.

    Args:
        original: the GraphModule from :func:`fxnas.trace` that was simplified
            (or the user's nn.Module, then traced again with the same shapes).
        simplified: the GraphModule :func:`fxnas.simplify` returned.
        report: an explain report; by default the one stored in ``simplified``.
            Only its per-pass node counts are used.

    Returns:
        A :class:`GraphDiff`: ``print`` it for a summary, ``.changes`` lists
        every removed node with the qualified name of its module and the
        node that computes its value now, ``.edges`` the candidates of every
        mixed edge before and after.
    """
    if not isinstance(simplified, fx.GraphModule):
        raise TypeError(f"fxnas.diff: simplified must be a GraphModule, got {type(simplified).__name__}")
    original = _as_graph_module(original, simplified)
    report = report if report is not None else _stored_report(simplified)
    return _Differ(original, simplified, report).run()


class _Differ:
    def __init__(self, original: fx.GraphModule, simplified: fx.GraphModule, report: Any) -> None:
        self.gm0, self.gm1, self.report = original, simplified, report
        self.nodes0 = list(original.graph.nodes)
        self.nodes1 = list(simplified.graph.nodes)
        self.by_name1 = {n.name: n for n in self.nodes1}
        self.edges0 = analysed_edges(original)
        self.edges1 = {e.name: e for e in analysed_edges(simplified)}
        self.mapping: dict[fx.Node, fx.Node] = {}  # original node -> node computing it now
        self.changes: dict[fx.Node, NodeChange] = {}

    # -- helpers ---------------------------------------------------------------

    def _same(self, a: fx.Node, b: fx.Node) -> bool:
        return a.op == b.op and (a.target == b.target or (a.op == "placeholder"))

    def _change(self, node: fx.Node, kind: str, into: fx.Node | None = None, **extra: Any) -> None:
        module = str(node.target) if node.op == "call_module" else None
        change = NodeChange(kind=kind, node=node.name, operation=_operation(node, self.gm0), module=module, **extra)
        if into is not None:
            change.into = into.name
            change.into_operation = _operation(into, self.gm1)
            change.into_module = str(into.target) if into.op == "call_module" else None
        self.changes[node] = change

    def _resolve0(self, node: fx.Node) -> Any:
        mapped = self.mapping.get(node)
        return mapped.name if mapped is not None else None

    # -- steps -----------------------------------------------------------------

    def run(self) -> GraphDiff:
        kept = self._match_names()
        self.kept_after = {self.mapping[n] for n in kept}
        membership = self._edge_membership()
        self._map_sum_roots(kept)
        signatures = {}
        for node in self.nodes1:
            key = _signature(node, self.gm1, lambda n: n.name)
            if key is not None:
                signatures.setdefault(key, node)
        references = self._runtime_references()
        for node in self.nodes0:
            if node in kept:
                continue
            edge, candidate, role = membership.get(node, (None, None, None))
            info = {"edge": edge.name if edge else None, "candidate": candidate}
            if role == "zero":
                self._change(node, "pruned", **info)
                continue
            key = _signature(node, self.gm0, self._resolve0)
            keeper = signatures.get(key) if key is not None else None
            if keeper is not None:
                self.mapping[node] = keeper
                self._change(node, "hoisted", keeper, **info)
                continue
            if role == "sum":
                into = self.mapping.get(node) or self._replacement_via_users(node, kept)
                if into is None and edge is not None and edge.name in self.edges1:
                    into = self.edges1[edge.name].output
                self._change(node, "rewritten", into, **info)
                continue
            into = self._merged_into(node, references)
            if into is None and role == "path":
                into = self._merged_by_edge(edge, candidate)
            if into is not None:
                self.mapping.setdefault(node, into)
                self._change(node, "merged", into, **info)
                continue
            floated = self._floated_into(node, edge)
            if floated is not None:
                self._change(node, "floated", floated, **info)
                continue
            replacement = self._replacement_via_users(node, kept)
            if replacement is not None:
                self.mapping[node] = replacement
            self._change(node, "removed", replacement, **info)
        matched = {self.mapping[n] for n in kept}
        added = [n for n in self.nodes1 if n not in matched and n.op not in ("placeholder", "output")]
        changes = list(self.changes.values())
        for node in added:
            module = str(node.target) if node.op == "call_module" else None
            changes.append(NodeChange(kind="added", node=node.name, operation=_operation(node, self.gm1),
                                      into_module=module))
        return GraphDiff(
            nodes_before=len(self.nodes0),
            nodes_after=len(self.nodes1),
            kept=len(kept),
            changes=changes,
            edges=self._edge_changes(),
            operations_before=operation_counts(self.gm0),
            operations_after=_safe_operation_counts(self.gm1),
            passes=self._passes(),
        )

    def _match_names(self) -> set[fx.Node]:
        kept = set()
        for node in self.nodes0:
            other = self.by_name1.get(node.name)
            if other is not None and self._same(node, other):
                kept.add(node)
                self.mapping[node] = other
        return kept

    def _edge_membership(self) -> dict[fx.Node, tuple[MixedEdge, str | None, str]]:
        """original node -> (edge, candidate name, role): zero / path / sum."""
        membership: dict[fx.Node, tuple[MixedEdge, str | None, str]] = {}
        for edge in self.edges0:
            labels = candidate_labels(edge)
            for candidate, label in zip(edge.candidates, labels):
                role = "zero" if candidate.zero else "path"
                for node in candidate.path:
                    membership.setdefault(node, (edge, label, role))
                if candidate.zero:
                    weight = candidate.weight.node
                    if weight is not None and all(u in edge.weighted_sum.internal or u is edge.output
                                                  for u in weight.users):
                        membership.setdefault(weight, (edge, label, "zero"))
            for node in list(edge.weighted_sum.internal) + [edge.output]:
                membership[node] = (edge, None, "sum")
        return membership

    def _map_sum_roots(self, kept: set[fx.Node]) -> None:
        for edge in self.edges0:
            root = edge.output
            if root in kept or root in self.mapping:
                continue
            into = self._replacement_via_users(root, kept)
            if into is None and edge.name in self.edges1 and len(
                    [e for e in self.edges0 if e.output is root]) == 1:
                into = self.edges1[edge.name].output
            if into is not None:
                self.mapping[root] = into

    def _replacement_via_users(self, node: fx.Node, kept: set[fx.Node]) -> fx.Node | None:
        """The node a kept user of ``node`` reads in its place (same argument position)."""
        for user in node.users:
            if user not in kept:
                continue
            before, after = _flat_arguments(user), _flat_arguments(self.mapping[user])
            if len(before) != len(after):
                continue
            for old, new in zip(before, after):
                if old is node and isinstance(new, fx.Node):
                    return new
        return None

    def _runtime_references(self) -> list[tuple[fx.Node, set[int]]]:
        """New call_module nodes of fxnas runtime modules and what they refer to."""
        found = []
        for node in self.nodes1:
            if node.op != "call_module":
                continue
            module = _module(self.gm1, node.target)
            if module is None or not is_runtime_module(module):
                continue
            refs = _referenced_objects(module)
            for arg in node.all_input_nodes:
                if arg.op == "get_attr":
                    try:
                        refs.add(id(self.gm1.get_parameter(arg.target)))
                    except AttributeError:
                        pass
            found.append((node, refs))
        return found

    def _merged_into(self, node: fx.Node, references: list[tuple[fx.Node, set[int]]]) -> fx.Node | None:
        if node.op != "call_module":
            return None
        module = _module(self.gm0, node.target)
        if module is None:
            return None
        own = {id(module)} | {id(p) for p in module.parameters()}
        for into, refs in references:
            if own & refs:
                return into
        return None

    def _merged_by_edge(self, edge: MixedEdge | None, candidate: str | None) -> fx.Node | None:
        """The new node that computes ``candidate`` of ``edge`` in the simplified graph, if merged."""
        if edge is None or candidate is None or edge.name not in self.edges1:
            return None
        after = self.edges1[edge.name]
        for other, label in zip(after.candidates, candidate_labels(after)):
            if label != candidate and candidate in _tokens(label) and other.output is not None:
                return other.output
        return None

    def _floated_into(self, node: fx.Node, edge: MixedEdge | None) -> fx.Node | None:
        """A node of the simplified edge calling a module of the same kind in a new place."""
        if node.op != "call_module" or edge is None or edge.name not in self.edges1:
            return None
        module = _module(self.gm0, node.target)
        if module is None:
            return None
        key = module_hyperparameters(module)
        after = self.edges1[edge.name]
        region = list(after.shared) + [n for c in after.candidates for n in c.chain]
        for other in region:
            if other.op != "call_module" or other.name == node.name:
                continue
            other_module = _module(self.gm1, other.target)
            if other_module is not None and module_hyperparameters(other_module) == key:
                if other in self.kept_after:
                    continue  # a kept node computes its own value, not this one
                return other
        return None

    def _edge_changes(self) -> list[EdgeChange]:
        changes = []
        for edge in self.edges0:
            before = candidate_labels(edge)
            after_edge = self.edges1.get(edge.name)
            after = candidate_labels(after_edge) if after_edge is not None else []
            change = EdgeChange(edge.name, before, after)
            change.pruned = [label for label, c in zip(before, edge.candidates) if c.zero and label not in after]
            if after_edge is not None:
                for label, candidate in zip(after, after_edge.candidates):
                    members = [b for b in before if b != label and b in _tokens(label)]
                    if label not in before and members and candidate.output is not None:
                        change.merged.append({"into": candidate.output.name,
                                              "operation": _operation(candidate.output, self.gm1),
                                              "members": members})
            changes.append(change)
        return changes

    def _passes(self) -> list[dict[str, Any]]:
        records = getattr(self.report, "passes", None) or []
        return [{"name": r.name, "modified": r.modified, "nodes_before": r.nodes_before,
                 "nodes_after": r.nodes_after} for r in records]


def _safe_operation_counts(gm: fx.GraphModule) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = _module(gm, node.target)
            counts[type(module).__name__ if module is not None else str(node.target)] += 1
        elif node.op == "call_function":
            counts[getattr(node.target, "__name__", str(node.target))] += 1
        elif node.op == "call_method":
            counts["." + str(node.target)] += 1
    return dict(counts)
