"""What every pass returns, and small helpers passes share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

__all__ = ["PassResult"]


@dataclass
class PassResult:
    """The result of one graph-rewriting pass.

    ``modified`` is True exactly when the graph changed; ``stats`` says what
    the pass did (counts, and the names of what it pruned, hoisted or merged),
    in plain Python values so reports can be saved and compared.
    """

    graph_module: fx.GraphModule
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
