"""The published code's initialisation of the split model (`--init published`, docs/differences.md).

Ours (`split.init_weights`) treats every layer alike. The published models initialise only the
device side and leave the rest at PyTorch's defaults (which is how our layers are built), so this
module only rewrites what the published init loops reach:
- VGG (model_architectures/vgg.py, `init_weights` applied to the device part): every Conv2d,
  ConvTranspose2d and Linear of the encoder Xavier-uniform (gain 1), biases zero; BatchNorm, the
  server convs and the classifier keep PyTorch's defaults.
- ResNet (model_architectures/resnet_cifar.py, its `init_weights` on the device part): every Conv2d
  of the encoder from N(0, sqrt(2 / (k_h k_w out))), its bias (the bottleneck conv has one) left at
  PyTorch's default; BatchNorm weight 1, bias 0 (PyTorch's default anyway). Then a loop over the
  *top-level* server modules gives the same normal draw, with a zero bias, to a Conv2d found there:
  only the server half of a stride-1 bottleneck is one (transposed convs are not Conv2d, and the
  residual blocks' convs sit inside blocks). The classifier keeps PyTorch's default.
"""
from __future__ import annotations

import math

import torch.nn as nn

INITS = ("ours", "published")


def _he_normal_fan_out(conv: nn.Conv2d) -> None:
    k_h, k_w = conv.kernel_size
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (k_h * k_w * conv.out_channels)))


def published_vgg_init(encoder: nn.Module) -> None:
    for m in encoder.modules():
        # the published test is on the exact type, so subclasses (none of ours) would be left alone
        if type(m) in (nn.Conv2d, nn.ConvTranspose2d, nn.Linear):
            nn.init.xavier_uniform_(m.weight, gain=1.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def published_resnet_init(encoder: nn.Module, server: nn.Module) -> None:
    for m in encoder.modules():
        if isinstance(m, nn.Conv2d):
            _he_normal_fan_out(m)  # the bias is not touched, as published (its zeroing is commented out)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    bottleneck = getattr(server, "bottleneck", None)  # where our server keeps what is top-level there
    for m in (bottleneck.children() if bottleneck is not None else ()):
        if isinstance(m, nn.Conv2d):
            _he_normal_fan_out(m)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
