"""The decoder attack's declaration (training-based inversion, attacks/decoder.py)."""
from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

from attacks.registry import AttackSpec
from utils import UserError

AUX = "aux:"


def add_decoder_flags(group) -> None:
    group.add_argument("--attack_epochs", type=int, default=50, help="decoder attack epochs (default: %(default)s)")
    group.add_argument("--gan_AE_type", default="res_normN8C64",
                       help="attack decoder: res_normN{blocks}C{channels} (the published decoder), "
                            "res_normN{N}C{C}_v0 (this project's earlier one) or conv_normN{N}C{C} "
                            "(default: %(default)s)")
    group.add_argument("--attacker_data", default="split", metavar="{split,published,aux:SPEC[CLASSES]}",
                       help="attacker's images: split (train_time: the defender's training split, infer_time: "
                            "90%% of the test set, 10%% of either held out to pick the best decoder), published "
                            "(train_time: every training image, validation split included; infer_time: all 90%%; "
                            "no held-out images) or aux:SPEC (adaptive: the training images of another data set, "
                            "SPEC as --dataset reads it, resized to the victim's input, 10%% held out; a class "
                            "filter such as aux:cifar10[0-4] keeps those classes) (default: %(default)s)")
    group.add_argument("--decoder_heldout_bn", default="eval", choices=["eval", "train"],
                       help="decoder mode in the per-epoch held-out pass: eval, or train as published (batch "
                            "statistics, and the held-out images update BatchNorm's running statistics) "
                            "(default: %(default)s)")


def parse_classes(text: str, flag: str) -> tuple:
    """'0-4' or '0,2,5' (or a mix) -> sorted class indices; one error line otherwise."""
    out: set = set()
    for part in (p.strip() for p in str(text).split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise UserError(f"bad class list '{text}' in {flag}; use e.g. 0-4 or 0,2,5")
        out.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return tuple(sorted(out))


def parse_attacker_data(value) -> tuple:
    """("split" | "published" | "aux", data spec or None, classes or None), checked."""
    value = str(value or "split")
    if value in ("split", "published"):
        return value, None, None
    if not value.startswith(AUX) or not value[len(AUX):].strip():
        raise UserError(f"bad --attacker_data '{value}'; use split, published or aux:SPEC (SPEC as --dataset "
                        "reads it, e.g. aux:cifar100, aux:facescrub, aux:cifar10[0-4], aux:npz:/path/x.npz)")
    spec = value[len(AUX):].strip()
    m = re.fullmatch(r"(.*?)\[([^\]]*)\]", spec)
    if m:
        return "aux", m.group(1).strip(), parse_classes(m.group(2), "--attacker_data")
    return "aux", spec, None


@functools.lru_cache(maxsize=16)
def _digest_files(files: tuple) -> str:
    h = hashlib.sha256()
    for rel, path, _size, _mtime in files:
        h.update(rel.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def data_digest(spec: str, data_root) -> str:
    """A digest of the files a path-named data set (npz:, imagefolder:) reads, so changed contents under
    the same name make other results; "" for the project's named data sets, fixed by their name."""
    kind, _, rest = spec.partition(":")
    if kind not in ("npz", "imagefolder"):
        return ""
    files = []
    for part in rest.split(","):
        path = Path(part.strip()).expanduser()
        if not path.is_absolute() and not path.exists() and data_root:
            path = Path(data_root) / path
        if path.is_file():
            files.append((path.name, str(path)))
        elif path.is_dir():
            files += sorted((str(Path(d, f).relative_to(path)), os.path.join(d, f))
                            for d, _, names in os.walk(path) for f in names)
    # size and mtime join the cache key, so a file rewritten in place is read again
    stats = tuple((rel, path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for rel, path in files)
    return _digest_files(stats) if stats else ""


def key_extras(cfg: dict) -> dict:
    kind, spec, _ = parse_attacker_data(cfg.get("attacker_data"))
    digest = data_digest(spec, cfg.get("data_root")) if kind == "aux" else ""
    return {"attacker_data_digest": digest} if digest else {}


def check(cfg: dict) -> None:
    parse_attacker_data(cfg.get("attacker_data"))


# Decoder 2: res_normN{N}C{C} became the published decoder.
SPEC = AttackSpec(name="decoder", add_flags=add_decoder_flags, factory="attacks.decoder:from_settings", version=2,
                  ranges={"attack_epochs": (1, True)}, summary="decoder (training-based)", check=check,
                  key_extras=key_extras)
