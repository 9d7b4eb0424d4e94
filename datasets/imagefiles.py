"""Reading folders of image files into uint8 arrays (shared by facescrub, tinyimagenet, imagefolder)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp"}


def is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def class_dirs(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def list_class_tree(root: Path, classes: Sequence[str], sub: str = "") -> tuple[list[Path], list[int]]:
    """Files of <root>/<class>/<sub>/* for each class, labelled by position in `classes`."""
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name / sub if sub else root / name
        if not folder.is_dir():
            continue
        found = sorted(p for p in folder.iterdir() if is_image(p))
        files += found
        labels += [label] * len(found)
    return files, labels


# Modes Pillow turns into 8-bit RGB faithfully. 16-bit and float images (I, I;16, F) would be clipped at
# 255 (mostly white), LAB/HSV converted channel by channel as if they were RGB: refused, not guessed.
RGB_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
# A decoded image of this many pixels is 200 MB of RGB; a decompression bomb declares far more in a few kB.
MAX_PIXELS = 64 * 2**20


def _read_one(path: Path, size: Optional[int]) -> np.ndarray:
    try:
        with Image.open(path) as im:  # reads the header only: size and mode are known before decoding
            if im.width * im.height > MAX_PIXELS:
                raise UserError(f"image '{path}' declares {im.width}x{im.height} pixels, more than {MAX_PIXELS:,} "
                                "(a decompression bomb, or far larger than any training image); remove or shrink it")
            if im.mode not in RGB_MODES:
                raise UserError(f"image '{path}' is in mode {im.mode} (16-bit, float or another colour space), which "
                                "would not become the same 8-bit RGB picture; convert it to 8-bit RGB first")
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image '{path}' ({str(e)[:160]}); remove or replace the file") from None


def read_images(files: Sequence[Path], size: Optional[int] = None) -> np.ndarray:
    """Decode files into one (N,H,W,3) uint8 array.

    size=None requires all images to be square and of one size (bring-your-own data is not resized
    behind the user's back); otherwise every image is resized to size x size.
    Decoding is threaded: Pillow releases the GIL while decoding, and there can be 100k small files.
    """
    if not files:
        raise UserError("no image files found")
    first = _read_one(Path(files[0]), size)
    h, w = first.shape[:2]
    if size is None and h != w:
        raise UserError(f"images must be square; '{files[0]}' is {w}x{h}. Crop or resize the images first")
    out = np.empty((len(files), h, w, 3), dtype=np.uint8)
    out[0] = first

    def work(i: int) -> None:
        img = _read_one(Path(files[i]), size)
        if img.shape != first.shape:
            raise UserError(f"all images must have one size: '{files[i]}' is {img.shape[1]}x{img.shape[0]}, "
                            f"'{files[0]}' is {w}x{h}. Resize them to one size first")
        out[i] = img

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list() re-raises the first worker exception here.
        list(pool.map(work, range(1, len(files))))
    return out
