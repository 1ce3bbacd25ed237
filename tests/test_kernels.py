"""Tests of fxnas.kernels against real nn modules and F calls (float64, exact up to rounding).

Every kernel identity is checked with non-square kernels, dilation, groups and
stride where it applies, because square-only tests hide padding-order bugs.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxnas.kernels import (
    LinearCandidate,
    add_avg_pool_border_correction,
    avg_pool_border_correction,
    avg_pool_kernel,
    center_kernel,
    compose_pointwise,
    dilate_kernel,
    fold_batchnorm,
    grouped_to_dense,
    identity_kernel,
    merge_biases,
    merge_cost,
    merge_kernels,
    normalize_per_output_channel,
    pad_kernel,
    plan_merge,
    separate_cost,
)

DT = torch.float64
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SIZES = {1: (11,), 2: (9, 8), 3: (6, 5, 7)}


def close(actual, expected, tol=1e-12):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rand_input(n, channels=4, batch=2, size=None):
    return torch.randn((batch, channels) + (size or SIZES[n]), dtype=DT)


# ---------------------------------------------------------------- pad / centre / dilate


@pytest.mark.parametrize(
    "ksize, before, after",
    [((1, 3), (1, 2), (1, 2)), ((3, 5), (2, 0), (2, 0)), ((2, 3), (1, 0), (1, 0)), ((3,), (2,), (2,)),
     ((1, 3, 2), (1, 0, 2), (1, 0, 2))],
)
def test_pad_kernel_symmetric_matches_conv(ksize, before, after):
    n = len(ksize)
    kernel = torch.randn((3, 4) + ksize, dtype=DT)
    x = rand_input(n)
    padding = tuple(k // 2 for k in ksize)
    padded = pad_kernel(kernel, before, after)
    assert padded.shape[2:] == tuple(k + b + a for k, b, a in zip(ksize, before, after))
    expected = CONV[n](x, kernel, padding=padding)
    actual = CONV[n](x, padded, padding=tuple(p + b for p, b in zip(padding, before)))
    close(actual, expected)


def test_pad_kernel_asymmetric_places_taps_per_dim():
    # (2, 3) kernel, 1 zero row before, 2 zero columns after: the dim order must not swap.
    kernel = torch.arange(1.0, 7.0, dtype=DT).reshape(1, 1, 2, 3)
    padded = pad_kernel(kernel, (1, 0), (0, 2))
    assert padded.shape == (1, 1, 3, 5)
    close(padded[0, 0, 1:, :3], kernel[0, 0])
    assert padded[0, 0, 0].abs().sum() == 0 and padded[0, 0, :, 3:].abs().sum() == 0
    with pytest.raises(ValueError):
        pad_kernel(kernel, (-1, 0), (0, 0))


def test_center_kernel_matches_conv_and_rejects_odd_difference():
    kernel = torch.randn(3, 4, 1, 3, dtype=DT)
    x = rand_input(2)
    close(F.conv2d(x, center_kernel(kernel, (5, 5)), padding=(2, 2)), F.conv2d(x, kernel, padding=(0, 1)))
    with pytest.raises(ValueError, match="even"):
        center_kernel(kernel, (2, 3))


@pytest.mark.parametrize("n, ksize, dilation", [(2, (3, 3), 2), (2, (1, 3), 3), (2, (3, 2), (2, 3)),
                                                 (1, (3,), 3), (3, (2, 3, 1), (2, 1, 3))])
def test_dilate_kernel_matches_dilated_conv(n, ksize, dilation):
    kernel = torch.randn((3, 4) + ksize, dtype=DT, requires_grad=True)
    x = rand_input(n, size=tuple(s + 6 for s in SIZES[n]))
    dense = dilate_kernel(kernel, dilation)
    d = (dilation,) * n if isinstance(dilation, int) else dilation
    assert dense.shape[2:] == tuple(di * (k - 1) + 1 for di, k in zip(d, ksize))
    expected = CONV[n](x, kernel, dilation=dilation, padding=1)
    actual = CONV[n](x, dense, padding=1)
    close(actual, expected)
    g = torch.randn_like(expected)
    (grad_expected,) = torch.autograd.grad(expected, kernel, g)
    (grad_actual,) = torch.autograd.grad(actual, kernel, g)
    close(grad_actual, grad_expected)


# ---------------------------------------------------------------- constant kernels


@pytest.mark.parametrize("n", [1, 2, 3])
def test_identity_kernel_depthwise_and_dense(n):
    x = rand_input(n)
    close(CONV[n](x, identity_kernel(4, n, DT), groups=4), x)
    close(CONV[n](x, identity_kernel(4, n, DT, depthwise=False)), x)


def test_identity_kernel_linear():
    x = torch.randn(5, 4, dtype=DT)
    close(F.linear(x, identity_kernel(4, 0, DT, depthwise=False)), x)
    with pytest.raises(ValueError):
        identity_kernel(4, 0, DT)


@pytest.mark.parametrize("n, ksize, stride, padding", [(2, (3, 3), 1, 1), (2, (3, 5), 2, (1, 2)),
                                                      (2, (2, 3), (2, 1), (1, 0)), (1, (3,), 2, 1),
                                                      (3, (3, 1, 3), 1, (1, 0, 1))])
def test_avg_pool_kernel_is_include_pad_pool(n, ksize, stride, padding):
    x = rand_input(n)
    kernel = avg_pool_kernel(4, ksize, dtype=DT)
    expected = POOL[n](x, ksize, stride, padding, count_include_pad=True)
    close(CONV[n](x, kernel, stride=stride, padding=padding, groups=4), expected)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_kernel_divisor_override(count_include_pad):
    x = rand_input(2)
    expected = F.avg_pool2d(x, (3, 2), 1, (1, 1), count_include_pad=count_include_pad, divisor_override=5)
    kernel = avg_pool_kernel(4, (3, 2), divisor=5, dtype=DT)
    close(F.conv2d(x, kernel, padding=(1, 1), groups=4), expected)


# ---------------------------------------------------------------- groups


@pytest.mark.parametrize("n, cin, cout, groups", [(2, 4, 6, 2), (2, 4, 4, 4), (2, 3, 6, 3), (1, 6, 4, 2),
                                                   (3, 4, 4, 4)])
def test_grouped_to_dense_matches_grouped_conv(n, cin, cout, groups):
    ksize = {1: (3,), 2: (1, 3), 3: (3, 1, 2)}[n]
    kernel = torch.randn((cout, cin // groups) + ksize, dtype=DT)
    x = rand_input(n, channels=cin)
    dense = grouped_to_dense(kernel, groups)
    assert dense.shape[:2] == (cout, cin)
    close(CONV[n](x, dense, padding=1), CONV[n](x, kernel, padding=1, groups=groups))


# ---------------------------------------------------------------- BatchNorm folding


def randomized_bn(n, channels, affine):
    bn = BN[n](channels, affine=affine, eps=1e-3).to(DT)
    bn.running_mean.copy_(torch.randn(channels, dtype=DT))
    bn.running_var.copy_(torch.rand(channels, dtype=DT) * 2 + 0.1)
    if affine:
        with torch.no_grad():
            bn.weight.copy_(torch.randn(channels, dtype=DT))
            bn.bias.copy_(torch.randn(channels, dtype=DT))
    return bn.eval()


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n, groups, stride", [(2, 1, 1), (2, 4, 2), (1, 2, 1), (3, 1, 2)])
def test_fold_batchnorm_matches_conv_bn_eval(affine, bias, n, groups, stride):
    conv_type = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n]
    conv = conv_type(4, 8, 3, stride=stride, padding=1, groups=groups, bias=bias).to(DT)
    bn = randomized_bn(n, 8, affine)
    x = rand_input(n)
    gamma = bn.weight if affine else None
    beta = bn.bias if affine else None
    kernel, new_bias = fold_batchnorm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                      gamma, beta)
    actual = CONV[n](x, kernel, new_bias, stride=stride, padding=1, groups=groups)
    close(actual, bn(conv(x)))


def test_fold_batchnorm_linear():
    linear = nn.Linear(5, 3).to(DT)
    bn = randomized_bn(1, 3, affine=True)
    x = torch.randn(7, 5, dtype=DT)
    kernel, bias = fold_batchnorm(linear.weight, linear.bias, bn.running_mean, bn.running_var, bn.eps,
                                  bn.weight, bn.bias)
    close(F.linear(x, kernel, bias), bn(linear(x)))


def test_fold_batchnorm_preserves_dtype_and_is_differentiable():
    kernel = torch.randn(3, 2, 3, 3, dtype=torch.float32)
    mean, var = torch.randn(3), torch.rand(3) + 0.5
    folded, bias = fold_batchnorm(kernel, None, mean, var, 1e-5)
    assert folded.dtype == torch.float32 and bias.dtype == torch.float32
    folded64, _ = fold_batchnorm(kernel.double(), None, mean, var, 1e-5)
    assert folded64.dtype == torch.float64
    half_bias = torch.randn(3, dtype=torch.float16)
    assert fold_batchnorm(kernel, half_bias, mean, var, 1e-5)[1].dtype == torch.float16

    args = [torch.randn(3, 2, 1, 2, dtype=DT, requires_grad=True), torch.randn(3, dtype=DT, requires_grad=True),
            torch.randn(3, dtype=DT), torch.rand(3, dtype=DT) + 0.5,
            torch.randn(3, dtype=DT, requires_grad=True), torch.randn(3, dtype=DT, requires_grad=True)]
    assert torch.autograd.gradcheck(
        lambda k, b, g, be: fold_batchnorm(k, b, args[2], args[3], 1e-5, g, be),
        (args[0], args[1], args[4], args[5]),
    )


# ---------------------------------------------------------------- pointwise composition


@pytest.mark.parametrize("bias, pw_bias", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("groups, pw_groups, stride", [(4, 1, 2), (1, 1, 1), (2, 2, 1)])
def test_compose_pointwise_matches_two_convs(bias, pw_bias, groups, pw_groups, stride):
    conv = nn.Conv2d(4, 4, (3, 5), stride=stride, padding=(1, 2), dilation=(1, 2), groups=groups,
                     bias=bias).to(DT)
    pw = nn.Conv2d(4, 6, 1, groups=pw_groups, bias=pw_bias).to(DT)
    x = rand_input(2, size=(9, 12))
    kernel, new_bias = compose_pointwise(conv.weight, conv.bias, pw.weight, pw.bias, groups, pw_groups)
    assert kernel.shape == (6, 4, 3, 5)
    assert (new_bias is None) == (not bias and not pw_bias)
    actual = F.conv2d(x, kernel, new_bias, stride=stride, padding=(1, 2), dilation=(1, 2))
    close(actual, pw(conv(x)))


def test_compose_pointwise_linear_pair_and_bad_shapes():
    a, b = nn.Linear(5, 4).to(DT), nn.Linear(4, 3).to(DT)
    x = torch.randn(6, 5, dtype=DT)
    kernel, bias = compose_pointwise(a.weight, a.bias, b.weight, b.bias)
    close(F.linear(x, kernel, bias), b(a(x)))
    with pytest.raises(ValueError, match="pointwise"):
        compose_pointwise(torch.randn(4, 4, 3, 3), None, torch.randn(4, 4, 3, 3), None)
    with pytest.raises(ValueError, match="channels"):
        compose_pointwise(torch.randn(4, 4, 3, 3), None, torch.randn(4, 5, 1, 1), None)


# ---------------------------------------------------------------- kernel normalisation


def test_normalize_per_output_channel():
    kernel = torch.randn(5, 3, 1, 3, dtype=DT)
    normalized = normalize_per_output_channel(kernel, eps=1e-5)
    norms = kernel.reshape(5, -1).norm(dim=1)
    close(normalized.reshape(5, -1).norm(dim=1), norms / (norms + 1e-5))
    close(normalized, kernel / (norms + 1e-5).reshape(5, 1, 1, 1))
    assert torch.autograd.gradcheck(normalize_per_output_channel, (kernel.clone().requires_grad_(),))


def test_normalize_zero_channel_has_finite_gradient():
    kernel = torch.randn(3, 2, 3, dtype=DT)
    kernel[1] = 0
    kernel.requires_grad_()
    normalize_per_output_channel(kernel).sum().backward()
    assert torch.isfinite(kernel.grad).all()


# ---------------------------------------------------------------- border correction


def reference_correction(x, ksize, stride, padding):
    n = x.dim() - 2
    return (POOL[n](x, ksize, stride, padding, count_include_pad=False)
            - POOL[n](x, ksize, stride, padding, count_include_pad=True))


POOL_CASES = [
    # (spatial size, kernel, stride, padding)
    ((9, 9), (3, 3), 1, 1), ((8, 8), (3, 3), 1, 1), ((9, 8), (3, 3), 2, 1), ((8, 7), (3, 3), 2, 1),
    ((10, 9), (3, 5), 2, (1, 2)), ((7, 8), (5, 5), 1, 2), ((7, 8), (5, 5), 2, 2), ((6, 7), (2, 4), 2, (1, 2)),
    ((9, 8), (3, 3), (1, 2), (1, 0)), ((3, 3), (3, 3), 1, 1), ((2, 4), (3, 3), 2, 1), ((4, 4), (2, 2), 2, 1),
    ((11,), (3,), 1, 1), ((10,), (5,), 2, 2), ((5, 6, 7), (3, 3, 3), 1, 1), ((6, 5, 4), (3, 1, 3), 2, (1, 0, 1)),
]


@pytest.mark.parametrize("size, ksize, stride, padding", POOL_CASES)
def test_border_correction_equals_exclude_minus_include(size, ksize, stride, padding):
    n = len(size)
    x = rand_input(n, channels=3, size=size).requires_grad_()
    expected = reference_correction(x, ksize, stride, padding)
    actual = avg_pool_border_correction(x, ksize, stride, padding)
    close(actual, expected)
    g = torch.randn_like(expected)
    (grad_expected,) = torch.autograd.grad(expected, x, g)
    (grad_actual,) = torch.autograd.grad(actual, x, g)
    close(grad_actual, grad_expected)


def test_border_correction_interior_is_exactly_zero_and_input_interior_unread():
    x = rand_input(2, channels=2, size=(12, 11)).requires_grad_()
    correction = avg_pool_border_correction(x, 3, 1, 1)
    assert torch.equal(correction[..., 1:-1, 1:-1], torch.zeros_like(correction[..., 1:-1, 1:-1]))
    assert (correction[..., 0, :] != 0).all() and (correction[..., :, -1] != 0).all()
    # Only the rows/columns next to the padding are read: the input interior gets no gradient.
    correction.sum().backward()
    assert x.grad[..., 2:-2, 2:-2].abs().sum() == 0


def test_border_correction_without_padding_is_zero_and_add_variant():
    x = rand_input(2)
    assert torch.equal(avg_pool_border_correction(x, 3, 1, 0), torch.zeros(2, 4, 7, 6, dtype=DT))
    base = torch.randn(2, 4, 5, 4, dtype=DT)
    scale = torch.tensor(0.7, dtype=DT)
    added = add_avg_pool_border_correction(base, x, (3, 5), 2, (1, 2), scale)
    close(added, base + scale * reference_correction(x, (3, 5), 2, (1, 2)))
    with pytest.raises(ValueError, match="shape"):
        add_avg_pool_border_correction(base[..., :-1], x, (3, 5), 2, (1, 2))


def test_merged_pool_identity_exclude_pad_equals_conv_plus_correction():
    # The identity merge_linear relies on, stated directly.
    x = rand_input(2, size=(7, 10))
    conv = F.conv2d(x, avg_pool_kernel(4, (3, 5), dtype=DT), stride=2, padding=(1, 2), groups=4)
    close(conv + avg_pool_border_correction(x, (3, 5), 2, (1, 2)),
          F.avg_pool2d(x, (3, 5), 2, (1, 2), count_include_pad=False))


# ---------------------------------------------------------------- candidates and planning


def test_candidate_defaults_and_validation():
    pool = LinearCandidate.avg_pool(4, 3, padding=1)
    assert pool.stride == (3, 3) and pool.groups == 4 and pool.is_diagonal and pool.kernel_shape == (4, 1, 3, 3)
    assert LinearCandidate.identity(4, 1).kernel_shape == (4, 1, 1)
    assert LinearCandidate.identity(4, 0).kernel_shape == (4, 1)
    assert LinearCandidate.conv(4, 6, (1, 3)).kernel_shape == (6, 4, 1, 3)
    with pytest.raises(ValueError, match="kind"):
        LinearCandidate("maxpool", 4, 4, 2)
    with pytest.raises(ValueError, match="groups"):
        LinearCandidate.conv(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="entries"):
        LinearCandidate.conv(4, 4, (3, 3, 3))


@pytest.mark.parametrize(
    "candidates, message",
    [
        ([LinearCandidate.conv(4, 4, 3, stride=1, padding=1), LinearCandidate.conv(4, 4, 3, stride=2, padding=1)],
         "different strides"),
        ([LinearCandidate.conv(4, 4, 3, padding=0), LinearCandidate.conv(4, 4, 1, padding=0)],
         "misaligned in spatial dim 0"),
        ([LinearCandidate.conv(4, 4, (3, 3), padding=(1, 1)), LinearCandidate.conv(4, 4, (3, 5), padding=(1, 1))],
         "misaligned in spatial dim 1"),
        ([LinearCandidate.conv(4, 4, 3, padding=1, dilation=2), LinearCandidate.conv(4, 4, 3, padding=1)],
         "misaligned"),
        ([LinearCandidate.conv(4, 4, 2, padding=0), LinearCandidate.identity(4)], "misaligned"),
        ([LinearCandidate.conv(4, 4, 3, padding=1), LinearCandidate.avg_pool(4, 3, 1, 1, ceil_mode=True)],
         "ceil_mode"),
        ([LinearCandidate.conv(4, 6, 3, padding=1), LinearCandidate.identity(4)], "channels"),
        ([LinearCandidate.conv(4, 4, 3, padding=1), LinearCandidate.identity(4, spatial_dims=1)], "spatial dims"),
        ([], "empty"),
    ],
)
def test_plan_merge_rejects_inexact_merges(candidates, message):
    with pytest.raises(ValueError, match=message):
        plan_merge(candidates)


def test_plan_geometry():
    conv3 = LinearCandidate.conv(4, 4, 3, padding=1)
    dil3 = LinearCandidate.conv(4, 4, 3, padding=2, dilation=2)
    dil5 = LinearCandidate.conv(4, 4, 5, padding=4, dilation=2)
    dw = LinearCandidate.conv(4, 4, (1, 5), padding=(0, 2), groups=4)
    plan = plan_merge([dil3, dil5])  # all taps even: stays a dilated 5x5, not a dense 9x9
    assert (plan.kernel_size, plan.dilation, plan.padding) == ((5, 5), (2, 2), (4, 4))
    plan = plan_merge([conv3, dil5, LinearCandidate.identity(4)])
    assert (plan.kernel_size, plan.dilation, plan.padding, plan.groups) == ((9, 9), (1, 1), (4, 4), 1)
    plan = plan_merge([dw, LinearCandidate.identity(4), LinearCandidate.avg_pool(4, (1, 3), 1, (0, 1))])
    assert (plan.kernel_size, plan.groups) == ((1, 5), 4)
    plan = plan_merge([LinearCandidate.conv(8, 8, 3, padding=1, groups=2), LinearCandidate.conv(8, 8, 1, groups=4)])
    assert plan.groups == 2 and plan.merged_shape == (8, 4, 3, 3)


@pytest.mark.parametrize("candidates", [
    [LinearCandidate.conv(4, 4, 3, padding=1), LinearCandidate.conv(4, 4, (3, 5), padding=(2, 4), dilation=(2, 2)),
     LinearCandidate.conv(4, 4, (1, 3), padding=(0, 1), groups=2), LinearCandidate.identity(4),
     LinearCandidate.avg_pool(4, 3, 1, 1)],
    [LinearCandidate.conv(4, 4, 5, padding=2, groups=4), LinearCandidate.identity(4)],
    [LinearCandidate.linear(4, 4), LinearCandidate.identity(4, 0)],
])
def test_index_maps_are_injective_and_match_the_embedding_functions(candidates):
    plan = plan_merge(candidates)
    for index in plan.index_maps():
        assert index.unique().numel() == index.numel()
        assert 0 <= int(index.min()) and int(index.max()) < plan.merged_numel
    # Σ w_m E(K_m) built from the separate functions (dilate, group->dense, pad) equals merge_kernels.
    weights = torch.randn(len(candidates), dtype=DT)
    kernels = [torch.randn(c.kernel_shape, dtype=DT) if c.constant_value is None else None for c in candidates]
    expected = 0
    for w, c, kernel in zip(weights, candidates, kernels):
        if kernel is None:
            kernel = torch.full(c.kernel_shape, c.constant_value, dtype=DT)
        dense = grouped_to_dense(dilate_kernel(kernel, c.dilation), c.groups)
        offset = [plan.padding[d] - c.padding[d] for d in range(c.spatial_dims)]
        full = [(plan.kernel_size[d] - 1) * plan.dilation[d] + 1 for d in range(c.spatial_dims)]
        placed = pad_kernel(dense, offset, [f - o - s for f, o, s in zip(full, offset, dense.shape[2:])])
        placed = placed[(slice(None), slice(None)) + tuple(slice(None, None, d) for d in plan.dilation)]
        expected = expected + w * placed
    # Compare in dense form: the merged kernel is block-diagonal with plan.groups blocks.
    close(grouped_to_dense(merge_kernels(plan, weights, kernels), plan.groups), expected)


def test_merge_kernels_and_biases_argument_checks():
    plan = plan_merge([LinearCandidate.conv(4, 4, 3, padding=1, bias=True), LinearCandidate.identity(4)])
    kernel, bias = torch.randn(4, 4, 3, 3, dtype=DT), torch.randn(4, dtype=DT)
    weights = [torch.tensor(0.3, dtype=DT), torch.tensor(0.7, dtype=DT)]
    close(merge_biases(plan, weights, [bias, None]), 0.3 * bias)
    with pytest.raises(ValueError, match="shape"):
        merge_kernels(plan, weights, [kernel[:, :2], None])
    with pytest.raises(ValueError, match="constant"):
        merge_kernels(plan, weights, [kernel, kernel])
    with pytest.raises(ValueError, match="weights"):
        merge_kernels(plan, weights[:1], [kernel, None])
    with pytest.raises(ValueError, match="has_bias"):
        merge_biases(plan, weights, [None, None])


def test_merge_cost_decides_depthwise_into_dense_is_not_worth_it():
    dense3 = LinearCandidate.conv(64, 64, 3, padding=1)
    dw5 = LinearCandidate.conv(64, 64, 5, padding=2, groups=64)
    identity = LinearCandidate.identity(64)
    assert merge_cost(plan_merge([dense3, dw5])) > separate_cost([dense3, dw5])
    assert merge_cost(plan_merge([dense3, identity])) < separate_cost([dense3, identity])
    assert merge_cost(plan_merge([dw5, identity])) == 64 * 25
    assert separate_cost([dense3]) == 64 * 64 * 9 + 64
    assert merge_cost(plan_merge([LinearCandidate.linear(5, 3)])) == 15
    assert math.prod(plan_merge([dense3, dw5]).kernel_size) == 25
