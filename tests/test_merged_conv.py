"""MergedConv against the direct weighted sum Σ_m w_m · module_m(x) (float64).

Outputs and the gradients of x, every architecture weight, every kernel and every
bias must match the unmerged sum; one small case also goes through gradcheck.
"""

import copy
import io

import pytest
import torch
from torch import nn

from fxnas.kernels import LinearCandidate, avg_pool_kernel, normalize_per_output_channel
from fxnas.modules import MergedConv, candidate_from_module

DT = torch.float64
C = 4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def close(actual, expected, tol=1e-11):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def conv(n, kernel, padding, dilation=1, stride=1, groups=1, bias=True, cin=C, cout=C):
    conv_type = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n]
    return conv_type(cin, cout, kernel, stride, padding, dilation, groups, bias)


def pool(n, kernel, stride, padding, count_include_pad=True, **kwargs):
    pool_type = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[n]
    return pool_type(kernel, stride, padding, count_include_pad=count_include_pad, **kwargs)


def merged_inputs(modules):
    kernels = [getattr(m, "weight", None) for m in modules]
    biases = [getattr(m, "bias", None) for m in modules]
    return kernels, biases


def check_against_direct_sum(modules, x, spatial_dims, channels=C):
    """Assert MergedConv == Σ w_m module_m(x), in value and in every gradient."""
    modules = [m.to(DT) for m in modules]
    for m in modules:  # non-trivial biases (default init is small but fine) and weights
        for p in m.parameters():
            p.data.normal_()
    candidates = [candidate_from_module(m, channels, spatial_dims) for m in modules]
    merged = MergedConv(candidates)
    weights = [torch.randn((), dtype=DT, requires_grad=True) for _ in modules]
    x = x.detach().requires_grad_()

    direct = sum(w * m(x) for w, m in zip(weights, modules))
    kernels, biases = merged_inputs(modules)
    actual = merged(x, weights, kernels, biases)
    close(actual, direct)

    params = [p for m in modules for p in m.parameters()]
    inputs = [x] + weights + params
    upstream = torch.randn_like(direct)
    grads_direct = torch.autograd.grad(direct, inputs, upstream)
    grads_merged = torch.autograd.grad(actual, inputs, upstream)
    for g_merged, g_direct in zip(grads_merged, grads_direct):
        close(g_merged, g_direct)
    return merged


# Each case: (spatial_dims, input spatial size, module builders). Mixes of 1x1/3x3/5x5,
# dilated, depthwise, identity and both kinds of average pool, 1d to 3d, stride 1 and 2.
MIXES = {
    "2d_darts_like": (2, (9, 8), lambda: [
        conv(2, 1, 0), conv(2, 3, 1), conv(2, 5, 2), conv(2, 3, 2, dilation=2), conv(2, 5, 4, dilation=2),
        conv(2, 3, 1, groups=C, bias=False), nn.Identity(), pool(2, 3, 1, 1, True), pool(2, 3, 1, 1, False)]),
    "2d_non_square": (2, (7, 10), lambda: [
        conv(2, (1, 3), (0, 1)), conv(2, (3, 5), (1, 2), bias=False), conv(2, (3, 1), (3, 0), dilation=(3, 1)),
        pool(2, (3, 5), 1, (1, 2), False), nn.Identity()]),
    "2d_stride2_odd": (2, (9, 11), lambda: [
        conv(2, 1, 0, stride=2), conv(2, 3, 1, stride=2), conv(2, 5, 2, stride=2, groups=2),
        pool(2, 3, 2, 1, False), pool(2, 3, 2, 1, True), pool(2, 5, 2, 2, False)]),
    "2d_stride2_even": (2, (8, 10), lambda: [
        conv(2, 3, 1, stride=2), conv(2, 3, 3, stride=2, dilation=3), pool(2, 3, 2, 1, False),
        conv(2, 5, 2, stride=2, groups=C)]),
    "2d_divisor_override": (2, (7, 7), lambda: [
        conv(2, 3, 1), pool(2, 3, 1, 1, False, divisor_override=4), pool(2, 3, 1, 1, True, divisor_override=7)]),
    "2d_depthwise_only": (2, (8, 9), lambda: [
        conv(2, 3, 1, groups=C), conv(2, 5, 2, groups=C), conv(2, 3, 2, dilation=2, groups=C), nn.Identity(),
        pool(2, 3, 1, 1, False)]),
    "1d": (1, (12,), lambda: [
        conv(1, 3, 1), conv(1, 5, 4, dilation=2), conv(1, 3, 1, groups=C), nn.Identity(), pool(1, 3, 1, 1, False),
        pool(1, 5, 1, 2, True)]),
    "1d_stride2": (1, (11,), lambda: [conv(1, 3, 1, stride=2), pool(1, 3, 2, 1, False), conv(1, 1, 0, stride=2)]),
    "3d": (3, (5, 6, 4), lambda: [
        conv(3, 3, 1), conv(3, (1, 3, 3), (0, 1, 1), groups=C), nn.Identity(), pool(3, 3, 1, 1, False),
        conv(3, 3, 2, dilation=2, bias=False)]),
    "3d_stride2": (3, (5, 6, 5), lambda: [conv(3, 3, 1, stride=2), pool(3, 3, 2, 1, False)]),
}


