"""``fxnas search``: run an architecture search from the command line.

    fxnas search --space nb201 --strategy darts --mode exact --epochs 50 \\
        --data ~/data/cifar --benchmark-file NAS-Bench-201-v1_1-096897.pth --out runs/darts

    fxnas search --space nb201 --strategy gdas --mode exact --epochs 2 --steps 5 \\
        --synthetic --C 8 --N 1 --batch-size 8 --out runs/demo

Under ``torchrun --nproc_per_node P`` the same command runs data-parallel.
Wired into ``fxnas`` by :mod:`fxnas.cli` through :func:`add_arguments` and
:func:`run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .loop import MODES, SEARCH_SPACES, SearchConfig, SearchError
from .strategies import STRATEGIES

__all__ = ["add_arguments", "run", "config_from_args"]

_DEFAULTS = SearchConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    what = parser.add_argument_group("what to search")
    what.add_argument("--space", choices=SEARCH_SPACES, default=d.space,
                      help="search space: NAS-Bench-201 skeleton (nb201: its 5 ops; nb201-darts: the DARTS ops) or the DARTS network")
    what.add_argument("--strategy", choices=sorted(STRATEGIES), default=d.strategy, help="search strategy")
    what.add_argument("--mode", choices=MODES, default=d.mode,
                      help="run the supernet unsimplified (none) or fxnas.simplify'd (exact: same function; topo: TopoNAS)")
    what.add_argument("--epochs", type=int, default=d.epochs, help="search epochs")
    what.add_argument("--steps", type=int, default=d.steps, help="at most this many steps per epoch (default: the whole epoch)")
    what.add_argument("--out", default=d.out, help="output directory (log.jsonl, search.log, checkpoint.pt, final.json)")

    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="DIR", default=d.data,
                        help="folder holding CIFAR-10/100 in torchvision's layout (never downloaded)")
    source.add_argument("--synthetic", action="store_true", help="synthetic images (demos and tests)")
    data.add_argument("--dataset", choices=["cifar10", "cifar100"], default=d.dataset, help="dataset in --data")
    data.add_argument("--synthetic-size", type=int, default=d.synthetic_size, help="images in the synthetic set")
    data.add_argument("--image-size", type=int, default=d.image_size, help="image side (synthetic data; CIFAR is resized)")
    data.add_argument("--num-classes", type=int, default=d.num_classes, help="classes of the synthetic set (default 10)")
    data.add_argument("--train-portion", type=float, default=d.train_portion,
                      help="fraction of the training set for the weights; the rest trains the architecture")
    data.add_argument("--workers", type=int, default=d.workers, help="data-loader worker processes")

    net = parser.add_argument_group("supernet")
    net.add_argument("--C", type=int, default=d.C, help="channels of the first stage")
    net.add_argument("--N", type=int, default=d.N, help="NAS-Bench-201: search cells per stage")
    net.add_argument("--layers", type=int, default=d.layers, help="DARTS: cells")

    opt = parser.add_argument_group("optimisation (DARTS defaults)")
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size per process")
    opt.add_argument("--lr", type=float, default=d.lr, help="weight learning rate (SGD, cosine schedule)")
    opt.add_argument("--lr-min", type=float, default=d.lr_min, help="final weight learning rate")
    opt.add_argument("--momentum", type=float, default=d.momentum)
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay)
    opt.add_argument("--grad-clip", type=float, default=d.grad_clip, help="clip the weight-gradient norm (0: off)")
    opt.add_argument("--arch-lr", type=float, default=d.arch_lr, help="architecture learning rate (Adam, betas 0.5, 0.999)")
    opt.add_argument("--arch-weight-decay", type=float, default=d.arch_weight_decay,
                     help="architecture weight decay (default 1e-3; 0 for beta-darts, whose regulariser replaces it)")
    opt.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, help="epochs that train the weights only")

    strat = parser.add_argument_group("strategy options")
    strat.add_argument("--partial-k", type=int, default=d.partial_k, help="pc-darts: 1/K of the channels go through the edge")
    strat.add_argument("--beta-lambda", type=float, default=d.beta_lambda,
                       help="beta-darts: final regularisation weight (rises linearly from --beta-lambda-min; our default)")
    strat.add_argument("--beta-lambda-min", type=float, default=d.beta_lambda_min, help="beta-darts: initial weight")
    strat.add_argument("--tau-max", type=float, default=d.tau_max, help="gdas/rome: initial Gumbel temperature")
    strat.add_argument("--tau-min", type=float, default=d.tau_min, help="gdas/rome: final Gumbel temperature")
    strat.add_argument("--samples", type=int, default=d.samples, help="rome: architectures sampled per step (K)")
    strat.add_argument("--edges-per-node", type=int, default=d.edges_per_node,
                       help="rome/ftso: incoming edges kept per node")
    strat.add_argument("--topology-epochs", type=int, default=d.topology_epochs,
                       help="ftso: epochs of the topology stage (default: half of --epochs, at least 1)")
    strat.add_argument("--ftso-op", default=d.ftso_op,
                       help="ftso: the single operator of the topology stage (default nor_conv_3x3 / sep_conv_3x3)")

    strat.add_argument("--unrolled-r", type=float, default=d.unrolled_r,
                       help="darts2: finite-difference scale of the Hessian-vector product, r / |v|")

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--seed", type=int, default=d.seed, help="seeds every random number generator")
    run_group.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    run_group.add_argument("--threads", type=int, default=d.threads,
                           help="CPU threads for torch (default: torch's; 1 gives steadier timings on a busy machine)")
    run_group.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    run_group.add_argument("--stop-after", type=int, default=d.stop_after, metavar="E",
                           help="stop after E epochs of this run (checkpointed; continue with --resume)")
    run_group.add_argument("--benchmark-file", metavar="PATH", default=d.benchmark_file,
                           help="NAS-Bench-201 benchmark file: report the found architecture's accuracies")
    run_group.add_argument("--benchmark-hp", choices=["12", "200"], default=d.benchmark_hp,
                           help="NAS-Bench-201 training schedule to look up")
    run_group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    run_group.add_argument("--no-memory", dest="measure_memory", action="store_false",
                           help="do not measure the tensors saved for backward")


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig) if hasattr(args, f.name)}
    return SearchConfig(**values)


def run(args: argparse.Namespace) -> int:
    from .data import DatasetNotFoundError
    from .distributed import shutdown_distributed
    from .loop import Search

    try:
        config = config_from_args(args)
        if not config.synthetic and config.data is None:
            raise SearchError("give --data DIR (a folder holding CIFAR-10/100) or --synthetic")
        search = Search(config)
        try:
            search.run()
        except BaseException:
            shutdown_distributed(search.dist, wait=False)
            raise
        shutdown_distributed(search.dist)
    except (SearchError, DatasetNotFoundError) as error:
        print(f"fxnas search: error: {error}", file=sys.stderr)
        return 2
    return 0
