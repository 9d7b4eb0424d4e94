"""Issue 18: run folders are shared and attacked by others, so every checkpoint is read with
weights_only=True through utils.load_checkpoint. A file that pickles code is refused through every
entry point that reads one: one `error:` line naming the file, exit status 2, and the code never runs."""
import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils import UnsafeCheckpoint, UserError, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs exec, which creates `marker`: proof that loading ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


def plant(path: Path, marker: Path) -> None:
    """The whole file is the payload: code that loads it fails right after running it, so a loader
    that regresses to weights_only=False fails this test in seconds, not after a GAN's 150 epochs."""
    torch.save(Payload(marker), path)


def entry_point(script: str, *args, cwd: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def unfinish(run: Path) -> None:
    """Makes the copied run look killed after its last checkpoint, so --resume reads last.pt."""
    m = json.loads((run / "metrics.json").read_text())
    m.pop("train", None)
    m.pop("attack", None)
    (run / "metrics.json").write_text(json.dumps({**m, "status": "interrupted"}))


# (file planted, command): the training checkpoints through both attack entry points and --resume,
# the decoder through the GAN's warm start, the GAN's own resumable checkpoint through its resume.
GAN = ("run_gan_attack.py", "{run}", "--no_progress", "--device", "cpu", "--attack_modes", "train_time")
CASES = {
    "best.pt, main_MIA --attack_only": ("checkpoints/best.pt", ("main_MIA.py", "{argv}", "--attack_only", "--force")),
    "best.pt, run_gan_attack": ("checkpoints/best.pt", GAN),
    "last.pt, main_MIA --resume": ("checkpoints/last.pt", ("main_MIA.py", "{argv}", "--resume")),
    "decoder, GAN warm start": ("attacks/decoder_train_time.pt", GAN),
    "GAN resumable checkpoint": ("attacks/gan_train_time.ckpt.pt", GAN),
}


@pytest.mark.parametrize("case", list(CASES))
def test_planted_code_never_runs_and_is_one_error_line(case, copy_run, tmp_path):
    argv, run = copy_run
    target, command = CASES[case]
    marker = tmp_path / "pwned"
    plant(run / target, marker)
    if "--resume" in command:
        unfinish(run)
    args = [a for c in command for a in (argv if c == "{argv}" else [c.format(run=run)])]
    r = entry_point(*args, cwd=tmp_path)
    assert not marker.exists(), f"loading {target} ran code from it"
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert Path(target).name in lines[0] and "refusing to load it" in lines[0] and "exec" in lines[0], lines[0]


def test_everything_a_run_writes_loads_weights_only(tiny_run):
    files = sorted(tiny_run.rglob("*.pt"))
    assert {"best.pt", "last.pt", "decoder_train_time.pt"} <= {p.name for p in files}
    for p in files:
        assert isinstance(load_checkpoint(p), dict), p
    ck = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    assert ck["epoch"] == 1 and ck["rng"]["torch"].dtype == torch.uint8 and ck["optimizer"]["state"]


@pytest.mark.parametrize("content,needle", [
    (b"", "empty, truncated or not a torch checkpoint"),
    ("half", "empty, truncated or not a torch checkpoint"),
    (b"not a checkpoint\n" * 8, "not a checkpoint of tensors and plain values"),  # read as a legacy pickle
])
def test_damaged_files_are_one_line_naming_them(content, needle, tmp_path):
    path = tmp_path / "ck.pt"
    if content == "half":
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        content = path.read_bytes()[:500]
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        load_checkpoint(path, fix="retrain it")
    msg = str(e.value)
    assert needle in msg and str(path) in msg and msg.endswith("; retrain it") and "\n" not in msg


def test_pickled_module_is_refused_by_name(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(UnsafeCheckpoint, match=r"module\.pt holds pickled Python objects \(torch\.nn\.modules"):
        load_checkpoint(tmp_path / "module.pt")


def _with_weights(run: Path, change) -> None:
    path = run / "checkpoints" / "best.pt"
    ck = torch.load(path, weights_only=True)
    first = next(k for k, v in ck["model"].items() if v.is_floating_point())
    ck["model"][first] = change(ck["model"][first])
    torch.save(ck, path)


@pytest.mark.parametrize("change, needle", [
    (lambda w: w.to(torch.int64), "is int64, the model's is float32"),      # load_state_dict would cast these
    (lambda w: w.half(), "is float16, the model's is float32"),
    (lambda w: torch.full_like(w, float("nan")), "holds NaN or infinite values"),
    (lambda w: torch.zeros(1).expand(10**6, 10**6), "size mismatch"),       # declared 10^12 floats, 4 bytes stored
])
def test_weights_of_another_kind_are_refused_not_cast(change, needle, copy_run, capsys):
    import run_gan_attack

    _, run = copy_run
    _with_weights(run, change)
    assert run_gan_attack.main([str(run), "--device", "cpu", "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_a_storage_declared_far_larger_than_its_bytes_is_refused_unallocated(tmp_path):
    """The pickle says how many elements a storage has; a file that declares 2^31 floats (8 GiB) for 300
    stored is refused before anything that size is allocated."""
    import io
    import struct
    import zipfile

    buf = io.BytesIO()
    torch.save({"model": {"w": torch.arange(300, dtype=torch.float32)}}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    pkl = next(n for n in src.namelist() if n.endswith("data.pkl"))
    data = src.read(pkl)
    at = data.find(b"M" + struct.pack("<H", 300))  # BININT2 300: the storage's element count
    assert at > 0
    forged = data[:at] + b"J" + struct.pack("<i", 2**31 - 1) + data[at + 3:]
    path = tmp_path / "huge.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for n in src.namelist():
            out.writestr(n, forged if n == pkl else src.read(n))
    with pytest.raises(UserError, match="empty, truncated or not a torch checkpoint"):
        load_checkpoint(path)
