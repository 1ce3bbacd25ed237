"""Graph analysis of supernets: weighted sums, mixed edges, candidate paths, topology.

Nothing here mutates a graph. The passes in :mod:`passes` call these
functions and do the surgery.

Vocabulary (see DESIGN.md):

* a **weighted sum** is a node computing ``Σ_m w_m · c_m`` spelled in one of
  several graph shapes. Each shape has a small recogniser below
  (:data:`RECOGNISERS`): an add-tree of products (Python ``sum`` with its
  leading ``0 +``, running sums, weight-first or output-first products),
  ``torch.sum(torch.stack(cs) * w.view(-1, 1, ...), 0)`` (optionally with a
  zero tensor concatenated for an implicit "none"), ``einsum``, and the
  canonical :func:`fxnas.ops.weighted_sum` node that the
  ``canonicalize_mixed_sums`` pass produces;
* a **mixed edge** is a group of terms of one weighted sum whose weights are
  scalars of one architecture-weight tensor and whose candidates are all
  computed from one edge input ``x``;
* a **candidate path** is the set of nodes between ``x`` and ``c_m`` used by
  nothing outside the path; the nodes between ``x`` and the start of each
  path are single-input operations of ``x`` shared by several candidates;
* the **hierarchical topology** of an edge is the union of those paths, a
  tree rooted at ``x`` (a networkx DiGraph).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import networkx as nx
import torch
import torch.fx as fx

from . import ops
from .graph_utils import common_prefix, data_inputs, input_dependent_nodes, module_of, module_path
from .values import VALUE_KEY, tensor_meta

__all__ = [
    "WeightRef",
    "Term",
    "WeightedSum",
    "Candidate",
    "MixedEdge",
    "find_weighted_sums",
    "find_mixed_edges",
    "is_zero_node",
    "describe_node",
    "RECOGNISERS",
]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class WeightRef:
    """Where a candidate's architecture weight comes from.

    Either an explicit scalar node (``weights[m]``), or, for stacked forms,
    the implicit element ``vector[index]`` of a 1-D weight tensor.
    """

    node: fx.Node | None = None
    vector: fx.Node | None = None
    index: int | None = None

    @property
    def applied(self) -> bool:
        """True for a term whose weights are applied inside (a merged group of candidates)."""
        return self.node is None and self.vector is None

    def describe(self) -> str:
        if self.node is not None:
            return self.node.name
        return f"{self.vector.name}[{self.index}]" if self.vector is not None else "applied inside"


@dataclass
class Term:
    """One addend ``w · c`` of a weighted sum (``candidate`` None: an implicit zero slice)."""

    candidate: fx.Node | None
    weight: WeightRef
    product: fx.Node | None = None
    zero: bool = False
    group_key: Any = None
    module: str | None = None  # the module a pass-through candidate (identity) came out of
    passthrough: bool = False  # the candidate is its input, passed through a module that added no node


@dataclass
class WeightedSum:
    """A recognised weighted sum: where it is, its terms, and the other addends."""

    root: fx.Node
    form: str
    terms: list[Term]
    other_addends: list[Any] = field(default_factory=list)
    internal: set[fx.Node] = field(default_factory=set)


@dataclass
class Candidate:
    """Candidate ``m`` of a mixed edge.

    ``path`` holds the nodes only this candidate uses; ``chain`` every node
    between the edge input and the candidate's output, shared ones included
    (empty for an identity candidate).
    """

    index: int
    output: fx.Node | None
    weight: WeightRef
    path: list[fx.Node]
    frontier: list[fx.Node]
    zero: bool
    module: str | None
    chain: list[fx.Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.module or ("zero" if self.zero else f"input ({self.output.name if self.output else '?'})")


@dataclass
class MixedEdge:
    """A mixed edge ``y = Σ_m w_m · c_m(x)`` found in a graph."""

    name: str
    input: fx.Node
    candidates: list[Candidate]
    weighted_sum: WeightedSum
    form: str
    weight_source: fx.Node | None
    shared: list[fx.Node]

    @property
    def output(self) -> fx.Node:
        return self.weighted_sum.root

    def topology(self, root: torch.nn.Module | None = None) -> nx.DiGraph:
        """The hierarchical topology: a tree rooted at the edge input, candidates as leaves."""
        return edge_topology(self, root)


# ------------------------------------------------------------------ small matchers

_ADD_FUNCTIONS = {operator.add, torch.add}
_MUL_FUNCTIONS = {operator.mul, torch.mul}
_SUM_FUNCTIONS = {torch.sum}
_STACK_FUNCTIONS = {torch.stack}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_ZERO_FACTORIES = {torch.zeros, torch.zeros_like}
_ZERO_PRESERVING = {"view", "reshape", "expand", "expand_as", "contiguous", "permute", "transpose",
                    "flatten", "squeeze", "unsqueeze", "view_as", "clone", "to", "float", "double",
                    "half", "neg"}


def _is_call(node: Any, functions: set, methods: set[str] = frozenset()) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_function":
        return node.target in functions
    if node.op == "call_method":
        return node.target in methods
    return False


def _is_add(node: Any) -> bool:
    if not _is_call(node, _ADD_FUNCTIONS, {"add", "__add__", "__radd__"}):
        return False
    return len(node.args) == 2 and "alpha" not in node.kwargs and "out" not in node.kwargs


def _is_mul(node: Any) -> bool:
    if not _is_call(node, _MUL_FUNCTIONS, {"mul", "__mul__", "__rmul__"}):
        return False
    return len(node.args) == 2 and not node.kwargs


def _is_literal_zero(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def is_zero_node(node: Any) -> bool:
    """Whether ``node`` is identically zero: ``x.mul(0.)``, ``zeros_like``, ``new_zeros``...

    ``x * 0`` is zero for every finite ``x``; a NaN or Inf in ``x`` would
    propagate through the product but not through its removal (documented).
    """
    if not isinstance(node, fx.Node):
        return _is_literal_zero(node)
    if _is_mul(node):
        return any(_is_literal_zero(a) or (isinstance(a, fx.Node) and is_zero_node(a)) for a in node.args)
    if node.op == "call_function" and node.target in _ZERO_FACTORIES:
        return True
    if node.op == "call_function" and node.target is torch.full:
        return len(node.args) > 1 and _is_literal_zero(node.args[1])
    if node.op == "call_method" and node.target == "new_zeros":
        return True
    if node.op == "call_method" and node.target in ("new_full", "fill_") and len(node.args) > 2:
        return _is_literal_zero(node.args[2])
    if node.op == "call_method" and node.target == "zero_":
        return True
    if node.op == "call_method" and node.target in _ZERO_PRESERVING:
        return isinstance(node.args[0], fx.Node) and is_zero_node(node.args[0])
    if node.op == "call_function" and node.target is operator.getitem:
        return isinstance(node.args[0], fx.Node) and is_zero_node(node.args[0])
    return False


def _numel(meta) -> int | None:
    if meta is None:
        return None
    n = 1
    for s in meta.shape:
        n *= int(s)
    return n


def _shape(node: Any) -> tuple | None:
    meta = tensor_meta(node) if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None else None


def _split_product(product: fx.Node, out_shape: tuple | None) -> tuple[fx.Node, fx.Node] | None:
    """``(candidate, weight)`` of a product ``c * w`` / ``w * c``, weight being a scalar tensor."""
    a, b = product.args
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return None
    ma, mb = tensor_meta(a), tensor_meta(b)
    if ma is None or mb is None or out_shape is None:
        return None
    a_scalar, b_scalar = _numel(ma) == 1, _numel(mb) == 1
    if b_scalar and not a_scalar and tuple(ma.shape) == out_shape and len(mb.shape) <= len(ma.shape):
        return a, b
    if a_scalar and not b_scalar and tuple(mb.shape) == out_shape and len(ma.shape) <= len(mb.shape):
        return b, a
    return None


def _passthrough_module(consumer: fx.Node, value: fx.Node, taken: set[str] | None = None) -> str | None:
    """The module that ``value`` came out of unchanged on its way into ``consumer`` (if any)."""
    for name, module in consumer.meta.get("fxnas_passthrough", ()):
        if name == value.name and (taken is None or module not in taken):
            return module
    return None


def _weight_group_key(weight: fx.Node) -> Any:
    """Which weight vector a scalar weight belongs to.

    Walks up through scalar-valued single-input nodes (``sigmoid(beta[m])``)
    to the first ``getitem`` on a non-scalar tensor: ``row[m]`` belongs to
    ``row``; ``alphas[e, m]`` belongs to ``(alphas, e)``.
    """
    node = weight
    for _ in range(16):
        if node.op == "call_function" and node.target is operator.getitem:
            source, index = node.args
            if isinstance(source, fx.Node) and _numel(tensor_meta(source)) not in (None, 1):
                if isinstance(index, tuple):
                    return (source, tuple(index[:-1]))
                return (source, ())
        inputs = node.all_input_nodes
        if len(inputs) != 1:
            break
        node = inputs[0]
    return (weight, "own")


# ---------------------------------------------------------------- the recognisers


def _recognise_canonical(node: fx.Node, used: set[fx.Node]) -> WeightedSum | None:
    """The canonical form ``fxnas.ops.weighted_sum([c_0, ...], [w_0, ...])``."""
    if not (node.op == "call_function" and node.target is ops.weighted_sum):
        return None
    candidates, weights = node.args
    modules = node.meta.get("fxnas_candidate_modules") or [None] * len(candidates)
    terms = [
        Term(candidate=c, weight=WeightRef(node=w), zero=w is not None and is_zero_node(c),
             group_key="canonical", module=name)
        for c, w, name in zip(candidates, weights, modules)
    ]
    return WeightedSum(root=node, form="canonical", terms=terms)


def _add_tree_leaves(root: fx.Node) -> tuple[list[Any], set[fx.Node]]:
    """Leaves (left to right) and inner add nodes of the add-tree rooted at ``root``."""
    leaves: list[Any] = []
    inner: set[fx.Node] = {root}

    def visit(value: Any) -> None:
        if _is_add(value) and len(value.users) == 1:
            inner.add(value)
            for arg in value.args:
                visit(arg)
        else:
            leaves.append(value)

    for arg in root.args:
        visit(arg)
    return leaves, inner


def _is_add_tree_root(node: fx.Node) -> bool:
    if not _is_add(node):
        return False
    users = list(node.users)
    return not (len(users) == 1 and _is_add(users[0]))


def _recognise_add_tree(node: fx.Node, used: set[fx.Node]) -> WeightedSum | None:
    """Add-trees of products: ``sum(op(x) * w ...)``, ``sum(w * op(x) ...)``, running sums."""
    if not _is_add_tree_root(node):
        return None
    leaves, inner = _add_tree_leaves(node)
    out_shape = _shape(node)
    terms: list[Term] = []
    others: list[Any] = []
    internal = set(inner)
    for leaf in leaves:
        split = _split_product(leaf, out_shape) if _is_mul(leaf) and len(leaf.users) == 1 else None
        if split is None:
            if not _is_literal_zero(leaf):
                others.append(leaf)
            continue
        candidate, weight = split
        internal.add(leaf)
        terms.append(Term(candidate=candidate, weight=WeightRef(node=weight), product=leaf,
                          zero=is_zero_node(candidate), group_key=_weight_group_key(weight),
                          module=_passthrough_module(leaf, candidate),
                          passthrough=_passthrough_module(leaf, candidate) is not None))
    if len(terms) < 2:
        return None
    return WeightedSum(root=node, form="add_tree", terms=terms, other_addends=others, internal=internal)


def _broadcast_weight_vector(node: Any, n: int) -> fx.Node | None:
    """The 1-D weight tensor of length ``n`` behind ``w.view(-1, 1, 1, ...)`` or ``w[:, None, ...]``."""
    for _ in range(8):
        if not isinstance(node, fx.Node):
            return None
        shape = _shape(node)
        if shape is None:
            return None
        if len(shape) == 1:
            return node if shape[0] == n else None
        if shape[0] != n or any(s != 1 for s in shape[1:]):
            return None
        if node.op in ("call_method", "call_function") and node.args:
            node = node.args[0]
        else:
            return None
    return None


def _stack_pieces(node: Any, internal: set[fx.Node]) -> list[tuple[fx.Node | None, bool]] | None:
    """Candidates of ``stack([c...])`` (or ``cat([stack(...), zeros])``), with their zero flags.

    The stack and cat nodes traversed are added to ``internal``.
    """
    if isinstance(node, fx.Node) and (_is_call(node, _STACK_FUNCTIONS) or _is_call(node, _CAT_FUNCTIONS)):
        internal.add(node)
    if _is_call(node, _STACK_FUNCTIONS):
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim != 0 or not isinstance(tensors, (list, tuple)):
            return None
        return [(c, is_zero_node(c)) for c in tensors]
    if _is_call(node, _CAT_FUNCTIONS):
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim != 0 or not isinstance(tensors, (list, tuple)):
            return None
        pieces: list[tuple[fx.Node | None, bool]] = []
        for piece in tensors:
            inner = _stack_pieces(piece, internal)
            if inner is not None:
                pieces.extend(inner)
            elif is_zero_node(piece) and _shape(piece):
                pieces.extend([(None, True)] * int(_shape(piece)[0]))
            else:
                return None
        return pieces
    return None


def _stacked_terms(stacked: Any, weights: Any, internal: set[fx.Node]) -> list[Term] | None:
    pieces = _stack_pieces(stacked, internal)
    if not pieces:
        return None
    vector = _broadcast_weight_vector(weights, len(pieces))
    if vector is None:
        return None
    terms, taken = [], set()
    for i, (c, zero) in enumerate(pieces):
        module = _stacked_passthrough(stacked, c, taken) if c is not None else None
        if module:
            taken.add(module)
        terms.append(Term(candidate=c, weight=WeightRef(vector=vector, index=i), zero=zero,
                          group_key=(vector, ()), module=module, passthrough=module is not None))
    return terms


def _stacked_passthrough(stacked: fx.Node, value: fx.Node, taken: set[str]) -> str | None:
    found = _passthrough_module(stacked, value, taken)
    if found is None and _is_call(stacked, _CAT_FUNCTIONS):
        for piece in stacked.args[0]:
            if isinstance(piece, fx.Node) and (found := _passthrough_module(piece, value, taken)):
                break
    return found


def _recognise_stack_sum(node: fx.Node, used: set[fx.Node]) -> WeightedSum | None:
    """``torch.sum(stack(cs) * w.view(-1, 1, ...), 0)`` and ``(w[:, None, ...] * stack).sum(0)``."""
    if not _is_call(node, _SUM_FUNCTIONS, {"sum"}):
        return None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dim not in (0, (0,), [0]) or node.kwargs.get("keepdim", False):
        return None
    product = node.args[0]
    if not _is_mul(product) or len(product.users) != 1:
        return None
    a, b = product.args
    internal = {node, product}
    terms = _stacked_terms(a, b, internal) or _stacked_terms(b, a, internal)
    if terms is None:
        return None
    return WeightedSum(root=node, form="stack_sum", terms=terms, internal=internal)


_EINSUM_RE = re.compile(r"^\s*([a-zA-Z])\s*,\s*\1\s*([a-zA-Z.]*)\s*->\s*([a-zA-Z.]*)\s*$")


def _recognise_einsum(node: fx.Node, used: set[fx.Node]) -> WeightedSum | None:
    """``torch.einsum('k,k...->...', w, stack(cs))`` (any letters, weights first)."""
    if not (node.op == "call_function" and node.target is torch.functional.einsum):
        return None
    if len(node.args) != 3 or not isinstance(node.args[0], str):
        return None
    match = _EINSUM_RE.match(node.args[0])
    if match is None or match.group(2) != match.group(3) or match.group(1) in match.group(3):
        return None
    internal = {node}
    terms = _stacked_terms(node.args[2], node.args[1], internal)
    if terms is None:
        return None
    return WeightedSum(root=node, form="einsum", terms=terms, internal=internal)


#: The weighted-sum recognisers, tried in order on every node.
RECOGNISERS: list[Callable[[fx.Node, set], WeightedSum | None]] = [
    _recognise_canonical,
    _recognise_add_tree,
    _recognise_stack_sum,
    _recognise_einsum,
]


def find_weighted_sums(graph: fx.Graph) -> list[WeightedSum]:
    """Every weighted sum in ``graph`` (at most one per root node), in graph order."""
    found = []
    used: set[fx.Node] = set()
    for node in graph.nodes:
        for recognise in RECOGNISERS:
            match = recognise(node, used)
            if match is not None:
                found.append(match)
                break
    return found


# --------------------------------------------------------------- candidate paths


def _is_scalar_valued(node: fx.Node) -> bool:
    """Scalars (and lists of scalars) are architecture weights, never feature maps."""
    value = node.meta.get(VALUE_KEY)
    items = value if isinstance(value, (list, tuple)) else [value]
    metas = [tensor_meta_of(v) for v in items]
    return bool(items) and all(m is not None and _numel(m) == 1 for m in metas)


def tensor_meta_of(value: Any):
    return value if hasattr(value, "shape") and hasattr(value, "dtype") else None


def _feature_inputs(node: fx.Node, dependent: set[fx.Node]) -> list[fx.Node]:
    """The data inputs of ``node`` that are feature maps (weights given as inputs are not)."""
    return [n for n in data_inputs(node, dependent) if not _is_scalar_valued(n)]


def _private_path(
    candidate: fx.Node,
    owners: set[fx.Node],
    dependent: set[fx.Node],
    weights: set[fx.Node],
    order: dict[fx.Node, int],
    other_sums: set[fx.Node] = frozenset(),
) -> tuple[list[fx.Node], list[fx.Node]]:
    """Nodes that compute ``candidate`` and are used by nothing else, and the nodes they read.

    A node belongs to the path when every one of its users is in the path (or
    is part of the sum, ``owners``). A path never reaches into another
    weighted sum (``other_sums``: the output of the previous node of a cell is
    that node's sum, not part of a pass-through candidate). Returns (path in
    graph order, frontier).
    """
    if (candidate.op == "placeholder" or candidate in other_sums
            or any(u not in owners for u in candidate.users)):
        return [], [candidate]
    path = {candidate}
    work = [n for n in _feature_inputs(candidate, dependent) if n not in weights]
    while work:
        node = work.pop()
        if node in path or node.op == "placeholder" or node in other_sums:
            continue
        if all(u in path for u in node.users):
            path.add(node)
            work.extend(n for n in _feature_inputs(node, dependent) if n not in weights)
    frontier: list[fx.Node] = []
    for node in path:
        for arg in _feature_inputs(node, dependent):
            if arg not in path and arg not in frontier and arg not in weights:
                frontier.append(arg)
    return sorted(path, key=order.__getitem__), sorted(frontier, key=order.__getitem__)


def _unary_chain(node: fx.Node, dependent: set[fx.Node], limit: int = 64) -> list[fx.Node]:
    """``node`` and its ancestors while each has exactly one data input."""
    chain = [node]
    for _ in range(limit):
        inputs = _feature_inputs(chain[-1], dependent)
        if len(inputs) != 1 or chain[-1].op == "placeholder":
            break
        chain.append(inputs[0])
    return chain


def _edge_input(frontiers: Sequence[fx.Node], dependent: set[fx.Node]) -> tuple[fx.Node, list[fx.Node]] | None:
    """The node where the candidates' single-input chains meet, and the shared nodes below it."""
    if not frontiers:
        return None
    chains = [_unary_chain(f, dependent) for f in frontiers]
    others = [set(chain) for chain in chains[1:]]
    meet = next((n for n in chains[0] if all(n in other for other in others)), None)
    if meet is None:
        return None
    shared: list[fx.Node] = []
    for chain in chains:
        for node in chain[: chain.index(meet)]:
            if node not in shared:
                shared.append(node)
    return meet, shared


