"""``fxnas.plug``: simplify the cells of a user's model in place.

``plug`` keeps the user's model object, its methods (``genotype()``,
``arch_parameters()``, mode setters, ``new()``), its parameter objects and its
``state_dict`` keys; only the ``forward`` of each module that contains mixed
edges (a cell) is replaced by the forward of that cell's simplified
GraphModule. Everything else a cell has (attributes, other methods such as an
alternative ``forward_gdas``) is the cell's own and keeps working.

    model = build_my_supernet()
    w_optimizer = torch.optim.SGD(model.weights(), ...)      # built before plug: still valid
    report = fxnas.plug(model, example_inputs, mode="exact")
    ... the training loop, unchanged ...
    fxnas.unplug(model)                                       # back to the original forwards
"""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn

from .analysis import find_mixed_edges
from .errors import FxnasError, TracedValueGuardError
from .graph_utils import module_path
from .pipeline import simplify
from .report import SimplifyReport
from .tracing import _as_tuple, trace

__all__ = ["plug", "unplug", "PlugReport", "is_plugged"]

_SIMPLIFIED = "_fxnas_simplified"
_RUNTIME_PREFIX = "fxnas_"


@dataclass
class PlugReport:
    """What :func:`plug` did: the simplified modules and the report of each."""

    mode: str
    modules: list[str]
    reports: dict[str, SimplifyReport] = field(default_factory=dict)

    @property
    def mixed_edges(self) -> list:
        return [edge for report in self.reports.values() for edge in report.mixed_edges]

    def __getitem__(self, key: str) -> Any:
        return {"mode": self.mode, "modules": self.modules, "mixed_edges": self.mixed_edges}[key]

    def __str__(self) -> str:
        lines = [f"fxnas.plug (mode={self.mode}): {len(self.modules)} modules simplified in place, "
                 f"{len(self.mixed_edges)} mixed edges"]
        for name in self.modules:
            report = self.reports[name]
            lines.append(f"  {name or '<model>'}: {len(report.mixed_edges)} edges, "
                         f"{report.nodes_before} -> {report.nodes_after} nodes")
        return "\n".join(lines)


def is_plugged(module: nn.Module) -> bool:
    return _SIMPLIFIED in vars(module)


def _cell_of(edge, root_names: set[str]) -> str:
    """The outermost proper submodule that computes the edge's sum ('' : the model itself)."""
    stack = module_path(edge.output)
    for name in stack:
        if name in root_names and name:
            return name
    return ""


def _capture_inputs(model: nn.Module, inputs: tuple, names: Sequence[str]) -> dict[str, "_Call"]:
    """Run the model once (no grad, state restored) and record each module's positional inputs."""
    captured: dict[str, tuple] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name) if name else model

        def hook(mod, args, kwargs, name=name):
            if name not in captured:
                captured[name] = _positional(mod, args, kwargs, name)

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)}
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            current = model.state_dict(keep_vars=True)
            for key, value in state.items():
                current[key].copy_(value)
    missing = [n for n in names if n not in captured]
    if missing:
        raise FxnasError(f"fxnas.plug: {', '.join(missing)} did not run in forward with these example inputs")
    return captured


