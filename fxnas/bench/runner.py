"""The benchmark's orchestrator: plans the tasks, runs each in a worker process, writes the results.

Order: the ``measure`` task of every supernet, the ``peak`` tasks (one fresh
process per variant), the scaling study, then the ``torch.compile`` tasks
(slowest, each under its time budget; NB201 DARTS-V1 first). After every task
the JSON, the Markdown table and the plots are rewritten, so an interrupted
run leaves consistent partial results, and ``--resume`` reuses every task
that finished under the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .report import assemble_supernet, compute_targets, markdown, plot, plot_scaling
from .schema import SCHEMA, VARIANTS, empty_variant
from .supernets import DEFAULT_SUPERNETS, SUPERNETS, BenchConfig, xautodl_available

__all__ = ["Plan", "plan_from_args", "run_plan"]

GPU_NOTE_CPU = ("no GPU machine was available for this run (CPU only): GPU step times, "
                "torch.cuda.max_memory_allocated and the GPU targets are not measured")

#: the candidate order of the scaling study (a prefix of length k is the k-candidate space)
SCALING_OPS = ["nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3", "none", "nor_conv_5x5",
               "max_pool_3x3", "nor_conv_7x7"]


@dataclass
class Plan:
    out_dir: str
    json_path: str
    supernets: List[str]
    variants: List[str]
    sizes: BenchConfig
    repeats: int = 5
    eval_repeats: int = 5
    warmup: int = 1
    check_batch: int = 8
    threads: Optional[int] = None
    device: str = "cpu"
    compile_supernets: List[str] = field(default_factory=list)
    compile_skip_reason: str = ""
    compile_budget_s: float = 1800.0
    compile_eval: bool = False
    peak_memory: str = "subprocess"
    task_timeout_s: float = 3600.0
    scaling: bool = True
    scaling_candidates: List[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 7, 8])
    scaling_channels: List[int] = field(default_factory=lambda: [16, 32, 48, 64])
    scaling_sizes: BenchConfig = field(default_factory=lambda: BenchConfig(N=1, batch=32))
    scaling_repeats: int = 3
    resume: bool = False
    quick: bool = False
    command: str = ""
    verbose: bool = True
    notes: List[str] = field(default_factory=list)


# --------------------------------------------------------------------------- #
# running one task
# --------------------------------------------------------------------------- #


def _task_id(task: Dict[str, Any]) -> str:
    key = json.dumps(task, sort_keys=True)
    label = "-".join(str(task[k]) for k in ("task", "supernet", "variant", "source", "point") if k in task)
    return f"{label}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_worker(task: Dict[str, Any], timeout_s: float, workdir: str) -> Dict[str, Any]:
    task_id = _task_id(task)
    task_path = os.path.join(workdir, task_id + ".task.json")
    out_path = os.path.join(workdir, task_id + ".out.json")
    log_path = os.path.join(workdir, task_id + ".log")
    with open(task_path, "w") as f:
        json.dump(task, f)
    env = dict(os.environ)
    env["PYTHONPATH"] = _project_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if task["task"] == "peak":
        # glibc returns freed blocks >= 128 KiB to the system (a fixed threshold turns off its dynamic one,
        # which keeps freed tensors resident), so the resident set follows the live tensors.
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    start = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    timed_out = False
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fxnas.bench.worker", task_path, out_path],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and the compile workers it started
            proc.wait()
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): take the worker down too
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    wall = time.perf_counter() - start
    try:
        with open(out_path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError):
        result = {"status": "error", "error": "the worker wrote no result"}
    if timed_out:
        result["status"] = "timeout"
        result["error"] = f"did not finish within its budget of {timeout_s:.0f} s (phase: {result.get('phase')})"
    elif proc.returncode != 0 and result.get("status") == "running":
        result["status"] = "error"
        result["error"] = f"the worker exited with code {proc.returncode}" + (
            " (killed: SIGKILL, e.g. the kernel's out-of-memory killer)" if proc.returncode == -9 else "")
    if result.get("status") != "ok":
        with open(log_path, errors="replace") as f:
            result["log_tail"] = f.read()[-3000:]
    result["wall_s"] = wall
    # Other processes on the machine skew times: the 1-minute load average around the task says how busy it was.
    result["loadavg_1min"] = {"start": load_before, "end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    result["task_id"] = task_id
    result.pop("task", None)
    return result


# --------------------------------------------------------------------------- #
# the plan
# --------------------------------------------------------------------------- #


def _base_task(plan: Plan, kind: str, **extra: Any) -> Dict[str, Any]:
    task = {"task": kind, "device": plan.device, "threads": plan.threads, "config": plan.sizes.to_dict()}
    task.update(extra)
    return task


def _tasks(plan: Plan) -> List[Dict[str, Any]]:
    tasks: List[Dict[str, Any]] = []
    eager = [v for v in ("original", "exact", "topo", "floor") if v in plan.variants or v == "original"]
    for name in plan.supernets:
        tasks.append(_base_task(plan, "measure", supernet=name, repeats=plan.repeats, warmup=plan.warmup,
                                eval_repeats=plan.eval_repeats, check_batch=plan.check_batch, check_dtype="float64",
                                peak="inprocess" if plan.peak_memory == "inprocess" else "off"))
    if plan.peak_memory == "subprocess":
        for name in plan.supernets:
            for variant in eager:
                tasks.append(_base_task(plan, "peak", supernet=name, variant=variant))
    if plan.scaling:
        base = plan.scaling_sizes.to_dict()
        points = [("candidates", k, base["C"]) for k in plan.scaling_candidates]
        points += [("channels", 5, c) for c in plan.scaling_channels]
        for sweep, k, c in points:
            config = dict(base, C=c, ops=SCALING_OPS[:k])
            tasks.append({"task": "scaling", "device": plan.device, "threads": plan.threads, "config": config,
                          "supernet": "nb201", "point": f"{sweep}-{k}-{c}", "sweep": sweep,
                          "repeats": plan.scaling_repeats, "warmup": plan.warmup,
                          "peak": "inprocess" if plan.peak_memory != "off" else "off"})
    order = sorted(plan.compile_supernets, key=lambda n: (n != "nb201-xautodl", plan.supernets.index(n)))
    for name in order:
        for variant, source in (("compile", "original"), ("compile-topo", "topo")):
            if variant in plan.variants:
                tasks.append(_base_task(plan, "compile", supernet=name, variant=variant, source=source,
                                        repeats=plan.repeats, warmup=plan.warmup, eval_repeats=plan.eval_repeats,
                                        compile_eval=plan.compile_eval))
    return tasks


def _timeout(plan: Plan, task: Dict[str, Any]) -> float:
    return plan.compile_budget_s if task["task"] == "compile" else plan.task_timeout_s


def _load_previous(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    # a task that ran out of its budget is a result too (rerun it by deleting the JSON or the task's entry)
    return {tid: r for tid, r in previous.get("tasks", {}).items() if r.get("status") in ("ok", "timeout")}


def _compile_record(result: Optional[Dict[str, Any]], skip_reason: str) -> Dict[str, Any]:
    if result is None:
        return empty_variant("skipped", skip_reason)
    record = dict(result.get("record") or empty_variant())
    if result.get("status") != "ok":
        record["status"] = result["status"]
        record["reason"] = result.get("error")
    else:
        record["status"] = "ok"
    return record


def _assemble(plan: Plan, tasks: List[Dict[str, Any]], done: Dict[str, Dict[str, Any]],
              environment: Dict[str, Any]) -> Dict[str, Any]:
    supernets: Dict[str, Any] = {}
    for name in plan.supernets:
        entry = SUPERNETS[name]
        measure, peaks, compiles = None, {}, {}
        for task in tasks:
            if task.get("supernet") != name or task["task"] == "scaling":
                continue
            result = done.get(_task_id(task))
            if task["task"] == "measure":
                measure = result
            elif task["task"] == "peak":
                peaks[task["variant"]] = result if result is not None else {"status": "pending"}
            elif task["task"] == "compile" and result is not None:
                compiles[task["variant"]] = _compile_record(result, "")
        for variant in ("compile", "compile-topo"):
            if variant not in compiles:
                reason = plan.compile_skip_reason if name not in plan.compile_supernets else "pending"
                compiles[variant] = empty_variant("skipped", reason)
        supernets[name] = assemble_supernet(name, entry.title, entry.description, measure, peaks, compiles,
                                            plan.variants)
        supernets[name]["floor_op"] = entry.floor_op
    scaling = None
    if plan.scaling:
        s = plan.scaling_sizes
        points = []
        for task in tasks:
            if task["task"] != "scaling":
                continue
            result = done.get(_task_id(task)) or {"status": "pending"}
            point = {"sweep": task["sweep"], "candidates": len(task["config"]["ops"]), "C": task["config"]["C"],
                     "ops": task["config"]["ops"], "status": result.get("status"), "error": result.get("error")}
            point.update(result.get("result") or {})
            point["candidates"], point["C"] = len(task["config"]["ops"]), task["config"]["C"]
            points.append(point)
        scaling = {
            "description": (f"NB201 skeleton, N={s.N} cell per stage, batch {s.batch}, {s.resolution}×{s.resolution}, "
                            f"{plan.scaling_repeats} interleaved steps; candidates are prefixes of "
                            f"{SCALING_OPS} (channel sweep: the first 5); memory = bytes saved for backward"),
            "sizes": s.to_dict(),
            "ops_order": SCALING_OPS,
            "points": points,
        }
    results = {
        "schema": SCHEMA,
        "environment": environment,
        "gpu_note": GPU_NOTE_CPU if plan.device == "cpu" else f"measured on {environment.get('device_name')}",
        "config": {
            "quick": plan.quick,
            "command": plan.command,
            "sizes": plan.sizes.to_dict(),
            "supernets": plan.supernets,
            "variants": plan.variants,
            "repeats": plan.repeats,
            "eval_repeats": plan.eval_repeats,
            "warmup": plan.warmup,
            "check_batch": plan.check_batch,
            "threads": plan.threads,
            "device": plan.device,
            "compile_supernets": plan.compile_supernets,
            "compile_budget_s": plan.compile_budget_s,
            "compile_eval": plan.compile_eval,
            "peak_memory": plan.peak_memory,
            "task_timeout_s": plan.task_timeout_s,
        },
        "notes": plan.notes,
        "variants": VARIANTS,
        "supernets": supernets,
        "scaling": scaling,
        "method": _method(plan),
        "tasks": {_task_id(t): done[_task_id(t)] for t in tasks if _task_id(t) in done},
    }
    results["targets"] = compute_targets(supernets, plan.device)
    return results


def _method(plan: Plan) -> List[str]:
    peak = {
        "subprocess": "peak step memory: each eager variant in a fresh process (glibc told to return freed "
                      "blocks >= 128 KiB to the system, MALLOC_MMAP_THRESHOLD_, so that the resident set follows "
                      "the live tensors), one warm-up step, then the process's resident-set high-water mark "
                      "(VmHWM, reset through /proc/self/clear_refs just before the step) over one training step; "
                      "the table shows its increase over the resident set before the step (activations, "
                      "gradients, workspace), the absolute process peak in brackets",
        "inprocess": "peak step memory: VmHWM over one training step (reset before it), variants measured one "
                     "after another in the measuring process (quick mode: not isolated from each other's heap)",
        "off": "peak memory: not measured (--peak-memory off)",
    }[plan.peak_memory]
    if plan.device == "cuda":
        peak = "peak step memory: torch.cuda.max_memory_allocated over one training step (reset before it)"
    return [
        "every variant is checked before it is timed: simplify exact with fxnas.testing.equivalence_report "
        f"(train and eval mode, 2 consecutive steps, outputs, input/parameter/architecture gradients and buffers, "
        f"batch {plan.check_batch}); simplify topo with fxnas.fidelity (relative output error and "
        "architecture-gradient cosine, cross-entropy on the benchmark batch); torch.compile variants against "
        "their eager source (logits and parameter gradients, relative error ≤ 1e-3)",
        "training step = forward + cross-entropy on fixed random labels + backward + SGD(momentum 0.9, weight "
        "decay 3e-4) step over all parameters (architecture weights included); eval forward = eval mode, no_grad",
        "times: variants interleaved (A B C … A B C …) in one process after warm-up; median and spread of the "
        "repeats; ratios are taken within a process (compile variants: against the eager original timed in "
        "the compile process)",
        "saved bytes: distinct storages autograd saves for backward in one training-mode forward "
        "(fxnas.measure.saved_tensor_bytes: parameters and buffers excluded)",
        peak,
        "FLOPs: torch.utils.flop_counter over forward + backward, with the backward of grouped convolutions counted "
        "correctly (fxnas.measure.flop_counter; torch 2.14 counts a depthwise weight gradient as a dense one); "
        "not counted for compiled modules",
        "simplify time: fxnas.simplify (tracing included; module imports, among them torch._dynamo which "
        "FakeTensorMode imports on the first trace, excluded); topo simplifies a deep copy",
        "compile time: torch.compile (inductor, default mode) — wall time of the first training step "
        f"(compiles forward and backward); budget {plan.compile_budget_s:.0f} s per variant; inductor's "
        "fallback_random so that Gumbel noise matches eager",
        "single-path floor: the same network with one candidate per edge (see floor_op)",
    ]


def _write(plan: Plan, results: Dict[str, Any]) -> None:
    os.makedirs(plan.out_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(plan.json_path)), exist_ok=True)
    tmp = plan.json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, allow_nan=True)
    os.replace(tmp, plan.json_path)
    with open(os.path.join(plan.out_dir, "results.md"), "w") as f:
        f.write(markdown(results))
    plot(results, os.path.join(plan.out_dir, "results.png"))
    plot_scaling(results, os.path.join(plan.out_dir, "scaling.png"))


def _summary_line(task: Dict[str, Any], result: Dict[str, Any]) -> str:
    label = " ".join(str(task[k]) for k in ("task", "supernet", "variant", "point") if k in task)
    text = f"[{result.get('wall_s', 0):7.1f} s] {label}: {result.get('status')}"
    if result.get("status") != "ok":
        text += f" ({(result.get('error') or '')[:160]})"
    return text


def run_plan(plan: Plan) -> Dict[str, Any]:
    from .core import environment
    import torch

    if plan.threads:
        torch.set_num_threads(plan.threads)

    def terminate(signum, frame):  # SIGTERM: stop like Ctrl-C, so the running worker is killed too
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    env = environment(torch.device(plan.device))
    tasks = _tasks(plan)
    done: Dict[str, Dict[str, Any]] = _load_previous(plan.json_path) if plan.resume else {}
    done = {tid: r for tid, r in done.items() if tid in {_task_id(t) for t in tasks}}
    if plan.verbose:
        print(f"fxnas bench: {len(tasks)} tasks ({len(done)} reused), results in {plan.out_dir}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fxnas-bench-") as workdir:
        for task in tasks:
            tid = _task_id(task)
            if tid in done:
                continue
            result = _run_worker(task, _timeout(plan, task), workdir)
            done[tid] = result
            if plan.verbose:
                print(_summary_line(task, result), flush=True)
            _write(plan, _assemble(plan, tasks, done, env))
    results = _assemble(plan, tasks, done, env)
    _write(plan, results)
    return results


def plan_supernets(requested: List[str]) -> tuple[List[str], List[str]]:
    """(runnable supernets, notes about dropped ones)."""
    notes, names = [], []
    for name in requested:
        if name not in SUPERNETS:
            raise SystemExit(f"fxnas bench: unknown supernet {name!r}; known: {', '.join(SUPERNETS)}")
        if "xautodl" in SUPERNETS[name].needs and not xautodl_available():
            notes.append(f"{name}: skipped, xautodl is not installed (pip install --no-deps xautodl==1.0.0)")
            continue
        names.append(name)
    return names, notes


__all__ += ["plan_supernets", "DEFAULT_SUPERNETS"]
