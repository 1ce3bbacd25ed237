"""The command line: `fxnas` subcommands wire up, and the demo runs end to end (tiny sizes)."""

from __future__ import annotations

import subprocess
import sys

from fxnas.cli import main


def test_help_lists_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("demo", "bench", "search", "inspect"))


def test_demo_runs_and_reports(capsys):
    assert main(["demo", "--channels", "4", "--cells", "1", "--batch", "4", "--resolution", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "mixed edges" in out and "prune_zero" in out and "saved for backward" in out
    assert "max relative output difference" in out


def test_demo_in_topo_mode_reports_fidelity(capsys):
    assert main(["demo", "--mode", "topo", "--channels", "4", "--cells", "1", "--batch", "4", "--resolution", "16",
                 "--repeats", "1"]) == 0
    assert "architecture-gradient cosine" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "fxnas", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout
