"""SplitModel and its builder: a classifier cut into device encoder, server trunk and head."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from utils import UserError

from .bottleneck import build_bottleneck, parse_bottleneck
from .published_init import INITS, published_resnet_init, published_vgg_init
from .resnet import RESNET_ARCHS, resnet_extra_layer, resnet_head, resnet_is_sigmoid, resnet_num_layers, resnet_trunk
from .vgg import VGG_ARCHS, vgg_extra_layer, vgg_head, vgg_is_sigmoid, vgg_num_layers, vgg_trunk

ARCHITECTURES: Tuple[str, ...] = tuple(VGG_ARCHS) + tuple(RESNET_ARCHS)


class SplitModel(nn.Module):
    """encoder (device) -> server trunk -> classifier head; `feature_shape` is (C, H, W) of z."""

    def __init__(self, encoder: nn.Module, server: nn.Module, classifier: nn.Module,
                 feature_shape: Tuple[int, int, int], arch: str, cutlayer: int,
                 image_size: int, num_classes: int, bottleneck_option: str):
        super().__init__()
        self.encoder = encoder
        self.server = server
        self.classifier = classifier
        self.feature_shape = tuple(int(v) for v in feature_shape)
        self.arch = arch
        self.cutlayer = cutlayer
        self.image_size = image_size
        self.num_classes = num_classes
        self.bottleneck_option = bottleneck_option
        self.extra_device_layer = False  # PATROL's extra device layer present
        # state_dict shapes as built: a pruned model records only where it differs (restore.py)
        self.nominal_shapes: Dict[str, Tuple[int, ...]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.server_forward(self.encoder(x))

    def server_forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.server(z))

    def extra_repr(self) -> str:
        return (f"arch={self.arch}, cutlayer={self.cutlayer}, image_size={self.image_size}, "
                f"bottleneck_option={self.bottleneck_option!r}, feature_shape={self.feature_shape}, "
                f"extra_device_layer={self.extra_device_layer}")


def _check_arch(arch) -> str:
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return arch


def max_cutlayer(arch: str) -> int:
    """Largest legal cut layer (the whole trunk on the device); legal cuts are 1..max_cutlayer."""
    _check_arch(arch)
    return vgg_num_layers(arch) if arch in VGG_ARCHS else resnet_num_layers(arch)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@torch.no_grad()
def _dry_shape(module: nn.Module, image_size: int, what: str,
               device: str = "cpu") -> Tuple[int, int, int]:
    """Output (C, H, W) of `module` on a zero image, in eval mode so BN running stats stay untouched."""
    was_training = module.training
    module.eval()
    try:
        out = module(torch.zeros(1, 3, image_size, image_size, device=device))
    except RuntimeError as e:
        raise UserError(f"image size {image_size} is too small for {what} ({e}); "
                        f"use larger images or an earlier --cutlayer") from None
    finally:
        module.train(was_training)
    if out.dim() != 4 or min(out.shape[1:]) < 1:
        raise UserError(f"image size {image_size} is too small for {what}; use larger images")
    return tuple(out.shape[1:])


def init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _named_trunk(arch: str, cutlayer: int, extra_device_layer: bool):
    """The trunk as (name, module) pairs and how many of them the device runs.

    Config layers are `layer<k>` with k the layer number of the plain model, so the extra PATROL layer
    (named `extra`) shifts no names and `cutlayer` keeps its meaning.
    """
    family = ((vgg_trunk, vgg_extra_layer) if arch in VGG_ARCHS else (resnet_trunk, resnet_extra_layer))
    extra = family[1](arch, cutlayer) if extra_device_layer else None
    layers = family[0](arch, 3 if extra is None else extra[2])
    named = [(f"layer{i + 1}", m) for i, m in enumerate(layers)]
    if extra is None:
        return named, cutlayer
    named.insert(extra[0], ("extra", extra[1]))
    return named, cutlayer + 1


def build_split_model(arch: str, cutlayer: int, num_classes: int, image_size: int = 32,
                      bottleneck_option: Optional[str] = "None",
                      extra_device_layer: bool = False,
                      device_tail: Optional[Callable[[Sequence[int]], nn.Module]] = None,
                      init: str = "ours") -> SplitModel:
    """Build `arch` cut after layer `cutlayer` (1-based; max-pools count as VGG layers).

    Sigmoid-terminated archs (`*_sgm`, `resnet20`) always end the encoder with a Sigmoid; others end
    with BatchNorm over the bottleneck channels when a bottleneck is used, else where the cut falls.
    `extra_device_layer` adds PATROL's extra device-side layer (DESIGN.md §5; VGG only from cut 2).
    `device_tail(shape)` builds a layer for the bottleneck's (C, H, W) output that runs right after it,
    before the final Sigmoid / BatchNorm (encoder key `tail`): SCA's sparse-coding layer
    (defenses/sca.py), where the published models put it. It needs a bottleneck.
    `init`: ours (`init_weights`) or published (`published_init.py`: device side only, by family).
    """
    _check_arch(arch)
    top = max_cutlayer(arch)
    if not _is_int(cutlayer) or not 1 <= cutlayer <= top:
        raise UserError(f"--cutlayer {cutlayer!r} out of range for {arch}: choose 1..{top}")
    if not _is_int(num_classes) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not _is_int(image_size) or image_size < 1:
        raise UserError(f"image size must be a positive integer, got {image_size!r}")
    if init not in INITS:
        raise UserError(f"--init must be {' or '.join(INITS)} (got {init!r})")
    spec = parse_bottleneck(bottleneck_option)

    if arch in VGG_ARCHS:
        head_fn, sigmoid = vgg_head, vgg_is_sigmoid(arch)
    else:
        head_fn, sigmoid = resnet_head, resnet_is_sigmoid(arch)

    # Shapes come from a parameter-free twin on the meta device: exact, but no conv is computed.
    with torch.device("meta"):
        twin, n_device = _named_trunk(arch, cutlayer, extra_device_layer)
    twin = [m for _, m in twin]
    what = f"{arch} cut at {cutlayer}"
    cut_shape = _dry_shape(nn.Sequential(*twin[:n_device]), image_size, what, "meta")
    trunk_shape = _dry_shape(nn.Sequential(*twin), image_size, arch, "meta")

    layers, n_device = _named_trunk(arch, cutlayer, extra_device_layer)
    enc = OrderedDict(layers[:n_device])
    srv = OrderedDict()
    if spec is not None:
        # the server half of the bottleneck restores cut_shape exactly, so trunk_shape still holds
        device_bn, server_bn = build_bottleneck(spec, cut_shape[0], cut_shape[1:])
        enc["bottleneck"] = device_bn
        srv["bottleneck"] = server_bn
        if device_tail is not None:
            with torch.device("meta"):  # the bottleneck's output shape, again from a parameter-free twin
                twin_bn = build_bottleneck(spec, cut_shape[0], cut_shape[1:])[0]
            enc["tail"] = device_tail(_dry_shape(nn.Sequential(*twin[:n_device], twin_bn), image_size, what, "meta"))
    elif device_tail is not None:
        raise UserError("this device layer (SCA) sits after the bottleneck: give a --bottleneck_option")
    if sigmoid:
        enc["sigmoid"] = nn.Sigmoid()
    elif spec is not None:
        enc["bn"] = nn.BatchNorm2d(spec.channels)
    srv.update(layers[n_device:])

    encoder = nn.Sequential(enc)
    server = nn.Sequential(srv) if srv else nn.Identity()
    classifier = head_fn(trunk_shape, num_classes)
    model = SplitModel(encoder, server, classifier, (0, 0, 0), arch, cutlayer, image_size,
                       num_classes, "None" if spec is None else bottleneck_option)
    if init == "ours":
        init_weights(model)
    elif arch in VGG_ARCHS:
        published_vgg_init(encoder)
    else:
        published_resnet_init(encoder, server)
    model.feature_shape = _dry_shape(encoder, image_size, what)
    model.extra_device_layer = "extra" in enc
    model.nominal_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return model
