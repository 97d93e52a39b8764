"""Datasets, offline first: one registry, local files before any download, splits, OOD sets, seeded loaders.

from randsparse import data
train = data.build("fashion_mnist", split="train")          # 54 000 images, augmented
val = data.build("fashion_mnist", split="val")              # the 6 000 carved from train
loader = data.make_loader(train, 128, shuffle=True, seed=0)
ood = data.build("mnist", split="test", like="fashion_mnist")
"""

from randsparse.data import ood as _ood  # noqa: F401  (registers the noise sets)
from randsparse.data import sets as _sets  # noqa: F401  (registers the datasets)
from randsparse.data.build import SPLITS, build, carve_sizes, dataset_info, split_indices
from randsparse.data.datasets import FileImageDataset, SeededIndices, TensorImageDataset
from randsparse.data.loaders import make_loader
from randsparse.data.lookup import ENV_VAR, Location, locate
from randsparse.data.ood import OOD_PAIRS, build_ood, ood_sets
from randsparse.data.registry import Augmentation, DatasetInfo, Recipe, available_datasets, register_dataset
from randsparse.data.sampling import EpochBatchSampler, EpochSampler

__all__ = [
    "ENV_VAR",
    "OOD_PAIRS",
    "SPLITS",
    "Augmentation",
    "DatasetInfo",
    "EpochBatchSampler",
    "EpochSampler",
    "FileImageDataset",
    "Location",
    "Recipe",
    "SeededIndices",
    "TensorImageDataset",
    "available_datasets",
    "build",
    "build_ood",
    "carve_sizes",
    "dataset_info",
    "locate",
    "make_loader",
    "ood_sets",
    "register_dataset",
    "split_indices",
]
