"""``fxnas inspect``: see what fxnas did to a supernet, and why.

For a built-in space (``--space nb201``) or a user's model
(``--model package.module:factory`` or ``--model path/to/file.py:factory``
with ``--input-shape 2,3,32,32``), traces and simplifies the supernet and
writes into ``--out`` (default ``fxnas-inspect/``):

    summary.txt                   the summary printed on the terminal
    report.txt, report.json       fxnas.explain: edges, candidates, per-pass counts
    diff.txt, diff.json           fxnas.diff: every removed node, what computes it now
    code_before.py, code_after.py the generated forward of the traced and the simplified graph
    edge.{png,svg}                the hierarchical topology of one mixed edge (--edge)
    edge_before_after.{png,svg}   the same edge in the traced and the simplified graph
    cell_before_after.{png,svg}   the module holding that edge (--cell), before and after
                                  (graph_before_after: a small model without such a module)

A large cell (several hundred nodes) is written as SVG only: zoomable, and
its labels stay searchable text.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run", "load_factory", "parse_shape"]

#: Cells with more nodes than this (before or after) are drawn as SVG only.
_BIG_CELL = 400


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--space", help="a built-in space (fxnas.spaces.SPACES), e.g. nb201, darts, pc-darts")
    source.add_argument("--model", metavar="MODULE:FACTORY",
                        help="a callable returning the supernet: package.module:factory or path/to/file.py:factory")
    parser.add_argument("--input-shape", action="append", metavar="SHAPE",
                        help="shape of a forward input, e.g. 2,3,32,32 (repeat for several inputs; "
                             "built-in spaces default to 2,3,32,32)")
    parser.add_argument("--kwargs", default="{}", metavar="JSON",
                        help="keyword arguments for the factory / space builder, as JSON")
    parser.add_argument("--channels", "-C", type=int, help="built-in space: initial channels")
    parser.add_argument("--cells", "-N", type=int,
                        help="built-in space: cells per stage (NB201 spaces) or layers (DARTS spaces)")
    parser.add_argument("--mode", default="exact", help="simplify mode: exact or topo")
    parser.add_argument("--out", "-o", default="fxnas-inspect", help="output directory (created)")
    parser.add_argument("--edge", help="the mixed edge to draw: its name or index (default: the first)")
    parser.add_argument("--cell", help="the module to draw before and after (default: the one holding the "
                                       "edge; 'none' to skip)")
    parser.add_argument("--format", choices=("png", "svg", "both"), default="both", help="image format(s)")
    parser.add_argument("--seed", type=int, default=0)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"2,3,32,32"`` (or ``2x3x32x32``) -> ``(2, 3, 32, 32)``."""
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--input-shape {text!r}: expected comma-separated integers such as 2,3,32,32") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"--input-shape {text!r}: expected positive sizes")
    return shape


