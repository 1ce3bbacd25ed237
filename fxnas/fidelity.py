"""``fxnas.fidelity``: how close an approximate (topo-mode) supernet is to the original.

Topo mode changes the supernet's function by design (DESIGN.md), so it is
*measured*: on one batch, the relative output error and the cosine similarity
between the architecture-weight gradients of the original and the simplified
module. A search driven by the simplified module moves the architecture
weights in the direction of its gradient; a cosine near 1 means it moves them
where the original would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from .measure import loss_of

__all__ = ["FidelityReport", "fidelity", "architecture_tensors"]


@dataclass
class FidelityReport:
    """Output error and architecture-gradient agreement on one batch (train mode by default)."""

    relative_output_error: float
    output_cosine: float
    arch_grad_cosine: float
    arch_grad_cosine_per_tensor: dict[str, float] = field(default_factory=dict)
    arch_grad_norm_ratio: float = float("nan")
    mode: str = "train"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        per = ", ".join(f"{k} {v:.3f}" for k, v in self.arch_grad_cosine_per_tensor.items())
        return (
            f"fidelity ({self.mode}): relative output error {self.relative_output_error:.3g}, "
            f"output cosine {self.output_cosine:.4f}, architecture-gradient cosine "
            f"{self.arch_grad_cosine:.4f} (norm ratio {self.arch_grad_norm_ratio:.3g})"
            + (f" [{per}]" if per else "")
        )


def architecture_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's architecture weights: ``arch_parameters()`` if it has one, else alpha/beta/arch-named params."""
    method = getattr(model, "arch_parameters", None)
    if callable(method):
        tensors = list(method())
        names = {id(p): n for n, p in model.named_parameters()}
        return [(names.get(id(t), f"arch_{i}"), t) for i, t in enumerate(tensors)]
    keys = ("alpha", "arch", "beta")
    return [(n, p) for n, p in model.named_parameters() if any(k in n.lower() for k in keys)]


def _flatten_outputs(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output.reshape(-1)
    if isinstance(output, dict):
        output = list(output.values())
    return torch.cat([_flatten_outputs(o) for o in output if isinstance(o, (torch.Tensor, tuple, list, dict))])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denominator = a.norm() * b.norm()
    if denominator == 0:
        return float("nan")
    return float((a * b).sum() / denominator)


def _run(module, inputs, tensors, loss_fn, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        output = module(*inputs)
        loss = loss_fn(output)
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
    return _flatten_outputs(output).detach().double(), [g.detach().double() for g in grads]


def fidelity(
    original: torch.nn.Module,
    simplified: torch.nn.Module,
    inputs: Sequence[Any] | torch.Tensor,
    *,
    arch_tensors: Iterable[tuple[str, torch.Tensor]] | Iterable[torch.Tensor] | None = None,
    loss_fn: Callable[[Any], torch.Tensor] = loss_of,
    mode: str = "train",
    seed: int = 0,
) -> FidelityReport:
    """Compare ``simplified`` with ``original`` on one batch.

    Both modules run in ``mode`` with the same RNG state; running statistics
    and every buffer are restored afterwards, and ``.grad`` fields are not
    touched (gradients come from ``torch.autograd.grad``). Architecture
    weights are matched by name, so ``simplified`` may be built from a copy of
    ``original`` (topo mode ties floated parameters, changing the model it
    simplifies: keep an untouched copy as the reference). ``loss_fn`` maps
    the output to the scalar whose architecture gradient is compared (default:
    the mean square of the output; pass a cross-entropy with labels for a
    search-like loss).
    """
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if arch_tensors is None:
        named = architecture_tensors(original)
    else:
        items = list(arch_tensors)
        named = [(n, t) if isinstance(n, str) else (f"arch_{i}", n) for i, (n, t) in
                 enumerate(items if items and isinstance(items[0], tuple) else [(None, t) for t in items])]
        named = [(n if n else f"arch_{i}", t) for i, (n, t) in enumerate(named)]
    if not named:
        raise ValueError("fxnas.fidelity: no architecture weights found; pass arch_tensors=")
    tensors = [t for _, t in named]
    # The simplified module may hold copies (simplify of a deep copy): match by name.
    by_name = dict(simplified.named_parameters())
    simplified_tensors = [by_name.get(name, t) for name, t in named]

    modules = (original, simplified)
    buffers = {id(b): b.detach().clone() for m in modules for b in m.buffers()}
    modes = {id(m): m.training for m in modules for m in m.modules()}
    try:
        for module in modules:
            module.train(mode == "train")
        out_a, grads_a = _run(original, inputs, tensors, loss_fn, seed)
        _restore(modules, buffers)
        out_b, grads_b = _run(simplified, inputs, simplified_tensors, loss_fn, seed)
    finally:
        _restore(modules, buffers)
        for module in modules:
            for sub in module.modules():
                sub.training = modes.get(id(sub), sub.training)

    relative = float((out_b - out_a).norm() / out_a.norm()) if out_a.norm() > 0 else float("nan")
    flat_a, flat_b = torch.cat([g.reshape(-1) for g in grads_a]), torch.cat([g.reshape(-1) for g in grads_b])
    per = {name: _cosine(a.reshape(-1), b.reshape(-1)) for (name, _), a, b in zip(named, grads_a, grads_b)}
    ratio = float(flat_b.norm() / flat_a.norm()) if flat_a.norm() > 0 else float("nan")
    return FidelityReport(
        relative_output_error=relative,
        output_cosine=_cosine(out_a, out_b),
        arch_grad_cosine=_cosine(flat_a, flat_b),
        arch_grad_cosine_per_tensor={k: (v if not math.isnan(v) else float("nan")) for k, v in per.items()},
        arch_grad_norm_ratio=ratio,
        mode=mode,
    )


def _restore(modules, buffers) -> None:
    with torch.no_grad():
        for module in modules:
            for b in module.buffers():
                saved = buffers.get(id(b))
                if saved is not None:
                    b.copy_(saved)
