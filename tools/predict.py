"""Top classes of videos with a trained or converted model, each video read with the model's own preprocessing.

    python tools/predict.py VIDEO [VIDEO ...] --checkpoint pretrained/i3d_kinetics400.pt [--top 5] [--device cpu]
        [--max-frames 250]
    python tools/predict.py VIDEO [VIDEO ...] --checkpoint output/run/student.pt --config X.yaml [--model NAME]

A vidkd weights file whose meta records its preprocessing (data_prep/convert_i3d_deepmind.py writes one) gives
the model (`name`), its classes (`heads`, `labels`) and the preprocessing (`preprocess`: fps, short_side, crop,
mean, std): the whole video resampled to `fps` (at most --max-frames frames; a centred window of a longer
one), the short side resized to `short_side` (antialiased), a `crop` x `crop` center crop, RGB in [0, 1]
normalised with mean / std. The model sees the whole clip (I3D is convolutional in time and averages its logits
over it). A checkpoint without it (training's student.pt) takes it from --config: one DATA.NUM_FRAMES x
DATA.SAMPLING_RATE clip at the centre of the video, DATA.TEST_SHORT_SIDE, DATA.TEST_CROP_SIZE, DATA.MEAN / STD;
the model is MODEL.STUDENT, the class names those of the DATA.TEST_SPLIT manifest when it can be read, else
"class k". --model overrides the model's name.

Prints, for each video, its top classes and their softmax probabilities (each label set of a multi-head model
on its own). A video that cannot be read is reported and the others are still predicted; the exit status is 1
when any failed.
"""
import argparse
import inspect
import math
import os
import sys
import time

import torch

from vidkd.cli import run
from vidkd.config import load_config
from vidkd.data.decoders import read_chunks
from vidkd.data.loader import clip_spec
from vidkd.data.manifest import Manifest
from vidkd.data.sampling import ClipSpec, test_indices
from vidkd.data.transforms import TestTransform
from vidkd.errors import CheckpointError, ConfigError, VidkdError
from vidkd.models import MODELS, build_model
from vidkd.models.base import config_kwargs, split_heads
from vidkd.models.checkpoint import load_checkpoint, read_state_dict, saved_meta

PREPROCESS_KEYS = ("fps", "short_side", "crop", "mean", "std")


def whole_video(fps_target, max_frames):
    """indices_for(num_frames, fps): the video resampled to `fps_target` (its own frames when 0 or when the
    video has no rate), at most `max_frames` of them, centred."""

    def indices_for(num_frames, fps):
        stride = ClipSpec(1, 1, "dense", fps_target).stride(fps)
        count = min(max(math.ceil(num_frames / stride - 1e-6), 1), max_frames)  # the target-fps times in the video
        return test_indices(ClipSpec(count, 1, "dense", fps_target), 0, num_frames, fps, 1, 0)

    return indices_for


def centred_clip(spec):
    return lambda num_frames, fps: test_indices(spec, 0, num_frames, fps, 1, 0)


def preprocessing(args, meta, cfg):
    """(indices_for, transform, frames to build the model for, what) from the checkpoint's meta, else from the
    config."""
    p = meta.get("preprocess")
    if p is not None:
        missing = [k for k in PREPROCESS_KEYS if not isinstance(p, dict) or k not in p]
        if missing:
            raise CheckpointError(f"{args.checkpoint}: meta 'preprocess' lacks {missing} (has {p!r})")
        bad = [k for k in ("fps", "short_side", "crop") if not isinstance(p[k], (int, float)) or p[k] <= 0]
        bad += [k for k in ("mean", "std") if not (isinstance(p[k], list) and len(p[k]) == 3
                                                  and all(isinstance(v, (int, float)) for v in p[k]))]
        if bad:
            raise CheckpointError(f"{args.checkpoint}: meta 'preprocess' {', '.join(bad)} not valid (has {p!r}): "
                                  f"fps, short_side, crop positive numbers; mean, std three numbers each")
        transform = TestTransform(int(p["short_side"]), int(p["crop"]), list(p["mean"]), list(p["std"]))
        what = (f"checkpoint meta: {p['fps']} fps, up to {args.max_frames} frames, short side {p['short_side']}, "
                f"crop {p['crop']}")
        return whole_video(float(p["fps"]), args.max_frames), transform, args.max_frames, what
    if cfg is None:
        raise CheckpointError(f"{args.checkpoint}: records no preprocessing (meta 'preprocess'); give the "
                              f"model's --config")
    d = cfg.DATA
    transform = TestTransform(d.TEST_SHORT_SIDE, d.TEST_CROP_SIZE, list(d.MEAN), list(d.STD))
    what = (f"{args.config}: {d.NUM_FRAMES} x {d.SAMPLING_RATE} frames centred, short side {d.TEST_SHORT_SIDE}, "
            f"crop {d.TEST_CROP_SIZE}")
    return centred_clip(clip_spec(cfg)), transform, d.NUM_FRAMES, what


def builder_options(meta, name, given):
    """Options of the model's builder that the meta records (e.g. I3D's `last_block`), beyond those `given`."""
    fixed = ("num_classes", "num_frames", "crop_size", *given)
    params = inspect.signature(MODELS[name]).parameters
    return {k: meta[k] for k in params if k not in fixed and k in meta}