def load_factory(spec: str):
    """The callable named by ``package.module:factory`` or ``path/to/file.py:factory``."""
    if ":" not in spec:
        raise ValueError(f"--model {spec!r}: expected MODULE:FACTORY, e.g. mypackage.supernets:build")
    location, _, attribute = spec.rpartition(":")
    if location.endswith(".py") or os.sep in location:
        path = Path(location).resolve()
        if not path.is_file():
            raise ValueError(f"--model {spec!r}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules.setdefault(path.stem, module)
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # like `python -m`: modules in the working directory
        module = importlib.import_module(location)
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"--model {spec!r}: {location} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"--model {spec!r}: {attribute} is not callable")
    return target


def _build(args: argparse.Namespace) -> tuple[Any, str, tuple]:
    import torch

    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        raise ValueError("--kwargs must be a JSON object")
    shapes = [parse_shape(s) for s in (args.input_shape or [])]
    if args.space:
        from fxnas.spaces import SPACES, build

        if args.space not in SPACES:
            raise ValueError(f"--space {args.space!r}: unknown; choose one of {', '.join(sorted(SPACES))}")
        if args.channels is not None:
            kwargs.setdefault("C", args.channels)
        if args.cells is not None:
            kwargs.setdefault("N" if args.space.startswith("nb201") else "layers", args.cells)
        model = build(args.space, **kwargs)
        settings = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        what = f"{args.space} ({type(model).__name__}{', ' + settings if settings else ''})"
        shapes = shapes or [(2, 3, 32, 32)]
    else:
        if not shapes:
            raise ValueError("--model needs --input-shape (e.g. --input-shape 2,3,32,32)")
        model = load_factory(args.model)(**kwargs)
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"--model {args.model}: the factory returned {type(model).__name__}, not an nn.Module")
        what = f"{args.model} ({type(model).__name__})"
    inputs = tuple(torch.randn(shape) for shape in shapes)
    return model, what, inputs


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, ImportError, json.JSONDecodeError) as exc:
        print(f"fxnas inspect: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    import fxnas
    from fxnas.diff import analysed_edges, diff
    from fxnas.draw import _auto_cell, _select_edge, cell_graph, draw

    torch.manual_seed(args.seed)
    model, what, inputs = _build(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    traced = fxnas.trace(model, inputs)
    trace_seconds = time.perf_counter() - start
    simplified = fxnas.simplify(traced, mode=args.mode)
    report = fxnas.explain(simplified)
    changes = diff(traced, simplified, report)

    written: list[str] = []

    def write(name: str, text: str) -> None:
        (out / name).write_text(text if text.endswith("\n") else text + "\n")
        written.append(name)

    write("report.txt", str(report))
    write("report.json", report.to_json())
    write("diff.txt", str(changes))
    write("diff.json", changes.to_json())
    write("code_before.py", traced.code)
    write("code_after.py", simplified.code)

    formats = ("png", "svg") if args.format == "both" else (args.format,)
    edge: Any = args.edge
    if edge is not None and edge.lstrip("-").isdigit():
        edge = int(edge)
    edges = analysed_edges(simplified)
    drawn_edge = None
    if edges:
        selected = _select_edge(edges, edge, "the simplified graph")
        drawn_edge = selected.name
        for fmt in formats:
            draw(simplified, out / f"edge.{fmt}", edge=selected.name)
            draw(simplified, out / f"edge_before_after.{fmt}", edge=selected.name, before=traced)
            written += [f"edge.{fmt}", f"edge_before_after.{fmt}"]
        cell = args.cell if args.cell is not None else _auto_cell(simplified, selected)
        name = "cell_before_after" if cell else "graph_before_after"
        if cell.lower() != "none" and (cell or len(traced.graph.nodes) <= _BIG_CELL):
            size = max(cell_graph(traced, cell).number_of_nodes(), cell_graph(simplified, cell).number_of_nodes())
            for fmt in formats if size <= _BIG_CELL else ("svg",):
                draw(simplified, out / f"{name}.{fmt}", cell=cell, before=traced)
                written.append(f"{name}.{fmt}")
    elif args.edge is not None:
        raise ValueError("--edge: no mixed edges were found")

    summary = _summary(what, inputs, args.mode, traced, trace_seconds, report, changes, drawn_edge)
    summary += f"\nwrote {out}/: " + " ".join(written + ["summary.txt"])
    write("summary.txt", summary)
    print(summary)
    return 0


def _summary(what: str, inputs: tuple, mode: str, traced: Any, trace_seconds: float, report: Any,
             changes: Any, edge: str | None) -> str:
    shapes = ", ".join("x".join(str(s) for s in x.shape) for x in inputs)
    counts = changes.counts()
    groups = sum(len(e.merged) for e in changes.edges)
    lines = [
        f"fxnas inspect: {what}, input {shapes}, mode {mode}",
        f"  traced {report.nodes_before} nodes in {trace_seconds:.2f} s; simplified to {report.nodes_after} "
        f"nodes in {report.seconds:.2f} s",
        f"  {len(report.mixed_edges)} mixed edges, {report.num_candidates_before} -> "
        f"{report.num_candidates_after} candidates",
        "  " + ", ".join([
            f"pruned {sum(len(e.pruned) for e in changes.edges)} zero candidates",
            f"hoisted {len([c for c in changes.hoisted if c.module])} module calls",
            f"merged {groups} groups ({counts['merged']} nodes)",
        ] + ([f"floated {counts['floated']}"] if counts["floated"] else [])
          + [f"rewritten {counts['rewritten']} sum nodes", f"added {counts['added']}"]),
        "  passes: " + ", ".join(
            f"{p.name} {p.nodes_before}->{p.nodes_after}" if p.modified else f"{p.name} (no change)"
            for p in report.passes),
    ]
    if edge is not None:
        lines.append(f"  drawn edge: {edge}")
    return "\n".join(lines)
