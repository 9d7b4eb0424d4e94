"""Issue 34: nothing the project writes follows a link out of a run or report folder.

The paths are not a hand list: they are every file and folder a real tiny run (trained, attacked by the
decoder and the GAN) and a real report leave behind. A symlink to an outside file (or folder) is planted
at each one in turn, and the four entry points are run on the folder: main_MIA.py --attack_only,
main_MIA.py --resume and run_gan_attack.py refuse the run folder in one line, exit 2, before any work;
tools.report replaces a link at its own outputs with its file. Every outside file stays byte-identical.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import main_MIA
import run_gan_attack
import utils
from lifecycle.experiment import run_experiment
from tools import report

RUN = ["--dataset", "digits", "--num_epochs", "2", "--limit_train", "64", "--limit_test", "32", "--device", "cpu",
       "--batch_size", "32", "--no_progress", "--lambd", "0", "--attack_epochs", "1", "--gan_AE_type",
       "res_normN1C16", "--attack_modes", "train_time", "--attacks", "decoder,gan", "--gan_epochs", "1",
       "--milestones", "none"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(argv of the run, a run interrupted after epoch 1 of 2, the same run finished and attacked)."""
    root = tmp_path_factory.mktemp("links")
    argv = RUN + ["--data_root", str(root / "data"), "--folder", str(root / "runs"), "--filename", "r"]
    run_experiment(vars(main_MIA.build_parser().parse_args(argv)), progress=False, stop_after=1)
    shutil.copytree(root / "runs" / "r", root / "interrupted")
    assert main_MIA.main(argv + ["--resume"]) == 0
    return argv, root / "interrupted", root / "runs" / "r"


def written(folder: Path) -> list[Path]:
    """Every path below `folder`, relative: what the project wrote there."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def plant(folder: Path, rel: Path, outside: Path) -> Path:
    """A symlink at folder/rel to a file (or, for a folder, a folder of look-alike files) outside."""
    target = folder / rel
    outside.mkdir(parents=True, exist_ok=True)
    victim = outside / ("dir_" + "_".join(rel.parts) if target.is_dir() else "file_" + "_".join(rel.parts))
    if target.is_dir():
        shutil.copytree(target, victim)
        shutil.rmtree(target)
    else:
        victim.write_bytes(b"precious\n")
        target.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(victim, target_is_directory=victim.is_dir())
    return victim


def snapshot(outside: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(outside.rglob("*")) if p.is_file()}


def one_error_naming(err: str, rel: Path) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert str(rel) in lines[0], (rel, lines[0])


def test_the_run_writes_what_the_test_plants(runs):
    """The derived list holds what issue 34 saw written through links; a regression guard on the list."""
    _, interrupted, finished = runs
    paths = {str(p) for p in written(finished)}
    assert {"log.txt", "train_log.csv", "metrics.json", "config.json", "checkpoints/last.pt",
            "images/decoder_train_time.png", "images/gan_train_time.png", "attacks/gan_train_time.pt"} <= paths
    assert "train" not in json.loads((interrupted / "metrics.json").read_text())


def _entry_points(argv, interrupted: Path, finished: Path):
    """(name, folder to plant in, what to call): each would write into the run folder."""
    folder = argv[argv.index("--folder") + 1]
    return [
        ("--attack_only", finished, lambda: main_MIA.main(argv + ["--attack_only", "--force"])),
        ("--resume", interrupted, lambda: main_MIA.main(argv + ["--resume"])),
        ("run_gan_attack.py", finished,
         lambda: run_gan_attack.main([str(Path(folder) / "r"), "--force", "--gan_epochs", "1", "--no_progress",
                                      "--device", "cpu"])),
    ]


def own_files(folder: Path) -> dict:
    """The folder's regular files (links not followed): any work would change one of them."""
    out = {}
    for here, _, files in os.walk(folder):
        for f in files:
            p = Path(here) / f
            if not p.is_symlink():
                out[p] = p.read_bytes()
    return out


