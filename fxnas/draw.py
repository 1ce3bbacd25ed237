"""``fxnas.draw``: a mixed edge's hierarchical topology, or a cell before and after, as an image.

Two drawings:

* **an edge** (the default): the tree of :meth:`MixedEdge.topology` -- the
  edge input at the top, the modules several candidates share below it
  (hoisted ReLUs and pools), each candidate's own path, and the candidates
  as leaves on the bottom row with their architecture weights
  (``softmax(alphas_normal)[3][4]``). Merged operators (fxnas runtime
  modules such as ``MergedCandidates``) are drawn in their own colour, and
  any other node kind a pass adds to the topology gets a colour and a
  legend entry of its own. With ``before=`` the same edge of the original
  graph is drawn on the left.
* **a cell** (``cell="cells.0"``): every data node traced inside that
  module, laid out in layers; with ``before=original_gm`` the original cell
  on the left and the simplified one on the right, the nodes that went away
  outlined by what happened to them (pruned, hoisted, merged, ...; see
  :func:`fxnas.diff`) and the new ones outlined in green.

Labels are module types and geometry (``Conv2d(3x3, dil 2, dw)``), never fx
node ids. The layout is a layered one written here (no graphviz needed):
layers from the longest path to each node, candidate leaves aligned at the
bottom, each subtree over its own leaves, and figure width growing with the
number of leaves, so an 8-candidate DARTS edge stays legible. The format
follows the file suffix (``.png``, ``.svg``, ``.pdf``); SVG text stays text.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import networkx as nx
import torch
import torch.fx as fx

from .analysis import MixedEdge, WeightRef
from .diff import analysed_edges, candidate_labels, diff, is_runtime_module, node_label
from .graph_utils import common_prefix, input_dependent_nodes, module_path

__all__ = ["draw", "edge_graph", "cell_graph", "layered_layout"]

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}

# Fill colours: node roles in an edge, operation kinds in a cell.
_FILL = {
    "input": "#455a64",
    "from outside": "#455a64",
    "shared": "#ffcc80",
    "path": "#bbdefb",
    "candidate": "#c8e6c9",
    "zero": "#eeeeee",
    "merged": "#b39ddb",
    "conv": "#90caf9",
    "norm": "#e3f2fd",
    "activation": "#fff59d",
    "pool": "#c5e1a5",
    "mixed sum": "#81c784",
    "arithmetic": "#f5f5f5",
    "other": "#eceff1",
}
_EXTRA_FILLS = ["#f8bbd0", "#80deea", "#ffe082", "#bcaaa4", "#b0bec5", "#e6ee9c"]
_FILL_LEGEND = {
    "input": "edge input",
    "from outside": "input from outside the module",
    "shared": "shared: computed once for several candidates",
    "path": "candidate's own operations",
    "candidate": "candidate (architecture weight)",
    "zero": "zero candidate",
    "merged": "merged operator (fxnas runtime module)",
    "conv": "convolution / linear",
    "norm": "normalisation",
    "activation": "activation",
    "pool": "pooling",
    "mixed sum": "weighted sum of a mixed edge",
    "arithmetic": "arithmetic / indexing",
    "other": "other",
}
# Outlines: what happened to a node (the kinds of fxnas.diff).
_STATUS = {
    "pruned": dict(edgecolor="#c62828", linestyle="--", linewidth=1.4, alpha=0.5),
    "hoisted": dict(edgecolor="#ef6c00", linestyle="--", linewidth=1.4, alpha=0.5),
    "merged": dict(edgecolor="#5e35b1", linestyle="--", linewidth=1.4, alpha=0.5),
    "floated": dict(edgecolor="#ad1457", linestyle="--", linewidth=1.4, alpha=0.5),
    "rewritten": dict(edgecolor="#616161", linestyle=":", linewidth=1.2, alpha=0.5),
    "removed": dict(edgecolor="#9e9e9e", linestyle=":", linewidth=1.2, alpha=0.4),
    "added": dict(edgecolor="#2e7d32", linestyle="-", linewidth=2.2, alpha=1.0),
    "keeper": dict(edgecolor="#ef6c00", linestyle="-", linewidth=2.0, alpha=1.0),
}
_STATUS_LEGEND = {
    "pruned": "gone: pruned (zero)",
    "hoisted": "gone: hoisted (an equivalent node computes it)",
    "merged": "gone: merged into one operator",
    "floated": "gone: floated (one shared module)",
    "rewritten": "gone: weighted-sum arithmetic",
    "removed": "gone: dead code",
    "added": "new node",
    "keeper": "also computes hoisted copies",
}
_PLAIN = dict(edgecolor="#37474f", linestyle="-", linewidth=0.8, alpha=1.0)

_ACTIVATIONS = ("relu", "gelu", "silu", "sigmoid", "tanh", "elu", "mish", "swish", "hardswish", "softplus",
                "leaky")
_ARITHMETIC = {"add", "mul", "sub", "truediv", "div", "cat", "stack", "sum", "getitem", "getattr", "mean",
               "view", "reshape", "flatten", "chunk", "split", "contiguous", "neg", "zeros_like", "iadd"}


# --------------------------------------------------------------------- helpers


def _short(text: str, prefix: str) -> str:
    """Qualified names in ``text`` that start with ``prefix.`` written relative to the prefix's last atom."""
    if not prefix:
        return text
    head, _, last = prefix.rpartition(".")
    keep = last + "." if head else prefix + "."
    return re.sub(r"(?<![\w.])" + re.escape(prefix + "."), keep, text)


