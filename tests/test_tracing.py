"""fxnas.trace: every tracing case of DESIGN.md, and the errors for what cannot be traced."""

from __future__ import annotations

import operator
import random
import re
import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import fxnas
from fxnas.errors import (
    DataDependentControlFlowError,
    FrozenTensorError,
    NondeterministicTraceError,
    PlainTensorAttributeWarning,
    TracedValueGuardError,
)

THIS_FILE = __file__.rsplit("/", 1)[-1]


def _getitems(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.getitem]


class ZipEdge(nn.Module):
    """NAS-Bench-201 style: ``sum(op(x) * w for op, w in zip(ops, weights))``."""

    def __init__(self, weights_first: bool = False, ops_first: bool = True):
        super().__init__()
        self.ops = nn.ModuleList([nn.Identity(), nn.ReLU(), nn.AvgPool2d(3, 1, 1), nn.Conv2d(3, 3, 3, padding=1)])
        self.alphas = nn.Parameter(torch.randn(len(self.ops)))
        self.weights_first, self.ops_first = weights_first, ops_first

    def forward(self, x):
        weights = torch.softmax(self.alphas, dim=-1)
        if self.ops_first:
            return sum(op(x) * w for op, w in zip(self.ops, weights))
        return sum(w * op(x) for w, op in zip(weights, self.ops))


@pytest.mark.parametrize("ops_first", [True, False])
def test_iteration_over_a_proxy_in_zip_either_order(ops_first):
    model = ZipEdge(ops_first=ops_first)
    x = torch.randn(2, 3, 8, 8)
    gm = fxnas.trace(model, x)
    # exactly one getitem per candidate weight: no dangling out-of-range index
    assert len(_getitems(gm)) == len(model.ops)
    assert all(0 <= n.args[1] < len(model.ops) for n in _getitems(gm))
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_len_and_unpacking_of_proxies():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.alphas = nn.Parameter(torch.randn(3))

        def forward(self, x):
            w = torch.softmax(self.alphas, 0)
            a, b, c = w
            n = len(w)
            return x * a + x.relu() * b + x.sigmoid() * c + n

    model, x = Model(), torch.randn(4, 5)
    gm = fxnas.trace(model, x)
    torch.testing.assert_close(gm(x), model(x))


def test_iteration_over_an_input_records_a_guard():
    class Model(nn.Module):
        def forward(self, x, weights):
            return sum(w * x for w in weights)

    model = Model()
    gm = fxnas.trace(model, (torch.randn(2, 3), torch.randn(4)))
    torch.testing.assert_close(gm(torch.ones(2, 3), torch.ones(4)), torch.full((2, 3), 4.0))
    with pytest.raises(TracedValueGuardError, match="the length of"):
        gm(torch.ones(2, 3), torch.ones(5))


class ShapeBranch(nn.Module):
    """PC-DARTS: ``if temp1.shape[2] == x.shape[2]`` decides how channels are concatenated."""

    def __init__(self, stride: int):
        super().__init__()
        self.op = nn.Conv2d(2, 2, 3, stride=stride, padding=1)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x):
        xtemp, xtemp2 = x[:, :2], x[:, 2:]
        temp1 = self.op(xtemp)
        if temp1.shape[2] == x.shape[2]:
            return torch.cat([temp1, xtemp2], dim=1)
        return torch.cat([temp1, self.pool(xtemp2)], dim=1)


@pytest.mark.parametrize("stride", [1, 2])
def test_shape_branches_resolved_from_example_inputs(stride):
    model, x = ShapeBranch(stride), torch.randn(2, 4, 8, 8)
    gm = fxnas.trace(model, x)
    torch.testing.assert_close(gm(x), model(x))
    # the decision is recorded as a run-time guard, not silently baked in
    guards = [n for n in gm.graph.nodes if getattr(n.target, "__name__", "") == "check_traced_value"]
    assert len(guards) == 1
    # the batch size is not part of the decision: another batch runs
    other = torch.randn(5, 4, 8, 8)
    torch.testing.assert_close(gm(other), model(other))


