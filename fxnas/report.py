"""What fxnas found and rewrote: the report behind ``fxnas.explain``.

A report holds only plain values (strings, numbers, lists, dicts), so it can
be printed, saved as JSON, pickled with the GraphModule and compared.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx as fx

from .analysis import MixedEdge, describe_node

__all__ = [
    "CandidateInfo",
    "EdgeInfo",
    "PassRecord",
    "SimplifyReport",
    "describe_edges",
    "operation_counts",
]


@dataclass
class CandidateInfo:
    """One candidate of a mixed edge: its module, operations and the tensor it reads."""

    index: int
    name: str
    operations: list[str]
    reads: list[str]
    zero: bool
    weight: str


@dataclass
class EdgeInfo:
    """One mixed edge ``y = Σ_m w_m · c_m(x)``."""

    name: str
    input: str
    form: str
    weight_source: str | None
    output: str
    candidates: list[CandidateInfo]
    shared: list[str] = field(default_factory=list)

    @property
    def num_candidates(self) -> int:
        return len(self.candidates)


@dataclass
class PassRecord:
    """What one pass of the pipeline did."""

    name: str
    reason: str
    modified: bool
    nodes_before: int
    nodes_after: int
    iterations: int
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class SimplifyReport:
    """The report of one ``fxnas.simplify`` call (``fxnas.explain(sgm)`` returns it).

    ``mixed_edges`` are the edges found in the input graph; ``simplified_edges``
    the same edges after the passes (hoisted modules appear as ``shared``).
    Also usable as a dict: ``report["mixed_edges"]``.
    """

    mode: str
    mixed_edges: list[EdgeInfo]
    simplified_edges: list[EdgeInfo]
    passes: list[PassRecord]
    nodes_before: int
    nodes_after: int
    operations_before: dict[str, int]
    operations_after: dict[str, int]
    seconds: float = 0.0

    # -- dict-like access -----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **({"indent": 2} | kwargs))

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def keys(self):
        return self.to_dict().keys()

    # -- summaries ------------------------------------------------------------

    def pass_record(self, name: str) -> PassRecord | None:
        return next((p for p in self.passes if p.name == name), None)

    @property
    def num_candidates_before(self) -> int:
        return sum(len(e.candidates) for e in self.mixed_edges)

    @property
    def num_candidates_after(self) -> int:
        return sum(len(e.candidates) for e in self.simplified_edges)

    def __str__(self) -> str:
        lines = [
            f"fxnas.simplify (mode={self.mode}): {len(self.mixed_edges)} mixed edges, "
            f"{self.num_candidates_before} candidates -> {self.num_candidates_after}; "
            f"graph {self.nodes_before} -> {self.nodes_after} nodes in {self.seconds:.2f} s",
        ]
        if self.passes:
            lines.append("")
            lines.append(f"  {'pass':<26} {'changed':<8} {'nodes':>15}  what")
            for record in self.passes:
                what = _summarise_stats(record.stats)
                nodes = f"{record.nodes_before} -> {record.nodes_after}"
                lines.append(f"  {record.name:<26} {str(record.modified):<8} {nodes:>15}  {what}")
        changed = Counter()
        for key in set(self.operations_before) | set(self.operations_after):
            delta = self.operations_after.get(key, 0) - self.operations_before.get(key, 0)
            if delta:
                changed[key] = delta
        if changed:
            lines.append("")
            lines.append("  operations: " + ", ".join(
                f"{k} {self.operations_before.get(k, 0)} -> {self.operations_after.get(k, 0)}"
                for k, _ in sorted(changed.items(), key=lambda kv: kv[1])
            ))
        shown = self.simplified_edges or self.mixed_edges
        if shown:
            lines.append("")
            lines.append("  mixed edges (after simplification):" if self.simplified_edges else "  mixed edges:")
            for edge in shown[:8]:
                lines.append(f"    {edge.name}  (input {edge.input}, {len(edge.candidates)} candidates, "
                             f"weights {edge.weight_source})")
                if edge.shared:
                    lines.append(f"      shared: {' , '.join(edge.shared)}")
                for candidate in edge.candidates:
                    ops = " -> ".join(candidate.operations) or "identity"
                    lines.append(f"      [{candidate.index}] {candidate.name}: {ops}")
            if len(shown) > 8:
                lines.append(f"    ... and {len(shown) - 8} more")
        return "\n".join(lines)


def _summarise_stats(stats: dict[str, Any]) -> str:
    parts = []
    for key, value in stats.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{key}={value}")
        elif isinstance(value, dict) and value and all(isinstance(v, int) for v in value.values()):
            parts.append(f"{key}: " + ", ".join(f"{k} x{v}" for k, v in list(value.items())[:4]))
    return "; ".join(parts)


def describe_edges(edges: list[MixedEdge], root: torch.nn.Module) -> list[EdgeInfo]:
    """Plain-value descriptions of analysed edges (no fx nodes kept)."""
    infos = []
    for edge in edges:
        candidates = [
            CandidateInfo(
                index=c.index,
                name=c.name,
                operations=[describe_node(n, root) for n in c.chain if not _is_plumbing(n)],
                reads=[n.name for n in c.frontier],
                zero=c.zero,
                weight=c.weight.describe(),
            )
            for c in edge.candidates
        ]
        infos.append(EdgeInfo(
            name=edge.name,
            input=edge.input.name,
            form=edge.form,
            weight_source=edge.weight_source.name if edge.weight_source is not None else None,
            output=edge.output.name,
            candidates=candidates,
            shared=[f"{describe_node(n, root)} ({n.name})" for n in edge.shared],
        ))
    return infos


def _is_plumbing(node: fx.Node) -> bool:
    return node.op == "call_function" and getattr(node.target, "__name__", "") in ("getattr", "getitem")


def operation_counts(gm: fx.GraphModule) -> dict[str, int]:
    """How many times each module type / function appears in the graph."""
    counts: Counter[str] = Counter()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[type(gm.get_submodule(node.target)).__name__] += 1
        elif node.op == "call_function":
            counts[getattr(node.target, "__name__", str(node.target))] += 1
        elif node.op == "call_method":
            counts["." + str(node.target)] += 1
    return dict(counts)
