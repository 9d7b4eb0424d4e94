"""--AT_regularization parsing: combined strings enable exactly their parts, strength 0 none, bad text exits 2."""
import pytest

import main_MIA
from defenses import build_defenses, parse_at_options
from defenses.obfuscation import Dropout, LocalDP, TopKPrune
from utils import UserError


@pytest.mark.parametrize("text,parts", [
    ("None", []),
    ("dropout0.2", ["dropout"]),
    ("topkprune0.5", ["topkprune"]),
    ("local_dp", ["local_dp"]),
    ("local_dp_gaussian", ["local_dp"]),
    ("nopeek", ["nopeek"]),
    ("gan_adv", ["gan_adv"]),
    ("gan_adv_step1_pruning180", ["gan_adv", "pruning"]),
    ("pruning180_gan_adv_step3", ["gan_adv", "pruning"]),
    ("dropout0.1_topkprune0.3_nopeek", ["dropout", "topkprune", "nopeek"]),
])
def test_combined_string_enables_exactly_its_parts(text, parts):
    opts = parse_at_options(text, 1.0)
    assert opts.enabled() == parts
    assert opts.active == bool(parts)


def test_values_are_read():
    o = parse_at_options("gan_adv_step1_pruning180", 0.3)
    assert (o.gan_adv_steps, o.pruning_epoch, o.strength) == (1, 180, 0.3)  # the paper code's parse gives 3
    assert parse_at_options("gan_adv_step5", 1).gan_adv_steps == 5
    assert parse_at_options("gan_adv", 1).gan_adv_steps == 3  # as published
    o = parse_at_options("dropout0.2_topkprune.5_local_dp_laplace", 2)
    assert (o.dropout, o.topk, o.local_dp) == (0.2, 0.5, "laplace")
    assert parse_at_options("local_dp", 2).local_dp == "gaussian"
    # what the text meant for a run recorded before --AT_version (defenses/at_options.py)
    assert parse_at_options("local_dp", 2, version=1).local_dp == "laplace"
    assert parse_at_options("gan_adv", 1, version=1).gan_adv_steps == 1


def test_strength_zero_enables_none_but_still_checks():
    o = parse_at_options("gan_adv_step1_dropout0.2_nopeek", 0)
    assert o.enabled() == [] and not o.active and set(o.ignored) == {"gan_adv", "dropout", "nopeek"}
    with pytest.raises(UserError):
        parse_at_options("dropout1.5", 0)
    with pytest.warns(UserWarning, match="strength is 0"):
        stack = build_defenses({"arch": "vgg11_bn_sgm", "regularization": "None", "regularization_strength": 0,
                                "lambd": 0, "AT_regularization": "dropout0.2", "AT_regularization_strength": 0},
                               10, 100)
    assert stack.defenses == []


@pytest.mark.parametrize("text,needle", [
    ("dropout1.5", "dropout1.5"), ("topkprune-1", "topkprune-1"), ("dropout", "dropout0.2"),
    ("gan_advx", "gan_advx"), ("foo", "foo"), ("dropout0.2_bar", "bar"), ("dropout0.2_dropout0.3", "twice"),
    ("gan_adv_step0", "step"), ("pruning0", "pruning"), ("local_dp_gaussian_local_dp", "twice"),
    ("local_dp_laplace_local_dp_gaussian", "twice"), ("local_dp_gauss", "gauss"),
    ("dropout0.2.3", "dropout0.2.3"), ("topkprune1", "topkprune1"), ("dropoutnan", "dropoutnan"),
])
def test_bad_text_is_a_user_error(text, needle):
    with pytest.raises(UserError, match=None) as e:
        parse_at_options(text, 1.0)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_strength():
    for s in (-1, float("nan"), "abc"):
        with pytest.raises(UserError, match="strength"):
            parse_at_options("nopeek", s)


def test_stack_order_and_parts():
    cfg = {"arch": "vgg11_bn_sgm", "regularization": "Gaussian_kl", "regularization_strength": 0.1, "lambd": 0,
           "AT_regularization": "local_dp_topkprune0.5_dropout0.2", "AT_regularization_strength": 2.0,
           "AT_version": 2}
    names = [type(d) for d in build_defenses(cfg, 10, 100).defenses]
    from defenses import GaussianNoise
    assert names == [GaussianNoise, LocalDP, Dropout, TopKPrune]  # z -> noise -> local DP -> dropout -> top-k
    del cfg["AT_version"]  # a run recorded before the flag: local DP came last
    assert [type(d) for d in build_defenses(cfg, 10, 100).defenses] == [GaussianNoise, Dropout, TopKPrune, LocalDP]
    with pytest.raises(UserError, match="AT_version 7"):
        build_defenses(dict(cfg, AT_version=7), 10, 100)


@pytest.mark.parametrize("text,needle", [("dropout1.5", "dropout1.5"), ("topkprune-1", "topkprune-1"),
                                         ("blah", "blah"), ("pruning180", "after the last epoch")])
def test_cli_one_line_exit_2(text, needle, capsys, tmp_path):
    argv = ["--dataset", "digits", "--data_root", str(tmp_path / "d"), "--folder", str(tmp_path / "runs"),
            "--num_epochs", "1", "--no_attack", "--device", "cpu", "--no_progress",
            "--AT_regularization", text, "--AT_regularization_strength", "1"]
    code = main_MIA.main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
