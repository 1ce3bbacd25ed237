"""Memory figures of a search step.

* **Saved for backward**: the peak bytes of the distinct storages that
  autograd holds for backward during a step, counted with
  :func:`torch.autograd.graph.saved_tensors_hooks` (the hooks return the
  tensor itself, so nothing is copied and the measured step is the real one).
  Storages of parameters and buffers are counted apart: they exist anyway.
* **Peak RSS** of the process (``resource.getrusage``; a high-water mark
  over the whole process life, so compare runs made in separate processes).
* **Peak CUDA memory** (``torch.cuda.max_memory_allocated``) when on a GPU.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Dict, Iterable, Iterator, Optional, Set, Tuple

import torch

from fxnas.measure import peak_rss_bytes

__all__ = ["SavedTensorMeter", "peak_rss_mb", "cuda_peak_mb"]

MB = 1024.0 * 1024.0


def _storage_key(t: torch.Tensor) -> Optional[Tuple[str, int]]:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse / exotic tensors
        return None
    return (str(t.device), storage.data_ptr())


class SavedTensorMeter:
    """The peak of the bytes held for backward inside :meth:`measure`.

    Every tensor autograd saves is counted once per storage while any saved
    tensor of that storage is alive (a weak reference tells when the graph
    lets it go), so a step with several forward/backward passes (ROME's
    samples, second-order DARTS) reports its high-water mark, not the sum.
    Storages of ``exclude`` (parameters, buffers: they exist anyway) are
    counted apart, in ``state_bytes``.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._state_keys: Set[Tuple[str, int]] = {
            key for key in (_storage_key(t) for t in exclude) if key is not None
        }
        self._live: Dict[Tuple[str, int], list] = {}  # key -> [bytes, live tensor count]
        self._live_bytes = 0
        self.peak_bytes = 0
        self.state_bytes = 0
        self._state_seen: Set[Tuple[str, int]] = set()

    def _release(self, key: Tuple[str, int]) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self._live_bytes -= entry[0]
            del self._live[key]

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key is None:
            return t
        if key in self._state_keys:
            if key not in self._state_seen:
                self._state_seen.add(key)
                self.state_bytes += t.untyped_storage().nbytes()
            return t
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [t.untyped_storage().nbytes(), 0]
            self._live_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self._live_bytes)
        entry[1] += 1
        weakref.finalize(t, self._release, key)
        return t

    @contextlib.contextmanager
    def measure(self) -> Iterator["SavedTensorMeter"]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self

    @property
    def activation_mb(self) -> float:
        """Peak bytes saved for backward (parameters and buffers excluded), MiB."""
        return self.peak_bytes / MB


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB (:func:`fxnas.measure.peak_rss_bytes`)."""
    return peak_rss_bytes() / MB


def cuda_peak_mb(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / MB
