"""Every registered model at a tiny input; stage features and embeddings through the taps; head replacement."""
import pytest
import torch

from vidkd.models import MODELS, build_model, replace_head
from vidkd.models.taps import FeatureTaps, probe

# name -> (frames, crop) small enough for the CPU; every registered model must be listed here
TINY = {
    "videomae_vit_ti": (4, 32), "videomae_vit_s": (4, 32), "videomae_vit_b": (4, 32), "videomae_vit_l": (2, 32),
    "x3d_xs": (4, 64), "x3d_s": (4, 64), "x3d_m": (4, 64), "x3d_l": (4, 64), "slow_r50": (4, 64),
    "slowfast_r50": (8, 64), "r2plus1d_r50": (4, 64), "r3d_18": (4, 64), "mc3_18": (4, 64),
    "r2plus1d_18": (4, 64), "s3d": (8, 64), "tsm_resnet18": (4, 64), "tsm_mobilenetv2": (4, 64),
    "c3d_tiny": (4, 32), "c3d_small": (4, 32), "i3d": (8, 64),
}


def test_every_registered_model_is_covered():
    assert set(MODELS) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_logits_stage_features_and_embedding(name):
    frames, crop = TINY[name]
    model = build_model(name, num_classes=7, num_frames=frames, crop_size=crop).eval()
    x = torch.randn(2, 3, frames, crop, crop)
    info = probe(model, (frames, crop, crop))
    taps = FeatureTaps(model)
    with torch.no_grad():
        logits, features, embedding = taps(x)
        assert torch.equal(logits, model(x))  # the hooks change nothing
    assert logits.shape == (2, 7)
    assert len(features) == len(info["stages"]) == 4
    for feature, stage in zip(features, info["stages"]):
        assert feature.dim() == 5 and feature.shape[:2] == (2, stage["channels"])
        assert tuple(n * s for n, s in zip(feature.shape[2:], stage["stride"]))[1:] == (crop, crop)
    strides = [s["stride"][1] for s in info["stages"]]
    assert strides == sorted(strides)  # deeper stages are coarser
    head = model.head_module()
    assert embedding.shape == (2, info["embed_dim"])
    assert info["embed_dim"] == getattr(head, "in_features", getattr(head, "in_channels", None))
    replace_head(model, 3)
    with torch.no_grad():
        assert model(x).shape == (2, 3)


def test_embedding_is_what_the_classifier_sees():
    """For a Linear classifier, logits = head(embedding) exactly."""
    model = build_model("r3d_18", 5, 4, 64).eval()
    with torch.no_grad():
        logits, _, embedding = FeatureTaps(model)(torch.randn(2, 3, 4, 64, 64))
        assert torch.allclose(model.head_module()(embedding), logits, atol=1e-5)


def test_temporal_shift_moves_the_right_channels():
    from vidkd.models.students import TemporalShift

    x = torch.arange(2 * 3 * 16, dtype=torch.float32).view(2 * 3, 16, 1, 1)  # B=2, T=3, C=16
    out = TemporalShift(torch.nn.Identity(), num_frames=3)(x).view(2, 3, 16)
    v = x.view(2, 3, 16)
    assert torch.equal(out[:, :2, :2], v[:, 1:, :2]) and torch.equal(out[:, 2, :2], torch.zeros(2, 2))
    assert torch.equal(out[:, 1:, 2:4], v[:, :2, 2:4]) and torch.equal(out[:, 0, 2:4], torch.zeros(2, 2))
    assert torch.equal(out[..., 4:], v[..., 4:])


def test_unknown_model_and_wrong_frame_count():
    with pytest.raises(KeyError, match="unknown model 'x4d'"):
        build_model("x4d", 3)
    with pytest.raises(ValueError, match="built for 4 frames"):
        build_model("tsm_resnet18", 3, 4, 64)(torch.randn(1, 3, 8, 64, 64))


@pytest.mark.parametrize("name, frames, crop, key, cause", [
    ("c3d_tiny", 2, 1, "TRAIN_CROP_SIZE", "Output size is too small"),  # a pooling shrinks the crop to nothing
    ("s3d", 4, 32, "TEST_CROP_SIZE", "Output size is too small"),  # too few frames for its temporal stride
    ("videomae_vit_ti", 3, 32, "TRAIN_CROP_SIZE", "not divisible into 2x16x16 tubelets"),  # a builder's refusal
])
def test_a_clip_a_model_cannot_take_is_refused_by_its_config_keys(name, frames, crop, key, cause):
    from vidkd.config.defaults import get_defaults
    from vidkd.errors import ConfigError
    from vidkd.models import build_from_config

    cfg = get_defaults()
    cfg.DATA.NUM_FRAMES, cfg.DATA[key] = frames, crop
    with pytest.raises(ConfigError, match=rf"config keys DATA.NUM_FRAMES {frames} and DATA.{key} {crop}: the model "
                                          rf"{name} cannot take a {frames} x {crop} x {crop} clip \(.*{cause}"):
        build_from_config(cfg, name, 5, key)
    cfg.DATA.NUM_FRAMES, cfg.DATA[key] = 8, 32
    assert build_from_config(cfg, name, 5, key).eval()(torch.zeros(1, 3, 8, 32, 32)).shape == (1, 5)