def _common_dotted_prefix(names: Iterable[str]) -> str:
    parts = [n.split(".") for n in names if n]
    if len(parts) < 2:
        return parts[0][0] if parts and len(parts[0]) > 1 else ""
    return ".".join(common_prefix(parts))


def _value_text(value: Any) -> str:
    if isinstance(value, slice):
        parts = ["" if v is None else str(v) for v in (value.start, value.stop)]
        return ":".join(parts) + (f":{value.step}" if value.step is not None else "")
    if isinstance(value, tuple):
        return ", ".join(_value_text(v) for v in value)
    if value is None:
        return "None"
    if value is Ellipsis:
        return "..."
    return str(value)


def weight_expression(node: fx.Node | None, depth: int = 0) -> str:
    """A readable expression for an architecture weight node: ``softmax(alphas_normal)[3][4]``."""
    if node is None:
        return "?"
    if depth > 8:
        return node.name
    if node.op == "get_attr":
        return str(node.target)
    if node.op == "placeholder":
        return node.name
    name = getattr(node.target, "__name__", str(node.target))
    if node.op == "call_function" and name == "getitem" and isinstance(node.args[0], fx.Node):
        return f"{weight_expression(node.args[0], depth + 1)}[{_value_text(node.args[1])}]"
    if _is_weight_add(node):  # a group's total weight W_G = w_a + w_b + ...
        terms, work = [], [node]
        while work and len(terms) < 32:
            current = work.pop(0)
            if _is_weight_add(current) and current is not node and len(current.users) > 1:
                terms.append(current)
            elif _is_weight_add(current):
                work[:0] = [a for a in current.args if isinstance(a, fx.Node)]
            else:
                terms.append(current)
        return _joined_indices([weight_expression(t, depth + 1) for t in terms], "Σ ", " + ")
    inputs = [a for a in node.args if isinstance(a, fx.Node)]
    if node.op in ("call_function", "call_method", "call_module") and len(inputs) == 1:
        if node.op == "call_module":
            name = str(node.target)
        return f"{name}({weight_expression(inputs[0], depth + 1)})"
    return node.name


def _is_weight_add(node: fx.Node) -> bool:
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
    return node.op in ("call_function", "call_method") and name in ("add", "__add__", "iadd") and all(
        isinstance(a, fx.Node) for a in node.args) and len(node.args) == 2


def _joined_indices(expressions: list[str], prefix: str = "", separator: str = ", ") -> str:
    """``a[0][1], a[0][4]`` -> ``a[0][1,4]`` (with ``prefix``); otherwise the expressions joined."""
    if len(expressions) > 1 and all(e.endswith("]") and "[" in e for e in expressions):
        bases = {e.rsplit("[", 1)[0] for e in expressions}
        if len(bases) == 1:
            return prefix + f"{bases.pop()}[{','.join(e.rsplit('[', 1)[1][:-1] for e in expressions)}]"
    return separator.join(expressions)


def _weight_text(ref: WeightRef, inside: Sequence[fx.Node] = ()) -> str:
    """The weight of a candidate; for one whose weight a runtime module applies, the weights it reads."""
    if ref.node is not None:
        return weight_expression(ref.node)
    if ref.vector is not None:
        return f"{weight_expression(ref.vector)}[{ref.index}]"
    expressions = [weight_expression(n) for n in inside]
    if not expressions:
        return "applied inside"
    return _joined_indices(expressions) + "\n(applied inside)"


def _applied_weights(candidate: Any, gm: fx.GraphModule, dependent: set[fx.Node]) -> list[fx.Node]:
    """Architecture-weight nodes read by the runtime modules that compute ``candidate``."""
    found: list[fx.Node] = []
    nodes = list(candidate.path) + ([candidate.output] if candidate.output is not None else [])
    for node in nodes:
        if node.op == "call_module" and is_runtime_module(_module(gm, node.target)):
            for arg in node.all_input_nodes:
                if arg not in dependent and arg not in found:
                    found.append(arg)
    return found


def _wrap(text: str, width: int) -> str:
    """Wrap each line of ``text`` at ``width`` characters, preferring ``, ``, ``(`` and dots as breaks."""
    lines = []
    for line in text.split("\n"):
        if len(line) <= width:
            lines.append(line)
            continue
        pieces = re.split(r"(?<=, )|(?<=\()(?=.{6})|(?<=\))(?=\[)|(?<=[^\d\s]\.)(?=\D)|(?<=\d\.)(?=[a-zA-Z_])", line)
        current = ""
        for piece in pieces:
            if current and len(current) + len(piece.rstrip()) > width:
                lines.append(current.rstrip())
                current = ""
            current += piece
        if current:
            lines.extend(textwrap.wrap(current, width, break_long_words=True, break_on_hyphens=False) or [""])
    return "\n".join(lines)


