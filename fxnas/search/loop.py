"""The bilevel search loop.

Per step (DARTS's order): an architecture step on a batch of the second half
of the training data (the strategy fills the gradients of the architecture
tensors; Adam updates them), then a weight step on a batch of the first half
(SGD with momentum, gradient clipping, cosine learning rate).  The network the
steps run is the supernet itself (``mode="none"``) or ``fxnas.simplify`` of it
(``"exact"`` / ``"topo"``), traced with the architecture weights as inputs, so
the same compiled network serves every strategy.

Every epoch appends one JSON record to ``OUT/log.jsonl`` (losses, accuracies,
step time, memory, scheduled hyper-parameters, architecture weights, genotype)
and writes ``OUT/checkpoint.pt``; ``resume=True`` continues from it, bit for
bit (model, network, architecture tensors, optimizers, scheduler, strategy
state and every RNG are restored; the data order of an epoch depends only on
the seed and the epoch).  The result goes to ``OUT/final.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import spaces
from ..spaces.interface import node_softmax
from .data import load_search_data
from .distributed import (
    DistInfo,
    all_reduce_mean,
    broadcast_tensors,
    init_distributed,
    used_parameter_names,
    wrap_ddp,
)
from .memory import SavedTensorMeter, cuda_peak_mb, peak_rss_mb
from .strategies import STRATEGIES, Runtime, Strategy, StrategyOptions, make_strategy

__all__ = ["SearchConfig", "Search", "SearchError", "MODES", "SEARCH_SPACES", "run_search", "CHECKPOINT_NAME"]

#: ``--mode`` values: the unsimplified supernet, or fxnas.simplify's modes.
MODES = ("none", "exact", "topo")
#: ``--space`` values (names of :data:`fxnas.spaces.SPACES`).
SEARCH_SPACES = ("nb201", "nb201-darts", "nb201-large", "darts")
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1

#: Config fields that must agree between a checkpoint and the resuming run.
_RESUME_KEYS = (
    "space", "strategy", "mode", "C", "N", "layers", "seed", "batch_size", "image_size",
    "synthetic", "synthetic_size", "dataset", "train_portion", "epochs",
)


class SearchError(RuntimeError):
    """A search cannot start (bad configuration, missing simplify mode, checkpoint mismatch)."""


@dataclass
class SearchConfig:
    """Everything a search run needs; the CLI flags map one to one."""

    space: str = "nb201"
    strategy: str = "darts"
    mode: str = "exact"
    epochs: int = 50
    steps: Optional[int] = None
    out: str = "search-out"
    # data
    data: Optional[str] = None
    dataset: str = "cifar10"
    synthetic: bool = False
    synthetic_size: int = 256
    image_size: int = 32
    num_classes: Optional[int] = None
    train_portion: float = 0.5
    workers: int = 0
    # supernet
    C: int = 16
    N: int = 5
    layers: int = 8
    # optimisation
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_weight_decay: Optional[float] = None
    warmup_epochs: int = 0
    # strategies
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
    # run
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    resume: bool = False
    stop_after: Optional[int] = None
    benchmark_file: Optional[str] = None
    benchmark_hp: str = "200"
    progress: bool = True
    measure_memory: bool = True

    def strategy_options(self) -> StrategyOptions:
        return StrategyOptions(
            epochs=self.epochs,
            partial_k=self.partial_k,
            beta_lambda=self.beta_lambda,
            beta_lambda_min=self.beta_lambda_min,
            tau_max=self.tau_max,
            tau_min=self.tau_min,
            samples=self.samples,
            edges_per_node=self.edges_per_node,
            topology_epochs=self.topology_epochs,
            ftso_op=self.ftso_op,
            unrolled_r=self.unrolled_r,
        )

    def validate(self) -> None:
        if self.space not in SEARCH_SPACES:
            raise SearchError(f"unknown space {self.space!r}; choose one of {SEARCH_SPACES}")
        if self.strategy not in STRATEGIES:
            raise SearchError(f"unknown strategy {self.strategy!r}; choose one of {sorted(STRATEGIES)}")
        if self.mode not in MODES:
            raise SearchError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        if self.epochs < 1:
            raise SearchError("epochs must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise SearchError("steps must be >= 1")
        if self.samples < 1 or self.edges_per_node < 1:
            raise SearchError("--samples and --edges-per-node must be >= 1")
        if self.ftso_op is not None and self.ftso_op not in spaces.OPS:
            raise SearchError(f"unknown --ftso-op {self.ftso_op!r}; candidates: {sorted(spaces.OPS)}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def example_arch_inputs(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Architecture inputs of the right shapes (the softmax of the alphas);
    used only to trace, so they consume no randomness."""
    inputs = {}
    with torch.no_grad():
        for group in model.arch_groups():
            inputs[group.weights_arg] = F.softmax(group.alphas.detach(), dim=-1)
            if group.edge_weights_arg is not None:
                if group.betas is not None:
                    inputs[group.edge_weights_arg] = node_softmax(group.betas.detach(), group.node_edges)
                else:
                    inputs[group.edge_weights_arg] = torch.ones_like(group.alphas[:, 0]).detach()
    return inputs


