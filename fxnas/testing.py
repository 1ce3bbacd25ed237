"""Checking that a rewritten supernet computes what the original computes.

fxnas's exact passes promise that the simplified module is a drop-in
replacement: same outputs, same gradients with respect to the inputs, the
weights and the architecture parameters, and the same buffer updates
(BatchNorm running statistics), in training and in eval mode, up to
floating-point reordering. This module checks that promise on concrete inputs,
for fxnas's own tests and for users who want to check fxnas on their models::

    sgm = fxnas.simplify(model, (x,))
    fxnas.testing.assert_equivalent(model, sgm, (x,), arch_tensors=model.arch_parameters())

What one check does, per mode (``"train"``, ``"eval"``):

1. both modules are put in the mode; every parameter and buffer of both is
   snapshotted by value;
2. ``reference`` runs ``steps`` consecutive passes, then the snapshot is
   restored, then ``candidate`` runs the same passes, then the snapshot is
   restored again (buffers carry over between the steps of one run, as in
   training);
3. a pass: fresh RNG state ``manual_seed(seed + step)`` (inside
   ``torch.random.fork_rng``, so the caller's RNG is untouched), inputs cloned
   (floating ones with ``requires_grad``), forward, the scalar
   ``loss = Σ_i ⟨output_i, cotangent_i⟩`` with cotangents drawn once from a
   generator seeded with ``seed``, and ``torch.autograd.grad`` of it with
   respect to the floating inputs, every parameter that requires grad and the
   ``arch_tensors`` (``.backward()`` is not used: the two modules usually share
   their Parameter objects, and ``.grad`` fields are left untouched). An
   unused tensor's gradient counts as zeros;
4. recorded per pass: every output leaf, every gradient, every buffer value
   after the pass.

Quantities are matched by name, so the candidate may share the reference's
Parameter / buffer objects (what ``fxnas.simplify`` returns) or hold copies
under the same names. A reference parameter or buffer the candidate does not
register under that name is looked up by identity among the candidate's, and
otherwise read from the reference's own object (a shared object that the
candidate uses without registering it).

Comparison: a candidate value ``c`` matches the reference value ``r`` when,
elementwise, ``|c - r| <= atol * scale + rtol * |r|`` — torch.testing's rule
with the absolute tolerance scaled, because reordered sums make errors
proportional to the size of the summands, not of the (possibly cancelling)
result. For outputs and buffers ``scale = max(1, max|r|)`` over the tensor;
for gradients it is also at least the largest gradient of the same kind
(input / parameter / arch) in that pass: a gradient that cancels to about
zero, such as the bias of a convolution followed by a train-mode BatchNorm,
is as noisy as its summands. NaNs match NaNs at the same positions; integer
and bool tensors (e.g. ``num_batches_tracked``) must be equal. Default
tolerances depend on the reference tensor's dtype, see
:data:`DEFAULT_TOLERANCES` (float32's were calibrated on the generated test
supernets: a float32 run of one differs from its float64 run by at most
about 3e-5 of that scale).

Modes, parameters, buffers (including buffers a forward reassigns instead of
updating in place) and the caller's RNG state are restored when the check
returns or raises.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = [
    "DEFAULT_TOLERANCES",
    "QuantityError",
    "EquivalenceReport",
    "equivalence_report",
    "assert_equivalent",
]

#: ``dtype -> (rtol, atol)`` used when the caller gives no tolerance. ``atol``
#: is scaled as the module docstring says.
DEFAULT_TOLERANCES: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    torch.complex128: (1e-7, 1e-9),
    torch.float32: (1e-4, 5e-5),
    torch.complex64: (1e-4, 5e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (5e-2, 1e-2),
}
_FALLBACK_TOLERANCE = (1e-4, 5e-5)

_KINDS = ("structure", "param_value", "output", "input_grad", "param_grad", "arch_grad", "buffer")


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class QuantityError:
    """The difference of one quantity in one pass.

    ``kind`` is one of ``"output"``, ``"input_grad"``, ``"param_grad"``,
    ``"arch_grad"``, ``"buffer"``, ``"param_value"`` (a parameter the
    candidate holds as a copy, compared before the first pass of each mode)
    or ``"structure"`` (outputs of different nesting; ``max_abs`` is then
    ``inf``, as for shape or dtype mismatches). ``name`` is the
    output path (``"[0]['logits']"``), input path, parameter or buffer name,
    or ``"arch[i]"``. ``max_abs`` / ``max_rel`` are the largest elementwise
    absolute / relative differences (``rel`` is ``inf`` where the reference
    is 0 and the candidate is not); ``ok`` says whether it is within the
    tolerance.
    """

    mode: str
    step: int
    kind: str
    name: str
    max_abs: float
    max_rel: float
    ok: bool
    rtol: float
    atol: float
    detail: str = ""

    def describe(self) -> str:
        what = {
            "structure": "output structure",
            "param_value": "value of parameter",
            "output": "output",
            "input_grad": "gradient w.r.t. input",
            "param_grad": "gradient w.r.t. parameter",
            "arch_grad": "gradient w.r.t. arch tensor",
            "buffer": "buffer after the pass",
        }[self.kind]
        text = f"{what} {self.name!s} (mode={self.mode!r}, step={self.step})"
        if self.kind == "structure" or (math.isinf(self.max_abs) and self.detail):
            return f"{text}: {self.detail}"
        text += (
            f": max abs error {self.max_abs:.3g}, max rel error {self.max_rel:.3g}"
            f" (rtol={self.rtol:.1g}, atol={self.atol:.1g})"
        )
        if self.detail:
            text += f"; {self.detail}"
        return text


@dataclasses.dataclass(frozen=True)
class EquivalenceReport:
    """All compared quantities of one check, one entry per (mode, step, quantity)."""

    quantities: Tuple[QuantityError, ...]

    @property
    def ok(self) -> bool:
        return all(q.ok for q in self.quantities)

    @property
    def failures(self) -> Tuple[QuantityError, ...]:
        return tuple(q for q in self.quantities if not q.ok)

    @property
    def max_abs(self) -> float:
        """Largest absolute error over everything compared."""
        return max((q.max_abs for q in self.quantities), default=0.0)

    def max_abs_by_kind(self) -> Dict[str, float]:
        """``kind -> largest absolute error`` (e.g. for a benchmark table)."""
        out: Dict[str, float] = {}
        for q in self.quantities:
            out[q.kind] = max(out.get(q.kind, 0.0), q.max_abs)
        return out

    def per_quantity(self) -> Dict[Tuple[str, str], QuantityError]:
        """``(kind, name) -> the worst entry over modes and steps``."""
        worst: Dict[Tuple[str, str], QuantityError] = {}
        for q in self.quantities:
            key = (q.kind, q.name)
            prev = worst.get(key)
            if prev is None or (prev.ok, -prev.max_abs) > (q.ok, -q.max_abs):
                worst[key] = q
        return worst

    def format(self, limit: int = 12) -> str:
        """One line per differing quantity (its worst pass), structure and parameter values first."""
        fails = self.failures
        if not fails:
            return f"equivalent: {len(self.quantities)} quantities compared, max abs error {self.max_abs:.3g}"
        groups: Dict[Tuple[str, str], List[QuantityError]] = {}
        for q in fails:
            groups.setdefault((q.kind, q.name), []).append(q)
        worst = [max(g, key=lambda q: _finite(q.max_abs)) for g in groups.values()]
        worst.sort(key=lambda q: (_KINDS.index(q.kind) > 1, -_finite(q.max_abs)))
        lines = [f"not equivalent: {len(groups)} quantities differ ({len(fails)} of {len(self.quantities)} comparisons)"]
        for q in worst[:limit]:
            line = "  " + q.describe()
            others = [f"{o.mode}/{o.step}" for o in groups[(q.kind, q.name)] if o is not q]
            if others:
                line += f"; also differs in mode/step {', '.join(others)}"
            lines.append(line)
        if len(worst) > limit:
            lines.append(f"  ... and {len(worst) - limit} more quantities")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _finite(x: float) -> float:
    return x if math.isfinite(x) else float("1e300")


# --------------------------------------------------------------------------- #
# nested outputs / inputs
# --------------------------------------------------------------------------- #


def _flatten(obj: Any, path: str = "") -> List[Tuple[str, Any]]:
    """Leaves of a nested tuple / list / dict, with their paths (``[0]['x']``)."""
    if isinstance(obj, (tuple, list)):
        items: List[Tuple[str, Any]] = []
        for i, v in enumerate(obj):
            items += _flatten(v, f"{path}[{i}]")
        return items
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            items += _flatten(v, f"{path}[{k!r}]")
        return items
    return [(path or "<output>", obj)]


def _structure(obj: Any) -> Any:
    """Nesting skeleton, for comparing structures (containers, keys, leaf kind)."""
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, tuple(_structure(v) for v in obj))
    if isinstance(obj, Mapping):
        return ("dict", tuple((k, _structure(v)) for k, v in obj.items()))
    if isinstance(obj, torch.Tensor):
        return "tensor"
    return type(obj).__name__


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_map_tensors(v, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    if isinstance(obj, Mapping):
        return type(obj)((k, _map_tensors(v, fn)) for k, v in obj.items())
    return obj


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


# --------------------------------------------------------------------------- #
# state
# --------------------------------------------------------------------------- #


class _StateSnapshot:
    """Values of every parameter and buffer of some modules, and their modes.

    Restoring puts back the original *objects* (a forward may reassign a
    buffer attribute) and copies the saved values into them in place.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        self.modes: List[Tuple[nn.Module, bool]] = []
        self.tensors: List[Tuple[Dict[str, Any], str, torch.Tensor, torch.Tensor]] = []
        seen_modules = set()
        for root in modules:
            for module in root.modules():
                if id(module) in seen_modules:
                    continue
                seen_modules.add(id(module))
                self.modes.append((module, module.training))
                for store in (module._parameters, module._buffers):
                    for name, t in store.items():
                        if t is not None:
                            self.tensors.append((store, name, t, t.detach().clone()))

    def restore_values(self) -> None:
        with torch.no_grad():
            for store, name, obj, value in self.tensors:
                store[name] = obj
                obj.copy_(value)

    def restore_modes(self) -> None:
        for module, training in self.modes:
            module.training = training


