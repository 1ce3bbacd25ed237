"""Mixed-edge analysis: every weighted-sum spelling, candidate paths, topology, negatives."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
import torch.nn as nn

import fxnas
from fxnas.testing import assert_equivalent
from fxnas.analysis import find_mixed_edges

C = 3


def _ops() -> nn.ModuleList:
    return nn.ModuleList([
        nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, padding=1), nn.BatchNorm2d(C, affine=False)),
        nn.Identity(),
        nn.AvgPool2d(3, 1, 1, count_include_pad=False),
        nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1)),
    ])


class Edge(nn.Module):
    """One mixed edge spelled in one of the graph shapes of DESIGN.md."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.ops = _ops()
        extra = 1 if form == "stack_zero" else 0
        self.alphas = nn.Parameter(torch.randn(len(self.ops) + extra))

    def forward(self, x):
        w = torch.softmax(self.alphas, dim=-1)
        if self.form == "output_first":
            return sum(op(x) * wi for op, wi in zip(self.ops, w))
        if self.form == "weight_first":
            return sum(wi * op(x) for wi, op in zip(w, self.ops))
        if self.form == "running":
            res = self.ops[0](x) * w[0]
            for k in range(1, len(self.ops)):
                res = res + self.ops[k](x) * w[k]
            return res
        outs = torch.stack([op(x) for op in self.ops])
        if self.form == "stack":
            return torch.sum(outs * w.view(-1, 1, 1, 1, 1), 0)
        if self.form == "stack_zero":
            outs = torch.cat([outs, torch.zeros_like(outs[:1])], 0)
            return torch.sum(outs * w.view(-1, 1, 1, 1, 1), 0)
        if self.form == "indexing":
            return (w[:, None, None, None, None] * outs).sum(0)
        if self.form == "einsum":
            return torch.einsum("k,knchw->nchw", w, outs)
        raise ValueError(self.form)


FORMS = ["output_first", "weight_first", "running", "stack", "stack_zero", "indexing", "einsum"]


@pytest.mark.parametrize("form", FORMS)
def test_every_weighted_sum_spelling_is_one_mixed_edge(form):
    model, x = Edge(form), torch.randn(2, C, 6, 6)
    gm = fxnas.trace(model, x)
    code_before = gm.code
    (edge,) = find_mixed_edges(gm)
    assert gm.code == code_before  # analysis never mutates
    expected = 5 if form == "stack_zero" else 4
    assert len(edge.candidates) == expected
    assert edge.input.op == "placeholder"
    assert [c.zero for c in edge.candidates] == [False] * 4 + [True] * (expected - 4)
    names = [c.module for c in edge.candidates[:4]]
    assert names == ["ops.0", "ops.1", "ops.2", "ops.3"]
    assert edge.weight_source is not None


@pytest.mark.parametrize("form", FORMS)
def test_every_spelling_simplifies_to_an_equivalent_module(form):
    model, x = Edge(form).double(), torch.randn(2, C, 6, 6, dtype=torch.float64)
    sgm = fxnas.simplify(model, x)
    report = fxnas.explain(sgm)
    assert len(report.mixed_edges) == 1 and report.mixed_edges[0].form != "canonical"
    assert report.simplified_edges[0].form == "canonical"
    assert_equivalent(model, sgm, (x,))


def test_candidate_paths_and_the_hierarchical_topology():
    model, x = Edge("output_first"), torch.randn(2, C, 6, 6)
    (edge,) = find_mixed_edges(fxnas.trace(model, x))
    conv, identity, pool, conv1 = edge.candidates
    assert [n.target for n in conv.path] == ["ops.0.0", "ops.0.1", "ops.0.2"]
    assert [n.target for n in identity.path] == ["ops.1"] and identity.frontier == [edge.input]
    assert [n.target for n in pool.path] == ["ops.2"]
    topology = edge.topology()
    assert nx.is_arborescence(topology)
    root = next(n for n, d in topology.in_degree() if d == 0)
    assert root == edge.input.name
    leaves = sorted(n for n, d in topology.out_degree() if d == 0)
    assert leaves == [f"candidate:{i}" for i in range(4)]


