"""A small synthetic action dataset that needs motion and temporal order to classify.

Every video shows one target object (shape, colour, size, position and angle all random) among static
distractors, one randomly jittering distractor and pixel noise. The eight classes differ only in which
object parameter changes over time and in which direction. Each parameter is drawn as a straight path
inside a fixed range; static parameters are frozen at a random point of their own path, and the opposite
direction of a class is the same path played backwards. So the value seen in a random single frame has the
same distribution in every class: one frame (or an unordered bag of frames) cannot tell the classes apart.

`make_dataset` writes the HMDB51 official layout: `videos/<class>/<name>.mp4` (or `.avi`) and
`splits/<class>_test_split{1,2,3}.txt` with lines `<name> <0|1|2>` (1 train, 2 test, 0 unused).
"""
import json
import os

import av
import numpy as np
from tqdm import tqdm

CLASSES = ("move_up", "move_down", "move_left", "move_right", "rotate_cw", "rotate_ccw", "approach", "recede")
TARGET_SHAPES = ("notched_bar", "triangle", "ell")
DISTRACTOR_SHAPES = TARGET_SHAPES + ("disk", "square")

# class -> (parameter that changes, direction). Image coordinates: x right, y down; angle counter-clockwise.
MOTION = {
    "move_up": ("y", -1), "move_down": ("y", 1), "move_left": ("x", -1), "move_right": ("x", 1),
    "rotate_cw": ("angle", -1), "rotate_ccw": ("angle", 1), "approach": ("log_size", 1), "recede": ("log_size", -1),
}
MARGIN = 0.15            # object centre stays within [MARGIN, 1 - MARGIN] of the frame
SIZE_RANGE = (0.07, 0.2)  # object half-size as a fraction of min(height, width)
SPEED = (1.5, 2.5)        # translation, px / frame
SCALE_RATE = (0.02, 0.03)  # d log(size) / frame: 2-3 % per frame
SPIN = (4.0, 8.0)         # rotation, degrees / frame
NOISE_SIGMA = 4.0         # Gaussian pixel noise, in 0-255 units
# Colour ranges per channel: a dark background, mid-bright clutter, and the brightest object the target, so a
# motion detector needs one contrast polarity (with random colours in all three, from-scratch 3D CNNs did not
# learn the classes within a CPU demo's budget: 18 % train accuracy after 500 steps, against 98 % with these).
BACKGROUND, CLUTTER, TARGET = (0, 70), (80, 150), (190, 255)


def _path(rng, lo, hi, rate_range, frames):
    """Start and rate of a straight path v(t) = start + rate * t that stays inside [lo, hi] for all frames."""
    top = (hi - lo) / max(frames - 1, 1)  # slow down if the nominal rate would leave the range
    rate = rng.uniform(min(rate_range[0], top), min(rate_range[1], top))
    return rng.uniform(lo, hi - rate * (frames - 1)), rate


def sample_params(class_name, rng, height, width, frames):
    """Per-frame target parameters: dict of `x`, `y` (px), `size` (half-size, px), `angle` (deg) arrays and `shape`."""
    moving, direction = MOTION[class_name]
    t = np.arange(frames, dtype=np.float64)
    side = min(height, width)
    ranges = {
        "x": (MARGIN * width, (1 - MARGIN) * width, SPEED),
        "y": (MARGIN * height, (1 - MARGIN) * height, SPEED),
        "log_size": (np.log(SIZE_RANGE[0] * side), np.log(SIZE_RANGE[1] * side), SCALE_RATE),
    }
    params = {"shape": TARGET_SHAPES[rng.integers(len(TARGET_SHAPES))]}
    for name, (lo, hi, rate_range) in ranges.items():
        start, rate = _path(rng, lo, hi, rate_range, frames)
        if name == moving:
            # translation x(t) = x0 + v t; approach log s(t) = log s0 + r t (exponential growth).
            # The opposite direction replays the path backwards, so both visit the same values.
            path = start + rate * t
            params[name] = path if direction > 0 else path[::-1].copy()
        else:
            # Frozen at a random frame of its own path: same single-frame distribution as a moving one.
            params[name] = np.full(frames, start + rate * rng.integers(frames))
    # Rotation: angle(t) = a0 +/- w t with a0 uniform on the circle, so any frame's angle is uniform too.
    spin = rng.uniform(*SPIN) * direction if moving == "angle" else 0.0
    params["angle"] = (rng.uniform(0, 360) + spin * t) % 360
    params["size"] = np.exp(params.pop("log_size"))
    return params


