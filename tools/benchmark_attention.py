"""Time and peak memory of a VideoMAE ViT training step with each attention path, side by side:

- `explicit`: the `[B, heads, N, N]` attention matrix computed and kept (what the ViT did before issue 13, and
  what it still does for a method that taps attention maps);
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention` (the default), which never holds the matrix.

One model, the same weights and clips; each step is forward + backward on a random clip, the two paths run in
turn in a shuffled order on every batch (vidkd.profiling.latency.measure_steps), median ms and the largest
rise of peak memory above the step's start (CPU: the process's VmHWM; CUDA: max allocated). Also the largest
logit difference between the paths.

    python tools/benchmark_attention.py [--model videomae_vit_b] [--frames 16] [--size 224] [--batch 2] [--steps 5]
"""
import argparse

import torch

from vidkd.cli import run
from vidkd.models import build_model
from vidkd.profiling.latency import measure_steps


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
            block.attn.map = None  # the kept maps: released, as a method would after reading them

    return train_step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="videomae_vit_b")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per path (after 1 untimed)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(args.model, 400, args.frames, args.size, drop_path=0.0).to(device).train()
    data = [torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device) for _ in range(args.steps + 1)]
    with torch.no_grad():
        set_explicit(model, True)
        explicit = model(data[0])
        set_explicit(model, False)
        fused = model(data[0])
    rows = measure_steps({"explicit": step(model, True), "sdpa": step(model, False)}, data, device, warmup=1)
    n = (args.frames // 2) * (args.size // 16) ** 2
    print(f"\n{args.model}, batch {args.batch} x {args.frames}x{args.size}px ({n} tokens), forward + backward, "
          f"median of {args.steps} steps on {device}")
    print(f"{'attention':<10}  {'ms/step':>9}  {'peak MB':>8}")
    for name, (ms, peak) in rows.items():
        print(f"{name:<10}  {ms:>9.0f}  {peak:>8.0f}")
    (t_e, m_e), (t_s, m_s) = rows["explicit"], rows["sdpa"]
    print(f"\nsdpa / explicit: time {t_s / t_e:.3f}, peak memory {m_s / m_e:.3f}; "
          f"largest logit difference {float((explicit - fused).abs().max()):.2e}")
    return 0


if __name__ == "__main__":
    run(main)
