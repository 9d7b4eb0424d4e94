"""Every flag of one configuration (main_MIA.py's parser), below everything that reads them.

The entry points, the run identity (which flags are attack settings) and validation all read the
parser built here; the attacks and defences declare their own flags (`attacks/flags.py`,
`defenses/flags.py`). Standard library only: a sweep's planner builds this parser once per
configuration and must not import torch.
"""
from __future__ import annotations

import argparse
import math

from attacks.flags import ATTACKS, DEFAULTS, MODES, VIEWS, add_attack_flags, check_settings
from attacks.flags import RANGES as ATTACK_RANGES
from defenses.flags import add_defence_flags
from utils import UserError

ATTACK_GROUP = "attack"  # the parser group whose flags form a run identity's attack part
DEFAULT_DATA_ROOT = "./data"  # training's; an attack of a trained run uses the folder the run recorded


class OneLineParser(argparse.ArgumentParser):
    """A mistyped flag is one line, like every other bad input (DESIGN.md §11), not the whole usage
    (over 30 lines here) with the error at its end; --help is unchanged."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


# The published code's behaviour, bugs included, all at once (`--paper_exact`; docs/differences.md
# names each): flag -> published value. Ours stays the default of every one of them.
PAPER_EXACT = {
    "select_on": "test", "cem_stats": "published", "cem_kmeans": "published", "gan_adv_init": "xavier",
    "gan_pretrain_data": "test",
    "patrol_optimizer": "published", "attacker_data": "published", "decoder_heldout_bn": "train",
    "gan_loop": "published", "attack_view": "noise_only", "init": "published",
}


class PaperExact(argparse.Action):
    """Sets every PAPER_EXACT flag where it stands on the command line (a flag after it still wins) and
    records nothing itself: the run identity holds the settings it made, not the shorthand."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        for dest, value in PAPER_EXACT.items():
            setattr(namespace, dest, value)


def _none_or_float(s):
    return None if s in (None, "", "None", "none") else float(s)


def build_parser(description: str = "Train one configuration, then attack it.") -> argparse.ArgumentParser:
    p = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--arch", default="vgg11_bn_sgm",
                   help="split architecture: vgg11, vgg11_bn, vgg11_bn_sgm, vgg13, vgg13_bn, resnet20 "
                        "(paper variant), resnet20_std, resnet32 (default: %(default)s)")
    m.add_argument("--cutlayer", type=int, default=4,
                   help="number of layers on the device (VGG: max-pools count as layers) (default: %(default)s)")
    m.add_argument("--bottleneck_option", default="noRELU_C8S1",
                   help="device-side bottleneck, e.g. noRELU_C8S1 = 8 channels, stride 1, no ReLU; "
                        "None disables (default: %(default)s)")
    m.add_argument("--init", default="ours", choices=["ours", "published"],
                   help="target-model init: ours (Kaiming fan-out convs, N(0, 0.01) linear, zero biases) or "
                        "published (the published models': device side Xavier for VGG, N(0, sqrt(2/(k*k*out))) "
                        "for ResNet, the rest mostly at PyTorch's defaults; docs/differences.md) "
                        "(default: %(default)s)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="cifar10",
                   help="cifar10, cifar100, facescrub, tinyimagenet, digits, "
                        "npz:<file>[,<test file> or test fraction], imagefolder:<dir> (default: %(default)s)")
    d.add_argument("--data_root", default=None,
                   help=f"folder holding the datasets (default: {DEFAULT_DATA_ROOT}; with --attack_only, the "
                        "folder the run was trained with)")
    d.add_argument("--select_on", default="val", choices=["val", "test"],
                   help="split that picks the best epoch: val = 10%% held out of train; test = the paper "
                        "code's choice (optimistic), including its tracker reset at epochs 40/100/200 of 240 "
                        "(scaled to --num_epochs), so the best of the last 40 epochs (default: %(default)s)")
    d.add_argument("--num_classes", type=int, default=None,
                   help="class count of an npz data set (labels must be 0..N-1); default: the largest label + 1, "
                        "with every class present")
    d.add_argument("--limit_train", type=int, default=None, help="use a seeded random subset of N training images")
    d.add_argument("--limit_test", type=int, default=None, help="use a seeded random subset of N test images")
    t = p.add_argument_group("training")
    t.add_argument("--batch_size", type=int, default=128, help="(default: %(default)s)")
    t.add_argument("--num_epochs", type=int, default=240,
                   help="epochs; the lr milestones 60/120/180/210 of 240 scale with it (default: %(default)s)")
    t.add_argument("--learning_rate", type=float, default=0.05, help="server lr, SGD (default: %(default)s)")
    t.add_argument("--milestones", default="paper",
                   help="epochs where the lr drops x0.2: paper (60/120/180/210 of 240, scaled to --num_epochs), "
                        "none (constant lr), or a comma list such as 60,120 (default: %(default)s)")
    t.add_argument("--local_lr", type=_none_or_float, default=None,
                   help="encoder (device) lr; default: same as --learning_rate")
    t.add_argument("--random_seed", type=int, default=125,
                   help="seed for data order, init, noise (default: %(default)s)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA (faster; not bit-identical)")
    t.add_argument("--no_compile", dest="compile", action="store_false",
                   help="on CUDA, keep the CEM loss in eager mode instead of fusing it with torch.compile")
    t.add_argument("--capture", default="auto", choices=["auto", "on", "off"],
                   help="record each training/attack step as a CUDA graph and replay it (much faster at "
                        "small batches): auto = on for CUDA, off on CPU/MPS (default: %(default)s)")
    t.add_argument("--checkpoint_seconds", type=_none_or_float, default=None, metavar="SECONDS",
                   help="seconds of training between checkpoints (the last epoch is always saved; a killed run "
                        "redoes at most this much): default every epoch on CPU/MPS, 30 on CUDA, where writing "
                        "one costs about a tenth of an epoch")
    t.add_argument("--no_channels_last", dest="channels_last", action="store_false",
                   help="keep NCHW memory format (channels_last is on by default: faster on CPU and CUDA)")
    add_defence_flags(p.add_argument_group("defence"))
    a = p.add_argument_group(ATTACK_GROUP)
    add_attack_flags(a)
    a.add_argument("--no_attack", action="store_true", help="train only")
    a.add_argument("--attack_only", action="store_true",
                   help="re-attack a trained run from its checkpoint (no training)")
    p.add_argument("--paper_exact", action=PaperExact,
                   help="the published protocol, bugs included: " + ", ".join(
                       f"--{k} {v}" for k, v in PAPER_EXACT.items()) + " (flags after it still win)")
    o = p.add_argument_group("output")
    o.add_argument("--folder", default="runs", help="parent folder of run folders (default: %(default)s)")
    o.add_argument("--filename", default=None, help="run folder name; default: built from the settings")
    o.add_argument("--resume", action="store_true", help="continue an interrupted run from checkpoints/last.pt")
    o.add_argument("--force", action="store_true",
                   help="redo the run from scratch, deleting what its folder holds (also when the folder holds "
                        "another configuration); with --attack_only: redo those attack results")
    o.add_argument("--no_progress", action="store_true", help="hide progress bars")
    return p