def _candidate_module(path: Sequence[fx.Node], sum_root: fx.Node) -> str | None:
    """The qualified name of the module that computes a candidate (from the trace's module stacks)."""
    outer = module_path(sum_root)
    names: list[list[str]] = [module_path(n)[len(outer):] for n in path if module_path(n)[: len(outer)] == outer]
    names = [n for n in names if n]
    if not names:
        return None
    common = common_prefix(names)
    return common[0] if common else names[0][0]


def _common_module_prefix(names: Iterable[str | None], fallback: str) -> str:
    parts = [n.split(".") for n in names if n]
    if not parts:
        return fallback
    common = common_prefix(parts)
    if len(parts) > 1 and common == parts[0]:
        common = common[:-1]
    return ".".join(common) if common else fallback


def _edge_name(candidates: list["Candidate"], terms: list[Term], root: fx.Node) -> str:
    """The edge's name: the common prefix of its candidates' module names.

    When that prefix is a container that is never called (the ModuleList of
    candidates) whose parent is the module that computes the sum (a DARTS
    MixedOp), the edge is named after that module.
    """
    name = _common_module_prefix([c.module for c in candidates], fallback=root.name)
    writer = next((module_path(t.product) for t in terms if t.product is not None), None)
    if writer and "." in name and name.rsplit(".", 1)[0] == writer[-1]:
        called = {entry for t in terms if t.product is not None for entry in module_path(t.product)}
        if name not in called:
            return writer[-1]
    return name


