"""Run the fxnas benchmark: the same as ``fxnas bench`` (see ``fxnas bench --help``).

    python benchmarks/run.py                 # full CPU run into benchmarks/results/cpu
    python benchmarks/run.py --quick         # a small run, about a minute
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fxnas.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
