"""Time and peak memory of a VideoMAE ViT training step with each attention path, side by side:

- `explicit`: the `[B, heads, N, N]` attention matrix computed and kept (what the ViT did before issue 13, and
  what it still does for a method that taps attention maps);
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention` (the default), which never holds the matrix.

A step is forward + backward of the same model (the same weights) on a random clip. Time: the two paths run in
turn, in a shuffled order, on every batch (vidkd.profiling.latency.measure_steps), median ms. Peak memory: one
step of each path in a fresh process, the rise of its peak resident memory (VmHWM) above the memory after the
model and clip are built (in one process the allocator keeps what one path freed for the next); on CUDA, max
allocated above the start. Also the largest logit difference between the paths.

    python tools/benchmark_attention.py [--model videomae_vit_b] [--frames 16] [--size 224] [--batch 2] [--steps 5]
"""
import argparse
import multiprocessing

import torch

from vidkd.cli import run
from vidkd.models import build_model
from vidkd.profiling.latency import high_water_kb, measure_steps, reset_high_water


def build(args, device):
    torch.manual_seed(0)
    # init_scale 1: logits of a trained model's size (VideoMAE's 0.001 would make any difference look tiny)
    model = build_model(args.model, 400, args.frames, args.size, drop_path=0.0, init_scale=1.0)
    return model.to(device).train()


def clip(args, device):
    return torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)


def set_explicit(model, explicit):
    for block in model.blocks:
        block.attn.keep_map = explicit


def step(model, explicit):
    def train_step(batch):
        set_explicit(model, explicit)
        model(batch).float().sum().backward()
        model.zero_grad(set_to_none=True)
        set_explicit(model, False)
        for block in model.blocks:
            block.attn.map = None  # the kept maps released, as a method would after reading them

    return train_step


def peak_mb(args, explicit):
    """Peak memory of one step, in this (fresh) process: see the module docstring."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, x = build(args, device), clip(args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step(model, explicit)(x)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    start = reset_high_water()
    step(model, explicit)(x)
    return (high_water_kb() - start) / 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="videomae_vit_b")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per path (after 1 untimed)")
    args = p.parse_args(argv)
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        peaks = {name: pool.apply(peak_mb, (args, name == "explicit")) for name in ("explicit", "sdpa")}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(args, device)
    data = [clip(args, device) for _ in range(args.steps + 1)]
    with torch.no_grad():
        set_explicit(model, True)
        explicit = model(data[0])
        set_explicit(model, False)
        fused = model(data[0])
    times = measure_steps({"explicit": step(model, True), "sdpa": step(model, False)}, data, device, warmup=1)
    print(f"\n{args.model}, batch {args.batch} x {args.frames}x{args.size}px ({model.num_patches} tokens), forward + "
          f"backward on {device}: median of {args.steps} steps, peak memory of a step in a fresh process")
    print(f"{'attention':<10}  {'ms/step':>9}  {'peak MB':>8}")
    for name in times:
        print(f"{name:<10}  {times[name][0]:>9.0f}  {peaks[name]:>8.0f}")
    print(f"\nsdpa / explicit: time {times['sdpa'][0] / times['explicit'][0]:.3f}, peak memory "
          f"{peaks['sdpa'] / peaks['explicit']:.3f}; largest logit difference "
          f"{float((explicit - fused).abs().max()):.2e} (largest logit {float(explicit.abs().max()):.2f})")
    return 0


if __name__ == "__main__":
    run(main)
