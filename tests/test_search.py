"""fxnas.search: strategies, sampling, the unrolled gradient, the loop, the CLI,
checkpoints, the NAS-Bench-201 lookup and data parallelism."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fxnas.cli import main as fxnas_main
from fxnas.search import make_strategy
from fxnas.search.loop import example_arch_inputs
from fxnas.search.sampling import gumbel_top_k, node_top_k_mask, relaxed_top_k, top_k_indices
from fxnas.search.strategies import FTSO, ROME, Runtime, StrategyOptions, beta_regulariser
from fxnas.search.unrolled import unrolled_arch_gradients
from fxnas.spaces import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_mode(mode):
    return mode  # every simplify mode exists: a plain parameter


def case(*values):
    """A parametrize case whose last value is a mode."""
    return pytest.param(*values)


TINY = ["--synthetic", "--synthetic-size", "32", "--image-size", "16", "--batch-size", "4", "--C", "4", "--N", "1",
        "--no-progress", "--threads", "1"]


def search_cli(out, *args):
    """Run ``fxnas search`` in-process; return (exit code, final.json or None)."""
    code = fxnas_main(["search", "--out", str(out), *args])
    path = os.path.join(str(out), "final.json")
    final = json.load(open(path)) if os.path.exists(path) else None
    return code, final


def log_records(out):
    with open(os.path.join(str(out), "log.jsonl")) as handle:
        return [json.loads(line) for line in handle]


# --- sampling -----------------------------------------------------------------------


def test_gumbel_top2_two_distinct_edges_per_node():
    torch.manual_seed(0)
    model = build("darts", C=4, layers=3)
    (normal, _) = model.arch_groups()
    scores = torch.randn(14, requires_grad=True)
    for _ in range(50):
        values = node_top_k_mask(scores, normal.node_edges, 2, tau=1.0).detach()
        assert set(values.unique().tolist()) <= {0.0, 1.0}
        for rows in normal.node_edges:
            assert values[rows].sum() == 2  # a 2-hot per node: two distinct edges, none twice
    # a node with fewer inputs than k keeps all of them
    nb = build("nb201", C=4, N=1).arch_groups()[0]
    values = node_top_k_mask(torch.zeros(6), nb.node_edges, 2, tau=1.0)
    assert values[:3].tolist() == [1.0, 1.0, 1.0] and values[3:].sum() == 2
    # straight through: the value is the hard sample, the gradient that of the relaxed top-k
    mask = node_top_k_mask(scores, normal.node_edges, 2, tau=1.0)
    (mask * torch.randn(14)).sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


def _pair_probabilities(logits):
    """P({a, b}) for two draws without replacement: p_a p_b / (1 - p_a) + p_b p_a / (1 - p_b)."""
    p = torch.softmax(logits, 0).tolist()
    return {
        (a, b): p[a] * p[b] / (1 - p[a]) + p[b] * p[a] / (1 - p[b])
        for a, b in itertools.combinations(range(len(p)), 2)
    }


def test_gumbel_top2_samples_without_replacement():
    """Pair frequencies match sampling without replacement (Plackett-Luce), which
    differ from those of two independent draws (2 p_a p_b, plus repeated edges)."""
    torch.manual_seed(0)
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    n = 40000
    picks = top_k_indices(logits.expand(n, 4), 2)
    assert (picks[:, 0] != picks[:, 1]).all()
    pairs = picks.sort(dim=1).values
    for (a, b), expected in _pair_probabilities(logits).items():
        observed = ((pairs[:, 0] == a) & (pairs[:, 1] == b)).float().mean().item()
        assert abs(observed - expected) < 0.012, (a, b, observed, expected)
    # the same through ROME's per-node sampler, on the 3-input node of a NAS-Bench-201 cell
    node_edges = build("nb201", C=4, N=1).arch_groups()[0].node_edges
    scores = torch.tensor([0.0, 0.0, 0.0, 1.2, 0.0, -0.7])
    counts = {pair: 0 for pair in itertools.combinations(range(3), 2)}
    samples = 4000
    for _ in range(samples):
        chosen = torch.nonzero(node_top_k_mask(scores, node_edges, 2, tau=1.0)[3:]).flatten().tolist()
        counts[tuple(chosen)] += 1
    for pair, expected in _pair_probabilities(scores[3:]).items():
        assert abs(counts[pair] / samples - expected) < 0.03, (pair, counts[pair] / samples, expected)
    hard = gumbel_top_k(logits.expand(8, 4), 2, tau=0.5)
    assert torch.equal(hard.detach().sum(-1), torch.full((8,), 2.0))
    relaxed = relaxed_top_k(torch.tensor([[3.0, 2.0, -5.0, -6.0]]), 2, tau=0.01)
    torch.testing.assert_close(relaxed, torch.tensor([[1.0, 1.0, 0.0, 0.0]]), atol=1e-3, rtol=0)


# --- strategies -------------------------------------------------------------------------


def tiny_batches(seed=0, size=8, n=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)) for _ in range(2)]


def runtime_for(model, network=None):
    network = network if network is not None else model
    arch_ids = {id(t) for t in model.arch_parameters()}
    weights = {n: p for n, p in network.named_parameters() if id(p) not in arch_ids}
    optimizer = torch.optim.SGD(list(weights.values()), lr=0.1, momentum=0.9, weight_decay=3e-4)
    return Runtime(network, network, model.arch_input_names(), F.cross_entropy, weights, optimizer), optimizer


def test_rome_accumulation_mean_for_arch_sum_for_weights():
    torch.manual_seed(0)
    model = build("nb201", C=4, N=1).double()
    strategy = ROME(StrategyOptions(epochs=2, samples=3))
    strategy.setup(model)
    strategy.begin_epoch(0)
    rt, _ = runtime_for(model)
    train, valid = [(x.double(), y) for x, y in tiny_batches()]
    arch = strategy.arch_parameters(model)
    assert len(arch) == 2 and arch[1] is strategy.topology["cell"]

    def per_sample(batch, wrt):
        grads = []
        for _ in range(strategy.samples):
            logits = rt.logits(batch[0], strategy.arch_inputs(model))
            grads.append(torch.autograd.grad(F.cross_entropy(logits, batch[1]), wrt, allow_unused=True))
        return grads

    # architecture step: the mean over the K samples
    state = torch.get_rng_state()
    strategy.arch_backward(rt, model, train, valid)
    got = [t.grad.clone() for t in arch]
    torch.set_rng_state(state)
    samples = per_sample(valid, arch)
    for i, tensor in enumerate(arch):
        mean = sum(g[i] for g in samples) / len(samples)
        torch.testing.assert_close(got[i], mean, rtol=1e-9, atol=1e-12)
        assert not torch.allclose(samples[0][i], samples[1][i])  # the samples differ
    assert all(p.grad is None for p in rt.weight_params.values())  # no weight gradients from an arch step

    # weight step: the sum over the K samples (with the architecture held fixed)
    state = torch.get_rng_state()
    arch_grads = [t.grad.clone() for t in arch]
    strategy.weight_backward(rt, model, train)
    weights = list(rt.weight_params.values())
    got = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in weights]
    assert all(torch.equal(t.grad, g) for t, g in zip(arch, arch_grads))  # no arch gradients from a weight step
    torch.set_rng_state(state)
    samples = per_sample(train, weights)
    total = [sum(torch.zeros_like(p) if g[i] is None else g[i] for g in samples) for i, p in enumerate(weights)]
    for g, expected in zip(got, total):
        torch.testing.assert_close(g, expected, rtol=1e-9, atol=1e-12)
    classifier = [i for i, (n, _) in enumerate(rt.weight_params.items()) if n == "classifier.weight"][0]
    assert got[classifier].abs().sum() > 0


def test_beta_darts_regulariser():
    torch.manual_seed(0)
    model = build("darts", C=4, layers=3)
    with torch.no_grad():
        for t in model.arch_parameters():
            t.normal_()
    strategy = make_strategy("beta-darts", StrategyOptions(epochs=5, beta_lambda=2.0, beta_lambda_min=0.5))
    strategy.begin_epoch(2)
    assert strategy.beta_lambda() == pytest.approx(0.5 + 1.5 * 2 / 4)
    term = strategy.regulariser(model)
    expected = strategy.beta_lambda() * sum(
        torch.logsumexp(a, -1).mean() for a in (model.alphas_normal, model.alphas_reduce)
    )
    torch.testing.assert_close(term, expected)
    torch.testing.assert_close(beta_regulariser(model.arch_groups()), expected / strategy.beta_lambda())
    # d/d alpha of lambda * mean_e logsumexp(alpha_e) = lambda * softmax(alpha) / num_edges
    term.backward()
    for alphas in (model.alphas_normal, model.alphas_reduce):
        torch.testing.assert_close(alphas.grad, strategy.beta_lambda() * torch.softmax(alphas.detach(), -1) / 14)
    # and it enters the architecture step: gradients with minus without = the term's gradient
    rt, _ = runtime_for(model)
    train, valid = tiny_batches(size=16)
    darts = make_strategy("darts", StrategyOptions(epochs=5))
    grads = {}
    for name, s in (("beta", strategy), ("plain", darts)):
        for t in model.arch_parameters():
            t.grad = None
        state = torch.get_rng_state()
        s.arch_backward(rt, model, train, valid)
        torch.set_rng_state(state)
        grads[name] = [t.grad.clone() for t in model.arch_parameters()]
    for with_term, without, alphas in zip(grads["beta"], grads["plain"], model.arch_parameters()):
        torch.testing.assert_close(
            with_term - without, strategy.beta_lambda() * torch.softmax(alphas.detach(), -1) / 14, rtol=1e-4, atol=1e-6
        )


def _unrolled_reference(network, model, weights, optimizer, train, valid, arch_inputs):
    """grad of alpha -> L_val(w - eta (m + grad_w L_train(w, alpha) + lambda w), alpha) by central differences."""
    group = optimizer.param_groups[0]
    eta, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
    names = list(weights)
    buffers = lambda: {n: b.clone() for n, b in network.named_buffers()}  # noqa: E731
    from torch.func import functional_call

    def objective():
        inputs = arch_inputs()
        loss = F.cross_entropy(functional_call(network, buffers(), (train[0], *inputs)), train[1])
        grads = torch.autograd.grad(loss, [weights[n] for n in names])
        stepped = {
            n: (weights[n] - eta * (g + decay * weights[n] + momentum * optimizer.state[weights[n]]["momentum_buffer"]))
            for n, g in zip(names, grads)
        }
        logits = functional_call(network, {**stepped, **buffers()}, (valid[0], *inputs))
        return F.cross_entropy(logits, valid[1]).item()

    alphas = model.alphas
    reference = torch.zeros_like(alphas)
    h = 1e-5
    for index in itertools.product(*map(range, alphas.shape)):
        old = alphas[index].item()
        values = []
        for shifted in (old + h, old - h):
            with torch.no_grad():
                alphas[index] = shifted
            values.append(objective())
        with torch.no_grad():
            alphas[index] = old
        reference[index] = (values[0] - values[1]) / (2 * h)
    return reference


@pytest.mark.parametrize("compiled", ["none", with_mode("exact")])
def test_second_order_darts_matches_finite_differences(compiled):
    torch.manual_seed(0)
    model = build("nb201", C=2, N=1).double()
    with torch.no_grad():
        model.alphas.normal_()
    train, valid = [(x.double(), y) for x, y in tiny_batches()]
    network = model
    if compiled != "none":
        import fxnas

        example = example_arch_inputs(model)
        network = fxnas.simplify(model, (train[0], example["arch_weights"]), mode=compiled)
    rt, optimizer = runtime_for(model, network)
    for group in optimizer.param_groups:
        group["lr"] = 0.5  # a large virtual step makes the second-order term matter
    # one real step, so that the virtual step also uses momentum buffers
    F.cross_entropy(network(train[0], torch.softmax(model.alphas, -1).detach()), train[1]).backward()
    optimizer.step()
    optimizer.zero_grad()

    strategy = make_strategy("darts2", StrategyOptions(epochs=1, unrolled_r=1e-5))
    arch_inputs = lambda: [torch.softmax(model.alphas, -1)]  # noqa: E731
    # r: DARTS's 0.01 suits float32 and real networks; this 2-channel network is so
    # piecewise-linear that 0.01 crosses ReLU kinks, so the float64 check uses a smaller one
    gradients, _, _ = unrolled_arch_gradients(
        network, rt.weight_params, [model.alphas], arch_inputs, train, valid, F.cross_entropy, optimizer, r=1e-5
    )
    reference = _unrolled_reference(network, model, rt.weight_params, optimizer, train, valid, arch_inputs)
    error = (gradients[0] - reference).norm() / reference.norm()
    assert error < 2e-3, error
    # the second-order term is not negligible: first-order DARTS is far from the reference
    from torch.func import functional_call

    first_order = torch.autograd.grad(
        F.cross_entropy(functional_call(network, {}, (valid[0], *arch_inputs())), valid[1]), model.alphas
    )[0]
    assert (first_order - reference).norm() / reference.norm() > 20 * error
    # and the strategy fills .grad with it, leaving the network and its statistics untouched
    before = {n: t.clone() for n, t in itertools.chain(network.named_parameters(), network.named_buffers())}
    strategy.arch_backward(rt, model, train, valid)
    torch.testing.assert_close(model.alphas.grad, gradients[0], rtol=1e-9, atol=1e-12)
    for name, tensor in itertools.chain(network.named_parameters(), network.named_buffers()):
        assert torch.equal(tensor, before[name]), name


def test_ftso_stages_unit():
    strategy = FTSO(StrategyOptions(epochs=3, edges_per_node=2))
    assert [strategy.stage(e) for e in range(3)] == [0, 0, 1]
    assert strategy.stage_epochs(0) == (0, 2) and strategy.stage_epochs(1) == (2, 1)
    factory = lambda **kw: build("nb201", C=4, N=1, **kw)  # noqa: E731
    model = strategy.build_model(factory, "nb201", 0)
    assert model.op_names == ["nor_conv_3x3"]
    strategy.setup(model)
    weights = strategy.arch_inputs(model)["arch_weights"]
    assert weights.shape == (6, 1)
    torch.testing.assert_close(weights[[0], 0].sum(), torch.tensor(1.0))
    torch.testing.assert_close(weights[[3, 4, 5], 0].sum(), torch.tensor(1.0))
    assert strategy.arch_parameters(model) == [strategy.topology["cell"]]
    with torch.no_grad():
        strategy.topology["cell"].copy_(torch.tensor([0.0, 0.3, 0.1, 0.9, -1.0, 0.5]))
    strategy.enter_stage(1, model)
    assert strategy.kept == {"cell": [0, 1, 2, 3, 5]}
    second = strategy.build_model(factory, "nb201", 1)
    assert second.op_names == build("nb201", C=4, N=1).op_names
    assert second.kept_edges == ["1<-0", "2<-0", "2<-1", "3<-0", "3<-2"]
    assert strategy.arch_parameters(second) == [second.alphas]


def test_ftso_two_stages_end_to_end(tmp_path):
    code, final = search_cli(tmp_path, "--strategy", "ftso", "--mode", "none", "--epochs", "2", "--steps", "2", *TINY)
    assert code == 0
    records = log_records(tmp_path)
    assert [r["stage"] for r in records] == [0, 1]
    assert "cell.ops" not in records[0]["arch_weights"] and "cell.topology" in records[0]["arch_weights"]
    kept = records[1]["arch_weights"]["kept_edges"]["cell"]
    topology = records[0]["arch_weights"]["cell.topology"]
    assert kept[:3] == [0, 1, 2] and len(kept) == 5  # node 3 keeps 2 of its 3 edges
    dropped = ({3, 4, 5} - set(kept)).pop()
    assert topology[dropped] == min(topology[3:])
    ops = [item.split("~")[0] for node in final["arch_str"].split("+") for item in node.strip("|").split("|")]
    assert ops[dropped] == "none" and all(op != "none" for i, op in enumerate(ops) if i != dropped)
    # the first stage ran one operator per edge, the second all of them
    assert records[0]["genotype"].count("nor_conv_3x3") >= 5


def test_ftso_topology_only(tmp_path):
    """One epoch: only the topology stage runs; the result is the single operator on the kept edges."""
    code, final = search_cli(tmp_path, "--strategy", "ftso", "--mode", "none", "--epochs", "1", "--steps", "1", *TINY)
    assert code == 0
    ops = [item.split("~")[0] for node in final["arch_str"].split("+") for item in node.strip("|").split("|")]
    assert ops[:3] == ["nor_conv_3x3"] * 3 and sorted(ops[3:]) == ["none", "nor_conv_3x3", "nor_conv_3x3"]


# --- the command line, every strategy ----------------------------------------------


STRATEGY_NAMES = ["darts", "darts2", "pc-darts", "beta-darts", "gdas", "rome", "ftso"]


@pytest.mark.parametrize("mode", ["none", with_mode("exact"), with_mode("topo")])
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_cli_every_strategy_nb201(tmp_path, strategy, mode):
    epochs = "2" if strategy == "ftso" else "1"
    code, final = search_cli(
        tmp_path, "--space", "nb201", "--strategy", strategy, "--mode", mode, "--epochs", epochs, "--steps", "2", *TINY
    )
    assert code == 0
    assert final["strategy"] == strategy and final["mode"] == mode and final["epochs_done"] == int(epochs)
    assert final["arch_str"].count("~") == 6
    records = log_records(tmp_path)
    last = records[-1]
    assert last["steps"] == 2 and last["step_time_ms"] > 0 and last["peak_rss_mb"] > 0
    assert last["saved_mb_weight_step"] > 0 and last["saved_mb_arch_step"] > 0
    assert np.isfinite(last["train_loss"]) and np.isfinite(last["valid_loss"])
    assert os.path.exists(tmp_path / "checkpoint.pt") and os.path.exists(tmp_path / "search.log")


@pytest.mark.parametrize(
    "space,strategy,mode",
    [
        case("darts", "pc-darts", "exact"),
        case("darts", "rome", "none"),
        case("darts", "ftso", "none"),
        case("nb201-darts", "gdas", "exact"),
    ],
)
def test_cli_other_spaces(tmp_path, space, strategy, mode):
    channels = "8" if space == "darts" else "4"  # PC-DARTS: C / partial_k channels per edge
    args = ["--synthetic", "--synthetic-size", "16", "--image-size", "16", "--batch-size", "2", "--C", channels,
            "--layers", "3", "--N", "1", "--no-progress", "--threads", "1", "--no-memory"]
    epochs = "2" if strategy == "ftso" else "1"
    code, final = search_cli(tmp_path, "--space", space, "--strategy", strategy, "--mode", mode,
                             "--epochs", epochs, "--steps", "1", *args)
    assert code == 0
    if space == "darts":
        assert final["genotype"].startswith("Genotype(normal=") and "arch_str" not in final
        assert "'none'" not in final["genotype"]
    else:
        assert final["arch_str"].count("~") == 6


def test_exact_mode_searches_like_the_unsimplified_supernet(tmp_path):
    finals = {}
    for mode in ("none", "exact"):
        code, finals[mode] = search_cli(tmp_path / mode, "--strategy", "darts", "--mode", mode, "--epochs", "1",
                                        "--steps", "3", *TINY)
        assert code == 0
    np.testing.assert_allclose(
        finals["exact"]["arch_weights"]["cell.ops"], finals["none"]["arch_weights"]["cell.ops"], rtol=1e-3, atol=1e-4
    )
    assert finals["exact"]["arch_str"] == finals["none"]["arch_str"]


def test_cli_progress_bar_and_logs(tmp_path, capsys):
    args = [a for a in TINY if a != "--no-progress"]
    code, final = search_cli(tmp_path, "--strategy", "gdas", "--mode", "none", "--epochs", "2", "--steps", "2", *args)
    assert code == 0
    captured = capsys.readouterr()
    assert "epoch 1/2" in captured.err and "ms/step" in captured.err and "loss=" in captured.err  # tqdm
    assert "final genotype" in captured.out
    records = log_records(tmp_path)
    assert [r["tau"] for r in records] == pytest.approx([10.0, 0.1])  # annealed
    assert len(records[0]["arch_weights"]["cell.ops"]) == 6 and records[0]["genotype"].startswith("[((")
    text = open(tmp_path / "search.log").read()
    assert text.count("  genotype: ") == 2 and "final genotype" in text and "arch: |" in text


def test_cli_errors(tmp_path, capsys):
    code, _ = search_cli(tmp_path, "--data", str(tmp_path / "nowhere"), "--epochs", "1")
    assert code == 2
    err = capsys.readouterr().err
    assert "cifar10 not found" in err and "never downloads" in err
    code, _ = search_cli(tmp_path, "--epochs", "1")
    assert code == 2 and "--synthetic" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "fxnas", "search", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for flag in ("--space", "--strategy", "--mode", "--epochs", "--steps", "--synthetic", "--benchmark-file", "--resume"):
        assert flag in result.stdout


# --- checkpoints ---------------------------------------------------------------------


def _assert_same(a, b, path="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, float) and path.endswith(("step_time_ms", "step_time_ms_mean", "peak_rss_mb", "rss_at_start_mb")):
        return  # wall-clock and process figures
    elif path.endswith(("simplify_seconds.stage0", "simplify_seconds.stage1", "config.resume", "config.stop_after", "config.out")):
        return
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("strategy,mode", [case("rome", "exact"), case("ftso", "none")])
def test_resume_continues_bit_for_bit(tmp_path, strategy, mode):
    common = ["--strategy", strategy, "--mode", mode, "--epochs", "2", "--steps", "2", *TINY]
    code, straight = search_cli(tmp_path / "straight", *common)
    assert code == 0
    code, stopped = search_cli(tmp_path / "split", *common, "--stop-after", "1")
    assert code == 0 and stopped is None
    assert len(log_records(tmp_path / "split")) == 1
    code, resumed = search_cli(tmp_path / "split", *common, "--resume")
    assert code == 0
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    _assert_same(a, b)
    assert straight["arch_str"] == resumed["arch_str"] and straight["arch_weights"] == resumed["arch_weights"]
    assert [r["train_loss"] for r in log_records(tmp_path / "straight")] == [
        r["train_loss"] for r in log_records(tmp_path / "split")
    ]


def test_resume_refuses_another_configuration(tmp_path, capsys):
    common = ["--strategy", "darts", "--mode", "none", "--epochs", "1", "--steps", "1", *TINY]
    assert search_cli(tmp_path, *common)[0] == 0
    code, _ = search_cli(tmp_path, *common, "--C", "8", "--resume")  # the last --C wins
    assert code == 2 and "configuration differs" in capsys.readouterr().err


# --- NAS-Bench-201 lookup ------------------------------------------------------------

SETS = {
    "cifar10-valid": ["x-valid", "ori-test"],
    "cifar10": ["ori-test"],
    "cifar100": ["x-valid", "x-test", "ori-test"],
    "ImageNet16-120": ["x-valid", "x-test", "ori-test"],
}


def write_benchmark(path, arch_accuracy, numpy_scalars=False, epochs=3):
    """A tiny NAS-Bench-201 file built with the API's own classes (plain Python numbers)."""
    from nas_201_api import ArchResults, ResultsCount

    number = (lambda v: np.float64(v)) if numpy_scalars else float
    infos = {}
    for index, (arch, accuracy) in enumerate(arch_accuracy.items()):
        per_hp = {}
        for hp, shift in (("less", -5.0), ("full", 0.0)):
            results = ArchResults(index, arch)
            for offset, (dataset, sets) in enumerate(SETS.items()):
                for seed, noise in ((777, -0.5), (888, 0.5)):
                    config = {"arch_str": arch, "channel": 16, "num_cells": 5, "class_num": 10}
                    count = ResultsCount(dataset, None, {e: number(accuracy - e) for e in range(epochs)},
                                         {e: number(1.0) for e in range(epochs)}, 0.5, 50.0, config, seed, epochs, [0.01])
                    final = accuracy + shift + noise - offset
                    accs = {f"{s}@{e}": number(final - (epochs - 1 - e) - k) for k, s in enumerate(sets) for e in range(epochs)}
                    count.update_eval(accs, {key: number(0.3) for key in accs}, {key: number(1.0) for key in accs})
                    results.update(dataset, seed, count)
            per_hp[hp] = results.state_dict()
        infos[index] = per_hp
    torch.save({"meta_archs": list(arch_accuracy), "arch2infos": infos,
                "evaluated_indexes": list(range(len(arch_accuracy)))}, path)


BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
WORST = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"


def test_nb201_lookup_synthetic_benchmark(tmp_path):
    from fxnas.search.lookup import format_lookup, load_benchmark, lookup_arch

    path = tmp_path / "bench.pth"
    write_benchmark(path, {BEST: 94.0, WORST: 10.0})
    api = load_benchmark(str(path))
    result = lookup_arch(api, BEST)
    assert result["index"] == 0 and result["hp"] == "200"
    # the average of the two trials (noise -0.5 / +0.5), final epoch, each dataset offset by its position
    assert result["cifar10-valid"] == {"valid": pytest.approx(94.0)}
    assert result["cifar10"] == {"test": pytest.approx(93.0)}
    assert result["cifar100"] == {"valid": pytest.approx(92.0), "test": pytest.approx(91.0)}
    assert result["ImageNet16-120"] == {"valid": pytest.approx(91.0), "test": pytest.approx(90.0)}
    assert lookup_arch(api, BEST, hp="12")["cifar10"]["test"] == pytest.approx(88.0)
    assert lookup_arch(api, WORST)["cifar10"]["test"] == pytest.approx(9.0)
    missing = lookup_arch(api, BEST.replace("skip_connect", "avg_pool_3x3"))
    assert missing["index"] == -1 and "not in the benchmark" in format_lookup(missing)
    assert "ImageNet16-120" in format_lookup(result)
    assert json.dumps(result)  # plain numbers

    # a file holding NumPy scalars: torch.load(weights_only=True) rejects it; we load it with a warning
    numpy_path = tmp_path / "numpy.pth"
    write_benchmark(numpy_path, {BEST: 94.0}, numpy_scalars=True)
    with pytest.warns(UserWarning, match="weights_only=False"):
        api = load_benchmark(str(numpy_path))
    assert lookup_arch(api, BEST)["cifar10"]["test"] == pytest.approx(93.0)


