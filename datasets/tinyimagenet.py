"""Tiny ImageNet: `<root>/tiny-imagenet-200/` as distributed (train/<wnid>/images/*.JPEG, val/images/*
with val/val_annotations.txt). The labelled val set serves as the test split; it is regrouped per class
in memory from the annotation file, so the folder is used unmodified (and may be read-only).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils import UserError

from .base import RawData, images_from_array
from .imagefiles import class_dirs, is_image, list_class_tree, read_images

IMAGE_SIZE = 64
FOLDER = "tiny-imagenet-200"


def _read_words(base: Path, wnids: list[str]) -> list[str] | None:
    words = base / "words.txt"
    if not words.is_file():
        return None
    table = {}
    for line in words.read_text(errors="replace").splitlines():
        if "\t" in line:
            k, v = line.split("\t", 1)
            table[k] = v.split(",")[0].strip()
    return [table.get(w, w) for w in wnids]


def _val_files(base: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    ann = base / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise UserError(f"'{ann}' is missing; the tiny-imagenet-200 folder looks incomplete, unpack it again")
    files, labels = [], []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or cols[1] not in index:
            raise UserError(f"{ann}:{n}: expected '<file>\\t<wnid>\\t...' with a wnid from train/, got {line[:80]!r}")
        path = base / "val" / "images" / cols[0]
        if not is_image(path):
            raise UserError(f"{ann}:{n}: image '{path}' is missing")
        files.append(path)
        labels.append(index[cols[1]])
    # Regroup per class (stable within a class) so the test split is ordered like an ImageFolder one.
    order = sorted(range(len(files)), key=lambda i: (labels[i], files[i].name))
    return [files[i] for i in order], [labels[i] for i in order]


def load_tinyimagenet(data_root, download: bool = True) -> RawData:
    root = Path(data_root).expanduser()
    base = root / FOLDER if (root / FOLDER).is_dir() else root
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise UserError(f"tinyimagenet is not under '{root}': expected '{root / FOLDER}/train/<wnid>/images/*.JPEG' "
                        f"and '.../val/val_annotations.txt'; download tiny-imagenet-200.zip from "
                        f"http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it there, and pass --data_root")
    wnids_file = base / "wnids.txt"
    if wnids_file.is_file():
        wnids = sorted(w.strip() for w in wnids_file.read_text().splitlines() if w.strip())
    else:
        wnids = class_dirs(base / "train")
    index = {w: i for i, w in enumerate(wnids)}
    train_files, train_labels = list_class_tree(base / "train", wnids, sub="images")
    if not train_files:
        raise UserError(f"no images in '{base / 'train'}/<wnid>/images/'; the folder looks incomplete, unpack it again")
    test_files, test_labels = _val_files(base, index)
    if not test_files:
        raise UserError(f"'{base / 'val' / 'val_annotations.txt'}' lists no images")
    train = images_from_array(read_images(train_files, IMAGE_SIZE), np.asarray(train_labels), str(base / "train"))
    test = images_from_array(read_images(test_files, IMAGE_SIZE), np.asarray(test_labels), str(base / "val"))
    return RawData(train, test, len(wnids), _read_words(base, wnids))
