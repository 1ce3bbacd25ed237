"""Graph surgery helpers shared by the passes (and GraphModule construction).

The ritual every pass follows: insert new nodes under
``graph.inserting_before/after``, copy ``node.meta`` from the node being
replaced, ``replace_all_uses_with``, then let :func:`cleanup` remove what
became dead with an impurity check that keeps stateful and random nodes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.fx as fx

from .graph_utils import is_side_effect_free

__all__ = [
    "FxnasGraphModule",
    "build_graph_module",
    "clone_graph_module",
    "eliminate_dead_code",
    "delete_unused_stateless_submodules",
    "cleanup",
    "copy_meta",
]


def _install(gm: torch.nn.Module, qualified_name: str, value: Any, kind: str, persistent: bool = True) -> None:
    """Put ``value`` at ``qualified_name`` in ``gm``, creating empty container modules on the way."""
    *prefix, field = qualified_name.split(".")
    owner = gm
    for atom in prefix:
        child = owner._modules.get(atom)
        if child is None:
            child = torch.nn.Module()
            owner.add_module(atom, child)
        owner = child
    if kind == "module":
        owner.add_module(field, value)
    elif kind == "parameter":
        owner.register_parameter(field, value)
    elif kind == "buffer":
        owner.register_buffer(field, value, persistent=persistent)
    else:  # a plain attribute (e.g. a plain-tensor architecture weight)
        owner.__dict__[field] = value


def _lookup(root: torch.nn.Module, qualified_name: str) -> tuple[Any, str]:
    """The value at ``qualified_name`` in ``root`` and its kind (module/parameter/buffer/plain)."""
    *prefix, field = qualified_name.split(".")
    owner = root
    for atom in prefix:
        owner = getattr(owner, atom)
    if isinstance(owner, torch.nn.Module):
        if field in owner._modules:
            return owner._modules[field], "module"
        if field in owner._parameters:
            return owner._parameters[field], "parameter"
        if field in owner._buffers:
            kind = "buffer" if field not in owner._non_persistent_buffers_set else "buffer-non-persistent"
            return owner._buffers[field], kind
    return getattr(owner, field), "plain"


class FxnasGraphModule(fx.GraphModule):
    """A GraphModule whose state mirrors the model it came from, through copies and pickling.

    ``fx.GraphModule`` keeps only what its graph references, also when it is
    deep-copied or unpickled (it is re-traced from its code). A simplified
    supernet must keep every parameter and buffer of the user's model under
    its original name (a merged convolution stops calling the candidate
    modules whose kernels it reads), so both paths rebuild the module with
    :func:`build_graph_module` from the full saved state.
    """

    def __deepcopy__(self, memo: dict) -> "FxnasGraphModule":
        result = type(self).__new__(type(self))
        memo[id(self)] = result
        state = copy.deepcopy(self.__dict__, memo)
        _initialise(result, _holder(state), state["_graph"], type(self).__name__)
        result.meta = state.get("meta", {})
        return result

    def __reduce__(self):
        """Pickle the graph itself, node by node: fx re-traces the generated code instead,
        which cannot follow fxnas's runtime functions (guards, grad-mode switches)."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("_graph", "_code")}
        return (_restore_graph_module, (state, _graph_to_specs(self.graph), type(self).__name__))


_KEPT_META = ("nn_module_stack", "grad_enabled", "fxnas_value", "fxnas_candidate_modules",
              "fxnas_edge_name", "fxnas_passthrough")


@dataclass(frozen=True)
class _NodeRef:
    name: str


def _graph_to_specs(graph: fx.Graph) -> list[tuple]:
    """A picklable description of every node: op, name, target, arguments (nodes by name), meta."""
    specs = []
    for node in graph.nodes:
        args = fx.node.map_arg(node.args, lambda n: _NodeRef(n.name))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: _NodeRef(n.name))
        meta = {k: node.meta[k] for k in _KEPT_META if k in node.meta}
        specs.append((node.op, node.name, node.target, args, kwargs, meta))
    return specs


def _graph_from_specs(specs: list[tuple]) -> fx.Graph:
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}

    def resolve(value: Any) -> Any:
        if isinstance(value, _NodeRef):
            return nodes[value.name]
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, tuple):
            items = [resolve(v) for v in value]
            return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(resolve(value.start), resolve(value.stop), resolve(value.step))
        return value

    for op, name, target, args, kwargs, meta in specs:
        node = graph.create_node(op, target, resolve(args), resolve(kwargs), name=name)
        node.meta.update(meta)
        nodes[name] = node
    return graph


def _holder(state: dict) -> torch.nn.Module:
    """A plain module whose attributes are ``state`` (a GraphModule's saved ``__dict__``)."""
    holder = torch.nn.Module()
    holder.__dict__.update({k: v for k, v in state.items() if k not in ("_graph", "_code")})
    return holder


def _restore_graph_module(state: dict, specs: list[tuple], class_name: str) -> "FxnasGraphModule":
    """Unpickle: rebuild the graph from its node descriptions, then every piece of state."""
    restored = build_graph_module(_holder(state), _graph_from_specs(specs), class_name)
    restored.meta = state.get("meta", {})
    return restored


def _initialise(gm: fx.GraphModule, root: torch.nn.Module, graph: fx.Graph, class_name: str) -> None:
    fx.GraphModule.__init__(gm, torch.nn.Module(), fx.Graph(), class_name)
    called = {n.target for n in graph.nodes if n.op == "call_module"}
    for name, module in root.named_modules():
        if not name:
            _install_own_state(gm, "", module)
            continue
        if name in called:
            _install(gm, name, module, "module")
            continue
        parts = name.split(".")
        if any(".".join(parts[:k]) in called for k in range(1, len(parts))):
            continue  # inside a module installed whole
        _install_own_state(gm, name, module)
    for node in graph.nodes:
        if node.op == "get_attr" and not _resolves(gm, node.target):
            value, kind = _lookup(root, node.target)
            _install(gm, node.target, value, kind.split("-")[0], persistent=not kind.endswith("non-persistent"))
    gm.graph = graph
    _copy_training_flags(root, gm)