def _mode_labels(modes: Sequence[str]) -> List[Tuple[str, str]]:
    """``("train", "eval", "train")`` -> labels ``train``, ``eval``, ``train#2`` with their modes."""
    seen: Dict[str, int] = {}
    labels = []
    for mode in modes:
        seen[mode] = seen.get(mode, 0) + 1
        labels.append((mode if seen[mode] == 1 else f"{mode}#{seen[mode]}", mode))
    return labels


def _set_mode(module: nn.Module, mode: str) -> None:
    if mode == "train":
        module.train()
    elif mode == "eval":
        module.eval()
    else:
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")


def _resolve(
    names_and_tensors: Iterable[Tuple[str, torch.Tensor]],
    candidate_named: Iterable[Tuple[str, torch.Tensor]],
) -> List[Tuple[str, torch.Tensor, torch.Tensor]]:
    """Pair each reference tensor with the candidate's: by name, then by identity.

    Falls back to the reference's own object (a shared tensor that the
    candidate may use without registering it).
    """
    by_name: Dict[str, torch.Tensor] = {}
    by_id: Dict[int, torch.Tensor] = {}
    for name, t in candidate_named:
        by_name.setdefault(name, t)
        by_id.setdefault(id(t), t)
    pairs = []
    for name, t in names_and_tensors:
        pairs.append((name, t, by_name.get(name, by_id.get(id(t), t))))
    return pairs


