"""Example values of graph nodes, computed on fake tensors.

The tracer needs the value of every node while it traces (to iterate over a
proxy, take its ``len``, or resolve a branch on shapes), and the passes need
shapes and dtypes of the nodes they rewrite. Both come from running each node
on *fake* tensors (``FakeTensorMode``): shapes, dtypes and devices are exact,
no data is computed, and nothing in the user's model is mutated (a module is
run with fake copies of its parameters and buffers).

What a node's value looks like after tracing (``node.meta["fxnas_value"]``):
a :class:`TensorMetadata` for a tensor, a tuple/list of values for a
container, a plain Python value (int, bool, ``torch.Size``, dtype, device)
otherwise, or :class:`UnknownValue` when it could not be computed.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx._symbolic_trace import _orig_module_call, _orig_module_getattr
from torch.fx.node import map_aggregate, map_arg

__all__ = [
    "TensorMetadata",
    "UnknownValue",
    "FakeEvaluator",
    "describe_value",
    "propagate_values",
    "VALUE_KEY",
    "tensor_meta",
]

VALUE_KEY = "fxnas_value"


@dataclass(frozen=True)
class TensorMetadata:
    """Shape, dtype, strides and ``requires_grad`` of a tensor value (no data).

    Plain values only, so it survives ``deepcopy`` and ``torch.save`` (fx's own
    TensorMetadata holds a memory format that pickle protocol 2 cannot save).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    stride: tuple[int, ...]
    requires_grad: bool

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "TensorMetadata":
        return cls(tuple(int(s) for s in tensor.shape), tensor.dtype, tuple(int(s) for s in tensor.stride()),
                   bool(tensor.requires_grad))


@dataclass(frozen=True)
class UnknownValue:
    """The value of a node that could not be computed on fake tensors."""

    reason: str

    def __repr__(self) -> str:
        return f"UnknownValue({self.reason})"


_SHAPE_PRESERVING_NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm)


@contextlib.contextmanager
def _unpatched_module_calls():
    """Undo, for a moment, fx's patching of ``nn.Module.__call__``/``__getattr__``.

    While a trace is running, calling a module records it; evaluating a leaf
    module on fake tensors must run it instead.
    """
    patched_call, patched_getattr = torch.nn.Module.__call__, torch.nn.Module.__getattr__
    if patched_call is _orig_module_call and patched_getattr is _orig_module_getattr:
        yield  # not tracing: nothing to undo (and class attribute writes are slow)
        return
    torch.nn.Module.__call__ = _orig_module_call  # type: ignore[method-assign]
    torch.nn.Module.__getattr__ = _orig_module_getattr  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.__call__ = patched_call  # type: ignore[method-assign]
        torch.nn.Module.__getattr__ = patched_getattr  # type: ignore[method-assign]


def _fetch_attr(root: torch.nn.Module, target: str) -> Any:
    value: Any = root
    for atom in target.split("."):
        value = getattr(value, atom)
    return value


