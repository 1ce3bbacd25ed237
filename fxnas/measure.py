"""Measuring a training step: bytes saved for backward, FLOPs, and time.

Deterministic figures (bytes autograd saves for backward, FLOPs) are better
evidence than seconds on a noisy machine; times are compared as ratios of
medians of interleaved runs measured in one process.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

__all__ = [
    "saved_tensor_bytes",
    "training_step_flops",
    "flop_counter",
    "interleaved_times",
    "TimingResult",
    "loss_of",
    "peak_rss_bytes",
]


def loss_of(output: Any) -> torch.Tensor:
    """A scalar to backpropagate from a model output (tensor, or tuple/list/dict of tensors)."""
    if isinstance(output, torch.Tensor):
        return output.float().pow(2).mean() if output.is_floating_point() else output.sum() * 0
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        parts = [loss_of(o) for o in output if isinstance(o, (torch.Tensor, tuple, list, dict))]
        return sum(parts[1:], parts[0])
    raise TypeError(f"cannot make a loss from {type(output).__name__}")


def saved_tensor_bytes(module: torch.nn.Module, inputs: tuple, include_state: bool = False) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward pass.

    Every tensor packed by autograd is recorded through
    ``torch.autograd.graph.saved_tensors_hooks``; a storage saved by several
    operations (a ReLU output read by six convolutions) counts once. The
    module's own parameters and buffers (kernels, index maps) live anyway and
    are left out unless ``include_state``: what remains is activation memory,
    which grows with the batch.

    No backward runs: the pack hook keeps each storage alive in a list (so
    that addresses stay distinct while counting) and hands autograd nothing.
    A hook that returned the tensor itself would leak: an op whose grad_fn
    saves its own output makes a reference cycle through autograd's C++
    graph that the garbage collector cannot see.
    """
    state = set()
    if not include_state:
        state = {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers())}
    storages: dict[tuple, int] = {}
    alive: list = []

    def pack(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), tensor.device.type, tensor.device.index)
        if storage.data_ptr() not in state and key not in storages:
            storages[key] = storage.nbytes()
            alive.append(storage)

    def unpack(_: None) -> torch.Tensor:  # pragma: no cover -- nothing backpropagates through this forward
        raise RuntimeError("saved_tensor_bytes runs no backward")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        output = module(*inputs)
    del output
    alive.clear()
    return sum(storages.values())


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``, grouped convolutions counted correctly.

    Each of the two products (input gradient, weight gradient) costs what the
    forward convolution costs: 2 x batch x output positions x ``w.numel()``
    (the weight already holds C_in/groups input channels). torch's own
    formula (2.14) counts the weight gradient as a dense convolution over all
    input channels, overcounting a depthwise convolution by its channel count.
    """
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    forward = 2 * x_shape[0] * math.prod(spatial) * math.prod(w_shape)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> "torch.utils.flop_counter.FlopCounterMode":
    """A ``FlopCounterMode`` with grouped-convolution backward counted correctly (see ``_conv_backward_flop``)."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})


def training_step_flops(module: torch.nn.Module, inputs: tuple, loss: Callable[[Any], torch.Tensor] = None) -> int:
    """FLOPs of one forward + backward pass (``torch.utils.flop_counter``, grouped convolutions fixed)."""
    counter = flop_counter()
    with counter:
        (loss or loss_of)(module(*inputs)).backward()
    module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


@dataclass
class TimingResult:
    """Median and spread of repeated timings of one variant (seconds)."""

    name: str
    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        return (max(self.times) - min(self.times)) if self.times else 0.0


def interleaved_times(
    steps: Mapping[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1
) -> dict[str, TimingResult]:
    """Time each callable ``repeats`` times, interleaving the variants (A B C A B C ...).

    Interleaving spreads slow phases of a noisy machine over all variants, so
    ratios of medians are fair.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    results = {name: TimingResult(name, []) for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            results[name].times.append(time.perf_counter() - start)
    return results


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (bytes; Linux reports KiB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
