"""Names shared by the benchmark's workers, results and reports."""

from __future__ import annotations

from typing import Any, Dict, List

SCHEMA = "fxnas-bench/1"

#: variants of every supernet, in table order
VARIANTS: List[str] = ["original", "exact", "topo", "compile", "compile-topo", "floor"]

VARIANT_TITLES: Dict[str, str] = {
    "original": "original (eager)",
    "exact": "simplify exact",
    "topo": "simplify topo",
    "compile": "torch.compile(original)",
    "compile-topo": "torch.compile(topo)",
    "floor": "single-path floor",
}

#: the keys every variant record carries (None where not measured, with a reason)
VARIANT_KEYS: List[str] = [
    "status",          # "ok" | "skipped" | "timeout" | "error"
    "reason",          # why skipped / what failed
    "train_step",      # timing summary of forward+backward+optimizer step
    "eval_forward",    # timing summary of an eval-mode no-grad forward
    "saved_bytes",     # bytes saved for backward (distinct storages)
    "peak_memory",     # {"peak_bytes", "step_increase_bytes", "method"}
    "flops",           # forward+backward FLOPs
    "simplify_s",      # time of fxnas.simplify (exact / topo)
    "compile_s",       # torch.compile: compile + first training step
    "check",           # equivalence check (exact), compiled-vs-eager check (compile), ...
    "fidelity",        # fxnas.fidelity of topo variants against the original
    "ratios",          # relative to the eager original, see fxnas.bench.report
]

#: ratio keys (variant / original)
RATIO_KEYS: List[str] = ["train_step", "eval_forward", "saved_bytes", "peak_memory", "flops"]


def empty_variant(status: str = "ok", reason: str | None = None) -> Dict[str, Any]:
    record: Dict[str, Any] = {key: None for key in VARIANT_KEYS}
    record["status"] = status
    record["reason"] = reason
    record["ratios"] = {}
    return record
