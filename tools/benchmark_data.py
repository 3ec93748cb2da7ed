"""Clips per second of the vidkd training loader vs pytorchvideo's LabeledVideoDataset (PyAV decoder).

    python tools/benchmark_data.py [--videos DIR] [--codec xvid|h264] [--clips 400] [--workers 2]

Both read the same files with the same clip spec (16 frames x stride 4, random resized 112 crop,
normalised) and the same number of loader workers; both produce [B, 3, 16, 112, 112] float batches.
Without --videos, a synthetic set like HMDB51's files is written to data/bench/<codec>: 240x320, 3 s at
30 fps, 0.7 Mb/s (HMDB51: about 2 GB for 6,766 clips of about 3 s), as MPEG-4 Part 2 AVI with the XVID tag
(the format of HMDB51's DivX AVI files; default), or as H.264 mp4 (`--codec h264`, with B-frames: the harder
case, where both loaders spend most of their time in the H.264 decoder). vidkd is timed with both its decoders.
Target: vidkd (default decoder) at least 3x pytorchvideo.

Correct frames first: the manifest is checked as data_prep/check_videos.py does (writing the seek index the
loader reads), and for one training clip of every video the frames that vidkd's reading gives, and those each
decoder's own seeking gives, are compared with a sequential decode of the file (frame i = its i-th frame).
"""
import argparse
import json
import os
import time

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

from vidkd.cli import run
from vidkd.config import load_config
from vidkd.data.check import check_manifest
from vidkd.data.datasets.hmdb51 import parse_hmdb51
from vidkd.data.decoders import DecordReader, PyAVReader, read_clip
from vidkd.data.loader import build_loader
from vidkd.data.sampling import ClipSpec, train_indices
from vidkd.data.seeking import BACKENDS, load_index
from vidkd.data.synthetic import CODECS, dataset_info, make_dataset
from vidkd.data.transforms import TrainTransform

CLIP = dict(num_frames=16, rate=4, crop=112, mean=[0.45] * 3, std=[0.225] * 3, batch=8)


def prepare(videos_dir, codec, workers):
    """The training manifest and the path it is written to; the synthetic set is (re)written unless it is there
    with today's parameters; every video is checked and the seek index written."""
    if videos_dir is None:
        videos_dir, kw = f"data/bench/{codec}", dict(videos_per_class=16, seed=1, height=240, width=320, frames=90,
                                                     fps=30, bit_rate=700_000, codec=codec)
        info = os.path.join(videos_dir, "SYNTHETIC_INFO.json")
        if not os.path.isfile(info) or _read_json(info) != dataset_info(**kw):
            make_dataset(videos_dir, **kw)
    manifests, _ = parse_hmdb51(os.path.join(videos_dir, "videos"), os.path.join(videos_dir, "splits"))
    train, path = manifests["train"], os.path.join(videos_dir, "manifests", "train.json")
    train.save(path)
    bad = [r for r in check_manifest(path, workers) if r[1] != "ok"]
    if bad:
        print(f"{len(bad)} bad videos, e.g. {bad[0]}")
    return train, path


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def frames_correct(manifest, manifest_path):
    """`{reader: (right, total)}` frames of one training clip per video against a sequential decode: vidkd's
    reading with each decoder, and each decoder's own seeking."""
    spec, index, counts = ClipSpec(CLIP["num_frames"], CLIP["rate"]), load_index(manifest_path), {}
    for k, rec in enumerate(manifest.samples):
        path = manifest.abspath(rec)
        with av.open(path) as container:
            truth = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        want = train_indices(spec, 0, len(truth), 0.0, np.random.default_rng(k))
        reads = {f"vidkd (DATA.DECODER {b})": read_clip(path, lambda n, fps, w=want: w, b, index=index) for b in BACKENDS}
        reads.update({f"{b} seeking alone": r(path).get_frames(want) for b, r in zip(BACKENDS, (DecordReader, PyAVReader))})
        for name, frames in reads.items():
            right = sum(np.array_equal(f, truth[i]) for f, i in zip(frames.numpy(), want))
            counts[name] = tuple(np.add(counts.get(name, (0, 0)), (right, len(want))))
    return counts


