"""Turning task results into the benchmark's JSON, Markdown table, plots and target verdicts."""

from __future__ import annotations

import textwrap

import math
from typing import Any, Dict, List, Optional

from .schema import RATIO_KEYS, SCHEMA, VARIANT_TITLES, VARIANTS, empty_variant

__all__ = ["assemble_supernet", "compute_targets", "markdown", "plot", "plot_scaling", "TARGETS"]

MB = 2.0 ** 20

#: the issue's targets: (supernet, description, metric, variant, threshold, comparison, device)
TARGETS: List[Dict[str, Any]] = [
    dict(id="xautodl-topo-time", supernet="nb201-xautodl", metric="train_step", variant="topo", max=0.50,
         text="NB201 DARTS-V1: topo step time ≤ 0.50× original"),
    dict(id="xautodl-topo-vs-compile", supernet="nb201-xautodl", metric="train_step_vs_compile", variant="topo",
         max=1.0, text="NB201 DARTS-V1: topo step time below torch.compile(original)"),
    dict(id="xautodl-exact-saved", supernet="nb201-xautodl", metric="saved_bytes", variant="exact", max=0.70,
         text="NB201 DARTS-V1: exact saved bytes ≤ 0.70× original"),
    dict(id="xautodl-topo-saved", supernet="nb201-xautodl", metric="saved_bytes", variant="topo", max=0.40,
         text="NB201 DARTS-V1: topo saved bytes ≤ 0.40× original"),
    dict(id="xautodl-simplify-exact", supernet="nb201-xautodl", metric="simplify_s", variant="exact", max=2.0,
         text="NB201 DARTS-V1: simplify (exact) under 2 s"),
    dict(id="xautodl-simplify-topo", supernet="nb201-xautodl", metric="simplify_s", variant="topo", max=2.0,
         text="NB201 DARTS-V1: simplify (topo) under 2 s"),
    dict(id="darts-topo-time", supernet="darts", metric="train_step", variant="topo", max=0.40,
         text="DARTS 8-cell: topo step time ≤ 0.40× original"),
    dict(id="darts-topo-saved", supernet="darts", metric="saved_bytes", variant="topo", max=0.30,
         text="DARTS 8-cell: topo saved bytes ≤ 0.30× original"),
]

GPU_TARGET_NOTE = ("GPU targets (the same ratios on GPU; DARTS search at batch 64 within ROME's 2.3 GB): "
                   "not measured, no GPU machine was available for this run")


# --------------------------------------------------------------------------- #
# assembling one supernet's record from its task results
# --------------------------------------------------------------------------- #


def _median(summary: Optional[Dict[str, Any]]) -> Optional[float]:
    return None if not summary else summary.get("median_s")


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0 or (isinstance(a, float) and math.isnan(a)):
        return None
    return a / b


def _step_memory(peak: Optional[Dict[str, Any]]) -> Optional[float]:
    if not peak:
        return None
    value = peak.get("step_increase_bytes")
    return value if value is not None else peak.get("peak_bytes")


def _peak(peak: Optional[Dict[str, Any]]) -> Optional[float]:
    return None if not peak else peak.get("peak_bytes")


