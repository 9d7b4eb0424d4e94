"""Bring-your-own data: `npz:<file>`, `npz:<train>,<test>` and `imagefolder:<dir>`.

npz files hold `x` uint8 (N,H,W,3) (or grayscale (N,H,W)) and integer labels `y`; an optional
string array `classes` gives class names. Relative paths are looked up from the working directory
first, then under data_root. With a single file (or a single class tree for imagefolder) a fixed
random 20% becomes the test split; its seed does not depend on the run seed, so every run of a
sweep reports accuracy on the same images.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from utils import UserError, resolve_path

from .base import RawData, TensorSplit, class_names_or_none, generator, images_from_array, split_fraction
from .imagefiles import class_dirs, list_class_tree, read_images

TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0


def read_npz(path: Path) -> tuple[TensorSplit, Optional[list]]:
    try:
        with np.load(path, allow_pickle=False) as d:
            keys = set(d.files)
            missing = [k for k in ("x", "y") if k not in keys]
            if missing:
                raise UserError(f"{path}: missing array(s) {missing} (has {sorted(keys)}); save images as 'x' "
                                "and labels as 'y', e.g. np.savez(file, x=images, y=labels)")
            x, y = d["x"], d["y"]
            names = d["classes"].tolist() if "classes" in keys and d["classes"].dtype.kind in "US" else None
    except UserError:
        raise
    except ValueError as e:  # object arrays refused by allow_pickle=False
        raise UserError(f"{path}: not a plain .npz file, np.load(allow_pickle=False) refused it ({str(e)[:80]}); "
                        "write it with np.savez from plain numeric/string arrays") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path}: not a readable .npz file ({e}); write it with np.savez") from None
    return images_from_array(x, y, str(path)), names


def _finish(train: TensorSplit, test: TensorSplit, names, source: str, num_classes: int = 0) -> RawData:
    """num_classes 0: the labels decide (every class 0..max must have images, so a stray label fails
    instead of silently adding hundreds of empty classes)."""
    if train.x.shape[1:] != test.x.shape[1:]:
        raise UserError(f"{source}: train images are {tuple(train.x.shape[1:])} but test images are "
                        f"{tuple(test.x.shape[1:])}; both must have the same size")
    top = int(max(train.y.max(), test.y.max()))
    if num_classes and top >= num_classes:
        raise UserError(f"{source}: label {top} found but there are {num_classes} classes "
                        f"(labels 0..{num_classes - 1}); "
                        "fix the labels or pass the right --num_classes")
    if not num_classes:
        present = set(train.y.unique().tolist()) | set(test.y.unique().tolist())
        if len(present) < top + 1:
            raise UserError(f"{source}: labels run up to {top} but only {len(present)} of the classes 0..{top} have "
                            f"images; labels must be 0..C-1 (pass --num_classes C if some classes are truly empty)")
    num_classes = max(num_classes, top + 1)
    return RawData(train, test, num_classes, class_names_or_none(names, num_classes))


def _held_out_test(split: TensorSplit, source: str, fraction: float = TEST_FRACTION) -> tuple[TensorSplit, TensorSplit]:
    return split_fraction(split, fraction, generator(TEST_SPLIT_SEED, "test-split"), f"a test split of {source}")


def _as_fraction(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def load_npz(spec: str, data_root, num_classes: int = 0) -> RawData:
    parts = [s.strip() for s in spec.split(",")]
    if len(parts) not in (1, 2) or not all(parts):
        raise UserError(f"bad dataset 'npz:{spec}'; use npz:<file>, npz:<file>,<test fraction> or "
                        "npz:<train_file>,<test_file>")
    fraction = _as_fraction(parts[1]) if len(parts) == 2 else TEST_FRACTION
    if len(parts) == 2 and fraction is not None:
        if not 0 < fraction < 1:
            raise UserError(f"bad test fraction {parts[1]} in 'npz:{spec}'; use a number between 0 and 1, e.g. 0.2")
        parts = parts[:1]
    paths = [resolve_path(p, data_root, "npz file") for p in parts]
    for p in paths:
        if not p.is_file():
            raise UserError(f"npz file '{p}' is a folder, not a file; name the .npz file itself")
    if len(paths) == 1:
        split, names = read_npz(paths[0])
        train, test = _held_out_test(split, str(paths[0]), fraction)
    else:
        (train, names), (test, test_names) = read_npz(paths[0]), read_npz(paths[1])
        names = names or test_names
    return _finish(train, test, names, f"npz:{spec}", num_classes or (len(names) if names else 0))


def load_imagefolder(spec: str, data_root, num_classes: int = 0) -> RawData:
    """`<dir>/train/<class>/*` and `<dir>/test/<class>/*`, or one `<dir>/<class>/*` tree split 80/20.

    Classes are the train folder's subfolder names, sorted; all images must be square and one size.
    """
    root = resolve_path(spec, data_root, "image folder")
    if not root.is_dir():
        raise UserError(f"imagefolder:'{root}' is not a folder; point it at a folder of class subfolders")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = class_dirs(root / "train")
        extra = sorted(set(class_dirs(root / "test")) - set(classes))
        if extra:
            raise UserError(f"'{root / 'test'}' has classes missing from train: {extra[:5]}; "
                            "every test class needs training images")
        splits = []
        for sub in ("train", "test"):
            files, labels = list_class_tree(root / sub, classes)
            if not files:
                raise UserError(f"no images in '{root / sub}/<class>/'; expected one subfolder of images per class")
            splits.append(_read_split(files, labels))
        return _finish(splits[0], splits[1], classes, f"imagefolder:{spec}", len(classes))
    classes = class_dirs(root)
    files, labels = list_class_tree(root, classes)
    if not files:
        raise UserError(f"no images in '{root}/<class>/' (nor train/ and test/ subfolders); "
                        "expected one subfolder of images per class")
    train, test = _held_out_test(_read_split(files, labels), str(root))
    return _finish(train, test, classes, f"imagefolder:{spec}", len(classes))


def _read_split(files, labels) -> TensorSplit:
    return images_from_array(read_images(files), np.asarray(labels, dtype=np.int64), str(files[0].parent.parent))
