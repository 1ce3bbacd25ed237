"""Property tests: on random supernets, fxnas's exact mode is numerically equivalent.

``supernets()`` (tests/strategies.py) draws random NAS-Bench-201- and
DARTS-like supernets with every weighted-sum shape of DESIGN.md; a failing
example prints the drawn supernet. The number of examples comes from the
hypothesis profile (tests/conftest.py; ``make test`` runs the ``ci`` profile).
"""

from __future__ import annotations

import torch
from hypothesis import given

import fxnas
import fxnas.testing
from strategies import MixedEdge, supernets


def _state(model: torch.nn.Module):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _simulate_optimizer_step(model: torch.nn.Module, arch_tensors, seed: int) -> None:
    """Update every weight and alpha in place, as an optimizer step would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + list(arch_tensors):
            t.add_(0.1 * torch.randn(t.shape, generator=gen, dtype=t.dtype))


@given(supernets())
def test_simplify_exact_is_equivalent(spec):
    model, inputs, arch_tensors = spec.build()
    before = _state(model)
    sgm = fxnas.simplify(model, inputs)  # mode="exact" is the default

    # Simplifying neither runs the model for real (BN statistics untouched) nor copies weights.
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "simplify changed the model's state"
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in sgm.parameters()), "simplify copied parameters instead of sharing them"

    # train -> eval -> train: switching back must not keep eval-mode folded weights.
    fxnas.testing.assert_equivalent(model, sgm, inputs, arch_tensors=arch_tensors, modes=("train", "eval", "train"))

    # Weights and alphas change between steps: nothing merged or folded may be cached stale.
    _simulate_optimizer_step(model, arch_tensors, spec.config.seed)
    fxnas.testing.assert_equivalent(model, sgm, inputs, arch_tensors=arch_tensors, modes=("eval", "train"), steps=1)


@given(supernets())
def test_trace_is_equivalent(spec):
    """The traced graph alone (no passes) must already be equivalent: isolates tracer bugs."""
    model, inputs, arch_tensors = spec.build()
    gm = fxnas.trace(model, inputs)
    fxnas.testing.assert_equivalent(model, gm, inputs, arch_tensors=arch_tensors)


@given(supernets())
def test_every_mixed_edge_is_found(spec):
    """Equivalence is only meaningful if the edges are rewritten: each constructed edge must be found."""
    model, inputs, _ = spec.build()
    found = fxnas.explain(model, inputs).mixed_edges
    assert len(found) == spec.n_mixed_edges, f"found {len(found)} of {spec.n_mixed_edges} mixed edges"


@given(supernets())
def test_generated_supernets_are_valid(spec):
    """The strategy itself: builds, runs forward+backward, has mixed edges, passes a self-check."""
    model, inputs, arch_tensors = spec.build()
    cfg = spec.config
    assert spec.n_mixed_edges >= 1
    assert all(len(edge.ops) >= 2 for cell in cfg.cells for edge in cell.edges)
    edges = [m for m in model.modules() if isinstance(m, MixedEdge)]
    assert len(edges) == spec.n_mixed_edges and all(len(e.ops) >= 2 for e in edges)
    assert all(t.dtype == torch.float64 for t in list(model.parameters()) + list(inputs) + list(arch_tensors))
    assert all(t.requires_grad and not isinstance(t, torch.nn.Parameter) for t in arch_tensors)

    # Built deterministically from the config.
    again, inputs_again, _ = spec.build()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(inputs, inputs_again))

    # Eager forward + backward reaches the arch weights (softmax / sigmoid / Gumbel all pass gradient).
    out = model(*inputs)
    feature = out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, tuple) else out["features"])
    arch = list(arch_tensors) or [p for n, p in model.named_parameters() if "alphas" in n or "arch_parameters" in n]
    wrt = [*arch]
    if cfg.arch.storage == "input":
        alphas = inputs[1].clone().requires_grad_(True)
        feature = model(inputs[0], alphas)
        feature = feature if isinstance(feature, torch.Tensor) else (
            feature[0] if isinstance(feature, tuple) else feature["features"])
        wrt = [alphas]
    assert wrt
    grads = torch.autograd.grad(feature.square().sum(), wrt, allow_unused=True)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)

    fxnas.testing.assert_equivalent(model, model, inputs, arch_tensors=arch_tensors)