def assemble_supernet(
    name: str,
    title: str,
    description: str,
    measure: Optional[Dict[str, Any]],
    peaks: Dict[str, Optional[Dict[str, Any]]],
    compiles: Dict[str, Dict[str, Any]],
    variants: List[str],
) -> Dict[str, Any]:
    """The record of one supernet: every variant with every key, and ratios to the eager original.

    ``measure`` is the ``measure`` task's output, ``peaks`` the ``peak`` tasks'
    outputs by variant (None: measured in-process or not at all), ``compiles``
    ``{"compile" | "compile-topo": record}`` already shaped as variant records
    (or skipped / timeout records).
    """
    record: Dict[str, Any] = {"title": title, "description": description, "status": "ok", "variants": {}}
    if measure is None or measure.get("status") != "ok":
        record["status"] = measure.get("status", "error") if measure else "pending"
        record["error"] = (measure or {}).get("error")
        eager = {}
    else:
        eager = measure["records"]
        record["graph"] = measure.get("graph")
        record["parameters"] = measure.get("parameters")
    for variant in VARIANTS:
        if variant not in variants:
            rec = empty_variant("skipped", "not requested (--variants)")
        elif variant in ("compile", "compile-topo"):
            rec = dict(compiles.get(variant) or empty_variant("skipped", "not run"))
        elif variant in eager:
            rec = dict(eager[variant])
            peak_task = peaks.get(variant)
            if peak_task is not None:
                if peak_task.get("status") == "ok":
                    rec["peak_memory"] = peak_task["peak_memory"]
                else:
                    rec["peak_memory"] = None
                    rec["peak_memory_error"] = peak_task.get("error") or peak_task.get("status")
        else:
            rec = empty_variant(record["status"] if record["status"] != "ok" else "error",
                                record.get("error") or "the measuring task did not finish")
        for key in empty_variant():
            rec.setdefault(key, None)
        rec["ratios"] = {}
        record["variants"][variant] = rec

    original = record["variants"]["original"]
    for variant, rec in record["variants"].items():
        if rec["status"] not in ("ok",):
            continue
        if variant in ("compile", "compile-topo"):
            # time and peak memory against the eager original measured in the same (compile) process
            eager_in_process = rec.get("in_process_eager") or {}
            base_train = _median((eager_in_process.get("train_step") or {}).get("original"))
            base_eval = _median((eager_in_process.get("eval_forward") or {}).get("original"))
            base_peak = _step_memory((eager_in_process.get("peak_memory") or {}).get("original"))
            rec["ratios"] = {
                "train_step": _ratio(_median(rec.get("train_step")), base_train),
                "eval_forward": _ratio(_median(rec.get("eval_forward")), base_eval),
                "saved_bytes": _ratio(rec.get("saved_bytes"), original.get("saved_bytes")),
                "peak_memory": _ratio(_step_memory(rec.get("peak_memory")), base_peak),
                "flops": None,
                "peak_memory_process": _ratio(_peak(rec.get("peak_memory")),
                                              _peak((eager_in_process.get("peak_memory") or {}).get("original"))),
            }
            topo_in_process = (eager_in_process.get("train_step") or {}).get("topo")
            rec["ratios"]["topo_train_step_same_process"] = _ratio(_median(topo_in_process), base_train)
        else:
            rec["ratios"] = {
                "train_step": _ratio(_median(rec.get("train_step")), _median(original.get("train_step"))),
                "eval_forward": _ratio(_median(rec.get("eval_forward")), _median(original.get("eval_forward"))),
                "saved_bytes": _ratio(rec.get("saved_bytes"), original.get("saved_bytes")),
                "peak_memory": _ratio(_step_memory(rec.get("peak_memory")), _step_memory(original.get("peak_memory"))),
                "flops": _ratio(rec.get("flops"), original.get("flops")),
                "peak_memory_process": _ratio(_peak(rec.get("peak_memory")), _peak(original.get("peak_memory"))),
            }
        for key in RATIO_KEYS:
            rec["ratios"].setdefault(key, None)
    return record


# --------------------------------------------------------------------------- #
# targets
# --------------------------------------------------------------------------- #


def _target_value(supernets: Dict[str, Any], target: Dict[str, Any]) -> Optional[float]:
    entry = supernets.get(target["supernet"])
    if not entry:
        return None
    rec = entry["variants"].get(target["variant"]) or {}
    if rec.get("status") != "ok":
        return None
    metric = target["metric"]
    if metric == "simplify_s":
        return rec.get("simplify_s")
    if metric == "train_step_vs_compile":
        compiled = entry["variants"].get("compile") or {}
        if compiled.get("status") != "ok":
            return None
        ratios = compiled.get("ratios") or {}
        # topo and torch.compile(original), both timed in the compile process against the same eager original
        return _ratio(ratios.get("topo_train_step_same_process"), ratios.get("train_step"))
    return (rec.get("ratios") or {}).get(metric)


