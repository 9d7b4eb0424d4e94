"""Step capture bookkeeping (capture.py) on the CPU; real CUDA graphs are checked in test_gpu.py.

A stand-in graph replays the step on its static input buffers, as a CUDA graph would: so these tests
check when the stepper captures, recaptures, falls back, and that the trainer and the attack feed it
correctly, but not the CUDA-specific parts (which test_gpu.py compares against eager training).
"""
import pytest
import torch

from accel import capture
from architectures import build_split_model
from datasets import load_dataset
from defenses import build_defenses
from model_training import Trainer, TrainSettings
from utils import UserError


class FakeGraph:
    def __init__(self, fn, static):
        self.fn, self.static = fn, static

    def replay(self):
        self.fn(*self.static)


class CPUCapture(capture.StepCapture):
    """StepCapture with the CUDA calls swapped for a replay-on-static-buffers stand-in."""

    def _eager_on_side_stream(self, inputs):
        self.step_fn(*inputs)

    def _capture(self, inputs):
        static = [t.detach().clone() for t in inputs]
        self.captures += 1
        return FakeGraph(self.step_fn, static), static


def test_capture_modes_resolve_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not capture.capture_enabled("auto", cpu) and capture.capture_enabled("auto", cuda)
    assert not capture.capture_enabled("off", cuda)
    with pytest.raises(UserError, match="needs a CUDA device"):
        capture.capture_enabled("on", cpu)
    with pytest.raises(UserError, match="bad --capture"):
        capture.capture_enabled("sometimes", cpu)


def test_warmup_then_one_graph_per_key_and_shape():
    seen = []
    st = CPUCapture(lambda x: seen.append(x.clone()), enabled=True, warmup=2)
    for i in range(5):
        st("a", torch.full((4,), float(i)))
    assert st.captures == 1 and len(seen) == 5
    assert [int(t[0]) for t in seen] == [0, 1, 2, 3, 4]  # replays see each new batch, not the captured one
    st("a", torch.zeros(3))  # a new shape: warm-up, then its own graph
    st("a", torch.zeros(3))
    st("a", torch.zeros(3))
    assert st.captures == 2 and len(st.graphs) == 2
    st("b", torch.zeros(4))  # a new key drops every graph
    assert st.graphs == {} and st.captures == 2


def test_failed_capture_falls_back_to_eager_with_a_warning():
    calls = []

    class Broken(CPUCapture):
        def _capture(self, inputs):
            raise RuntimeError("operation not permitted when stream is capturing")

    st = Broken(lambda x: calls.append(1), enabled=True, warmup=1)
    st("k", torch.zeros(2))
    with pytest.warns(UserWarning, match="capture of the training step failed"):
        st("k", torch.zeros(2))
    st("k", torch.zeros(2))
    assert len(calls) == 3 and not st.enabled and "RuntimeError" in st.failed


def _trainer(tmp_path, bundle, captured, epochs=6):
    torch.manual_seed(0)
    model = build_split_model("vgg11_bn_sgm", 4, bundle.num_classes, bundle.image_size, "noRELU_C8S1")
    d = build_defenses({"regularization": "Gaussian_kl", "regularization_strength": 0.05, "lambd": 16.0,
                        "var_threshold": 0.125, "arch": "vgg11_bn_sgm"}, bundle.num_classes, len(bundle.train))
    tr = Trainer(model, bundle, d, torch.device("cpu"), tmp_path, TrainSettings(num_epochs=epochs, batch_size=32),
                 progress=False)
    tr.stepper = CPUCapture(tr._step, captured, warmup=1)
    return tr


def test_trainer_recaptures_exactly_when_baked_values_change(tmp_path, one_thread):
    b = load_dataset("digits", str(tmp_path), select_on="test", limit_train=96, limit_test=32)
    runs = {}
    for captured in (False, True):
        tr = _trainer(tmp_path / str(captured), b, captured)
        logs = []
        for epoch in range(3):
            torch.manual_seed(10 + epoch)  # same noise draws in both runs
            logs.append(tr.train_epoch(epoch))
            tr.defenses.on_epoch_end(tr)
        runs[captured] = (logs, tr)
    eager_logs, captured_logs = runs[False][0], runs[True][0]
    assert eager_logs == captured_logs  # the stand-in replays the same step: identical numbers
    for a, b_ in zip(runs[False][1].model.parameters(), runs[True][1].model.parameters()):
        assert torch.equal(a, b_)
    tr = runs[True][1]
    # Epoch 1 (warm-up lr) runs eagerly; epoch 2 captures (CEM has switched on); later epochs
    # recapture only where the scheduled lr changes, since CEM's refresh keeps its buffers.
    lr_changes = int(tr.server_lr(2) != tr.server_lr(1))
    assert lr_changes  # 6 epochs with the paper schedule: a milestone falls in epoch 2 or 3
    assert tr.stepper.captures == 1 + lr_changes and captured_logs[2]["cem_term"] > 0


def test_cem_refresh_updates_its_buffers_in_place(tmp_path, one_thread):
    b = load_dataset("digits", str(tmp_path), select_on="test", limit_train=96, limit_test=32)
    tr = _trainer(tmp_path, b, True)
    cem = tr.defenses.find("cem")
    tr.train_epoch(0)
    cem.on_epoch_end(tr)
    key, mu = cem.capture_key(), cem._prepared.mu
    before = mu.clone()
    tr.train_epoch(1)
    cem.on_epoch_end(tr)
    assert cem.capture_key() == key and cem._prepared.mu is mu  # a graph holding mu stays valid ...
    assert not torch.equal(mu, before)  # ... and sees the new centroids


def test_a_defence_that_cannot_be_captured_keeps_the_step_eager(tmp_path, one_thread):
    from defenses.base import Defense, DefenseStack

    class SelfStepping(Defense):
        name = "selfstep"
        capturable = False

    stack = DefenseStack([SelfStepping()])
    assert not stack.capturable
    assert DefenseStack([Defense()]).capturable
