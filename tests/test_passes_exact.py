"""The exact passes, one at a time, through ``check_pass`` (positive and negative cases)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxnas.analysis import find_mixed_edges
from passes.canonicalize_mixed_sums import canonicalize_mixed_sums
from passes.hoist_shared import hoist_shared
from passes.prune_zero import prune_zero

from .passcheck import calls_module_type, check_pass, count, is_function

C = 3
DT = torch.float64


def x_of(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=DT)


def relu_conv_bn(k: int = 3, track: bool = False, affine: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, k, padding=k // 2), nn.BatchNorm2d(C, affine=affine, track_running_stats=track))


class Zero(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        if self.kind == "mul":
            return x.mul(0.0)
        if self.kind == "zeros_like":
            return torch.zeros_like(x)
        if self.kind == "new_zeros":
            shape = list(x.shape)
            return x.new_zeros(shape)
        return x[:, :, ::1, ::1] * 0


class Cell(nn.Module):
    """A NAS-Bench-201-like cell: node i sums one mixed edge from every node j < i."""

    def __init__(self, make_ops, nodes: int = 3):
        super().__init__()
        self.keys = [(i, j) for i in range(1, nodes) for j in range(i)]
        self.edges = nn.ModuleDict({f"{i}<-{j}": make_ops() for i, j in self.keys})
        self.alphas = nn.Parameter(torch.randn(len(self.keys), len(self.edges[f"{1}<-{0}"]), dtype=DT))
        self.nodes = nodes

    def forward(self, x):
        weights = torch.softmax(self.alphas, dim=-1)
        states = [x]
        for i in range(1, self.nodes):
            incoming = []
            for j in range(i):
                row = weights[self.keys.index((i, j))]
                incoming.append(sum(op(states[j]) * w for op, w in zip(self.edges[f"{i}<-{j}"], row)))
            states.append(sum(incoming))
        return states[-1]


def nb201_ops() -> nn.ModuleList:
    return nn.ModuleList([Zero("mul"), nn.Identity(), relu_conv_bn(1), relu_conv_bn(3), nn.AvgPool2d(3, 1, 1, count_include_pad=False)])


# -------------------------------------------------------------- canonicalize


def test_canonicalize_makes_one_weighted_sum_per_edge():
    model, x = Cell(nb201_ops).to(DT), x_of(2, C, 6, 6)

    def expect(gm, result):
        assert count(gm, is_function("weighted_sum")) == 3
        assert result.stats["edges_canonicalized"] == 3
        assert all(e.form == "canonical" for e in find_mixed_edges(gm))

    check_pass(canonicalize_mixed_sums, model, (x,), expect=expect)


def test_canonicalize_leaves_a_network_without_mixed_edges_alone():
    model = nn.Sequential(nn.Conv2d(C, C, 3), nn.ReLU()).to(DT)
    check_pass(canonicalize_mixed_sums, model, (x_of(1, C, 5, 5),), modified=False)


# ----------------------------------------------------------------- prune_zero


def test_prune_zero_removes_every_spelling_of_zero():
    def ops():
        return nn.ModuleList([Zero("mul"), Zero("zeros_like"), Zero("new_zeros"), Zero("slice"), nn.Identity(), relu_conv_bn()])

    model, x = Cell(ops).to(DT), x_of(2, C, 5, 5)

    def expect(gm, result):
        assert result.stats["pruned"] == 4 * 3
        assert [len(e.candidates) for e in find_mixed_edges(gm)] == [2, 2, 2]

    check_pass(prune_zero, model, (x,), before=[canonicalize_mixed_sums], expect=expect)


def test_prune_zero_keeps_a_zero_behind_a_stateful_batchnorm():
    """Removing ``bn(x).mul(0)`` would skip the BatchNorm's running-statistics update."""

    def ops():
        return nn.ModuleList([nn.Sequential(nn.BatchNorm2d(C), Zero("mul")), nn.Identity()])

    check_pass(prune_zero, Cell(ops, nodes=2).to(DT), (x_of(2, C, 4, 4),), before=[canonicalize_mixed_sums],
               modified=False)


def test_prune_zero_keeps_a_zero_that_sets_the_output_shape():
    class Broadcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.alphas = nn.Parameter(torch.zeros(2, dtype=DT))

        def forward(self, x):
            w = torch.softmax(self.alphas, 0)
            return x.mean((2, 3), keepdim=True) * w[0] + x.mul(0.0) * w[1]

    check_pass(prune_zero, Broadcast(), (x_of(2, C, 4, 4),), before=[canonicalize_mixed_sums], modified=False)


