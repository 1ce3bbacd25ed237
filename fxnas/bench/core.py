"""Measuring one benchmark variant: a training step, its time, memory and FLOPs.

A *training step* is what a search step costs for the weights: forward,
cross-entropy loss on fixed random labels, backward, and an optimizer step
(SGD with momentum and weight decay over every parameter, the architecture
weights included). The *eval forward* is a forward pass in eval mode under
``torch.no_grad()``.

Memory:

* **saved bytes**: the distinct storages autograd saves for backward in one
  training-mode forward (:func:`saved_bytes`, as :func:`fxnas.measure.saved_tensor_bytes`; parameters
  and buffers left out): activation memory, deterministic.
* **peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` over one step;
  on CPU the process's peak resident set (``VmHWM``), reset to the current
  resident set just before the step by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux >= 4.0). We report the peak during the step
  and its increase over the resident set before the step (the step's own
  memory: activations, gradients, workspace). Where the reset is impossible the
  process-lifetime ``ru_maxrss`` is reported instead, and the method says so.
"""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Batch",
    "make_batch",
    "logits_of",
    "loss_of_output",
    "TrainStep",
    "timing_summary",
    "step_flops",
    "saved_bytes",
    "release_memory",
    "step_peak_memory",
    "environment",
    "reset_peak_rss",
]


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor


def make_batch(batch: int, resolution: int, num_classes: int, device: torch.device, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, resolution, resolution, generator=generator)
    y = torch.randint(0, num_classes, (batch,), generator=generator)
    return Batch(x.to(device), y.to(device))


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a supernet's output (xautodl returns ``(features, logits)``)."""
    if isinstance(output, (tuple, list)):
        return output[-1]
    return output


def loss_of_output(output: Any, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_of(output), labels)


class TrainStep:
    """``step()``: forward, loss, backward, optimizer step; ``eval_forward()``: a no-grad eval pass."""

    def __init__(self, module: nn.Module, batch: Batch, lr: float = 1e-3):
        self.module = module
        self.batch = batch
        params = [p for p in module.parameters() if p.requires_grad]
        # Momentum and weight decay as in a DARTS weight step; a small rate keeps a
        # long run of timed steps numerically tame (values do not affect the cost).
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=3e-4)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss_of_output(self.module(self.batch.x), self.batch.y).backward()
        self.optimizer.step()

    def eval_forward(self) -> None:
        with torch.no_grad():
            self.module(self.batch.x)


def timing_summary(times: list[float], warmup: int) -> Dict[str, Any]:
    import statistics

    ordered = sorted(times)
    return {
        "median_s": statistics.median(times),
        "spread_s": ordered[-1] - ordered[0],
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "repeats": len(times),
        "warmup": warmup,
        "times_s": list(times),
    }


def saved_bytes(module: nn.Module, inputs: tuple) -> int:
    """Bytes of the distinct storages autograd saves for backward: :func:`fxnas.measure.saved_tensor_bytes`."""
    from fxnas.measure import saved_tensor_bytes

    return saved_tensor_bytes(module, inputs)


def release_memory() -> None:
    """Collect garbage and hand the allocator's free pages back to the system (glibc ``malloc_trim``).

    Called between untimed phases so that the resident set of a long-lived
    worker stays that of its live tensors (glibc otherwise keeps freed
    activations of earlier phases resident)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def step_flops(module: nn.Module, batch: Batch) -> int:
    """FLOPs of forward + loss + backward (:func:`fxnas.measure.training_step_flops`); the optimizer step is not counted."""
    from fxnas.measure import training_step_flops

    return training_step_flops(module, (batch.x,), loss=lambda output: loss_of_output(output, batch.y))


# --------------------------------------------------------------------------- #
# peak memory
# --------------------------------------------------------------------------- #


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (VmHWM) to the current one; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def step_peak_memory(step: Callable[[], None], device: torch.device) -> Dict[str, Any]:
    """Peak memory of one call of ``step`` (see the module docstring for the method)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_bytes": int(peak), "step_increase_bytes": int(peak - before),
                "method": "torch.cuda.max_memory_allocated over one step (reset before it)"}
    if reset_peak_rss():
        before = (_proc_status_kib("VmRSS") or 0) * 1024
        step()
        peak = (_proc_status_kib("VmHWM") or 0) * 1024
        return {"peak_bytes": int(peak), "step_increase_bytes": int(max(peak - before, 0)),
                "method": "process VmHWM over one step, reset via /proc/self/clear_refs before it"}
    from fxnas.measure import peak_rss_bytes

    step()
    return {"peak_bytes": peak_rss_bytes(), "step_increase_bytes": None,
            "method": "process-lifetime ru_maxrss (VmHWM reset unavailable)"}


# --------------------------------------------------------------------------- #
# environment
# --------------------------------------------------------------------------- #


def _git(*args: str) -> Optional[str]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device, dtype: torch.dtype = torch.float32) -> Dict[str, Any]:
    """What a result depends on: device, dtype, threads, versions, git commit."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    env: Dict[str, Any] = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        import xautodl  # noqa: F401

        env["xautodl"] = getattr(xautodl, "__version__", "installed")
    except ImportError:
        env["xautodl"] = None
    return env
