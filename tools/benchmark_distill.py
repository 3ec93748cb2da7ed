"""What distillation costs per training step, on the same batches (random clips of the config's training shape):

1. the student alone (CE: forward, backward, optimiser step);
2. the teachers' forward alone (the method's `teacher_targets`);
3. the method live (teachers run every step);
4. the method from the teacher-output cache (targets read from memory-mapped fp16 files, as in training).

Prints clips/s and peak memory of each, the method's training-only parameters (what it trains beyond the
student: exits, aligners, prompts, FBT's fusion tail; not a frozen copy), and the two ratios of issue 6: `live / (student + teachers)` (target <= 1.10:
the method adds little beyond the models it runs) and `cached / student` (target <= 1.15). `--compare kd ...`
also times other methods live on the same batches (PAT against KD: `live / KD live`). Clips, or images with
TASK image.

    python tools/benchmark_distill.py --config configs/demo/synthetic.yaml [--steps 20] [KEY VALUE ...]
    python tools/benchmark_distill.py --config configs/image/pat/synthetic_frames.yaml --compare kd

On the CPU, peak memory is how far the resident memory rises during a step, measured in a second process (the same
steps) in which glibc's mmap threshold is fixed, so that every freed tensor leaves the process: the default
allocator keeps freed memory, so the rise would show only the largest step's first allocations. The times come from
this process, with the default allocator (mmapping every tensor slows every step).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from vidkd.cli import run
from vidkd.config import load_config
from vidkd.distill.build import build_distiller, teachers_needed
from vidkd.engine.teacher_cache import TeacherCache
from vidkd.engine.trainer import build_models, param_groups
from vidkd.errors import ConfigError
from vidkd.profiling.latency import measure_steps
from vidkd.tasks import input_size


MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc reads it at start-up: bytes above which a block is mmapped (fixed)


def batches(cfg, heads, steps, device):
    """Random inputs of the config's training shape; `index` counts the samples (CRD's memory bank rows)."""
    b = cfg.TRAIN.BATCH_SIZE
    g = torch.Generator().manual_seed(cfg.SEED)
    return [{"input": torch.randn(b, 3, *input_size(cfg), generator=g).to(device),
             "index": torch.arange(i * b, (i + 1) * b, device=device),
             "targets": {h: torch.randint(k, (b,), generator=g).to(device) for h, k in heads.items()}}
            for i in range(steps)]


def write_cache(distiller, data, folder):
    """The method's targets of every batch, stored as the cache stores them (one shard, one view)."""
    with torch.no_grad():
        out = [distiller.teacher_targets(batch["input"]) for batch in data]
    names = sorted(out[0])
    for name in names:
        np.save(os.path.join(folder, f"{name}.shard0.npy"),
                torch.cat([o[name] for o in out]).cpu().half().numpy())
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"world": 1, "views": 1, "rows": sum(len(b["input"]) for b in data), "names": names}, f)
    return TeacherCache(folder)


