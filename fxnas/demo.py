"""``fxnas demo``: simplify a built-in NAS-Bench-201 supernet and measure it.

Builds the NAS-Bench-201 search supernet (C=16, N=5, the five NB201
candidates) written in :mod:`fxnas.spaces`, simplifies it, prints the
explain report, checks the simplified module against the original on a
synthetic batch, and compares bytes saved for backward, FLOPs and step time.
No data, no download.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", default="nb201", help="built-in space (see fxnas.spaces.SPACES)")
    parser.add_argument("--mode", default="exact", help="simplify mode: exact or topo")
    parser.add_argument("--channels", "-C", type=int, default=16)
    parser.add_argument("--cells", "-N", type=int, default=5, help="cells per stage (NB201 spaces)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (interleaved)")
    parser.add_argument("--seed", type=int, default=0)


def _build(args: argparse.Namespace) -> torch.nn.Module:
    from fxnas.spaces import build

    kwargs = {"C": args.channels}
    if args.space.startswith("nb201"):
        kwargs["N"] = args.cells
    return build(args.space, **kwargs)


def _mb(n: int) -> str:
    return f"{n / 2**20:8.1f} MB"


def run(args: argparse.Namespace) -> int:
    import fxnas
    from fxnas.measure import interleaved_times, loss_of, saved_tensor_bytes, training_step_flops

    torch.manual_seed(args.seed)
    model = _build(args)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    print(f"fxnas demo: {type(model).__name__} ({args.space}, C={args.channels}), batch {args.batch}, "
          f"{args.resolution}x{args.resolution}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    reference = copy.deepcopy(model) if args.mode == "topo" else model  # topo ties floated parameters in place
    start = time.perf_counter()
    simplified = fxnas.simplify(model, (x[:2],), mode=args.mode)
    print(f"simplify: {time.perf_counter() - start:.2f} s\n")
    print(fxnas.explain(simplified))

    # Equivalence (exact) or fidelity (topo) on this batch, before any timing.
    reference.eval(), simplified.eval()
    with torch.no_grad():
        expected, got = reference(x), simplified(x)
    error = (expected - got).abs().max().item() / max(expected.abs().max().item(), 1e-12)
    print(f"\nmax relative output difference (eval, float32): {error:.2e}")
    reference.train(), simplified.train()
    if args.mode == "topo":
        print(fxnas.fidelity(reference, simplified, x))

    variants = (("original", reference), ("simplified", simplified))
    saved = {name: saved_tensor_bytes(m, (x,)) for name, m in variants}
    flops = {name: training_step_flops(m, (x,)) for name, m in variants}

    def step(module: torch.nn.Module):
        def once() -> None:
            loss_of(module(x)).backward()
            module.zero_grad(set_to_none=True)
        return once

    times = interleaved_times({"original": step(reference), "simplified": step(simplified)}, repeats=args.repeats)
    print("\n                     original      simplified   ratio")
    print(f"saved for backward {_mb(saved['original'])}   {_mb(saved['simplified'])}   "
          f"{saved['simplified'] / saved['original']:.2f}")
    print(f"GFLOPs (fwd+bwd)   {flops['original'] / 1e9:8.2f}      {flops['simplified'] / 1e9:8.2f}      "
          f"{flops['simplified'] / flops['original']:.2f}")
    print(f"step time (median) {times['original'].median:8.3f} s    {times['simplified'].median:8.3f} s    "
          f"{times['simplified'].median / times['original'].median:.2f}   ({args.repeats} interleaved runs)")
    return 0
