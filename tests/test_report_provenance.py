"""The report says what its numbers stand on: the data set (the quick run's digits fallback by name) and
what one seed is worth, at the top of results.md, report.html and the terminal output."""
import html
import json

from seed_sweep import paired_sweep, write_run

from tools import report


def _retarget(root, dataset, **cfg):
    for m in root.rglob("metrics.json"):
        data = json.loads(m.read_text())
        data["config"].update(dataset=dataset, **cfg)
        data["identity"]["train"]["dataset"] = dataset
        data["train"]["wall_time_s"] = 60.0
        for modes in data["attack"].values():
            for res in modes.values():
                res["wall_time_s"] = 30.0
        m.write_text(json.dumps(data))


def _outputs(root, capsys):
    report.main([str(root)])
    out = capsys.readouterr().out
    return (root / "results.md").read_text(), html.unescape((root / "report.html").read_text()), out


def test_the_digits_fallback_is_named_at_the_top_of_every_output(tmp_path, capsys):
    write_run(tmp_path, 0.05, 0.0, 125, 80.0, {"decoder": 0.02})
    write_run(tmp_path, 0.05, 16.0, 125, 60.0, {"decoder": 0.03})
    _retarget(tmp_path, "digits", n_train=1294, n_val=143, n_test=360)
    md, page, out = _outputs(tmp_path, capsys)
    for text in (md, page, out):
        assert "handwritten digits" in text and "NOT CIFAR-10" in text and "offline fallback" in text
        assert "1,294 training, 143 validation, 360 test images" in text
        assert "One seed per setting" in text and '--seeds "125 126 127"' in text
        # two settings, each 60 s training + 30 s attack, two more seeds: 6 min
        assert "about 6 min more" in text
    assert md.startswith("**Data: scikit-learn's handwritten digits")
    assert page.index("handwritten digits") < page.index("<table")  # above every table
    assert out.index("handwritten digits") < out.index("| σ")


def test_three_seeds_need_no_seed_note_and_cifar10_is_named(tmp_path, capsys):
    paired_sweep(tmp_path)
    _retarget(tmp_path, "cifar10", n_train=2700, n_val=300, n_test=1000)
    md, page, out = _outputs(tmp_path, capsys)
    for text in (md, page, out):
        assert "Data: CIFAR-10" in text and "fallback" not in text
        assert "One seed per setting" not in text


def test_the_batch_psnr_beside_ours_is_explained_where_it_appears(tmp_path, capsys):
    write_run(tmp_path, 0.05, 0.0, 125, 80.0, {"decoder": 0.02})
    md, _, _ = _outputs(tmp_path, capsys)
    assert "(batch" not in md and "published code's PSNR" not in md  # no batch PSNR recorded: no note
    for m in tmp_path.rglob("metrics.json"):
        data = json.loads(m.read_text())
        data["attack"]["decoder"]["train_time"]["final"].update(psnr_batch_mean=19.5, psnr_batch_std=0.5)
        m.write_text(json.dumps(data))
    md, page, _ = _outputs(tmp_path, capsys)
    assert "(batch 19.5)" in md and "published code's PSNR" in md and "(batch X)" in page
