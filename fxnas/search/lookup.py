"""Look up a NAS-Bench-201 architecture in a benchmark file (``nas_201_api``).

``NASBench201API(path)`` calls ``torch.load(path)``, which on torch >= 2.6
means ``weights_only=True``; benchmark files that hold NumPy scalars or other
objects are then rejected.  :func:`load_benchmark` loads the file itself --
``weights_only=True`` first and, only if that fails, ``weights_only=False``
(the file is one the user named on the command line, so it is trusted as
their own data; a warning says so) -- and hands the dict to the API without
the API's deep copy (the real file is several GB).
"""

from __future__ import annotations

import pickle
import warnings
from typing import Dict, Optional

import torch

__all__ = ["load_benchmark", "lookup_arch", "LOOKUP_METRICS", "format_lookup"]

#: dataset -> [(result key, reported name)]: the NAS-Bench-201 paper's table columns.
LOOKUP_METRICS = {
    "cifar10-valid": [("valid-accuracy", "valid")],
    "cifar10": [("test-accuracy", "test")],
    "cifar100": [("valid-accuracy", "valid"), ("test-accuracy", "test")],
    "ImageNet16-120": [("valid-accuracy", "valid"), ("test-accuracy", "test")],
}


class _SharedDict(dict):
    """A dict whose deep copy is itself: the API deep-copies what it is given."""

    def __deepcopy__(self, memo):
        return self


def load_benchmark(path: str, verbose: bool = False):
    """A ``nas_201_api.NASBench201API`` over the benchmark file at ``path``."""
    from nas_201_api import NASBench201API

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        warnings.warn(
            f"{path}: not loadable with torch.load(weights_only=True) ({str(error).splitlines()[0]}); "
            "loading it with weights_only=False -- only do this with a benchmark file you trust",
            stacklevel=2,
        )
        data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a NAS-Bench-201 benchmark file (a {type(data).__name__}, expected a dict)")
    api = NASBench201API(_SharedDict(data), verbose=verbose)
    api.filename = str(path)
    return api


def _number(value) -> Optional[float]:
    return None if value is None else float(value)


def lookup_arch(api, arch_str: str, hp: str = "200") -> Dict[str, object]:
    """Accuracies of ``arch_str`` on every dataset the benchmark has.

    Returns ``{"arch": arch_str, "index": i, "hp": hp, "<dataset>": {"valid": acc,
    "test": acc}, ...}``; ``index`` is -1 (and nothing else is set) when the
    architecture is not in the benchmark.  Accuracies average all trials
    (``is_random=False``).
    """
    index = api.query_index_by_arch(arch_str)
    result: Dict[str, object] = {"arch": arch_str, "index": int(index), "hp": str(hp)}
    if index < 0 or index not in api.arch2infos_dict:
        result["index"] = -1
        return result
    available = api.arch2infos_dict[index][str(hp)].get_dataset_names()
    for dataset, metrics in LOOKUP_METRICS.items():
        if dataset not in available:
            continue
        info = api.get_more_info(index, dataset, hp=str(hp), is_random=False)
        result[dataset] = {name: _number(info.get(key)) for key, name in metrics if key in info}
    return result


def format_lookup(result: Dict[str, object]) -> str:
    """One line per dataset, for the terminal."""
    if result.get("index", -1) < 0:
        return f"NAS-Bench-201: {result['arch']} is not in the benchmark file"
    lines = [f"NAS-Bench-201 index {result['index']} (hp={result['hp']}):"]
    for dataset in LOOKUP_METRICS:
        if dataset in result:
            values = ", ".join(f"{name} {value:.2f}%" for name, value in result[dataset].items() if value is not None)
            lines.append(f"  {dataset:<15} {values}")
    return "\n".join(lines)
