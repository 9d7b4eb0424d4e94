"""datasets/: loading, data roles, validation errors and the on-device BatchLoader (fast, CPU)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image

from datasets import DATASETS, BatchLoader, DataBundle, TensorSplit, load_dataset
from datasets.augment import DEFAULT_POLICY, apply_thetas, sample_thetas
from utils import UserError, normalize

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = SHARED_DATA
SUBSET = DATA_ROOT / "cifar10_subset"
TRAIN_NPZ, TEST_NPZ = SUBSET / "train_4000.npz", SUBSET / "test_1000.npz"
needs_data = pytest.mark.skipif(not TRAIN_NPZ.is_file() or not TEST_NPZ.is_file(),
                                reason=f"shared CIFAR-10 subset not found under {SUBSET}; set CEM_DATA_ROOT")


@pytest.fixture(scope="module")
def cifar():
    if not TRAIN_NPZ.is_file():
        pytest.skip(f"shared CIFAR-10 subset not found under {SUBSET}; set CEM_DATA_ROOT")
    return load_dataset("cifar10", DATA_ROOT, download=False)


@pytest.fixture
def small_split():
    g = torch.Generator().manual_seed(1)
    return TensorSplit(torch.randint(0, 256, (37, 3, 16, 16), generator=g, dtype=torch.uint8),
                       torch.arange(37) % 5)


# ---------------------------------------------------------------- loading and roles

@needs_data
def test_cifar10_subset_by_name(cifar):
    assert isinstance(cifar, DataBundle) and cifar.name == "cifar10"
    assert (cifar.num_classes, cifar.image_size) == (10, 32)
    assert (len(cifar.train), len(cifar.val), len(cifar.test)) == (3600, 400, 1000)
    assert cifar.train.x.shape[1:] == (3, 32, 32) and cifar.train.x.dtype == torch.uint8
    assert cifar.train.y.dtype == torch.int64 and cifar.test.y.unique().tolist() == list(range(10))
    assert cifar.class_names[0] == "airplane" and cifar.class_names[-1] == "truck"
    # the paper code's normalisation (official_ckpt_layouts/README.md), so imported models see their inputs
    assert cifar.mean == (0.4914, 0.4822, 0.4465) and cifar.std == (0.247, 0.243, 0.261)
    # Train and val partition the training file: no image in both.
    raw = np.load(TRAIN_NPZ)["x"]
    joined = torch.cat([cifar.train.x, cifar.val.x]).flatten(1)
    assert joined.unique(dim=0).shape[0] == 4000 == len(raw)


@needs_data
def test_cifar10_subset_via_npz_pair_and_roles():
    b = load_dataset(f"npz:{TRAIN_NPZ},{TEST_NPZ}", None, seed=3)
    assert (len(b.train), len(b.val), len(b.test), b.num_classes) == (3600, 400, 1000, 10)
    assert b.train.x.shape[1:] == (3, 32, 32) and b.class_names[1] == "automobile"
    assert all(0.2 < m < 0.6 for m in b.mean) and all(0.15 < s < 0.35 for s in b.std)
    # Relative names resolve under data_root.
    rel = load_dataset("npz:cifar10_subset/train_4000.npz,cifar10_subset/test_1000.npz", DATA_ROOT, seed=3)
    assert torch.equal(rel.val.x, b.val.x)
    whole = load_dataset(f"npz:{TRAIN_NPZ},{TEST_NPZ}", None, select_on="test")
    assert whole.val is None and len(whole.train) == 4000
    other = load_dataset(f"npz:{TRAIN_NPZ},{TEST_NPZ}", None, seed=4)
    assert not torch.equal(other.val.y, b.val.y)  # val depends on the seed...
    again = load_dataset(f"npz:{TRAIN_NPZ},{TEST_NPZ}", None, seed=3)
    assert torch.equal(again.val.x, b.val.x)  # ...and only on the seed
    lim = load_dataset(f"npz:{TRAIN_NPZ},{TEST_NPZ}", None, limit_train=500, limit_test=200, val_fraction=0.2)
    assert (len(lim.train), len(lim.val), len(lim.test)) == (400, 100, 200)
    assert lim.mean == b.mean  # stats come from all training images, not the limited subset


@needs_data
def test_single_npz_holds_out_fixed_test():
    a = load_dataset(f"npz:{TRAIN_NPZ}", None, seed=0)
    b = load_dataset(f"npz:{TRAIN_NPZ}", None, seed=1)
    assert len(a.test) == 800 and len(a.train) + len(a.val) == 3200
    assert torch.equal(a.test.x, b.test.x)
    c = load_dataset(f"npz:{TRAIN_NPZ},0.25", None, seed=0)
    assert len(c.test) == 1000 and len(c.train) + len(c.val) == 3000
    with pytest.raises(UserError, match="between 0 and 1"):
        load_dataset(f"npz:{TRAIN_NPZ},1.5", None)


def test_digits():
    b = load_dataset("digits", None, download=False)
    assert (b.num_classes, b.image_size) == (10, 32)
    assert len(b.train) + len(b.val) + len(b.test) == 1797 and len(b.test) == 359
    assert b.train.x.shape[1:] == (3, 32, 32) and b.train.x.dtype == torch.uint8
    x = b.train.x.float()
    assert torch.equal(x[:, 0], x[:, 1]) and x.max() == 255 and x.min() == 0
    # Real strokes, not noise: neighbouring pixels are strongly correlated.
    flat = x[:, 0]
    c = torch.corrcoef(torch.stack([flat[:, :, :-1].flatten(), flat[:, :, 1:].flatten()]))[0, 1]
    assert c > 0.9


def test_registry_names():
    assert {"cifar10", "cifar100", "facescrub", "tinyimagenet", "digits"} <= set(DATASETS)


def _save_img(path: Path, size: int, seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def test_fabricated_facescrub(tmp_path):
    base = tmp_path / "facescrub" / "48x48"
    for i, who in enumerate(["Zoe_A", "Adam_B", "Kim_C"]):
        for k in range(4):
            _save_img(base / "train" / who / f"{k}.jpg", 48, 10 * i + k)
        _save_img(base / "validate" / who / "v.jpg", 50, 100 + i)  # off-size: resized to 48
    b = load_dataset("facescrub", tmp_path, val_fraction=0.25)
    assert (b.num_classes, b.image_size, len(b.train), len(b.val), len(b.test)) == (3, 48, 9, 3, 3)
    assert b.class_names == ["Adam_B", "Kim_C", "Zoe_A"] and b.test.y.tolist() == [0, 1, 2]
    assert b.mean == (0.5708, 0.5905, 0.4272) and b.std == (0.2058, 0.2275, 0.2098)  # the paper code's


def test_fabricated_tinyimagenet(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tcat\n")
    for i, w in enumerate(wnids):
        for k in range(3):
            _save_img(base / "train" / w / "images" / f"{w}_{k}.JPEG", 64, 10 * i + k, "L" if k == 0 else "RGB")
    lines = []
    for k, w in enumerate(["n02", "n01", "n02"]):
        _save_img(base / "val" / "images" / f"val_{k}.JPEG", 64, 50 + k)
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    b = load_dataset("tinyimagenet", tmp_path, select_on="test")
    assert (b.num_classes, b.image_size, len(b.train), len(b.test)) == (2, 64, 6, 3)
    assert b.class_names == ["goldfish", "cat"] and b.test.y.tolist() == [0, 1, 1]  # regrouped per class
    assert b.train.x.shape[1:] == (3, 64, 64)


def test_imagefolder_both_layouts(tmp_path):
    for split, n in (("train", 5), ("test", 2)):
        for c in ("a", "b"):
            for k in range(n):
                _save_img(tmp_path / "tt" / split / c / f"{k}.png", 20, k)
    b = load_dataset(f"imagefolder:{tmp_path / 'tt'}", None, select_on="test")
    assert (b.num_classes, b.image_size, len(b.train), len(b.test), b.class_names) == (2, 20, 10, 4, ["a", "b"])
    for c in ("x", "y"):
        for k in range(10):
            _save_img(tmp_path / "one" / c / f"{k}.png", 12, k)
    b = load_dataset(f"imagefolder:{tmp_path / 'one'}", None)
    assert len(b.test) == 4 and len(b.train) + len(b.val) == 16 and b.image_size == 12


# ---------------------------------------------------------------- user errors

def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


GOOD_X = np.zeros((6, 8, 8, 3), np.uint8)
GOOD_Y = np.arange(6) % 2


@pytest.mark.parametrize("case, match", [
    ("missing_file", "not found"),
    ("no_y", "missing array"),
    ("float_x", "uint8"),
    ("lengths", "same length"),
    ("channels", "shape"),
    ("non_square", "square"),
    ("unknown_name", "unknown dataset"),
    ("bad_select_on", "select_on"),
    ("bad_val_fraction", "val_fraction"),
    ("missing_folder", "not found"),
    ("facescrub_missing", "facescrub is not under"),
    ("tiny_missing", "tinyimagenet is not under"),
    ("cifar_missing", "cifar10 is not under"),
    ("not_npz", "np.savez"),
    ("bad_limit", "limit_train"),
])
def test_user_errors(tmp_path, case, match):
    spec, kw = None, {}
    if case == "missing_file":
        spec = f"npz:{tmp_path / 'nope.npz'}"
    elif case == "no_y":
        spec = _npz(tmp_path / "a.npz", x=GOOD_X)
    elif case == "float_x":
        spec = _npz(tmp_path / "a.npz", x=GOOD_X.astype(np.float32), y=GOOD_Y)
    elif case == "lengths":
        spec = _npz(tmp_path / "a.npz", x=GOOD_X, y=GOOD_Y[:4])
    elif case == "channels":
        spec = _npz(tmp_path / "a.npz", x=np.zeros((6, 8, 8, 4), np.uint8), y=GOOD_Y)
    elif case == "non_square":
        spec = _npz(tmp_path / "a.npz", x=np.zeros((6, 8, 9, 3), np.uint8), y=GOOD_Y)
    elif case == "unknown_name":
        spec = "mnist"
    elif case in ("bad_select_on", "bad_val_fraction", "bad_limit"):
        spec = _npz(tmp_path / "a.npz", x=GOOD_X, y=GOOD_Y)
        kw = {"bad_select_on": {"select_on": "train"}, "bad_val_fraction": {"val_fraction": 1.5},
              "bad_limit": {"limit_train": 0}}[case]
    elif case == "missing_folder":
        spec = f"imagefolder:{tmp_path / 'nowhere'}"
    elif case == "facescrub_missing":
        spec = "facescrub"
    elif case == "tiny_missing":
        spec = "tinyimagenet"
    elif case == "cifar_missing":
        spec, kw = "cifar10", {"download": False}
    elif case == "not_npz":
        (tmp_path / "a.npz").write_text("hello")
        spec = f"npz:{tmp_path / 'a.npz'}"
    with pytest.raises(UserError, match=match):
        load_dataset(spec, tmp_path, **kw)


def test_grayscale_npz_accepted(tmp_path):
    spec = _npz(tmp_path / "g.npz", x=np.full((10, 8, 8), 7, np.uint8), y=np.arange(10) % 3)
    b = load_dataset(spec, None, select_on="test")
    assert b.train.x.shape[1:] == (3, 8, 8) and b.num_classes == 3


def test_cli_check():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bad = subprocess.run([sys.executable, "-m", "datasets", "check", "cifar10", "--data_root", "/nonexistent_cem",
                          "--no-download"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cifar10 is not under" in bad.stderr and "Traceback" not in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "datasets", "check", "digits", "--no-download"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("digits: train 1294, val 144, test 359, 10 classes")


# ---------------------------------------------------------------- BatchLoader and augmentation

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_plain_is_exact_normalisation(small_split):
    loader = BatchLoader(small_split, 10, MEAN, STD, "cpu")
    assert len(loader) == 4
    batches = list(loader)
    assert [len(y) for _, y in batches] == [10, 10, 10, 7]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (37, 3, 16, 16)
    assert torch.equal(x, normalize(small_split.x.float() / 255.0, MEAN, STD))
    assert torch.equal(torch.cat([b[1] for b in batches]), small_split.y)
    assert len(BatchLoader(small_split, 10, MEAN, STD, "cpu", drop_last=True)) == 3


def test_loader_shuffle_augment_repeatable(small_split):
    mk = lambda: BatchLoader(small_split, 8, MEAN, STD, "cpu", shuffle=True, augment=True, dataset="cifar10", seed=5)
    a, b = mk(), mk()
    e1, e1_again, e2 = _epoch(a, 1), _epoch(b, 1), _epoch(a, 2)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e1, e1_again))
    assert not torch.equal(torch.cat([p[1] for p in e1]), torch.cat([p[1] for p in e2]))
    # Every image exactly once per epoch.
    assert sorted(torch.cat([p[1] for p in e1]).tolist()) == sorted(small_split.y.tolist())
    x = torch.cat([p[0] for p in e1])
    assert x.shape == (37, 3, 16, 16) and x.dtype == torch.float32 and torch.isfinite(x).all()
    # Augmentation changes pixels: compare with the same order un-augmented.
    plain = BatchLoader(small_split, 8, MEAN, STD, "cpu", shuffle=True, seed=5)
    y_plain = torch.cat([p[1] for p in _epoch(plain, 1)])
    assert torch.equal(y_plain, torch.cat([p[1] for p in e1]))
    assert not torch.allclose(torch.cat([p[0] for p in _epoch(plain, 1)]), x)
    other_seed = BatchLoader(small_split, 8, MEAN, STD, "cpu", shuffle=True, augment=True, seed=6)
    assert not torch.equal(torch.cat([p[1] for p in _epoch(other_seed, 1)]), y_plain)


def test_loader_draw_block_keeps_augmentations_whatever_the_batch(small_split):
    mk = lambda bs, block: BatchLoader(small_split, bs, MEAN, STD, "cpu", augment=True, seed=5, stream="s",
                                       draw_block=block)
    ref = torch.cat([x for x, _ in _epoch(mk(8, None), 1)])  # blocks of the batch: the old behaviour
    for bs in (3, 8, 16, 64):
        got = [x for x, _ in _epoch(mk(bs, 8), 1)]
        assert len(got) == -(-37 // bs) and torch.equal(torch.cat(got), ref), f"batch {bs}"
    # without a fixed block, another batch size draws other augmentations
    assert not torch.equal(torch.cat([x for x, _ in _epoch(mk(16, None), 1)]), ref)


def test_augment_geometry_exact():
    x = torch.rand(2, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    theta = sample_thetas(2, 16, DEFAULT_POLICY, gen)
    assert theta.shape == (2, 2, 3)
    # Pure integer shift + flip reproduces pad-then-crop-then-flip exactly (no blur).
    pad, dx, dy = 2, 3, 1  # crop window top-left (dy, dx) in the padded image
    t = torch.tensor([[[-1.0, 0.0, (dx - pad) * 2 / 16], [0.0, 1.0, (dy - pad) * 2 / 16]]]).repeat(2, 1, 1)
    out = apply_thetas(x, t)
    ref = torch.nn.functional.pad(x, (pad,) * 4)[:, :, dy:dy + 16, dx:dx + 16].flip(-1)
    assert torch.allclose(out, ref, atol=1e-6)
    # Rotation: centre pixel of an odd-sized image stays put.
    odd = torch.rand(1, 3, 15, 15)
    ang = torch.tensor(0.2)
    rot = torch.tensor([[[ang.cos(), -ang.sin(), 0.0], [ang.sin(), ang.cos(), 0.0]]])
    assert torch.allclose(apply_thetas(odd, rot)[..., 7, 7], odd[..., 7, 7], atol=1e-6)


@needs_data
def test_loader_on_cifar(cifar):
    loader = BatchLoader(cifar.train, 256, cifar.mean, cifar.std, "cpu", shuffle=True, augment=True,
                         dataset=cifar.name, seed=0, drop_last=True)
    assert len(loader) == 3600 // 256
    x, y = next(iter(loader))
    assert x.shape == (256, 3, 32, 32) and y.shape == (256,) and y.dtype == torch.int64
    assert -0.5 < x.mean().item() < 0.5  # roughly normalised (zero fill pulls it a little negative)
    # Loaders over one split share its device copy.
    again = BatchLoader(cifar.train, 64, cifar.mean, cifar.std, "cpu")
    assert again.x is loader.x


def test_cifar_torchvision_layout_is_converted(tmp_path, monkeypatch):
    """The full-data path: torchvision's arrays (N,32,32,3) become (N,3,32,32) with names and labels."""
    import datasets.cifar as cifar_mod

    class FakeCIFAR:
        def __init__(self, root, train, download):
            n = 20 if train else 10
            self.data = np.arange(n * 32 * 32 * 3, dtype=np.int64).reshape(n, 32, 32, 3).astype(np.uint8)
            self.targets = [i % 10 for i in range(n)]
            self.classes = [f"c{i}" for i in range(10)]

    (tmp_path / "cifar-10-batches-py").mkdir()
    monkeypatch.setattr(cifar_mod, "_torchvision_class", lambda name: FakeCIFAR)
    b = load_dataset("cifar10", tmp_path, select_on="test")
    assert (len(b.train), len(b.test), b.class_names[3]) == (20, 10, "c3")
    ref = FakeCIFAR(None, True, False).data
    assert torch.equal(b.train.x, torch.from_numpy(ref).permute(0, 3, 1, 2))


def _bomb_png(path, side=20000):
    """A grey PNG whose header declares side² pixels, in a few hundred kB (zeros compress to nothing)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"\x00" * (side + 1)) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_hostile_or_lossy_images_are_refused_by_name(tmp_path):
    from datasets.imagefiles import read_images

    _bomb_png(tmp_path / "bomb.png", 9000)  # 81M pixels: under Pillow's own error limit, over ours
    with pytest.raises(UserError, match="declares 9000x9000 pixels"):
        read_images([tmp_path / "bomb.png"])
    deep = Image.fromarray((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60))  # 16-bit, up to 61k
    deep.save(tmp_path / "deep.png")
    with pytest.raises(UserError, match="mode I"):
        read_images([tmp_path / "deep.png"])


@pytest.mark.parametrize("mode", ["P", "LA", "L", "CMYK", "RGBA"])
def test_other_8bit_modes_read_as_their_rgb(tmp_path, mode):
    from datasets.imagefiles import read_images

    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    with Image.open(path) as again:
        want = np.asarray(again.convert("RGB"))
    assert np.array_equal(read_images([path])[0], want)