def test_after_hoisting_the_shared_relu_is_an_inner_node_of_the_topology():
    model, x = Edge("output_first"), torch.randn(2, C, 6, 6)
    up_to_hoisting = [p for p in fxnas.pipeline("exact") if p.name in ("canonicalize_mixed_sums", "hoist_shared")]
    sgm = fxnas.simplify(model, x, passes=up_to_hoisting)
    (edge,) = find_mixed_edges(sgm)
    assert [n.target for n in edge.shared] == ["ops.0.0"]  # one ReLU, read by both conv candidates
    topology = edge.topology(sgm)
    assert nx.is_arborescence(topology)
    relu = edge.shared[0].name
    assert topology.out_degree(relu) == 2 and topology.nodes[relu]["kind"] == "shared"


def test_a_node_summing_two_edges_holds_two_mixed_edges():
    class Node2(nn.Module):
        def __init__(self):
            super().__init__()
            self.e0, self.e1 = _ops(), _ops()
            self.alphas = nn.Parameter(torch.randn(2, 4))

        def forward(self, x0, x1):
            w = torch.softmax(self.alphas, -1)
            a = sum(op(x0) * wi for op, wi in zip(self.e0, w[0]))
            b = sum(op(x1) * wi for op, wi in zip(self.e1, w[1]))
            return sum([a, b])

    x = (torch.randn(2, C, 5, 5), torch.randn(2, C, 5, 5))
    edges = find_mixed_edges(fxnas.trace(Node2(), x))
    assert [e.name for e in edges] == ["e0", "e1"]
    assert [e.input.target for e in edges] == ["x0", "x1"]


def test_edge_weighted_sum_of_different_inputs_is_not_a_mixed_edge():
    """PC-DARTS's edge normalisation: Σ_j β_j · edge_j(h_j) reads different tensors."""

    class BetaSum(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([nn.Conv2d(C, C, 1) for _ in range(3)])
            self.betas = nn.Parameter(torch.zeros(3))

        def forward(self, s0, s1):
            h0, h1 = s0.relu(), s1.relu()
            h2 = h0 + h1  # a cell state that sums two others
            b = torch.softmax(self.betas, 0)
            return sum(bj * conv(h) for bj, conv, h in zip(b, self.convs, [h0, h1, h2]))

    inputs = (torch.randn(1, C, 4, 4), torch.randn(1, C, 4, 4))
    assert find_mixed_edges(fxnas.trace(BetaSum(), inputs)) == []


def test_per_sample_weights_are_not_architecture_weights():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.ops = nn.ModuleList([nn.Identity(), nn.ReLU()])

        def forward(self, x):
            gates = torch.softmax(x.mean((2, 3), keepdim=True), dim=1)  # (N, C, 1, 1)
            return sum(op(x) * gates[:, i : i + 1] for i, op in enumerate(self.ops))

    assert find_mixed_edges(fxnas.trace(Attention(), torch.randn(2, 2, 3, 3))) == []


def test_a_single_weighted_term_is_not_a_mixed_edge():
    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.alphas = nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return x.relu() * torch.softmax(self.alphas, 0)[0] + x

    assert find_mixed_edges(fxnas.trace(One(), torch.randn(3))) == []


def test_weights_given_as_a_forward_input():
    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.ops = _ops()

        def forward(self, x, weights):
            return sum(w * op(x) for w, op in zip(weights, self.ops))

    x, w = torch.randn(2, C, 4, 4), torch.softmax(torch.randn(4), 0)
    (edge,) = find_mixed_edges(fxnas.trace(Cell(), (x, w)))
    assert edge.weight_source.target == "weights"
