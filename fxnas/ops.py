"""Runtime functions that rewritten graphs call (``call_function`` targets).

They are module-level functions so that generated code, ``deepcopy`` and
``torch.save`` of a rewritten GraphModule can refer to them by name.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.fx.node import has_side_effect

from .errors import TracedValueGuardError

__all__ = [
    "weighted_sum",
    "check_traced_value",
    "enter_grad_mode",
    "exit_grad_mode",
    "weight_total",
    "relative_weights",
]


def weighted_sum(candidates: Sequence[torch.Tensor], weights: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """The canonical mixed edge: ``Σ_m candidates[m] * weights[m]``, summed left to right.

    A weight of ``None`` marks a term that is already weighted (the output of
    a merged group of candidates, which applies its weights inside).

    Every weighted-sum spelling a supernet uses (Python ``sum`` over a generator,
    ``torch.stack`` + ``torch.sum``, running sums, ``einsum``) is rewritten into
    one call of this function, so later passes see a single node per edge whose
    arguments are the candidate outputs and the scalar architecture weights.
    The products and additions are those of the original sum; only the order
    of the additions may differ (floating-point reordering).
    """
    if len(candidates) != len(weights) or not candidates:
        raise ValueError(
            f"weighted_sum needs as many weights as candidates (at least one), "
            f"got {len(candidates)} candidates and {len(weights)} weights"
        )
    total = candidates[0] if weights[0] is None else candidates[0] * weights[0]
    for candidate, weight in zip(candidates[1:], weights[1:]):
        total = total + (candidate if weight is None else candidate * weight)
    return total


@has_side_effect
def check_traced_value(actual: Any, expected: Any, description: str) -> None:
    """Guard: raise if a value the trace depended on differs at run time.

    The tracer resolves Python control flow on shapes (``if a.shape[2] ==
    x.shape[2]``) with the example inputs and records one such guard per
    decision, so a graph is never silently used with inputs that would have
    taken the other branch.
    """
    if actual != expected:
        raise TracedValueGuardError(
            f"fxnas: the graph was traced with {description} == {expected!r}, "
            f"but this input gives {actual!r}. Trace (or simplify) again with "
            f"example inputs of this shape."
        )


@has_side_effect
def enter_grad_mode(enabled: bool) -> bool:
    """Switch autograd recording on or off (a ``with torch.no_grad():`` block); returns the previous mode.

    The tracer records the grad-mode changes of the traced code, which plain
    fx drops (a no_grad region would silently start recording gradients).
    """
    previous = torch.is_grad_enabled()
    torch._C._set_grad_enabled(enabled)
    return previous


@has_side_effect
def exit_grad_mode(previous: bool) -> None:
    """Restore the grad mode that :func:`enter_grad_mode` returned."""
    torch._C._set_grad_enabled(previous)


def weight_total(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``W_G = Σ_m w_m``: the total architecture weight of a floated group (topo mode)."""
    total = weights[0]
    for weight in weights[1:]:
        total = total + weight
    return total


def relative_weights(weights: Sequence[torch.Tensor], total: torch.Tensor) -> list[torch.Tensor]:
    """``w_m / W_G`` inside a floated group, and ``1/|G|`` each when ``W_G`` is exactly zero.

    A group whose total weight is zero contributes ``W_G · s(…) = 0`` whatever
    the relative weights are; single-path methods (GDAS, ROME) give every
    group but the sampled candidate's a total of exactly 0, and ``0/0`` would
    poison the whole step with NaN. The uniform choice keeps the value finite
    and the gradient of ``W_G`` (hence of every alpha in the group) defined.
    """
    zero = total == 0
    safe = torch.where(zero, torch.ones_like(total), total)
    uniform = torch.full_like(total, 1.0 / len(weights))
    return [torch.where(zero, uniform, weight / safe) for weight in weights]
