"""docs/extending.md's worked example, exactly as written: its attack file and its one registration line,
copied into a temporary copy of the checkout, run end to end on a tiny digits run, reported, and found
finished when asked again (issue 35)."""
import json
import os
import re
import shutil
import subprocess
import sys

from conftest import REPO, TINY_RUN

DOC = (REPO / "docs" / "extending.md").read_text()


def blocks() -> list:
    return re.findall(r"```python\n(.*?)```", DOC, flags=re.S)


def checkout_with_the_example(dest):
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        src = REPO / rel
        if src.is_file():  # a file deleted in the work tree but still tracked is left out
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    module, registration = blocks()
    path = module.splitlines()[0].lstrip("# ").strip()
    (dest / path).write_text(module)
    registry = dest / "attacks" / "registry.py"
    text = registry.read_text()
    start = text.index("REGISTERED = (")
    end = text.index("\n)", start)
    registry.write_text(text[:end] + "\n" + registration.rstrip("\n") + text[end:])
    return path


def run(repo, *args):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, *args], cwd=repo, capture_output=True, text=True, env=env, timeout=540)


def test_the_documented_example_runs_is_reported_and_resumes(tmp_path):
    repo = tmp_path / "repo"
    assert checkout_with_the_example(repo) == "attacks/nearest.py"
    flags = TINY_RUN + ["--data_root", str(tmp_path / "data"), "--folder", "runs", "--filename", "r",
                        "--attacks", "decoder,nearest", "--nearest_pool", "40"]
    out = run(repo, "main_MIA.py", *flags)
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads((repo / "runs" / "r" / "metrics.json").read_text())
    near = m["attack"]["nearest"]["train_time"]
    assert near["n_eval"] == 32 and 0 < near["final"]["mse_mean"] < 1 and m["attack_settings"]["nearest"] == {
        "results_version": 1, "nearest_pool": 40}
    assert (repo / "runs" / "r" / "images" / "nearest_train_time.png").exists()
    rep = run(repo, "-m", "tools.report", "runs", "--out", "report")
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "nearest" in (repo / "report" / "results.md").read_text()
    again = run(repo, "main_MIA.py", "--attack_only", *flags)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stdout[-2000:]
    other = run(repo, "main_MIA.py", "--attack_only", *flags[:-1], "41")  # its own flag keys its results
    assert other.returncode == 0 and "already finished" not in other.stdout, other.stderr[-2000:]
    m = json.loads((repo / "runs" / "r" / "metrics.json").read_text())
    assert [v["settings"]["nearest_pool"] for v in m["attack_variants"]["nearest"].values()] == [41]
    bad = run(repo, "main_MIA.py", "--attack_only", *flags[:-3], "decoder,nearst")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: bad --attacks")
