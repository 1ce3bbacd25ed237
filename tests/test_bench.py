"""``fxnas bench``: the quick run produces well-formed results (not that anything is fast).

One ``fxnas bench --quick`` run (tiny networks, every supernet, every
variant, torch.compile skipped as --quick says) is shared by the tests; they
check that the JSON, the Markdown table and the plots exist and carry every
supernet, variant and metric the benchmark promises, and that every exact
variant was checked for equivalence before it was timed.
"""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from fxnas.bench.report import TARGETS
from fxnas.bench.schema import RATIO_KEYS, VARIANT_KEYS, VARIANT_TITLES, VARIANTS
from fxnas.bench.supernets import DEFAULT_SUPERNETS, SUPERNETS, xautodl_available
from fxnas.cli import main

EXPECTED_SUPERNETS = [n for n in DEFAULT_SUPERNETS if xautodl_available() or "xautodl" not in SUPERNETS[n].needs]
EAGER = ["original", "exact", "topo", "floor"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path = out / "custom" / "quick.json"
    start = time.perf_counter()
    code = main(["bench", "--quick", "--threads", "1", "--out", str(out), "--json", str(json_path), "--quiet"])
    seconds = time.perf_counter() - start
    with open(json_path) as f:
        results = json.load(f)
    return {"code": code, "out": out, "json": json_path, "results": results, "seconds": seconds}


def _timing_ok(summary):
    assert summary is not None
    assert summary["repeats"] == len(summary["times_s"]) >= 1
    assert all(t > 0 for t in summary["times_s"])
    assert min(summary["times_s"]) <= summary["median_s"] <= max(summary["times_s"])
    assert summary["spread_s"] >= 0


def test_quick_run_succeeds(quick_run):
    assert quick_run["code"] == 0
    assert quick_run["json"].exists()  # --json is honoured
    for name in ("results.md", "results.png", "scaling.png"):
        assert (quick_run["out"] / name).exists(), name


def test_results_record_the_environment(quick_run):
    results = quick_run["results"]
    env = results["environment"]
    for key in ("device", "device_name", "dtype", "threads", "torch", "git_commit", "python", "date"):
        assert key in env, key
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["threads"] >= 1
    assert results["config"]["quick"] is True
    assert "GPU" in results["gpu_note"] or "gpu" in results["gpu_note"].lower()
    assert results["method"] and all(isinstance(m, str) for m in results["method"])


def test_every_supernet_variant_and_metric_is_present(quick_run):
    supernets = quick_run["results"]["supernets"]
    assert list(supernets) == EXPECTED_SUPERNETS
    for name, entry in supernets.items():
        assert entry["status"] == "ok", (name, entry.get("error"))
        assert list(entry["variants"]) == VARIANTS
        for variant, rec in entry["variants"].items():
            assert set(VARIANT_KEYS) <= set(rec), (name, variant, set(VARIANT_KEYS) - set(rec))
            assert set(RATIO_KEYS) <= set(rec["ratios"]) or rec["status"] != "ok"
        for variant in EAGER:
            rec = entry["variants"][variant]
            assert rec["status"] == "ok", (name, variant, rec["reason"])
            _timing_ok(rec["train_step"])
            _timing_ok(rec["eval_forward"])
            assert rec["saved_bytes"] > 0 and rec["flops"] > 0
            assert rec["peak_memory"]["peak_bytes"] > 0 and rec["peak_memory"]["method"]
            for key in ("train_step", "eval_forward", "saved_bytes", "flops"):
                ratio = rec["ratios"][key]
                assert ratio is not None and ratio > 0 and math.isfinite(ratio), (name, variant, key)
        assert entry["variants"]["original"]["ratios"]["train_step"] == pytest.approx(1.0)
        for variant in ("exact", "topo"):
            assert entry["variants"][variant]["simplify_s"] > 0


def test_exact_variants_were_checked_equivalent(quick_run):
    for name, entry in quick_run["results"]["supernets"].items():
        check = entry["variants"]["exact"]["check"]
        assert check["kind"] == "equivalence" and check["ran"], name
        assert check["ok"], (name, check["failures"])
        assert check["quantities"] > 0 and check["modes"] == ["train", "eval"]


def test_topo_variants_report_fidelity(quick_run):
    for name, entry in quick_run["results"]["supernets"].items():
        fidelity = entry["variants"]["topo"]["fidelity"]
        assert fidelity is not None, name
        for key in ("relative_output_error", "output_cosine", "arch_grad_cosine", "arch_grad_norm_ratio"):
            assert isinstance(fidelity[key], float), (name, key)
        assert -1.0 <= fidelity["arch_grad_cosine"] <= 1.0


def test_compile_variants_are_skipped_with_a_reason_in_quick_mode(quick_run):
    for name, entry in quick_run["results"]["supernets"].items():
        for variant in ("compile", "compile-topo"):
            rec = entry["variants"][variant]
            assert rec["status"] == "skipped" and "quick" in rec["reason"], (name, variant)


def test_scaling_study(quick_run):
    scaling = quick_run["results"]["scaling"]
    sweeps = {p["sweep"] for p in scaling["points"]}
    assert sweeps == {"candidates", "channels"}
    for point in scaling["points"]:
        assert point["status"] == "ok", point.get("error")
        for variant in ("original", "topo"):
            _timing_ok(point[variant]["train_step"])
            assert point[variant]["saved_bytes"] > 0 and point[variant]["flops"] > 0


def test_targets_are_reported(quick_run):
    targets = quick_run["results"]["targets"]
    assert [t["id"] for t in targets] == [t["id"] for t in TARGETS]
    by_id = {t["id"]: t for t in targets}
    assert by_id["xautodl-topo-vs-compile"]["met"] is None  # torch.compile skipped
    if "nb201-xautodl" in EXPECTED_SUPERNETS:
        assert by_id["xautodl-exact-saved"]["value"] > 0 and by_id["xautodl-exact-saved"]["met"] in (True, False)


def test_markdown_table(quick_run):
    text = (quick_run["out"] / "results.md").read_text()
    assert text.startswith("# fxnas benchmark results")
    for heading in ("## Ratios to the original supernet", "## Targets", "## Per supernet", "## Scaling", "## Method"):
        assert heading in text
    for name in EXPECTED_SUPERNETS:
        assert SUPERNETS[name].title in text and f"`{name}`" in text
    for title in VARIANT_TITLES.values():
        assert title in text
    assert "GPU" in text
    # every table row has as many cells as its header
    for block in text.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            widths = {row.count("|") for row in rows}
            assert len(widths) == 1, rows[:3]


def test_plots_are_pngs(quick_run):
    import matplotlib.image

    for name in ("results.png", "scaling.png"):
        path = quick_run["out"] / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 200


def test_report_only_rewrites_table_and_plots(quick_run):
    out = quick_run["out"]
    for name in ("results.md", "results.png", "scaling.png"):
        os.remove(out / name)
    code = main(["bench", "--quick", "--out", str(out), "--json", str(quick_run["json"]), "--report-only"])
    assert code == 0
    assert (out / "results.md").read_text() .startswith("# fxnas benchmark results")
    assert (out / "results.png").exists() and (out / "scaling.png").exists()


def test_a_task_over_its_budget_is_recorded_as_timeout(tmp_path):
    from fxnas.bench.runner import _run_worker

    task = {"task": "measure", "device": "cpu", "threads": 1, "supernet": "darts",
            "config": {"C": 16, "N": 5, "layers": 8, "batch": 64, "resolution": 32, "num_classes": 10, "seed": 0,
                       "ops": None},
            "repeats": 5, "warmup": 1, "eval_repeats": 5, "check_batch": 8, "peak": "off"}
    result = _run_worker(task, timeout_s=1.0, workdir=str(tmp_path))
    assert result["status"] == "timeout" and "budget" in result["error"]


def test_quick_run_time(quick_run):
    """Not a speed claim: a guard that --quick stays CI-sized (generous for a loaded 2-core machine)."""
    assert quick_run["seconds"] < 600
