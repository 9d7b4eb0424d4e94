import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The small real image sets beside the checkout (see ../shared/data/README.md); tests that need them skip.
SHARED_DATA = pathlib.Path(os.environ.get("CEM_DATA_ROOT", REPO.parent / "shared" / "data"))
# The dry runs of run_exp.sh tested here check the commands they print; the measured time estimate
# (seconds of model timing each) is tested on its own in tests/test_dry_run_estimate.py.
os.environ.setdefault("CEM_DRY_RUN_ESTIMATE", "0")


@pytest.fixture
def one_thread():
    """For modules of tiny tensors: intra-op threads only add overhead on busy shared CI cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# One tiny trained-and-attacked run (digits, 1 epoch, 1 attack epoch), made once per session; tests
# that only need *a* finished run copy it with `copy_run` instead of training their own.
TINY_RUN = ["--dataset", "digits", "--num_epochs", "1", "--limit_train", "96", "--limit_test", "32",
            "--device", "cpu", "--batch_size", "32", "--no_progress", "--lambd", "0", "--attack_epochs", "1",
            "--gan_AE_type", "res_normN1C16", "--attack_modes", "train_time"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    import main_MIA

    root = tmp_path_factory.mktemp("tiny_run")
    argv = TINY_RUN + ["--data_root", str(root / "data"), "--folder", str(root / "runs"), "--filename", "r"]
    assert main_MIA.main(argv) == 0
    return root / "runs" / "r"


@pytest.fixture
def copy_run(tiny_run, tmp_path):
    """(argv that reproduces the run in tmp_path/runs/r, its folder)."""
    import shutil

    dest = tmp_path / "runs" / "r"
    shutil.copytree(tiny_run, dest)
    argv = TINY_RUN + ["--data_root", str(tiny_run.parent.parent / "data"), "--folder", str(tmp_path / "runs"),
                       "--filename", "r"]
    return argv, dest
