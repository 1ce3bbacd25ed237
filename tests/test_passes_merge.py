"""merge_linear, fold_eval_bn and fuse_weighted_norm through ``check_pass`` (exact: train and eval)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import fxnas
from fxnas.modules import FoldedConvBN, MergedCandidates, WeightedBatchNorm
from fxnas.testing import assert_equivalent
from passes.canonicalize_mixed_sums import canonicalize_mixed_sums
from passes.fold_eval_bn import fold_eval_bn
from passes.fuse_weighted_norm import fuse_weighted_norm
from passes.hoist_shared import hoist_shared
from passes.merge_linear import merge_linear
from passes.prune_zero import prune_zero

from .passcheck import calls_module_type, check_pass, count

DT = torch.float64
C = 3


class Edge(nn.Module):
    """``Σ_m softmax(alpha)_m · op_m(x)``, ops given."""

    def __init__(self, *ops: nn.Module):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.alphas = nn.Parameter(torch.randn(len(ops), dtype=DT))

    def forward(self, x):
        w = torch.softmax(self.alphas, 0)
        return sum(op(x) * wi for op, wi in zip(self.ops, w))


class PassThrough(nn.Module):
    def forward(self, x):
        return x


def _randomise_batchnorms(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.normal_()
                m.bias.normal_()
    return model


def x2d(h: int = 7, w: int = 6) -> torch.Tensor:
    return torch.randn(2, C, h, w, dtype=DT)


# --------------------------------------------------------------------- merge_linear


def test_merge_linear_merges_every_kind_of_linear_candidate():
    model = Edge(
        PassThrough(),
        nn.Identity(),
        nn.AvgPool2d(3, 1, 1, count_include_pad=False),
        nn.AvgPool2d(3, 1, 1, count_include_pad=True),
        nn.Conv2d(C, C, 3, padding=1),
        nn.Conv2d(C, C, (1, 3), padding=(0, 1), bias=False),
        nn.Conv2d(C, C, 3, padding=2, dilation=2),
        nn.Conv2d(C, C, 5, padding=2, groups=C),
    ).to(DT)

    def expect(gm, result):
        assert count(gm, calls_module_type(gm, MergedCandidates)) == 1
        assert count(gm, calls_module_type(gm, nn.Conv2d)) == 0 and count(gm, calls_module_type(gm, nn.AvgPool2d)) == 0

    check_pass(merge_linear, model, (x2d(),), before=[canonicalize_mixed_sums], expect=expect)


@pytest.mark.parametrize("dims", [1, 3])
def test_merge_linear_in_1d_and_3d(dims):
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
    pool = {1: nn.AvgPool1d, 3: nn.AvgPool3d}[dims]
    model = Edge(conv(C, C, 3, padding=1), conv(C, C, 1), pool(3, 1, 1, count_include_pad=False), PassThrough()).to(DT)
    x = torch.randn(2, C, *([5] * dims), dtype=DT)
    check_pass(merge_linear, model, (x,), before=[canonicalize_mixed_sums],
               expect=lambda gm, r: None if r.stats["merged_groups"] == 1 else pytest.fail(str(r.stats)))


def test_merge_linear_merges_linear_layers():
    model = Edge(nn.Linear(C, C), nn.Linear(C, C, bias=False), PassThrough()).to(DT)
    check_pass(merge_linear, model, (torch.randn(4, C, dtype=DT),), before=[canonicalize_mixed_sums])


def test_merge_linear_stride_two():
    model = Edge(nn.Conv2d(C, C, 3, stride=2, padding=1), nn.AvgPool2d(3, 2, 1, count_include_pad=False),
                 nn.Conv2d(C, C, 1, stride=2)).to(DT)
    check_pass(merge_linear, model, (x2d(8, 9),), before=[canonicalize_mixed_sums])


def test_merge_linear_leaves_misaligned_grids_alone():
    """Same output shape, different sampling grids: no exact merge exists."""
    model = Edge(nn.Conv2d(C, C, 3, stride=2, padding=1), nn.AvgPool2d(2, 2)).to(DT)
    check_pass(merge_linear, model, (x2d(8, 8),), before=[canonicalize_mixed_sums], modified=False)


def test_merge_linear_leaves_an_expensive_merge_alone():
    """A dense 1x1 beside a depthwise 7x7 would become a dense 7x7: more work than apart."""
    model = Edge(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 7, padding=3, groups=8)).to(DT)
    check_pass(merge_linear, model, (torch.randn(1, 8, 9, 9, dtype=DT),), before=[canonicalize_mixed_sums],
               modified=False)


def test_merge_linear_leaves_an_escaping_candidate_alone():
    class Escape(Edge):
        def forward(self, x):
            w = torch.softmax(self.alphas, 0)
            first = self.ops[0](x)
            return first * w[0] + self.ops[1](x) * w[1], first  # the conv output is also returned

    model = Escape(nn.Conv2d(C, C, 3, padding=1), nn.Conv2d(C, C, 1)).to(DT)
    check_pass(merge_linear, model, (x2d(),), before=[canonicalize_mixed_sums], modified=False)


# --------------------------------------------------------------------- fold_eval_bn


def relu_conv_bn(k: int, affine: bool = False, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, k, padding=k // 2, bias=bias), nn.BatchNorm2d(C, affine=affine))


def test_fold_eval_bn_then_merge_is_exact_in_train_and_eval():
    model = _randomise_batchnorms(Edge(relu_conv_bn(1), relu_conv_bn(3, affine=True, bias=False), PassThrough(),
                                       nn.AvgPool2d(3, 1, 1, count_include_pad=False)).to(DT))

    def expect(gm, result):
        assert count(gm, calls_module_type(gm, FoldedConvBN)) == 2

    gm, _ = check_pass(fold_eval_bn, model, (x2d(),), before=[canonicalize_mixed_sums, hoist_shared], expect=expect)
    gm, result = check_pass(merge_linear, model, (x2d(),), before=[canonicalize_mixed_sums, hoist_shared, fold_eval_bn])
    assert result.stats["merged_groups"] == 2  # (conv1x1, conv3x3) on relu(x); (skip, pool) on x


def test_fold_eval_bn_switching_modes_never_uses_folded_weights_in_training():
    model = _randomise_batchnorms(Edge(relu_conv_bn(1), relu_conv_bn(3)).to(DT))
    reference = copy.deepcopy(model)
    x = x2d()
    sgm = fxnas.simplify(model, x)
    assert count(sgm, calls_module_type(sgm, MergedCandidates)) == 1
    for mode in ("eval", "train", "eval", "train"):
        for m in (reference, sgm):
            m.train(mode == "train")
        torch.testing.assert_close(sgm(x), reference(x), rtol=1e-10, atol=1e-12)
        for (name, b), (_, rb) in zip(model.named_buffers(), reference.named_buffers()):
            torch.testing.assert_close(b, rb, rtol=1e-12, atol=1e-12, msg=f"{name} after {mode}")


def test_fold_eval_bn_leaves_batchnorms_without_running_statistics():
    model = Edge(nn.Sequential(nn.Conv2d(C, C, 1), nn.BatchNorm2d(C, track_running_stats=False)), PassThrough()).to(DT)
    check_pass(fold_eval_bn, model, (x2d(),), before=[canonicalize_mixed_sums], modified=False)


def test_fold_eval_bn_does_not_fold_an_input_shared_by_an_identity_candidate():
    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(C, C, 1), nn.BatchNorm2d(C))  # the identity candidate reads this
            self.edge = Edge(PassThrough(), nn.Conv2d(C, C, 3, padding=1))

        def forward(self, x):
            return self.edge(self.stem(x))

    check_pass(fold_eval_bn, Stem().to(DT), (x2d(),), before=[canonicalize_mixed_sums], modified=False)


# ---------------------------------------------------------------- fuse_weighted_norm


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("track", [False, True])
def test_fuse_weighted_norm_folds_the_weight_into_the_batchnorm(affine, track):
    def op(k):
        return nn.Sequential(nn.Conv2d(C, C, k, padding=k // 2),
                             nn.BatchNorm2d(C, affine=affine, track_running_stats=track, momentum=None if track else 0.1))

    model = _randomise_batchnorms(Edge(op(1), op(3), PassThrough()).to(DT))

    def expect(gm, result):
        assert result.stats["fused"] == 2
        assert count(gm, calls_module_type(gm, WeightedBatchNorm)) == 2

    check_pass(fuse_weighted_norm, model, (x2d(),), before=[canonicalize_mixed_sums], expect=expect)


def test_fuse_weighted_norm_leaves_a_batchnorm_read_elsewhere():
    class Reused(Edge):
        def forward(self, x):
            w = torch.softmax(self.alphas, 0)
            bn = self.ops[0](x)
            return bn * w[0] + x * w[1] + bn.mean()

    model = Reused(nn.BatchNorm2d(C), PassThrough()).to(DT)
    check_pass(fuse_weighted_norm, model, (x2d(),), before=[canonicalize_mixed_sums], modified=False)


def test_exact_pipeline_saves_less_for_backward():
    from fxnas.measure import saved_tensor_bytes
    from fxnas.spaces import NB201Supernet

    torch.manual_seed(0)
    model = NB201Supernet(C=8, N=1)
    x = torch.randn(8, 3, 16, 16)
    sgm = fxnas.simplify(model, x[:2])
    assert saved_tensor_bytes(sgm, (x,)) < 0.5 * saved_tensor_bytes(model, (x,))
    assert_equivalent(model.double(), sgm, (x.double(),), steps=1)
