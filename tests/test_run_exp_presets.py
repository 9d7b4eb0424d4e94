"""run_exp.sh's presets, as the commands they would run (--dry-run)."""
from test_run_exp import commands, flag, sh


def test_defenses_sweep_dimension_and_preset(tmp_path):
    cmds = commands(sh("--dry-run", "--defenses", "None dropout0.2 gan_adv_step1", "--at_strengths", "0.5 1",
                       "--sigmas", "0.05", "--lambdas", "0 16", tmp=tmp_path))
    assert len(cmds) == 2 + 2 * 2 * 2  # None runs once, each defence once per strength; x2 lambdas
    plain = [c for c in cmds if "--AT_regularization" not in c]
    assert len(plain) == 2
    pairs = {(flag(c, "--AT_regularization"), flag(c, "--AT_regularization_strength")) for c in cmds if c not in plain}
    assert pairs == {(d, s) for d in ("dropout0.2", "gan_adv_step1") for s in ("0.5", "1")}
    assert len({flag(c, "--filename") for c in cmds}) == len(cmds)
    preset = commands(sh("--dry-run", "--preset", "defenses", "--sigmas", "0.05", tmp=tmp_path))
    defs = {flag(c, "--AT_regularization") if "--AT_regularization" in c else "None" for c in preset}
    assert defs == {"None", "gan_adv_step1", "dropout0.2", "topkprune0.5", "gan_adv_step1_pruning180"}
    assert len(preset) == 10 and all("--dataset cifar10" in c for c in preset)
    assert {flag(c, "--lambd") for c in preset} == {"0", "16"}
    assert all(flag(c, "--attack_view") == "sent\\,noise_only" for c in preset)  # both views (quoted comma)
    assert not any("--attack_view" in c for c in cmds)
    for args in (("--at_strengths", "0"), ("--preset", "paper"), ("--defenses", "a;b")):
        r = sh("--dry-run", "--defenses", "dropout0.2", *args, tmp=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)



def test_published_preset_is_the_authors_sca_sweep(tmp_path):
    # the authors' run_exp.sh: cifar10, vgg11_bn_sgm cut 4 noRELU_C8S1, SCA_new 0.3, 5 sigmas x 3 lambdas
    cmds = commands(sh("--dry-run", "--preset", "published", tmp=tmp_path))
    assert len(cmds) == 15 and len({flag(c, "--filename") for c in cmds}) == 15
    grid = {(flag(c, "--regularization_strength"), flag(c, "--lambd")) for c in cmds}
    assert grid == {(s, lam) for s in ("0.01", "0.025", "0.05", "0.1", "0.15") for lam in ("0", "8", "16")}
    for name, value in (("--AT_regularization", "SCA_new"), ("--AT_regularization_strength", "0.3"),
                        ("--dataset", "cifar10"), ("--arch", "vgg11_bn_sgm"), ("--cutlayer", "4"),
                        ("--bottleneck_option", "noRELU_C8S1"), ("--learning_rate", "0.05"), ("--num_epochs", "240"),
                        ("--batch_size", "128"), ("--attack_epochs", "50"), ("--gan_AE_type", "res_normN8C64"),
                        ("--random_seed", "125"), ("--var_threshold", "0.125")):
        assert {flag(c, name) for c in cmds} == {value}, name
    r = sh("--dry-run", "--preset", "published", "--quick", tmp=tmp_path)
    assert r.returncode == 2 and "do not combine" in r.stderr and len(r.stderr.strip().splitlines()) == 1
