"""Topo mode (float_shared + kernel_norm) against direct implementations of the DESIGN.md formulas.

The expected values are written out here with plain ``torch.nn.functional``
calls; they never call the passes or fxnas's kernel helpers.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxnas
from fxnas.modules import MergedCandidates

DT = torch.float64
C = 4
EPS = 1e-5  # kernel_norm's epsilon


def normalized(kernel: torch.Tensor) -> torch.Tensor:
    """K / (||K[c]||_2 + eps), per output channel: the DESIGN formula."""
    norms = kernel.reshape(kernel.shape[0], -1).norm(dim=1)
    return kernel / (norms + EPS).reshape(-1, *([1] * (kernel.dim() - 1)))


def centre(kernel: torch.Tensor, size: int) -> torch.Tensor:
    pad = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, [pad] * 4)


def batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Training-mode batch norm with batch statistics (no state touched)."""
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    y = (x - mean) / torch.sqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight.reshape(1, -1, 1, 1) + bn.bias.reshape(1, -1, 1, 1)
    return y


class NB201Edge(nn.Module):
    """skip, ReLU-Conv1x1-BN, ReLU-Conv3x3-BN (NB201 search: conv bias on, BN without affine/statistics)."""

    def __init__(self):
        super().__init__()
        def rcb(k):
            return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, k, padding=k // 2, bias=True),
                                 nn.BatchNorm2d(C, affine=False, track_running_stats=False))
        self.ops = nn.ModuleList([nn.Identity(), rcb(1), rcb(3)])
        self.alphas = nn.Parameter(torch.randn(3, dtype=DT))

    def forward(self, x):
        w = torch.softmax(self.alphas, 0)
        return sum(op(x) * wi for op, wi in zip(self.ops, w))


def test_float_shared_and_kernel_norm_match_the_formula():
    torch.manual_seed(0)
    model = NB201Edge().to(DT)
    x = torch.randn(4, C, 6, 6, dtype=DT)
    sgm = fxnas.simplify(model, x, mode="topo")
    report = fxnas.explain(sgm)
    assert report.pass_record("float_shared").stats["floated_groups"] == 1
    assert report.pass_record("kernel_norm").stats["normalized"] == 1

    w = torch.softmax(model.alphas, 0)
    conv1, conv3 = model.ops[1][1], model.ops[2][1]
    W = w[1] + w[2]
    kernel = (w[1] / W) * centre(normalized(conv1.weight), 3) + (w[2] / W) * normalized(conv3.weight)
    z = batch_norm(F.conv2d(F.relu(x), kernel, None, padding=1), model.ops[1][2])  # biases dropped: BN cancels them
    expected = w[0] * x + W * z
    torch.testing.assert_close(sgm(x), expected, rtol=1e-9, atol=1e-10)


def test_every_architecture_weight_gets_a_gradient_through_nested_weights():
    torch.manual_seed(1)
    model = NB201Edge().to(DT)
    x = torch.randn(4, C, 6, 6, dtype=DT)
    sgm = fxnas.simplify(model, x, mode="topo")
    (grad,) = torch.autograd.grad(sgm(x).pow(2).sum(), [model.alphas])
    assert torch.isfinite(grad).all() and (grad.abs() > 1e-8).all()


class DartsEdge(nn.Module):
    """Double-stacked separable convs beside single-stage dilated convs (unaligned non-linearity)."""

    def __init__(self):
        super().__init__()

        def stage(k, dilation=1):
            pad = dilation * (k - 1) // 2
            return [nn.ReLU(), nn.Conv2d(C, C, k, padding=pad, dilation=dilation, groups=C, bias=False),
                    nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C, affine=False, track_running_stats=False)]

        self.ops = nn.ModuleList([
            nn.Sequential(*stage(3), *stage(3)),     # sep_conv_3x3
            nn.Sequential(*stage(5), *stage(5)),     # sep_conv_5x5
            nn.Sequential(*stage(3, 2)),             # dil_conv_3x3
            nn.Sequential(*stage(5, 2)),             # dil_conv_5x5
        ])
        self.alphas = nn.Parameter(torch.randn(4, dtype=DT))

    def forward(self, x):
        w = torch.softmax(self.alphas, 0)
        return sum(wi * op(x) for wi, op in zip(w, self.ops))


def dilate(kernel: torch.Tensor, d: int) -> torch.Tensor:
    k = kernel.shape[-1]
    out = kernel.new_zeros(kernel.shape[:2] + (d * (k - 1) + 1,) * 2)
    out[..., ::d, ::d] = kernel
    return out


