"""Second-order DARTS: the architecture gradient through one unrolled weight step.

DARTS (Liu et al., 2019, eq. 6-8) approximates the best response of the
network weights by one virtual SGD step on the training loss,

    w' = w - eta * (m + grad_w L_train(w, alpha) + lambda * w)

(``m``: the optimizer's momentum buffer times its momentum, ``lambda``: its
weight decay, ``eta``: its learning rate), and takes the gradient of
``L_val(w'(alpha), alpha)``:

    grad_alpha L_val(w', alpha) - eta * grad^2_{alpha, w} L_train(w, alpha) . v,
    v = grad_{w'} L_val(w', alpha),

with the Hessian-vector product by central finite differences,

    grad^2_{alpha, w} L_train . v ~ (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 r),
    w(+/-) = w +/- r v,  r = 0.01 / |v|.

Here the virtual weights never live in a module: every evaluation is
``torch.func.functional_call(network, {name: tensor}, inputs)`` on the (possibly
simplified) network, keyed by parameter name, with *cloned* buffers so that
the virtual passes leave the BatchNorm running statistics of the real network
untouched.  No deep copy of the supernet is made.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from torch.func import functional_call

__all__ = ["unrolled_arch_gradients", "virtual_step"]

#: ``arch_inputs()`` -> forward arguments after the images (differentiable in the arch tensors).
ArchInputs = Callable[[], Sequence[torch.Tensor]]


def _cloned_buffers(network: nn.Module) -> Dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in network.named_buffers()}


def _loss(network, state, images, labels, inputs, criterion) -> torch.Tensor:
    logits = functional_call(network, state, (images, *inputs))
    return criterion(logits, labels)


def virtual_step(
    weights: Dict[str, torch.Tensor],
    grads: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> Dict[str, torch.Tensor]:
    """``w - eta * (momentum * buffer + grad + weight_decay * w)`` for every weight,
    with the hyper-parameters and momentum buffers of ``optimizer`` (SGD)."""
    group = optimizer.param_groups[0]
    eta, momentum, decay = group["lr"], group.get("momentum", 0.0), group.get("weight_decay", 0.0)
    stepped = {}
    with torch.no_grad():
        for (name, w), g in zip(weights.items(), grads):
            buffer = optimizer.state.get(w, {}).get("momentum_buffer")
            direction = g + decay * w
            if buffer is not None and momentum:
                direction = direction + momentum * buffer
            stepped[name] = w - eta * direction
    return stepped


def unrolled_arch_gradients(
    network: nn.Module,
    weights: Dict[str, torch.Tensor],
    arch_tensors: List[torch.Tensor],
    arch_inputs: ArchInputs,
    train_batch: Tuple[torch.Tensor, torch.Tensor],
    valid_batch: Tuple[torch.Tensor, torch.Tensor],
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    r: float = 1e-2,
) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Second-order DARTS gradients of ``arch_tensors``.

    Args:
        network: the module to evaluate (the user's supernet or its
            simplified GraphModule), called as ``network(images, *arch_inputs())``.
        weights: its network weights by parameter name (not the arch tensors).
        arch_tensors: the leaves to differentiate (alphas, betas, ...).
        arch_inputs: recomputes the architecture inputs from ``arch_tensors``.
        optimizer: the weight optimizer (SGD): its lr, momentum buffers and
            weight decay define the virtual step.
        r: finite-difference scale, ``r / |v|`` (DARTS: 0.01).

    Returns:
        ``(gradients, validation loss, validation logits)``; the gradients
        are in the order of ``arch_tensors`` (zeros where one is unused).
    """
    x_train, y_train = train_batch
    x_valid, y_valid = valid_batch
    eta = optimizer.param_groups[0]["lr"]
    names = list(weights)

    # 1. the virtual step w' (the arch inputs are constants here)
    with torch.no_grad():
        constant_inputs = [t.detach() for t in arch_inputs()]
    train_loss = _loss(network, _cloned_buffers(network), x_train, y_train, constant_inputs, criterion)
    grads = torch.autograd.grad(train_loss, [weights[n] for n in names], allow_unused=True)
    grads = [torch.zeros_like(weights[n]) if g is None else g for n, g in zip(names, grads)]
    stepped = virtual_step(weights, grads, optimizer)
    stepped = {n: t.requires_grad_(True) for n, t in stepped.items()}

    # 2. grad_alpha and v = grad_w' of L_val(w', alpha)
    logits = functional_call(network, {**stepped, **_cloned_buffers(network)}, (x_valid, *arch_inputs()))
    valid_loss = criterion(logits, y_valid)
    outputs = torch.autograd.grad(valid_loss, list(arch_tensors) + [stepped[n] for n in names], allow_unused=True)
    d_alpha = [torch.zeros_like(a) if g is None else g for a, g in zip(arch_tensors, outputs[: len(arch_tensors)])]
    v = [torch.zeros_like(stepped[n]) if g is None else g for n, g in zip(names, outputs[len(arch_tensors) :])]

    # 3. the Hessian-vector product by central differences around w
    norm = torch.sqrt(sum((g.detach() ** 2).sum() for g in v))
    scale = r / (norm + 1e-12)

    def arch_grad_at(sign: float) -> List[torch.Tensor]:
        with torch.no_grad():
            shifted = {n: weights[n] + sign * scale * g for n, g in zip(names, v)}
        loss = _loss(network, {**shifted, **_cloned_buffers(network)}, x_train, y_train, arch_inputs(), criterion)
        out = torch.autograd.grad(loss, list(arch_tensors), allow_unused=True)
        return [torch.zeros_like(a) if g is None else g for a, g in zip(arch_tensors, out)]

    plus, minus = arch_grad_at(1.0), arch_grad_at(-1.0)
    gradients = [
        (d - eta * (p - m) / (2 * scale)).detach() for d, p, m in zip(d_alpha, plus, minus)
    ]
    return gradients, valid_loss.detach(), logits.detach()