def _shape_mask(shape, u, v):
    """Membership in object coordinates (u along the object's axis, v to its left; unit half-size)."""
    if shape == "notched_bar":  # a bar with a notch cut from one corner
        return (np.abs(u) <= 1) & (np.abs(v) <= 0.45) & ~((u > 0.4) & (v > 0))
    if shape == "triangle":  # isosceles, apex at u = 1
        return (u >= -0.8) & (np.abs(v) <= 0.7 * (1 - u) / 1.8)
    if shape == "ell":
        return (np.abs(u) <= 1) & (np.abs(v) <= 1) & ((u <= -0.3) | (v <= -0.3))
    if shape == "disk":
        return u * u + v * v <= 0.8
    return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)  # square


def _draw_mask(shape, xs, ys, x, y, size, angle):
    """Masks [T, H, W] of a shape centred at (x, y) with half-size `size` and angle (deg), per frame."""
    x, y, size, angle = (np.asarray(a, np.float32).reshape(-1, 1, 1) for a in (x, y, size, angle))
    dx, dy = xs - x, y - ys  # dy points up, so positive angles turn counter-clockwise on screen
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    return _shape_mask(shape, (dx * c + dy * s) / size, (dy * c - dx * s) / size)


def _colour(rng, brightness):
    """A random RGB colour with every channel in the `brightness` range (0-255)."""
    return rng.uniform(*brightness, 3).astype(np.float32)


def render_video(class_name, rng, height, width, frames, return_params=False):
    """Render one video, uint8 [T, H, W, 3] RGB; with `return_params` also the params (plus target `mask`)."""
    params = sample_params(class_name, rng, height, width, frames)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    side = min(height, width)
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = _colour(rng, BACKGROUND)
    for _ in range(rng.integers(2, 5)):  # static distractors, smaller than the target
        shape = DISTRACTOR_SHAPES[rng.integers(len(DISTRACTOR_SHAPES))]
        mask = _draw_mask(shape, xs, ys, rng.uniform(0, width), rng.uniform(0, height),
                          rng.uniform(0.05, 0.12) * side, rng.uniform(0, 360))[0]
        canvas[mask] = _colour(rng, CLUTTER)
    video = np.repeat(canvas[None], frames, axis=0)
    # Jittering distractor: i.i.d. offsets around a fixed anchor, so no consistent direction of motion.
    shape = DISTRACTOR_SHAPES[rng.integers(len(DISTRACTOR_SHAPES))]
    jitter = _draw_mask(shape, xs, ys, rng.uniform(0.1, 0.9) * width + rng.normal(0, 1.5, frames),
                        rng.uniform(0.1, 0.9) * height + rng.normal(0, 1.5, frames),
                        np.full(frames, rng.uniform(0.05, 0.12) * side), rng.uniform(0, 360) + rng.normal(0, 4, frames))
    video[jitter] = _colour(rng, CLUTTER)
    mask = _draw_mask(params["shape"], xs, ys, params["x"], params["y"], params["size"], params["angle"])
    video[mask] = _colour(rng, TARGET)  # the target is drawn on top, never occluded
    video += NOISE_SIGMA * rng.standard_normal(video.shape, dtype=np.float32)
    video = np.clip(np.rint(video), 0, 255).astype(np.uint8)
    return (video, {**params, "mask": mask}) if return_params else video


CODECS = {"h264": "mp4", "xvid": "avi"}  # codec -> file extension
BFRAMES = {"h264": 3, "xvid": 2}  # codec -> B-frames between reference frames (h264: x264's veryfast preset)


