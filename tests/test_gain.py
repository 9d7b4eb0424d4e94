"""tools.gain: CEM's attack-MSE gain over λ = 0 at the same σ, and its accuracy cost."""
import json

from tools import gain


def write_run(folder, sigma, lambd, acc, mse, wall=12.0):
    d = folder / f"s{sigma}_l{lambd}"
    d.mkdir(parents=True)
    final = {"mse_mean": mse, "ssim_mean": 0.5, "psnr_mean": 15.0}
    (d / "metrics.json").write_text(json.dumps({
        "status": "finished",
        "config": {"dataset": "cifar10", "arch": "vgg11_bn_sgm", "cutlayer": 4, "bottleneck_option": "noRELU_C8S1",
                   "regularization": "Gaussian_kl", "regularization_strength": sigma, "lambd": lambd,
                   "var_threshold": 0.125, "num_epochs": 10},
        "train": {"test_acc": acc, "wall_time_s": wall},
        "attack": {"decoder": {"train_time": {"final": final, "wall_time_s": 3.0}}}}))


def test_gain_against_lambda_zero_at_the_same_sigma(tmp_path, capsys):
    write_run(tmp_path, 0.05, 0.0, 60.0, 0.010)
    write_run(tmp_path, 0.05, 16.0, 57.5, 0.025)
    write_run(tmp_path, 0.1, 16.0, 50.0, 0.05)  # no λ = 0 partner: listed, no gain line
    lines = gain.gain_lines(tmp_path)
    gains = [ln for ln in lines if "CEM gain" in ln]
    assert gains == ["  CEM gain at σ=0.05, λ=16: attack MSE +150% at -2.50 accuracy points (vs λ=0)"]
    assert sum(" 0.1 " in ln for ln in lines) == 1
    assert gain.main([str(tmp_path)]) == 0 and "+150%" in capsys.readouterr().out


def test_missing_folder_is_one_error_line(tmp_path, capsys):
    assert gain.main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