def compute_targets(supernets: Dict[str, Any], device: str) -> List[Dict[str, Any]]:
    verdicts = []
    for target in TARGETS:
        value = _target_value(supernets, target)
        verdict = {k: target[k] for k in ("id", "text", "supernet", "variant", "metric", "max")}
        verdict["device"] = "cpu"
        verdict["value"] = value
        if device != "cpu":
            verdict["met"] = None
            verdict["note"] = "CPU target; this run is on " + device
        elif value is None:
            verdict["met"] = None
            verdict["note"] = "not measured in this run"
        else:
            verdict["met"] = bool(value < target["max"]) if target["metric"] == "train_step_vs_compile" \
                else bool(value <= target["max"]) if target["metric"] != "simplify_s" else bool(value < target["max"])
        verdicts.append(verdict)
    return verdicts


# --------------------------------------------------------------------------- #
# Markdown
# --------------------------------------------------------------------------- #


def _fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def _fmt_ratio(r: Optional[float]) -> str:
    return "–" if r is None else f"{r:.2f}×"


def _fmt_mb(n: Optional[float]) -> str:
    return "–" if n is None else f"{n / MB:.0f} MB" if n >= 10 * MB else f"{n / MB:.1f} MB"


def _fmt_timing(summary: Optional[Dict[str, Any]]) -> str:
    if not summary:
        return "–"
    return f"{_fmt_time(summary['median_s'])} ± {_fmt_time(summary['spread_s'] / 2)} (n={summary['repeats']})"


def _check_text(rec: Dict[str, Any]) -> str:
    check, fid = rec.get("check") or {}, rec.get("fidelity")
    parts = []
    if check.get("kind") == "equivalence":
        text = ("equivalent" if check["ok"] else "**NOT equivalent**") + \
            f" ({check.get('verdict_dtype', '')} max abs err {check['max_abs_error']:.1e}"
        if check.get("float32"):
            text += f"; float32 {check['float32']['max_abs_error']:.1e}"
        parts.append(text + ")")
    elif check.get("kind") == "compiled_vs_eager":
        parts.append(("matches eager" if check["ok"] else "**differs from eager**")
                     + f" (rel err {max(check['output_max_rel_error'], check['param_grad_max_rel_error']):.1e})")
    elif check.get("kind") == "reference":
        parts.append("reference")
    if fid:
        parts.append(f"fidelity: out err {fid['relative_output_error']:.2f}, "
                     f"arch-grad cos {fid['arch_grad_cosine']:.2f}")
    return "; ".join(parts) or "–"


def _status_text(rec: Dict[str, Any]) -> str:
    reason = (rec.get("reason") or "").replace("|", "/")
    return f"{rec['status']}: {reason}" if reason else rec["status"]