@pytest.mark.parametrize("name", list(MIXES))
def test_merged_conv_equals_weighted_sum(name):
    spatial_dims, size, build = MIXES[name]
    x = torch.randn((2, C) + size, dtype=DT)
    check_against_direct_sum(build(), x, spatial_dims)


def test_merged_conv_geometry_choices():
    x = torch.randn(2, C, 9, 9, dtype=DT)
    depthwise = check_against_direct_sum(MIXES["2d_depthwise_only"][2](), x, 2)
    assert depthwise.plan.groups == C  # all diagonal: stays depthwise
    dilated = check_against_direct_sum([conv(2, 3, 2, dilation=2), conv(2, 5, 4, dilation=2)], x, 2)
    assert dilated.plan.kernel_size == (5, 5) and dilated.plan.dilation == (2, 2)
    grouped = check_against_direct_sum([conv(2, 3, 1, groups=2, cin=8, cout=8), conv(2, 1, 0, groups=4, cin=8, cout=8)],
                                       torch.randn(2, 8, 6, 7, dtype=DT), 2, channels=8)
    assert grouped.plan.groups == 2


def test_merged_linear_mix():
    modules = [nn.Linear(C, C), nn.Linear(C, C, bias=False), nn.Identity()]
    x = torch.randn(3, 5, C, dtype=DT)
    merged = check_against_direct_sum(modules, x, 0)
    assert merged.plan.spatial_dims == 0 and merged.plan.merged_shape == (C, C)


def test_merged_conv_rectangular_channels():
    modules = [conv(2, 3, 1, cin=3, cout=6), conv(2, 1, 0, cin=3, cout=6, groups=3)]
    check_against_direct_sum(modules, torch.randn(2, 3, 6, 5, dtype=DT), 2, channels=3)


def test_gradcheck_small_mix():
    candidates = [
        LinearCandidate.conv(2, 2, 3, padding=2, dilation=2, spatial_dims=2),
        LinearCandidate.conv(2, 2, (1, 3), padding=(0, 1), groups=2, bias=False),
        LinearCandidate.identity(2),
        LinearCandidate.avg_pool(2, 3, 1, 1, count_include_pad=False),
    ]
    merged = MergedConv(candidates)
    x = torch.randn(1, 2, 4, 5, dtype=DT, requires_grad=True)
    weights = torch.randn(4, dtype=DT, requires_grad=True)
    k0 = torch.randn(2, 2, 3, 3, dtype=DT, requires_grad=True)
    b0 = torch.randn(2, dtype=DT, requires_grad=True)
    k1 = torch.randn(2, 1, 1, 3, dtype=DT, requires_grad=True)

    def run(x, weights, k0, b0, k1):
        return merged(x, weights, [k0, k1, None, None], [b0, None, None, None])

    assert torch.autograd.gradcheck(run, (x, weights, k0, b0, k1))


