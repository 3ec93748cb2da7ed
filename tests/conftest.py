"""Fixtures that write real encoded videos with PyAV into a temp dir, and helpers that run vidkd's tools in
their own processes (1 process, or N DeepSpeed ranks on the CPU) on a tiny synthetic dataset.

Frame i of a test video is a horizontal gray ramp (0..15) plus a brightness of `5 * i`, so the mean brightness
of a decoded frame tells which frame it is, and the ramp tells which part of the frame a crop came from.
With `digits` > 1, for more than 48 frames, the frame is cut into that many horizontal bands, band k showing
digit k of i in base 48 (most significant first) as its brightness.
With `noise`, zero-mean pixel noise (seeded by i) makes the coded frames large, as real footage is.
"""
import functools
import json
import os
import shutil
import socket
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
import yaml
from hypothesis import settings

from vidkd.data.datasets.hmdb51 import parse_hmdb51
from vidkd.data.synthetic import make_dataset

# The property tests draw the same examples on every run of `make test` (a verdict on the code, not on the
# draw); VIDKD_HYPOTHESIS=explore draws new ones, to search for failures, each found one kept as an @example.
settings.register_profile("make-test", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("VIDKD_HYPOTHESIS", "make-test"))

CODECS = {  # name -> (codec, container extension, pixel format): HMDB51-era AVI codecs and H.264 mp4
    "h264": ("libx264", "mp4", "yuv420p"),
    "mpeg4": ("mpeg4", "avi", "yuv420p"),
    "msmpeg4": ("msmpeg4v2", "avi", "yuv420p"),
    "mjpeg": ("mjpeg", "avi", "yuvj420p"),
    "cinepak": ("cinepak", "avi", "rgb24"),
    "av1": ("libsvtav1", "mkv", "yuv420p"),  # decord's FFmpeg cannot decode it; PyAV's can
    "h264-ts": ("libx264", "ts", "yuv420p"),  # MPEG-TS: timestamps not starting at zero
}


BASE = 48  # digits 0..47: 5 * 47 + 15 = 250 still fits in a byte


