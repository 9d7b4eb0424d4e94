"""Whole-step CUDA-graph capture for the training loops (DESIGN.md §9).

At batch 128 a CIFAR-sized step is launch-bound on a modern GPU: a few hundred small kernels whose
launch cost exceeds their run time. `StepCapture` records one complete step (forward, loss,
backward, optimizer update, running sums) as a CUDA graph and replays it for every later batch
with one launch, after copying the batch into the graph's static input buffers.

What a graph bakes in, and how it stays exact:
- Python floats (learning rate, lambda_eff) become kernel arguments. The caller passes a `key`
  holding every such value; a new key drops the graphs and starts over (eager warm-up steps, then a
  fresh capture). Keys change rarely (lr milestones, a defence becoming active), so recapture is rare.
- Tensor addresses (parameters, optimizer state, defence buffers). The trainer's key includes the
  parameters' storage and the optimizer's identity, so a structural change (pruning, a rebuilt
  optimizer) recaptures by itself; defences that keep buffers update them in place.
- Shapes: one graph per input shape (a smaller last batch gets its own graph).
- Randomness (noise, dropout): CUDA graphs advance the generator's offset on every replay, so each
  replay draws fresh numbers.
A step is run eagerly (on a side stream, as lazy initialisation requires) `warmup` times per key and
shape before it is captured; those are real training steps. Anything that fails during capture
switches this object to eager for good, with one warning: slower, never wrong.
"""
from __future__ import annotations

import gc
import warnings
from typing import Callable, Hashable, Optional, Sequence

import torch

from utils import UserError

CAPTURE_MODES = ("auto", "on", "off")


def capture_enabled(mode: str, device: torch.device) -> bool:
    """auto: on for CUDA, off elsewhere (MPS and CPU have no graph capture); on: CUDA required."""
    mode = str(mode).lower()
    if mode not in CAPTURE_MODES:
        raise UserError(f"bad --capture '{mode}'; choose auto, on or off")
    if mode == "on" and device.type != "cuda":
        raise UserError(f"--capture on needs a CUDA device (got {device.type}); use --capture auto or off")
    return mode != "off" and device.type == "cuda"


def params_signature(*modules) -> tuple:
    """Identity of every parameter's storage: changes when a module is rebuilt or pruned."""
    return tuple((p.data_ptr(), tuple(p.shape)) for m in modules for p in m.parameters())


class StepCapture:
    """Runs `step_fn(*inputs)` eagerly or as a replayed CUDA graph.

    `step_fn` must read the batch only from its tensor arguments, keep every result it needs beyond
    the call in tensors it updates in place (e.g. running sums), and return nothing the caller keeps.
    """

    def __init__(self, step_fn: Callable[..., None], enabled: bool, warmup: int = 2,
                 log: Optional[Callable[[str], None]] = None):
        self.step_fn, self.enabled, self.warmup = step_fn, bool(enabled), int(warmup)
        self.log = log or (lambda msg: None)
        self.key: Hashable = None
        self.graphs: dict = {}       # input signature -> (graph, static inputs)
        self.eager_runs: dict = {}   # input signature -> eager steps since the key changed
        self.captures = 0            # graphs captured so far (for logs and tests)
        self.failed: Optional[str] = None
        self._side = None

    def reset(self) -> None:
        """Forget every graph (call after anything the key cannot see changed)."""
        self.graphs.clear()
        self.eager_runs.clear()
        self.key = None

    def __call__(self, key: Hashable, *inputs: torch.Tensor) -> None:
        if not self.enabled:
            self.step_fn(*inputs)
            return
        if key != self.key:
            self.reset()
            self.key = key
        sig = tuple((tuple(t.shape), t.dtype) for t in inputs)
        entry = self.graphs.get(sig)
        if entry is not None:
            graph, static = entry
            for s, t in zip(static, inputs):
                s.copy_(t, non_blocking=True)
            graph.replay()
            return
        if self.eager_runs.get(sig, 0) < self.warmup:
            self._eager_on_side_stream(inputs)
            self.eager_runs[sig] = self.eager_runs.get(sig, 0) + 1
            return
        try:
            entry = self._capture(inputs)
        except Exception as e:  # an op that cannot be captured: stay correct, only slower
            self._give_up(e)
            self.step_fn(*inputs)
            return
        self.graphs[sig] = entry
        entry[0].replay()  # capturing records the step without running it

    def _eager_on_side_stream(self, inputs: Sequence[torch.Tensor]) -> None:
        # Lazy initialisation (cuDNN/cuBLAS workspaces, optimizer state) must not happen on the
        # default stream right before a capture; the PyTorch recipe warms up on a side stream.
        if self._side is None:
            self._side = torch.cuda.Stream()
        cur = torch.cuda.current_stream()
        self._side.wait_stream(cur)
        with torch.cuda.stream(self._side):
            self.step_fn(*inputs)
        cur.wait_stream(self._side)

    def _capture(self, inputs: Sequence[torch.Tensor]):
        static = [t.detach().clone() for t in inputs]
        graph = torch.cuda.CUDAGraph()
        # Cyclic garbage can keep an old autograd graph alive, and with it gradient accumulators bound
        # to another stream, which the captured backward would reuse and fail on; captures are rare.
        gc.collect()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            self.step_fn(*static)
        self.captures += 1
        return graph, static

    def _give_up(self, e: Exception) -> None:
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        self.failed = f"{type(e).__name__}: {msg}"
        warnings.warn(f"CUDA graph capture of the training step failed ({self.failed}); continuing in eager "
                      "mode (use --capture off to skip the attempt)", stacklevel=3)
        self.log(f"note: CUDA graph capture failed ({self.failed}); eager mode from here on")
        self.enabled = False
        self.graphs.clear()
        try:
            torch.cuda.synchronize()
        except Exception:  # a broken capture can leave an error behind; the eager step reports real ones
            pass