def test_cli_reports_benchmark_accuracies(tmp_path):
    common = ["--strategy", "gdas", "--mode", "none", "--epochs", "1", "--steps", "1", *TINY]
    code, final = search_cli(tmp_path, *common)
    assert code == 0
    found = final["arch_str"]
    bench = tmp_path / "bench.pth"
    write_benchmark(bench, {found: 70.0, WORST if found != WORST else BEST: 10.0})
    code, final = search_cli(tmp_path, *common, "--resume", "--benchmark-file", str(bench))
    assert code == 0
    assert final["benchmark"]["index"] == 0
    assert final["benchmark"]["cifar100"]["test"] == pytest.approx(67.0)
    assert "NAS-Bench-201 index 0" in open(tmp_path / "search.log").read()


# --- data --------------------------------------------------------------------------------


def test_data_halves_and_epoch_order():
    from fxnas.search.data import load_search_data

    data = load_search_data(synthetic=True, synthetic_size=40, image_size=8, batch_size=4, seed=3)
    assert data.steps_per_epoch() == 5 and data.steps_per_epoch(2) == 2
    data.set_epoch(1)
    first = [y.tolist() for _, y in data.train_loader]
    data.set_epoch(1)
    again = [y.tolist() for _, y in data.train_loader]
    data.set_epoch(2)
    other = [y.tolist() for _, y in data.train_loader]
    assert first == again and first != other
    train_ids = set(data.train_loader.dataset.indices)
    valid_ids = set(data.valid_loader.dataset.indices)
    assert not train_ids & valid_ids and len(train_ids) == len(valid_ids) == 20


def test_cifar_is_never_downloaded(tmp_path):
    from fxnas.search.data import DatasetNotFoundError, load_search_data

    with pytest.raises(DatasetNotFoundError, match="never downloads"):
        load_search_data("cifar100", str(tmp_path))
    (tmp_path / "cifar-10-batches-py").mkdir()  # present but empty: torchvision's integrity check fails
    with pytest.raises(DatasetNotFoundError, match="incomplete or corrupted"):
        load_search_data("cifar10", str(tmp_path))
    assert os.listdir(tmp_path) == ["cifar-10-batches-py"]  # nothing was fetched


# --- data parallel ---------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_data_parallel(tmp_path):
    mode = "exact"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "fxnas", "search", "--strategy", "rome", "--mode", mode,
        "--epochs", "1", "--steps", "2", "--out", str(tmp_path), *TINY,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.load(open(tmp_path / "final.json"))
    assert final["world_size"] == 2
    checksums = final["arch_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # the architecture stays in sync
    assert len(log_records(tmp_path)) == 1  # only rank 0 writes
    assert result.stdout.count("final genotype") == 1
