"""The demo on the built-in synthetic dataset (what `make demo` runs).

    python tools/demo.py [--data data/synthetic] [--config configs/demo/synthetic.yaml] [KEY VALUE ...]

1. writes the synthetic dataset (HMDB51 layout, real H.264 files) unless it is already there;
2. reads its official layout into manifests (split 1), as data_prep/prepare_hmdb51.py does;
3. checks every video (data_prep/check_videos.py);
4. runs one epoch of the training loader and one pass of the multi-view test loader, with progress bars;
5. writes a PNG of one training clip per class and prints a table of what it measured.
"""
import argparse
import os
import time

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from vidkd.cli import run
from vidkd.config import load_config
from vidkd.data.check import check_manifest
from vidkd.data.datasets.csv_rows import write_manifests
from vidkd.data.datasets.hmdb51 import parse_hmdb51
from vidkd.data.loader import build_loader
from vidkd.data.synthetic import make_dataset


def prepare(data_dir, manifest_dir):
    if not os.path.isfile(os.path.join(data_dir, "SYNTHETIC_INFO.json")):
        make_dataset(data_dir)
    manifests, missing = parse_hmdb51(os.path.join(data_dir, "videos"), os.path.join(data_dir, "splits"), 1)
    write_manifests(manifest_dir, manifests.values(), missing)
    return manifests


def run_epoch(loader, desc):
    """Iterate one epoch; returns (clips, seconds, one batch kept for the picture)."""
    loader.set_epoch(0)
    clips, first, start = 0, None, time.perf_counter()
    for batch in tqdm(loader, desc=desc, unit="batch"):
        clips += len(batch["video"])
        first = first or batch
    return clips, time.perf_counter() - start, first


def plot_clips(batch, classes, mean, std, path):
    """One row per clip (its class as the title), one column per frame."""
    video = batch["video"] * torch.tensor(std).view(1, 3, 1, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1, 1)
    rows, frames = video.shape[0], video.shape[2]
    fig = Figure(figsize=(1.4 * frames, 1.5 * rows))
    axes = fig.subplots(rows, frames, squeeze=False)
    for r in range(rows):
        for t in range(frames):
            axes[r, t].imshow(video[r, :, t].permute(1, 2, 0).clamp(0, 1).numpy())
            axes[r, t].axis("off")
        axes[r, 0].set_title(classes[int(batch["targets"]["label"][r])], fontsize=8, loc="left")
    fig.suptitle("training clips (frame order left to right)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/synthetic", help="where the synthetic dataset is (or is written)")
    p.add_argument("--config", default="configs/demo/synthetic.yaml")
    p.add_argument("overrides", nargs="*", help="KEY VALUE pairs overriding the config")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    manifests = prepare(args.data, cfg.DATA.MANIFEST_DIR)
    classes = manifests["train"].label_sets["label"]

    checked = check_manifest(manifests["train"], cfg.DATA.NUM_WORKERS) + check_manifest(
        manifests["test"], cfg.DATA.NUM_WORKERS)
    bad = [c for c in checked if c[1] != "ok"]
    train = build_loader(cfg, train=True)
    test = build_loader(cfg, train=False)
    train_clips, train_s, batch = run_epoch(train, "train loader")
    test_views, test_s, _ = run_epoch(test, "test loader")

    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    png = os.path.join(cfg.OUTPUT_DIR, "train_clips.png")
    plot_clips(batch, classes, cfg.DATA.MEAN, cfg.DATA.STD, png)
    d, t = cfg.DATA, cfg.TEST
    rows = [
        ("classes", len(classes)),
        ("videos (train / test, split 1)", f"{len(manifests['train'].samples)} / {len(manifests['test'].samples)}"),
        ("videos that fail the check", len(bad)),
        ("clip (train)", f"{d.NUM_FRAMES}x{d.SAMPLING_RATE} {d.SAMPLING}, crop {d.TRAIN_CROP_SIZE}"),
        ("training clips / s", f"{train_clips / train_s:.1f} ({train_clips} clips, {d.NUM_WORKERS} workers)"),
        ("test views / video", f"{t.NUM_CLIPS} clips x {t.NUM_CROPS} crops"),
        ("test views / s", f"{test_views / test_s:.1f} ({test_views} views)"),
        ("failed decodes (train, test)", f"{train.tracker.count}, {test.tracker.count}"),
        ("batch tensor", f"{list(batch['video'].shape)} {batch['video'].dtype}"),
        ("picture", png),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 1 if bad else 0


if __name__ == "__main__":
    run(main)
