"""The search extensions of fxnas.spaces: weights as forward arguments, arch
groups, partial-channel NB201 cells, kept edges, genotypes from scores."""

from __future__ import annotations

import pytest
import torch

from fxnas.spaces import (
    DartsSupernet,
    DroppedEdge,
    NB201Supernet,
    build,
    edge_normalisation_weights,
    node_softmax,
)


def images(size=(2, 3, 16, 16), seed=0):
    return torch.randn(*size, generator=torch.Generator().manual_seed(seed))


def default_inputs(model):
    inputs = {}
    for group in model.arch_groups():
        inputs[group.weights_arg] = torch.softmax(group.alphas, -1)
        if group.edge_weights_arg:
            inputs[group.edge_weights_arg] = node_softmax(group.betas, group.node_edges)
    return [inputs[name] for name in model.arch_input_names()]


@pytest.mark.parametrize(
    "make",
    [
        lambda: build("nb201", C=4, N=1),
        lambda: build("nb201", C=8, N=1, partial_k=4, edge_normalisation=True),
        lambda: build("darts", C=8, layers=3),
        lambda: build("pc-darts", C=8, layers=3),
    ],
    ids=["nb201", "nb201-pc", "darts", "pc-darts"],
)
def test_given_weights_equal_computed_weights(make):
    torch.manual_seed(0)
    model = make().double()
    x = images().double()
    expected = model(x)
    torch.testing.assert_close(model(x, *default_inputs(model)), expected, rtol=1e-12, atol=1e-12)
    # other weights change the output, and gradients reach what was passed in
    given = [t.detach().clone().uniform_().requires_grad_(True) for t in default_inputs(model)]
    out = model(x, *given)
    assert not torch.allclose(out, expected)
    out.square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in given)


def test_arch_groups_describe_the_models():
    nb = build("nb201", C=4, N=1)
    (group,) = nb.arch_groups()
    assert group.name == "cell" and group.alphas is nb.alphas and group.betas is None
    assert group.node_edges == [[0], [1, 2], [3, 4, 5]]
    assert nb.arch_input_names() == ["arch_weights"]
    pc = build("pc-darts", C=8, layers=3)
    assert [g.name for g in pc.arch_groups()] == ["normal", "reduce"]
    assert pc.arch_groups()[1].betas is pc.betas_reduce
    assert pc.arch_groups()[0].node_edges == [[0, 1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13]]
    assert pc.arch_input_names()[2:] == ["edge_weights_normal", "edge_weights_reduce"]
    betas = torch.randn(14)
    torch.testing.assert_close(node_softmax(betas, pc.node_edges()), edge_normalisation_weights(betas, 4))


def test_nb201_partial_channels():
    model = NB201Supernet(C=8, N=1, partial_k=4, edge_normalisation=True)
    assert [t.shape for t in model.arch_parameters()] == [(6, 5), (6,)]
    conv = dict(model.named_modules())["cells.0.edges.1<-0.3.conv"]
    assert conv.in_channels == conv.out_channels == 2  # C // k
    assert model(images()).shape == (2, 10)
    with pytest.raises(ValueError):
        NB201Supernet(C=6, N=1, partial_k=4)


def test_nb201_kept_edges_and_genotype():
    kept = ["1<-0", "2<-0", "2<-1", "3<-1", "3<-2"]
    model = NB201Supernet(C=4, N=1, kept_edges=kept)
    assert "3<-0" not in model.cells[0].edges and "3<-1" in model.cells[0].edges
    assert model.arch_groups()[0].kept_edges == [0, 1, 2, 4, 5]
    assert model(images()).shape == (2, 10)
    with torch.no_grad():
        model.alphas.zero_()
        model.alphas[:, 3] = 1.0
    assert model.arch_str() == (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    )
    scores = torch.zeros(6, 5)
    scores[:, 2] = 1.0
    scores[4] = 0.0  # a strategy's mask: edge 3<-1 silent
    assert model.arch_str(scores) == (
        "|nor_conv_1x1~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|none~0|none~1|nor_conv_1x1~2|"
    )
    assert model.genotype({"cell": scores}) == model.genotype(scores)
    with pytest.raises(ValueError):
        NB201Supernet(C=4, N=1, kept_edges=["2<-0", "2<-1", "3<-0"])  # node 1 left without input
    clone = model.new(ops=["nor_conv_3x3"])
    assert clone.op_names == ["nor_conv_3x3"] and clone.kept_edges == kept


def test_darts_kept_edges_and_genotype_scores():
    kept = {"normal": [0, 1, 2, 4, 5, 7, 9, 10], "reduce": [0, 1, 3, 4, 6, 7, 12, 13]}
    model = DartsSupernet(C=8, layers=3, kept_edges=kept)
    normal = model.cells[0]
    assert isinstance(normal.edges[3], DroppedEdge) and not isinstance(normal.edges[4], DroppedEdge)
    assert not list(normal.edges[3].parameters())
    assert model(images()).shape == (2, 10)
    assert [g.kept_edges for g in model.arch_groups()] == [kept["normal"], kept["reduce"]]
    genotype = model.genotype()
    first_edge = [0, 2, 5, 9]  # first edge row of every node
    for kind, gene in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        for node, start in enumerate(first_edge):
            chosen = sorted(j for _, j in gene[2 * node : 2 * node + 2])
            expected = sorted(row - start for row in kept[kind] if start <= row < start + 2 + node)
            assert chosen == expected
        assert all(op != "none" for op, _ in gene)
    # scores override the alphas: put all mass on avg_pool_3x3 of two edges per node
    scores = {kind: torch.full((14, 8), 0.01) for kind in ("normal", "reduce")}
    pool = model.op_names.index("avg_pool_3x3")
    for kind in scores:
        for row in kept[kind]:
            scores[kind][row, pool] = 1.0
    assert all(op == "avg_pool_3x3" for op, _ in model.genotype(scores).normal)
    with pytest.raises(ValueError):
        DartsSupernet(C=8, layers=3, kept_edges={"normal": [2, 3, 4, 5, 6, 7, 8, 9], "reduce": list(range(14))})
