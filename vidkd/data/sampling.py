"""Which frames make a clip. Frame indices only (no decoding), exactly reproducible from a seed.

All functions work on the frame range `[lo, hi)` of a video (a whole video, or an EPIC-KITCHENS action
segment) and return int64 arrays of `num_frames` indices inside it.

- dense (VideoMAE / SlowFast): `num_frames` frames `stride` apart, `stride = sampling_rate * fps / target_fps`
  (`= sampling_rate` at the native rate). Training: one window at a uniformly random start. Testing:
  `n_clips` windows with evenly spaced starts, the first at `lo`, the last ending at `hi - 1`.
- segment (TSN): `[lo, hi)` cut into `num_frames` equal segments, one frame from each. Training: a random
  offset in each segment; testing: clip `c` of `n_clips` takes offset `(c + 0.5) / n_clips` of every segment.

A range shorter than the clip repeats its last frame (indices are clamped to `hi - 1`).

pytorchvideo's clip samplers work in seconds and draw from Python's global `random`, which makes a clip
depend on the order workers ran in; these samplers work in frames and take an explicit generator.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClipSpec:
    num_frames: int
    sampling_rate: int = 1
    mode: str = "dense"  # dense | segment
    target_fps: float = 0.0  # 0: sampling_rate counts the video's own frames

    def stride(self, fps):
        if self.target_fps > 0 and fps > 0:
            return self.sampling_rate * fps / self.target_fps
        return float(self.sampling_rate)


def _clamp(indices, lo, hi):
    return np.clip(np.asarray(indices), lo, hi - 1).astype(np.int64)


def _dense(spec, lo, hi, fps, start_fraction):
    """Window start at `start_fraction` (0..1) of the room the clip leaves in the range."""
    stride = spec.stride(fps)
    span = (spec.num_frames - 1) * stride + 1
    room = max(hi - lo - span, 0.0)
    start = lo + start_fraction * room
    return _clamp(np.floor(start + np.arange(spec.num_frames) * stride + 1e-6), lo, hi)


def _segment(spec, lo, hi, offsets):
    """One frame per segment at `offsets` (0..1, one per segment) inside each segment."""
    seg = (hi - lo) / spec.num_frames
    return _clamp(np.floor(lo + (np.arange(spec.num_frames) + offsets) * seg), lo, hi)


def train_indices(spec, lo, hi, fps, rng):
    """One random clip for training; `rng` a numpy Generator."""
    _check_range(lo, hi)
    if spec.mode == "dense":
        return _dense(spec, lo, hi, fps, rng.random())
    return _segment(spec, lo, hi, rng.random(spec.num_frames))


def test_indices(spec, lo, hi, fps, n_clips, clip):
    """Clip number `clip` of `n_clips` evenly spaced test clips (deterministic)."""
    _check_range(lo, hi)
    if not 0 <= clip < n_clips:
        raise ValueError(f"clip {clip} is outside 0..{n_clips - 1}")
    if spec.mode == "dense":
        return _dense(spec, lo, hi, fps, clip / (n_clips - 1) if n_clips > 1 else 0.5)
    return _segment(spec, lo, hi, np.full(spec.num_frames, (clip + 0.5) / n_clips))


def _check_range(lo, hi):
    if hi <= lo or lo < 0:
        raise ValueError(f"empty frame range [{lo}, {hi})")
