"""``check_pass``: the one helper every pass test uses (STYLE.md).

It checks, for one pass on one model: the graph lints, the pass's
``modified`` flag is honest, the expected structural change happened (node
count delta, or a predicate), a second run changes nothing, and the rewritten
module is numerically equivalent to the original model (outputs, gradients of
inputs, parameters and architecture weights, buffer updates; train and eval)
— an independent reference, not the code under test.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

import fxnas
from fxnas.passes_base import PassResult
from fxnas.pipeline import PassSpec, run_pipeline
from fxnas.rewrite import cleanup, clone_graph_module
from fxnas.testing import assert_equivalent
from fxnas.tracing import FXNAS_META_KEY
from fxnas.values import propagate_values

Pass = Callable[[fx.GraphModule], PassResult]


def prepared(model: torch.nn.Module, inputs: tuple, before: Sequence[Pass] = ()) -> fx.GraphModule:
    """Trace ``model`` and run the passes ``before`` (e.g. canonicalisation) on a copy."""
    traced = fxnas.trace(model, inputs)
    gm = clone_graph_module(traced)
    placeholders = gm.meta[FXNAS_META_KEY]["example_inputs"]
    propagate_values(gm, placeholders, only_missing=True)
    run_pipeline(gm, [PassSpec(p.__name__, p, "prerequisite", to_fixed_point=True) for p in before], placeholders)
    return gm


def check_pass(
    pass_fn: Pass,
    model: torch.nn.Module,
    inputs: tuple,
    *,
    before: Sequence[Pass] = (),
    modified: bool = True,
    node_delta: int | None = None,
    expect: Callable[[fx.GraphModule, PassResult], None] | None = None,
    arch_tensors: Sequence[torch.Tensor] = (),
    modes: Sequence[str] = ("train", "eval"),
) -> tuple[fx.GraphModule, PassResult]:
    gm = prepared(model, inputs, before)
    code_before, nodes_before = gm.code, len(gm.graph.nodes)
    result = pass_fn(gm)
    assert result.graph_module is gm
    cleanup(gm)
    gm.graph.lint()
    propagate_values(gm, gm.meta[FXNAS_META_KEY]["example_inputs"], only_missing=True)
    assert result.modified == modified, f"{pass_fn.__name__} reported modified={result.modified}"
    if not modified:
        assert gm.code == code_before, f"{pass_fn.__name__} changed a graph it said it left alone"
    if node_delta is not None:
        assert nodes_before - len(gm.graph.nodes) == node_delta, (
            f"{pass_fn.__name__} removed {nodes_before - len(gm.graph.nodes)} nodes, expected {node_delta}"
        )
    if expect is not None:
        expect(gm, result)
    code_after = gm.code
    again = pass_fn(gm)
    assert not again.modified and gm.code == code_after, f"a second {pass_fn.__name__} changed the graph"
    assert_equivalent(model, gm, inputs, arch_tensors=tuple(arch_tensors), modes=tuple(modes))
    return gm, result


def count(gm: fx.GraphModule, predicate: Callable[[fx.Node], bool]) -> int:
    return sum(1 for n in gm.graph.nodes if predicate(n))


def calls_module_type(gm: fx.GraphModule, module_type: type) -> Callable[[fx.Node], bool]:
    return lambda n: n.op == "call_module" and isinstance(gm.get_submodule(n.target), module_type)


def is_function(name: str) -> Callable[[fx.Node], Any]:
    return lambda n: n.op in ("call_function", "call_method") and getattr(n.target, "__name__", n.target) == name
