"""Differentiable-NAS supernets written for fxnas (inputs of the graph compiler).

Builders:

* :class:`NB201Supernet` -- the NAS-Bench-201 skeleton (xautodl DARTS-V1 /
  GDAS), five ways to spell an edge's weighted sum (``sum_style``), softmax or
  straight-through Gumbel one-hot weights.
* :class:`DartsSupernet` -- the DARTS search network (alphas as Parameters or
  as plain tensors).
* :class:`PCDartsSupernet` -- PC-DARTS (partial channels, edge normalisation).

Every ``forward`` returns logits only and is traceable (no ``.item()``, no
data-dependent Python control flow, no Python ``random``).  :func:`build`
creates them by name.

For search strategies, every supernet also takes its architecture weights as
optional forward arguments (``model.arch_input_names()``) and describes its
architecture tensors with ``model.arch_groups()`` (:class:`ArchGroup`), so the
weights can be computed outside a traced / simplified network.
"""

from __future__ import annotations

from typing import Dict

import torch.nn as nn

from .arch_weights import WEIGHTINGS, gumbel_straight_through, softmax_weights
from .darts import DartsCell, DartsMixedOp, DartsSupernet, DroppedEdge, Genotype, cell_node_edges, parse_genotype
from .interface import ArchGroup, node_softmax
from .nb201 import SUM_STYLES, NB201SearchCell, NB201Supernet, ResNetReductionBlock, edge_key, genotype_to_arch_str
from .operations import (
    DARTS_OPS,
    NB201_DARTS_OPS,
    NB201_LARGE_OPS,
    NB201_OPS,
    OPS,
    DualSepConv,
    FactorizedReduce,
    Identity,
    Pooling,
    ReLUConvBN,
    ReLUSepConvBN,
    Zero,
    make_op,
)
from .pcdarts import PartialMixedOp, PCDartsCell, PCDartsSupernet, channel_shuffle, edge_normalisation_weights

__all__ = [
    "build",
    "SPACES",
    "NB201Supernet",
    "NB201SearchCell",
    "ResNetReductionBlock",
    "DartsSupernet",
    "DartsCell",
    "DartsMixedOp",
    "PCDartsSupernet",
    "PCDartsCell",
    "PartialMixedOp",
    "Genotype",
    "parse_genotype",
    "DroppedEdge",
    "cell_node_edges",
    "ArchGroup",
    "node_softmax",
    "genotype_to_arch_str",
    "channel_shuffle",
    "edge_normalisation_weights",
    "edge_key",
    "SUM_STYLES",
    "WEIGHTINGS",
    "softmax_weights",
    "gumbel_straight_through",
    "OPS",
    "make_op",
    "NB201_OPS",
    "NB201_DARTS_OPS",
    "NB201_LARGE_OPS",
    "DARTS_OPS",
    "Zero",
    "Identity",
    "FactorizedReduce",
    "ReLUConvBN",
    "ReLUSepConvBN",
    "DualSepConv",
    "Pooling",
]


#: name -> (builder, default keyword arguments); ``build`` overrides the
#: defaults with the caller's keywords.
SPACES: Dict[str, tuple] = {
    "nb201": (NB201Supernet, {"ops": NB201_OPS}),
    "nb201-darts": (NB201Supernet, {"ops": NB201_DARTS_OPS}),
    "nb201-large": (NB201Supernet, {"ops": NB201_LARGE_OPS}),
    "nb201-gumbel": (NB201Supernet, {"ops": NB201_OPS, "weights": "gumbel"}),
    "darts": (DartsSupernet, {}),
    "darts-gumbel": (DartsSupernet, {"weights": "gumbel"}),
    "pc-darts": (PCDartsSupernet, {}),
}


def build(name: str, **kwargs) -> nn.Module:
    """Build the supernet called ``name`` (one of :data:`SPACES`).

    Keyword arguments go to the constructor and override the space's
    defaults, e.g. ``build("nb201", C=8, N=1, sum_style="stack")`` or
    ``build("darts", C=8, layers=5, alphas="tensor")``.
    """
    try:
        builder, defaults = SPACES[name]
    except KeyError:
        raise KeyError(f"unknown search space {name!r}; known: {sorted(SPACES)}") from None
    return builder(**{**defaults, **kwargs})