def class_names(args, meta, cfg):
    """{head: [class names]}: the meta's labels, else the config's test manifest, else "class k"."""
    manifest_sets = None
    if cfg is not None:
        try:
            manifest_sets = Manifest.load(os.path.join(cfg.DATA.MANIFEST_DIR, f"{cfg.DATA.TEST_SPLIT}.json")).label_sets
        except VidkdError:
            pass
    heads = meta.get("heads")
    if heads is None and manifest_sets is not None:
        heads = {h: len(names) for h, names in manifest_sets.items()}
    if heads is None and cfg is not None and cfg.MODEL.NUM_CLASSES > 0:
        heads = {"label": cfg.MODEL.NUM_CLASSES}
    if not isinstance(heads, dict) or not heads:
        raise CheckpointError(f"{args.checkpoint}: records no class count (meta 'heads'), and the config gives "
                              f"none (no readable DATA.TEST_SPLIT manifest, MODEL.NUM_CLASSES 0)")
    labels = meta.get("labels")
    if isinstance(labels, list):
        labels = {next(iter(heads)): labels}
    names = {}
    for head, k in heads.items():
        for source in (labels, manifest_sets):
            if isinstance(source, dict) and isinstance(source.get(head), list) and len(source[head]) == k:
                names[head] = [str(n) for n in source[head]]
                break
        else:
            if isinstance(labels, dict) and head in labels:
                raise CheckpointError(f"{args.checkpoint}: meta 'labels' has {len(labels[head])} names for "
                                      f"head {head!r} of {k} classes")
            names[head] = [f"class {i}" for i in range(k)]
    return names


def table(probs, names, top):
    p, idx = probs.topk(min(top, len(names)))
    lines = [f"  {'rank':>4}  {'prob':>6}  class"]
    lines += [f"  {r:>4}  {float(v):6.4f}  {names[int(i)]}" for r, (v, i) in enumerate(zip(p, idx), 1)]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--checkpoint", required=True, help="vidkd weights file (with meta) or a checkpoint of the model")
    p.add_argument("--config", default=None, help="config of the model, for a checkpoint without preprocessing")
    p.add_argument("--model", default=None, help="registered model name (default: the checkpoint's, or MODEL.STUDENT)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--max-frames", type=int, default=250, help="frames of a whole-video clip (meta preprocessing)")
    p.add_argument("--decoder", default="decord", choices=("decord", "pyav"))
    args = p.parse_args(argv)
    if args.top < 1 or args.max_frames < 1:
        raise ConfigError("--top and --max-frames must be at least 1")
    if not os.path.exists(args.checkpoint):
        raise CheckpointError(f"{args.checkpoint}: checkpoint not found")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available here")

    meta = saved_meta(args.checkpoint)
    if not meta:
        read_state_dict(args.checkpoint)  # a file that cannot be read is reported as such, not as one without meta
    cfg = load_config(args.config) if args.config else None
    indices_for, transform, frames, what = preprocessing(args, meta, cfg)
    names = class_names(args, meta, cfg)
    name = args.model or meta.get("name") or (cfg.MODEL.STUDENT if cfg else None)
    if name not in MODELS:
        raise ConfigError(f"model {name!r} (from --model, the checkpoint's meta or MODEL.STUDENT) is not registered; "
                          f"registered: {', '.join(sorted(MODELS))}")
    # builder options as the config gives them, with the clip's normalisation (I3D maps it to its own range)
    options = config_kwargs(cfg or load_config(), name)
    options.update({k: tuple(v) for k, v in (("data_mean", transform.mean), ("data_std", transform.std))
                    if k in options})
    model = build_model(name, sum(len(n) for n in names.values()), frames, transform.crop_size, **options,
                        **builder_options(meta, name, options))
    report = load_checkpoint(model, args.checkpoint)  # never partial: a prediction needs every weight
    model.eval().to(device)
    print(f"{name} from {args.checkpoint} ({report['loaded']} tensors), on {device}; preprocessing from {what}")

    failed = []
    for path in args.videos:
        seen = {}

        def indices(num_frames, fps):
            seen.update(num_frames=num_frames, fps=fps)
            return indices_for(num_frames, fps)

        start = time.perf_counter()
        try:
            chunks = read_chunks(path, indices, lambda f: transform(f, 0, 1), backend=args.decoder)
        except VidkdError as e:
            print(f"error: {e}", file=sys.stderr)
            failed.append(path)
            continue
        clip = torch.cat(chunks, dim=1)
        read = time.perf_counter() - start
        with torch.inference_mode():
            logits = model(clip[None].to(device)).float().cpu()[0]
        seconds = time.perf_counter() - start - read
        print(f"\n{path}: {seen['num_frames']} frames at {seen['fps']:.2f} fps -> clip of {clip.shape[1]} x "
              f"{clip.shape[2]} x {clip.shape[3]} (read {read:.1f} s, model {seconds:.1f} s)")
        for head, z in split_heads(logits[None], {h: len(n) for h, n in names.items()}).items():
            if len(names) > 1:
                print(f" {head}:")
            print(table(z[0].softmax(0), names[head], args.top))
    if failed:
        print(f"\n{len(failed)} of {len(args.videos)} videos failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run(main)
