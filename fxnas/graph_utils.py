"""Read-only queries on fx graphs: purity, constness, mutation, module names.

Nothing in this module changes a graph. Passes and the analysis use these
queries to decide what they may merge, move or delete.
"""

from __future__ import annotations

import operator
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

__all__ = [
    "PURE_STATELESS_MODULES",
    "module_of",
    "is_inplace",
    "is_random",
    "is_pure_stateless_module",
    "is_deterministic_module",
    "is_side_effect_free",
    "input_dependent_nodes",
    "mutated_nodes",
    "data_inputs",
    "module_path",
    "module_hyperparameters",
    "literal_key",
    "common_prefix",
]

#: Module types whose output is a pure function of their input and hyper-parameters.
PURE_STATELESS_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
    nn.Identity, nn.Flatten, nn.Unflatten,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LPPool1d, nn.LPPool2d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
    nn.Softmax, nn.LogSoftmax,
)

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)

#: Modules that are deterministic and never mutate state (but may own parameters).
_DETERMINISTIC_PARAMETRIC = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear, nn.Bilinear, nn.LayerNorm, nn.GroupNorm,
)

_RANDOM_NAMES = {
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "gumbel_softmax", "rrelu", "fractional_max_pool2d", "fractional_max_pool3d",
    "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm",
    "bernoulli", "multinomial", "normal", "poisson", "exponential", "geometric",
    "cauchy", "log_normal", "uniform", "random",
    "empty", "empty_like", "empty_strided", "new_empty",
}

_INPLACE_OPERATORS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.setitem,
    operator.imatmul, operator.ilshift, operator.irshift,
}


def module_of(node: fx.Node, root: nn.Module) -> nn.Module | None:
    """The module a ``call_module`` node calls (None for other nodes)."""
    if node.op != "call_module":
        return None
    return root.get_submodule(node.target)


