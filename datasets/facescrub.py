"""FaceScrub as prepared by the ResSFL/CEM code: `<root>/facescrub/48x48/{train,validate}/<identity>/*.jpg`.

Identities (classes) are the train folder's subfolders, sorted (530 in the full set). Images are read
as 48x48 RGB; any other size is resized to 48 px.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils import UserError

from .base import RawData, images_from_array
from .imagefiles import class_dirs, list_class_tree, read_images

IMAGE_SIZE = 48


def _find_root(root: Path) -> Path | None:
    for c in (root / "facescrub" / "48x48", root / "48x48", root):
        if (c / "train").is_dir() and ((c / "validate").is_dir() or (c / "test").is_dir()):
            return c
    return None


def load_facescrub(data_root, download: bool = True) -> RawData:
    root = Path(data_root).expanduser()
    base = _find_root(root)
    if base is None:
        hint = ""
        if (root / "facescrub_subset" / "faces_502.npz").is_file():
            subset = root / "facescrub_subset" / "faces_502.npz"
            hint = f" (the small 32 px subset here loads as --dataset npz:{subset})"
        raise UserError(f"facescrub is not under '{root}': expected '{root}/facescrub/48x48/train/<identity>/*.jpg' "
                        f"and '.../validate/<identity>/*.jpg'; it cannot be downloaded automatically, so prepare "
                        f"it as in the ResSFL code and pass its parent as --data_root{hint}")
    test_dir = base / "validate" if (base / "validate").is_dir() else base / "test"
    classes = class_dirs(base / "train")
    unknown = sorted(set(class_dirs(test_dir)) - set(classes))
    if unknown:
        raise UserError(f"'{test_dir}' has identities missing from train: {unknown[:5]}; "
                        "train and test must use the same identity folders")
    splits = []
    for d in (base / "train", test_dir):
        files, labels = list_class_tree(d, classes)
        if not files:
            raise UserError(f"no images in '{d}/<identity>/'; expected one subfolder of .jpg faces per identity")
        splits.append(images_from_array(read_images(files, IMAGE_SIZE), np.asarray(labels), str(d)))
    return RawData(splits[0], splits[1], len(classes), classes)
