"""Errors and warnings raised by fxnas.

Every error that is caused by the user's model names the user's source line
(``file:line`` and the code on it) and says what to do instead.
"""

from __future__ import annotations

import os
import traceback

__all__ = [
    "FxnasError",
    "TraceError",
    "DataDependentControlFlowError",
    "NondeterministicTraceError",
    "FrozenTensorError",
    "TracedValueGuardError",
    "PlainTensorAttributeWarning",
    "UnusedParametersWarning",
    "user_frame",
    "format_user_frame",
]

_TORCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(traceback.__file__)))
_FXNAS_DIR = os.path.dirname(os.path.abspath(__file__))


class FxnasError(Exception):
    """Base class of every error fxnas raises on purpose."""


class TraceError(FxnasError):
    """The model cannot be traced into a faithful graph."""


class DataDependentControlFlowError(TraceError):
    """Python control flow or a Python number depends on tensor *values*."""


class NondeterministicTraceError(TraceError):
    """The forward makes a Python-level random choice that a trace would bake in."""


class FrozenTensorError(TraceError):
    """A tensor that requires grad was computed outside the graph and would be frozen."""


class TracedValueGuardError(FxnasError, RuntimeError):
    """At run time, an input differs from the traced one in a way the graph depends on."""


class PlainTensorAttributeWarning(UserWarning):
    """Tensors held as plain attributes (not Parameters or buffers) were kept live."""


class UnusedParametersWarning(UserWarning):
    """The traced graph does not use some of the model's parameters (a sampled sub-network?)."""


def _is_internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    if path.startswith(_FXNAS_DIR):
        return True
    if "/torch/" in path or path.startswith(_TORCH_DIR + os.sep + "torch"):
        return True
    # Frames of contextlib/functools wrappers and importlib are never the user's.
    base = os.path.basename(path)
    return base in {"contextlib.py", "functools.py", "random.py"} or "<frozen" in filename


def user_frame(skip_internal: bool = True) -> traceback.FrameSummary | None:
    """The innermost stack frame that belongs to the user's code (not torch, not fxnas)."""
    for frame in reversed(traceback.extract_stack()):
        if not skip_internal or not _is_internal(frame.filename):
            return frame
    return None


def format_user_frame(frame: traceback.FrameSummary | None = None) -> str:
    """``path:line (in function): code`` for the user's innermost frame."""
    frame = frame if frame is not None else user_frame()
    if frame is None:
        return "<unknown location>"
    code = f": {frame.line.strip()}" if frame.line else ""
    return f"{frame.filename}:{frame.lineno} (in {frame.name}){code}"
