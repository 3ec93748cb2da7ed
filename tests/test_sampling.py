"""Frame-index sampling against hand-computed indices; reproducibility from a seed."""
import numpy as np
import pytest

from vidkd.data.sampling import ClipSpec, train_indices
from vidkd.data.sampling import test_indices as clip_at


def test_dense_test_clips_evenly_spaced():
    # 100 frames, 4 frames every 2: span 7, room 93 -> starts 0, 46.5, 93
    spec = ClipSpec(4, 2, "dense")
    got = [clip_at(spec, 0, 100, 25.0, 3, c).tolist() for c in range(3)]
    assert got == [[0, 2, 4, 6], [46, 48, 50, 52], [93, 95, 97, 99]]


def test_dense_single_test_clip_is_centered():
    assert clip_at(ClipSpec(4, 2), 0, 100, 25.0, 1, 0).tolist() == [46, 48, 50, 52]


def test_dense_inside_a_segment_and_clamped_when_short():
    spec = ClipSpec(4, 2)
    assert clip_at(spec, 10, 15, 25.0, 1, 0).tolist() == [10, 12, 14, 14]  # 5 frames for a span of 7
    assert clip_at(spec, 200, 210, 25.0, 2, 1).tolist() == [203, 205, 207, 209]


def test_target_fps_scales_the_stride():
    spec = ClipSpec(4, 2, "dense", target_fps=30.0)
    assert clip_at(spec, 0, 100, 60.0, 2, 0).tolist() == [0, 4, 8, 12]  # 60 fps: stride 2 * 60/30
    assert clip_at(spec, 0, 100, 30.0, 2, 0).tolist() == [0, 2, 4, 6]


def test_segment_sampling():
    spec = ClipSpec(4, mode="segment")
    assert clip_at(spec, 0, 100, 25.0, 1, 0).tolist() == [12, 37, 62, 87]  # middle of each 25-frame segment
    assert clip_at(spec, 0, 100, 25.0, 2, 0).tolist() == [6, 31, 56, 81]  # offsets 0.25 ...
    assert clip_at(spec, 0, 100, 25.0, 2, 1).tolist() == [18, 43, 68, 93]  # ... and 0.75
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = train_indices(spec, 0, 100, 25.0, rng)
        assert [i // 25 for i in idx] == [0, 1, 2, 3]  # one frame in each segment


def test_train_clips_random_reproducible_and_inside_the_range():
    spec = ClipSpec(16, 4)

    def draw(seed):
        return train_indices(spec, 5, 305, 30.0, np.random.default_rng(seed)).tolist()

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    starts = set()
    for seed in range(200):
        idx = draw(seed)
        assert idx[0] >= 5 and idx[-1] <= 304 and np.all(np.diff(idx) == 4)
        starts.add(idx[0])
    assert min(starts) < 30 and max(starts) > 210  # starts cover the room [5, 244]


def test_bad_ranges_and_clip_numbers():
    with pytest.raises(ValueError, match="empty frame range"):
        clip_at(ClipSpec(4), 10, 10, 25.0, 1, 0)
    with pytest.raises(ValueError, match="clip 3"):
        clip_at(ClipSpec(4), 0, 10, 25.0, 3, 3)