def test_normalize_kernels_matches_normalized_direct_sum():
    modules = [conv(2, 3, 1).to(DT), conv(2, 5, 2, groups=C, bias=False).to(DT), nn.Identity(),
               pool(2, 3, 1, 1, False)]
    candidates = [candidate_from_module(m, C, 2) for m in modules]
    merged = MergedConv(candidates, normalize_kernels=True, eps=1e-3)
    x = torch.randn(2, C, 7, 6, dtype=DT)
    weights = torch.randn(4, dtype=DT)
    kernels, biases = merged_inputs(modules)

    def scaled(kernel):  # the factor normalisation applies to a constant kernel
        return (normalize_per_output_channel(kernel, 1e-3) / kernel).flatten()[0]

    a, b = modules[:2]
    direct = (weights[0] * nn.functional.conv2d(x, normalize_per_output_channel(a.weight, 1e-3), a.bias, padding=1)
              + weights[1] * nn.functional.conv2d(x, normalize_per_output_channel(b.weight, 1e-3), padding=2, groups=C)
              + weights[2] * scaled(torch.ones(C, 1, 1, 1, dtype=DT)) * x
              + weights[3] * scaled(avg_pool_kernel(C, (3, 3), dtype=DT)) * modules[3](x))
    close(merged(x, weights, kernels, biases), direct)
    assert "normalize_kernels=True" in repr(merged)