class FakeEvaluator:
    """Runs single graph operations on fake tensors.

    Real tensors (parameters, buffers, plain tensor attributes) are converted
    to fake ones once and memoised, so a parameter used by many nodes maps to
    one fake tensor.
    """

    def __init__(self, root: torch.nn.Module):
        self.root = root
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._fakes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def fake(self, value: Any) -> Any:
        """The fake counterpart of ``value`` (containers are mapped element-wise)."""

        def convert(item: Any) -> Any:
            if isinstance(item, torch.Tensor) and not self.mode.is_our_fake(item):
                hit = self._fakes.get(id(item))
                if hit is None or hit[0] is not item:
                    hit = (item, self.mode.from_tensor(item))
                    self._fakes[id(item)] = hit
                return hit[1]
            return item

        return map_aggregate(value, convert)

    def from_metadata(self, meta: TensorMetadata, device: torch.device | None = None) -> torch.Tensor:
        """A fake tensor with the shape, stride and dtype that ``meta`` records."""
        with self.mode:
            tensor = torch.empty_strided(
                tuple(meta.shape), tuple(meta.stride), dtype=meta.dtype, device=device or "cpu"
            )
        if meta.requires_grad and tensor.is_floating_point():
            tensor.requires_grad_(True)
        return tensor

    def run(self, op: str, target: Any, args: tuple, kwargs: dict) -> Any:
        """Evaluate one node (``op``/``target`` as in fx) on already-fake ``args``."""
        if any(isinstance(a, UnknownValue) for a in _flatten((args, kwargs))):
            return UnknownValue("an input of this node has an unknown value")
        try:
            if op in ("call_function", "call_method"):
                return self._run(op, target, args, kwargs)
            with _unpatched_module_calls():
                return self._run(op, target, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure just means "unknown"
            return UnknownValue(f"{type(exc).__name__}: {exc}".splitlines()[0][:200])

    def _run(self, op: str, target: Any, args: tuple, kwargs: dict) -> Any:
        if op == "get_attr":
            return self.fake(_fetch_attr(self.root, target))
        if op == "call_function":
            with self.mode:
                return target(*args, **kwargs)
        if op == "call_method":
            self_arg, *rest = args
            with self.mode:
                return getattr(self_arg, target)(*rest, **kwargs)
        if op == "call_module":
            module = self.root.get_submodule(target)
            if isinstance(module, _SHAPE_PRESERVING_NORMS) and len(args) == 1 and isinstance(args[0], torch.Tensor):
                # Same shape and dtype as the input; evaluating it would need the Python
                # value of num_batches_tracked when momentum is None.
                with self.mode:
                    return torch.empty_like(args[0])
            state = {
                name: self.fake(tensor)
                for name, tensor in list(module.named_parameters()) + list(module.named_buffers())
            }
            with self.mode:
                return torch.func.functional_call(module, state, tuple(args), dict(kwargs))
        return UnknownValue(f"cannot evaluate a {op} node")


def _flatten(value: Any) -> list:
    out: list = []
    map_aggregate(value, lambda item: out.append(item))
    return out


def describe_value(value: Any) -> Any:
    """Replace tensors in ``value`` by their :class:`TensorMetadata` (cheap to keep and copy)."""

    def describe(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return TensorMetadata.of(item)
        if isinstance(item, (torch.nn.Module,)):
            return UnknownValue("module")
        return item

    return map_aggregate(value, describe)


def tensor_meta(node: fx.Node) -> TensorMetadata | None:
    """The tensor metadata of ``node``'s value, or None when it is not one tensor."""
    value = node.meta.get(VALUE_KEY)
    return value if isinstance(value, TensorMetadata) else None


def propagate_values(gm: fx.GraphModule, placeholder_values: list[Any], only_missing: bool = False) -> int:
    """Compute ``node.meta[VALUE_KEY]`` for the nodes of ``gm`` on fake tensors.

    ``placeholder_values`` holds one entry per placeholder: a TensorMetadata
    (or a real/fake tensor) for tensor inputs, a plain value otherwise. With
    ``only_missing`` only nodes without a value are evaluated (a pass that
    inserts nodes leaves them without one); their inputs' fake tensors are
    rebuilt from the recorded metadata. Returns the number of nodes evaluated.
    """
    evaluator = FakeEvaluator(gm)
    fakes: dict[fx.Node, Any] = {}
    placeholders = iter(placeholder_values)

    def fake_of(node: fx.Node) -> Any:
        if node not in fakes:
            fakes[node] = _fake_from_description(evaluator, node.meta.get(VALUE_KEY))
        return fakes[node]

    evaluated = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            value = next(placeholders, UnknownValue("no example value for this input"))
            if only_missing and VALUE_KEY in node.meta:
                continue
            value = evaluator.from_metadata(value) if isinstance(value, TensorMetadata) else evaluator.fake(value)
        elif only_missing and VALUE_KEY in node.meta:
            continue
        elif node.op == "output":
            value = map_arg(node.args[0], fake_of)
        else:
            args = map_arg(node.args, fake_of)
            kwargs = map_arg(node.kwargs, fake_of)
            value = evaluator.run(node.op, node.target, args, kwargs)
        fakes[node] = value
        node.meta[VALUE_KEY] = describe_value(value)
        evaluated += 1
    return evaluated


def _fake_from_description(evaluator: FakeEvaluator, description: Any) -> Any:
    """A fake value with the recorded shapes and dtypes (inverse of :func:`describe_value`)."""

    def rebuild(item: Any) -> Any:
        if isinstance(item, TensorMetadata):
            return evaluator.from_metadata(item)
        return item

    if isinstance(description, TensorMetadata):
        return evaluator.from_metadata(description)
    if description is None:
        return UnknownValue("no recorded value")
    return map_aggregate(description, rebuild)


def is_getitem(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is operator.getitem
