"""Ordinary networks have no mixed edges: simplify must be a faithful no-op on them."""

from __future__ import annotations

import pytest
import torch
import torchvision

import fxnas
from fxnas.testing import assert_equivalent


@pytest.mark.parametrize("factory", [torchvision.models.resnet18, torchvision.models.mobilenet_v3_small])
def test_simplify_is_a_noop_without_mixed_edges(factory):
    torch.manual_seed(0)
    model = factory(num_classes=10).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    sgm = fxnas.simplify(model, x)
    report = fxnas.explain(sgm)
    assert report.mixed_edges == [] and report["mixed_edges"] == []
    # hoist_shared may still merge duplicated pure ops (none in these models): nothing changes here
    assert not any(record.modified for record in report.passes)
    assert report.nodes_after == report.nodes_before
    assert list(sgm.state_dict()) == list(model.state_dict())
    assert_equivalent(model, sgm, (x,), steps=1)