def vidkd_loader(manifest_dir, workers, decoder):
    c = CLIP
    cfg = load_config(None, ["DATA.MANIFEST_DIR", manifest_dir, "DATA.NUM_WORKERS", str(workers),
                             "DATA.DECODER", decoder,
                             "DATA.NUM_FRAMES", str(c["num_frames"]), "DATA.SAMPLING_RATE", str(c["rate"]),
                             "DATA.TRAIN_CROP_SIZE", str(c["crop"]),
                             "TRAIN.BATCH_SIZE", str(c["batch"])])
    return build_loader(cfg, train=True)


def pytorchvideo_loader(manifest, workers, fps):
    """pytorchvideo's own pipeline: time-based random clip sampler, PyAV decode of the whole window, then
    uniform temporal subsampling to 16 frames; the same spatial transform as vidkd's."""
    from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler

    c = CLIP
    spatial = TrainTransform(c["crop"], (0.4, 1.0), (0.75, 1.3333), True, c["mean"], c["std"])

    def transform(sample):
        video = sample["video"]  # [3, T, H, W] float in 0..255
        keep = torch.linspace(0, video.shape[1] - 1, c["num_frames"]).long()
        frames = video[:, keep].permute(1, 2, 3, 0).to(torch.uint8)
        return {"input": spatial(frames), "label": sample["label"]}

    paths = [(manifest.abspath(r), {"label": r.targets["label"]}) for r in manifest.samples]
    dataset = LabeledVideoDataset(
        paths, make_clip_sampler("random", c["num_frames"] * c["rate"] / fps), torch.utils.data.RandomSampler,
        transform=transform, decode_audio=False, decoder="pyav",
    )
    return DataLoader(dataset, batch_size=c["batch"], num_workers=workers, persistent_workers=True)


def clips_per_second(batches, n_clips):
    """Clips per second over n_clips, timed from the first batch (worker start-up excluded)."""
    it, done = iter(batches), 0
    first = next(it)
    assert first["input"].shape[1:] == (3, CLIP["num_frames"], CLIP["crop"], CLIP["crop"]), first["input"].shape
    start = time.perf_counter()
    while done < n_clips:
        try:
            done += len(next(it)["input"])
        except StopIteration:
            it = iter(batches)
    return done / (time.perf_counter() - start)


def epochs(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", help="an HMDB51-layout folder (videos/, splits/); default: synthetic 240x320")
    p.add_argument("--codec", choices=sorted(CODECS), default="xvid", help="codec of the synthetic files")
    p.add_argument("--clips", type=int, default=400, help="clips to time for each loader")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    manifest, manifest_path = prepare(args.videos, args.codec, args.workers)
    manifest_dir = os.path.dirname(manifest_path)
    index = load_index(manifest_path)
    print("\nseeking exact in: " + ", ".join(f"{b} {sum(v[b] for v in index.values())} of {len(index)} videos"
                                            for b in BACKENDS) + " (where decord's is not, vidkd reads with PyAV)")
    print(f"{'frames of a sequential decode':<34}{'right':>9}")
    for name, (right, total) in frames_correct(manifest, manifest_path).items():
        print(f"{name:<34}{right:>9} of {total} ({100 * right / total:.1f}%)")
    fps = 30.0
    rates = {f"vidkd (DATA.DECODER {d})": clips_per_second(epochs(vidkd_loader(manifest_dir, args.workers, d)), args.clips)
             for d in ("decord", "pyav")}
    base = clips_per_second(pytorchvideo_loader(manifest, args.workers, fps), args.clips)
    rates["pytorchvideo LabeledVideoDataset"] = base
    files = args.videos or f"synthetic {args.codec}"
    print(f"\n{len(manifest.samples)} videos ({files}), clip 16x4 at 112 px, batch {CLIP['batch']}, "
          f"{args.workers} workers")
    print(f"{'loader':<34}{'clips/s':>9}{'ratio':>8}")
    for name, rate in rates.items():
        print(f"{name:<34}{rate:>9.1f}{rate / base:>7.2f}x")
    ratio = rates["vidkd (DATA.DECODER decord)"] / base
    print(f"vidkd (default decoder) / pytorchvideo: {ratio:.2f}x (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    run(main)
