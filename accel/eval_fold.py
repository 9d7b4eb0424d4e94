"""Faster no-grad eval passes: a traced copy of a module with each BatchNorm folded into the conv
before it, and each ReLU that only feeds a max-pool moved after the pool.

Both rewrites are exact up to float rounding (max commutes with the monotone ReLU), and they cut the
memory traffic of a conv block roughly in half: the eval passes of training (CEM's refresh over the
whole training set every epoch, validation) are memory-bound on the CPU, where the folded VGG encoder
runs ~25% faster (on a GPU per-batch overhead looks like their bound: see no_grad_batch_size). The
folded weights are recomputed from the live module on every `prepare`, so a pass never sees stale
weights or BatchNorm statistics; a module fx cannot trace, or one with forward hooks, runs as is.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

from accel.capture import params_signature

_RELUS = (torch.relu, torch.relu_, nn.functional.relu)


def _module(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_relu(gm, node) -> bool:
    return isinstance(_module(gm, node), nn.ReLU) or (node.op == "call_function" and node.target in _RELUS)


def _fold_bn(gm: fx.GraphModule) -> list:
    """Retargets every conv -> BatchNorm pair to one new conv; returns (new conv, conv, bn) triples."""
    pairs = []
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or not node.args:
            continue
        src = node.args[0]
        conv = _module(gm, src) if isinstance(src, fx.Node) else None
        if type(conv) is not nn.Conv2d or len(src.users) != 1:
            continue
        folded = fuse_conv_bn_eval(conv, bn).requires_grad_(False)  # asserts both are in eval mode
        name = f"_folded_{len(pairs)}"
        gm.add_submodule(name, folded)
        src.target = name
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        pairs.append((folded, conv, bn))
    return pairs


def _relu_after_pool(gm: fx.GraphModule) -> None:
    for pool in list(gm.graph.nodes):
        mod = _module(gm, pool)
        if not isinstance(mod, nn.MaxPool2d) or mod.return_indices or len(pool.args) != 1:
            continue
        relu = pool.args[0]
        if not isinstance(relu, fx.Node) or not _is_relu(gm, relu) or len(relu.users) != 1:
            continue
        src = relu.args[0]
        if not isinstance(src, fx.Node) or len(src.users) != 1:  # an in-place ReLU would have changed it for them
            continue
        pool.replace_input_with(relu, src)
        gm.graph.erase_node(relu)
        with gm.graph.inserting_after(pool):
            new = gm.graph.call_function(torch.relu_, (pool,))  # the pool's output is fresh
        pool.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)  # noqa: B023 (called now)


class EvalFolder:
    """`prepare(module)` gives the callable to run `module` with in eval mode under no_grad: the folded
    copy, rebuilt when the module's parameters are replaced (pruning) and re-folded on every call."""

    def __init__(self):
        self._key = None
        self._gm: Optional[fx.GraphModule] = None
        self._pairs: list = []
        self.folded = False  # whether the last prepare() returned a folded copy

    @torch.no_grad()
    def prepare(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        # Train mode: BatchNorm uses batch statistics, nothing to fold. Hooks: someone watches or edits
        # the module's forward, which the traced copy would bypass.
        if module.training or any(m._forward_hooks or m._forward_pre_hooks for m in module.modules()):
            self.folded = False
            return module
        key = (id(module), params_signature(module))
        if key != self._key:
            self._key, self._gm, self._pairs = key, None, []
            try:
                gm = fx.symbolic_trace(module)  # shares the submodules it does not replace
                self._pairs = _fold_bn(gm)
                _relu_after_pool(gm)
                gm.graph.lint()
                gm.recompile()
                self._gm = gm
            except Exception:  # noqa: BLE001 - untraceable control flow: run the module itself
                self._gm = None
        for folded, conv, bn in self._pairs:
            w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
            folded.weight.copy_(w)
            folded.bias.copy_(b)
        self.folded = self._gm is not None
        return self._gm if self._gm is not None else module
