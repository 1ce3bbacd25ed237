"""fxnas: a torch.fx graph compiler for differentiable NAS supernets.

    gm  = fxnas.trace(model, example_inputs)        # NAS-aware torch.fx tracing
    sgm = fxnas.simplify(gm_or_model, example_inputs=None, mode="exact")
    fxnas.explain(sgm)                              # what was found and rewritten

See README.md and DESIGN.md.
"""

from __future__ import annotations

from .errors import (
    DataDependentControlFlowError,
    FrozenTensorError,
    FxnasError,
    NondeterministicTraceError,
    PlainTensorAttributeWarning,
    TraceError,
    TracedValueGuardError,
    UnusedParametersWarning,
)
from . import testing
from .diff import diff
from .draw import draw
from .explain import explain
from .fidelity import FidelityReport, fidelity
from .pipeline import PassFailedError, pipeline, simplify
from .plug import PlugReport, plug, unplug
from .report import SimplifyReport
from .tracing import trace

__version__ = "0.1.0"

__all__ = [
    "trace",
    "simplify",
    "explain",
    "plug",
    "unplug",
    "PlugReport",
    "fidelity",
    "FidelityReport",
    "draw",
    "diff",
    "pipeline",
    "SimplifyReport",
    "FxnasError",
    "TraceError",
    "DataDependentControlFlowError",
    "NondeterministicTraceError",
    "FrozenTensorError",
    "TracedValueGuardError",
    "PlainTensorAttributeWarning",
    "UnusedParametersWarning",
    "PassFailedError",
]