def simplify_network(model: nn.Module, example_inputs: tuple, mode: str) -> nn.Module:
    """``fxnas.simplify(model, example_inputs, mode)``, with a clear error when
    the mode is not available."""
    try:
        from ..pipeline import simplify
    except ImportError as error:  # pragma: no cover - depends on the build
        raise SearchError(f"--mode {mode}: fxnas.simplify is not available ({error}); use --mode none") from error
    try:
        from ..pipeline import MODES as SIMPLIFY_MODES
    except ImportError:  # pragma: no cover
        SIMPLIFY_MODES = None
    if SIMPLIFY_MODES is not None and mode not in SIMPLIFY_MODES:
        raise SearchError(
            f"--mode {mode}: this build of fxnas.simplify has modes {sorted(SIMPLIFY_MODES)}; use one of them or --mode none"
        )
    return simplify(model, example_inputs, mode=mode)


def describe_genotype(model: nn.Module, strategy: Strategy) -> Dict[str, Any]:
    scores = strategy.scores(model)
    result: Dict[str, Any] = {"genotype": repr(model.genotype(scores))}
    if hasattr(model, "arch_str"):
        result["arch_str"] = model.arch_str(scores)
    return result


class _Averages:
    def __init__(self):
        self.sums: Dict[str, float] = {}
        self.counts: Dict[str, float] = {}

    def add(self, name: str, value: float, count: int = 1) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value * count
        self.counts[name] = self.counts.get(name, 0) + count

    def mean(self, name: str) -> Optional[float]:
        return self.sums[name] / self.counts[name] if self.counts.get(name) else None

    def reduce(self, info: DistInfo, device: torch.device) -> None:
        if not info.enabled:
            return
        names = sorted(self.sums)
        packed = torch.tensor([[self.sums[n], self.counts[n]] for n in names], dtype=torch.float64, device=device)
        all_reduce_mean([packed], info)  # (on the device: NCCL reduces CUDA tensors only)
        for n, (s, c) in zip(names, packed.tolist()):
            self.sums[n], self.counts[n] = s, c


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=-1) == labels).float().mean()) * 100.0


