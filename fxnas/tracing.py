"""NAS-aware torch.fx tracing: ``fxnas.trace(model, example_inputs)``.

Plain ``torch.fx.symbolic_trace`` fails, or is silently wrong, on real
supernets. This tracer keeps the module structure of fx (``call_module``
nodes for ``torch.nn`` layers) and adds what supernets need:

* **Values while tracing.** Every node is also evaluated on fake tensors
  (:mod:`fxnas.values`), so the tracer knows each proxy's shape and dtype.
* **Iteration and ``len``** over a proxy of known leading size
  (``zip(ops, weights)`` in either order): the proxy yields ``proxy[i]``
  lazily for ``i < n``, so no out-of-range ``getitem`` is ever created.
* **Branches on shapes** (``if a.shape[2] == x.shape[2]``) are resolved with
  the example inputs; each decision that depends on an input is recorded as a
  guard node (:func:`fxnas.ops.check_traced_value`) that raises at run time if
  an input would have taken the other branch.
* **Plain-tensor architecture weights** (DARTS keeps its alphas as plain
  tensors, neither Parameters nor buffers) become ``get_attr`` nodes that read
  the very same tensor objects, so they stay live: optimizer updates are seen
  and gradients reach them. Plain ``fx`` evaluates ``softmax(alphas)`` eagerly
  and freezes the result as a constant.
* **Module names that are not identifiers** (``edges["1<-0"]``) work.
* **Clear errors** for what no symbolic trace can follow: Python control flow
  or numbers that depend on tensor values (``.item()``, ``if tensor:``) and
  Python-level random choices in ``forward`` (SETN, ENAS). The error names the
  user's file and line and says what to do instead.
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import random
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.fx as fx
from torch.fx.proxy import Attribute

from . import ops
from .errors import (
    DataDependentControlFlowError,
    FrozenTensorError,
    NondeterministicTraceError,
    PlainTensorAttributeWarning,
    TraceError,
    UnusedParametersWarning,
    format_user_frame,
    user_frame,
)
from .rewrite import build_graph_module
from .values import VALUE_KEY, FakeEvaluator, UnknownValue, describe_value

__all__ = ["trace", "NASTracer", "FXNAS_META_KEY", "is_fxnas_traced"]

#: Key of the dict that fxnas keeps in ``GraphModule.meta``.
FXNAS_META_KEY = "fxnas"

_ONE_HOT_HINT = (
    "For single-path methods (GDAS, ROME) write the edge in the dense one-hot form "
    "`sum(hardwts[m] * op_m(x) for m ...)` with a straight-through Gumbel one-hot "
    "`hardwts = one_hot - probs.detach() + probs`: it is traceable, and after "
    "fxnas.simplify a step costs about one candidate while every alpha still gets a gradient."
)

# Tensor methods that turn tensor values into Python values.
_VALUE_METHODS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"}

_PYTHON_RANDOM_FUNCTIONS = (
    "random", "choice", "choices", "randint", "randrange", "sample", "shuffle",
    "uniform", "gauss", "normalvariate", "betavariate", "expovariate", "triangular",
    "getrandbits",
)
_NUMPY_RANDOM_FUNCTIONS = (
    "rand", "randn", "randint", "random", "choice", "permutation", "shuffle",
    "uniform", "normal", "random_sample",
)


def _data_dependent_error(what: str) -> DataDependentControlFlowError:
    return DataDependentControlFlowError(
        f"fxnas.trace: {what} at {format_user_frame()}.\n"
        "A symbolic trace records operations, not tensor values, so it cannot follow "
        "Python control flow or Python numbers that depend on tensor data (and a trace "
        "with concrete values would silently specialise the graph to one batch). "
        "Express it with tensor operations (torch.where, masking, multiplication by a "
        "one-hot tensor) instead.\n" + _ONE_HOT_HINT
    )


class _NASProxyMixin:
    """Python protocol methods that plain fx proxies refuse, answered from example values."""

    tracer: "NASTracer"

    def __len__(self) -> int:
        return self.tracer.proxy_len(self)  # type: ignore[arg-type]

    def __int__(self) -> int:
        return int(self.tracer.proxy_number(self, "int()"))  # type: ignore[arg-type]

    def __index__(self) -> int:
        return int(self.tracer.proxy_number(self, "use as an index"))  # type: ignore[arg-type]

    def __float__(self) -> float:
        return float(self.tracer.proxy_number(self, "float()"))  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> "NASAttribute":
        return NASAttribute(self, name)  # type: ignore[arg-type]


class NASProxy(_NASProxyMixin, fx.Proxy):
    """A proxy whose node carries its example value in ``node.meta``."""


class NASAttribute(_NASProxyMixin, Attribute):
    """``proxy.attr``: becomes a ``getattr`` node, or a method call when called."""


@contextlib.contextmanager
def _forbid_python_random() -> Iterator[None]:
    """Make Python-level random draws during tracing raise a clear error."""

    def forbidden(module_name: str, name: str) -> Callable[..., Any]:
        def draw(*args: Any, **kwargs: Any) -> Any:
            raise NondeterministicTraceError(
                f"fxnas.trace: forward calls {module_name}.{name}() at {format_user_frame()}.\n"
                "A trace would bake this one random draw into the graph (for example one "
                "sampled sub-network, as SETN's and ENAS's forward do) and reuse it at every "
                "step. Sample with torch operations inside forward (they stay random in the "
                "graph), pass the sampled choice as an input, or trace the deterministic "
                "mode of the model.\n" + _ONE_HOT_HINT
            )

        return draw

    patched: list[tuple[Any, str, Any]] = []
    targets: list[tuple[Any, str, Iterable[str]]] = [(random, "random", _PYTHON_RANDOM_FUNCTIONS)]
    try:
        import numpy.random as np_random

        targets.append((np_random, "numpy.random", _NUMPY_RANDOM_FUNCTIONS))
    except ImportError:  # pragma: no cover - numpy ships with torch
        pass
    for module, module_name, names in targets:
        for name in names:
            if hasattr(module, name):
                patched.append((module, name, getattr(module, name)))
                setattr(module, name, forbidden(module_name, name))
    try:
        yield
    finally:
        for module, name, original in reversed(patched):
            setattr(module, name, original)


@contextlib.contextmanager
def _plain_tensors_as_buffers(root: torch.nn.Module) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Temporarily register plain tensor attributes as non-persistent buffers.

    Buffers are traced as ``get_attr`` proxies, so ``softmax(self.alphas)`` is
    recorded in the graph instead of being computed once, eagerly, while
    tracing. The user's modules are restored exactly on exit.
    """
    moved: list[tuple[torch.nn.Module, str, torch.Tensor]] = []
    qualified: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for prefix, module in root.named_modules(remove_duplicate=False):
        if id(module) in seen:
            continue
        seen.add(id(module))
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                del module.__dict__[name]
                module.register_buffer(name, value, persistent=False)
                moved.append((module, name, value))
                qualified.append((f"{prefix}.{name}" if prefix else name, value))
    try:
        yield qualified
    finally:
        for module, name, value in moved:
            module._buffers.pop(name, None)
            module._non_persistent_buffers_set.discard(name)
            module.__dict__[name] = value


