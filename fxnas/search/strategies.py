"""Search strategies: how architecture weights are computed and updated.

A strategy never touches the compiled network's code.  It computes the
architecture *inputs* of the supernet -- one ``(num_edges, num_ops)`` weight
matrix per :class:`~fxnas.spaces.ArchGroup` and, for PC-DARTS, one
``(num_edges,)`` edge-weight vector -- from its architecture tensors, and the
network (unsimplified, or simplified by ``fxnas.simplify`` with those inputs as
graph placeholders) is called with them.  So one compiled network serves every
strategy, and softmax, Gumbel sampling, ROME's edge sampling, edge
normalisation and FTSO's topology weights all stay differentiable outside it.

Strategies (``STRATEGIES``):

``darts``       first-order DARTS: ``softmax(alpha)``; one arch step on a
                validation batch, one weight step on a training batch.
``darts2``      second-order DARTS (unrolled; :mod:`fxnas.search.unrolled`).
``pc-darts``    PC-DARTS: partial-channel supernet (``partial_k``) with edge
                normalisation (a per-node softmax of ``betas`` scales every edge).
``beta-darts``  DARTS plus the beta regularisation of beta-DARTS, added to the
                validation loss: ``lambda(epoch) * sum_groups mean_e logsumexp(alpha_e)``,
                ``lambda`` rising linearly from ``beta_lambda_min`` to ``beta_lambda``.
``gdas``        straight-through Gumbel one-hot operations, temperature annealed
                linearly from ``tau_max`` to ``tau_min``; the weight step trains
                the sampled path.
``rome``        ROME (our reconstruction): topology parameters per edge separate
                from the operation alphas; every node keeps ``edges_per_node``
                incoming edges sampled without replacement by Gumbel-Top-k
                (straight-through, relaxed top-k gradient); the operation of each
                edge by a Gumbel one-hot; ``samples`` architectures per step, the
                architecture gradient *averaged* over them and the weight
                gradient *summed*.
``ftso``        FTSO: stage 1 (``topology_epochs``) searches only the topology on
                a supernet with a single operator (``ftso_op``) per edge, edges
                weighted by a per-node softmax of topology parameters; the top
                ``edges_per_node`` edges per node are kept; stage 2 searches the
                operators (first-order DARTS) on a supernet that has only the kept
                edges.

The training loop (:mod:`fxnas.search.loop`) owns optimizers and data; a
strategy fills gradients (``arch_backward`` / ``weight_backward``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces.interface import ArchGroup, node_softmax
from .sampling import gumbel_one_hot, node_top_k_mask
from .unrolled import unrolled_arch_gradients

__all__ = [
    "StrategyOptions",
    "Strategy",
    "Darts",
    "DartsSecondOrder",
    "PCDarts",
    "BetaDarts",
    "GDAS",
    "ROME",
    "FTSO",
    "STRATEGIES",
    "make_strategy",
    "beta_regulariser",
]

Batch = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class StrategyOptions:
    """Hyper-parameters of the strategies (defaults: the papers' where we know
    them, otherwise ours, marked so in the CLI help)."""

    epochs: int = 50
    partial_k: int = 4
    beta_lambda: float = 1.0
    beta_lambda_min: float = 0.0
    tau_max: float = 10.0
    tau_min: float = 0.1
    samples: int = 2
    edges_per_node: int = 2
    topology_epochs: Optional[int] = None
    ftso_op: Optional[str] = None
    unrolled_r: float = 1e-2


class Runtime:
    """What a strategy may use during a step (set up by the loop).

    ``network(images, inputs, sync)`` calls the compiled network with the
    architecture inputs in ``input_names`` order; ``sync=False`` bypasses
    DistributedDataParallel (architecture steps reduce their own gradients).
    """

    def __init__(
        self,
        network: nn.Module,
        local_network: nn.Module,
        input_names: Sequence[str],
        criterion: Callable,
        weight_params: Dict[str, torch.Tensor],
        w_optimizer: torch.optim.Optimizer,
        no_sync: Callable = None,
    ):
        self.network = network
        self.local_network = local_network
        self.input_names = list(input_names)
        self.criterion = criterion
        self.weight_params = weight_params
        self.w_optimizer = w_optimizer
        self._no_sync = no_sync

    def ordered(self, inputs: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        return [inputs[name] for name in self.input_names]

    def logits(self, images: torch.Tensor, inputs: Dict[str, torch.Tensor], sync: bool = True) -> torch.Tensor:
        module = self.network if sync else self.local_network
        return module(images, *self.ordered(inputs))

    def no_sync(self):
        """Context manager: accumulate weight gradients without a DDP all-reduce."""
        import contextlib

        return self._no_sync() if self._no_sync is not None else contextlib.nullcontext()


def beta_regulariser(groups: Sequence[ArchGroup]) -> torch.Tensor:
    """beta-DARTS's regulariser: ``sum_groups mean_edges logsumexp(alpha_e)``."""
    return sum(torch.logsumexp(g.alphas, dim=-1).mean() for g in groups)


