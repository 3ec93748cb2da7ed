"""The registry and the contract every vidkd model keeps.

Every model takes `[B, 3, T, H, W]` and returns logits `[B, K]`. It names, without any shape, which of its
submodules are its stages (`stage_names`, shallow to deep) and which `nn.Linear` is its classifier
(`head_name`); `vidkd.models.taps` reads stage features and the pooled embedding through forward hooks on
those submodules, with shapes probed by one dummy forward.
"""
import torch.nn as nn

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


def build_from_config(cfg, name, num_classes, crop_size=None):
    """`name` built for the config's clip (DATA.NUM_FRAMES x DATA.TRAIN_CROP_SIZE, or `crop_size`)."""
    return build_model(name, num_classes, cfg.DATA.NUM_FRAMES, crop_size or cfg.DATA.TRAIN_CROP_SIZE,
                       **config_kwargs(cfg, name))


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
