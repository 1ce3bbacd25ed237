"""Inspecting a rewrite: fxnas.draw, fxnas.diff and `fxnas inspect`.

Drawings must be valid images whose labels are module types (searchable in
the SVG text), laid out without overlapping boxes even for the 8-candidate
DARTS edge; the diff and the explain report must agree with the graphs they
describe; the CLI must run end to end on a built-in space and on a user's
model given by import path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from itertools import combinations
from pathlib import Path

import pytest
import torch
from PIL import Image

import fxnas
from fxnas.analysis import MixedEdge, find_mixed_edges
from fxnas.cli import main as cli_main
from fxnas.diff import diff, is_runtime_module
from fxnas.draw import _measure, _Panel, _spread, draw, edge_graph
from fxnas.report import operation_counts
from fxnas.spaces import build

REPO = Path(__file__).resolve().parents[1]
X = torch.randn(2, 3, 16, 16)


def _simplified(model: torch.nn.Module, x: torch.Tensor = X):
    torch.manual_seed(0)
    gm = fxnas.trace(model, (x,))
    return gm, fxnas.simplify(gm)


@pytest.fixture(scope="module")
def nb201():
    torch.manual_seed(0)
    return _simplified(build("nb201", C=4, N=1))


@pytest.fixture(scope="module")
def darts():
    torch.manual_seed(0)
    return _simplified(build("darts", C=4, layers=1))


@pytest.fixture(scope="module")
def pcdarts():
    torch.manual_seed(0)
    return _simplified(build("pc-darts", C=4, layers=1))


@pytest.fixture(scope="module")
def xautodl_darts_v1():
    pytest.importorskip("xautodl")
    from xautodl.config_utils import dict2config
    from xautodl.models import get_cell_based_tiny_net

    torch.manual_seed(0)
    config = dict(name="DARTS-V1", C=16, N=5, max_nodes=4, num_classes=10,
                  space=["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"],
                  affine=False, track_running_stats=False)
    return _simplified(get_cell_based_tiny_net(dict2config(config, None)), torch.randn(2, 3, 32, 32))


# ------------------------------------------------------------------ helpers


def assert_png(path: Path, min_width: int = 300, min_height: int = 200) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_width and image.size[1] >= min_height, image.size
        assert len(image.getcolors(1 << 20) or range(100)) > 5  # not a blank canvas
        return image.size


def svg_text(path: Path) -> str:
    root = ET.parse(path).getroot()  # also checks that the SVG is well-formed XML
    assert root.tag.endswith("svg")
    return "\n".join("".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text"))


def _boxes(panel: _Panel) -> dict:
    return {n: (x - panel.sizes[n][0] / 2, y - panel.sizes[n][1] / 2, x + panel.sizes[n][0] / 2,
                y + panel.sizes[n][1] / 2) for n, (x, y) in panel.positions.items()}


# -------------------------------------------------------------------- draw


def test_edge_drawing_is_a_valid_png_and_svg_with_readable_labels(nb201, tmp_path):
    gm, sgm = nb201
    png = draw(sgm, tmp_path / "edge.png")
    assert png == tmp_path / "edge.png"
    assert_png(png)
    text = svg_text(draw(sgm, tmp_path / "edge.svg"))
    for label in ("edge input", "ReLU", "Conv2d(1x1)", "Conv2d(3x3)", "softmax(alphas)[0][2]",
                  "mixed edge cells.0.edges.1<-0"):
        assert label in text, label
    edge = find_mixed_edges(sgm)[0]
    for name, attrs in edge.topology(sgm).nodes(data=True):
        if attrs["kind"] not in ("candidate", "input"):
            assert attrs["label"].split("(")[0] in text  # the module type of every node is drawn
        assert name not in text  # fx node names are not labels


def test_merged_operators_are_drawn_distinctly(nb201, tmp_path):
    _, sgm = nb201
    graph = edge_graph(sgm, 0)
    merged = [n for n in graph if n in {m.name for m in sgm.graph.nodes if m.op == "call_module"
                                        and is_runtime_module(sgm.get_submodule(m.target))}]
    if not merged:
        pytest.skip("the pipeline merged no candidates of this edge")
    assert all(graph.nodes[n]["category"] == "merged" for n in merged)
    text = svg_text(draw(sgm, tmp_path / "edge.svg"))
    module = type(sgm.get_submodule(next(m.target for m in sgm.graph.nodes if m.name == merged[0]))).__name__
    assert module in text and "merged operator (fxnas runtime module)" in text


def test_unknown_node_kinds_get_a_colour_and_a_legend_entry(nb201, tmp_path, monkeypatch):
    _, sgm = nb201
    topology = MixedEdge.topology

    def with_a_new_kind(self, root=None):
        graph = topology(self, root)
        shared = next(n for n, a in graph.nodes(data=True) if a["kind"] == "shared")
        graph.nodes[shared]["kind"] = "floated"
        return graph

    monkeypatch.setattr(MixedEdge, "topology", with_a_new_kind)
    text = svg_text(draw(sgm, tmp_path / "edge.svg"))
    assert "floated" in text and "ReLU" in text


def test_eight_candidate_darts_edge_stays_legible(darts, nb201, tmp_path):
    gm, sgm = darts
    graph = edge_graph(gm, 0)  # the original edge: 8 candidates, none included
    leaves = sorted((n for n, a in graph.nodes(data=True) if a["kind"] == "candidate"),
                    key=lambda n: graph.nodes[n]["index"])
    assert len(leaves) == 8
    panel = _Panel(graph, tree=True)
    _measure([panel])
    boxes = _boxes(panel)
    for (a, p), (b, q) in combinations(boxes.items(), 2):
        overlap = p[0] < q[2] and q[0] < p[2] and p[1] < q[3] and q[1] < p[3]
        assert not overlap, (graph.nodes[a]["text"], graph.nodes[b]["text"])
    assert len({round(panel.positions[leaf][1], 6) for leaf in leaves}) == 1  # one row of candidates
    xs = [panel.positions[leaf][0] for leaf in leaves]
    assert xs == sorted(xs)  # in candidate order
    for u, v in graph.edges():
        assert panel.positions[u][1] < panel.positions[v][1]  # readers below what they read
    for name in leaves:
        assert max(len(line) for line in graph.nodes[name]["wrapped"].split("\n")) <= 28
    wide = assert_png(draw(sgm, tmp_path / "darts.png", before=gm))
    narrow = assert_png(draw(nb201[1], tmp_path / "nb201.png"))
    assert wide[0] > 1.5 * narrow[0]  # the figure grows with the number of leaves


def test_spread_keeps_order_and_gaps_and_centres_blocks():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(1, 12, (1,), generator=generator))
        desired = sorted(torch.rand(n, generator=generator).mul(5).tolist())
        widths = torch.rand(n, generator=generator).add(0.2).tolist()
        placed = _spread(desired, widths, 0.1)
        for i in range(n - 1):
            assert placed[i + 1] - placed[i] >= (widths[i] + widths[i + 1]) / 2 + 0.1 - 1e-9
    assert _spread([0.0, 0.0], [1.0, 1.0], 0.0) == [-0.5, 0.5]  # a collision splits around the wish
    assert _spread([0.0, 5.0], [1.0, 1.0], 0.0) == [0.0, 5.0]  # no collision: nothing moves


def test_cell_before_and_after(nb201, tmp_path):
    gm, sgm = nb201
    assert_png(draw(sgm, tmp_path / "cell.png", cell="cells.0", before=gm), 800, 600)
    text = svg_text(draw(sgm, tmp_path / "cell.svg", cell=True, before=gm))
    for label in ("original", "simplified", "weighted_sum of", "Conv2d(3x3)", "gone: pruned (zero)",
                  "gone: hoisted (an equivalent node computes it)", "new node"):
        assert label in text, label
    only_after = svg_text(draw(sgm, tmp_path / "after.svg", cell="cells.0"))
    assert "weighted_sum of" in only_after and "original" not in only_after


def test_draw_from_an_explain_report(nb201, tmp_path):
    _, sgm = nb201
    report = fxnas.explain(sgm)
    assert_png(draw(report, tmp_path / "report.png", before=True))
    text = svg_text(draw(report, tmp_path / "report.svg", edge="cells.0.edges.2<-1"))
    assert "mixed edge cells.0.edges.2<-1" in text and "Conv2d(3x3)" in text


def test_draw_errors_name_valid_choices(nb201, tmp_path):
    gm, sgm = nb201
    with pytest.raises(ValueError, match=r"no mixed edge named 'cells\.9'.*cells\.0\.edges\.1<-0"):
        draw(sgm, tmp_path / "x.png", edge="cells.9")
    with pytest.raises(ValueError, match="out of range"):
        draw(sgm, tmp_path / "x.png", edge=99)
    with pytest.raises(ValueError, match=r"unsupported file type '\.jpg'"):
        draw(sgm, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match=r"'cells\.0'"):
        draw(sgm, tmp_path / "x.png", cell="nowhere")
    with pytest.raises(ValueError, match="a report holds no graph"):
        draw(fxnas.explain(sgm), tmp_path / "x.png", cell="cells.0")
    with pytest.raises(TypeError):
        draw(torch.nn.Linear(2, 2), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------- diff


def _check_diff_and_explain(gm, sgm):
    report = fxnas.explain(sgm)
    changes = diff(gm, sgm)
    edges_before, edges_after = find_mixed_edges(gm), find_mixed_edges(sgm)
    names_before = {n.name for n in gm.graph.nodes}
    names_after = {n.name for n in sgm.graph.nodes}

    # explain agrees with the graphs
    assert report.nodes_before == len(gm.graph.nodes) and report.nodes_after == len(sgm.graph.nodes)
    assert report.operations_before == operation_counts(gm)
    assert report.operations_after == operation_counts(sgm)
    assert [e.name for e in report.mixed_edges] == [e.name for e in edges_before]
    assert [e.name for e in report.simplified_edges] == [e.name for e in edges_after]
    assert report.num_candidates_after == sum(len(e.candidates) for e in edges_after)

    # every original node is kept or accounted for once; every new node is listed
    gone = [c for c in changes.changes if c.kind != "added"]
    assert changes.nodes_before == len(gm.graph.nodes) and changes.nodes_after == len(sgm.graph.nodes)
    assert changes.kept + len(gone) == changes.nodes_before
    assert len({c.node for c in gone}) == len(gone) and {c.node for c in gone} <= names_before
    assert changes.kept + len(changes.added) == changes.nodes_after
    assert {c.node for c in changes.added} <= names_after
    assert {c.into for c in changes.changes if c.into} <= names_after

    # modules no longer called are reported under their qualified names
    called_before = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    called_after = {n.target for n in sgm.graph.nodes if n.op == "call_module"}
    by_module = {c.module: c for c in gone if c.module}
    assert called_before - called_after <= set(by_module)
    assert not [c.module for c in changes.removed if c.module]  # every module that went is explained
    for change in changes.hoisted:
        if change.module:
            assert type(gm.get_submodule(change.module)) is type(sgm.get_submodule(change.into_module))

    # ... and agree with what the passes recorded
    hoist = report.pass_record("hoist_shared")
    for removed, kept in (hoist.stats.get("modules", []) if hoist else []):
        if removed in called_after:
            continue
        assert by_module[removed].kind in ("hoisted", "merged"), by_module[removed]
        if by_module[removed].kind == "hoisted" and kept in called_after:
            assert by_module[removed].into_module == kept
    prune = report.pass_record("prune_zero")
    pruned = [f"{e.name}: {p}" for e in changes.edges for p in e.pruned]
    assert len(pruned) == (prune.stats["pruned"] if prune else 0)
    assert all(c.kind == "pruned" for c in changes.changes if c.candidate and c.kind == "pruned")
    merge = report.pass_record("merge_linear")
    if merge is not None:
        assert sum(len(e.merged) for e in changes.edges) == merge.stats["merged_groups"]
    assert [e.name for e in changes.edges] == [e.name for e in report.mixed_edges]
    assert changes.candidates_before == report.num_candidates_before
    assert changes.candidates_after == report.num_candidates_after
    assert changes.operations_before == report.operations_before
    assert changes.operations_after == report.operations_after
    return report, changes


@pytest.mark.parametrize("space", ["nb201", "darts", "pcdarts", "xautodl_darts_v1"])
def test_diff_and_explain_agree_with_the_graphs(space, request):
    gm, sgm = request.getfixturevalue(space)
    report, changes = _check_diff_and_explain(gm, sgm)
    if space in ("nb201", "xautodl_darts_v1"):
        prune = report.pass_record("prune_zero")
        assert sorted(f"{e.name}: {p}" for e in changes.edges for p in e.pruned) == sorted(
            prune.stats["pruned_candidates"])
        assert changes.counts()["hoisted"] > 0 and changes.counts()["rewritten"] > 0


def test_diff_summary_names_the_original_modules(nb201):
    gm, sgm = nb201
    changes = diff(gm, sgm)
    text = str(changes)
    assert text.startswith(f"fxnas.diff: {len(gm.graph.nodes)} -> {len(sgm.graph.nodes)} nodes")
    for word in ("pruned", "hoisted", "rewritten", "added", "operations:"):
        assert word in text
    hoisted = next(c for c in changes.hoisted if c.module)
    assert hoisted.module.startswith("cells.") and hoisted.into_module.startswith("cells.")
    assert hoisted.module in json.dumps(changes.to_dict())
    assert "cells.0.edges.1<-0.2.relu" in text  # the module that now computes the others' ReLU
    data = json.loads(changes.to_json())
    assert data["counts"] == changes.counts() and len(data["changes"]) == len(changes.changes)


def test_diff_of_the_users_module_traces_it_again():
    torch.manual_seed(0)
    model = build("nb201", C=4, N=1)
    gm, sgm = _simplified(model)
    again = diff(model, sgm)
    assert again.counts() == diff(gm, sgm).counts()
    assert again.nodes_before == len(gm.graph.nodes)


# --------------------------------------------------------------------- CLI


def _check_outputs(out: Path, cell: str) -> None:
    for name in ("summary.txt", "report.txt", "diff.txt", "code_before.py", "code_after.py"):
        assert (out / name).read_text().strip(), name
    assert "def forward" in (out / "code_after.py").read_text()
    assert "mixed_edges" in json.loads((out / "report.json").read_text())
    assert "changes" in json.loads((out / "diff.json").read_text())
    for name in ("edge", "edge_before_after", cell):
        assert "edge input" in svg_text(out / f"{name}.svg") or name == cell
        if (out / f"{name}.png").exists():
            assert_png(out / f"{name}.png")


def test_cli_inspect_on_a_built_in_space(tmp_path, capsys):
    out = tmp_path / "inspect"
    code = cli_main(["inspect", "--space", "nb201", "-C", "4", "-N", "1", "--input-shape", "2,3,16,16",
                     "--out", str(out), "--edge", "cells.0.edges.2<-1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "18 mixed edges, 90 -> " in printed and "drawn edge: cells.0.edges.2<-1" in printed
    assert printed.strip() == (out / "summary.txt").read_text().strip()
    _check_outputs(out, "cell_before_after")
    assert (out / "cell_before_after.png").exists()
    assert "weighted_sum of" in svg_text(out / "cell_before_after.svg")


_USER_MODEL = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class TinySupernet(nn.Module):
        def __init__(self, C=4):
            super().__init__()
            self.stem = nn.Conv2d(3, C, 3, padding=1)
            self.ops = nn.ModuleList([
                nn.Identity(),
                nn.Conv2d(C, C, 3, padding=1),
                nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1)),
                nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 5, padding=2)),
                nn.AvgPool2d(3, 1, 1),
            ])
            self.alpha = nn.Parameter(torch.zeros(5))
            self.head = nn.Linear(C, 10)

        def forward(self, x):
            x = self.stem(x)
            w = torch.softmax(self.alpha, 0)
            y = sum(wi * op(x) for wi, op in zip(w, self.ops))
            return self.head(y.mean((2, 3)))


    def build(C=4):
        return TinySupernet(C)
''')


def test_cli_inspect_on_a_user_model_given_by_import_path(tmp_path):
    (tmp_path / "tiny_supernet.py").write_text(_USER_MODEL)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    command = [sys.executable, "-m", "fxnas", "inspect", "--model", "tiny_supernet:build", "--kwargs", '{"C": 6}',
               "--input-shape", "2,3,8,8", "--out", "out", "--format", "svg"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tiny_supernet:build (TinySupernet)" in result.stdout and "1 mixed edges, 5 -> " in result.stdout
    out = tmp_path / "out"
    _check_outputs(out, "graph_before_after")
    assert not list(out.glob("*.png"))
    assert "ops.4" in svg_text(out / "edge_before_after.svg")
    changes = json.loads((out / "diff.json").read_text())
    modules = {c["module"] for c in changes["changes"] if c["module"]}
    assert {"ops.1", "ops.4"} <= modules  # qualified names of the user's modules


def test_cli_inspect_reports_usage_errors(tmp_path, capsys):
    assert cli_main(["inspect", "--model", "tiny_supernet:build", "--out", str(tmp_path)]) == 2
    assert "--model needs --input-shape" in capsys.readouterr().err
    assert cli_main(["inspect", "--space", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown; choose one of" in capsys.readouterr().err
    assert cli_main(["inspect", "--model", "no_such_module_xyz:build", "--input-shape", "1,3,8,8",
                     "--out", str(tmp_path)]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err
