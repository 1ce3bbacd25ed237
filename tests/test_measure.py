"""fxnas.measure against direct formulas: FLOPs of a step and bytes saved for backward."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn

from fxnas.measure import saved_tensor_bytes, training_step_flops


@pytest.mark.parametrize("groups", [1, 2, 8, 16])
@pytest.mark.parametrize("input_grad", [True, False])
def test_conv_step_flops_match_the_formula(groups, input_grad):
    conv = nn.Conv2d(16, 32, (3, 5), padding=(1, 2), groups=groups, bias=False)
    x = torch.randn(2, 16, 8, 8, requires_grad=input_grad)
    forward = 2 * 2 * 8 * 8 * 32 * (16 // groups) * 3 * 5  # 2 x batch x positions x weight numel
    products = 3 if input_grad else 2  # forward, weight gradient, [input gradient]
    assert training_step_flops(conv, (x,), loss=lambda o: o.sum()) == products * forward


def test_strided_conv_flops_count_output_positions():
    conv = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    assert training_step_flops(conv, (x,), loss=lambda o: o.sum()) == 3 * (2 * 1 * 8 * 8 * 8 * 1 * 9)


def test_saved_bytes_counts_each_storage_once():
    x = torch.randn(4, 8, 16, 16)

    class SharedRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()
            self.convs = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1, bias=False) for _ in range(3))

        def forward(self, x):
            y = self.relu(x)
            return sum(conv(y) for conv in self.convs)

    # The ReLU saves its output, the three convolutions save that same tensor: one storage.
    # (The input x needs no gradient and the kernels are parameters: neither counts.)
    assert saved_tensor_bytes(SharedRelu(), (x,)) == x.numel() * 4


def test_saved_bytes_does_not_leak_the_forward():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    x = torch.randn(2, 3, 16, 16)
    refs = []

    def keep(module, inputs, output):
        refs.append(weakref.ref(output))

    model[1].register_forward_hook(keep)
    assert saved_tensor_bytes(model, (x,)) > 0
    gc.collect()
    assert refs and all(r() is None for r in refs)  # the saved ReLU output was freed
