import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The small real image sets beside the checkout (see ../shared/data/README.md); tests that need them skip.
SHARED_DATA = pathlib.Path(os.environ.get("CEM_DATA_ROOT", REPO.parent / "shared" / "data"))


@pytest.fixture
def one_thread():
    """For modules of tiny tensors: intra-op threads only add overhead on busy shared CI cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
