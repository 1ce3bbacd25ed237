"""Data parallelism: the same ``fxnas search`` command under ``torchrun``.

``torchrun --nproc_per_node P -m fxnas search ...`` sets ``WORLD_SIZE`` /
``RANK`` / ``LOCAL_RANK``; the search then initialises a process group
(``gloo`` on CPU, ``nccl`` on CUDA), wraps the compiled network in
:class:`~torch.nn.parallel.DistributedDataParallel` (weight gradients
all-reduced by DDP) and averages the architecture gradients itself (the
architecture tensors live outside the network).  Every process uses the same
seed, so the architecture tensors start equal and Gumbel samples agree; they
are broadcast from rank 0 anyway.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["DistInfo", "init_distributed", "shutdown_distributed", "all_reduce_mean", "broadcast_tensors", "used_parameter_names", "wrap_ddp"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str, backend: Optional[str] = None) -> DistInfo:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE > 1``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = backend or ("nccl" if device_kind == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def shutdown_distributed(info: "DistInfo", wait: bool = True) -> None:
    """Wait for every process (unless ``wait`` is false: after an error), then tear the process group down.

    A process that exits with the group still alive can abort in gloo's
    background threads ("terminate called without an active exception")
    while its peers are still finishing their last collective.
    """
    if info.enabled and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(tensors: Iterable[torch.Tensor], info: DistInfo) -> None:
    """Average ``tensors`` (in place) over the processes."""
    if not info.enabled:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(info.world_size)


def broadcast_tensors(tensors: Iterable[torch.Tensor], info: DistInfo, src: int = 0) -> None:
    if not info.enabled:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=src)


def used_parameter_names(network: nn.Module, example_args: Sequence[torch.Tensor]) -> set:
    """Names of the parameters that receive a gradient from ``network(*example_args)``.

    Found by one probe forward/backward (with cloned buffers, so the running
    statistics are untouched, and no randomness drawn): a rewritten network
    may read a parameter through a module that holds it under another name,
    so reading the graph is not enough.  DDP must not wait for gradients of
    parameters the network never uses (the alphas, when the architecture
    weights are graph inputs; copies a rewrite left registered).
    """
    from torch.func import functional_call

    params = dict(network.named_parameters())
    buffers = {name: buffer.clone() for name, buffer in network.named_buffers()}
    output = functional_call(network, buffers, tuple(example_args))
    grads = torch.autograd.grad(output.float().sum(), list(params.values()), allow_unused=True)
    return {name for name, grad in zip(params, grads) if grad is not None}


def wrap_ddp(network: nn.Module, ignore: Sequence[str], info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(network)``, ignoring the named parameters."""
    from torch.nn.parallel import DistributedDataParallel

    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(network, list(ignore))
    device_ids: Optional[List[int]] = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    # BatchNorm running statistics follow rank 0 at every forward (DDP's default);
    # newer torch spells the flag forward_sync_buffers, older broadcast_buffers.
    import inspect

    flag = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers"
    return DistributedDataParallel(network, device_ids=device_ids, **{flag: True})