@pytest.mark.parametrize("entry", ["--attack_only", "--resume", "run_gan_attack.py"])
def test_a_link_at_any_output_path_is_refused_before_any_work(runs, tmp_path, capsys, entry):
    argv, interrupted, finished = runs
    old_folder = argv[argv.index("--folder") + 1]
    argv = [str(tmp_path / "runs") if a == old_folder else a for a in argv]
    (name, source, call), = [e for e in _entry_points(argv, interrupted, finished) if e[0] == entry]
    for rel in written(finished):
        run_dir = tmp_path / "runs" / "r"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(source, run_dir)
        if not (run_dir / rel).exists():  # the interrupted run has no grid yet: plant where it will go
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (finished / rel).is_dir() else shutil.copy)(finished / rel, run_dir / rel)
        outside = tmp_path / "outside" / str(rel).replace("/", "_")
        plant(run_dir, rel, outside)
        before, mine = snapshot(outside), own_files(run_dir)
        assert call() == 2, rel
        one_error_naming(capsys.readouterr().err, rel)
        assert snapshot(outside) == before, rel
        assert own_files(run_dir) == mine, rel  # refused before any work: nothing in the folder changed
        assert (run_dir / rel).is_symlink(), rel  # refused, not replaced: the user sees what was there


def test_report_outputs_replace_a_planted_link_and_never_write_through_it(runs, tmp_path, capsys):
    _, _, finished = runs
    sweep = tmp_path / "sweep"
    shutil.copytree(finished, sweep / "r")
    first = tmp_path / "first"
    assert report.main([str(sweep), "--out", str(first)]) == 0
    outputs = written(first)
    assert {"results.md", "results.csv", "report.html", "tradeoff.png"} <= {str(p) for p in outputs}
    for rel in outputs:
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(first, out)
        outside = tmp_path / "outside" / str(rel).replace("/", "_")
        plant(out, rel, outside)
        before = snapshot(outside)
        assert report.main([str(sweep), "--out", str(out)]) == 0, rel
        assert snapshot(outside) == before, rel
        assert not (out / rel).is_symlink(), rel
    capsys.readouterr()


def test_links_inside_a_reported_run_are_not_followed(runs, tmp_path, capsys):
    _, _, finished = runs
    for rel in written(finished):
        sweep = tmp_path / "sweep"
        shutil.rmtree(sweep, ignore_errors=True)
        shutil.copytree(finished, sweep / "r")
        outside = tmp_path / "outside" / str(rel).replace("/", "_")
        plant(sweep / "r", rel, outside)
        before = snapshot(outside)
        report.main([str(sweep)])
        assert snapshot(outside) == before, rel
    capsys.readouterr()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "hard link", "folder"])
def test_appends_never_reach_another_file(tmp_path, kind):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    log = tmp_path / "log.txt"
    if kind == "symlink":
        log.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(log)
    elif kind == "hard link":
        os.link(victim, log)
    else:
        log.mkdir()
    with pytest.raises(utils.UserError, match="log.txt"):
        utils.append_csv_row(log, {"a": 1})
    assert victim.read_bytes() == b"precious\n"


def test_appends_create_and_extend_a_regular_file(tmp_path):
    path = tmp_path / "train_log.csv"
    utils.append_csv_row(path, {"epoch": 1})
    utils.append_csv_row(path, {"epoch": 2})
    assert path.read_text().splitlines() == ["epoch", "1", "2"]


def test_a_folder_where_a_whole_file_goes_is_one_error_line(tmp_path):
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(utils.UserError, match="metrics.json"):
        utils.write_json(tmp_path / "metrics.json", {"a": 1})


@pytest.mark.parametrize("kind", ["fifo", "folder metrics.json", "folder in images", "hard-linked log"])
def test_other_foreign_entries_are_refused_when_the_folder_is_opened(tmp_path, kind):
    from lifecycle.run_folder import Run

    run = Run(tmp_path / "runs", "r")
    (run.dir / "images").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    name = {"fifo": "log.txt", "folder metrics.json": "metrics.json", "folder in images": "images/x.png",
            "hard-linked log": "train_log.csv"}[kind]
    if kind == "fifo":
        os.mkfifo(run.dir / name)
    elif kind == "hard-linked log":
        os.link(victim, run.dir / name)
    else:
        (run.dir / name).mkdir()
    with pytest.raises(utils.UserError, match=name.split("/")[-1]):
        run.open()
    assert victim.read_bytes() == b"precious\n"
    p = run.dir / name
    p.rmdir() if p.is_dir() else p.unlink()
    run.open()  # the lock was released with the refusal, and the folder is fine without the entry
    run.close()