def _group_terms(match: WeightedSum) -> list[list[Term]]:
    groups: dict[Any, list[Term]] = {}
    for term in match.terms:
        groups.setdefault(term.group_key, []).append(term)
    return list(groups.values())


def _build_edge(
    match: WeightedSum,
    terms: list[Term],
    dependent: set[fx.Node],
    order: dict[fx.Node, int],
    sum_nodes: set[fx.Node] = frozenset(),
) -> MixedEdge | None:
    owners = set(match.internal) | {match.root}
    other_sums = sum_nodes - owners
    weight_nodes = {t.weight.node for t in match.terms if t.weight.node is not None}
    candidates: list[Candidate] = []
    frontiers: list[fx.Node] = []
    for m, term in enumerate(terms):
        if term.candidate is None:  # an implicit zero slice of a stack
            candidates.append(Candidate(m, None, term.weight, [], [], True, None))
            continue
        if term.candidate not in dependent:
            return None  # a constant "candidate" is not computed from an edge input
        if term.module is not None and term.passthrough:
            path, frontier = [], [term.candidate]  # a pass-through candidate (an identity traced through)
        else:
            path, frontier = _private_path(term.candidate, owners, dependent, weight_nodes, order, other_sums)
        candidates.append(Candidate(m, term.candidate, term.weight, path, frontier, term.zero, None))
        frontiers.extend(f for f in frontier if f not in frontiers)
    found = _edge_input(frontiers, dependent)
    if found is None:
        return None
    edge_input, shared = found
    for candidate, term in zip(candidates, terms):
        # Module names are taken relative to where the product w·c was written (inside a
        # DARTS MixedOp), not to where the whole sum ends (the cell's node sum).
        outer = term.product if term.product is not None else match.root
        candidate.module = term.module or _candidate_module(candidate.path, outer)
        chain = set(candidate.path)
        for start in candidate.frontier:
            for node in _unary_chain(start, dependent):
                if node is edge_input:
                    break
                chain.add(node)
        candidate.chain = sorted(chain, key=order.__getitem__)
    first = next((t.weight for t in terms if not t.weight.applied), None)
    if first is None:
        source = None
    elif first.vector is not None:
        source = first.vector
    else:
        key = _weight_group_key(first.node)
        source = key[0] if isinstance(key[0], fx.Node) and key[1] != "own" else first.node
    name = match.root.meta.get("fxnas_edge_name") or _edge_name(candidates, terms, match.root)
    return MixedEdge(name=name, input=edge_input, candidates=candidates, weighted_sum=match,
                     form=match.form, weight_source=source, shared=shared)