def markdown(results: Dict[str, Any]) -> str:
    env, config = results["environment"], results["config"]
    lines = [f"# fxnas benchmark results ({env['device'].upper()}{', quick' if config.get('quick') else ''})", ""]
    lines.append(
        f"Measured on {env['device_name']} ({env['cpu_count']} cores visible), {env['threads']} intra-op threads, "
        f"torch {env['torch']}, {env['dtype']}, git commit `{(env.get('git_commit') or 'unknown')[:12]}`"
        f"{' (uncommitted changes)' if env.get('git_dirty') else ''}, {env['date']}.")
    lines.append("")
    lines.append(f"**GPU:** {results.get('gpu_note')}")
    lines.append("")
    sizes = config["sizes"]
    lines.append(
        f"Sizes: C={sizes['C']}, NB201 N={sizes['N']} cells per stage, DARTS {sizes['layers']} cells, "
        f"batch {sizes['batch']}, {sizes['resolution']}×{sizes['resolution']}. "
        f"Training step = forward + cross-entropy + backward + SGD step; {config['repeats']} timed steps per variant "
        f"(interleaved, {config['warmup']} warm-up), eval forward {config['eval_repeats']} runs. "
        f"Times are medians ± half the spread (max − min). Ratios are variant / eager original.")
    lines.append("")
    lines.append("## Ratios to the original supernet")
    lines.append("")
    lines.append("| supernet | variant | step time | eval fwd | saved bytes | peak step mem | FLOPs |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, entry in results["supernets"].items():
        for variant, rec in entry["variants"].items():
            if variant == "original":
                continue
            r = rec.get("ratios") or {}
            if rec["status"] != "ok":
                cells = [rec["status"]] + [""] * 4
            else:
                cells = [_fmt_ratio(r.get(k)) for k in RATIO_KEYS]
            lines.append(f"| {entry['title']} | {VARIANT_TITLES[variant]} | " + " | ".join(cells) + " |")
    lines.append("")

    lines.append("## Targets")
    lines.append("")
    lines.append("| target | measured | met |")
    lines.append("|---|---|---|")
    for t in results.get("targets", []):
        value = t["value"]
        if value is None:
            shown = "–"
        elif t["metric"] == "simplify_s":
            shown = f"{value:.2f} s"
        else:
            shown = f"{value:.2f}×"
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['text']} | {shown} | {met} |")
    lines.append(f"| {GPU_TARGET_NOTE} | – | not measured |")
    lines.append("")

    lines.append("## Per supernet")
    for name, entry in results["supernets"].items():
        lines.append("")
        lines.append(f"### {entry['title']} (`{name}`)")
        lines.append("")
        lines.append(entry["description"] + ".")
        graph = (entry.get("graph") or {}).get("exact")
        if graph:
            lines.append(f" {graph['mixed_edges']} mixed edges; graph nodes {graph['nodes_before']} → "
                         f"{graph['nodes_after']} (exact), {entry['graph']['topo']['nodes_after']} (topo).")
        if entry.get("status") != "ok":
            lines.append(f" **{entry['status']}**: {entry.get('error')}")
        lines.append("")
        lines.append("| variant | train step | eval forward | saved for backward | peak step memory | "
                     "GFLOPs fwd+bwd | simplify | compile | check |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for variant, rec in entry["variants"].items():
            title = VARIANT_TITLES[variant]
            if rec["status"] != "ok":
                lines.append(f"| {title} | {_status_text(rec)} | | | | | | "
                             f"{_fmt_time(rec.get('compile_s')) if rec.get('compile_s') else ''} | |")
                continue
            r = rec["ratios"]
            peak = rec.get("peak_memory") or {}

            def with_ratio(text: str, key: str) -> str:
                ratio = r.get(key)
                return text if (variant == "original" or ratio is None or text == "–") else f"{text} ({ratio:.2f}×)"

            flops = rec.get("flops")
            lines.append(" | ".join([
                f"| {title}",
                with_ratio(_fmt_timing(rec.get("train_step")), "train_step"),
                with_ratio(_fmt_timing(rec.get("eval_forward")), "eval_forward"),
                with_ratio(_fmt_mb(rec.get("saved_bytes")), "saved_bytes"),
                with_ratio(_fmt_mb(_step_memory(peak)), "peak_memory")
                + (f" [process {_fmt_mb(peak.get('peak_bytes'))}"
                   + (f", {r['peak_memory_process']:.2f}×" if variant != "original" and r.get("peak_memory_process")
                      else "") + "]" if peak.get("peak_bytes") else ""),
                with_ratio("–" if flops is None else f"{flops / 1e9:.2f}", "flops"),
                _fmt_time(rec.get("simplify_s")),
                _fmt_time(rec.get("compile_s")),
                _check_text(rec) + " |",
            ]))
    scaling = results.get("scaling")
    if scaling and scaling.get("points"):
        lines += ["", "## Scaling: original vs topo", "",
                  f"{scaling['description']}", "",
                  "| sweep | candidates | C | step original | step topo | × | saved original | saved topo | × | "
                  "GFLOPs original | GFLOPs topo | × |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in scaling["points"]:
            if p.get("status") != "ok":
                lines.append(f"| {p['sweep']} | {p['candidates']} | {p['C']} | {p.get('status')}: "
                             f"{(p.get('error') or '')[:80]} | | | | | | | | |")
                continue
            o, t = p["original"], p["topo"]
            lines.append(
                f"| {p['sweep']} | {p['candidates']} | {p['C']} | {_fmt_time(o['train_step']['median_s'])} | "
                f"{_fmt_time(t['train_step']['median_s'])} | "
                f"{_fmt_ratio(_ratio(t['train_step']['median_s'], o['train_step']['median_s']))} | "
                f"{_fmt_mb(o['saved_bytes'])} | {_fmt_mb(t['saved_bytes'])} | "
                f"{_fmt_ratio(_ratio(t['saved_bytes'], o['saved_bytes']))} | {o['flops'] / 1e9:.2f} | "
                f"{t['flops'] / 1e9:.2f} | {_fmt_ratio(_ratio(t['flops'], o['flops']))} |")
    lines += ["", "## Method", ""] + [f"- {m}" for m in results.get("method", [])]
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# plots
# --------------------------------------------------------------------------- #


def plot(results: Dict[str, Any], path: str) -> None:
    """Grouped bars: step time, eval forward, saved bytes and peak step memory, as ratios to the original."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    supernets = results["supernets"]
    names = list(supernets)
    variants = [v for v in VARIANTS if v != "original"]
    panels = [("train_step", "training step time"), ("saved_bytes", "bytes saved for backward"),
              ("peak_memory", "peak step memory"), ("eval_forward", "eval forward time")]
    colors = dict(zip(variants, ["#4c72b0", "#dd8452", "#8172b3", "#c44e52", "#55a868"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 1.9 * len(names) + 2), 3.1 * len(panels)))
    width = 0.8 / len(variants)
    for ax, (key, label) in zip(axes, panels):
        for i, variant in enumerate(variants):
            xs, ys = [], []
            for j, name in enumerate(names):
                rec = supernets[name]["variants"].get(variant) or {}
                value = (rec.get("ratios") or {}).get(key) if rec.get("status") == "ok" else None
                if value is not None:
                    xs.append(j + (i - (len(variants) - 1) / 2) * width)
                    ys.append(value)
            ax.bar(xs, ys, width, label=VARIANT_TITLES[variant], color=colors[variant])
            for x, y in zip(xs, ys):
                ax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel(f"{label}\n(× original)")
        ticks = []
        for name in names:
            original = supernets[name]["variants"]["original"]
            if key in ("train_step", "eval_forward"):
                base = _fmt_time(_median(original.get(key)))
            elif key == "saved_bytes":
                base = _fmt_mb(original.get("saved_bytes"))
            else:
                base = _fmt_mb(_step_memory(original.get("peak_memory")))
            ticks.append(f"{supernets[name]['title']}\n(original {base})")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(ticks, fontsize=7)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ymax = max([1.0] + [p.get_height() for p in ax.patches])
        ax.set_ylim(0, ymax * 1.25)
    axes[0].legend(fontsize=7, ncol=len(variants), loc="upper center", bbox_to_anchor=(0.5, 1.32))
    env = results["environment"]
    fig.suptitle(f"fxnas bench — {env['device_name']}, {env['threads']} threads, torch {env['torch']}, "
                 f"batch {results['config']['sizes']['batch']}", fontsize=9, y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(results: Dict[str, Any], path: str) -> bool:
    """Step time and saved bytes of original vs topo as candidates and channels grow."""
    scaling = results.get("scaling") or {}
    points = [p for p in scaling.get("points", []) if p.get("status") == "ok"]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for row, (sweep, xkey, xlabel) in enumerate([("candidates", "candidates", "candidates per edge"),
                                                  ("channels", "C", "channels C (first stage)")]):
        pts = sorted((p for p in points if p["sweep"] == sweep), key=lambda p: p[xkey])
        if not pts:
            continue
        xs = [p[xkey] for p in pts]
        for col, (metric, ylabel, scale) in enumerate([("train_step", "training step time (s)", None),
                                                       ("saved_bytes", "saved for backward (MB)", MB)]):
            ax = axes[row][col]
            for variant, style in (("original", "o-"), ("topo", "s-")):
                if metric == "train_step":
                    ys = [p[variant]["train_step"]["median_s"] for p in pts]
                else:
                    ys = [p[variant]["saved_bytes"] / scale for p in pts]
                ax.plot(xs, ys, style, label=VARIANT_TITLES[variant])
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_xticks(xs)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(textwrap.fill(scaling.get("description", ""), 110), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def schema_name() -> str:
    return SCHEMA