def test_recursion_for_candidates_of_different_depth_matches_the_formula():
    torch.manual_seed(2)
    model = DartsEdge().to(DT)
    original = copy.deepcopy(model)  # the pass ties floated pointwise convs to the group mean
    x = torch.randn(4, C, 9, 9, dtype=DT)
    sgm = fxnas.simplify(model, x, mode="topo")
    groups = fxnas.explain(sgm).pass_record("float_shared").stats["groups"]
    assert len(groups) == 2 and "level 2" in groups[1]

    w = torch.softmax(model.alphas, 0)
    ops = original.ops
    # level 1: the first stage of all four, merged on relu(x) into one 9x9 depthwise kernel
    first = [(ops[0][1].weight, 1), (ops[1][1].weight, 1), (ops[2][1].weight, 2), (ops[3][1].weight, 2)]
    W = w.sum()
    depthwise = sum((w[m] / W) * centre(dilate(normalized(k), d), 9) for m, (k, d) in enumerate(first))
    pointwise = torch.stack([ops[m][2].weight for m in range(4)]).mean(0)  # tied: the mean of the copies
    z = F.conv2d(F.relu(x), depthwise, padding=4, groups=C)
    z = batch_norm(F.conv2d(z, pointwise), ops[0][3])
    # level 2: the separable convs continue from z with their second stage
    W_c = w[0] + w[1]
    second = (w[0] / W_c) * centre(normalized(ops[0][5].weight), 5) + (w[1] / W_c) * normalized(ops[1][5].weight)
    pointwise2 = (ops[0][6].weight + ops[1][6].weight) / 2
    y_c = batch_norm(F.conv2d(F.conv2d(F.relu(z), second, padding=2, groups=C), pointwise2), ops[0][7])
    expected = (w[2] + w[3]) * z + W_c * y_c
    torch.testing.assert_close(sgm(x), expected, rtol=1e-8, atol=1e-9)


def test_floated_modules_are_tied_and_the_state_dict_round_trips():
    torch.manual_seed(3)
    model = DartsEdge().to(DT)
    copies = [model.ops[m][2].weight.detach().clone() for m in range(4)]
    x = torch.randn(2, C, 9, 9, dtype=DT)
    sgm = fxnas.simplify(model, x, mode="topo")
    torch.testing.assert_close(model.ops[0][2].weight, torch.stack(copies).mean(0))  # tied to the mean
    torch.testing.assert_close(model.ops[1][2].weight, copies[1])  # other copies untouched, still registered
    assert list(sgm.state_dict()) == list(model.state_dict())
    fresh = DartsEdge().to(DT)
    sgm.load_state_dict(fresh.state_dict())  # an original checkpoint loads
    torch.testing.assert_close(model.ops[3][2].weight, fresh.ops[3][2].weight)


def test_one_hot_weights_give_finite_values_and_gradients():
    """GDAS/ROME: every floated group but the sampled candidate's has total weight exactly 0."""

    class OneHot(NB201Edge):
        def forward(self, x):
            probs = torch.softmax(self.alphas, 0)
            hard = torch.zeros_like(probs).scatter(0, probs.argmax().reshape(1), 1.0)
            w = hard - probs.detach() + probs
            return sum(op(x) * wi for op, wi in zip(self.ops, w))

    torch.manual_seed(4)
    model = OneHot().to(DT)
    with torch.no_grad():
        model.alphas.copy_(torch.tensor([3.0, 0.0, 0.0]))  # the skip is sampled: the conv group weighs 0
    x = torch.randn(2, C, 5, 5, dtype=DT)
    sgm = fxnas.simplify(model, x, mode="topo")
    y = sgm(x)
    (grad,) = torch.autograd.grad(y.sum(), [model.alphas])
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(y, x)  # only the sampled candidate contributes


def test_topo_leaves_a_candidate_with_an_escaping_intermediate():
    class Escape(NB201Edge):
        def forward(self, x):
            w = torch.softmax(self.alphas, 0)
            hidden = self.ops[1][1](self.ops[1][0](x))  # conv output of candidate 1, also returned
            out = self.ops[0](x) * w[0] + self.ops[1][2](hidden) * w[1] + self.ops[2](x) * w[2]
            return out, hidden

    model = Escape().to(DT)
    x = torch.randn(2, C, 5, 5, dtype=DT)
    sgm = fxnas.simplify(model, x, mode="topo")
    assert fxnas.explain(sgm).pass_record("float_shared").stats["floated_groups"] == 0
    fxnas.testing.assert_equivalent(model, sgm, (x,), modes=("train",))


def test_fidelity_reports_exact_mode_as_exact_and_measures_topo():
    from fxnas.spaces import NB201Supernet

    torch.manual_seed(5)
    model = NB201Supernet(C=4, N=1).to(DT)
    x = torch.randn(4, 3, 16, 16, dtype=DT)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    exact = fxnas.fidelity(model, fxnas.simplify(model, x), x)
    assert exact.relative_output_error < 1e-9 and exact.arch_grad_cosine > 1 - 1e-9
    topo = fxnas.fidelity(model, fxnas.simplify(copy.deepcopy(model), x, mode="topo"), x)  # matched by name
    assert 0 < topo.relative_output_error < 10 and -1 <= topo.arch_grad_cosine <= 1
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # nothing changed
    assert "architecture-gradient cosine" in str(topo)


def test_topo_merged_modules_are_normalised():
    model = NB201Edge().to(DT)
    sgm = fxnas.simplify(model, torch.randn(2, C, 5, 5, dtype=DT), mode="topo")
    floated = [m for m in sgm.modules() if isinstance(m, MergedCandidates) and m.floated]
    assert floated and all(m.merged.plan.normalize and not m.merged.plan.has_bias for m in floated)
