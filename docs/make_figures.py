"""Draw the figures of the README: one mixed edge of NAS-Bench-201 and of DARTS.

    python docs/make_figures.py            # writes docs/*.png and docs/*.svg

Built-in spaces only (no data, no download); a few seconds on a CPU. The
drawings do not depend on the channel count or the number of cells, so small
supernets are used; the candidates and their labels are those of the
full-size ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

import fxnas
from fxnas.draw import draw
from fxnas.spaces import build

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)

    # NAS-Bench-201: the first edge of the first cell, before and after (5 -> 3 candidates).
    nb201 = fxnas.trace(build("nb201", C=16, N=1), (x,))
    nb201_simplified = fxnas.simplify(nb201)
    for suffix in ("png", "svg"):
        draw(nb201_simplified, HERE / f"nb201_edge.{suffix}", edge="cells.0.edges.1<-0", before=nb201)

    # DARTS: the first edge of a normal cell (8 candidates) after simplification, and before/after as SVG.
    darts = fxnas.trace(build("darts", C=16, layers=3), (x,))
    darts_simplified = fxnas.simplify(darts)
    edge = fxnas.explain(darts_simplified).simplified_edges[0].name
    for suffix in ("png", "svg"):
        draw(darts_simplified, HERE / f"darts_edge.{suffix}", edge=edge)
    draw(darts_simplified, HERE / "darts_edge_before_after.svg", edge=edge, before=darts)

    for path in sorted(HERE.glob("*_edge*.*")):
        print(f"{path.relative_to(HERE.parent)}  {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
