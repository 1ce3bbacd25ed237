"""The ``fxnas`` command line: ``fxnas demo | bench | search | inspect``.

Each subcommand lives in its own module, which exposes
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires
them together, so ``fxnas --help`` works even when a subcommand's optional
dependencies are slow to import.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "demo": ("fxnas.demo", "simplify a built-in NAS-Bench-201 supernet and measure it (no data needed)"),
    "bench": ("fxnas.bench", "benchmark speed, memory and FLOPs of supernets against their simplified forms"),
    "search": ("fxnas.search.cli", "run an architecture search (DARTS, PC-DARTS, beta-DARTS, GDAS, ROME, FTSO)"),
    "inspect": ("fxnas.inspect", "write the explain report, drawings, generated code and diff of a simplification"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxnas", description="A graph compiler for differentiable NAS supernets.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if wanted == name:  # import only the subcommand that runs
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0 if not argv else 2
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