def _module(gm: torch.nn.Module, target: str) -> torch.nn.Module | None:
    try:
        return gm.get_submodule(target)
    except AttributeError:
        return None


def _module_types(*gms: torch.nn.Module) -> dict[str, str]:
    """Qualified module name -> class name, from the module stacks recorded while tracing.

    A traced GraphModule keeps the modules it calls; the containers above them
    (a candidate op, a cell) become plain ``nn.Module``s, so their class names
    are only known from the trace's ``nn_module_stack``.
    """
    types: dict[str, str] = {}
    for gm in gms:
        if not isinstance(gm, fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            for entry in (node.meta.get("nn_module_stack") or {}).values():
                try:
                    name, kind = entry
                except (TypeError, ValueError):
                    continue
                types.setdefault(str(name), getattr(kind, "__name__", str(kind).rsplit(".", 1)[-1]))
    return types


def _type_text(module: torch.nn.Module) -> str:
    name = type(module).__name__
    if isinstance(module, (torch.nn.Sequential, torch.nn.ModuleList)) and len(module) > 0:
        return "+".join(type(m).__name__ for m in module)
    return name


def _operation_category(node: fx.Node, gm: torch.nn.Module) -> str:
    if node.op == "call_module":
        module = _module(gm, node.target)
        if module is None:
            return "other"
        if is_runtime_module(module):
            return "merged"
        name = type(module).__name__.lower()
        if "conv" in name or "linear" in name:
            return "conv"
        if "norm" in name:
            return "norm"
        if "pool" in name:
            return "pool"
        if any(a in name for a in _ACTIVATIONS):
            return "activation"
        return "other"
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
    name = name.strip("_").lower()
    if name == "weighted_sum":
        return "mixed sum"
    if "conv" in name or name == "linear":
        return "conv"
    if any(a in name for a in _ACTIVATIONS):
        return "activation"
    if "pool" in name:
        return "pool"
    if "norm" in name:
        return "norm"
    if name in _ARITHMETIC:
        return "arithmetic"
    return "other"


def _label(node: fx.Node, gm: torch.nn.Module) -> str:
    label = node_label(node, gm)
    name = getattr(node.target, "__name__", "")
    if node.op == "call_function" and name == "weighted_sum" and isinstance(node.args[0], (list, tuple)):
        label = f"weighted_sum of {len(node.args[0])}"
    elif node.op == "call_function" and name == "getitem" and len(node.args) == 2:
        index = _value_text(node.args[1])
        if len(index) <= 24:
            label = f"getitem [{index}]"
    return label


# ------------------------------------------------------------------ the graphs


def _select_edge(edges: Sequence[MixedEdge], edge: int | str | None, where: str) -> MixedEdge:
    if not edges:
        raise ValueError(f"fxnas.draw: no mixed edges found in {where}")
    names = [e.name for e in edges]
    if edge is None:
        return edges[0]
    if isinstance(edge, int):
        if -len(edges) <= edge < len(edges):
            return edges[edge]
        raise ValueError(f"fxnas.draw: edge index {edge} out of range; {where} has {len(edges)} mixed edges")
    if edge in names:
        return edges[names.index(edge)]
    close = [n for n in names if edge in n][:5] or names[:5]
    more = ", ..." if len(names) > len(close) else ""
    raise ValueError(f"fxnas.draw: no mixed edge named {edge!r} in {where} ({len(names)} edges), "
                     f"e.g. {', '.join(close)}{more}")


def _qualified_tokens(names: Iterable[str]) -> list[str]:
    """The qualified module names inside candidate names such as ``merged(a.b.1, a.b.4)``."""
    tokens = [t for name in names for t in re.findall(r"[^\s,()]+", name or "")]
    dotted = [t for t in tokens if "." in t]
    return dotted or tokens


def _candidate_text(index: int, candidate_name: str, type_text: str, weight: str, prefix: str) -> str:
    name = _short(candidate_name, prefix)
    head = f"[{index}] {type_text}" if type_text else f"[{index}]"
    return f"{head}\n{name}\nw = {_short(weight, prefix)}"


def _candidate_type(candidate: Any, name: str, gm: fx.GraphModule, types: dict[str, str]) -> str:
    """What a candidate is: its module's class (``ReLUConvBN``), ``identity``, ``zero``, or a runtime module."""
    if name in types:
        kind = types[name]
        if kind in ("Sequential", "ModuleList"):  # say what is in it
            depth = name.count(".") + 1
            children = [t for q, t in types.items() if q.startswith(name + ".") and q.count(".") == depth]
            return "+".join(children) or kind
        return kind
    module = _module(gm, name) if name else None
    if module is not None and type(module) is not torch.nn.Module:  # not a container rebuilt by fx
        return _type_text(module)
    if candidate.zero:
        return "zero"
    if not candidate.chain:
        return "identity"
    output = candidate.output
    if output is not None and output.op == "call_module" and is_runtime_module(_module(gm, output.target)):
        return type(_module(gm, output.target)).__name__
    return ""


def edge_graph(gm: fx.GraphModule, edge: MixedEdge | int | str | None = None,
               status: dict[str, str] | None = None) -> nx.DiGraph:
    """The topology of a mixed edge of ``gm`` with display attributes (``text``, ``category``, ``status``).

    Built from :meth:`MixedEdge.topology`: each node keeps its ``kind``; its
    text is the node's label (module type and geometry), candidates get their
    index, module and architecture weight.
    """
    if not isinstance(edge, MixedEdge):
        edge = _select_edge(analysed_edges(gm), edge, "this graph")
    status = status or {}
    topology = edge.topology(gm)
    labels = candidate_labels(edge)
    prefix = _common_dotted_prefix(_qualified_tokens(labels))
    by_name = {n.name: n for n in gm.graph.nodes}
    types = _module_types(gm)
    dependent = input_dependent_nodes(gm.graph)
    candidates = {c.index: c for c in edge.candidates}
    graph = nx.DiGraph(name=edge.name)
    for name, attrs in topology.nodes(data=True):
        kind = attrs.get("kind", "path")
        if kind == "candidate":
            m = int(str(name).split(":", 1)[1])
            candidate = candidates[m]
            label = labels[edge.candidates.index(candidate)]
            type_text = _candidate_type(candidate, label, gm, types)
            graph.add_node(name, kind=kind, index=m, category="zero" if attrs.get("zero") else "candidate", wrap=28,
                           text=_candidate_text(m, label, type_text, _weight_text(
                               candidate.weight, _applied_weights(candidate, gm, dependent)), prefix),
                           status=status.get(candidate.output.name) if candidate.output is not None else None)
            continue
        node = by_name.get(name)
        label = _label(node, gm) if node is not None else str(attrs.get("label", name))
        category = kind
        if node is not None and node.op == "call_module" and is_runtime_module(_module(gm, node.target)):
            category = "merged"
        wrap = None
        if kind == "input":
            text = f"edge input\n{label}"
            if node is not None and node.op == "call_module":
                text += f"\n{_short(str(node.target), prefix)}"
                wrap = 30
        else:
            text = label
        graph.add_node(name, kind=kind, category=category, text=text, status=status.get(name), wrap=wrap)
    graph.add_edges_from(topology.edges)
    graph.graph["title"] = f"mixed edge {edge.name}"
    graph.graph["subtitle"] = f"{len(edge.candidates)} candidates"
    return graph


def _report_edge_graph(info: Any, status_kind: str | None = None) -> nx.DiGraph:
    """An edge of an explain report (plain values) as a trie of its candidates' operations."""
    shared = set()
    for entry in info.shared:
        match = re.match(r"^(.*) \(([^()]*)\)$", entry)
        shared.add(match.group(1) if match else entry)
    prefix = _common_dotted_prefix(_qualified_tokens(c.name for c in info.candidates))
    graph = nx.DiGraph(name=info.name)
    root = "input"
    graph.add_node(root, kind="input", category="input", text=f"edge input\n{info.input}", status=None)
    trie: dict[tuple[str, str], str] = {}
    for candidate in info.candidates:
        parent = root
        for i, operation in enumerate(candidate.operations):
            key = (parent, operation)
            if operation in shared and key in trie:
                parent = trie[key]
                continue
            node = f"c{candidate.index}.{i}"
            kind = "shared" if operation in shared else "path"
            category = "merged" if operation.startswith(("Merged", "Folded")) else kind
            graph.add_node(node, kind=kind, category=category, text=operation, status=None)
            graph.add_edge(parent, node)
            if operation in shared:
                trie[key] = node
            parent = node
        leaf = f"candidate:{candidate.index}"
        type_text = "zero" if candidate.zero else ("identity" if not candidate.operations else "")
        graph.add_node(leaf, kind="candidate", index=candidate.index, wrap=28,
                       category="zero" if candidate.zero else "candidate",
                       text=_candidate_text(candidate.index, candidate.name, type_text, candidate.weight, prefix),
                       status=status_kind if candidate.zero else None)
        graph.add_edge(parent, leaf)
    graph.graph["title"] = f"mixed edge {info.name}"
    graph.graph["subtitle"] = f"{len(info.candidates)} candidates"
    return graph


def _under(node: fx.Node, prefix: str) -> bool:
    if not prefix:
        return True
    inside = lambda name: name == prefix or name.startswith(prefix + ".")  # noqa: E731
    if node.op == "call_module" and inside(str(node.target)):
        return True
    return any(inside(p) for p in module_path(node))


def _cell_prefixes(gm: fx.GraphModule) -> list[str]:
    found: list[str] = []
    for edge in analysed_edges(gm):
        stack = module_path(edge.output)
        if stack and stack[-1] not in found:
            found.append(stack[-1])
    if not found:
        found = [name for name, _ in gm.named_children()]
    return found


def cell_graph(gm: fx.GraphModule, prefix: str, status: dict[str, str] | None = None) -> nx.DiGraph:
    """The data nodes traced inside module ``prefix`` (and the nodes outside that feed them).

    Architecture-weight arithmetic (nodes that do not depend on a graph
    input: ``softmax(alphas)``, ``weights[3]``) is left out.
    """
    status = status or {}
    dependent = input_dependent_nodes(gm.graph)
    inside = [n for n in gm.graph.nodes
              if n in dependent and n.op not in ("placeholder", "output") and _under(n, prefix)]
    if not inside:
        valid = _cell_prefixes(gm)
        raise ValueError(f"fxnas.draw: no nodes were traced inside module {prefix!r}; "
                         f"try one of {', '.join(map(repr, valid[:6]))}{', ...' if len(valid) > 6 else ''}")
    members = set(inside)
    graph = nx.DiGraph(name=prefix)
    for node in inside:
        for arg in node.all_input_nodes:
            if arg in dependent and arg not in members and arg.name not in graph:
                text = f"in: {_label(arg, gm)}" if arg.op != "placeholder" else f"input {arg.name}"
                graph.add_node(arg.name, kind="input", category="from outside", text=text, status=None)
        graph.add_node(node.name, kind="node", category=_operation_category(node, gm), text=_label(node, gm),
                       status=status.get(node.name))
        for arg in node.all_input_nodes:
            if arg in dependent:
                graph.add_edge(arg.name, node.name)
    graph.graph["title"] = f"module {prefix}" if prefix else "whole graph"
    graph.graph["subtitle"] = f"{len(inside)} nodes"
    return graph


# -------------------------------------------------------------------- layout


def _spread(desired: list[float], widths: list[float], gap: float) -> list[float]:
    """Positions as close to ``desired`` as possible, in this order, without overlaps.

    Blocks of touching boxes are merged and centred on the mean of what their
    members want (pool adjacent violators), so the result is left-to-right
    ordered and each box keeps ``gap`` to its neighbours.
    """
    blocks: list[list[Any]] = []  # [first index, last index, offsets, position of first]
    for i, want in enumerate(desired):
        blocks.append([i, i, [0.0], want])
        while len(blocks) > 1:
            a, b = blocks[-2], blocks[-1]
            a_end = a[3] + a[2][-1] + widths[a[1]] / 2
            b_start = b[3] - widths[b[0]] / 2
            if b_start >= a_end + gap - 1e-9:
                break
            step = a[2][-1] + widths[a[1]] / 2 + gap + widths[b[0]] / 2
            offsets = a[2] + [step + o for o in b[2]]
            members = range(a[0], b[1] + 1)
            position = sum(desired[j] - o for j, o in zip(members, offsets)) / len(offsets)
            blocks[-2:] = [[a[0], b[1], offsets, position]]
    result = [0.0] * len(desired)
    for first, last, offsets, position in blocks:
        for j, o in zip(range(first, last + 1), offsets):
            result[j] = position + o
    return result


def _depths(graph: nx.DiGraph) -> dict[Any, int]:
    depth: dict[Any, int] = {}
    for node in nx.topological_sort(graph):
        preds = list(graph.predecessors(node))
        depth[node] = max((depth[p] + 1 for p in preds), default=0)
    return depth


def layered_layout(graph: nx.DiGraph, sizes: dict[Any, tuple[float, float]], tree: bool,
                   hgap: float = 0.18, vgap: float = 0.42) -> dict[Any, tuple[float, float]]:
    """Centre positions (inches, y downwards) for ``graph``'s nodes, boxes of ``sizes`` (w, h).

    ``tree``: leaves (nodes of kind ``candidate``, or without successors) on
    the bottom row in the order of a depth-first walk (children by their
    lowest candidate index), each inner node above the middle of its leaves.
    Otherwise: layers by longest path, order within layers by barycentre
    sweeps.
    """
    if graph.number_of_nodes() == 0:
        return {}
    depth = _depths(graph)
    layers_count = max(depth.values()) + 1
    if tree:
        leaves = [n for n in graph if graph.nodes[n].get("kind") == "candidate" or graph.out_degree(n) == 0]
        bottom = max(layers_count - 1, 1)
        for leaf in leaves:
            depth[leaf] = bottom
        layers_count = bottom + 1
    layers: list[list[Any]] = [[] for _ in range(layers_count)]
    for node in graph:
        layers[depth[node]].append(node)
    row_height = [max(sizes[n][1] for n in layer) if layer else 0.0 for layer in layers]
    y, ys = 0.0, []
    for h in row_height:
        ys.append(y + h / 2)
        y += h + vgap
    x: dict[Any, float] = {}
    if tree:
        x = _tree_x(graph, leaves, sizes, hgap)
    else:
        x = _barycentre_x(graph, layers, sizes, hgap)
    for layer in layers:  # no overlaps within a row
        layer.sort(key=lambda n: x[n])
        placed = _spread([x[n] for n in layer], [sizes[n][0] for n in layer], hgap)
        x.update(zip(layer, placed))
    left = min(x[n] - sizes[n][0] / 2 for n in graph)
    return {n: (x[n] - left, ys[depth[n]]) for n in graph}


def _tree_x(graph: nx.DiGraph, leaves: list[Any], sizes, hgap: float) -> dict[Any, float]:
    leaf_set = set(leaves)
    index = {n: graph.nodes[n].get("index", i) for i, n in enumerate(leaves)}
    lowest: dict[Any, float] = {}
    for node in reversed(list(nx.topological_sort(graph))):
        own = [index[node]] if node in leaf_set else []
        lowest[node] = min(own + [lowest[c] for c in graph.successors(node)], default=math.inf)
    order: list[Any] = []
    seen: set[Any] = set()

    def visit(node: Any) -> None:
        stack = [node]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in leaf_set:
                order.append(current)
            children = sorted(graph.successors(current), key=lambda c: lowest[c])
            stack.extend(reversed(children))

    roots = sorted((n for n in graph if graph.in_degree(n) == 0), key=lambda n: lowest[n])
    for root in roots:
        visit(root)
    order.extend(leaf for leaf in leaves if leaf not in seen)
    slot = max(sizes[n][0] for n in graph) + hgap
    x = {leaf: i * slot for i, leaf in enumerate(order)}
    for node in reversed(list(nx.topological_sort(graph))):
        if node in x:
            continue
        below = [x[c] for c in graph.successors(node) if c in x]
        x[node] = sum(below) / len(below) if below else 0.0
    # Inner nodes sit over the middle of the leaves they reach, not only over their children.
    for node in graph:
        if node in leaf_set:
            continue
        reached = [x[leaf] for leaf in nx.descendants(graph, node) if leaf in leaf_set]
        if reached:
            x[node] = (min(reached) + max(reached)) / 2
    return x


def _barycentre_x(graph: nx.DiGraph, layers: list[list[Any]], sizes, hgap: float) -> dict[Any, float]:
    order = {n: i for i, n in enumerate(graph)}
    for layer in layers:
        layer.sort(key=order.__getitem__)
    position = {n: float(i) for layer in layers for i, n in enumerate(layer)}
    for sweep in range(6):
        downward = sweep % 2 == 0
        sequence = layers[1:] if downward else list(reversed(layers[:-1]))
        for layer in sequence:
            def key(n: Any) -> float:
                neighbours = list(graph.predecessors(n) if downward else graph.successors(n))
                return sum(position[m] for m in neighbours) / len(neighbours) if neighbours else position[n]
            layer.sort(key=key)
            for i, n in enumerate(layer):
                position[n] = float(i)
    slot = max(sizes[n][0] for n in graph) + hgap
    widest = max(len(layer) for layer in layers)
    x = {}
    for layer in layers:
        offset = (widest - len(layer)) / 2
        for i, n in enumerate(layer):
            x[n] = (i + offset) * slot
    # A few relaxation steps: nodes move towards the mean of their neighbours, order kept.
    for _ in range(4):
        for layer in layers:
            desired = []
            for n in layer:
                neighbours = list(graph.predecessors(n)) + list(graph.successors(n))
                desired.append(sum(x[m] for m in neighbours) / len(neighbours) if neighbours else x[n])
            placed = _spread(desired, [sizes[n][0] for n in layer], hgap)
            x.update(zip(layer, placed))
    return x


# ----------------------------------------------------------------- rendering


@dataclass
class _Panel:
    graph: nx.DiGraph
    tree: bool
    title: str = ""
    fontsize: float = 8.0
    wrap: int = 22
    sizes: dict[Any, tuple[float, float]] = field(default_factory=dict)
    positions: dict[Any, tuple[float, float]] = field(default_factory=dict)
    width: float = 0.0
    height: float = 0.0


def _measure(panels: list[_Panel]) -> None:
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(100, 100, 72)  # 72 dpi: one pixel per point
    for panel in panels:
        prop = FontProperties(size=panel.fontsize)
        line_height = panel.fontsize * 1.2 / 72
        for node, attrs in panel.graph.nodes(data=True):
            text = _wrap(attrs.get("text", str(node)), attrs.get("wrap") or panel.wrap)
            attrs["wrapped"] = text
            lines = text.split("\n")
            width = max(renderer.get_text_width_height_descent(line or " ", prop, ismath=False)[0]
                        for line in lines) / 72
            panel.sizes[node] = (width + 0.16, len(lines) * line_height + 0.1)
        panel.positions = layered_layout(panel.graph, panel.sizes, panel.tree)
        if panel.positions:
            panel.width = max(x + panel.sizes[n][0] / 2 for n, (x, _) in panel.positions.items())
            panel.height = max(y + panel.sizes[n][1] / 2 for n, (_, y) in panel.positions.items())


def _fill_of(category: str, extra: dict[str, str]) -> str:
    if category in _FILL:
        return _FILL[category]
    if category not in extra:
        extra[category] = _EXTRA_FILLS[len(extra) % len(_EXTRA_FILLS)]
    return extra[category]


def _render(panels: list[_Panel], path: Path, title: str, dpi: float) -> None:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
    from matplotlib.path import Path as MplPath

    _measure(panels)
    margin, gap, head = 0.3, 0.6, 0.75
    used_fills: dict[str, None] = {}
    used_status: dict[str, None] = {}
    extra: dict[str, str] = {}
    for panel in panels:
        for _, attrs in panel.graph.nodes(data=True):
            used_fills.setdefault(attrs.get("category", "other"))
            if attrs.get("status"):
                used_status.setdefault(attrs["status"])
    legend_entries = len(used_fills) + len(used_status)
    labels = [_FILL_LEGEND.get(c, c) for c in used_fills] + [_STATUS_LEGEND.get(s, s) for s in used_status]
    column_width = 0.45 + 0.062 * max((len(label) for label in labels), default=10)  # 8 pt text
    width = 2 * margin + sum(p.width for p in panels) + gap * (len(panels) - 1)
    width = max(width, 6.5, min(3, legend_entries) * column_width + 2 * margin)
    columns = max(1, min(3, int((width - 2 * margin) // column_width)))
    legend_height = 0.24 * math.ceil(legend_entries / columns) + 0.15
    height = head + max(p.height for p in panels) + legend_height + 0.3 + (0.3 if len(panels) > 1 else 0)
    if max(width, height) * dpi > 16000:  # keep bitmaps within what viewers open
        dpi = 16000 / max(width, height)

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, width)
    axes.set_ylim(0, height)
    axes.axis("off")
    axes.text(width / 2, height - 0.18, title, ha="center", va="top", fontsize=11, fontweight="bold")

    left = margin + max(0.0, (width - 2 * margin - sum(p.width for p in panels) - gap * (len(panels) - 1)) / 2)
    top = height - head - (0.3 if len(panels) > 1 else 0)
    for number, panel in enumerate(panels):
        if len(panels) > 1 or panel.title:
            axes.text(left + panel.width / 2, top + 0.12, panel.title, ha="center", va="bottom", fontsize=10,
                      fontweight="bold", color="#263238")
        if number > 0:
            axes.plot([left - gap / 2] * 2, [top + 0.3, legend_height + 0.2], color="#b0bec5", lw=0.8,
                      linestyle="--")

        def place(node: Any) -> tuple[float, float, float, float]:
            x, y = panel.positions[node]
            w, h = panel.sizes[node]
            return left + x, top - y, w, h

        for u, v in panel.graph.edges():
            ux, uy, _, uh = place(u)
            vx, vy, _, vh = place(v)
            start, end = (ux, uy - uh / 2), (vx, vy + vh / 2)
            if panel.tree and abs(ux - vx) > 1e-6:
                bend = start[1] - 0.16
                path_ = MplPath([start, (ux, bend), (vx, bend), end],
                                [MplPath.MOVETO, MplPath.LINETO, MplPath.LINETO, MplPath.LINETO])
                arrow = FancyArrowPatch(path=path_, arrowstyle="-|>", mutation_scale=7, color="#78909c",
                                        linewidth=0.8, zorder=1)
            else:
                arrow = FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=7, color="#78909c",
                                        linewidth=0.7 if panel.tree else 0.5, shrinkA=0, shrinkB=0, zorder=1,
                                        alpha=1.0 if panel.tree else 0.7)
            axes.add_patch(arrow)
        for node, attrs in panel.graph.nodes(data=True):
            x, y, w, h = place(node)
            category = attrs.get("category", "other")
            fill = _fill_of(category, extra)
            outline = _STATUS.get(attrs.get("status") or "", _PLAIN)
            box = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.05",
                                 facecolor=fill, zorder=2, **outline)
            axes.add_patch(box)
            color = "white" if category in ("input", "from outside") else "#212121"
            axes.text(x, y, attrs["wrapped"], ha="center", va="center", fontsize=panel.fontsize, color=color,
                      zorder=3, linespacing=1.2, alpha=max(outline["alpha"], 0.75),
                      fontweight="bold" if attrs.get("kind") == "candidate" else "normal")
        left += panel.width + gap

    handles = [Patch(facecolor=_fill_of(c, extra), edgecolor="#37474f", linewidth=0.8,
                     label=_FILL_LEGEND.get(c, c)) for c in used_fills]
    for status in used_status:
        style = _STATUS[status] if status in _STATUS else _PLAIN
        handles.append(Patch(facecolor="white", edgecolor=style["edgecolor"], linestyle=style["linestyle"],
                             linewidth=style["linewidth"], label=_STATUS_LEGEND.get(status, status)))
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=min(columns, len(handles)), fontsize=8,
                      frameon=False, bbox_to_anchor=(0.5, 0.1 / height), handlelength=1.6, columnspacing=1.5)
    fmt = _FORMATS[path.suffix.lower()]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fxnas"}):
        metadata = {"Date": None} if fmt in ("svg", "pdf") else {"Software": None}
        figure.savefig(path, format=fmt, dpi=dpi, metadata=metadata, facecolor="white")


