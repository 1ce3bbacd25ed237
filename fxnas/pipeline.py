"""The pass pipeline and ``fxnas.simplify``.

The pipeline is an explicit, ordered list of passes with one line of reason
each. After every pass that changed the graph, dead code is removed, the
graph is linted, recompiled, and the values (shapes) of new nodes are
computed; passes marked ``to_fixed_point`` run until they change nothing.
If a pass raises, the error says which pass failed after which others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from .analysis import find_mixed_edges
from .errors import FxnasError
from .passes_base import PassResult
from .report import PassRecord, SimplifyReport, describe_edges, operation_counts
from .rewrite import cleanup, clone_graph_module
from .tracing import FXNAS_META_KEY, is_fxnas_traced, trace
from .values import propagate_values

__all__ = ["PassSpec", "PassFailedError", "pipeline", "run_pipeline", "simplify", "MODES"]


class PassFailedError(FxnasError):
    """A pass raised; the message names the pass and the passes that ran before it."""


@dataclass(frozen=True)
class PassSpec:
    """One step of a pipeline: the pass, why it is there, and whether it iterates."""

    name: str
    run: Callable[[fx.GraphModule], PassResult]
    reason: str
    to_fixed_point: bool = False


def _exact_passes() -> list[PassSpec]:
    from passes.canonicalize_mixed_sums import canonicalize_mixed_sums
    from passes.fold_eval_bn import fold_eval_bn
    from passes.fuse_weighted_norm import fuse_weighted_norm
    from passes.hoist_shared import hoist_shared
    from passes.merge_linear import merge_linear
    from passes.prune_zero import prune_zero

    return [
        PassSpec("canonicalize_mixed_sums", canonicalize_mixed_sums,
                 "one weighted_sum node per mixed edge, whatever the spelling: later passes need one recogniser"),
        PassSpec("prune_zero", prune_zero,
                 "w*0 = 0: a zero candidate costs a product and a saved activation and contributes nothing"),
        PassSpec("hoist_shared", hoist_shared,
                 "equivalent ReLUs and pools on one tensor run once: fewer kernels, one saved activation",
                 to_fixed_point=True),
        PassSpec("fold_eval_bn", fold_eval_bn,
                 "conv -> BatchNorm is affine in eval mode: folded, ReLU-Conv-BN candidates become linear "
                 "(runs before merge_linear so that it can merge them)"),
        PassSpec("merge_linear", merge_linear,
                 "linear candidates on one tensor become one convolution: one kernel, nothing to save per candidate"),
        PassSpec("fuse_weighted_norm", fuse_weighted_norm,
                 "w * bn(x) as one batch norm with scaled affine: the BatchNorm's output is no longer saved"),
    ]


def _topo_passes() -> list[PassSpec]:
    from passes.float_shared import float_shared
    from passes.kernel_norm import kernel_norm

    exact = {spec.name: spec for spec in _exact_passes()}
    return [
        exact["canonicalize_mixed_sums"],
        exact["prune_zero"],
        exact["hoist_shared"],
        PassSpec("float_shared", float_shared,
                 "TopoNAS FMS (approximate): per-candidate BatchNorms / pointwise convs float past one merged "
                 "convolution, recursively for paths of different depth"),
        PassSpec("kernel_norm", kernel_norm,
                 "TopoNAS kernel normalisation: each kernel of a floated group normalised per output channel"),
        exact["fold_eval_bn"],
        exact["merge_linear"],
        exact["fuse_weighted_norm"],
    ]


MODES: dict[str, Callable[[], list[PassSpec]]] = {
    "exact": _exact_passes,
    "topo": _topo_passes,
}


def pipeline(mode: str = "exact") -> list[PassSpec]:
    """The ordered passes of ``mode`` ("exact" or "topo")."""
    if mode not in MODES:
        raise ValueError(f"fxnas: unknown mode {mode!r}; choose one of {sorted(MODES)}")
    return MODES[mode]()


def _merge_stats(total: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    for key, value in new.items():
        if key not in total:
            total[key] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total[key] + value
        elif isinstance(value, list):
            total[key] = list(total[key]) + value
        elif isinstance(value, dict):
            merged = dict(total[key])
            for k, v in value.items():
                merged[k] = merged.get(k, 0) + v if isinstance(v, (int, float)) else v
            total[key] = merged
        else:
            total[key] = value
    return total


def run_pipeline(
    gm: fx.GraphModule, passes: Sequence[PassSpec], placeholder_values: list[Any], max_iterations: int = 16
) -> list[PassRecord]:
    """Run ``passes`` on ``gm`` in place; returns one record per pass."""
    records: list[PassRecord] = []
    for spec in passes:
        start, nodes_before = time.perf_counter(), len(gm.graph.nodes)
        stats: dict[str, Any] = {}
        modified, iterations = False, 0
        while iterations < max_iterations:
            iterations += 1
            try:
                result = spec.run(gm)
                if result.modified:
                    cleanup(result.graph_module)
                    propagate_values(result.graph_module, placeholder_values, only_missing=True)
            except Exception as exc:
                before = ", ".join(r.name for r in records) or "no other pass"
                raise PassFailedError(f"fxnas: pass {spec.name!r} failed (after {before}): "
                                      f"{type(exc).__name__}: {exc}") from exc
            gm = result.graph_module
            _merge_stats(stats, result.stats)
            modified = modified or result.modified
            if not (spec.to_fixed_point and result.modified):
                break
        records.append(PassRecord(spec.name, spec.reason, modified, nodes_before, len(gm.graph.nodes),
                                  iterations, time.perf_counter() - start, stats))
    return records


def simplify(
    gm_or_model: torch.nn.Module,
    example_inputs: Any = None,
    mode: str = "exact",
    *,
    passes: Sequence[PassSpec] | None = None,
    leaf_modules: Sequence[type | str] = (),
) -> fx.GraphModule:
    """Simplify a supernet: a new GraphModule computing the same function, faster.

    Args:
        gm_or_model: a GraphModule from :func:`fxnas.trace`, or any nn.Module
            (then ``example_inputs`` is required and it is traced first).
        example_inputs: a tensor or tuple of forward arguments (shapes only).
        mode: ``"exact"`` (numerically equivalent) or ``"topo"`` (the TopoNAS
            approximation; see DESIGN.md).
        passes: run these passes instead of the mode's pipeline.
        leaf_modules: passed to :func:`fxnas.trace`.

    Returns:
        A new GraphModule that shares the Parameters and buffers of the input
        (the same objects): optimizers built on the original parameters keep
        working and ``state_dict()`` keys are unchanged. ``fxnas.explain`` on
        it returns what was found and rewritten.
    """
    specs = list(passes) if passes is not None else pipeline(mode)
    start = time.perf_counter()
    if is_fxnas_traced(gm_or_model):
        source = gm_or_model
    else:
        if example_inputs is None:
            raise FxnasError(
                "fxnas.simplify: pass example_inputs (a tensor or a tuple of forward arguments) "
                f"to trace {type(gm_or_model).__name__}, or a GraphModule from fxnas.trace"
            )
        source = trace(gm_or_model, example_inputs, leaf_modules=leaf_modules)
    placeholders = source.meta[FXNAS_META_KEY]["example_inputs"]
    simplified = clone_graph_module(source)
    propagate_values(simplified, placeholders, only_missing=True)
    nodes_before, ops_before = len(simplified.graph.nodes), operation_counts(simplified)
    edges_before = describe_edges(find_mixed_edges(simplified), simplified)
    records = run_pipeline(simplified, specs, placeholders)
    report = SimplifyReport(
        mode=mode if passes is None else "custom",
        mixed_edges=edges_before,
        simplified_edges=describe_edges(find_mixed_edges(simplified), simplified),
        passes=records,
        nodes_before=nodes_before,
        nodes_after=len(simplified.graph.nodes),
        operations_before=ops_before,
        operations_after=operation_counts(simplified),
        seconds=time.perf_counter() - start,
    )
    simplified.meta[FXNAS_META_KEY] = dict(source.meta[FXNAS_META_KEY], mode=report.mode, report=report)
    return simplified
