"""The `--bottleneck_option` grammar and the device/server bottleneck layers it describes.

Grammar: "None" (or "", "none") disables the bottleneck; otherwise "_"-separated tokens: an optional
`noRELU` and a spec `C<c>[S<s>][K<k>]` (channels, stride as a power of 2, odd kernel), e.g.
`noRELU_C8S1`, `C16S2`, `noRELU_C4S1K5`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

import torch.nn as nn

from utils import UserError

_SPEC = re.compile(r"^C(\d*)(?:S(\d*))?(?:K(\d*))?$")
_EXAMPLE = "e.g. noRELU_C8S1, C16S2 or None"


@dataclass(frozen=True)
class BottleneckSpec:
    channels: int
    stride: int = 1
    kernel: int = 3
    relu: bool = True

    @property
    def steps(self) -> int:
        """Number of stride-2 convolutions (0 when stride is 1)."""
        return self.stride.bit_length() - 1


def _bad(option: str, why: str) -> UserError:
    return UserError(f"bad --bottleneck_option {option!r}: {why} ({_EXAMPLE})")


def parse_bottleneck(option: Optional[str]) -> Optional[BottleneckSpec]:
    """Return the parsed spec, or None when the bottleneck is disabled."""
    if option is None:
        return None
    if not isinstance(option, str):
        raise _bad(str(option), "expected a string")
    if option.strip() in ("", "None", "none"):
        return None
    tokens = option.strip().split("_")
    relu = True
    rest = []
    for tok in tokens:
        if tok == "noRELU":
            if not relu:
                raise _bad(option, "noRELU given twice")
            relu = False
        elif tok:
            rest.append(tok)
    if not rest:
        raise _bad(option, "the channel count C<c> is required")
    if len(rest) > 1:
        raise _bad(option, f"unexpected token(s) {rest[1:]}; write the spec as one C<c>S<s>K<k> token")
    m = _SPEC.match(rest[0])
    if m is None:
        if not rest[0].startswith("C"):
            raise _bad(option, f"token {rest[0]!r} is neither noRELU nor a C<c>S<s>K<k> spec")
        raise _bad(option, f"cannot parse {rest[0]!r} as C<c>[S<s>][K<k>]")
    c_txt, s_txt, k_txt = m.groups()
    if not c_txt:
        raise _bad(option, "the channel count C<c> needs a number")
    if s_txt == "" or k_txt == "":
        raise _bad(option, "S and K need a number after them")
    channels = int(c_txt)
    stride = int(s_txt) if s_txt is not None else 1
    kernel = int(k_txt) if k_txt is not None else 3
    if channels < 1:
        raise _bad(option, "channel count C must be >= 1")
    if stride < 1 or stride & (stride - 1):
        raise _bad(option, "stride S must be a power of 2")
    if kernel < 1 or kernel % 2 == 0:
        raise _bad(option, "kernel K must be odd")
    return BottleneckSpec(channels=channels, stride=stride, kernel=kernel, relu=relu)


def _halve(n: int) -> int:
    # a stride-2 conv with padding k//2 and odd k maps n -> ceil(n / 2)
    return (n + 1) // 2


def build_bottleneck(spec: BottleneckSpec, in_channels: int,
                     in_hw: Tuple[int, int]) -> Tuple[nn.Sequential, nn.Sequential]:
    """Device-side compressor and server-side expander for features of shape (in_channels, *in_hw).

    The device part has no output activation other than the optional ReLUs: the caller appends the
    Sigmoid / BatchNorm tail. The server part restores exactly (in_channels, *in_hw) and feeds the next
    trunk layer directly, as in the paper's models (no BatchNorm or ReLU after the expanding conv).
    """
    k, c, pad = spec.kernel, spec.channels, spec.kernel // 2
    device, server = [], []
    if spec.steps == 0:
        device.append(nn.Conv2d(in_channels, c, k, stride=1, padding=pad))
        if spec.relu:
            device.append(nn.ReLU(inplace=True))
        server.append(nn.Conv2d(c, in_channels, k, stride=1, padding=pad))
    else:
        sizes = [tuple(in_hw)]
        for i in range(spec.steps):
            device.append(nn.Conv2d(in_channels if i == 0 else c, c, k, stride=2, padding=pad))
            if spec.relu:
                device.append(nn.ReLU(inplace=True))
            sizes.append(tuple(_halve(n) for n in sizes[-1]))
        # Mirror in reverse; output_padding picks 2h or 2h-1 so odd sizes come back exactly.
        for i in range(spec.steps):
            small, big = sizes[-1 - i], sizes[-2 - i]
            out_pad = tuple(b - (2 * s - 1) for s, b in zip(small, big))
            last = i == spec.steps - 1
            server.append(nn.ConvTranspose2d(c, in_channels if last else c, k, stride=2,
                                             padding=pad, output_padding=out_pad))
            if not last and spec.relu:
                server.append(nn.ReLU(inplace=True))
    return nn.Sequential(*device), nn.Sequential(*server)