def find_mixed_edges(gm: fx.GraphModule) -> list[MixedEdge]:
    """Every mixed edge of ``gm``, in graph order.

    Raw weighted sums may hold several edges (a NAS-Bench-201 node sums the
    edges from all previous nodes in one add-tree); their terms are grouped
    by weight vector and each group is checked: at least two candidates
    (canonical sums: at least one), scalar weights, and one edge input.
    """
    dependent = input_dependent_nodes(gm.graph)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    edges: list[MixedEdge] = []
    matches = find_weighted_sums(gm.graph)
    sum_nodes = {n for m in matches for n in (m.root, *m.internal)}
    for match in matches:
        for terms in _group_terms(match):
            if len(terms) < (1 if match.form == "canonical" else 2):
                continue
            edge = _build_edge(match, terms, dependent, order, sum_nodes)
            if edge is not None:
                edges.append(edge)
    _disambiguate_names(edges)
    return edges


def _disambiguate_names(edges: list[MixedEdge]) -> None:
    counts: dict[str, int] = {}
    for edge in edges:
        counts[edge.name] = counts.get(edge.name, 0) + 1
    seen: dict[str, int] = {}
    for edge in edges:
        if counts[edge.name] > 1:
            k = seen.get(edge.name, 0)
            seen[edge.name] = k + 1
            edge.name = f"{edge.name}#{k}"


