"""Supernets nobody here wrote, unchanged, through fxnas (exact mode must be equivalent)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxnas
from fxnas.spaces import DartsSupernet, PCDartsSupernet
from fxnas.testing import assert_equivalent

DT = torch.float64


def xautodl_net(name: str, space: str, C: int = 8, N: int = 1, algo: str | None = None):
    pytest.importorskip("xautodl")
    from xautodl.config_utils import dict2config
    from xautodl.models import get_cell_based_tiny_net
    from xautodl.models.cell_operations import SearchSpaceNames

    torch.manual_seed(0)
    config = dict(name=name, C=C, N=N, max_nodes=4, num_classes=10, space=SearchSpaceNames[space],
                  affine=False, track_running_stats=False)
    model = get_cell_based_tiny_net(dict2config(config, None))
    if algo is not None:  # the generic model: search algorithm and calculation mode
        model.set_algo(algo)
        model.set_cal_mode("joint")
    return model.to(DT)


@pytest.mark.parametrize("space", ["nas-bench-201", "darts"])
@pytest.mark.parametrize("name", ["DARTS-V1", "DARTS-V2", "generic"])
def test_xautodl_supernets_are_simplified_exactly(name, space):
    model = xautodl_net(name, space, algo="darts" if name == "generic" else None)
    x = torch.randn(2, 3, 32, 32, dtype=DT)
    sgm = fxnas.simplify(model, x)
    report = fxnas.explain(sgm)
    assert len(report.mixed_edges) == 18  # 3 cells x 6 edges
    assert report.pass_record("prune_zero").stats["pruned"] == 18
    assert report.nodes_after < report.nodes_before
    assert_equivalent(model, sgm, (x,), steps=1)


def test_darts_network_with_plain_tensor_alphas():
    torch.manual_seed(1)
    model = DartsSupernet(C=4, layers=3, alphas="tensor").to(DT)
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    with pytest.warns(fxnas.PlainTensorAttributeWarning):
        sgm = fxnas.simplify(model, x)
    assert len(fxnas.explain(sgm).mixed_edges) == 3 * 14
    assert_equivalent(model, sgm, (x,), arch_tensors=model.arch_parameters(), steps=1)


def test_pc_darts_network_with_its_shape_branch():
    torch.manual_seed(2)
    model = PCDartsSupernet(C=8, layers=3).to(DT)
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    sgm = fxnas.simplify(model, x)
    assert len(fxnas.explain(sgm).mixed_edges) == 3 * 14  # the beta-weighted node sums are not edges
    guards = [n for n in sgm.graph.nodes if getattr(n.target, "__name__", "") == "check_traced_value"]
    assert guards  # `if temp1.shape[2] == x.shape[2]` is a recorded run-time guard
    assert_equivalent(model, sgm, (x,), steps=1)


class NNIStyleMixedCell(nn.Module):
    """NNI 3.x style: ``torch.sum(torch.stack(outs) * softmax(alpha).view(-1,1,1,1,1), 0)``
    with a zero tensor concatenated for the implicit "none", and a running-sum mixed layer."""

    def __init__(self, C: int = 4):
        super().__init__()
        self.cell_ops = nn.ModuleDict({
            "conv3x3": nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C)),
            "maxpool": nn.MaxPool2d(3, 1, 1),
            "skip": nn.Identity(),
        })
        self.cell_alpha = nn.Parameter(torch.randn(len(self.cell_ops) + 1) * 1e-3)
        self.layer_ops = nn.ModuleList([nn.Conv2d(C, C, 1), nn.Conv2d(C, C, 3, padding=1), nn.AvgPool2d(3, 1, 1)])
        self.layer_alpha = nn.Parameter(torch.randn(len(self.layer_ops)) * 1e-3)

    def forward(self, x):
        op_results = torch.stack([op(x) for op in self.cell_ops.values()])
        op_results = torch.cat([op_results, torch.zeros_like(op_results[:1])], 0)  # implicit "none"
        alpha_shape = [-1] + [1] * (len(op_results.size()) - 1)
        edge = torch.sum(op_results * F.softmax(self.cell_alpha, -1).view(*alpha_shape), 0)
        weights = F.softmax(self.layer_alpha, -1)
        res = self.layer_ops[0](edge) * weights[0]
        for i in range(1, len(self.layer_ops)):
            res = res + self.layer_ops[i](edge) * weights[i]
        return res


def test_nni_style_stack_and_running_sums():
    torch.manual_seed(3)
    model = NNIStyleMixedCell().to(DT)
    x = torch.randn(2, 4, 6, 6, dtype=DT)
    sgm = fxnas.simplify(model, x)
    report = fxnas.explain(sgm)
    assert [e.form for e in report.mixed_edges] == ["stack_sum", "add_tree"]
    assert [len(e.candidates) for e in report.mixed_edges] == [4, 3]
    assert report.mixed_edges[0].candidates[3].zero  # the concatenated zero slice
    assert report.pass_record("merge_linear").stats["merged_groups"] == 1  # the running-sum layer is all linear
    assert_equivalent(model, sgm, (x,))
