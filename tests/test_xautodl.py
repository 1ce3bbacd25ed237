"""The real NAS-Bench-201 supernets of xautodl (AutoDL-Projects), unchanged, through fxnas."""

from __future__ import annotations

import warnings

import pytest
import torch

import fxnas
from fxnas.testing import assert_equivalent

xautodl = pytest.importorskip("xautodl")
from xautodl.config_utils import dict2config  # noqa: E402
from xautodl.models import get_cell_based_tiny_net  # noqa: E402
from xautodl.models.cell_operations import SearchSpaceNames  # noqa: E402


def build(name: str, space: str = "nas-bench-201", C: int = 16, N: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    config = dict(name=name, C=C, N=N, max_nodes=4, num_classes=10, space=SearchSpaceNames[space],
                  affine=False, track_running_stats=False)
    return get_cell_based_tiny_net(dict2config(config, None))


@pytest.fixture(scope="module")
def darts_v1():
    model = build("DARTS-V1").double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    return model, x, fxnas.simplify(model, x)


def test_darts_v1_structure_of_the_rewrite(darts_v1):
    model, x, sgm = darts_v1
    report = fxnas.explain(sgm)
    assert len(report.mixed_edges) == 90
    assert all(len(edge.candidates) == 5 for edge in report.mixed_edges)
    assert report.pass_record("prune_zero").stats["pruned"] == 90
    relus_before = report.operations_before["ReLU"]
    relus_after = report.operations_after["ReLU"]
    assert relus_before == 185 and relus_before - relus_after >= 135
    assert report.operations_after.get("mul", 0) == 0  # every x.mul(0.) and every w*c product is gone
    assert report.nodes_before == 2280
    assert [e.name for e in report.mixed_edges[:2]] == ["cells.0.edges.1<-0", "cells.0.edges.2<-0"]
    assert [c.name for c in report.mixed_edges[0].candidates][:2] == ["cells.0.edges.1<-0.0", "cells.0.edges.1<-0.1"]


def test_darts_v1_is_equivalent(darts_v1):
    model, x, sgm = darts_v1
    assert_equivalent(model, sgm, (x,), arch_tensors=())


def test_darts_v1_state_is_shared(darts_v1):
    model, _, sgm = darts_v1
    assert list(sgm.state_dict()) == list(model.state_dict())
    assert sgm.arch_parameters is model.arch_parameters


def test_gdas_data_dependent_forward_points_to_the_one_hot_form():
    model = build("GDAS", C=8, N=1)
    with pytest.raises(fxnas.DataDependentControlFlowError) as info:
        fxnas.trace(model, torch.randn(2, 3, 32, 32))
    message = str(info.value)
    assert "search_model_gdas.py" in message and "one-hot" in message


def test_setn_random_sampling_is_refused():
    model = build("SETN", C=8, N=1)  # default mode "urs": random.choice of a sub-network per forward
    with pytest.raises(fxnas.NondeterministicTraceError, match="random.choice"):
        fxnas.trace(model, torch.randn(2, 3, 32, 32))


def test_enas_sampled_subnetwork_is_flagged():
    """ENAS's forward runs the sub-network last sampled by its controller (a Python attribute):
    fxnas cannot see that choice, but it warns that the other candidates are not in the graph."""
    model = build("ENAS", C=8, N=1)
    model.update_arch([3, 2, 1, 3, 0, 4])  # what the controller's sample gives, one op per edge
    with pytest.warns(fxnas.UnusedParametersWarning, match="sub-network"):
        fxnas.trace(model, torch.randn(2, 3, 32, 32))