def test_prune_zero_keeps_an_edge_that_is_all_zero():
    def ops():
        return nn.ModuleList([Zero("mul"), Zero("zeros_like")])

    check_pass(prune_zero, Cell(ops, nodes=2).to(DT), (x_of(1, C, 3, 3),), before=[canonicalize_mixed_sums],
               modified=False)


# -------------------------------------------------------------- hoist_shared


def test_hoist_shared_merges_relus_and_pools_across_candidates_and_edges():
    model, x = Cell(nb201_ops).to(DT), x_of(2, C, 6, 6)

    def expect(gm, result):
        # node 0 feeds two edges (4 ReLUs, 2 pools), node 1 one edge (2 ReLUs, 1 pool)
        assert count(gm, calls_module_type(gm, nn.ReLU)) == 2
        assert count(gm, calls_module_type(gm, nn.AvgPool2d)) == 2
        assert result.stats["by_operation"]["ReLU"] == 4

    check_pass(hoist_shared, model, (x,), before=[canonicalize_mixed_sums, prune_zero], expect=expect)


def test_hoist_shared_recurses_through_chains():
    """ReLU then pooling on the same tensor, in two edges: both levels merge in one sweep."""

    def ops():
        return nn.ModuleList([nn.Sequential(nn.ReLU(), nn.MaxPool2d(3, 1, 1)), nn.Identity()])

    model = Cell(ops, nodes=3).to(DT)

    def expect(gm, result):
        assert count(gm, calls_module_type(gm, nn.MaxPool2d)) == 2  # 3 edges, 2 distinct inputs

    check_pass(hoist_shared, model, (x_of(1, C, 4, 4),), before=[canonicalize_mixed_sums], expect=expect)


def test_hoist_shared_merges_the_same_deterministic_module_called_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(C, C, 3, padding=1)

        def forward(self, x):
            return self.conv(x) + self.conv(x).relu()

    check_pass(hoist_shared, Twice().to(DT), (x_of(1, C, 4, 4),), node_delta=1)


def test_hoist_shared_never_merges_stateful_random_or_distinct_modules():
    class Negative(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn_a, self.bn_b = nn.BatchNorm2d(C), nn.BatchNorm2d(C)  # running statistics: state
            self.affine_a = nn.BatchNorm2d(C, track_running_stats=False)
            self.affine_b = nn.BatchNorm2d(C, track_running_stats=False)  # distinct parameters
            self.drop_a, self.drop_b = nn.Dropout(0.5), nn.Dropout(0.5)  # random
            self.leaky_a, self.leaky_b = nn.LeakyReLU(0.1), nn.LeakyReLU(0.2)  # different hyper-parameters
            self.pool_a = nn.AvgPool2d(3, 1, 1, count_include_pad=True)
            self.pool_b = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
            self.conv_a, self.conv_b = nn.Conv2d(C, C, 1), nn.Conv2d(C, C, 1)

        def forward(self, x):
            outs = [self.bn_a(x), self.bn_b(x), self.affine_a(x), self.affine_b(x), self.drop_a(x),
                    self.drop_b(x), self.leaky_a(x), self.leaky_b(x), self.pool_a(x), self.pool_b(x),
                    self.conv_a(x), self.conv_b(x), x * 1, x * 1.0, F.dropout(x, 0.3), F.dropout(x, 0.3)]
            return sum(outs)

    model = Negative().to(DT)
    # dropout is random: compare in eval mode only (in train the reference itself is not repeatable
    # across two runs unless RNG is replayed, which assert_equivalent does per step)
    check_pass(hoist_shared, model, (x_of(2, C, 4, 4),), modified=False)


def test_hoist_shared_keeps_apart_readers_of_a_tensor_mutated_in_place():
    class Inplace(nn.Module):
        def forward(self, x):
            y = x * 2
            a = torch.sigmoid(y)
            y.add_(1)  # mutates y between the two reads
            b = torch.sigmoid(y)
            return a + b

    check_pass(hoist_shared, Inplace(), (x_of(3),), modified=False)


def test_hoist_shared_distinguishes_grad_modes():
    class GradModes(nn.Module):
        def forward(self, x):
            a = x.sigmoid()
            with torch.no_grad():
                b = x.sigmoid()
            return a + b

    check_pass(hoist_shared, GradModes(), (x_of(3),), modified=False)
