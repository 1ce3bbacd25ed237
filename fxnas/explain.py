"""``fxnas.explain``: the report of what fxnas found and rewrote."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from .analysis import find_mixed_edges
from .report import SimplifyReport, describe_edges, operation_counts
from .tracing import FXNAS_META_KEY, is_fxnas_traced, trace
from .values import propagate_values

__all__ = ["explain"]


def explain(obj: torch.nn.Module, example_inputs: Any = None) -> SimplifyReport:
    """What fxnas found (and, for a simplified module, rewrote).

    * a GraphModule returned by ``fxnas.simplify``: the report of that call;
    * a GraphModule from ``fxnas.trace``, or any nn.Module with
      ``example_inputs``: the mixed edges found, nothing rewritten.
    """
    if is_fxnas_traced(obj):
        report = obj.meta[FXNAS_META_KEY].get("report")
        if report is not None:
            return report
        gm = obj
    elif isinstance(obj, torch.nn.Module) and example_inputs is not None:
        gm = trace(obj, example_inputs)
    else:
        raise TypeError(
            "fxnas.explain takes a module returned by fxnas.simplify / fxnas.trace, "
            f"or an nn.Module with example_inputs (got {type(obj).__name__})"
        )
    if any("fxnas_value" not in n.meta for n in gm.graph.nodes):
        propagate_values(gm, gm.meta[FXNAS_META_KEY]["example_inputs"], only_missing=True)
    edges = describe_edges(find_mixed_edges(gm), gm)
    counts = operation_counts(gm)
    n = len(gm.graph.nodes)
    return SimplifyReport(mode="none", mixed_edges=edges, simplified_edges=[], passes=[],
                          nodes_before=n, nodes_after=n, operations_before=counts, operations_after=counts)