# ---------------------------------------------------------------------- API


def _auto_cell(gm: fx.GraphModule, edge: MixedEdge) -> str:
    labels = set(candidate_labels(edge))
    stack = [p for p in module_path(edge.output) if p not in labels]
    return stack[-1] if stack else ""


def draw(
    obj: Any,
    path: str | Path,
    *,
    edge: int | str | None = None,
    cell: str | bool | None = None,
    before: Any = None,
    title: str | None = None,
    dpi: float = 110,
) -> Path:
    """Draw a mixed edge's hierarchical topology (or a cell) of ``obj`` into ``path``.

    Args:
        obj: a GraphModule from :func:`fxnas.simplify` or :func:`fxnas.trace`,
            or an explain report (``fxnas.explain(sgm)``; edges only, drawn
            from the report's plain values as a trie of operations).
        path: the image file; ``.png``, ``.svg`` or ``.pdf``.
        edge: which mixed edge: its name (``"cells.0.edges.1<-0"``) or its
            index in graph order; default the first.
        cell: draw the nodes traced inside this module (``"cells.0"``)
            instead of one edge; ``True`` picks the module that holds the
            selected edge, ``""`` draws the whole graph.
        before: the original traced GraphModule: draw it on the left and
            ``obj`` on the right, with the nodes that went away outlined by
            what happened to them (see :func:`fxnas.diff`). For a report,
            ``before=True`` draws its edges before and after simplification.
        title: the figure title (default: says what is drawn).
        dpi: resolution of bitmap formats.

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(f"fxnas.draw: unsupported file type {path.suffix!r}; use one of {sorted(_FORMATS)}")
    from .report import SimplifyReport

    if isinstance(obj, SimplifyReport):
        panels = _report_panels(obj, edge, cell, before)
    elif isinstance(obj, fx.GraphModule):
        panels = _graph_panels(obj, edge, cell, before)
    else:
        raise TypeError("fxnas.draw takes a GraphModule from fxnas.simplify / fxnas.trace or an explain report, "
                        f"got {type(obj).__name__}")
    if title is None:
        graph = panels[-1].graph
        title = graph.graph.get("title", "")
        subtitle = graph.graph.get("subtitle")
        if subtitle and len(panels) == 1:
            title += f" ({subtitle})"
    path.parent.mkdir(parents=True, exist_ok=True)
    _render(panels, path, title, dpi)
    return path


def _graph_panels(gm: fx.GraphModule, edge: Any, cell: Any, before: Any) -> list[_Panel]:
    if before is not None and not isinstance(before, fx.GraphModule):
        raise TypeError(f"fxnas.draw: before= must be the original GraphModule, got {type(before).__name__}")
    gone: dict[str, str] = {}
    new: dict[str, str] = {}
    if before is not None:
        changes = diff(before, gm)
        for change in changes.changes:
            if change.kind == "added":
                new[change.node] = "added"
            else:
                gone[change.node] = change.kind
                if change.kind == "hoisted" and change.into:
                    new.setdefault(change.into, "keeper")
    edges = analysed_edges(gm)
    if cell is not None and cell is not False:
        if cell is True:
            cell = _auto_cell(gm, _select_edge(edges, edge, "this graph"))
        after = cell_graph(gm, cell, new)
        after.graph["title"] = f"module {cell}" if cell else "whole graph"
        big = after.number_of_nodes() > 250
        panels = [_Panel(after, tree=False, title="simplified" if before is not None else "",
                         fontsize=6.5 if big else 7.0, wrap=16)]
        if before is not None:
            original = cell_graph(before, cell, gone)
            big = big or original.number_of_nodes() > 250
            panels.insert(0, _Panel(original, tree=False, title="original", fontsize=6.5 if big else 7.0, wrap=16))
            for panel in panels:
                panel.title += f"  ({panel.graph.graph['subtitle']})"
            after.graph["title"] = f"{'module ' + cell if cell else 'whole graph'}: before and after fxnas.simplify"
        return panels
    selected = _select_edge(edges, edge, "this graph")
    after = edge_graph(gm, selected, new)
    panels = [_Panel(after, tree=True)]
    if before is not None:
        before_edges = analysed_edges(before)
        names = [e.name for e in before_edges]
        if selected.name in names:
            original_edge = before_edges[names.index(selected.name)]
        else:
            original_edge = _select_edge(before_edges, edge if isinstance(edge, int) else 0, "the original graph")
        panels.insert(0, _Panel(edge_graph(before, original_edge, gone), tree=True,
                                title=f"original ({len(original_edge.candidates)} candidates)"))
        panels[1].title = f"simplified ({len(selected.candidates)} candidates)"
    return panels


def _report_panels(report: Any, edge: Any, cell: Any, before: Any) -> list[_Panel]:
    if cell is not None and cell is not False:
        raise ValueError("fxnas.draw: a report holds no graph; draw a cell from the simplified GraphModule")
    after_edges = report.simplified_edges or report.mixed_edges
    selected = _select_edge(after_edges, edge, "the report")
    panels = [_Panel(_report_edge_graph(selected), tree=True)]
    if before and report.simplified_edges:
        names = [e.name for e in report.mixed_edges]
        original = report.mixed_edges[names.index(selected.name)] if selected.name in names else report.mixed_edges[0]
        panels.insert(0, _Panel(_report_edge_graph(original, "pruned"), tree=True,
                                title=f"original ({len(original.candidates)} candidates)"))
        panels[1].title = f"simplified ({len(selected.candidates)} candidates)"
    return panels