def test_shape_guard_refuses_an_input_that_flips_the_branch():
    model = ShapeBranch(stride=2)
    gm = fxnas.trace(model, torch.randn(2, 4, 8, 8))  # 4 != 8: the max-pool branch
    tiny = torch.randn(2, 4, 2, 2)  # stride-2 conv gives 1 != 2: same branch, runs
    torch.testing.assert_close(gm(tiny), model(tiny))
    flips = torch.randn(2, 4, 1, 1)  # 1 == 1: the model would take the other branch
    with pytest.raises(TracedValueGuardError, match=r"temp1\.shape\[2\] == x\.shape\[2\]"):
        gm(flips)


def test_view_on_batch_size_stays_symbolic():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            return self.fc(x.view(x.size(0), -1))

    model = Head()
    gm = fxnas.trace(model, torch.randn(2, 3, 2, 2))
    torch.testing.assert_close(gm(torch.randn(7, 3, 2, 2)).shape, torch.Size([7, 3]))


class PlainAlphas(nn.Module):
    """The original DARTS code keeps its alphas as plain tensors with requires_grad."""

    def __init__(self):
        super().__init__()
        self.ops = nn.ModuleList([nn.Identity(), nn.ReLU(), nn.Tanh()])
        self.alphas = torch.zeros(len(self.ops), requires_grad=True)

    def forward(self, x):
        weights = F.softmax(self.alphas, dim=-1)
        return sum(w * op(x) for w, op in zip(weights, self.ops))


def test_plain_tensor_alphas_stay_live_inputs():
    model, x = PlainAlphas(), torch.randn(3, 4)
    with pytest.warns(PlainTensorAttributeWarning, match="alphas"):
        gm = fxnas.trace(model, x)
    assert gm.alphas is model.alphas  # the same object, not a copy
    assert "alphas" not in dict(gm.named_buffers()) and "alphas" not in gm.state_dict()
    assert "alphas" not in dict(model.named_buffers())  # the user's model is restored
    before = gm(x)
    with torch.no_grad():
        model.alphas += torch.tensor([5.0, 0.0, 0.0])  # an optimizer step on the user's tensor
    after = gm(x)
    torch.testing.assert_close(after, model(x))
    assert not torch.allclose(before, after)
    (grad,) = torch.autograd.grad(gm(x).sum(), [model.alphas])
    (expected,) = torch.autograd.grad(model(x).sum(), [model.alphas])
    torch.testing.assert_close(grad, expected)


def test_plain_fx_freezes_plain_tensor_alphas():
    """The failure fxnas fixes: plain fx computes softmax(alphas) once and bakes it in."""
    model, x = PlainAlphas(), torch.randn(3, 4)
    frozen = fx.symbolic_trace(model)
    with torch.no_grad():
        model.alphas += torch.tensor([5.0, 0.0, 0.0])
    assert not torch.allclose(frozen(x), model(x))


def test_alphas_in_a_list_raise_frozen_tensor_error():
    class ListAlphas(nn.Module):
        def __init__(self):
            super().__init__()
            self.ops = nn.ModuleList([nn.Identity(), nn.ReLU()])
            self.arch = [torch.zeros(2, requires_grad=True)]

        def forward(self, x):
            weights = torch.softmax(self.arch[0], dim=0)
            return sum(w * op(x) for w, op in zip(weights, self.ops))

    with pytest.raises(FrozenTensorError) as info:
        fxnas.trace(ListAlphas(), torch.randn(2, 2))
    assert THIS_FILE in str(info.value) and "frozen" in str(info.value)