class Search:
    """One search run; :meth:`run` returns the final record (``final.json``)."""

    def __init__(self, config: SearchConfig, dist_info: Optional[DistInfo] = None):
        config.validate()
        self.config = config
        if config.device == "auto":
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            kind = torch.device(config.device).type
        self.dist = dist_info if dist_info is not None else init_distributed(kind)
        if kind == "cuda":
            index = self.dist.local_rank if config.device in ("auto", "cuda") else torch.device(config.device).index
            self.device = torch.device("cuda", index or 0)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device(config.device if config.device != "auto" else "cpu")
        self.out = config.out
        self.history: List[Dict[str, Any]] = []
        self.stage: Optional[int] = None
        self.simplify_seconds: Dict[str, float] = {}

    # --- logging --------------------------------------------------------------------

    def _print(self, text: str) -> None:
        if self.dist.is_main:
            from tqdm import tqdm

            tqdm.write(text)
            with open(os.path.join(self.out, "search.log"), "a") as handle:
                handle.write(text + "\n")

    # --- building ------------------------------------------------------------------

    def _space_factory(self, num_classes: int):
        c = self.config

        def factory(**overrides) -> nn.Module:
            if c.space == "darts":
                name = "pc-darts" if "partial_k" in overrides else "darts"
                return spaces.build(name, C=c.C, layers=c.layers, num_classes=num_classes, **overrides)
            return spaces.build(c.space, C=c.C, N=c.N, num_classes=num_classes, **overrides)

        return factory

    def _build_stage(self, stage: int) -> None:
        """Build the supernet of ``stage``, compile it, and make the optimizers."""
        c = self.config
        model = self.strategy.build_model(self._space_factory(self.data.num_classes), c.space, stage)
        model = model.to(self.device)
        self.strategy.setup(model)
        self.model = model
        self.input_names = list(model.arch_input_names())

        # compile
        example = example_arch_inputs(model)
        images = torch.zeros(c.batch_size, 3, c.image_size, c.image_size, device=self.device)
        example_args = (images, *[example[n] for n in self.input_names])
        if c.mode == "none":
            network: nn.Module = model
        else:
            start = time.perf_counter()
            network = simplify_network(model, example_args, c.mode)
            self.simplify_seconds[f"stage{stage}"] = time.perf_counter() - start
        self.local_network = network

        # parameters: the network weights are what the network uses, minus the architecture
        arch_params = self.strategy.arch_parameters(model)
        excluded = {id(t) for t in list(model.arch_parameters()) + self.strategy.own_arch_tensors()}
        used = used_parameter_names(network, example_args)
        weight_params = {
            name: p for name, p in network.named_parameters() if id(p) not in excluded and name in used
        }
        self.arch_params = arch_params
        self.weight_params = weight_params

        first, stage_epochs = self.strategy.stage_epochs(stage)
        self.w_optimizer = torch.optim.SGD(
            list(weight_params.values()), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.w_optimizer, T_max=max(1, stage_epochs), eta_min=c.lr_min
        )
        arch_decay = c.arch_weight_decay
        if arch_decay is None:
            arch_decay = 0.0 if c.strategy == "beta-darts" else 1e-3
        self.arch_optimizer = torch.optim.Adam(arch_params, lr=c.arch_lr, betas=(0.5, 0.999), weight_decay=arch_decay)

        # data parallel
        no_sync = None
        if self.dist.enabled:
            broadcast_tensors(list(model.arch_parameters()) + self.strategy.own_arch_tensors(), self.dist)
            ignore = [name for name, _ in network.named_parameters() if name not in weight_params]
            wrapped = wrap_ddp(network, ignore, self.dist, self.device)
            network, no_sync = wrapped, wrapped.no_sync
        self.network = network
        self.runtime = Runtime(
            network, self.local_network, self.input_names, F.cross_entropy, weight_params, self.w_optimizer, no_sync
        )
        self.stage = stage
        self.state_tensors = [p for p in self.local_network.parameters()] + [b for b in self.local_network.buffers()]

        if self.dist.is_main:
            n_weights = sum(p.numel() for p in weight_params.values())
            n_arch = sum(t.numel() for t in arch_params)
            line = (
                f"[stage {stage}] {type(model).__name__} ({c.space}), strategy {c.strategy}, mode {c.mode}: "
                f"{n_weights} weights, {n_arch} architecture parameters"
            )
            if c.mode != "none":
                line += f", simplified in {self.simplify_seconds[f'stage{stage}']:.2f} s"
            self._print(line)

    # --- checkpoints ---------------------------------------------------------------

    def _checkpoint_path(self) -> str:
        return os.path.join(self.out, CHECKPOINT_NAME)

    def _state(self, next_epoch: int) -> Dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "config": dataclasses.asdict(self.config),
            "epoch": next_epoch,
            "stage": self.stage,
            "model": self.model.state_dict(),
            "network": None if self.local_network is self.model else self.local_network.state_dict(),
            "model_arch": [t.detach().clone() for t in self.model.arch_parameters()],
            "strategy": self.strategy.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.device),
            "history": self.history,
            "simplify_seconds": self.simplify_seconds,
        }

    def save_checkpoint(self, next_epoch: int) -> None:
        if not self.dist.is_main:
            return
        path = self._checkpoint_path()
        tmp = path + ".tmp"
        torch.save(self._state(next_epoch), tmp)
        os.replace(tmp, path)

    def _read_checkpoint(self) -> Optional[Dict[str, Any]]:
        path = self._checkpoint_path()
        if not os.path.exists(path):
            return None
        # our own file (it holds RNG states: weights_only=False); on the CPU, where RNG states live
        state = torch.load(path, map_location="cpu", weights_only=False)
        saved = state.get("config", {})
        mismatched = [k for k in _RESUME_KEYS if k in saved and saved[k] != getattr(self.config, k)]
        if mismatched:
            details = ", ".join(f"{k}: checkpoint {saved[k]!r} vs now {getattr(self.config, k)!r}" for k in mismatched)
            raise SearchError(f"cannot resume from {path}: the configuration differs ({details})")
        return state

    def _load_state(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if state.get("network") is not None and self.local_network is not self.model:
            self.local_network.load_state_dict(state["network"])
        with torch.no_grad():
            for tensor, value in zip(self.model.arch_parameters(), state["model_arch"]):
                tensor.copy_(value)
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state.get("history", []))
        self.simplify_seconds = {**state.get("simplify_seconds", {}), **self.simplify_seconds}
        set_rng_state(state["rng"], self.device)

    # --- the loop ---------------------------------------------------------------------

    def _train_epoch(self, epoch: int) -> Dict[str, Any]:
        from tqdm import tqdm

        c = self.config
        data = self.data
        data.set_epoch(epoch)
        steps = data.steps_per_epoch(c.steps)
        averages = _Averages()
        step_times: List[float] = []
        meters: Dict[str, SavedTensorMeter] = {}
        search_arch = epoch >= c.warmup_epochs
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{c.epochs}",
            disable=not (c.progress and self.dist.is_main),
            leave=True,
            dynamic_ncols=True,
        )
        cuda = self.device.type == "cuda"
        for step, ((x_train, y_train), (x_valid, y_valid)) in enumerate(zip(data.train_loader, data.valid_loader)):
            if step >= steps:
                break
            x_train, y_train = x_train.to(self.device, non_blocking=True), y_train.to(self.device, non_blocking=True)
            x_valid, y_valid = x_valid.to(self.device, non_blocking=True), y_valid.to(self.device, non_blocking=True)
            measure = c.measure_memory and step == 0
            if cuda:
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()

            if search_arch:
                self.arch_optimizer.zero_grad(set_to_none=True)
                meter = meters.setdefault("arch", SavedTensorMeter(self.state_tensors))
                with meter.measure() if measure else _null():
                    arch_loss, arch_logits = self.strategy.arch_backward(
                        self.runtime, self.model, (x_train, y_train), (x_valid, y_valid)
                    )
                for tensor in self.arch_params:
                    if tensor.grad is None:
                        tensor.grad = torch.zeros_like(tensor)
                all_reduce_mean([t.grad for t in self.arch_params], self.dist)
                self.arch_optimizer.step()

            self.w_optimizer.zero_grad(set_to_none=True)
            meter = meters.setdefault("weight", SavedTensorMeter(self.state_tensors))
            with meter.measure() if measure else _null():
                loss, logits = self.strategy.weight_backward(self.runtime, self.model, (x_train, y_train))
            if c.grad_clip and c.grad_clip > 0:
                nn.utils.clip_grad_norm_(list(self.weight_params.values()), c.grad_clip)
            self.w_optimizer.step()
            if cuda:
                torch.cuda.synchronize(self.device)
            step_times.append(time.perf_counter() - start)

            n = int(y_train.shape[0])
            if not math.isfinite(float(loss)) or (search_arch and not math.isfinite(float(arch_loss))):
                hint = " (--mode topo approximates the supernet; compare with --mode exact)" if c.mode == "topo" else ""
                raise SearchError(
                    f"the loss is not finite at epoch {epoch + 1}, step {step + 1} "
                    f"(weights {float(loss)}, architecture {float(arch_loss) if search_arch else '-'}){hint}"
                )
            averages.add("train_loss", float(loss), n)
            averages.add("train_acc", _accuracy(logits, y_train), n)
            postfix = {"loss": f"{averages.mean('train_loss'):.3f}", "acc": f"{averages.mean('train_acc'):.1f}"}
            if search_arch:
                averages.add("valid_loss", float(arch_loss), n)
                averages.add("valid_acc", _accuracy(arch_logits, y_valid), n)
                postfix.update(vloss=f"{averages.mean('valid_loss'):.3f}", vacc=f"{averages.mean('valid_acc'):.1f}")
            postfix["ms/step"] = f"{1000 * step_times[-1]:.0f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
        bar.close()
        averages.reduce(self.dist, self.device)

        timed = step_times[1:] if len(step_times) > 1 else step_times
        record: Dict[str, Any] = {
            "epoch": epoch + 1,
            "stage": self.stage,
            "steps": len(step_times),
            "lr": self.w_optimizer.param_groups[0]["lr"],
            "train_loss": averages.mean("train_loss"),
            "train_acc": averages.mean("train_acc"),
            "valid_loss": averages.mean("valid_loss"),
            "valid_acc": averages.mean("valid_acc"),
            "step_time_ms": 1000 * statistics.median(timed) if timed else None,
            "step_time_ms_mean": 1000 * statistics.fmean(timed) if timed else None,
            "saved_mb_arch_step": meters["arch"].activation_mb if "arch" in meters and c.measure_memory else None,
            "saved_mb_weight_step": meters["weight"].activation_mb if "weight" in meters and c.measure_memory else None,
            "peak_rss_mb": peak_rss_mb(),
            "rss_at_start_mb": self.rss_at_start_mb,
            "cuda_peak_mb": cuda_peak_mb(self.device),
        }
        record.update(self.strategy.hyper_state())
        record.update(describe_genotype(self.model, self.strategy))
        record["arch_weights"] = self.strategy.describe(self.model)
        return record

    def _log_epoch(self, record: Dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(os.path.join(self.out, "log.jsonl"), "a") as handle:
            handle.write(json.dumps(record) + "\n")

        def fmt(value, spec):
            return "-" if value is None else format(value, spec)

        saved = [v for v in (record["saved_mb_arch_step"], record["saved_mb_weight_step"]) if v is not None]
        line = (
            f"epoch {record['epoch']}/{self.config.epochs}: loss {fmt(record['train_loss'], '.4f')} "
            f"acc {fmt(record['train_acc'], '.2f')} | valid loss {fmt(record['valid_loss'], '.4f')} "
            f"acc {fmt(record['valid_acc'], '.2f')} | {fmt(record['step_time_ms'], '.1f')} ms/step, "
            f"saved {fmt(max(saved) if saved else None, '.1f')} MB, peak RSS {record['peak_rss_mb']:.0f} MB"
        )
        for key in ("tau", "beta_lambda"):
            if key in record:
                line += f", {key} {record[key]:.3f}"
        line += f"\n  genotype: {record['genotype']}"
        if "arch_str" in record:
            line += f"\n  arch: {record['arch_str']}"
        self._print(line)

    def _finish(self, last_epoch: int) -> Dict[str, Any]:
        c = self.config
        result: Dict[str, Any] = {
            "space": c.space,
            "strategy": c.strategy,
            "mode": c.mode,
            "epochs_done": last_epoch,
            "epochs": c.epochs,
            "world_size": self.dist.world_size,
            "simplify_seconds": self.simplify_seconds,
        }
        result.update(describe_genotype(self.model, self.strategy))
        result["arch_weights"] = self.strategy.describe(self.model)
        if self.history:
            last = self.history[-1]
            for key in ("step_time_ms", "step_time_ms_mean", "saved_mb_arch_step", "saved_mb_weight_step",
                        "peak_rss_mb", "rss_at_start_mb", "cuda_peak_mb",
                        "train_acc", "valid_acc"):
                result[key] = last.get(key)
        # the same architecture tensors on every process?
        checksum = torch.tensor(
            [float(sum(t.detach().double().sum() for t in self.strategy.arch_parameters(self.model)))],
            dtype=torch.float64,
            device=self.device,
        )
        if self.dist.enabled:
            import torch.distributed as dist

            gathered = [torch.zeros_like(checksum) for _ in range(self.dist.world_size)]
            dist.all_gather(gathered, checksum)
            result["arch_checksums"] = [float(t) for t in gathered]
        else:
            result["arch_checksums"] = [float(checksum)]
        if c.benchmark_file and self.dist.is_main:
            if "arch_str" not in result:
                warnings.warn("--benchmark-file is a NAS-Bench-201 file; this space has no NB201 arch string")
            else:
                from .lookup import format_lookup, load_benchmark, lookup_arch

                api = load_benchmark(c.benchmark_file)
                result["benchmark"] = lookup_arch(api, result["arch_str"], hp=c.benchmark_hp)
        if self.dist.is_main:
            with open(os.path.join(self.out, "final.json"), "w") as handle:
                json.dump(result, handle, indent=2)
            text = f"final genotype: {result['genotype']}"
            if "arch_str" in result:
                text += f"\nNAS-Bench-201 arch: {result['arch_str']}"
            if "benchmark" in result:
                from .lookup import format_lookup

                text += "\n" + format_lookup(result["benchmark"])
            self._print(text)
        return result

    def run(self) -> Dict[str, Any]:
        c = self.config
        os.makedirs(self.out, exist_ok=True)
        if c.threads:
            torch.set_num_threads(c.threads)
        self.rss_at_start_mb = peak_rss_mb()
        if self.dist.is_main:
            with open(os.path.join(self.out, "config.json"), "w") as handle:
                json.dump(dataclasses.asdict(c), handle, indent=2)
        seed_everything(c.seed)
        self.data = load_search_data(
            c.dataset,
            c.data,
            synthetic=c.synthetic,
            synthetic_size=c.synthetic_size,
            image_size=c.image_size,
            num_classes=c.num_classes,
            batch_size=c.batch_size,
            train_portion=c.train_portion,
            seed=c.seed,
            workers=c.workers,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.strategy = make_strategy(c.strategy, c.strategy_options())

        state = self._read_checkpoint() if c.resume else None
        start_epoch = 0
        if state is not None:
            self.strategy.load_state_dict(state["strategy"])
            self._build_stage(state["stage"])
            self._load_state(state)
            start_epoch = state["epoch"]
            self._print(f"resumed from {self._checkpoint_path()} at epoch {start_epoch}/{c.epochs}")
        else:
            if c.resume:
                self._print(f"no checkpoint in {self.out}; starting a new search")
            if self.dist.is_main:  # a fresh run: start fresh logs
                for name in ("log.jsonl", "search.log", "final.json"):
                    path = os.path.join(self.out, name)
                    if os.path.exists(path):
                        os.remove(path)
            self._build_stage(self.strategy.stage(0))

        epochs_this_run = 0
        epoch = start_epoch
        for epoch in range(start_epoch, c.epochs):
            if c.stop_after is not None and epochs_this_run >= c.stop_after:
                self._print(f"stopping after {epochs_this_run} epoch(s) (--stop-after); continue with --resume")
                return {"stopped_at_epoch": epoch}
            wanted = self.strategy.stage(epoch)
            if wanted != self.stage:
                self.strategy.enter_stage(wanted, self.model)
                self._build_stage(wanted)
            self.strategy.begin_epoch(epoch)
            record = self._train_epoch(epoch)
            self.scheduler.step()
            self.history.append(record)
            self._log_epoch(record)
            self.save_checkpoint(epoch + 1)
            epochs_this_run += 1
        return self._finish(len(self.history))


def _null():
    import contextlib

    return contextlib.nullcontext()


def run_search(config: SearchConfig) -> Dict[str, Any]:
    """Run a search; returns the final record (also written to ``OUT/final.json``)."""
    return Search(config).run()
