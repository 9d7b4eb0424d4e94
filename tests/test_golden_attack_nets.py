"""Our attack networks equal the published ones (golden_decoder_*.json, golden_critic_*.json).

Each fixture lists the published state-dict keys and shapes; weights come from the documented seeded
rule in that order, then the input from the same generator (torch.rand). The state dict loads strictly
into our module under the published names, and our forward pass must give the fixture's outputs in
eval mode and in train mode (BatchNorm on batch statistics) to float32 tolerance.
"""
import json

import pytest
import torch
from conftest import SHARED_DATA

from architectures.decoders import build_decoder
from architectures.discriminators import build_critic
from tools.official_layout import LAYOUT_DIR, seeded_state

pytestmark = pytest.mark.usefixtures("one_thread")

DECODERS = ["golden_decoder_res_normN8C64_in8x8x8_out32",     # default attack decoder, cut 4, 32 px
            "golden_decoder_res_normN8C64_in8x16x16_out32",   # cut 3 (GAN-attack setting): one upsampling
            "golden_decoder_res_normN8C64_in8x12x12_out48",   # FaceScrub
            "golden_decoder_res_normN8C64_in8x16x16_out64",   # TinyImageNet
            "golden_decoder_res_normN4C64_in8x8x8_out32"]     # gan_adv's defender decoder
CRITICS = ["golden_critic_DGWGAN32_32px", "golden_critic_DGWGAN32_48px", "golden_critic_DGWGAN32_64px"]


def fixture(name: str) -> dict:
    path = SHARED_DATA / LAYOUT_DIR / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path} not found: set CEM_DATA_ROOT to the shared data folder holding {LAYOUT_DIR}/")
    return json.loads(path.read_text())


def published_weights_and_input(golden: dict):
    g = torch.Generator().manual_seed(int(golden["seed"]))
    state = seeded_state([(k, tuple(s)) for k, s in golden["keys"]], g)
    x = torch.rand(golden["input_shape"], generator=g)
    assert x.sum().item() == pytest.approx(golden["x_sum"], rel=1e-6), "input regenerated wrongly"
    return state, x


def check_outputs(module, x, golden):
    want_eval = torch.tensor(golden["y_eval"]).view(golden["output_shape"])
    want_train = torch.tensor(golden["y_train_mode"]).view(golden["output_shape"])
    with torch.no_grad():
        module.eval()
        y_eval = module(x).reshape(golden["output_shape"])  # the published critic flattens (B, P) to B*P
        module.train()
        y_train = module(x).reshape(golden["output_shape"])
    assert torch.allclose(y_eval, want_eval, rtol=1e-4, atol=1e-5), \
        f"eval-mode output differs by {(y_eval - want_eval).abs().max():.3g}"
    assert torch.allclose(y_train, want_train, rtol=1e-4, atol=1e-5), \
        f"train-mode output differs by {(y_train - want_train).abs().max():.3g}"


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_matches_published(name):
    golden = fixture(name)
    _, c, h, w = golden["input_shape"]
    dec = build_decoder(golden["gan_AE_type"], (c, h, w), golden["output_shape"][-1],
                        out_channels=golden["output_shape"][1])
    assert sum(p.numel() for p in dec.parameters()) == golden["num_params"]
    state, x = published_weights_and_input(golden)
    assert list(dec.state_dict()) == list(state), "our key names or their order differ from the published"
    dec.load_state_dict(state, strict=True)
    check_outputs(dec, x, golden)
    # the published forward order, child by child: same index, kind and output shape
    seen = []
    hooks = [m.register_forward_hook(lambda mod, _, out, i=i: seen.append([str(i), type(mod).__name__,
                                                                            list(out.shape)]))
             for i, m in enumerate(dec.m)]
    with torch.no_grad():
        dec(x)
    for h in hooks:
        h.remove()
    assert seen == [[i, kind, out] for i, kind, _, out in golden["forward_order"]]


def test_eval_and_train_mode_differ_in_the_decoder_fixture():
    """The train-mode comparison checks something: batch statistics move the output well beyond tolerance."""
    golden = fixture(DECODERS[0])
    diff = (torch.tensor(golden["y_eval"]) - torch.tensor(golden["y_train_mode"])).abs().max()
    assert diff > 1e-2


@pytest.mark.parametrize("name", CRITICS)
def test_critic_matches_published(name):
    golden = fixture(name)
    _, c, size, _ = golden["input_shape"]
    critic = build_critic(c, size)
    assert sum(p.numel() for p in critic.parameters()) == golden["num_params"]
    state, x = published_weights_and_input(golden)
    assert list(critic.state_dict()) == list(state)
    critic.load_state_dict(state, strict=True)
    out = critic(x)
    patches = golden["output_shape"][0] // golden["input_shape"][0]
    assert out.shape == (golden["input_shape"][0], patches) and critic.n_patches == patches
    check_outputs(critic, x, golden)