def training_step(distiller, cfg, cache=None):
    optimizer = torch.optim.AdamW(param_groups(distiller, cfg.SOLVER.WEIGHT_DECAY), lr=cfg.SOLVER.BASE_LR)
    done = [0]  # clips read from the cache so far: the cache holds the batches in order

    def step(batch):
        if cache is not None:
            rows = [cache.read(r % cache.rows, 0) for r in range(done[0], done[0] + len(batch["input"]))]
            done[0] += len(batch["input"])
            teacher = {name: torch.stack([r[name] for r in rows]).to(batch["input"].device).float() for name in rows[0]}
            batch = {**batch, "teacher": teacher}
        _, losses = distiller(batch)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def memory_pass(argv):
    """The peaks of the same steps, from a process with glibc's mmap threshold fixed at 128 KB."""
    argv = sys.argv[1:] if argv is None else argv
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--peaks-only", *argv], capture_output=True,
                          text=True, env={**os.environ, MMAP_ENV: "131072"})
    if proc.returncode:
        raise RuntimeError(f"the memory pass failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (after 3 untimed)")
    p.add_argument("--compare", nargs="*", default=[], help="other DISTILL.METHODs to time live on the same batches")
    p.add_argument("--peaks-only", action="store_true", help=argparse.SUPPRESS)  # the memory pass: JSON of peaks
    p.add_argument("overrides", nargs="*", help="KEY VALUE pairs overriding the config")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides + ["DISTILL.CACHE", "live"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    heads = {"label": cfg.MODEL.NUM_CLASSES or 400}
    torch.manual_seed(cfg.SEED)
    student, built = build_models(cfg, heads)
    teachers = dict(zip(teachers_needed(cfg), (t.to(device) for t in built)))

    def distiller(name):
        c = load_config(args.config, args.overrides + ["DISTILL.CACHE", "live", "DISTILL.METHOD", name])
        missing = [i for i in teachers_needed(c) if i not in teachers]
        if missing:
            raise ConfigError(f"--compare {name}: runs MODEL.TEACHERS {missing}, which {cfg.DISTILL.METHOD} does not")
        d = build_distiller(c, student, [teachers[i] for i in teachers_needed(c)], heads)
        d.num_samples = (args.steps + 3) * cfg.TRAIN.BATCH_SIZE
        return d.to(device).train()

    method, alone = distiller(cfg.DISTILL.METHOD), distiller("ce")
    data = batches(cfg, heads, args.steps + 3, device)
    with tempfile.TemporaryDirectory() as folder:
        cache = write_cache(method, data, folder)
        steps = {"student alone": training_step(alone, cfg),
                 "teachers' forward": lambda b: method.teacher_targets(b["input"]),
                 f"{cfg.DISTILL.METHOD}, live": training_step(method, cfg),
                 f"{cfg.DISTILL.METHOD}, cached": training_step(method, cfg, cache)}
        others = {name: distiller(name) for name in args.compare}
        steps.update({f"{name}, live": training_step(d, cfg) for name, d in others.items()})
        rows = measure_steps(steps, data, device)
    if args.peaks_only:
        print(json.dumps({name: peak for name, (_, peak) in rows.items()}))
        return 0
    if device.type == "cpu":
        peaks = memory_pass(argv)
        rows = {name: (ms, peaks[name]) for name, (ms, _) in rows.items()}
    b, width = cfg.TRAIN.BATCH_SIZE, max(map(len, rows))
    shape = "x".join(map(str, input_size(cfg)))
    print(f"\n{cfg.MODEL.STUDENT} <- {', '.join(cfg.MODEL.TEACHERS)}; batch {b} x {shape}px, median of "
          f"{args.steps} steps on {device}")
    print(f"{'':<{width}}  {'inputs/s':>9}  {'ms/step':>9}  {'peak MB':>8}  {'training-only params (M)':>24}")
    extra = {f"{name}, {how}": sum(p.numel() for n, p in d.named_parameters()
                                   if p.requires_grad and not n.startswith("student.")) / 1e6
             for name, d in [(cfg.DISTILL.METHOD, method), *others.items()] for how in ("live", "cached")}
    for name, (ms, peak) in rows.items():
        print(f"{name:<{width}}  {1e3 * b / ms:>9.1f}  {ms:>9.1f}  {peak:>8.0f}  "
              f"{f'{extra[name]:.2f}' if name in extra else '-':>24}")
    student, teachers, live, cached = (ms for ms, _ in list(rows.values())[:4])
    print(f"\nlive / (student + teachers) = {live / (student + teachers):.3f}   (target <= 1.10)")
    print(f"cached / student alone      = {cached / student:.3f}   (target <= 1.15)")
    for name in args.compare:
        print(f"{cfg.DISTILL.METHOD} live / {name} live = {live / rows[f'{name}, live'][0]:.2f}")
    return 0


if __name__ == "__main__":
    run(main)
