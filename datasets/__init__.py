"""Datasets: a registry of loaders, explicit data roles, and an on-device batch loader.

    bundle = load_dataset("cifar10", "/work/shared/data")
    loader = BatchLoader(bundle.train, 128, bundle.mean, bundle.std, device, shuffle=True, augment=True,
                         dataset=bundle.name, seed=seed)

Names: cifar10, cifar100, facescrub, tinyimagenet, digits, `npz:<file>`, `npz:<train>,<test>`,
`imagefolder:<dir>` (see each module's docstring for the folder layout it expects). For cifar10,
`<data_root>/cifar10_subset/{train_*,test_*}.npz` (the shared small subset) is used when the full
torchvision folder is absent.

Roles: `test` is the data set's own test split (reported accuracy). With select_on="val", `val` is a
seeded random `val_fraction` of the training set, removed from `train`; with select_on="test", `val`
is None and `train` is the whole training set (the paper code's protocol). limit_train / limit_test keep
a seeded random subset of that many images (in source order) and are applied before the val split.
Normalisation: the paper code's mean/std for cifar10/100, tinyimagenet and facescrub;
for digits and bring-your-own data, computed from all training images before any limit or val split,
so a data set's normalisation does not depend on the seed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from utils import UserError

from .base import DataBundle, RawData, TensorSplit, generator, random_limit, split_fraction
from .cifar import load_cifar
from .custom import load_imagefolder, load_npz
from .digits import load_digits_data
from .facescrub import load_facescrub
from .loader import BatchLoader
from .stats import FIXED_STATS, compute_stats
from .tinyimagenet import load_tinyimagenet

__all__ = ["load_dataset", "DATASETS", "DATASET_PREFIXES", "SELECT_ON", "BatchLoader", "TensorSplit",
           "DataBundle"]

# name -> loader(data_root, download) -> RawData
DATASETS: dict[str, Callable[..., RawData]] = {
    "cifar10": lambda root, download: load_cifar("cifar10", root, download),
    "cifar100": lambda root, download: load_cifar("cifar100", root, download),
    "facescrub": load_facescrub,
    "tinyimagenet": load_tinyimagenet,
    "digits": load_digits_data,
}
# Bring-your-own forms: prefix -> loader(spec_after_prefix, data_root) -> RawData
DATASET_PREFIXES: dict[str, Callable[..., RawData]] = {"npz:": load_npz, "imagefolder:": load_imagefolder}
SELECT_ON = ("val", "test")


def _choices() -> str:
    return ", ".join(list(DATASETS) + ["npz:<file>", "npz:<train>,<test>", "imagefolder:<dir>"])


def _check_limit(value, flag: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise UserError(f"{flag} must be a positive whole number of images, got {value!r}; omit it to use all")
    return int(value)


def load_dataset(name: str, data_root, val_fraction: float = 0.1, select_on: str = "val", seed: int = 0,
                 download: bool = True, limit_train: Optional[int] = None,
                 limit_test: Optional[int] = None, num_classes: Optional[int] = None) -> DataBundle:
    """Load a data set by name and assign its roles (train / val / test); see the module docstring."""
    if select_on not in SELECT_ON:
        raise UserError(f"unknown select_on '{select_on}'; choose one of: {', '.join(SELECT_ON)}")
    if select_on == "val" and not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive) with select_on=val, got {val_fraction!r}; "
                        "use select_on=test to select on the test set instead")
    limit_train = _check_limit(limit_train, "limit_train")
    limit_test = _check_limit(limit_test, "limit_test")
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"no dataset name given; choose one of: {_choices()}")
    name = name.strip()
    key = name.lower()
    prefix = next((p for p in DATASET_PREFIXES if key.startswith(p)), None)
    if prefix is not None:
        raw = DATASET_PREFIXES[prefix](name[len(prefix):], data_root, num_classes=num_classes or 0)
        name = prefix + name[len(prefix):]
    elif key in DATASETS:
        if data_root is None and key != "digits":  # digits ships with scikit-learn
            raise UserError(f"dataset '{key}' needs a data root; pass --data_root")
        raw = DATASETS[key](Path(data_root) if data_root is not None else None, download)
        name = key
    else:
        raise UserError(f"unknown dataset '{name}'; choose one of: {_choices()}")

    if num_classes and num_classes != raw.num_classes:
        raise UserError(f"--num_classes {num_classes} but {name} has {raw.num_classes} classes; omit --num_classes")
    mean, std = FIXED_STATS.get(name, (raw.mean, raw.std))
    if mean is None or std is None:
        mean, std = compute_stats(raw.train.x)

    train = random_limit(raw.train, limit_train, generator(seed, "limit_train"))
    test = random_limit(raw.test, limit_test, generator(seed, "limit_test"))
    val = None
    if select_on == "val":
        train, val = split_fraction(train, float(val_fraction), generator(seed, "val"), "a validation split")
    return DataBundle(name=name, num_classes=int(raw.num_classes), image_size=raw.image_size,
                      mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                      train=train, val=val, test=test, class_names=raw.class_names)
