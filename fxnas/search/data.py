"""Search data: CIFAR-10 / CIFAR-100 from a local directory, or synthetic images.

The training set is split in two halves (``train_portion``): network weights
are trained on the first, architecture weights on the second (DARTS's
bilevel split).  Nothing is ever downloaded: a missing dataset raises
:class:`DatasetNotFoundError` saying where it was looked for and how to get it.

Shuffling is a :class:`torch.utils.data.distributed.DistributedSampler`
seeded with ``seed`` and re-seeded every epoch (``set_epoch``): the order of
epoch ``e`` depends only on ``(seed, e)``, which makes resumed runs identical
and gives every data-parallel process its own shard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "SyntheticImages",
    "SearchData",
    "load_search_data",
]

#: name -> (torchvision class name, classes, mean, std)
DATASETS = {
    "cifar10": ("CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not in the given directory (fxnas never downloads)."""


class SyntheticImages(Dataset):
    """A small, deterministic, learnable image set for demos and tests.

    Each class has a fixed random prototype; an image is its class prototype
    plus Gaussian noise, so a network can fit it and accuracy moves.  Built
    from its own generator: it does not touch the global RNG.
    """

    def __init__(self, size: int = 256, image_size: int = 32, num_classes: int = 10, seed: int = 0):
        generator = torch.Generator().manual_seed(1_000_003 + seed)
        prototypes = torch.randn(num_classes, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, num_classes, (size,), generator=generator)
        noise = torch.randn(size, 3, image_size, image_size, generator=generator)
        self.images = 0.5 * prototypes[self.labels] + noise
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def _cifar(name: str, root: str, image_size: int):
    import torchvision
    import torchvision.transforms as T

    class_name, classes, mean, std = DATASETS[name]
    expected = os.path.join(root, _FOLDERS[name])
    if not os.path.isdir(expected):
        raise DatasetNotFoundError(
            f"{name} not found: expected the extracted python version in {expected!r} "
            f"(from https://www.cs.toronto.edu/~kriz/{'cifar-10-python' if name == 'cifar10' else 'cifar-100-python'}.tar.gz, "
            f"extracted into {root!r}). fxnas never downloads data; use --synthetic for a demo."
        )
    transforms = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    if image_size != 32:
        transforms.append(T.Resize(image_size))
    transforms += [T.ToTensor(), T.Normalize(mean, std)]
    try:
        dataset = getattr(torchvision.datasets, class_name)(root, train=True, download=False, transform=T.Compose(transforms))
    except RuntimeError as error:  # "Dataset not found or corrupted."
        raise DatasetNotFoundError(f"{name} in {root!r} is incomplete or corrupted: {error}") from error
    return dataset, classes


@dataclass
class SearchData:
    """The two halves of the training set, with their loaders."""

    train_loader: DataLoader
    valid_loader: DataLoader
    train_sampler: DistributedSampler
    valid_sampler: DistributedSampler
    num_classes: int
    image_size: int

    def set_epoch(self, epoch: int) -> None:
        self.train_sampler.set_epoch(epoch)
        self.valid_sampler.set_epoch(epoch)

    def steps_per_epoch(self, limit: Optional[int] = None) -> int:
        steps = min(len(self.train_loader), len(self.valid_loader))
        return steps if limit is None else min(steps, limit)


def load_search_data(
    dataset: str = "cifar10",
    root: Optional[str] = None,
    *,
    synthetic: bool = False,
    synthetic_size: int = 256,
    image_size: int = 32,
    num_classes: Optional[int] = None,
    batch_size: int = 64,
    train_portion: float = 0.5,
    seed: int = 0,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> SearchData:
    """Build the weight / architecture loaders.

    ``batch_size`` is per process.  Batches are dropped at the end of an epoch
    when incomplete (every step sees full batches, and every process the same
    number of steps).
    """
    if synthetic:
        classes = num_classes or 10
        full: Dataset = SyntheticImages(synthetic_size, image_size, classes, seed)
    else:
        if root is None:
            raise DatasetNotFoundError("give --data DIR (a folder holding CIFAR-10/100) or --synthetic")
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
        full, classes = _cifar(dataset, root, image_size)
    n = len(full)
    split = int(n * train_portion)
    if split < 1 or split >= n:
        raise ValueError(f"train_portion={train_portion} leaves an empty half of {n} images")
    halves: Tuple[Subset, Subset] = (Subset(full, range(split)), Subset(full, range(split, n)))
    samplers = [
        DistributedSampler(half, num_replicas=world_size, rank=rank, shuffle=True, seed=seed + offset, drop_last=True)
        for offset, half in enumerate(halves)
    ]
    loaders = [
        DataLoader(half, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                   pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
        for half, sampler in zip(halves, samplers)
    ]
    if min(len(loader) for loader in loaders) == 0:
        raise ValueError(
            f"batch size {batch_size} x {world_size} process(es) is larger than a half of the data "
            f"({split} / {n - split} images); lower --batch-size or raise --synthetic-size"
        )
    return SearchData(loaders[0], loaders[1], samplers[0], samplers[1], classes, image_size)