# -------------------------------------------------------------------- description


def describe_node(node: fx.Node, root: torch.nn.Module | None = None) -> str:
    """A short human label: module type and geometry, or the function name."""
    if node.op == "call_module" and root is not None:
        module = module_of(node, root)
        describe = getattr(module, "describe", None)
        if callable(describe) and type(module).__module__ == "fxnas.modules":
            return describe()  # fxnas runtime modules describe themselves
        label = type(module).__name__
        kernel = getattr(module, "kernel_size", None)
        if kernel is not None:
            kernel = kernel if isinstance(kernel, tuple) else (kernel,)
            label += "(" + "x".join(str(k) for k in kernel)
            dilation = getattr(module, "dilation", 1)
            dilation = dilation if isinstance(dilation, tuple) else (dilation,)
            if any(d != 1 for d in dilation):
                label += f", dil {dilation[0]}"
            groups = getattr(module, "groups", 1)
            if groups not in (1, None):
                label += ", dw" if groups == getattr(module, "in_channels", -1) else f", g{groups}"
            stride = getattr(module, "stride", 1)
            stride = stride if isinstance(stride, tuple) else (stride,)
            if any(s != 1 for s in stride):
                label += f", s{stride[0]}"
            label += ")"
        return label
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f".{node.target}"
    return node.name


