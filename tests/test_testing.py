"""Tests of fxnas.testing: the equivalence checker must accept equal modules and
name the quantity that differs when they are not equal."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxnas.testing import EquivalenceReport, assert_equivalent, equivalence_report


class TinySupernet(nn.Module):
    """One mixed edge, plain-tensor alphas (DARTS style), BN buffers, nested output.

    Switches for the negative tests: ``detach_arch`` cuts the arch gradient,
    ``eval_offset`` changes only the eval-mode output, ``flat_output`` returns
    another nesting, ``noise`` uses the RNG in forward.
    """

    def __init__(self, alphas: torch.Tensor, noise: bool = False):
        super().__init__()
        self.ops = nn.ModuleList(
            [
                nn.Sequential(nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)),
                nn.Conv2d(3, 3, (1, 3), padding=(0, 1)),
                nn.AvgPool2d(3, 1, 1, count_include_pad=False),
            ]
        )
        self.bn = nn.BatchNorm2d(3, affine=False)
        self.head = nn.Linear(3, 2)
        self.alphas = alphas  # a plain tensor, neither Parameter nor buffer
        self.detach_arch = False
        self.eval_offset = 0.0
        self.flat_output = False
        self.noise = noise

    def forward(self, x):
        alphas = self.alphas.detach() if self.detach_arch else self.alphas
        if self.noise:
            alphas = alphas + torch.randn_like(alphas)
        w = F.softmax(alphas, dim=-1)
        y = self.bn(sum(op(x) * w[i] for i, op in enumerate(self.ops)))
        if not self.training:
            y = y + self.eval_offset
        logits = self.head(y.mean((2, 3)))
        if self.flat_output:
            return y, logits
        return y, {"logits": logits}


def make_model(dtype=torch.float64, noise=False):
    gen = torch.Generator().manual_seed(0)
    alphas = torch.randn(3, generator=gen, dtype=dtype).requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinySupernet(alphas, noise=noise).to(dtype)
    with torch.no_grad():  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=dtype)
    return model, (x,), (alphas,)


def independent_copy(model: TinySupernet) -> TinySupernet:
    """Same values under the same names, no shared Parameter / buffer objects; same arch tensor."""
    other = copy.deepcopy(model)
    other.load_state_dict(model.state_dict())
    other.alphas = model.alphas
    return other


def state_of(model: nn.Module):
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def assert_same_state(before, model: nn.Module):
    after = model.state_dict(keep_vars=True)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k].detach()), k


# --------------------------------------------------------------------------- #
# equal modules pass
# --------------------------------------------------------------------------- #


def test_module_is_equivalent_to_itself():
    model, inputs, arch = make_model()
    report = assert_equivalent(model, model, inputs, arch_tensors=arch)
    assert isinstance(report, EquivalenceReport) and report.ok
    assert report.max_abs == 0.0
    kinds = {q.kind for q in report.quantities}
    assert kinds == {"output", "input_grad", "param_grad", "arch_grad", "buffer"}
    assert {(q.mode, q.step) for q in report.quantities} == {(m, s) for m in ("train", "eval") for s in (0, 1)}
    names = {q.name for q in report.quantities}
    assert {"[0]", "[1]['logits']", "input[0]", "ops.0.1.weight", "arch[0]", "ops.0.2.running_mean",
            "bn.num_batches_tracked"} <= names


def test_independent_copy_is_equivalent():
    model, inputs, arch = make_model()
    other = independent_copy(model)
    assert other.ops[0][1].weight is not model.ops[0][1].weight
    report = assert_equivalent(model, other, inputs, arch_tensors=arch)
    assert any(q.kind == "param_value" for q in report.quantities)


def test_float32_module_is_equivalent_to_copy():
    model, inputs, arch = make_model(torch.float32)
    assert_equivalent(model, independent_copy(model), inputs, arch_tensors=arch)


def test_random_forward_sees_the_same_rng_in_both_runs():
    model, inputs, arch = make_model(noise=True)
    assert_equivalent(model, independent_copy(model), inputs, arch_tensors=arch)


# --------------------------------------------------------------------------- #
# differing modules fail, naming the quantity
# --------------------------------------------------------------------------- #


def test_perturbed_parameter_is_named():
    model, inputs, arch = make_model()
    other = independent_copy(model)
    with torch.no_grad():
        other.ops[1].weight[0, 0, 0, 1] += 1e-4
    with pytest.raises(AssertionError, match=r"value of parameter ops\.1\.weight") as info:
        assert_equivalent(model, other, inputs, arch_tensors=arch)
    message = str(info.value)
    assert "output [0]" in message and "max abs error" in message
    report = equivalence_report(model, other, inputs, arch_tensors=arch)
    failing = {(q.kind, q.name) for q in report.failures}
    assert ("param_value", "ops.1.weight") in failing
    assert ("param_grad", "ops.0.1.weight") in failing  # downstream of the perturbation through BN


def test_small_perturbation_passes_with_loose_tolerance():
    model, inputs, arch = make_model()
    other = independent_copy(model)
    with torch.no_grad():
        other.ops[1].weight[0, 0, 0, 1] += 1e-12
    with pytest.raises(AssertionError):
        assert_equivalent(model, other, inputs, arch_tensors=arch, rtol=0.0, atol=0.0)
    assert_equivalent(model, other, inputs, arch_tensors=arch)


def test_batchnorm_momentum_mismatch_is_a_buffer_mismatch():
    model, inputs, arch = make_model()
    other = independent_copy(model)
    other.ops[0][2].momentum = 0.5
    with pytest.raises(AssertionError, match=r"buffer after the pass ops\.0\.2\.running_mean \(mode='train', step=\d\)"):
        assert_equivalent(model, other, inputs, arch_tensors=arch)
    report = equivalence_report(model, other, inputs, arch_tensors=arch)
    # Train-mode outputs use batch statistics: only the running statistics differ.
    assert {(q.kind, q.mode) for q in report.failures} == {("buffer", "train")}
    assert {q.name for q in report.failures} == {"ops.0.2.running_mean", "ops.0.2.running_var"}


def test_shared_buffers_updated_twice_are_caught():
    """A candidate that shares the reference's BN and runs it one extra time."""
    model, inputs, arch = make_model()

    class RunsBNTwice(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            self.inner.bn(x)  # a spurious extra call updates the shared running stats
            return self.inner(x)

    with pytest.raises(AssertionError, match=r"inner\.bn\.num_batches_tracked|bn\.num_batches_tracked"):
        assert_equivalent(model, RunsBNTwice(model), inputs, arch_tensors=arch, modes=("train",))


def test_detached_arch_weights_are_an_arch_grad_mismatch():
    model, inputs, arch = make_model()
    other = independent_copy(model)
    other.detach_arch = True
    with pytest.raises(AssertionError, match=r"gradient w\.r\.t\. arch tensor arch\[0\]"):
        assert_equivalent(model, other, inputs, arch_tensors=arch)
    report = equivalence_report(model, other, inputs, arch_tensors=arch)
    assert {q.kind for q in report.failures} == {"arch_grad"}


def test_eval_only_difference_is_reported_in_eval_mode_only():
    model, inputs, arch = make_model()
    other = independent_copy(model)
    other.eval_offset = 1e-3
    assert_equivalent(model, other, inputs, arch_tensors=arch, modes=("train",))
    with pytest.raises(AssertionError, match=r"mode='eval'"):
        assert_equivalent(model, other, inputs, arch_tensors=arch)
    report = equivalence_report(model, other, inputs, arch_tensors=arch)
    assert report.failures and all(q.mode == "eval" for q in report.failures)
    assert ("output", "[0]") in {(q.kind, q.name) for q in report.failures}


def test_different_output_nesting_is_a_structure_mismatch():
    model, inputs, arch = make_model()
    other = independent_copy(model)
    other.flat_output = True
    with pytest.raises(AssertionError, match=r"output structure") as info:
        assert_equivalent(model, other, inputs, arch_tensors=arch)
    assert "{'logits': tensor}" in str(info.value)
    assert "missing in candidate output" in str(info.value)


def test_different_random_stream_fails():
    model, inputs, arch = make_model(noise=True)
    other = independent_copy(model)
    other.noise = False
    with pytest.raises(AssertionError, match=r"arch\[0\]"):
        assert_equivalent(model, other, inputs, arch_tensors=arch)


def test_output_shape_mismatch_is_reported():
    model, inputs, arch = make_model()

    class Cropped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y, rest = self.inner(x)
            return y[:, :, 1:], rest

    with pytest.raises(AssertionError, match=r"output \[0\].*shape \(2, 3, 4, 6\) != reference shape \(2, 3, 5, 6\)"):
        assert_equivalent(model, Cropped(model), inputs, arch_tensors=arch)


# --------------------------------------------------------------------------- #
# state is left as it was
# --------------------------------------------------------------------------- #


def test_state_modes_grads_and_rng_are_restored():
    model, inputs, arch = make_model()
    other = independent_copy(model)
    other.ops[0][2].momentum = 0.5  # makes the check fail after running everything
    model.eval()
    model.ops[0].train()  # a mixed per-module mode must come back as it was
    other.train()
    before_model, before_other = state_of(model), state_of(other)
    x_before = inputs[0].clone()
    rng_before = torch.get_rng_state()
    with pytest.raises(AssertionError):
        assert_equivalent(model, other, inputs, arch_tensors=arch)
    assert_same_state(before_model, model)
    assert_same_state(before_other, other)
    assert not model.training and model.ops[0].training and model.ops[0][1].training and not model.ops[1].training
    assert all(m.training for m in other.modules())
    assert all(p.grad is None for p in model.parameters()) and arch[0].grad is None
    assert torch.equal(inputs[0], x_before) and not inputs[0].requires_grad
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_reassigned_buffer_objects_are_put_back():
    class Reassigns(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", torch.zeros((), dtype=torch.float64))
            self.lin = nn.Linear(2, 2).double()

        def forward(self, x):
            self.count = self.count + 1  # a new tensor object, not an in-place update
            return self.lin(x) * self.count

    model = Reassigns()
    buffer = model.count
    assert_equivalent(model, model, (torch.randn(3, 2, dtype=torch.float64),))
    assert model.count is buffer and float(model.count) == 0.0


def test_inputs_may_be_nested_and_contain_non_tensors():
    class TakesMany(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2).double()

        def forward(self, xs, index, scale):
            return {"y": self.lin(xs["a"] + xs["b"][0]) * scale, "i": index + 1, "n": 3}

    model = TakesMany()
    inputs = ({"a": torch.randn(2, 2, dtype=torch.float64), "b": [torch.randn(2, 2, dtype=torch.float64)]},
              torch.tensor([1, 2]), 2.0)
    report = assert_equivalent(model, model, inputs)
    names = {q.name for q in report.quantities}
    assert {"input[0]['a']", "input[0]['b'][0]", "['y']", "['i']", "['n']"} <= names


def test_arch_tensor_must_require_grad():
    model, inputs, _ = make_model()
    with pytest.raises(ValueError, match="requires grad"):
        equivalence_report(model, model, inputs, arch_tensors=(torch.zeros(3),))


def test_report_summaries():
    model, inputs, arch = make_model()
    other = independent_copy(model)
    other.detach_arch = True
    report = equivalence_report(model, other, inputs, arch_tensors=arch, modes=("eval",), steps=1)
    by_kind = report.max_abs_by_kind()
    assert by_kind["arch_grad"] > 0 and by_kind["output"] == 0.0
    worst = report.per_quantity()
    assert not worst[("arch_grad", "arch[0]")].ok and worst[("output", "[0]")].ok
    assert "not equivalent" in str(report)


def test_forward_may_modify_its_input_in_place():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2).double()

        def forward(self, x):
            return self.lin(x.relu_())

    model = InPlace()
    x = torch.tensor([[-1.0, 2.0], [0.5, -3.0], [1.5, 0.25]], dtype=torch.float64)
    report = assert_equivalent(model, model, (x,))
    assert ("input_grad", "input[0]") in report.per_quantity()
    assert (x < 0).any()  # the caller's tensor is untouched