def _target_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def is_inplace(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` mutates one of its inputs (``relu_``, ``inplace=True``, ``setitem``...)."""
    if node.op == "call_module":
        return bool(getattr(module_of(node, root), "inplace", False))
    if node.op not in ("call_function", "call_method"):
        return False
    if node.target in _INPLACE_OPERATORS:
        return True
    if node.kwargs.get("inplace") is True:
        return True
    name = _target_name(node)
    return name.endswith("_") and not name.endswith("__") and name not in {"requires_grad_"}


def is_random(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` draws random numbers (or returns uninitialised memory)."""
    if node.op == "call_module":
        module = module_of(node, root)
        return isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                                   nn.FeatureAlphaDropout, nn.RReLU))
    if node.op not in ("call_function", "call_method"):
        return False
    name = _target_name(node).rstrip("_")
    if name in _RANDOM_NAMES:
        return True
    aten = getattr(torch.ops.aten, name, None)
    if aten is not None:
        try:
            for overload in aten.overloads():
                if torch.Tag.nondeterministic_seeded in getattr(aten, overload).tags:
                    return True
        except (AttributeError, RuntimeError):
            return False
    return False


def is_pure_stateless_module(module: nn.Module) -> bool:
    """Pure, stateless modules: computing them twice on one input gives the same result.

    Covers activations, pooling, padding, identity, and normalisation layers
    that keep no running statistics and have no affine parameters (which
    always normalise with the batch's own statistics).
    """
    if getattr(module, "inplace", False):
        return False
    if isinstance(module, PURE_STATELESS_MODULES):
        return not getattr(module, "return_indices", False)
    if isinstance(module, _NORM_TYPES):
        return not module.track_running_stats and not module.affine
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        affine = getattr(module, "elementwise_affine", getattr(module, "affine", True))
        return not affine
    return False


def is_deterministic_module(module: nn.Module) -> bool:
    """Modules that never mutate state or draw random numbers (they may own parameters)."""
    if is_pure_stateless_module(module):
        return True
    if isinstance(module, _DETERMINISTIC_PARAMETRIC):
        return True
    if isinstance(module, _NORM_TYPES):
        return not module.track_running_stats
    return False


def is_side_effect_free(node: fx.Node, root: nn.Module) -> bool:
    """Whether deleting ``node`` (when unused) changes nothing observable.

    Stateful modules (BatchNorm updating running statistics), random ops (they
    advance the generator), in-place ops and fxnas guards are kept.
    """
    if node.op in ("placeholder", "output"):
        return False
    if node.op == "get_attr":
        return True
    if is_inplace(node, root) or is_random(node, root):
        return False
    if node.op == "call_module":
        module = module_of(node, root)
        return is_deterministic_module(module) or (
            isinstance(module, nn.Module) and not list(module.buffers()) and _is_torch_nn(module)
            and not isinstance(module, (nn.Dropout,))
        )
    if node.op == "call_function":
        return not (_is_assertion(node) or node.is_impure())
    return True


def _is_assertion(node: fx.Node) -> bool:
    """Run-time checks (fx's ``_assert_is_none``, ``torch._assert``, fxnas guards) are never dead code."""
    name = getattr(node.target, "__name__", "")
    return name.startswith("_assert") or name == "check_traced_value"


def _is_torch_nn(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.nn")


def input_dependent_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on a graph input (placeholders and their descendants).

    Other nodes are constants of the module: parameters, buffers, and what is
    computed from them alone (``softmax(alphas)``, its rows and scalars).
    """
    dependent: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(n in dependent for n in node.all_input_nodes):
            dependent.add(node)
    return dependent


_VIEW_FUNCTIONS = {operator.getitem, torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze,
                   torch.transpose, torch.permute, torch.narrow, torch.t, torch.select, torch.chunk,
                   torch.split, torch.detach}
_VIEW_METHODS = {"view", "view_as", "reshape", "flatten", "squeeze", "unsqueeze", "transpose",
                 "permute", "narrow", "t", "select", "expand", "expand_as", "detach", "chunk",
                 "split", "unbind", "contiguous", "unfold", "as_strided", "__getitem__"}


def _is_view(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _VIEW_FUNCTIONS
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    return False


def mutated_nodes(graph: fx.Graph, root: nn.Module) -> set[fx.Node]:
    """Nodes whose tensor is mutated in place somewhere, with every view aliasing it.

    A node that reads such a tensor may not be merged with another reader:
    the two reads may see different values.
    """
    mutated: set[fx.Node] = set()
    for node in graph.nodes:
        if is_inplace(node, root) and node.args and isinstance(node.args[0], fx.Node):
            mutated.add(node.args[0])
            mutated.add(node)
    # Close over aliases: views of a mutated tensor, and the bases it is a view of.
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if not _is_view(node) or not node.args or not isinstance(node.args[0], fx.Node):
                continue
            base = node.args[0]
            if (base in mutated) != (node in mutated):
                mutated.update((base, node))
                changed = True
    return mutated


def data_inputs(node: fx.Node, dependent: set[fx.Node]) -> list[fx.Node]:
    """The input nodes of ``node`` that carry data (depend on a graph input), in order."""
    seen: list[fx.Node] = []
    for arg in node.all_input_nodes:
        if arg in dependent and arg not in seen:
            seen.append(arg)
    return seen


def module_path(node: fx.Node) -> list[str]:
    """Qualified names of the modules that were being called when ``node`` was traced."""
    stack = node.meta.get("nn_module_stack") or {}
    return [entry[0] for entry in stack.values()]


def module_hyperparameters(module: nn.Module) -> tuple:
    """A hashable description of a module's hyper-parameters (types included).

    Public plain attributes (ints, floats, bools, strings, tuples, None) of the
    module, except ``training``. Types are part of the key because ``1 == 1.0
    == True`` in Python.
    """
    items = []
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or name == "training":
            continue
        key = literal_key(value)
        if key is not None:
            items.append((name, key))
    return (type(module),) + tuple(items)


def literal_key(value: Any) -> Any:
    """A hashable, type-tagged key for a literal argument (None if it is not a literal)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device,
                                           torch.memory_format, torch.layout)):
        return (type(value), value)
    if isinstance(value, (tuple, list, torch.Size)):
        keys = tuple(literal_key(v) for v in value)
        if any(k is None for k in keys):
            return None
        return (type(value), keys)
    if isinstance(value, slice):
        return (slice, literal_key(value.start), literal_key(value.stop), literal_key(value.step))
    if value is Ellipsis:
        return (type(value),)
    return None


def users_outside(node: fx.Node, allowed: Iterable[fx.Node]) -> list[fx.Node]:
    allowed = set(allowed)
    return [u for u in node.users if u not in allowed]


def module_call_counts(gm: torch.nn.Module) -> dict[int, int]:
    """How many graph nodes call each module (by ``id``), through fxnas runtime modules too.

    A stateful module (a BatchNorm updating running statistics) called more
    than once must keep the order of its calls; one called once may move.
    """
    counts: dict[int, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        for target in [module, *_referenced_modules(module)]:
            counts[id(target)] = counts.get(id(target), 0) + 1
    return counts


def _referenced_modules(module: nn.Module) -> list[nn.Module]:
    found = []
    for value in vars(module).values():
        if type(value).__name__ == "ModuleReferences":
            for referenced in value.modules:
                if referenced is not None:
                    found.append(referenced)
                    found.extend(_referenced_modules(referenced))
    return found


def is_stateful_module(module: nn.Module) -> bool:
    """Modules whose call changes their own state (running statistics), directly or through references."""
    for target in [module, *_referenced_modules(module)]:
        if isinstance(target, _NORM_TYPES) and target.track_running_stats:
            return True
    return False


def common_prefix(sequences: Iterable[Sequence[Any]]) -> list[Any]:
    """The longest common prefix of some sequences (``[]`` for none)."""
    sequences = [list(s) for s in sequences]
    if not sequences:
        return []
    common = sequences[0]
    for other in sequences[1:]:
        k = 0
        while k < min(len(common), len(other)) and common[k] == other[k]:
            k += 1
        common = common[:k]
    return common
