"""fxnas.plug: in-place simplification inside a user's model and training code."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

import fxnas
from fxnas.spaces import DartsSupernet, NB201Supernet
from fxnas.testing import assert_equivalent


def test_plug_keeps_the_model_object_methods_parameters_and_state_dict():
    torch.manual_seed(0)
    model = NB201Supernet(C=4, N=1)
    reference = copy.deepcopy(model)
    params = list(model.parameters())
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    report = fxnas.plug(model, x)
    assert report.modules == ["cells.0", "cells.2", "cells.4"]  # the search cells; reduction blocks have no edges
    assert len(report.mixed_edges) == 18 and report["mixed_edges"]
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert list(model.state_dict()) == keys
    assert model.arch_str() == reference.arch_str() and model.genotype() == reference.genotype()
    assert isinstance(model.cells[0], type(reference.cells[0]))  # the cell object itself is kept
    model.load_state_dict(reference.state_dict())  # an original checkpoint loads
    assert_equivalent(reference, model, (x,))
    assert fxnas.unplug(model) == ["cells.0", "cells.2", "cells.4"]
    assert list(model.state_dict()) == keys and not any("fxnas" in n for n, _ in model.named_modules())


def test_plugged_model_deepcopies_saves_and_moves():
    torch.manual_seed(1)
    model = NB201Supernet(C=4, N=1)
    x = torch.randn(2, 3, 16, 16)
    fxnas.plug(model, x)
    clone = copy.deepcopy(model)
    model.eval(), clone.eval()
    torch.testing.assert_close(clone(x), model(x))
    with torch.no_grad():
        clone.cells[0].edges["1<-0"][3].conv.weight.add_(1.0)  # the copy is independent ...
    assert not torch.allclose(clone(x), model(x))  # ... and its simplified forward reads its own weights
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    loaded.eval()
    torch.testing.assert_close(loaded(x), model(x))
    model.double()
    assert model(x.double()).dtype == torch.float64


def test_plug_with_darts_plain_tensor_alphas_and_second_order_copies():
    torch.manual_seed(2)
    model = DartsSupernet(C=4, layers=3, alphas="tensor")
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    report = fxnas.plug(model, x)
    assert len(report.modules) == 3 and len(report.mixed_edges) == 3 * 14
    assert model.arch_parameters()[0] is not reference.arch_parameters()[0]
    assert_equivalent(reference, model, (x,), arch_tensors=(), steps=1)
    virtual = model.new()  # DARTS second order builds a copy with the same alphas
    assert all(torch.equal(a, b) for a, b in zip(virtual.arch_parameters(), model.arch_parameters()))


def _darts_step(model, w_opt, a_opt, train, val):
    """One first-order DARTS step: alphas on the validation batch, then weights on the train batch."""
    (xt, yt), (xv, yv) = train, val
    a_opt.zero_grad()
    F.cross_entropy(_logits(model(xv)), yv).backward()
    a_opt.step()
    w_opt.zero_grad()
    F.cross_entropy(_logits(model(xt)), yt).backward()
    w_opt.step()


def _logits(output):
    return output[1] if isinstance(output, tuple) else output


def _search_step_is_unchanged(build, arch_parameters, weight_parameters, x_shape):
    torch.manual_seed(3)
    plain = build()
    plugged = copy.deepcopy(plain)
    batches = [(torch.randn(*x_shape, dtype=torch.float64), torch.randint(0, 10, (x_shape[0],))) for _ in range(2)]
    optimizers = []
    for model in (plain, plugged):  # the user's optimizers are built before plug
        w_opt = torch.optim.SGD(weight_parameters(model), lr=0.05, momentum=0.9, weight_decay=3e-4)
        a_opt = torch.optim.Adam(arch_parameters(model), lr=3e-2, betas=(0.5, 0.999), weight_decay=1e-3)
        optimizers.append((w_opt, a_opt))
    fxnas.plug(plugged, batches[0][0][:2], mode="exact")
    for model, (w_opt, a_opt) in zip((plain, plugged), optimizers):
        torch.manual_seed(4)
        _darts_step(model, w_opt, a_opt, batches[0], batches[1])
    for (name, a), (_, b) in zip(plain.named_parameters(), plugged.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=name)
    plugged_state = plugged.state_dict()
    assert list(plugged_state) == list(plain.state_dict())
    for name, a in plain.state_dict().items():  # running statistics included
        torch.testing.assert_close(plugged_state[name], a, rtol=1e-9, atol=1e-11, msg=name)


def test_a_darts_search_step_is_unchanged_by_plug_on_the_builtin_nb201():
    _search_step_is_unchanged(
        lambda: NB201Supernet(C=4, N=1).double(),
        lambda m: m.arch_parameters(),
        lambda m: m.weight_parameters(),
        (4, 3, 16, 16),
    )


def test_a_darts_search_step_is_unchanged_by_plug_on_xautodl_darts_v1():
    pytest.importorskip("xautodl")
    from xautodl.config_utils import dict2config
    from xautodl.models import get_cell_based_tiny_net

    def build():
        config = dict(name="DARTS-V1", C=4, N=1, max_nodes=4, num_classes=10,
                      space=["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"],
                      affine=False, track_running_stats=False)
        return get_cell_based_tiny_net(dict2config(config, None)).double()

    _search_step_is_unchanged(build, lambda m: m.get_alphas(), lambda m: m.get_weights(), (4, 3, 32, 32))


def test_plug_on_a_model_whose_own_forward_holds_the_edges():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ops = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.ReLU(), torch.nn.Conv2d(2, 2, 1)])
            self.alphas = torch.nn.Parameter(torch.zeros(3))

        def forward(self, x):
            w = torch.softmax(self.alphas, 0)
            return sum(op(x) * wi for op, wi in zip(self.ops, w))

    model = Flat()
    reference = copy.deepcopy(model)
    report = fxnas.plug(model, torch.randn(1, 2, 3, 3))
    assert report.modules == [""]
    assert_equivalent(reference, model, (torch.randn(2, 2, 3, 3),))