# --------------------------------------------------------------------------- #
# one run
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class _PassRecord:
    structure: Any
    outputs: List[Tuple[str, Any]]
    grads: Dict[Tuple[str, str], torch.Tensor]  # (kind, name) -> grad
    buffers: Dict[str, torch.Tensor]


def _rng_devices(tensors: Iterable[torch.Tensor]) -> List[int]:
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


class _Cotangents:
    """Fixed random cotangents, drawn once per output path from a seeded generator."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.values: Dict[str, torch.Tensor] = {}

    def get(self, path: str, like: torch.Tensor) -> torch.Tensor:
        v = self.values.get(path)
        if v is None or v.shape != like.shape:
            real_dtype = like.real.dtype if like.is_complex() else like.dtype
            v = torch.randn(like.shape, generator=self.generator, dtype=torch.float64).to(real_dtype)
            self.values[path] = v
        return v.to(device=like.device, dtype=like.dtype)


def _run_pass(
    module: nn.Module,
    inputs: Tuple[Any, ...],
    params: List[Tuple[str, torch.Tensor]],
    buffers: Callable[[], List[Tuple[str, torch.Tensor]]],
    arch_tensors: Sequence[torch.Tensor],
    cotangents: _Cotangents,
    rng_seed: int,
    allowed_paths: Optional[Dict[str, Tuple[torch.Size, torch.dtype]]],
) -> _PassRecord:
    input_leaves: List[torch.Tensor] = []

    def clone_input(t: torch.Tensor) -> torch.Tensor:
        # The module gets a non-leaf copy of the leaf we differentiate by, so a
        # forward that modifies its input in place still works.
        leaf = t.detach().clone()
        if not _is_float(leaf):
            return leaf
        leaf.requires_grad_(True)
        input_leaves.append(leaf)
        return leaf.clone()

    devices = _rng_devices([t for _, t in _flatten(inputs) if isinstance(t, torch.Tensor)] + [t for _, t in params])
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(rng_seed)
        args = _map_tensors(inputs, clone_input)
        float_paths = [p for p, t in _flatten(inputs, "input") if isinstance(t, torch.Tensor) and _is_float(t)]
        with torch.enable_grad():
            out = module(*args)
            leaves = _flatten(out)
            loss = None
            for path, leaf in leaves:
                if not (isinstance(leaf, torch.Tensor) and _is_float(leaf) and leaf.requires_grad):
                    continue
                if allowed_paths is not None and allowed_paths.get(path) != (leaf.shape, leaf.dtype):
                    continue  # structure mismatch, reported separately
                term = (leaf * cotangents.get(path, leaf)).sum()
                if term.is_complex():
                    term = term.real
                loss = term if loss is None else loss + term.to(loss.dtype)
            wrt: List[Tuple[Tuple[str, str], torch.Tensor]] = []
            wrt += [(("input_grad", p), t) for p, t in zip(float_paths, input_leaves)]
            wrt += [(("param_grad", n), t) for n, t in params if t.requires_grad]
            wrt += [(("arch_grad", f"arch[{i}]"), t) for i, t in enumerate(arch_tensors)]
            if loss is not None and wrt:
                grads = torch.autograd.grad(loss, [t for _, t in wrt], allow_unused=True)
            else:
                grads = [None] * len(wrt)
    grad_record = {}
    for (key, t), g in zip(wrt, grads):
        grad_record[key] = torch.zeros_like(t) if g is None else g.detach()
    return _PassRecord(
        structure=_structure(out),
        outputs=[(p, v.detach() if isinstance(v, torch.Tensor) else v) for p, v in leaves],
        grads=grad_record,
        buffers={n: b.detach().clone() for n, b in buffers()},
    )


def _run(
    module: nn.Module,
    inputs: Tuple[Any, ...],
    params: List[Tuple[str, torch.Tensor]],
    buffers: Callable[[], List[Tuple[str, torch.Tensor]]],
    arch_tensors: Sequence[torch.Tensor],
    cotangents: _Cotangents,
    seed: int,
    steps: int,
    allowed: Optional[List[Dict[str, Tuple[torch.Size, torch.dtype]]]],
) -> List[_PassRecord]:
    records = []
    for step in range(steps):
        records.append(
            _run_pass(module, inputs, params, buffers, arch_tensors, cotangents, seed + step, allowed[step] if allowed else None)
        )
    return records


# --------------------------------------------------------------------------- #
# comparison
# --------------------------------------------------------------------------- #


def _max_abs(t: torch.Tensor) -> float:
    """Largest finite absolute value (0 for an empty or non-finite tensor)."""
    if not (t.is_floating_point() or t.is_complex()):
        t = t.double()
    a = t.detach().abs()
    a = a[torch.isfinite(a)]
    return float(a.max()) if a.numel() else 0.0


def _tolerance(dtype: torch.dtype, rtol: Optional[float], atol: Optional[float]) -> Tuple[float, float]:
    d_rtol, d_atol = DEFAULT_TOLERANCES.get(dtype, _FALLBACK_TOLERANCE)
    return (d_rtol if rtol is None else rtol, d_atol if atol is None else atol)


def _compare_tensor(
    mode: str,
    step: int,
    kind: str,
    name: str,
    r: torch.Tensor,
    c: Any,
    rtol: Optional[float],
    atol: Optional[float],
    scale: float = 1.0,
) -> QuantityError:
    """Compare one tensor; ``atol`` is multiplied by ``max(scale, max|r|)``."""
    exact = not _is_float(r)
    rt, at = (0.0, 0.0) if exact else _tolerance(r.dtype, rtol, atol)

    def structural(detail: str) -> QuantityError:
        return QuantityError(mode, step, kind, name, math.inf, math.inf, False, rt, at, detail)

    if not isinstance(c, torch.Tensor):
        return structural(f"reference is a tensor, candidate is {type(c).__name__}")
    if c.shape != r.shape:
        return structural(f"shape {tuple(c.shape)} != reference shape {tuple(r.shape)}")
    if c.dtype != r.dtype:
        return structural(f"dtype {c.dtype} != reference dtype {r.dtype}")
    if r.numel() == 0:
        return QuantityError(mode, step, kind, name, 0.0, 0.0, True, rt, at)
    r64 = r.detach().to("cpu", torch.complex128 if r.is_complex() else torch.float64)
    c64 = c.detach().to("cpu", r64.dtype)
    r_abs, c_abs = r64.abs(), c64.abs()
    nan_r, nan_c = torch.isnan(r_abs), torch.isnan(c_abs)
    inf_r, inf_c = torch.isinf(r_abs), torch.isinf(c_abs)
    nan_mismatch = bool((nan_r != nan_c).any())
    inf_mismatch = bool((inf_r | inf_c).any() and ((inf_r | inf_c) & (c64 != r64)).any())
    finite = ~(nan_r | nan_c | inf_r | inf_c)
    diff = torch.where(finite, (c64 - r64).abs(), torch.zeros_like(r_abs))
    max_abs = float(diff.max())
    rel = torch.where(diff == 0, torch.zeros_like(diff), diff / r_abs)
    max_rel = float(rel.max())
    scale = max(scale, _max_abs(r64))
    within = diff <= at * scale + rt * torch.where(finite, r_abs, torch.zeros_like(r_abs))
    if nan_mismatch or inf_mismatch:
        max_abs = max_rel = math.inf
    ok = bool(within.all()) and not nan_mismatch and not inf_mismatch
    detail = ""
    if nan_mismatch:
        detail = "NaN positions differ"
    elif inf_mismatch:
        detail = "infinities differ"
    elif not ok:
        n_bad = int((~within).sum())
        detail = f"{n_bad} of {r.numel()} elements outside tolerance"
    return QuantityError(mode, step, kind, name, max_abs, max_rel, ok, rt, at, detail)


def _compare_pass(
    mode: str, step: int, ref: _PassRecord, cand: _PassRecord, rtol: Optional[float], atol: Optional[float]
) -> List[QuantityError]:
    out: List[QuantityError] = []
    if ref.structure != cand.structure:
        out.append(
            QuantityError(
                mode, step, "structure", "<output>", math.inf, math.inf, False, 0.0, 0.0,
                f"candidate output nesting {_describe_structure(cand.structure)} "
                f"!= reference {_describe_structure(ref.structure)}",
            )
        )
    cand_outputs = dict(cand.outputs)
    for path, r in ref.outputs:
        if path not in cand_outputs:
            out.append(QuantityError(mode, step, "output", path, math.inf, math.inf, False, 0.0, 0.0, "missing in candidate output"))
            continue
        c = cand_outputs[path]
        if isinstance(r, torch.Tensor):
            out.append(_compare_tensor(mode, step, "output", path, r, c, rtol, atol))
        else:
            ok = type(r) is type(c) and r == c
            out.append(QuantityError(mode, step, "output", path, 0.0 if ok else math.inf, 0.0 if ok else math.inf, ok, 0.0, 0.0,
                                     "" if ok else f"candidate {c!r} != reference {r!r}"))
    # Gradients of one kind share a scale: a gradient that cancels to ~0 (the
    # bias of a conv followed by a train-mode BatchNorm) carries the rounding
    # noise of its summands, whose size the other gradients of the kind show.
    kind_scale: Dict[str, float] = {}
    for (kind, _), r in ref.grads.items():
        kind_scale[kind] = max(kind_scale.get(kind, 1.0), _max_abs(r))
    for (kind, name), r in ref.grads.items():
        out.append(_compare_tensor(mode, step, kind, name, r, cand.grads.get((kind, name)), rtol, atol, kind_scale[kind]))
    for name, r in ref.buffers.items():
        out.append(_compare_tensor(mode, step, "buffer", name, r, cand.buffers.get(name), rtol, atol))
    return out


def _describe_structure(s: Any) -> str:
    if isinstance(s, tuple) and len(s) == 2 and s[0] in ("tuple", "list"):
        inner = ", ".join(_describe_structure(v) for v in s[1])
        return f"({inner})" if s[0] == "tuple" else f"[{inner}]"
    if isinstance(s, tuple) and len(s) == 2 and s[0] == "dict":
        return "{" + ", ".join(f"{k!r}: {_describe_structure(v)}" for k, v in s[1]) + "}"
    return str(s)


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


def equivalence_report(
    reference: nn.Module,
    candidate: nn.Module,
    inputs: Sequence[Any],
    *,
    arch_tensors: Iterable[torch.Tensor] = (),
    modes: Sequence[str] = ("train", "eval"),
    steps: int = 2,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    seed: int = 0,
) -> EquivalenceReport:
    """Run the check described in the module docstring and return every difference.

    ``inputs`` are the positional arguments of ``forward`` (a single tensor is
    accepted too); they may be nested tuples / lists / dicts and contain
    non-tensors. ``arch_tensors`` are tensors that require grad and are
    neither parameters nor buffers of the modules (DARTS's plain-tensor
    alphas); parameters are differentiated anyway. ``rtol`` / ``atol``
    override the per-dtype defaults of :data:`DEFAULT_TOLERANCES`.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    arch_tensors = tuple(arch_tensors)
    for i, t in enumerate(arch_tensors):
        if not isinstance(t, torch.Tensor) or not t.requires_grad:
            raise ValueError(f"arch_tensors[{i}] must be a tensor that requires grad")
    if steps < 1:
        raise ValueError("steps must be >= 1")

    ref_params = list(reference.named_parameters())
    cand_params = [(n, c) for n, _, c in _resolve(ref_params, candidate.named_parameters())]

    # Looked up after each pass: a forward may replace a buffer object.
    def ref_buffers() -> List[Tuple[str, torch.Tensor]]:
        return list(reference.named_buffers())

    def cand_buffers() -> List[Tuple[str, torch.Tensor]]:
        return [(n, c) for n, _, c in _resolve(ref_buffers(), candidate.named_buffers())]

    snapshot = _StateSnapshot([reference, candidate])
    quantities: List[QuantityError] = []
    try:
        for label, mode in _mode_labels(modes):
            _set_mode(reference, mode)
            _set_mode(candidate, mode)
            for (name, r), (_, c) in zip(ref_params, cand_params):
                if c is not r:
                    quantities.append(_compare_tensor(label, 0, "param_value", name, r.detach(), c.detach(), rtol, atol))
            cotangents = _Cotangents(seed)
            ref_records = _run(reference, inputs, ref_params, ref_buffers, arch_tensors, cotangents, seed, steps, None)
            snapshot.restore_values()
            allowed = [
                {p: (v.shape, v.dtype) for p, v in rec.outputs if isinstance(v, torch.Tensor)} for rec in ref_records
            ]
            cand_records = _run(candidate, inputs, cand_params, cand_buffers, arch_tensors, cotangents, seed, steps, allowed)
            snapshot.restore_values()
            for step, (r, c) in enumerate(zip(ref_records, cand_records)):
                quantities += _compare_pass(label, step, r, c, rtol, atol)
    finally:
        snapshot.restore_values()
        snapshot.restore_modes()
    return EquivalenceReport(tuple(quantities))


def assert_equivalent(
    reference: nn.Module,
    candidate: nn.Module,
    inputs: Sequence[Any],
    *,
    arch_tensors: Iterable[torch.Tensor] = (),
    modes: Sequence[str] = ("train", "eval"),
    steps: int = 2,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    seed: int = 0,
) -> EquivalenceReport:
    """Raise ``AssertionError`` unless ``candidate`` is numerically equivalent to ``reference``.

    Same arguments as :func:`equivalence_report`; the error message names each
    differing quantity (output path, parameter / buffer name, arch tensor,
    mode and step) with its largest absolute and relative error. Returns the
    report when equivalent.
    """
    report = equivalence_report(
        reference, candidate, inputs, arch_tensors=arch_tensors, modes=modes, steps=steps,
        rtol=rtol, atol=atol, seed=seed,
    )
    if not report.ok:
        raise AssertionError(report.format())
    return report
