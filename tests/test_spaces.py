"""Tests of fxnas.spaces: the supernet builders the compiler is fed with."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn as nn

from fxnas.spaces import (
    DARTS_OPS,
    NB201_DARTS_OPS,
    NB201_LARGE_OPS,
    NB201_OPS,
    OPS,
    SPACES,
    SUM_STYLES,
    DartsSupernet,
    Genotype,
    NB201Supernet,
    PCDartsSupernet,
    build,
    gumbel_straight_through,
    make_op,
)

IMAGES = (2, 3, 16, 16)


def images(dtype=torch.float32, size=IMAGES, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*size, generator=generator).to(dtype)


def forward_backward(model, x):
    """Run forward + backward; return the logits."""
    logits = model(x)
    logits.square().mean().backward()
    return logits


def assert_arch_grads(model):
    for tensor in model.arch_parameters():
        assert tensor.grad is not None
        assert torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0


# --- candidate operations ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
def test_candidate_shapes(name, stride):
    op = make_op(name, 4, 4, stride, affine=False, track_running_stats=False)
    out = op(torch.randn(2, 4, 9, 9))
    side = 5 if stride == 2 else 9
    assert out.shape == (2, 4, side, side)


def test_zero_and_skip_forms():
    x = torch.randn(2, 4, 8, 8)
    zero = make_op("none", 4, 4, 2)
    assert torch.equal(zero(x), torch.zeros(2, 4, 4, 4))
    assert isinstance(make_op("skip_connect", 4, 4, 1), nn.Module)
    assert make_op("skip_connect", 4, 4, 1)(x) is x
    reduce = make_op("skip_connect", 4, 6, 2)
    assert [c.out_channels for c in reduce.convs] == [3, 3]
    assert reduce(x).shape == (2, 6, 4, 4)
    pool = make_op("avg_pool_3x3", 4, 4, 1)
    assert pool.pool.count_include_pad is False


def test_op_lists():
    assert NB201_OPS == ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
    assert NB201_LARGE_OPS == NB201_OPS + ["nor_conv_5x5", "nor_conv_7x7"]
    assert len(DARTS_OPS) == 8 and set(DARTS_OPS) <= set(OPS)
    from xautodl.models.cell_operations import SearchSpaceNames

    assert NB201_OPS == SearchSpaceNames["nas-bench-201"]
    assert NB201_DARTS_OPS == SearchSpaceNames["darts"]


# --- NAS-Bench-201 -------------------------------------------------------------


@pytest.mark.parametrize("sum_style", sorted(SUM_STYLES))
@pytest.mark.parametrize("space", ["nb201", "nb201-darts", "nb201-large", "nb201-gumbel"])
def test_nb201_forward_backward(space, sum_style):
    torch.manual_seed(0)
    model = build(space, C=4, N=1, sum_style=sum_style)
    logits = forward_backward(model, images())
    assert logits.shape == (2, 10)
    assert_arch_grads(model)
    assert all(p.grad is not None for p in model.classifier.parameters())


def test_nb201_sum_styles_agree():
    torch.manual_seed(0)
    reference = NB201Supernet(C=4, N=1, sum_style="output_first").double()
    with torch.no_grad():
        reference.alphas.normal_()
    x = images(torch.float64)
    expected = reference(x)
    expected.sum().backward()
    expected_grad = reference.alphas.grad.clone()
    for style in SUM_STYLES:
        model = NB201Supernet(C=4, N=1, sum_style=style).double()
        model.load_state_dict(reference.state_dict())
        out = model(x)
        out.sum().backward()
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(model.alphas.grad, expected_grad, rtol=1e-8, atol=1e-10)


def _xautodl_darts_v1(C, N, ops):
    from xautodl.config_utils import dict2config
    from xautodl.models import get_cell_based_tiny_net

    config = dict(
        name="DARTS-V1",
        C=C,
        N=N,
        max_nodes=4,
        num_classes=10,
        space=list(ops),
        affine=False,
        track_running_stats=False,
    )
    return get_cell_based_tiny_net(dict2config(config, None))


def _module_counts(model):
    return collections.Counter(type(m).__name__ for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)))


@pytest.mark.parametrize("ops", [NB201_OPS, NB201_DARTS_OPS], ids=["nas-bench-201", "darts"])
def test_nb201_matches_xautodl(ops):
    """Same parameters (shapes, order), module counts, and -- with the
    parameters copied over -- the same logits as xautodl's DARTS-V1."""
    torch.manual_seed(0)
    theirs = _xautodl_darts_v1(4, 1, ops).double()
    ours = NB201Supernet(C=4, N=1, ops=ops).double()
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    assert _module_counts(ours) == _module_counts(theirs)
    with torch.no_grad():
        for mine, their in zip(ours.parameters(), theirs.parameters()):
            mine.copy_(their)
    x = images(torch.float64)
    _, their_logits = theirs(x)
    torch.testing.assert_close(ours(x), their_logits, rtol=1e-9, atol=1e-9)