class NASTracer(fx.Tracer):
    """A torch.fx tracer that evaluates every node on fake tensors as it records it."""

    def __init__(
        self,
        example_inputs: Sequence[Any],
        leaf_modules: Sequence[type | str] = (),
    ) -> None:
        super().__init__(param_shapes_constant=False)
        # fx's per-node stack traces cost more than the rest of tracing; fxnas's errors
        # and guards take the user's line from the live stack instead.
        self.record_stack_traces = False
        self.proxy_buffer_attributes = True
        self.example_inputs = list(example_inputs)
        self.extra_leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
        self.extra_leaf_names = {m for m in leaf_modules if isinstance(m, str)}
        self._placeholder_index = 0
        self._evaluator: FakeEvaluator | None = None
        self._input_dependent: set[fx.Node] = set()
        self._grad_mode_stack: list[tuple[bool, fx.Node]] = []
        self._graph_grad_mode = True

    # -- fx hooks ---------------------------------------------------------------

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:  # type: ignore[override]
        self._evaluator = FakeEvaluator(root)
        self._placeholder_index = 0
        self._graph_grad_mode = torch.is_grad_enabled()
        self._grad_mode_stack = []
        return super().trace(root, concrete_args)

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.extra_leaf_types) or module_qualified_name in self.extra_leaf_names:
            return True
        if type(m).__module__ == "fxnas.modules":  # fxnas's runtime modules (a plugged model traced again)
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return NASProxy(node, self)

    def call_module(self, m: torch.nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        """Trace a module call; tag pass-through results with the module's name.

        A module whose forward returns its input unchanged (an Identity that
        is traced through) leaves no node in the graph. The returned proxy is
        tagged so that the node that consumes it can record which module the
        value came out of: that is how a skip-connect candidate gets its name.
        """
        result = super().call_module(m, forward, args, kwargs)
        inputs = [a for a in args if isinstance(a, fx.Proxy)]
        if isinstance(result, fx.Proxy) and any(result.node is a.node for a in inputs):
            tagged = NASProxy(result.node, self)
            tagged.passthrough_module = self.path_of_module(m)  # type: ignore[attr-defined]
            return tagged
        return result

    def create_proxy(  # type: ignore[override]
        self,
        kind: str,
        target: Any,
        args: tuple,
        kwargs: dict,
        name: str | None = None,
        type_expr: Any = None,
        proxy_factory_fn: Any = None,
    ) -> fx.Proxy:
        if kind == "call_method" and target in _VALUE_METHODS:
            raise _data_dependent_error(f"`.{target}()` turns a tensor into a Python value")
        if kind == "output":
            while self._grad_mode_stack:
                self._record_grad_mode(self._grad_mode_stack[-1][0])
        elif kind in ("call_function", "call_method", "call_module"):
            self._record_grad_mode(torch.is_grad_enabled())
        passthrough = _passthrough_tags((args, kwargs))
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        if passthrough:
            node.meta["fxnas_passthrough"] = passthrough
        node.meta["grad_enabled"] = torch.is_grad_enabled()
        node.meta[VALUE_KEY] = self._evaluate(node)
        if node.op == "placeholder" or any(n in self._input_dependent for n in node.all_input_nodes):
            self._input_dependent.add(node)
        return proxy

    def _record_grad_mode(self, enabled: bool) -> None:
        """Record a grad-mode change (``with torch.no_grad():``) as nodes of the graph.

        Entering a mode records ``previous = enter_grad_mode(mode)``; coming back
        to the mode below records ``exit_grad_mode(previous)``, so the graph
        restores the caller's mode rather than assuming one.
        """
        if enabled == self._graph_grad_mode:
            return
        if self._grad_mode_stack and self._grad_mode_stack[-1][0] == enabled:
            _, previous = self._grad_mode_stack.pop()
            node = self.graph.create_node("call_function", ops.exit_grad_mode, (previous,), {})
        else:
            node = self.graph.create_node("call_function", ops.enter_grad_mode, (enabled,), {})
            self._grad_mode_stack.append((self._graph_grad_mode, node))
        node.meta["grad_enabled"] = enabled
        node.meta[VALUE_KEY] = None
        self._graph_grad_mode = enabled

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor) and not isinstance(a, torch.nn.Parameter):
            if a.requires_grad and a.grad_fn is not None and a not in self.tensor_attrs:
                raise FrozenTensorError(
                    f"fxnas.trace: a tensor that requires grad (computed by {type(a.grad_fn).__name__}) "
                    f"was computed outside the graph and would be frozen into it as a constant, at "
                    f"{format_user_frame()}.\nThis happens when architecture weights are held in a "
                    "container the tracer cannot see (a Python list or dict of tensors) and an "
                    "operation is applied to them eagerly. Keep them as module attributes "
                    "(self.alphas = ...), Parameters or buffers, or pass them as forward inputs."
                )
        return super().create_arg(a)

    def to_bool(self, obj: fx.Proxy) -> bool:
        value = self._value(obj)
        if isinstance(value, (bool, int, float)) and not isinstance(value, torch.Tensor):
            self._guard(obj, builtins.bool(value), "the truth value of")
            return builtins.bool(value)
        raise _data_dependent_error("Python control flow (`if`, `while`, `and`/`or`, `assert`) on a tensor value")

    def iter(self, obj: fx.Proxy) -> Iterator[fx.Proxy]:
        length = self._length(obj, "iterate over")
        self._guard_length(obj, length)
        return (obj[i] for i in range(length))

    # -- helpers used by the proxies --------------------------------------------

    def proxy_len(self, obj: fx.Proxy) -> int:
        length = self._length(obj, "take len() of")
        self._guard_length(obj, length)
        return length

    def proxy_number(self, obj: fx.Proxy, use: str) -> int | float:
        value = self._value(obj)
        if isinstance(value, (bool, int, float)) and not isinstance(value, torch.Tensor):
            self._guard(obj, value, f"the value ({use}) of")
            return value
        raise _data_dependent_error(f"{use} of a tensor value")

    def _value(self, obj: fx.Proxy) -> Any:
        value = obj.node.meta.get(VALUE_KEY)
        if isinstance(value, UnknownValue):
            raise TraceError(
                f"fxnas.trace: the value of `{obj.node.format_node()}` is needed at "
                f"{format_user_frame()}, but it could not be computed on fake tensors "
                f"({value.reason})."
            )
        return value

    def _length(self, obj: fx.Proxy, verb: str) -> int:
        value = self._value(obj)
        if isinstance(value, torch.Tensor) or hasattr(value, "shape") and hasattr(value, "dtype"):
            shape = tuple(value.shape)
            if not shape:
                raise TraceError(f"fxnas.trace: cannot {verb} a 0-d tensor at {format_user_frame()}")
            return int(shape[0])
        if isinstance(value, (tuple, list, torch.Size)):
            return len(value)
        raise TraceError(f"fxnas.trace: cannot {verb} a value of type {type(value).__name__} at {format_user_frame()}")

    def _guard_length(self, obj: fx.Proxy, length: int) -> None:
        node = obj.node
        if node in self._input_dependent:
            length_proxy = self.create_proxy("call_function", builtins.len, (obj,), {})
            self._guard(length_proxy, length, "the length of")

    def _guard(self, obj: fx.Proxy, expected: Any, what: str) -> None:
        """Record a run-time check for a Python decision taken on an input-dependent value."""
        if obj.node not in self._input_dependent:
            return
        frame = user_frame()
        where = f"{frame.filename}:{frame.lineno}" if frame else "?"
        code = frame.line.strip() if frame and frame.line else obj.node.name
        description = f"{what} `{code}` ({where})"
        self.create_proxy("call_function", ops.check_traced_value, (obj, expected, description), {})

    def _evaluate(self, node: fx.Node) -> Any:
        assert self._evaluator is not None
        if node.op == "placeholder":
            index = self._placeholder_index
            self._placeholder_index += 1
            if index < len(self.example_inputs):
                return self._evaluator.fake(self.example_inputs[index])
            return UnknownValue(f"no example input for `{node.target}`")
        if node.op == "output":
            return None
        args = fx.node.map_arg(node.args, lambda n: n.meta[VALUE_KEY])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: n.meta[VALUE_KEY])
        return self._evaluator.run(node.op, node.target, args, kwargs)