def _positional(module: nn.Module, args: tuple, kwargs: dict, name: str) -> "_Call":
    """The module's arguments as tensors to trace with, and the trailing defaults they were called with."""
    signature = inspect.signature(module.forward)
    parameters = [p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    names = [p.name for p in parameters if p.name in bound.arguments]
    values = [bound.arguments[n] for n in names]
    count = len(values)
    while count and values[count - 1] is parameters[count - 1].default:
        count -= 1  # trailing arguments left at their defaults (None, ...): the trace specialises on them
    for arg_name, value in zip(names[:count], values[:count]):
        if not isinstance(value, torch.Tensor):
            raise FxnasError(
                f"fxnas.plug: {name or 'the model'} is called with {arg_name}={type(value).__name__}; "
                "plug simplifies modules whose forward takes tensors (or arguments left at their defaults)"
            )
    return _Call(tuple(v.detach() for v in values[:count]), tuple(names), tuple(values[count:]))


@dataclass
class _Call:
    tensors: tuple
    names: tuple
    defaults: tuple


class _PluggedForward:
    """A cell's forward routed through its simplified GraphModule (same call signature as the cell).

    Arguments the cell was simplified with at their default values (``edge_weights=None``)
    must still be those: a different value is refused, never silently ignored.
    """

    def __init__(self, simplified: nn.Module, call: _Call, module_name: str):
        self.simplified = simplified
        self.names = call.names
        self.traced = len(call.tensors)
        self.defaults = call.defaults
        self.module_name = module_name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        values = list(args)
        for arg_name in self.names[len(values):]:
            if arg_name not in kwargs:
                break
            values.append(kwargs.pop(arg_name))
        if kwargs:
            raise TypeError(f"{self.module_name or 'forward'}() got unexpected keyword arguments {sorted(kwargs)}")
        for position, value in enumerate(values[self.traced:]):
            expected = self.defaults[position] if position < len(self.defaults) else None
            if value is not expected:
                raise TracedValueGuardError(
                    f"fxnas.plug: {self.module_name or 'the model'} was simplified with "
                    f"{self.names[self.traced + position]}={expected!r}; it got {type(value).__name__}. "
                    "Plug again with example inputs that pass this argument."
                )
        return self.simplified(*values[: self.traced])


def _install(module: nn.Module, simplified: nn.Module, call: _Call, name: str) -> None:
    """Route ``module``'s forward through ``simplified``, registering its runtime modules under ``module``."""
    module.__dict__[_SIMPLIFIED] = simplified
    module.__dict__["forward"] = _PluggedForward(simplified, call, name)
    for child_name, child in simplified.named_children():
        if type(child).__module__.startswith("fxnas."):
            # No persistent state: state_dict keys are unchanged; registered so .to()/.train() reach them.
            module.add_module(_RUNTIME_PREFIX + child_name, child)


def unplug(model: nn.Module) -> list[str]:
    """Undo :func:`plug` on every module of ``model``; returns the names restored."""
    restored = []
    for name, module in model.named_modules():
        if not is_plugged(module):
            continue
        del module.__dict__[_SIMPLIFIED]
        module.__dict__.pop("forward", None)
        for child in list(module._modules):
            if child.startswith(_RUNTIME_PREFIX):
                del module._modules[child]
        restored.append(name)
    return restored


def plug(model: nn.Module, example_inputs: Any, mode: str = "exact", **simplify_options: Any) -> PlugReport:
    """Simplify, in place, every module of ``model`` that contains mixed edges.

    The cells are found by tracing the whole model once; each cell is then
    traced and simplified on its own inputs (recorded by one forward pass
    without gradients; running statistics and RNG are restored), and its
    ``forward`` is routed through the simplified GraphModule. When the mixed
    edges are written in the model's own forward, the model's forward is
    routed instead. Calling ``plug`` on a plugged model re-plugs it.
    """
    if any(is_plugged(m) for m in model.modules()):
        unplug(model)
    inputs = _as_tuple(example_inputs)
    names = {name for name, _ in model.named_modules()}
    edges = find_mixed_edges(trace(model, inputs))
    cells = sorted({_cell_of(edge, names) for edge in edges}, key=lambda n: (n.count("."), n))
    outermost = [c for c in cells if not any(c != o and (o == "" or c.startswith(o + ".")) for o in cells)]
    report = PlugReport(mode=mode, modules=outermost)
    if not outermost:
        return report
    captured = _capture_inputs(model, inputs, outermost)
    for name in outermost:
        module = model.get_submodule(name) if name else model
        call = captured[name]
        simplified = simplify(module, call.tensors, mode=mode, **simplify_options)
        _install(module, simplified, call, name)
        report.reports[name] = simplified.meta["fxnas"]["report"]
    return report