def test_nb201_parameters_and_names():
    model = NB201Supernet(C=4, N=2)
    assert model.arch_parameters() == [model.alphas]
    assert model.alphas.shape == (6, 5)
    assert isinstance(model.alphas, nn.Parameter)
    weight_ids = {id(p) for p in model.weight_parameters()}
    assert id(model.alphas) not in weight_ids
    assert len(weight_ids) + 1 == len(list(model.parameters()))
    names = dict(model.named_modules())
    assert "cells.0.edges.1<-0.3.conv" in names  # nor_conv_3x3 of edge 1<-0
    assert isinstance(names["cells.2"], nn.Module) and type(names["cells.2"]).__name__ == "ResNetReductionBlock"
    assert len(model.cells) == 3 * 2 + 2


def test_nb201_arch_str_round_trip():
    from nas_201_api import NASBench201API

    model = NB201Supernet(C=4, N=1)
    with torch.no_grad():
        model.alphas.zero_()
        for edge, op in enumerate([3, 2, 1, 4, 0, 3]):
            model.alphas[edge, op] = 1.0
    arch = model.arch_str()
    assert arch == (
        "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
    )
    assert NASBench201API.str2lists(arch) == model.genotype()


def test_nb201_gumbel_is_one_hot_with_gradients():
    torch.manual_seed(0)
    alphas = torch.randn(6, 5, requires_grad=True)
    hard = gumbel_straight_through(alphas, tau=0.5)
    assert torch.equal(hard.detach().sum(-1), torch.ones(6))
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    (hard * torch.randn(6, 5)).sum().backward()
    assert alphas.grad.abs().sum() > 0

    model = build("nb201-gumbel", C=4, N=1)
    model.set_tau(0.3)
    assert model.tau == 0.3
    forward_backward(model, images())
    assert_arch_grads(model)


# --- DARTS / PC-DARTS ----------------------------------------------------------


@pytest.mark.parametrize("space", ["darts", "darts-gumbel", "pc-darts"])
@pytest.mark.parametrize("alphas", ["parameter", "tensor"])
def test_darts_family_forward_backward(space, alphas):
    torch.manual_seed(0)
    model = build(space, C=8, layers=3, alphas=alphas)
    logits = forward_backward(model, images())
    assert logits.shape == (2, 10)
    assert_arch_grads(model)
    assert [c.reduction for c in model.cells] == [False, True, True]


def test_darts_structure():
    model = DartsSupernet(C=4, layers=5)
    assert [c.reduction for c in model.cells] == [False, True, False, True, False]
    assert all(len(c.edges) == 14 for c in model.cells)
    assert model.alphas_normal.shape == model.alphas_reduce.shape == (14, 8)
    names = dict(model.named_modules())
    assert type(names["cells.1.edges.0.ops.3"]).__name__ == "FactorizedReduce"  # stride-2 skip
    assert type(names["cells.1.edges.4.ops.3"]).__name__ == "Identity"  # node 1 <- node 2: stride 1
    assert isinstance(names["cells.0.edges.0.ops.1.1"], nn.BatchNorm2d)  # pool + BN
    assert type(names["cells.2.preprocess0"]).__name__ == "FactorizedReduce"
    assert type(names["cells.1.preprocess0"]).__name__ == "ReLUConvBN"
    convs = [m for m in model.cells.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)