def test_module_names_that_are_not_identifiers():
    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.edges = nn.ModuleDict({"1<-0": nn.ModuleList([nn.ReLU(), nn.Conv2d(2, 2, 1)])})
            self.alphas = nn.Parameter(torch.zeros(1, 2))

        def forward(self, x):
            w = torch.softmax(self.alphas, -1)[0]
            return sum(op(x) * wi for op, wi in zip(self.edges["1<-0"], w))

    model, x = Cell(), torch.randn(2, 2, 4, 4)
    gm = fxnas.trace(model, x)
    assert '"1<-0"' in gm.code
    torch.testing.assert_close(gm(x), model(x))


def test_item_raises_data_dependent_error_with_the_user_line():
    class Gdas(nn.Module):
        def __init__(self):
            super().__init__()
            self.ops = nn.ModuleList([nn.Identity(), nn.ReLU()])
            self.alphas = nn.Parameter(torch.zeros(2))

        def forward(self, x):
            index = self.alphas.argmax().item()  # the line the error must name
            return self.ops[index](x)

    with pytest.raises(DataDependentControlFlowError) as info:
        fxnas.trace(Gdas(), torch.randn(2, 2))
    message = str(info.value)
    line = next(i for i, text in enumerate(open(__file__).read().splitlines(), 1) if "the line the error must name" in text)
    assert f"{THIS_FILE}:{line}" in message
    assert ".item()" in message and "one-hot" in message


def test_branch_on_tensor_value_raises():
    class Retry(nn.Module):
        def forward(self, x):
            if torch.isinf(x).any():
                return x * 0
            return x

    with pytest.raises(DataDependentControlFlowError, match=re.escape(THIS_FILE)):
        fxnas.trace(Retry(), torch.randn(2))


def test_python_random_in_forward_raises():
    class Setn(nn.Module):
        def __init__(self):
            super().__init__()
            self.ops = nn.ModuleList([nn.Identity(), nn.ReLU()])

        def forward(self, x):
            return random.choice(self.ops)(x)

    with pytest.raises(NondeterministicTraceError) as info:
        fxnas.trace(Setn(), torch.randn(2))
    assert "random.choice" in str(info.value) and THIS_FILE in str(info.value)
    random.choice([1, 2])  # the patch is undone


def test_traced_module_keeps_every_parameter_and_buffer():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(2, 2, 1)
            self.unused = nn.BatchNorm2d(2)
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.used(x) * self.scale

    model = WithUnused()
    gm = fxnas.trace(model, torch.randn(1, 2, 3, 3))
    assert list(gm.state_dict()) == list(model.state_dict())
    for (name, p), (gname, gp) in zip(model.named_parameters(), gm.named_parameters()):
        assert name == gname and p is gp


def test_leaf_modules_option_keeps_a_module_whole():
    class Block(nn.Module):
        def forward(self, x):
            return x.relu() + 1

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x)

    gm = fxnas.trace(Model(), torch.randn(2), leaf_modules=[Block])
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]


def test_trace_does_not_touch_running_statistics():
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), bn)
    fxnas.trace(model, torch.randn(4, 3, 5, 5))
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_mean, torch.zeros(3))


def test_missing_example_input_is_a_clear_error():
    class TwoInputs(nn.Module):
        def forward(self, x, weights):
            return x * weights.sum()

    with pytest.raises(fxnas.TraceError, match="weights"):
        fxnas.trace(TwoInputs(), torch.randn(2))


def test_no_grad_regions_are_kept_in_the_graph():
    class PartlyFrozen(nn.Module):
        def forward(self, x):
            a = x.sigmoid()
            with torch.no_grad():
                b = x.sigmoid() * 2
            return a + b

    model = PartlyFrozen()
    gm = fxnas.trace(model, torch.randn(3))
    x = torch.randn(3, requires_grad=True)
    (grad,) = torch.autograd.grad(gm(x).sum(), [x])
    (expected,) = torch.autograd.grad(model(x).sum(), [x])
    torch.testing.assert_close(grad, expected)
    assert torch.is_grad_enabled()
    with torch.no_grad():
        gm(x)
        assert not torch.is_grad_enabled()  # the caller's mode is restored, not assumed
