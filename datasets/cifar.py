"""CIFAR-10 / CIFAR-100.

Layouts looked for under data_root, in this order:
1. torchvision's: `<root>/cifar-10-batches-py/` or `<root>/cifar-100-python/` (the full data set);
2. the small-subset layout of the shared data folder: `<root>/cifar10_subset/` (or `cifar100_subset/`)
   holding exactly one `train_*.npz` and one `test_*.npz` (arrays `x` uint8 (N,32,32,3), `y`, and
   optionally `classes`), so `--data_root /work/shared/data` works offline for cifar10;
3. otherwise torchvision downloads the full data into `<root>` when download=True.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils import UserError

from .base import RawData, TensorSplit, class_names_or_none
from .custom import read_npz

_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
# torchvision's base_folder names, spelled out so finding the subset never pays for importing torchvision.
_TV_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _torchvision_class(name: str):
    import torchvision.datasets as tvd

    return tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100


def _subset_files(folder: Path) -> tuple[Path, Path] | None:
    if not folder.is_dir():
        return None
    trains, tests = sorted(folder.glob("train_*.npz")), sorted(folder.glob("test_*.npz"))
    if not trains and not tests:
        return None
    if len(trains) != 1 or len(tests) != 1:
        raise UserError(f"'{folder}' must hold exactly one train_*.npz and one test_*.npz, found "
                        f"{[p.name for p in trains + tests]}; remove the extra files")
    return trains[0], tests[0]


def _load_subset(name: str, files: tuple[Path, Path]) -> RawData:
    train, train_names = read_npz(files[0])
    test, test_names = read_npz(files[1])
    n = _NUM_CLASSES[name]
    for split, path in ((train, files[0]), (test, files[1])):
        if split.x.shape[-1] != 32 or int(split.y.max()) >= n:
            raise UserError(f"{path}: not {name} data (need 32x32 images with labels 0..{n - 1}); "
                            f"use --dataset npz:{path} for other data")
    return RawData(train, test, n, class_names_or_none(train_names or test_names, n))


def _load_torchvision(name: str, root: Path, download: bool) -> RawData:
    cls = _torchvision_class(name)
    try:
        parts = [cls(root=str(root), train=t, download=download) for t in (True, False)]
    except UserError:
        raise
    except Exception as e:  # network errors come in many types (URLError, socket, SSL, HTTP, OSError)
        if (root / _TV_FOLDER[name]).is_dir() and not download:
            raise UserError(f"'{root / _TV_FOLDER[name]}' is incomplete or corrupted ({str(e)[:100]}); delete it "
                            "and download it again") from None
        how = (f"could not be downloaded ({type(e).__name__}: {str(e)[:100]})" if download
               else "downloading is switched off")
        raise UserError(f"{name} is not under '{root}' (expected '{root / _TV_FOLDER[name]}' or "
                        f"'{root / (name + '_subset')}/{{train_*,test_*}}.npz') and {how}; download it on a "
                        "machine with internet access and copy it there, or pass the right --data_root") from None
    splits = [TensorSplit(torch.from_numpy(np.ascontiguousarray(p.data)).permute(0, 3, 1, 2).contiguous(),
                          torch.as_tensor(p.targets, dtype=torch.int64)) for p in parts]
    return RawData(splits[0], splits[1], _NUM_CLASSES[name], list(parts[0].classes))


def load_cifar(name: str, data_root: str | Path, download: bool = True) -> RawData:
    root = Path(data_root).expanduser()
    if (root / _TV_FOLDER[name]).is_dir():
        return _load_torchvision(name, root, download)
    subset = _subset_files(root / f"{name}_subset")
    if subset is not None:
        return _load_subset(name, subset)
    if download:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{name} is not under '{root}' and cannot be downloaded there ({e.strerror}); "
                            "pass a writable --data_root or one that holds the data") from None
    return _load_torchvision(name, root, download)
