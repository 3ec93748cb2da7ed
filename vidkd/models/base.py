"""The registries and the contract every vidkd model keeps.

A video model takes clips `[B, 3, T, H, W]`, an image model images `[B, 3, H, W]`; both return logits `[B, K]`.
A model names, without any shape, which of its submodules are its stages (`stage_names`, shallow to deep), how
each stage's output is laid out (`stage_layout`), which module is its classifier (`head_name`) and, where a
dropout comes before it, the module whose input is the embedding (`embed_name`); `vidkd.models.taps` reads
stage features and the pooled embedding through forward hooks on those submodules, with shapes probed by one
dummy forward.
"""
import contextlib

import torch.nn as nn

from vidkd.errors import ConfigError
from vidkd.models.taps import probe
from vidkd.tasks import input_size

MODELS = {}  # video models
IMAGE_MODELS = {}
FACE_MODELS = {}  # face recognition: image -> embedding
REGISTRIES = {"video": MODELS, "image": IMAGE_MODELS, "face": FACE_MODELS}


def register(name, task="video"):
    """Decorator: `@register("x3d_s")` on a builder `fn(num_classes, num_frames, crop_size, **kw) -> VideoModel`;
    `@register("resnet18", "image")` on a builder `fn(num_classes, crop_size, **kw)`."""

    def add(fn):
        if name in REGISTRIES[task]:
            raise ValueError(f"{task} model {name!r} registered twice")
        REGISTRIES[task][name] = fn
        return fn

    return add


def _named(model, name):
    model.name = name
    return model


def build_model(name, num_classes, num_frames=16, crop_size=224, **kwargs):
    """Build a registered video model for clips of `num_frames x crop_size x crop_size`."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    return _named(MODELS[name](num_classes=num_classes, num_frames=num_frames, crop_size=crop_size, **kwargs), name)


def build_image_model(name, num_classes, crop_size=224, **kwargs):
    """Build a registered image model for `crop_size x crop_size` images."""
    if name not in IMAGE_MODELS:
        raise KeyError(f"unknown image model {name!r}; registered: {', '.join(sorted(IMAGE_MODELS))}")
    return _named(IMAGE_MODELS[name](num_classes=num_classes, crop_size=crop_size, **kwargs), name)


def build_face_model(name, crop_size=112):
    """Build a registered face model for `crop_size x crop_size` faces (its output: the embedding)."""
    if name not in FACE_MODELS:
        raise KeyError(f"unknown face model {name!r}; registered: {', '.join(sorted(FACE_MODELS))}")
    return _named(FACE_MODELS[name](crop_size=crop_size), name)


def build_for_task(task, name, **kwargs):
    """`build_model` for a video model, `build_image_model` for an image model, `build_face_model` for a face model
    (TASK; a face model has no classes)."""
    if task == "face":
        return build_face_model(name, kwargs.get("crop_size", 112))
    return (build_model if task == "video" else build_image_model)(name, **kwargs)


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
    """`name`, a model of the config's TASK, built for its input (DATA.NUM_FRAMES x DATA.<crop_key> for a
    clip, DATA.<crop_key> for an image; a face model ignores `num_classes`), refused by the keys if it cannot be
    built for that input or cannot take it (a crop its pooling shrinks to nothing, too few frames for its temporal
    stride)."""
    crop = cfg.DATA[crop_key]
    with input_refused(cfg, name, crop_key):
        if cfg.TASK == "video":
            model = build_model(name, num_classes, cfg.DATA.NUM_FRAMES, crop, **config_kwargs(cfg, name))
        elif cfg.TASK == "face":  # an embedding: the identities are the method's margin head's
            model = build_face_model(name, crop)
        else:
            model = build_image_model(name, num_classes, crop)
    check_takes_input(model, cfg, crop_key)
    return model


def check_takes_input(model, cfg, crop_key):
    """One dummy input of the config's size (`vidkd.tasks.input_size`) through `model` (in its dtype, on its
    device)."""
    with input_refused(cfg, model.name, crop_key):
        probe(model, input_size(cfg, crop_key))


@contextlib.contextmanager
def input_refused(cfg, name, crop_key):
    """A model's shape error (RuntimeError from a layer, ValueError from a builder) as a ConfigError naming the
    keys that set the input's size: DATA.NUM_FRAMES (video) and DATA.<crop_key>."""
    size = input_size(cfg, crop_key)
    keys = (f"keys DATA.NUM_FRAMES {cfg.DATA.NUM_FRAMES} and " if cfg.TASK == "video" else "key ") + \
        f"DATA.{crop_key} {cfg.DATA[crop_key]}"
    try:
        yield
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"config {keys}: the model {name} cannot take a {' x '.join(map(str, size))} "
                          f"{'clip' if cfg.TASK == 'video' else 'image'} ({str(e).splitlines()[0]})") from None


class VideoModel(nn.Module):
    """Base class of every vidkd model, video or image. Subclasses set `stage_names` and `head_name`, and declare
    how to read each stage: `stage_layout` (one of `vidkd.models.taps.LAYOUTS` for every stage, or a tuple of
    one per stage); `embed_name` when the classifier's input is not the embedding (a dropout comes first: its
    input is). A token model also sets `token_grid` ((T', H', W') or (H', W')) for the taps to fold tokens."""

    stage_names = ()
    stage_layout = "NCTHW"
    head_name = ""
    embed_name = ""
    token_grid = None

    def head_module(self):
        """The classifier named by `head_name` (a method, not a property: a model may own a module `head`)."""
        return self.get_submodule(self.head_name)

    def embed_module(self):
        """The module whose input is the pooled embedding: `embed_name`, else the classifier."""
        return self.get_submodule(self.embed_name or self.head_name)

    def layouts(self):
        """One layout per stage."""
        layout = self.stage_layout
        return (layout,) * len(self.stage_names) if isinstance(layout, str) else tuple(layout)


class Wrapped(VideoModel):
    """A third-party network, unchanged, as `self.net`; `prepare` turns the clip into its input."""

    def __init__(self, net, stage_names, head_name, prepare=None, embed_name=""):
        super().__init__()
        self.net, self.prepare = net, prepare
        self.stage_names = tuple(f"net.{n}" for n in stage_names)
        self.head_name = f"net.{head_name}"
        self.embed_name = embed_name and f"net.{embed_name}"

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