def _copy_training_flags(source: torch.nn.Module, target: torch.nn.Module) -> None:
    target.training = source.training
    for name, module in source.named_modules():
        if name:
            try:
                target.get_submodule(name).training = module.training
            except AttributeError:
                pass


def build_graph_module(root: torch.nn.Module, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    """A GraphModule for ``graph`` whose state mirrors ``root`` exactly.

    Unlike ``fx.GraphModule(root, graph)``, which copies only what the graph
    references, every parameter and buffer of ``root`` is kept at its
    original qualified name (the same objects, in the original order), so
    ``state_dict()`` keys and ``named_parameters()`` are those of the user's
    model even after passes stop calling some modules. Plain tensor
    attributes read by ``get_attr`` nodes stay plain attributes (fx would turn
    them into buffers, which ``.to()`` would then replace by copies).
    """
    gm = FxnasGraphModule.__new__(FxnasGraphModule)
    _initialise(gm, root, graph, class_name)
    return gm


def _install_own_state(gm: fx.GraphModule, prefix: str, module: torch.nn.Module) -> None:
    for pname, param in module.named_parameters(recurse=False):
        _install(gm, f"{prefix}.{pname}" if prefix else pname, param, "parameter")
    for bname, buffer in module.named_buffers(recurse=False):
        persistent = bname not in module._non_persistent_buffers_set
        _install(gm, f"{prefix}.{bname}" if prefix else bname, buffer, "buffer", persistent=persistent)


def _resolves(gm: torch.nn.Module, qualified_name: str) -> bool:
    try:
        _lookup(gm, qualified_name)
        return True
    except AttributeError:
        return False


def clone_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule with a copy of ``gm``'s graph that shares all of ``gm``'s state."""
    graph = fx.Graph()
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    clone = build_graph_module(gm, graph, type(gm).__name__)
    clone.meta.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in gm.meta.items()})
    return clone


def copy_meta(new: fx.Node, old: fx.Node, same_value: bool = False) -> fx.Node:
    """Give a replacement node the provenance of the node it stands for.

    With ``same_value`` the new node also takes the old one's recorded value
    (shape, dtype), so it need not be evaluated on fake tensors again.
    """
    for key in ("nn_module_stack", "stack_trace", "grad_enabled", "source_fn_stack"):
        if key in old.meta and key not in new.meta:
            new.meta[key] = old.meta[key]
    if same_value and "fxnas_value" in old.meta:
        new.meta["fxnas_value"] = old.meta["fxnas_value"]
    return new


def eliminate_dead_code(gm: fx.GraphModule) -> int:
    """Remove unused nodes that have no side effects; returns how many were removed."""
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code(is_impure_node=lambda n: not is_side_effect_free(n, gm))
    return before - len(gm.graph.nodes)


def delete_unused_stateless_submodules(gm: fx.GraphModule) -> list[str]:
    """Delete submodules the graph no longer calls *and* that own no parameters or buffers.

    Modules with state stay registered even when no node calls them, so the
    state dict keeps its keys (a merged convolution reads the original
    candidates' kernels).
    """
    used: set[str] = set()
    for node in gm.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            parts = node.target.split(".")
            used.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    # Modules a runtime module computes with (ModuleReferences) stay registered, so that
    # .train()/.eval() on the GraphModule still reaches them.
    referenced = {
        id(m) for holder in gm.modules() for value in vars(holder).values()
        if type(value).__name__ == "ModuleReferences" for m in value.modules
    }
    removed = []
    for name, module in list(gm.named_modules()):
        if not name or name in used or any(name.startswith(u + ".") for u in used if u):
            continue
        if id(module) in referenced or any(id(m) in referenced for m in module.modules()):
            continue
        if next(module.parameters(), None) is None and next(module.buffers(), None) is None:
            if any(name.startswith(r + ".") for r in removed):
                continue
            *prefix, field = name.split(".")
            owner = gm.get_submodule(".".join(prefix)) if prefix else gm
            if field in owner._modules:
                del owner._modules[field]
                removed.append(name)
    return removed


def cleanup(gm: fx.GraphModule) -> None:
    """Dead-code elimination, lint, removal of unused stateless modules, recompile."""
    eliminate_dead_code(gm)
    gm.graph.lint()
    delete_unused_stateless_submodules(gm)
    gm.recompile()


def replace_node(old: fx.Node, new: fx.Node) -> None:
    """Redirect every use of ``old`` to ``new`` (meta copied onto ``new``)."""
    copy_meta(new, old)
    old.replace_all_uses_with(new)


def erase_nodes(graph: fx.Graph, nodes: Iterable[fx.Node]) -> None:
    """Erase nodes that have no users, last first."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in sorted(nodes, key=order.__getitem__, reverse=True):
        if not node.users:
            graph.erase_node(node)


def unique_module_name(gm: torch.nn.Module, base: str) -> str:
    """A fresh top-level attribute name derived from ``base`` (dots and odd characters -> ``_``)."""
    import re

    name = re.sub(r"\W+", "_", base).strip("_") or "module"
    if name[0].isdigit():
        name = "_" + name
    candidate, k = name, 1
    while hasattr(gm, candidate):
        candidate = f"{name}_{k}"
        k += 1
    return candidate
