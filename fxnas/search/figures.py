"""Per-strategy search-step figures: unsimplified vs ``exact`` vs ``topo``.

    python -m fxnas.search.figures --out runs/figures            # NB201, synthetic data
    python -m fxnas.search.figures --C 16 --N 5 --batch-size 64 --steps 10 --out runs/figures-full

Every (strategy, mode) pair runs ``fxnas search`` in its own process (so the
peak RSS of one run does not leak into the next), with one CPU thread unless
``--threads`` says otherwise, and the per-epoch records of ``log.jsonl`` are
collected into a Markdown table (``figures.md``) and ``figures.json``:

* step time: median over the steps of an epoch, the first step of the epoch
  excluded (arch step + weight step; FTSO: topology stage / operator stage);
  with ``--repeat R`` the smallest of the R medians;
* saved: peak bytes held for backward in the architecture step and in the
  weight step (parameters excluded; :mod:`fxnas.search.memory`);
* RSS: the process's peak resident memory minus its resident memory before
  the search started (imports, data), i.e. what the search itself added.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

from .strategies import STRATEGIES

__all__ = ["main", "run_grid", "markdown_table"]

STRATEGY_ORDER = ["darts", "darts2", "pc-darts", "beta-darts", "gdas", "rome", "ftso"]


def _run_one(strategy: str, mode: str, args: argparse.Namespace, out: str) -> Dict[str, object]:
    epochs = 2 if strategy == "ftso" else 1
    command = [
        sys.executable, "-m", "fxnas", "search", "--space", args.space, "--strategy", strategy, "--mode", mode,
        "--epochs", str(epochs), "--steps", str(args.steps), "--synthetic", "--synthetic-size", str(args.synthetic_size),
        "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--C", str(args.C),
        "--N", str(args.N), "--layers", str(args.layers), "--threads", str(args.threads), "--seed", str(args.seed),
        "--no-progress", "--out", out,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    row: Dict[str, object] = {"strategy": strategy, "mode": mode, "wall_s": time.perf_counter() - start}
    if result.returncode != 0:
        row["error"] = (result.stderr.strip().splitlines() or ["failed"])[-1]
        return row
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    final = json.load(open(os.path.join(out, "final.json")))
    row["step_ms"] = [r["step_time_ms"] for r in records]
    row["saved_arch_mb"] = max(r["saved_mb_arch_step"] or 0 for r in records)
    row["saved_weight_mb"] = max(r["saved_mb_weight_step"] or 0 for r in records)
    row["rss_added_mb"] = records[-1]["peak_rss_mb"] - records[-1]["rss_at_start_mb"]
    row["simplify_s"] = sum(final.get("simplify_seconds", {}).values())
    row["finite_loss"] = all(r["train_loss"] == r["train_loss"] for r in records)
    row["arch_str"] = final.get("arch_str")
    return row


def _merge(first: Dict[str, object], again: Dict[str, object]) -> Dict[str, object]:
    """Keep the fastest of repeated runs (the least disturbed by other load)."""
    if "error" in first or "error" in again:
        return first if "error" in again else again
    merged = dict(first)
    merged["step_ms"] = [min(a, b) for a, b in zip(first["step_ms"], again["step_ms"])]
    merged["rss_added_mb"] = min(first["rss_added_mb"], again["rss_added_mb"])
    merged["simplify_s"] = min(first["simplify_s"], again["simplify_s"])
    merged["repeats"] = first.get("repeats", 1) + 1
    return merged


def run_grid(args: argparse.Namespace) -> List[Dict[str, object]]:
    """Every (strategy, mode) ``args.repeat`` times, the modes of a strategy
    interleaved, so that slow drifts of a shared machine hit all modes alike."""
    rows: Dict[tuple, Dict[str, object]] = {}
    for repeat in range(args.repeat):
        for strategy in args.strategies:
            for mode in args.modes:
                out = os.path.join(args.out, f"{strategy}-{mode}")
                row = _run_one(strategy, mode, args, out)
                print(json.dumps({"repeat": repeat, **row}), flush=True)
                key = (strategy, mode)
                rows[key] = row if key not in rows else _merge(rows[key], row)
    return list(rows.values())


def _fmt_ms(values: Optional[List[float]]) -> str:
    return " / ".join(f"{v:.0f}" for v in values) if values else "-"


def markdown_table(rows: List[Dict[str, object]], header: str = "") -> str:
    baseline = {r["strategy"]: r for r in rows if r["mode"] == "none" and "step_ms" in r}
    lines = [header] if header else []
    lines += [
        "| strategy | mode | step ms | vs none | saved MB arch step | saved MB weight step | RSS added MB | simplify s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['strategy']} | {r['mode']} | failed: {r['error']} | | | | | |")
            continue
        base = baseline.get(r["strategy"])
        ratio = "-"
        if base is not None:
            ratio = " / ".join(f"{v / b:.2f}x" for v, b in zip(r["step_ms"], base["step_ms"]))
        note = "" if r["finite_loss"] else " (NaN loss)"
        lines.append(
            f"| {r['strategy']} | {r['mode']}{note} | {_fmt_ms(r['step_ms'])} | {ratio} | {r['saved_arch_mb']:.1f} | "
            f"{r['saved_weight_mb']:.1f} | {r['rss_added_mb']:.0f} | {r['simplify_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="runs/figures")
    parser.add_argument("--space", default="nb201")
    parser.add_argument("--strategies", nargs="+", default=STRATEGY_ORDER, choices=sorted(STRATEGIES))
    parser.add_argument("--modes", nargs="+", default=["none", "exact", "topo"], choices=["none", "exact", "topo"])
    parser.add_argument("--C", type=int, default=8)
    parser.add_argument("--N", type=int, default=2)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--synthetic-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per (strategy, mode); the fastest is kept")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = run_grid(args)
    import torch

    header = (
        f"{args.space}, C={args.C}, N={args.N}, batch {args.batch_size}, {args.image_size}x{args.image_size} synthetic, "
        f"{args.steps} steps/epoch, {args.threads} CPU thread(s), best of {args.repeat}, torch {torch.__version__}, float32\n"
    )
    table = markdown_table(rows, header)
    with open(os.path.join(args.out, "figures.json"), "w") as handle:
        json.dump({"config": vars(args), "rows": rows}, handle, indent=2)
    with open(os.path.join(args.out, "figures.md"), "w") as handle:
        handle.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
