"""Benchmark tasks, each run in its own process: ``python -m fxnas.bench.worker TASK.json OUT.json``.

A task is a JSON object ``{"task": kind, ...}``; the worker writes its result
to ``OUT.json`` after every phase (atomically), so a task killed at its time
budget still leaves what it had measured. Kinds:

* ``measure`` -- one supernet: build the original, ``simplify`` exact and topo
  (timed), the single-path floor; check exact against the original
  (:func:`fxnas.testing.equivalence_report`) and report topo's
  :func:`fxnas.fidelity`, all *before* any timing; then bytes saved for
  backward, FLOPs, training-step and eval-forward times (variants interleaved
  in this one process), and optionally each variant's step peak memory here.
* ``peak`` -- one variant of one supernet in a fresh process: the peak memory
  of a training step (after a warm-up step), free of other variants' heap.
* ``compile`` -- ``torch.compile`` of the original or of the topo result: the
  compile time (compile + first step), a check of the compiled module against
  its eager source, then its step time interleaved with the eager original and
  eager topo in this process (ratios are taken within the process).
* ``scaling`` -- one point of the scaling study: original vs topo.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import traceback
from typing import Any, Dict

import torch

from .core import (Batch, TrainStep, environment, make_batch, release_memory, saved_bytes, step_flops,
                   step_peak_memory, timing_summary)
from .schema import empty_variant
from .supernets import SUPERNETS, BenchConfig, build_model

__all__ = ["main", "run_task"]


class Progress:
    """The task's result so far, rewritten to ``path`` after every phase."""

    def __init__(self, path: str):
        self.path = path
        self.data: Dict[str, Any] = {"status": "running", "phase": "start"}

    def save(self, **updates: Any) -> None:
        from fxnas.measure import peak_rss_bytes

        self.data.update(updates)
        self.data["worker_max_rss_bytes"] = peak_rss_bytes()
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=_json_default)
        os.replace(tmp, self.path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def _setup(task: Dict[str, Any]) -> torch.device:
    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    return torch.device(task.get("device", "cpu"))


def _config(task: Dict[str, Any]) -> BenchConfig:
    return BenchConfig(**task["config"])


def _simplify(model: torch.nn.Module, example: tuple, mode: str):
    """``fxnas.simplify`` timed; topo simplifies a deep copy (it ties floated parameters in place)."""
    import fxnas

    source = copy.deepcopy(model) if mode == "topo" else model
    start = time.perf_counter()
    simplified = fxnas.simplify(source, example, mode=mode)
    seconds = time.perf_counter() - start
    report = fxnas.explain(simplified)
    graph = {
        "nodes_before": report.nodes_before,
        "nodes_after": report.nodes_after,
        "mixed_edges": len(report.mixed_edges),
        "mixed_edges_after": len(report.simplified_edges),
    }
    return simplified.train(), seconds, graph


def _warm_imports() -> None:
    """Import fxnas and its passes first, so that simplify times leave module import out."""
    import torch._dynamo  # noqa: F401 -- imported by FakeTensorMode on the first trace (about 1 s)
    from fxnas.pipeline import pipeline

    pipeline("exact"), pipeline("topo")


def _cross_entropy_on(labels: torch.Tensor):
    from .core import loss_of_output

    return lambda output: loss_of_output(output, labels)


def _equivalence(reference, candidate, x: torch.Tensor) -> Dict[str, Any]:
    from fxnas.testing import equivalence_report

    start = time.perf_counter()
    report = equivalence_report(reference, candidate, (x,), modes=("train", "eval"), steps=2)
    return {
        "ok": bool(report.ok),
        "dtype": str(x.dtype).replace("torch.", ""),
        "quantities": len(report.quantities),
        "max_abs_error": float(report.max_abs),
        "max_abs_error_by_kind": {k: float(v) for k, v in report.max_abs_by_kind().items()},
        "failures": report.format(limit=6) if not report.ok else None,
        "seconds": time.perf_counter() - start,
    }


def _exact_check(name: str, config: BenchConfig, original, exact, batch: Batch, check_batch: int) -> Dict[str, Any]:
    """``fxnas.testing.equivalence_report`` of simplify exact, in float64 (the verdict) and in float32.

    float64: the original is rebuilt (same seed), converted to float64 and
    simplified again; the check is that of the test suite. float32: the very
    modules that are timed. Deep supernets whose BatchNorms normalise with
    the statistics of a small batch are ill-conditioned in float32 -- the
    float32 *original* itself can differ from its float64 twin by more than
    the default tolerances -- so the float32 result is reported, not judged.
    """
    import fxnas

    x = batch.x[:check_batch]
    original64 = build_model(name, config).to(x.device).double()
    exact64 = fxnas.simplify(original64, (x[:2].double(),), mode="exact")
    float64 = _equivalence(original64, exact64, x.double())
    float32 = _equivalence(original, exact, x)
    return {
        "kind": "equivalence",
        "ran": True,
        "ok": float64["ok"],
        "batch": int(x.shape[0]),
        "modes": ["train", "eval"],
        "steps": 2,
        "quantities": float64["quantities"],
        "max_abs_error": float64["max_abs_error"],
        "max_abs_error_by_kind": float64["max_abs_error_by_kind"],
        "failures": float64["failures"],
        "seconds": float64["seconds"] + float32["seconds"],
        "verdict_dtype": "float64",
        "float32": float32,
        "note": "verdict: fxnas.testing.equivalence_report in float64 (outputs, input/parameter/architecture "
                "gradients, buffers; train and eval, 2 steps); float32 figures of the timed modules reported "
                "alongside (float32 rounding is amplified by batch-statistics BatchNorms at a small batch)",
    }


def _fidelity(original, topo, batch: Batch) -> Dict[str, Any]:
    import fxnas

    start = time.perf_counter()
    report = fxnas.fidelity(original, topo, (batch.x,), loss_fn=_cross_entropy_on(batch.y))
    result = report.to_dict()
    result["loss"] = "cross-entropy on the benchmark batch, train mode"
    result["seconds"] = time.perf_counter() - start
    return result


def _compare_compiled(source, compiled, batch: Batch) -> Dict[str, Any]:
    """Outputs and parameter gradients of ``compiled`` against its eager ``source`` on one batch."""
    from .core import loss_of_output

    params = [p for p in source.parameters() if p.requires_grad]
    buffers = [b.detach().clone() for b in source.buffers()]

    def run(module):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            output = module(batch.x)
            loss = loss_of_output(output, batch.y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for b, saved in zip(source.buffers(), buffers):
                b.copy_(saved)
        return output, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    from .core import logits_of

    out_e, grads_e = run(source)
    out_c, grads_c = run(compiled)
    out_e, out_c = logits_of(out_e).detach(), logits_of(out_c).detach()
    out_err = float((out_c - out_e).abs().max() / out_e.abs().max().clamp_min(1e-12))
    grad_scale = max(float(g.abs().max()) for g in grads_e)
    grad_err = max(float((a - b).abs().max()) for a, b in zip(grads_c, grads_e)) / max(grad_scale, 1e-12)
    tolerance = 1e-3
    return {
        "kind": "compiled_vs_eager",
        "ran": True,
        "ok": bool(out_err <= tolerance and grad_err <= tolerance),
        "output_max_rel_error": out_err,
        "param_grad_max_rel_error": grad_err,
        "tolerance": tolerance,
        "note": "logits and every parameter gradient of the compiled module vs its eager source, train mode, "
                "errors relative to the largest reference value",
    }


# --------------------------------------------------------------------------- #
# tasks
# --------------------------------------------------------------------------- #


def _start(task: Dict[str, Any], progress: Progress):
    """Threads, imports, the original supernet and the benchmark batch: (device, config, name, original, batch)."""
    device = _setup(task)
    config, name = _config(task), task["supernet"]
    _warm_imports()
    progress.save(phase="build", environment=environment(device))
    original = build_model(name, config).to(device)
    batch = make_batch(config.batch, config.resolution, config.num_classes, device, config.seed)
    return device, config, name, original, batch


def task_measure(task: Dict[str, Any], progress: Progress) -> None:
    import fxnas  # noqa: F401
    from fxnas.measure import interleaved_times

    device, config, name, original, batch = _start(task, progress)
    example = (batch.x[:2],)
    records = {v: empty_variant() for v in ("original", "exact", "topo", "floor")}
    modules: Dict[str, torch.nn.Module] = {"original": original}
    graphs: Dict[str, Any] = {}

    progress.save(phase="simplify")
    for mode in ("exact", "topo"):
        modules[mode], records[mode]["simplify_s"], graphs[mode] = _simplify(original, example, mode)
    modules["floor"] = build_model(name, config, floor=True).to(device)
    records["floor"]["reason"] = f"one candidate per edge ({SUPERNETS[name].floor_op}); a different network"
    parameters = {v: sum(p.numel() for p in m.parameters()) for v, m in modules.items()}
    progress.save(phase="check", graph=graphs, parameters=parameters, records=records)

    # Every variant is checked before it is timed.
    records["original"]["check"] = {"kind": "reference", "ran": True, "ok": True}
    records["exact"]["check"] = _exact_check(name, config, original, modules["exact"], batch, task["check_batch"])
    records["topo"]["fidelity"] = _fidelity(original, modules["topo"], batch)
    records["topo"]["check"] = {"kind": "fidelity", "ran": True, "ok": None,
                                "note": "approximate by design: see fidelity"}
    records["floor"]["check"] = {"kind": "none", "ran": False, "ok": None,
                                 "note": "a different network (the single-path floor): nothing to compare"}
    release_memory()
    progress.save(phase="memory", records=records)

    for variant, module in modules.items():
        records[variant]["saved_bytes"] = int(saved_bytes(module, (batch.x,)))
        records[variant]["flops"] = step_flops(module, batch)
        release_memory()
    progress.save(phase="timing", records=records)

    steps = {v: TrainStep(m, batch) for v, m in modules.items()}
    repeats, warmup = task["repeats"], task["warmup"]
    train = interleaved_times({v: s.step for v, s in steps.items()}, repeats=repeats, warmup=warmup)
    for v, result in train.items():
        records[v]["train_step"] = timing_summary(result.times, warmup)
    release_memory()
    progress.save(records=records)
    for m in modules.values():
        m.eval()
    evals = interleaved_times({v: s.eval_forward for v, s in steps.items()},
                              repeats=task["eval_repeats"], warmup=warmup)
    for m in modules.values():
        m.train()
    for v, result in evals.items():
        records[v]["eval_forward"] = timing_summary(result.times, warmup)
    progress.save(phase="peak", records=records)

    if task.get("peak") == "inprocess":
        for v, s in steps.items():
            peak = step_peak_memory(s.step, device)
            peak["method"] += "; in the measuring process, variants one after another"
            records[v]["peak_memory"] = peak
    progress.save(status="ok", phase="done", records=records)


def _variant_module(name: str, config: BenchConfig, variant: str, device: torch.device):
    model = build_model(name, config, floor=(variant == "floor")).to(device)
    if variant in ("exact", "topo"):
        batch_x = make_batch(2, config.resolution, config.num_classes, device, config.seed).x
        model, _, _ = _simplify(model, (batch_x,), variant)
    return model


def task_peak(task: Dict[str, Any], progress: Progress) -> None:
    device = _setup(task)
    config = _config(task)
    _warm_imports()
    module = _variant_module(task["supernet"], config, task["variant"], device)
    batch = make_batch(config.batch, config.resolution, config.num_classes, device, config.seed)
    step = TrainStep(module, batch)
    step.step()  # warm-up: optimizer state, allocator, one-time buffers
    peak = step_peak_memory(step.step, device)
    peak["method"] += "; fresh process per variant, after one warm-up step"
    progress.save(status="ok", phase="done", peak_memory=peak)


def task_compile(task: Dict[str, Any], progress: Progress) -> None:
    import torch._inductor.config as inductor_config

    from fxnas.measure import interleaved_times

    # Random ops (Gumbel noise) as in eager mode, so compiled and eager outputs can be compared.
    inductor_config.fallback_random = True
    device, config, name, original, batch = _start(task, progress)
    topo, simplify_s, _ = _simplify(original, (batch.x[:2],), "topo")
    source = original if task["source"] == "original" else topo
    record = empty_variant()
    record["simplify_s"] = simplify_s if task["source"] == "topo" else None

    compiled = torch.compile(source)
    steps = {"original": TrainStep(original, batch), "topo": TrainStep(topo, batch), "compiled": TrainStep(compiled, batch)}
    progress.save(phase="compile", compile_started=time.time(), record=record)
    start = time.perf_counter()
    steps["compiled"].step()
    record["compile_s"] = time.perf_counter() - start
    record["compile_note"] = "wall time of the first training step of the compiled module: dynamo + inductor " \
                             "compilation of forward and backward, plus the step itself"
    progress.save(phase="check", record=record)

    record["check"] = _compare_compiled(source, compiled, batch)
    if task["source"] == "topo":
        record["fidelity"] = _fidelity(original, topo, batch)
        record["fidelity"]["note"] = "fidelity of the eager topo module the compiled module was checked against"
    progress.save(phase="timing", record=record)

    repeats, warmup = task["repeats"], task["warmup"]
    train = interleaved_times({v: s.step for v, s in steps.items()}, repeats=repeats, warmup=warmup)
    timings = {v: timing_summary(r.times, warmup) for v, r in train.items()}
    record["train_step"] = timings["compiled"]
    record["in_process_eager"] = {"train_step": {"original": timings["original"], "topo": timings["topo"]}}
    progress.save(phase="eval", record=record)

    if task.get("compile_eval"):
        for m in (original, topo, compiled):
            m.eval()
        start = time.perf_counter()
        steps["compiled"].eval_forward()
        record["compile_eval_s"] = time.perf_counter() - start
        evals = interleaved_times({v: s.eval_forward for v, s in steps.items()},
                                  repeats=task["eval_repeats"], warmup=warmup)
        for m in (original, topo, compiled):
            m.train()
        timings = {v: timing_summary(r.times, warmup) for v, r in evals.items()}
        record["eval_forward"] = timings["compiled"]
        record["in_process_eager"]["eval_forward"] = {"original": timings["original"], "topo": timings["topo"]}
    else:
        record["eval_forward_reason"] = ("not measured: an eval-mode no-grad forward is a second compilation; "
                                         "pass --compile-eval")
    progress.save(phase="memory", record=record)

    try:
        record["saved_bytes"] = int(saved_bytes(compiled, (batch.x,)))
        record["saved_bytes_note"] = "saved_tensors_hooks around the compiled forward (AOTAutograd's saved tensors)"
    except Exception as exc:  # noqa: BLE001 -- reported, not fatal
        record["saved_bytes_note"] = f"not measurable: {type(exc).__name__}: {exc}"[:300]
    record["flops_note"] = "not counted: FlopCounterMode does not see inside compiled kernels"
    peaks = {}
    for v in ("original", "compiled"):
        peaks[v] = step_peak_memory(steps[v].step, device)
        peaks[v]["method"] += "; in the compile process (after compilation), eager original measured alike"
    record["peak_memory"] = peaks["compiled"]
    record["in_process_eager"]["peak_memory"] = {"original": peaks["original"]}
    progress.save(status="ok", phase="done", record=record)


def task_scaling(task: Dict[str, Any], progress: Progress) -> None:
    from fxnas.measure import interleaved_times

    device = _setup(task)
    config = _config(task)
    _warm_imports()
    original = build_model(task["supernet"], config).to(device)
    batch = make_batch(config.batch, config.resolution, config.num_classes, device, config.seed)
    topo, simplify_s, graph = _simplify(original, (batch.x[:2],), "topo")
    result: Dict[str, Any] = {"simplify_s": simplify_s, "graph": graph,
                              "candidates": len(config.ops) if config.ops else None, "C": config.C}
    modules = {"original": original, "topo": topo}
    for v, m in modules.items():
        result[v] = {"saved_bytes": int(saved_bytes(m, (batch.x,))), "flops": step_flops(m, batch)}
        release_memory()
    progress.save(phase="timing", result=result)
    steps = {v: TrainStep(m, batch) for v, m in modules.items()}
    train = interleaved_times({v: s.step for v, s in steps.items()}, repeats=task["repeats"], warmup=task["warmup"])
    for v, r in train.items():
        result[v]["train_step"] = timing_summary(r.times, task["warmup"])
    if task.get("peak") == "inprocess":
        for v, s in steps.items():
            result[v]["peak_memory"] = step_peak_memory(s.step, device)
    progress.save(status="ok", phase="done", result=result)


TASKS = {"measure": task_measure, "peak": task_peak, "compile": task_compile, "scaling": task_scaling}


def run_task(task: Dict[str, Any], out_path: str) -> int:
    progress = Progress(out_path)
    progress.save(task=task, started=time.time())
    try:
        TASKS[task["task"]](task, progress)
    except Exception as exc:  # noqa: BLE001 -- the orchestrator records it
        progress.save(status="error", error=f"{type(exc).__name__}: {exc}"[:2000],
                      traceback=traceback.format_exc()[-4000:])
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        task = json.load(f)
    return run_task(task, argv[1])


if __name__ == "__main__":
    sys.exit(main())
