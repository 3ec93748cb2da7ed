"""Image models (TASK image): timm's families with their stage layouts declared, read by the same taps."""
import pytest
import torch

from vidkd.models import IMAGE_MODELS, build_image_model
from vidkd.models.taps import FeatureTaps, probe

FULL = ["resnet18", "resnet50", "mobilenetv2", "deit_tiny", "deit_small", "vit_small", "swin_tiny", "swin_nano",
        "convnext_tiny", "resmlp_s12"]
MINI = [n for n in IMAGE_MODELS if n.endswith("_mini")]


def test_the_papers_families_and_a_mini_of_each_are_registered():
    assert set(FULL) <= set(IMAGE_MODELS) and len(MINI) == 6


@pytest.mark.parametrize("name, crop", [(n, 64) for n in FULL] + [(n, 32) for n in MINI])
def test_stages_agree_with_timms_feature_info(name, crop):
    """Channels and reductions of the 4 stages, read through the declared layouts, are timm's own; the tokens
    of an isotropic model sit on its patch grid (class token dropped)."""
    model = build_image_model(name, 7, crop)
    info = probe(model, (crop, crop))
    timm_stages = {f["module"]: f for f in model.net.feature_info}
    for stage in info["stages"]:
        own = timm_stages[stage["name"].removeprefix("net.")]
        assert stage["channels"] == own["num_chs"] and stage["stride"] == (own["reduction"],) * 2, (stage, own)
    assert len(info["stages"]) == 4
    assert info["embed_dim"] == model.net.num_features


@pytest.mark.parametrize("name", MINI)
def test_the_embedding_is_timms_pre_logits_taken_before_dropout(name):
    model = build_image_model(name, 7, 32).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.head_module().weight.normal_()  # timm starts some classifiers at zero
        pre_logits = model.net.forward_head(model.net.forward_features(x), pre_logits=True)
        logits = model(x)
        drop = model.embed_module() if model.embed_name else None
        if drop is not None:  # a dropout in training mode before the classifier changes the logits, not the embedding
            drop.p = 0.5
            drop.train()
        z, features, embedding = FeatureTaps(model)(x)
    torch.testing.assert_close(embedding, pre_logits)
    assert (drop is None) == torch.allclose(z, logits)
    assert all(f.dim() == 4 and f.shape[0] == 3 for f in features)


def test_taps_keep_nothing_outside_their_call_and_calls_do_not_share_outputs():
    model = build_image_model("deit_mini", 7, 32).eval()
    taps = FeatureTaps(model)
    a, b = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, first, _ = taps(a)
        kept = [f.clone() for f in first]
        model(b)  # an evaluation pass
        assert not taps._saved
        taps(b)
    assert all(torch.equal(f, k) for f, k in zip(first, kept))


def test_a_stage_output_not_of_its_declared_layout_is_refused_by_name():
    model = build_image_model("resnet_mini", 7, 32)
    model.stage_layout = "tokens"
    with pytest.raises(ValueError, match=r"net.layer1's input of shape \(1, 64, 8, 8\) is not of its declared layout "
                                         r"tokens"):
        probe(model, (32, 32))  # the first stage's input, before its output
    with pytest.raises(ValueError, match=r"a stage output of shape \(1, 16, 8, 8\) is not of its declared layout"):
        FeatureTaps(model.eval())(torch.zeros(1, 3, 32, 32))


def test_probe_reads_each_stages_input_by_its_layout():
    """A stage's input (what PAT's prompts go before): a ResNet's stem output (64 wide: timm's plain stem ignores
    stem_width) then each stage's output; a DeiT's tokens on its 8 x 8 patch grid, the class token dropped."""
    stages = probe(build_image_model("resnet_mini", 7, 32), (32, 32))["stages"]
    assert [s["input"] for s in stages] == [(64, 8, 8), (16, 8, 8), (32, 4, 4), (64, 2, 2)]
    assert [s["input"] for s in probe(build_image_model("deit_mini", 7, 32), (32, 32))["stages"]] == [(64, 8, 8)] * 4