def frame_image(i, height, width, noise=0, digits=1):
    ramp = np.linspace(0, 15, width, dtype=np.float32)[None, :, None]
    levels = [i] if digits == 1 else [i // BASE ** (digits - 1 - k) % BASE for k in range(digits)]
    bands = np.repeat(levels, -(-height // digits))[:height, None, None]  # rows of band k show level k
    image = np.broadcast_to(5 * bands + ramp, (height, width, 3))
    if noise:
        image = image + np.random.default_rng(i).integers(-noise, noise + 1, (height, width, 3))
    return image.clip(0, 255).astype(np.uint8)


def write_test_video(path, num_frames=48, height=72, width=128, fps=25, codec="h264", gop=12, noise=0, digits=1,
                     bframes=None, pts_in_decode_order=False):
    """`fps`: a number or a Fraction (e.g. Fraction(30000, 1001) for 29.97). `bframes`: B-frames between
    reference frames (None: the encoder's default, 3 for libx264, none for mpeg4). `pts_in_decode_order`: every
    packet's timestamps set to its place in decode order, as some muxers write files with B-frames."""
    name, _, pix_fmt = CODECS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(name, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if name == "libx264":
            stream.options = {"g": str(gop), "threads": "1", "x264-params": "mbtree=0"}
        else:
            stream.bit_rate = 8_000_000
        if bframes is not None:
            stream.options = {**stream.options, "bf": str(bframes), "g": str(gop)}
        packets = 0
        for i in range(num_frames + 1):
            frame = av.VideoFrame.from_ndarray(frame_image(i, height, width, noise, digits), format="rgb24")
            for packet in stream.encode(frame if i < num_frames else None):
                if pts_in_decode_order:
                    packet.pts = packet.dts = packets * packet.duration
                packets += 1
                container.mux(packet)
    return path


def frame_numbers(frames, digits=1):
    """The frame index each decoded frame [T, H, W, 3] shows (inverse of frame_image's brightness, band by band
    for `digits` > 1)."""
    levels = [[round((float(band.mean()) - 7.5) / 5) for band in f.float().chunk(digits)] for f in frames]
    return [functools.reduce(lambda n, d: n * BASE + d, ds) for ds in levels]


@pytest.fixture
def video_factory(tmp_path):
    def make(name="v", ext=None, **kw):
        """`name` may hold folders (created)."""
        ext = ext or CODECS[kw.get("codec", "h264")][1]
        path = tmp_path / f"{name}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(write_test_video(path, **kw))

    return make


# ----------------------------------------------------------------------------------------------- runs
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300  # seconds per subprocess: a hung collective fails the test instead of the whole run


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(threads="1"):
    """This environment without any launcher / SLURM variables, with DeepSpeed on the CPU. `threads`: the
    OMP_NUM_THREADS of each process (None: unset, so that distributed.init shares the cores out)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                       "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")}
    env["DS_ACCELERATOR"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = threads
    return env


def command(args, ranks=1):
    """`python script ...` for 1 rank, `deepspeed --num_gpus N script ...` for N."""
    if ranks == 1:
        return [sys.executable, *args]
    launcher = shutil.which("deepspeed", path=os.path.dirname(sys.executable))
    assert launcher, f"the deepspeed launcher is not installed beside {sys.executable}"
    return [launcher, "--num_gpus", str(ranks), "--master_port", str(free_port()), *args]


def launch(args, ranks=1, threads="1", timeout=TIMEOUT):
    """Run a tools/ script (see `command`) to its end; returns the CompletedProcess with its output."""
    return subprocess.run(command(args, ranks), cwd=REPO, env=clean_env(threads), capture_output=True, text=True,
                          timeout=timeout)


def ok(proc):
    """Assert exit 0, showing the end of the output otherwise."""
    assert proc.returncode == 0, (f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                                  f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


def records(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def evaluated_metrics(record):
    """The `test/...` metrics of a metrics.jsonl record, without the prefix."""
    return {k[len("test/"):]: v for k, v in record.items() if k.startswith("test/")}


def checksum(state):
    """What distributed.check_replicas returns: the sum of all entries of a state dict, in its order."""
    return sum(float(t.double().sum()) for t in state.values())


def load_student(out):
    return torch.load(os.path.join(out, "student.pt"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """The synthetic dataset, 8 classes x 3 videos of 16 frames at 48x64 (real H.264), as HMDB51 split 1
    manifests: 16 training and 8 test videos."""
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(str(root), videos_per_class=3, height=48, width=64, frames=16, progress=False)
    manifests, missing = parse_hmdb51(str(root / "videos"), str(root / "splits"), 1)
    assert missing == {"train": [], "test": []}
    for split, manifest in manifests.items():
        manifest.save(str(root / "manifests" / f"{split}.json"))
    assert (len(manifests["train"].samples), len(manifests["test"].samples)) == (16, 8)
    return root


def write_config(path, data_root, out, method, **extra):
    """A yaml of tiny clips (4 frames x 32 px) and a tiny student; `extra` {"GROUP": {KEY: value}} merged in (or
    {"KEY": value} for a top-level key)."""
    cfg = {
        "OUTPUT_DIR": str(out),
        "DATA": {"MANIFEST_DIR": str(data_root / "manifests"), "NUM_FRAMES": 4, "SAMPLING_RATE": 2,
                 "TRAIN_CROP_SIZE": 32, "TEST_SHORT_SIDE": 32, "TEST_CROP_SIZE": 32, "NUM_WORKERS": 0,
                 "FLIP": False},
        "MODEL": {"STUDENT": "x3d_xs", "TEACHERS": ["videomae_vit_ti", "x3d_m"]},
        "TRAIN": {"BATCH_SIZE": 4, "EPOCHS": 2, "EVAL_PERIOD": 1, "CHECKPOINT_PERIOD": 1},
        "TEST": {"BATCH_SIZE": 4, "NUM_CLIPS": 1, "NUM_CROPS": 1},
        "DISTILL": {"METHOD": method},
        "DEEPSPEED": {"PRECISION": "fp32"},  # bf16 (the default, for GPUs) in the tests that say so: slower on a CPU
    }
    for group, values in extra.items():
        if isinstance(values, dict):
            cfg.setdefault(group, {}).update(values)
        else:  # a top-level key (TASK)
            cfg[group] = values
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="session")
def face_data(tmp_path_factory):
    """A tiny face set, as data_prep/prepare_faces.py leaves one: 8 identities x 6 grey-ish 32 x 32 PNGs (each
    identity a fixed random pattern, each image it plus noise and a shift), 5 identities for training (30 images) and
    3 held out (18 images, 45 + 45 pairs) in `<root>/manifests` (train.json, test.json, pairs.csv)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for person in range(8):
        pattern = rng.integers(0, 256, (8, 8, 3))
        for i in range(6):
            image = np.kron(pattern, np.ones((4, 4, 1))) + rng.normal(0, 20, (32, 32, 3))
            image = np.roll(image, rng.integers(-2, 3), axis=1).clip(0, 255).astype(np.uint8)
            (root / "faces" / f"p{person}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "faces" / f"p{person}" / f"{i}.png")
    ok(launch(["data_prep/prepare_faces.py", "--root", str(root / "faces"), "--out", str(root / "manifests"),
               "--holdout", "3"]))
    return root


def face_config(data_root, out, method="ce", **extra):
    """Config overrides (a list for load_config) of the face task on `face_data`: 32 px faces, tiny models (IResNet
    student, Swin teacher), fp32, 2 epochs; `extra` {KEY: value} appended."""
    args = {"TASK": "face", "OUTPUT_DIR": str(out), "DATA.MANIFEST_DIR": str(data_root / "manifests"),
            "DATA.TRAIN_CROP_SIZE": 32, "DATA.TEST_SHORT_SIDE": 32, "DATA.TEST_CROP_SIZE": 32,
            "DATA.NUM_WORKERS": 0, "MODEL.STUDENT": "iresnet_tiny", "MODEL.TEACHERS": "['swin_face_tiny']",
            "MODEL.TEACHER_CHECKPOINTS": "['']", "TRAIN.BATCH_SIZE": 5, "TRAIN.EPOCHS": 2, "TRAIN.EVAL_PERIOD": 1,
            "TEST.BATCH_SIZE": 6, "TEST.NUM_CLIPS": 1, "TEST.NUM_CROPS": 1, "DISTILL.METHOD": method,
            "DEEPSPEED.PRECISION": "fp32", **extra}
    return [str(x) for kv in args.items() for x in kv]
