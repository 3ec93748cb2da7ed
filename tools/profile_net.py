"""GFLOPs, parameters, peak memory and latency of the config's teachers and student (or of --models).

    python tools/profile_net.py --config X.yaml [--models a b ...] [--runs 10] [--batch B]
        [--frames T] [--size S] [--json out.json] [KEY VALUE ...]

Input: a clip [1, 3, DATA.NUM_FRAMES, DATA.TEST_CROP_SIZE, DATA.TEST_CROP_SIZE] (or --frames / --size), or with
TASK image an image [1, 3, DATA.TEST_CROP_SIZE, DATA.TEST_CROP_SIZE] (or --size). GFLOPs are
fvcore's (one multiply-add = one flop), per view and per video (TEST.NUM_CLIPS x TEST.NUM_CROPS views).
Latency: median of --runs forwards after 3 warm-up ones, at batch 1 and at --batch (default
TRAIN.BATCH_SIZE), on the CPU and on CUDA when there is one. Peak memory: the CPU max-RSS growth of a batch-1
forward in a fresh process, and CUDA's max allocated at --batch, weights included. With MODEL.NUM_CLASSES 0
the models get 400 classes (the head is a negligible share). Writes --json (default <OUTPUT_DIR>/profile.json).
"""
import argparse
import json
import os

import torch
from tqdm import tqdm

from vidkd.cli import run
from vidkd.config import load_config
from vidkd.errors import ConfigError
from vidkd.profiling import count_flops, measure_latency, peak_memory_mb  # first: fvcore.nn imported quietly
from vidkd.models import REGISTRIES  # noqa: I001
from vidkd.models.base import build_for_task, config_kwargs


def profile(task, name, kwargs, shape, batch, runs, devices):
    model = build_for_task(task, name, **kwargs)
    result = count_flops(model, shape)
    result["cpu_peak_mb"] = peak_memory_mb(task, name, kwargs, shape)
    result["latency"] = {device: {str(b): measure_latency(model, (b, *shape[1:]), device, runs=runs)
                                  for b in (1, batch)} for device in devices}
    return result


def distillation_cost(cfg, results):
    """GFLOPs per training clip: each teacher's forward plus the student's forward and backward, the
    backward counted as 2x the forward; and the ratio of that to training the student alone."""
    teachers = {name: results[name]["gflops"] for name in cfg.MODEL.TEACHERS}
    student = 3 * results[cfg.MODEL.STUDENT]["gflops"]
    total = sum(teachers.values()) + student
    return dict(teachers_forward=teachers, student_forward_backward=student, total=total, ratio=total / student)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--models", nargs="+", help="registered model names (default: teachers and student)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--batch", type=int, help="throughput batch size (default TRAIN.BATCH_SIZE)")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--json")
    parser.add_argument("overrides", nargs="*", help="KEY VALUE pairs")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)

    names = args.models or list(dict.fromkeys([*cfg.MODEL.TEACHERS, cfg.MODEL.STUDENT]))
    registry = REGISTRIES[cfg.TASK]
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"unknown {cfg.TASK} model(s) {', '.join(unknown)}; registered: "
                          f"{', '.join(sorted(registry))}")
    frames, size = args.frames or cfg.DATA.NUM_FRAMES, args.size or cfg.DATA.TEST_CROP_SIZE
    kwargs = dict(num_classes=cfg.MODEL.NUM_CLASSES or 400, crop_size=size)
    if cfg.TASK == "video":
        shape, kwargs["num_frames"] = (1, 3, frames, size, size), frames
    else:
        shape = (1, 3, size, size)
    batch = args.batch or cfg.TRAIN.BATCH_SIZE
    views = cfg.TEST.NUM_CLIPS * cfg.TEST.NUM_CROPS
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    results = {}
    for name in tqdm(names, desc="profiling"):
        results[name] = profile(cfg.TASK, name, {**kwargs, **config_kwargs(cfg, name)}, shape, batch, args.runs,
                                devices)
        results[name]["gflops_per_video"] = results[name]["gflops"] * views

    print(f"\ninput {list(shape)}, {views} views per video, latency: median of {args.runs} forwards (ms)")
    columns = ["model", "GFLOPs/view", "GFLOPs/video", "params M", "cpu peak MB"]
    columns += [f"{d} b{b} ms" for d in devices for b in (1, batch)]
    columns += ["cuda peak MB"] if "cuda" in devices else []
    print(" | ".join(columns))
    for name, r in results.items():
        row = [name, f"{r['gflops']:.3f}", f"{r['gflops_per_video']:.1f}", f"{r['params_m']:.2f}",
               f"{r['cpu_peak_mb']:.0f}"]
        row += [f"{r['latency'][d][str(b)]['median_ms']:.1f}" for d in devices for b in (1, batch)]
        row += [f"{r['latency']['cuda'][str(batch)]['peak_mb']:.0f}"] if "cuda" in devices else []
        print(" | ".join(row))
    print("\nops fvcore does not count (calls):")
    for name, r in results.items():
        print(f"  {name}: " + (", ".join(f"{op} x{n}" for op, n in r["unsupported"].items()) or "none"))

    distill = None
    if {cfg.MODEL.STUDENT, *cfg.MODEL.TEACHERS} <= results.keys():
        distill = distillation_cost(cfg, results)
        print(f"\ndistillation cost per training input ({'x'.join(map(str, shape[2:]))}; backward = 2x forward): "
              + " + ".join(f"{t} {g:.2f}" for t, g in distill["teachers_forward"].items())
              + f" + student fwd+bwd {distill['student_forward_backward']:.2f} = {distill['total']:.2f} GFLOPs, "
              f"{distill['ratio']:.1f}x the student alone")

    path = args.json or os.path.join(cfg.OUTPUT_DIR, "profile.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(input_shape=list(shape), views_per_video=views, batch=batch, runs=args.runs,
                       devices=devices, models=results, distillation=distill), f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run(main)
