"""The supernets ``fxnas bench`` measures, and their single-path floors.

Each entry builds the supernet from a :class:`BenchConfig` (channels, cells,
layers) and, with ``floor=True``, the *single-path floor*: the same network
with one candidate per edge (the candidate named by ``floor_op``), i.e. what
a step would cost if the supernet were one ordinary network. Every model is
built under ``torch.manual_seed(config.seed)`` so that separate processes
build identical weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["BenchConfig", "Supernet", "SUPERNETS", "DEFAULT_SUPERNETS", "build_model", "xautodl_available"]

#: the NAS-Bench-201 candidates, as xautodl names them
NB201_SPACE: List[str] = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


@dataclass
class BenchConfig:
    """Sizes of the benchmarked networks and of the measured batch."""

    C: int = 16                 # channels of the first stage
    N: int = 5                  # search cells per stage (NAS-Bench-201 skeleton)
    layers: int = 8             # cells of the DARTS / PC-DARTS search network
    batch: int = 64
    resolution: int = 32
    num_classes: int = 10
    seed: int = 0
    ops: Optional[List[str]] = None  # override the candidate list (scaling study)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Supernet:
    """One benchmarked supernet: how to build it, and which candidate its floor keeps."""

    name: str
    title: str
    description: str
    floor_op: str
    build: Callable[[BenchConfig, Optional[Sequence[str]]], nn.Module]
    needs: Sequence[str] = field(default_factory=tuple)  # importable modules it needs


def _builtin(space: str, skeleton: str) -> Callable[[BenchConfig, Optional[Sequence[str]]], nn.Module]:
    def build(config: BenchConfig, ops: Optional[Sequence[str]]) -> nn.Module:
        from fxnas.spaces import build as build_space

        kwargs = {"C": config.C, "num_classes": config.num_classes}
        if skeleton == "nb201":
            kwargs["N"] = config.N
        else:
            kwargs["layers"] = config.layers
        if ops is not None:
            kwargs["ops"] = list(ops)
        return build_space(space, **kwargs)

    return build


def _xautodl_darts_v1(config: BenchConfig, ops: Optional[Sequence[str]]) -> nn.Module:
    from xautodl.config_utils import dict2config
    from xautodl.models import get_cell_based_tiny_net

    space = list(ops) if ops is not None else NB201_SPACE
    return get_cell_based_tiny_net(dict2config(dict(
        name="DARTS-V1", C=config.C, N=config.N, max_nodes=4, num_classes=config.num_classes, space=space,
        affine=False, track_running_stats=False), None))


SUPERNETS: Dict[str, Supernet] = {
    entry.name: entry
    for entry in [
        Supernet("nb201-xautodl", "NB201 DARTS-V1 (xautodl)",
                 "the real xautodl 1.0.0 DARTS-V1 supernet, NAS-Bench-201 space, unchanged",
                 "nor_conv_3x3", _xautodl_darts_v1, needs=("xautodl",)),
        Supernet("nb201", "NB201 (built-in)",
                 "fxnas.spaces NAS-Bench-201 supernet, 5 candidates per edge, softmax weights",
                 "nor_conv_3x3", _builtin("nb201", "nb201")),
        Supernet("nb201-darts", "NB201 skeleton, DARTS ops",
                 "NAS-Bench-201 skeleton with xautodl's 'darts' candidate list (8 per edge)",
                 "dua_sepc_3x3", _builtin("nb201-darts", "nb201")),
        Supernet("darts", "DARTS 8-cell",
                 "the DARTS search network (8 cells, 14 edges x 8 candidates per cell)",
                 "sep_conv_3x3", _builtin("darts", "darts")),
        Supernet("pc-darts", "PC-DARTS",
                 "the PC-DARTS search network (partial channels K=4, edge normalisation)",
                 "sep_conv_3x3", _builtin("pc-darts", "darts")),
        Supernet("nb201-gumbel", "NB201 one-hot (GDAS form)",
                 "NAS-Bench-201 supernet with straight-through Gumbel one-hot weights (dense single-path form)",
                 "nor_conv_3x3", _builtin("nb201-gumbel", "nb201")),
        Supernet("darts-gumbel", "DARTS one-hot",
                 "the DARTS search network with straight-through Gumbel one-hot weights",
                 "sep_conv_3x3", _builtin("darts-gumbel", "darts")),
    ]
}

#: what ``fxnas bench`` measures unless told otherwise
DEFAULT_SUPERNETS: List[str] = ["nb201-xautodl", "nb201", "nb201-darts", "darts", "pc-darts", "nb201-gumbel"]


def xautodl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("xautodl") is not None


def build_model(name: str, config: BenchConfig, floor: bool = False) -> nn.Module:
    """Build supernet ``name`` (or its single-path floor) with ``config.seed``; train mode, float32."""
    entry = SUPERNETS[name]
    ops = [entry.floor_op] if floor else config.ops
    torch.manual_seed(config.seed)
    model = entry.build(config, ops)
    return model.train()