def codec_extension(codec):
    """The file extension of `codec`; ValueError for a codec write_video does not know."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    return CODECS[codec]


def write_video(path, frames_uint8, fps, bit_rate=None, codec="h264"):
    """Write RGB frames [T, H, W, 3] (yuv420p, deterministic). `codec`: "h264" (mp4, a keyframe every 16 frames,
    constant quality crf 20 unless `bit_rate`) or "xvid" (MPEG-4 Part 2 in AVI with the XVID tag, the format of
    HMDB51's DivX AVI files, with 2 B-frames between reference frames as theirs have; a keyframe every 12 frames;
    `bit_rate` default 1 Mb/s). `bit_rate` in bits/s. x264's preset puts up to 3 B-frames."""
    codec_extension(codec)
    height, width = frames_uint8.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if codec == "h264" else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Bit-exact output: one thread, and no macroblock-tree rate control (its SIMD code reads uninitialised
        # memory on small frames, so the bytes would depend on what the process encoded before).
        stream.codec_context.thread_count = 1
        if codec == "xvid":
            stream.codec_context.codec_tag = "XVID"
            stream.bit_rate = bit_rate or 1_000_000
        else:
            quality = {} if bit_rate else {"crf": "20"}
            stream.options = {"g": "16", "preset": "veryfast", "x264-params": "mbtree=0", **quality}
            if bit_rate:
                stream.bit_rate = bit_rate
        stream.options = {**stream.options, "bf": str(BFRAMES[codec])}
        for frame in frames_uint8:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _split_labels(rng, n):
    """HMDB51-style labels for n videos: 1-2 unused (0) when n >= 10, then ~30 % test (2), the rest train (1)."""
    unused = 0 if n < 10 else 1 if n < 20 else 2
    test = max(1, round(0.3 * (n - unused))) if n >= 2 else 0
    labels = np.array([0] * unused + [2] * test + [1] * (n - unused - test))
    return labels[rng.permutation(n)]


def dataset_info(videos_per_class=48, seed=0, height=96, width=128, frames=40, fps=25, bit_rate=None, codec="h264"):
    """What `make_dataset` with these arguments writes to SYNTHETIC_INFO.json (48 videos per class: about 256
    train and 112 test videos in split 1, enough for a small ViT to learn the classes)."""
    if height % 2 or width % 2:
        raise ValueError(f"height and width must be even for yuv420p, got {height}x{width}")
    if seed < 0 or videos_per_class < 1 or frames < 1:
        raise ValueError("seed must be >= 0, videos_per_class and frames >= 1")
    codec_extension(codec)
    return {"generator": "vidkd.data.synthetic", "layout": "hmdb51", "classes": list(CLASSES),
            "videos_per_class": videos_per_class, "seed": seed, "height": height, "width": width,
            "frames": frames, "fps": fps, "bit_rate": bit_rate, "codec": codec, "bframes": BFRAMES[codec],
            "num_videos": len(CLASSES) * videos_per_class}


def make_dataset(out_dir, videos_per_class=48, seed=0, height=96, width=128, frames=40, fps=25, progress=True,
                 bit_rate=None, codec="h264"):
    """Write the dataset (see module docstring) to `out_dir`; returns the info dict saved as SYNTHETIC_INFO.json.
    `bit_rate` (bits/s) and `codec` ("h264" mp4 | "xvid" avi): see write_video."""
    info = dataset_info(videos_per_class, seed, height, width, frames, fps, bit_rate, codec)
    os.makedirs(os.path.join(out_dir, "splits"), exist_ok=True)
    bar = tqdm(total=info["num_videos"], desc="synthetic videos", unit="video", disable=not progress)
    for ci, name in enumerate(CLASSES):
        class_dir = os.path.join(out_dir, "videos", name)
        os.makedirs(class_dir, exist_ok=True)
        files = [f"{name}_{k:03d}.{codec_extension(codec)}" for k in range(videos_per_class)]
        for k, file in enumerate(files):
            video = render_video(name, np.random.default_rng([seed, 0, ci, k]), height, width, frames)
            write_video(os.path.join(class_dir, file), video, fps, bit_rate, codec)
            bar.update()
        for split in (1, 2, 3):
            labels = _split_labels(np.random.default_rng([seed, 1, ci, split]), videos_per_class)
            with open(os.path.join(out_dir, "splits", f"{name}_test_split{split}.txt"), "w") as f:
                f.writelines(f"{file} {label}\n" for file, label in zip(files, labels))
    bar.close()
    with open(os.path.join(out_dir, "SYNTHETIC_INFO.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info