def edge_topology(edge: MixedEdge, root: torch.nn.Module | None = None) -> nx.DiGraph:
    """The hierarchical topology of ``edge`` as a networkx DiGraph.

    Nodes are fx node names (plus ``candidate:<m>`` leaves) with attributes
    ``kind`` (input / shared / path / candidate), ``label`` and ``target``.
    An edge ``u -> v`` means ``v`` reads ``u``.
    """
    graph = nx.DiGraph(name=edge.name)
    graph.add_node(edge.input.name, kind="input", label=f"input {edge.input.name}", target=str(edge.input.target))
    region = {edge.input}
    for node in edge.shared:
        graph.add_node(node.name, kind="shared", label=describe_node(node, root), target=str(node.target))
        region.add(node)
    for candidate in edge.candidates:
        for node in candidate.path:
            graph.add_node(node.name, kind="path", label=describe_node(node, root), target=str(node.target))
            region.add(node)
    for node in region:
        if node is edge.input:
            continue
        for arg in node.all_input_nodes:
            if arg in region:
                graph.add_edge(arg.name, node.name)
    for candidate in edge.candidates:
        leaf = f"candidate:{candidate.index}"
        graph.add_node(leaf, kind="candidate", label=candidate.name, zero=candidate.zero,
                       weight=candidate.weight.describe())
        source = candidate.output if candidate.output is not None and candidate.output in region else None
        if source is None and candidate.frontier:
            source = candidate.frontier[0]
        graph.add_edge((source or edge.input).name, leaf)
    return graph