def test_module_has_no_parameters_and_survives_copy_and_save():
    modules = [conv(2, 3, 1).to(DT), nn.Identity(), pool(2, 3, 1, 1, False)]
    merged = MergedConv([candidate_from_module(m, C, 2) for m in modules])
    assert list(merged.parameters()) == [] and merged.state_dict() == {}
    assert [name for name, _ in merged.named_buffers()] == ["merge_index"]
    x = torch.randn(1, C, 6, 6, dtype=DT)
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=DT)
    kernels, biases = merged_inputs(modules)
    expected = merged(x, weights, kernels, biases)
    clone = copy.deepcopy(merged)
    buffer = io.BytesIO()
    torch.save(merged, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (clone, loaded):
        close(other(x, weights, kernels, biases), expected)
    # Unbatched input and the list-of-scalars form of the weights.
    close(merged(x[0], list(weights), kernels, biases), expected[0])


def test_extra_repr_is_readable():
    merged = MergedConv([LinearCandidate.conv(C, C, (3, 5), padding=(1, 2)), LinearCandidate.identity(C),
                         LinearCandidate.avg_pool(C, 3, 1, 1, count_include_pad=False)])
    text = repr(merged)
    for part in ("conv 3x5", "identity", "avg_pool 3x3", "exclude-pad", "merged=conv2d 3x5", "groups 1"):
        assert part in text, (part, text)


@pytest.mark.parametrize("modules, message", [
    (lambda: [conv(2, 3, 1, stride=2), conv(2, 3, 1)], "different strides"),
    (lambda: [conv(2, 3, 0), conv(2, 1, 0)], "misaligned"),
    (lambda: [conv(2, 3, 1), pool(2, 3, 1, 1, ceil_mode=True)], "ceil_mode"),
    (lambda: [conv(2, 3, 1), pool(2, 3, 2, 1)], "different strides"),
])
def test_unmergeable_candidates_raise(modules, message):
    candidates = [candidate_from_module(m, C, 2) for m in modules()]
    with pytest.raises(ValueError, match=message):
        MergedConv(candidates)


def test_candidate_from_module_rejects_unmergeable_modules():
    with pytest.raises(ValueError, match="padding_mode"):
        candidate_from_module(nn.Conv2d(C, C, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="asymmetrically"):
        candidate_from_module(nn.Conv2d(C, C, 4, padding="same"))
    with pytest.raises(ValueError, match="not a mergeable"):
        candidate_from_module(nn.MaxPool2d(3))
    with pytest.raises(ValueError, match="channels"):
        candidate_from_module(nn.AvgPool2d(3))
    assert candidate_from_module(nn.Conv2d(C, C, 3, padding="same")).padding == (1, 1)


def test_forward_argument_errors():
    merged = MergedConv([LinearCandidate.conv(C, C, 3, padding=1), LinearCandidate.identity(C)])
    x = torch.randn(1, C, 5, 5, dtype=DT)
    kernel, bias = torch.randn(C, C, 3, 3, dtype=DT), torch.randn(C, dtype=DT)
    with pytest.raises(ValueError, match="shape"):
        merged(x, torch.ones(2, dtype=DT), [kernel[..., :1], None], [bias, None])
    with pytest.raises(ValueError, match="has_bias"):
        merged(x, torch.ones(2, dtype=DT), [kernel, None], [None, None])
    with pytest.raises(ValueError, match="weights"):
        merged(x, torch.ones(3, dtype=DT), [kernel, None], [bias, None])


# --------------------------------------------------------------------- cost-based split, fast paths


def test_expensive_union_is_split_into_cheaper_merges():
    """A dilation-2 5x5 depthwise beside 3x3/5x5 depthwise would need a 9x9 kernel: it runs apart."""
    from fxnas.kernels import cheapest_partition

    modules = [conv(2, 3, 1, groups=C, bias=False), conv(2, 5, 2, groups=C, bias=False),
               conv(2, 3, 2, dilation=2, groups=C, bias=False), conv(2, 5, 4, dilation=2, groups=C, bias=False)]
    candidates = [candidate_from_module(m, C, 2) for m in modules]
    # 3x3 + 5x5 as one dense 5x5, the two dilated ones as one 5x5 with dilation 2: 50 taps, not 81
    assert cheapest_partition(candidates) == ((0, 1), (2, 3))
    merged = check_against_direct_sum(modules, torch.randn(2, C, 11, 9, dtype=DT), 2)
    assert merged.part_indices == ((0, 1), (2, 3))
    assert merged.describe_geometry() == ("conv2d 5x5 pad 2x2 stride 1x1 groups 4 + "
                                          "conv2d 5x5 dil 2x2 pad 4x4 stride 1x1 groups 4")
    # the merged kernel of all four stays available for inspection
    assert tuple(merged.plan.kernel_size) == (9, 9)


def test_cheap_union_stays_one_convolution():
    from fxnas.kernels import cheapest_partition

    candidates = [candidate_from_module(m, C, 2) for m in (conv(2, 1, 0), conv(2, 3, 1), nn.Identity())]
    assert cheapest_partition(candidates) == ((0, 1, 2),)
    assert MergedConv(candidates).parts is None


@pytest.mark.parametrize("groups, stride, bias", [(C, 1, False), (C, 2, True), (2, 1, True)])
def test_grouped_conv2d_cpu_matches_conv2d(groups, stride, bias):
    from fxnas.modules import grouped_conv2d_cpu

    x = torch.randn(3, C, 9, 8, requires_grad=True)
    w = torch.randn(C, C // groups, 5, 5, requires_grad=True)
    b = torch.randn(C, requires_grad=True) if bias else None
    args = (stride, 2, 1, groups)
    expected = nn.functional.conv2d(x, w, b, *args)
    actual = grouped_conv2d_cpu(x, w, b, (stride, stride), (2, 2), (1, 1), groups)
    assert torch.equal(actual, expected)  # the forward is conv2d itself
    upstream = torch.randn_like(expected)
    inputs = [x, w] + ([b] if bias else [])
    for got, want in zip(torch.autograd.grad(actual, inputs, upstream),
                         torch.autograd.grad(expected, inputs, upstream)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spatial_dims, size", [(1, (13,)), (2, (9, 7)), (3, (5, 6, 7))])
def test_identity_and_pools_run_as_a_direct_sum(spatial_dims, size):
    """Only identity / pools: no kernel is built; values and gradients still equal the direct sum."""
    modules = [nn.Identity(), pool(spatial_dims, 3, 1, 1, False), pool(spatial_dims, 5, 1, 2, True)]
    if spatial_dims > 1:  # AvgPool1d has no divisor_override
        modules.append(pool(spatial_dims, 3, 1, 1, True, divisor_override=2))
    merged = check_against_direct_sum(modules, torch.randn((2, C) + size, dtype=DT), spatial_dims)
    assert merged.plan.diagonal_terms is not None


def test_strided_pools_run_as_a_direct_sum():
    modules = [pool(2, 3, 2, 1, False), pool(2, 3, 2, 1, True)]
    check_against_direct_sum(modules, torch.randn(2, C, 9, 10, dtype=DT), 2)


def test_diagonal_sum_gradcheck():
    from fxnas.kernels import DiagonalTerm, diagonal_sum

    x = torch.randn(2, 3, 6, 5, dtype=DT, requires_grad=True)
    w = torch.randn(3, dtype=DT, requires_grad=True)
    exclude = DiagonalTerm("box_over_count", 1.0, (3, 3), (1, 1), (1, 1))
    include = DiagonalTerm("box", 1 / 9, (3, 3), (1, 1), (1, 1))
    terms = (DiagonalTerm("identity", 1.0), exclude, include)
    assert torch.autograd.gradcheck(lambda x, w: diagonal_sum(x, w, terms), (x, w))