def _passthrough_tags(value: Any) -> list[tuple[str, str]]:
    """``(node name, module)`` for every tagged pass-through proxy among the arguments."""
    tags: list[tuple[str, str]] = []

    def visit(item: Any) -> None:
        if isinstance(item, (tuple, list)):
            for element in item:
                visit(element)
        elif isinstance(item, dict):
            for element in item.values():
                visit(element)
        elif isinstance(item, fx.Proxy) and "passthrough_module" in vars(item):
            tags.append((item.node.name, item.passthrough_module))

    visit(value)
    return tags


def _as_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _defaults_beyond(model: torch.nn.Module, n_inputs: int) -> dict[str, Any]:
    """Forward parameters not covered by the example inputs that have defaults."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return {}
    concrete = {}
    params = [p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for param in params[n_inputs:]:
        if param.default is not inspect.Parameter.empty:
            concrete[param.name] = param.default
        else:
            raise TraceError(
                f"fxnas.trace: forward of {type(model).__name__} takes `{param.name}` but only "
                f"{n_inputs} example input(s) were given; pass one example per forward argument."
            )
    return concrete


def _warn_about_unused_parameters(model: torch.nn.Module, graph: fx.Graph) -> None:
    """Warn when modules with parameters are never used by the traced graph.

    A forward that runs a sub-network chosen in Python (ENAS reads a sampled
    architecture from an attribute; SETN's "select" and "dynamic" modes)
    leaves the other candidates out of the graph: the trace is that one
    sub-network. fxnas cannot see such a choice, but it can see its effect.
    """
    used: set[str] = set()
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            used.add(node.target)
    unused = [
        name for name, module in model.named_modules()
        if name and next(module.parameters(recurse=False), None) is not None
        and not any(name == u or name.startswith(u + ".") or u.startswith(name + ".") for u in used)
    ]
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        warnings.warn(
            f"fxnas.trace: {len(unused)} modules with parameters are not used by the traced graph "
            f"({shown}). If forward picks a sub-network in Python (a sampled architecture, an "
            "argmax), the graph holds only that sub-network: trace the dense form instead.",
            UnusedParametersWarning,
            stacklevel=3,
        )


def _drop_defaulted_placeholders(graph: fx.Graph, n_inputs: int) -> None:
    """Remove the inputs that the trace specialised to their default values.

    fx keeps a placeholder (and an ``_assert_is_none`` check) for each
    argument given as a concrete value. The graph was specialised to the
    default, so the argument is removed from the signature instead: passing
    it is a clear TypeError, never silently ignored. (fx also fails to reload
    a pickled graph that calls ``_assert_is_none``.)
    """
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node in placeholders[n_inputs:]:
        for user in list(node.users):
            if getattr(user.target, "__name__", "") == "_assert_is_none" and not user.users:
                graph.erase_node(user)
        if not node.users:
            graph.erase_node(node)


def is_fxnas_traced(gm: torch.nn.Module) -> bool:
    """Whether ``gm`` is a GraphModule produced by :func:`trace` (or by fxnas passes)."""
    return isinstance(gm, fx.GraphModule) and FXNAS_META_KEY in getattr(gm, "meta", {})


def trace(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Sequence[type | str] = (),
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule, with the NAS-aware handling described above.

    Args:
        model: the supernet (or any nn.Module).
        example_inputs: a tensor or a tuple of forward arguments. Only their
            shapes, dtypes and devices are used (through fake tensors); no
            forward pass of the real model is run.
        leaf_modules: extra module types or qualified names to keep as single
            ``call_module`` nodes instead of tracing through them.

    Returns:
        A GraphModule that shares the model's parameters and buffers (the same
        objects). ``gm.meta["fxnas"]`` records the example input shapes.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fxnas.trace expects an nn.Module, got {type(model).__name__}")
    inputs = _as_tuple(example_inputs)
    concrete_args = _defaults_beyond(model, len(inputs)) or None
    tracer = NASTracer(inputs, leaf_modules)
    with _plain_tensors_as_buffers(model) as plain_tensors, _forbid_python_random():
        graph = tracer.trace(model, concrete_args)
    _drop_defaulted_placeholders(graph, len(inputs))
    # Built after the plain tensors are plain attributes again, so they stay plain in the GraphModule.
    gm = build_graph_module(model, graph, model.__class__.__name__)
    read = {n.target for n in graph.nodes if n.op == "get_attr"}
    kept_plain = [name for name, _ in plain_tensors if name in read]
    if kept_plain:
        warnings.warn(
            f"fxnas.trace: {', '.join(kept_plain)} are plain tensors (neither Parameters nor "
            "buffers); the graph reads the same tensor objects, so optimizer updates and "
            "gradients reach them. As in your model, .to()/.cuda() do not move them.",
            PlainTensorAttributeWarning,
            stacklevel=2,
        )
    _warn_about_unused_parameters(model, graph)
    gm.meta[FXNAS_META_KEY] = {
        "example_inputs": [describe_value(tracer._evaluator.fake(x)) for x in inputs],  # type: ignore[union-attr]
        "plain_tensor_attributes": kept_plain,
    }
    for node in gm.graph.nodes:
        node.meta[VALUE_KEY] = describe_value(node.meta.get(VALUE_KEY))
    return gm