def test_darts_tensor_alphas_are_plain_tensors():
    model = DartsSupernet(C=4, layers=3, alphas="tensor")
    arch = model.arch_parameters()
    assert len(arch) == 2
    for tensor in arch:
        assert type(tensor) is torch.Tensor and not isinstance(tensor, nn.Parameter)
        assert tensor.requires_grad and tensor.is_leaf
    param_ids = {id(p) for p in model.parameters()}
    buffer_ids = {id(b) for b in model.buffers()}
    assert not any(id(t) in param_ids | buffer_ids for t in arch)
    assert not any(k.startswith("alphas") for k in model.state_dict())
    model.double()
    assert [id(t) for t in model.arch_parameters()] == [id(t) for t in arch]  # moved in place
    assert all(t.dtype == torch.float64 and t.is_leaf and t.requires_grad for t in model.arch_parameters())
    forward_backward(model, images(torch.float64))
    assert_arch_grads(model)


def test_darts_genotype_and_new():
    model = DartsSupernet(C=4, layers=3, steps=4, multiplier=4)
    with torch.no_grad():
        model.alphas_normal.zero_()
        model.alphas_normal[:, 0] = 10.0  # 'none' dominates: must be ignored
        model.alphas_normal[1, DARTS_OPS.index("sep_conv_3x3")] = 5.0
        model.alphas_normal[0, DARTS_OPS.index("skip_connect")] = 4.0
    genotype = model.genotype()
    assert isinstance(genotype, Genotype)
    assert len(genotype.normal) == len(genotype.reduce) == 8
    assert genotype.normal_concat == genotype.reduce_concat == [2, 3, 4, 5]
    assert genotype.normal[:2] == [("sep_conv_3x3", 1), ("skip_connect", 0)]
    for node, start in enumerate(range(0, 8, 2)):
        inputs = [j for _, j in genotype.normal[start : start + 2]]
        assert len(set(inputs)) == 2 and all(0 <= j < node + 2 for j in inputs)
    assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)

    for kind in ["parameter", "tensor"]:
        model = DartsSupernet(C=4, layers=3, alphas=kind)
        clone = model.new()
        assert type(clone) is type(model)
        for a, b in zip(clone.arch_parameters(), model.arch_parameters()):
            assert a is not b and torch.equal(a, b)


def test_darts_gumbel_weights_are_one_hot():
    model = build("darts-gumbel", C=4, layers=3)
    model.set_tau(0.5)
    presampled = model._presampled_weights()
    for hard in presampled.values():
        assert torch.equal(hard.detach().sum(-1), torch.ones(14))
        assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}


def test_pcdarts_partial_edges_and_stride():
    torch.manual_seed(0)
    model = PCDartsSupernet(C=8, layers=3, partial_k=4)
    assert [t.shape for t in model.arch_parameters()] == [(14, 8), (14, 8), (14,), (14,)]
    reduction_edge = model.cells[1].edges[0]
    x = torch.randn(2, 16, 8, 8)
    weights = torch.softmax(torch.randn(8), -1)
    out = reduction_edge(x, weights)
    assert out.shape == (2, 16, 4, 4)
    normal_edge = model.cells[0].edges[0]
    assert normal_edge(torch.randn(2, 8, 8, 8), weights).shape == (2, 8, 8, 8)
    assert normal_edge.ops[4].stage_a.depthwise.in_channels == 2  # C // k
    forward_backward(model, images(size=(2, 3, 32, 32)))
    assert_arch_grads(model)
    genotype = model.genotype()
    assert len(genotype.normal) == 8
    clone = model.new()
    assert all(torch.equal(a, b) for a, b in zip(clone.arch_parameters(), model.arch_parameters()))


def test_build_names():
    assert set(SPACES) == {"nb201", "nb201-darts", "nb201-large", "nb201-gumbel", "darts", "darts-gumbel", "pc-darts"}
    assert build("nb201-darts", C=4, N=1).op_names == NB201_DARTS_OPS
    assert build("darts-gumbel", C=4, layers=3).weighting == "gumbel"
    assert isinstance(build("pc-darts", C=4, layers=3), PCDartsSupernet)
    with pytest.raises(KeyError):
        build("nope")
