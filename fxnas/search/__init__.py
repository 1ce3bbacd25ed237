"""Architecture search on (simplified) supernets: ``fxnas search``.

* :mod:`~fxnas.search.loop` -- the bilevel loop (:class:`Search`, :class:`SearchConfig`),
  checkpoints and ``--resume``, per-epoch logs;
* :mod:`~fxnas.search.strategies` -- DARTS (first and second order), PC-DARTS,
  beta-DARTS, GDAS, ROME and FTSO;
* :mod:`~fxnas.search.unrolled` -- second-order DARTS with ``torch.func.functional_call``;
* :mod:`~fxnas.search.sampling` -- Gumbel one-hot and Gumbel-Top-k sampling;
* :mod:`~fxnas.search.data` -- CIFAR-10/100 from a local folder, or synthetic images;
* :mod:`~fxnas.search.lookup` -- the NAS-Bench-201 benchmark lookup;
* :mod:`~fxnas.search.distributed` -- data parallelism under ``torchrun``;
* :mod:`~fxnas.search.memory` -- saved-for-backward bytes and peak memory;
* :mod:`~fxnas.search.cli` -- the command line.

Python use::

    from fxnas.search import SearchConfig, run_search
    result = run_search(SearchConfig(space="nb201", strategy="gdas", mode="exact",
                                     epochs=2, steps=5, synthetic=True, C=8, N=1,
                                     batch_size=8, out="runs/demo"))
    print(result["arch_str"])
"""

from .loop import MODES, SEARCH_SPACES, Search, SearchConfig, SearchError, run_search
from .strategies import STRATEGIES, Strategy, StrategyOptions, make_strategy

__all__ = [
    "MODES",
    "SEARCH_SPACES",
    "STRATEGIES",
    "Search",
    "SearchConfig",
    "SearchError",
    "Strategy",
    "StrategyOptions",
    "make_strategy",
    "run_search",
]
