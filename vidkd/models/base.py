"""The registry and the contract every vidkd model keeps.

Every model takes `[B, 3, T, H, W]` and returns logits `[B, K]`. It names, without any shape, which of its
submodules are its stages (`stage_names`, shallow to deep) and which `nn.Linear` is its classifier
(`head_name`); `vidkd.models.taps` reads stage features and the pooled embedding through forward hooks on
those submodules, with shapes probed by one dummy forward.
"""
import contextlib

import torch.nn as nn

from vidkd.errors import ConfigError
from vidkd.models.taps import probe

MODELS = {}


def register(name):
    """Decorator: `@register("x3d_s")` on a builder `fn(num_classes, num_frames, crop_size, **kw) -> VideoModel`."""

    def add(fn):
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = fn
        return fn

    return add


def build_model(name, num_classes, num_frames=16, crop_size=224, **kwargs):
    """Build a registered model for clips of `num_frames x crop_size x crop_size`."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    model = MODELS[name](num_classes=num_classes, num_frames=num_frames, crop_size=crop_size, **kwargs)
    model.name = name
    return model


def config_kwargs(cfg, name):
    """Builder options the config sets for `name`: MODEL.VIT_PATCH_SIZE, VIT_DEPTH (when set), VIT_STEM and
    VIT_HEAD_INIT_SCALE for a VideoMAE ViT; DATA.MEAN / STD for I3D (the clip's normalisation, which it maps
    back to its own [-1, 1] input)."""
    if name == "i3d":
        return {"data_mean": tuple(cfg.DATA.MEAN), "data_std": tuple(cfg.DATA.STD)}
    if not name.startswith("videomae"):
        return {}
    m = cfg.MODEL
    options = {"patch_size": m.VIT_PATCH_SIZE, "depth": m.VIT_DEPTH}
    return {"stem": m.VIT_STEM, "init_scale": m.VIT_HEAD_INIT_SCALE, **{k: v for k, v in options.items() if v}}


def build_from_config(cfg, name, num_classes, crop_key="TRAIN_CROP_SIZE"):
    """`name` built for the config's clip (DATA.NUM_FRAMES x DATA.<crop_key>), refused by the keys if it cannot
    be built for that clip or cannot take it (a crop its pooling shrinks to nothing, too few frames for its
    temporal stride)."""
    frames, crop = cfg.DATA.NUM_FRAMES, cfg.DATA[crop_key]
    with clip_refused(cfg, name, crop_key):
        model = build_model(name, num_classes, frames, crop, **config_kwargs(cfg, name))
    check_takes_clip(model, cfg, crop_key)
    return model


def check_takes_clip(model, cfg, crop_key):
    """One dummy clip of DATA.NUM_FRAMES x DATA.<crop_key> through `model` (in its dtype, on its device)."""
    with clip_refused(cfg, model.name, crop_key):
        probe(model, cfg.DATA.NUM_FRAMES, cfg.DATA[crop_key])


@contextlib.contextmanager
def clip_refused(cfg, name, crop_key):
    """A model's shape error (RuntimeError from a layer, ValueError from a builder) as a ConfigError naming
    DATA.NUM_FRAMES and DATA.<crop_key>."""
    frames, crop = cfg.DATA.NUM_FRAMES, cfg.DATA[crop_key]
    try:
        yield
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"config keys DATA.NUM_FRAMES {frames} and DATA.{crop_key} {crop}: the model {name} "
                          f"cannot take a {frames} x {crop} x {crop} clip ({str(e).splitlines()[0]})") from None


class VideoModel(nn.Module):
    """Base class. Subclasses set `stage_names` and `head_name`; a token model also sets `token_grid`
    (T', H', W') in its forward, for the taps to fold tokens back to a grid."""

    stage_names = ()
    head_name = ""
    token_grid = None

    def head_module(self):
        """The classifier named by `head_name` (a method, not a property: a model may own a module `head`)."""
        return self.get_submodule(self.head_name)


class Wrapped(VideoModel):
    """A third-party network, unchanged, as `self.net`; `prepare` turns the clip into its input."""

    def __init__(self, net, stage_names, head_name, prepare=None):
        super().__init__()
        self.net, self.prepare = net, prepare
        self.stage_names = tuple(f"net.{n}" for n in stage_names)
        self.head_name = f"net.{head_name}"

    def forward(self, x):
        return self.net(self.prepare(x) if self.prepare else x)


def split_heads(logits, heads):
    """Side-by-side logits `[B, sum K]` of several label sets (EPIC: verb, noun) -> `{head: [B, K_head]}`."""
    return dict(zip(heads, logits.split(list(heads.values()), dim=1)))


def replace_head(model, num_classes):
    """A fresh classifier for `num_classes` (e.g. a Kinetics-400 teacher moved to HMDB51); a Linear, or a
    1x1x1 Conv3d where the network classifies with one (S3D)."""
    parent_name, _, attr = model.head_name.rpartition(".")
    old = model.head_module()
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv3d(old.in_channels, num_classes, old.kernel_size, bias=old.bias is not None)
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new.to(old.weight.device))
    return model
