"""Our forward pass equals the published models' (the golden fixtures of official_ckpt_layouts/).

Weights come from each layout by the fixtures' documented seeded rule, are copied into our model by
position (kind and shape checked, loaded strictly), and our eval-mode, noise-free forward must give
the fixture's smashed features z and logits to float32 tolerance.
"""
import json

import pytest
import torch
from conftest import SHARED_DATA

from architectures import build_split_model
from tools.official_layout import LAYOUT_DIR, generate_weights, layout_file, load_published, read_layout

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = ["a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1",     # vgg11_bn_sgm cut 4, 32 px
           "c_cifar100_vgg11_bn_sgm_cut3_noRELU_C8S1",    # cut 3, 32 px
           "e_facescrub_vgg11_bn_sgm_cut4_noRELU_C8S1",   # cut 4, 48 px
           "d_tinyimagenet_resnet20_cut5_noRELU_C8S1"]    # resnet20 cut 5, 64 px


def _need(path):
    if not path.exists():
        pytest.skip(f"{path} not found: set CEM_DATA_ROOT to the shared data folder holding {LAYOUT_DIR}/")
    return path


def model_and_weights(config):
    layout = read_layout(_need(layout_file(SHARED_DATA, config)))
    s = layout["settings"]
    model = build_split_model(s["arch"], s["cutlayer"], s["num_class"], s["image_size"], s["bottleneck_option"])
    files, x = generate_weights(layout)
    return model, files, x, layout


@pytest.mark.parametrize("config", CONFIGS)
def test_forward_matches_published(config):
    golden = json.loads(_need(layout_file(SHARED_DATA, f"golden_{config}")).read_text())
    model, files, x, layout = model_and_weights(config)
    assert x.sum().item() == pytest.approx(golden["input"]["x_sum"], rel=1e-6), "input regenerated wrongly"
    assert x.flatten()[:5].tolist() == pytest.approx(golden["input"]["x_first5"], abs=1e-8)
    load_published(model, files)
    model.eval()
    with torch.no_grad():
        z = model.encoder(x)
        logits = model.server_forward(z)
    gz, gl = torch.tensor(golden["z"]), torch.tensor(golden["logits"])
    assert tuple(z.shape) == tuple(golden["z_shape"]) and tuple(logits.shape) == tuple(golden["logits_shape"])
    assert torch.allclose(z, gz, rtol=1e-5, atol=1e-6), f"z differs by {(z - gz).abs().max():.3g}"
    assert torch.allclose(logits, gl, rtol=1e-4, atol=1e-5), f"logits differ by {(logits - gl).abs().max():.3g}"
    # the logits barely depend on x with these weights: the batch-centred ones are the sharp check
    cl, cg = logits - logits.mean(0), gl - gl.mean(0)
    assert (cl - cg).abs().max() <= 1e-3 * cg.abs().max(), "input-dependent part of the logits differs"


@pytest.mark.parametrize("config", CONFIGS)
def test_every_published_tensor_is_consumed(config):
    model, files, _, layout = model_and_weights(config)
    mapping = load_published(model, files)
    assert sum(len(v) for v in mapping.values()) == len(model.state_dict())
    for stem, pairs in mapping.items():
        assert [t for t, _ in pairs] == list(files[stem]), f"{stem}: not every key consumed in order"
    n_params = sum(p.numel() for p in model.encoder.parameters())
    f_entry = next(e for e in layout["files"] if e["file"].startswith("checkpoint_f_"))
    assert n_params == f_entry["num_params"]