def parse_list(spec, allowed, flag: str) -> list:
    items = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    bad = [m for m in items if m not in allowed]
    if bad or not items:
        raise UserError(f"bad {flag} '{spec}'; use a comma list of {', '.join(allowed)}")
    # In `allowed`'s order: the GAN generator starts from the decoder the decoder attack saves.
    return sorted(dict.fromkeys(items), key=allowed.index)



def attack_lists(cfg: dict) -> tuple:
    """(attacks, modes, views) that `cfg` asks for, checked; a flag unset or empty: its default."""
    return tuple(parse_list(cfg.get(flag) or DEFAULTS[flag], allowed, f"--{flag}")
                 for flag, allowed in (("attacks", ATTACKS), ("attack_modes", MODES), ("attack_view", VIEWS)))


def check_recorded(cfg: dict, path) -> None:
    """Each setting a run's config.json records has the type its flag parses to, so a file edited by
    hand (or by another version) is one line naming the file and key, not a traceback deep in model
    building. Keys that are not flags (device, torch, feature_shape ...) are left to their readers."""
    for action in build_parser()._actions:
        if action.dest not in cfg or action.dest == "help":
            continue
        value = cfg[action.dest]
        if value is None and action.default is None:
            continue
        want = bool if action.nargs == 0 else action.type or str  # nargs 0: store_true / store_false
        if want in (bool, str):
            ok = isinstance(value, want)
        else:  # a number, reparsed as the command line would: 4.5 for an int flag fails here
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _parses(action.type, value)
        if ok and action.choices is not None:
            ok = value in action.choices
        if not ok:
            allowed = (f"one of {', '.join(map(str, action.choices))}" if action.choices
                       else {bool: "true or false", str: "a string", int: "an integer"}.get(want, "a number"))
            raise UserError(f"{path}: {action.dest} is {value!r}, which is not {allowed}; the file was edited or "
                            "comes from another version: restore it, or retrain the run")
    try:  # and within the flags' ranges: a recorded seed of 2**70 or a limit of 0 is no run this project made
        check_numbers(cfg)
    except UserError as e:
        raise UserError(f"{path}: recorded {str(e).lstrip('-')}; the file was edited or comes from another "
                        "version: restore it, or retrain the run") from None


def _parses(convert, value) -> bool:
    try:
        convert(str(value))
    except (TypeError, ValueError):
        return False
    return True


# flag -> (lowest allowed value, whether the lowest value itself is allowed[, highest allowed value]).
# Any float flag must be finite whether it is listed or not; add a new numeric flag here to give it a
# range. Seeds go to torch's 64-bit generators with small offsets added (refresh count, defence
# streams), so they stop at 2**63 - 1, far from the 2**64 torch refuses.
RANGES = {
    "learning_rate": (0, False), "local_lr": (0, False), "regularization_strength": (0, True),
    "lambd": (0, True), "var_threshold": (0, False), "AT_regularization_strength": (0, True),
    "num_epochs": (1, True), "batch_size": (2, True),
    "limit_train": (1, True), "limit_test": (1, True), "random_seed": (0, True, 2**63 - 1),
    "num_classes": (2, True), "gan_pretrain_epochs": (0, True), "checkpoint_seconds": (0, True),
    **ATTACK_RANGES,  # each attack declares its own (attacks/registry.py)
}


COUNT_MAX = 2**31 - 1


def check_numbers(cfg: dict) -> None:
    for key, value in cfg.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{key} must be a finite number (got {value})")
    for key, (low, inclusive, *high) in RANGES.items():
        value = cfg.get(key)
        if value is None or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)):
            raise UserError(f"--{key} must be a number (got {value!r})")
        if value < low or (value == low and not inclusive):
            raise UserError(f"--{key} must be {'>=' if inclusive else '>'} {low} (got {value})")
        # Counts and sizes (epochs, batch sizes, limits, steps) reach torch as C integers: 2**70 is a traceback
        # with C++ frames there, after work has started, so whole numbers stop at 2**31 - 1 unless listed.
        top = high[0] if high else COUNT_MAX if isinstance(value, int) else None
        if top is not None and value > top:
            raise UserError(f"--{key} must be <= {top} (got {value})")
    check_settings(cfg)