class Strategy:
    """First-order DARTS; the other strategies override pieces of it."""

    name = "darts"
    #: architectures sampled per step (ROME's K)
    samples = 1

    def __init__(self, options: StrategyOptions):
        self.options = options
        self.epoch = 0
        self.current_stage = 0

    # --- the supernet --------------------------------------------------------

    def model_overrides(self, space: str) -> dict:
        """Constructor arguments this strategy needs on top of the space's."""
        return {}

    def stage(self, epoch: int) -> int:
        """Which stage ``epoch`` belongs to (only FTSO has two)."""
        return 0

    def stage_epochs(self, stage: int) -> Tuple[int, int]:
        """``(first epoch, number of epochs)`` of ``stage``."""
        return 0, self.options.epochs

    def build_model(self, factory: Callable[..., nn.Module], space: str, stage: int) -> nn.Module:
        """Build the supernet for ``stage``; ``factory(**overrides)`` builds the space."""
        return factory(**self.model_overrides(space))

    def setup(self, model: nn.Module) -> None:
        """Create this strategy's own architecture tensors (once)."""

    def enter_stage(self, stage: int, model: nn.Module) -> None:
        """Called before the loop switches to ``stage`` (``model``: the old one)."""
        self.current_stage = stage

    # --- architecture tensors and inputs -----------------------------------------

    def own_arch_tensors(self) -> List[torch.Tensor]:
        """Architecture tensors the strategy owns (not the model's)."""
        return []

    def arch_parameters(self, model: nn.Module) -> List[torch.Tensor]:
        """The tensors the architecture optimizer updates."""
        return list(model.arch_parameters()) + self.own_arch_tensors()

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def group_weights(self, group: ArchGroup) -> torch.Tensor:
        """``(num_edges, num_ops)`` candidate weights of ``group``."""
        return F.softmax(group.alphas, dim=-1)

    def group_edge_weights(self, group: ArchGroup) -> Optional[torch.Tensor]:
        """``(num_edges,)`` edge weights of ``group`` (when it takes any)."""
        if group.edge_weights_arg is None:
            return None
        if group.betas is None:
            return torch.ones(group.num_edges, dtype=group.alphas.dtype, device=group.alphas.device)
        return node_softmax(group.betas, group.node_edges)

    def arch_inputs(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """Forward arguments (by name) for one (sampled) architecture,
        differentiable with respect to the architecture tensors."""
        inputs = {}
        for group in model.arch_groups():
            inputs[group.weights_arg] = self.group_weights(group)
            if group.edge_weights_arg is not None:
                inputs[group.edge_weights_arg] = self.group_edge_weights(group)
        return inputs

    def regulariser(self, model: nn.Module) -> Optional[torch.Tensor]:
        """A term added to the validation loss of the architecture step."""
        return None

    # --- steps --------------------------------------------------------------------

    def arch_backward(self, rt: Runtime, model: nn.Module, train_batch: Batch, valid_batch: Batch):
        """Fill ``.grad`` of :meth:`arch_parameters`; returns ``(loss, logits)``.

        With several samples the gradient is the *mean* over the samples."""
        images, labels = valid_batch
        params = self.arch_parameters(model)
        total, last_logits = 0.0, None
        for _ in range(self.samples):
            logits = rt.logits(images, self.arch_inputs(model), sync=False)
            loss = rt.criterion(logits, labels)
            extra = self.regulariser(model)
            if extra is not None:
                loss = loss + extra
            (loss / self.samples).backward(inputs=params)
            total += loss.detach()
            last_logits = logits.detach()
        return total / self.samples, last_logits

    def weight_backward(self, rt: Runtime, model: nn.Module, train_batch: Batch):
        """Fill ``.grad`` of the network weights; returns ``(loss, logits)``.

        With several samples the gradient is the *sum* over the samples (DDP
        all-reduces once, after the last)."""
        images, labels = train_batch
        params = list(rt.weight_params.values())
        total, last_logits = 0.0, None
        for k in range(self.samples):
            with torch.no_grad():
                inputs = {name: t.detach() for name, t in self.arch_inputs(model).items()}
            context = rt.no_sync() if k < self.samples - 1 else _null()
            with context:
                logits = rt.logits(images, inputs, sync=True)
                loss = rt.criterion(logits, labels)
                loss.backward(inputs=params)
            total += loss.detach()
            last_logits = logits.detach()
        return total / self.samples, last_logits

    # --- the result -----------------------------------------------------------------

    def scores(self, model: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
        """Per group ``(num_edges, num_ops)`` ranking for the genotype; ``None``:
        the model's own rule."""
        return None

    def describe(self, model: nn.Module) -> Dict[str, object]:
        """Architecture weights to log: per group the candidate distribution,
        plus edge weights where there are any."""
        out: Dict[str, object] = {}
        with torch.no_grad():
            for group in model.arch_groups():
                out[f"{group.name}.ops"] = _rounded(F.softmax(group.alphas.detach().float(), dim=-1))
                if group.betas is not None:
                    out[f"{group.name}.edges"] = _rounded(node_softmax(group.betas.detach().float(), group.node_edges))
        return out

    def hyper_state(self) -> Dict[str, float]:
        """Scheduled hyper-parameters to log (temperature, lambda)."""
        return {}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "stage": self.current_stage}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state.get("epoch", 0)
        self.current_stage = state.get("stage", 0)


def _null():
    import contextlib

    return contextlib.nullcontext()


def _rounded(t: torch.Tensor, digits: int = 4):
    return [[round(float(v), digits) for v in row] for row in t.tolist()] if t.dim() == 2 else [
        round(float(v), digits) for v in t.tolist()
    ]


def _without_none(weights: torch.Tensor, op_names: Sequence[str]) -> torch.Tensor:
    """Zero the ``none`` column: once a strategy has chosen an edge, its
    operation is the best *real* candidate (DARTS's derivation rule)."""
    keep = torch.tensor([name != "none" for name in op_names], dtype=weights.dtype, device=weights.device)
    return weights * keep


def _linear(epoch: int, epochs: int, start: float, end: float) -> float:
    if epochs <= 1:
        return start
    return start + (end - start) * epoch / (epochs - 1)


class Darts(Strategy):
    """First-order DARTS."""

    name = "darts"


class DartsSecondOrder(Strategy):
    """Second-order (unrolled) DARTS; see :mod:`fxnas.search.unrolled`."""

    name = "darts2"

    def arch_backward(self, rt: Runtime, model: nn.Module, train_batch: Batch, valid_batch: Batch):
        params = self.arch_parameters(model)
        gradients, loss, logits = unrolled_arch_gradients(
            rt.local_network,
            rt.weight_params,
            params,
            lambda: rt.ordered(self.arch_inputs(model)),
            train_batch,
            valid_batch,
            rt.criterion,
            rt.w_optimizer,
            r=self.options.unrolled_r,
        )
        for tensor, grad in zip(params, gradients):
            tensor.grad = grad if tensor.grad is None else tensor.grad + grad
        return loss, logits


class PCDarts(Strategy):
    """PC-DARTS: the partial-channel supernet with edge normalisation."""

    name = "pc-darts"

    def model_overrides(self, space: str) -> dict:
        if space.startswith("nb201"):
            return {"partial_k": self.options.partial_k, "edge_normalisation": True}
        return {"partial_k": self.options.partial_k}


class BetaDarts(Strategy):
    """beta-DARTS: DARTS plus ``lambda * sum_groups mean_e logsumexp(alpha_e)``."""

    name = "beta-darts"

    def beta_lambda(self) -> float:
        o = self.options
        return _linear(self.epoch, o.epochs, o.beta_lambda_min, o.beta_lambda)

    def regulariser(self, model: nn.Module) -> Optional[torch.Tensor]:
        return self.beta_lambda() * beta_regulariser(model.arch_groups())

    def hyper_state(self) -> Dict[str, float]:
        return {"beta_lambda": self.beta_lambda()}


class GDAS(Strategy):
    """GDAS in its dense straight-through one-hot form."""

    name = "gdas"

    def tau(self) -> float:
        o = self.options
        return _linear(self.epoch, o.epochs, o.tau_max, o.tau_min)

    def group_weights(self, group: ArchGroup) -> torch.Tensor:
        return gumbel_one_hot(group.alphas, self.tau())

    def hyper_state(self) -> Dict[str, float]:
        return {"tau": self.tau()}


class ROME(GDAS):
    """ROME (our reconstruction; see the module docstring)."""

    name = "rome"

    def __init__(self, options: StrategyOptions):
        super().__init__(options)
        self.samples = max(1, int(options.samples))
        self.topology: Dict[str, torch.Tensor] = {}

    def setup(self, model: nn.Module) -> None:
        reference = model.arch_groups()[0].alphas
        for group in model.arch_groups():
            if group.name not in self.topology:
                self.topology[group.name] = (
                    1e-3 * torch.randn(group.num_edges, dtype=reference.dtype, device=reference.device)
                ).requires_grad_(True)

    def own_arch_tensors(self) -> List[torch.Tensor]:
        return [self.topology[name] for name in sorted(self.topology)]

    def edge_mask(self, group: ArchGroup) -> torch.Tensor:
        """Sampled ``(num_edges,)`` straight-through mask: Gumbel-Top-k per node."""
        return node_top_k_mask(self.topology[group.name], group.node_edges, self.options.edges_per_node, self.tau())

    def group_weights(self, group: ArchGroup) -> torch.Tensor:
        ops = gumbel_one_hot(group.alphas, self.tau())
        return ops * self.edge_mask(group)[:, None]

    def group_edge_weights(self, group: ArchGroup) -> Optional[torch.Tensor]:
        if group.edge_weights_arg is None:
            return None
        return torch.ones(group.num_edges, dtype=group.alphas.dtype, device=group.alphas.device)

    def scores(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """Operation softmax on the deterministic top-k edges of every node."""
        out = {}
        with torch.no_grad():
            for group in model.arch_groups():
                mask = node_top_k_mask(self.topology[group.name].detach(), group.node_edges, self.options.edges_per_node)
                ops = _without_none(F.softmax(group.alphas.detach().float(), dim=-1), model.op_names)
                out[group.name] = ops * mask.float()[:, None]
        return out

    def describe(self, model: nn.Module) -> Dict[str, object]:
        out = super().describe(model)
        with torch.no_grad():
            for group in model.arch_groups():
                out[f"{group.name}.topology"] = _rounded(
                    node_softmax(self.topology[group.name].detach().float(), group.node_edges)
                )
        return out

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["topology"] = {name: t.detach().clone() for name, t in self.topology.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        _load_tensors(self.topology, state.get("topology", {}))


def _load_tensors(target: Dict[str, torch.Tensor], source: Dict[str, torch.Tensor]) -> None:
    """Copy ``source`` into ``target`` in place (keeping the tensor objects the
    optimizer holds), or adopt the tensors when ``target`` has none yet."""
    for name, value in source.items():
        if name in target:
            with torch.no_grad():
                target[name].copy_(value)
        else:
            target[name] = value.detach().clone().requires_grad_(True)


class FTSO(Strategy):
    """FTSO: topology first (single operator), then operators on the kept edges."""

    name = "ftso"
    DEFAULT_OPS = {"nb201": "nor_conv_3x3", "darts": "sep_conv_3x3"}

    def __init__(self, options: StrategyOptions):
        super().__init__(options)
        self.topology: Dict[str, torch.Tensor] = {}
        #: group -> kept edge rows, fixed when stage 2 starts
        self.kept: Dict[str, List[int]] = {}
        self.edge_keys: Optional[List[str]] = None

    # stages
    def topology_epochs(self) -> int:
        o = self.options
        if o.topology_epochs is not None:
            return max(1, min(o.epochs, o.topology_epochs))
        return max(1, math.ceil(o.epochs / 2))

    def stage(self, epoch: int) -> int:
        return 0 if epoch < self.topology_epochs() else 1

    def stage_epochs(self, stage: int) -> Tuple[int, int]:
        first = self.topology_epochs()
        return (0, first) if stage == 0 else (first, self.options.epochs - first)

    def single_op(self, space: str) -> str:
        if self.options.ftso_op:
            return self.options.ftso_op
        return self.DEFAULT_OPS["nb201" if space.startswith("nb201") else "darts"]

    def build_model(self, factory, space: str, stage: int) -> nn.Module:
        if stage == 0:
            return factory(ops=[self.single_op(space)])
        if "cell" in self.kept:  # NAS-Bench-201 skeleton: edges by key
            return factory(kept_edges=[self.edge_keys[row] for row in self.kept["cell"]])
        return factory(kept_edges={name: list(rows) for name, rows in self.kept.items()})

    def setup(self, model: nn.Module) -> None:
        if getattr(model, "edge_keys", None) is not None and self.edge_keys is None:
            self.edge_keys = list(model.edge_keys)
        reference = model.arch_groups()[0].alphas
        for group in model.arch_groups():
            if group.name not in self.topology:
                self.topology[group.name] = (
                    1e-3 * torch.randn(group.num_edges, dtype=reference.dtype, device=reference.device)
                ).requires_grad_(True)

    def kept_from_topology(self, model: nn.Module) -> Dict[str, List[int]]:
        kept = {}
        with torch.no_grad():
            for group in model.arch_groups():
                mask = node_top_k_mask(self.topology[group.name].detach(), group.node_edges, self.options.edges_per_node)
                kept[group.name] = [int(i) for i in torch.nonzero(mask).flatten().tolist()]
        return kept

    def enter_stage(self, stage: int, model: nn.Module) -> None:
        if stage == 1 and self.current_stage == 0:
            self.kept = self.kept_from_topology(model)
        super().enter_stage(stage, model)

    # tensors and inputs
    def own_arch_tensors(self) -> List[torch.Tensor]:
        return [self.topology[name] for name in sorted(self.topology)]

    def arch_parameters(self, model: nn.Module) -> List[torch.Tensor]:
        if self.current_stage == 0:
            return self.own_arch_tensors()  # one candidate per edge: only the topology is searched
        return list(model.arch_parameters())

    def group_weights(self, group: ArchGroup) -> torch.Tensor:
        if self.current_stage == 0:
            return node_softmax(self.topology[group.name], group.node_edges)[:, None]
        return super().group_weights(group)

    def scores(self, model: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
        if self.current_stage == 0:
            # topology only: the single operator on the top-k edges of every node
            out = {}
            for group in model.arch_groups():
                mask = node_top_k_mask(self.topology[group.name].detach(), group.node_edges, self.options.edges_per_node)
                out[group.name] = mask.float()[:, None]
            return out
        # the stage-2 model has only the kept edges; choose a real operation on each
        return {
            group.name: _without_none(F.softmax(group.alphas.detach().float(), dim=-1), model.op_names)
            for group in model.arch_groups()
        }

    def describe(self, model: nn.Module) -> Dict[str, object]:
        out = {} if self.current_stage == 0 else super().describe(model)
        with torch.no_grad():
            for group in model.arch_groups():
                if group.name in self.topology:
                    out[f"{group.name}.topology"] = _rounded(
                        node_softmax(self.topology[group.name].detach().float(), group.node_edges)
                    )
        if self.kept:
            out["kept_edges"] = {name: rows for name, rows in self.kept.items()}
        return out

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["topology"] = {name: t.detach().clone() for name, t in self.topology.items()}
        state["kept"] = {name: list(rows) for name, rows in self.kept.items()}
        state["edge_keys"] = self.edge_keys
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        _load_tensors(self.topology, state.get("topology", {}))
        self.kept = {name: list(rows) for name, rows in state.get("kept", {}).items()}
        self.edge_keys = state.get("edge_keys", self.edge_keys)


#: CLI name -> strategy class
STRATEGIES: Dict[str, type] = {
    "darts": Darts,
    "darts2": DartsSecondOrder,
    "pc-darts": PCDarts,
    "beta-darts": BetaDarts,
    "gdas": GDAS,
    "rome": ROME,
    "ftso": FTSO,
}


def make_strategy(name: str, options: StrategyOptions) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None
    return cls(options)
