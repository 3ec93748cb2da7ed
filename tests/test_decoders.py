"""Decoders on real encoded files: decord / PyAV parity, old AVI codecs, broken files, fallback."""
import numpy as np
import pytest
import torch
from conftest import frame_numbers

from vidkd.data.decoders import DecordReader, PyAVReader, open_video, read_chunks, read_clip
from vidkd.errors import DecodeError

INDICES = [0, 1, 5, 17, 30, 47]


@pytest.mark.parametrize("codec", ["h264", "mpeg4", "msmpeg4", "mjpeg", "cinepak"])
def test_backends_agree_on_the_same_indices(video_factory, codec):
    path = video_factory(codec=codec)
    decord_frames = DecordReader(path).get_frames(INDICES)
    pyav_frames = PyAVReader(path).get_frames(INDICES)
    assert decord_frames.shape == pyav_frames.shape == (len(INDICES), 72, 128, 3)
    assert decord_frames.dtype == torch.uint8
    assert torch.equal(decord_frames, pyav_frames)
    assert frame_numbers(pyav_frames) == INDICES


def test_out_of_order_and_repeated_indices(video_factory):
    path = video_factory()
    for reader in (DecordReader(path), PyAVReader(path)):
        assert frame_numbers(reader.get_frames([30, 2, 2, 47])) == [30, 2, 2, 47]
        assert reader.num_frames == 48 and reader.fps == 25.0


def test_reported_count_larger_than_what_decodes(video_factory):
    """Indices past the last decodable frame get the last decodable frame, on both backends alike."""
    path = video_factory()
    for reader in (DecordReader(path), PyAVReader(path)):
        frames = reader.get_frames([44, 47, 48, 60])
        assert frames.shape[0] == 4
        assert frame_numbers(frames) == [44, 47, 47, 47]


def test_chunks_past_the_decodable_frames_repeat_the_last_one(video_factory):
    """read_chunks: a chunk wholly past the 48 frames that decode gets frame 47, on both backends."""
    path = video_factory()
    for backend in ("decord", "pyav"):
        chunks = read_chunks(path, lambda n, fps: list(range(48)) + list(range(60, 80)), lambda f: f, 16, backend)
        assert [len(c) for c in chunks] == [16, 16, 16, 16, 4]
        assert frame_numbers(torch.cat(chunks)) == list(range(48)) + [47] * 20


def test_truncated_avi_stays_inside_decodable_frames(video_factory, tmp_path):
    """An AVI cut short (its header still promises every frame): both backends return the full clip
    shape, and no frame that does not decode."""
    full = video_factory(codec="mjpeg", num_frames=48)
    cut = tmp_path / "cut.avi"
    data = open(full, "rb").read()
    cut.write_bytes(data[: len(data) * 6 // 10])
    shapes = []
    for backend in ("decord", "pyav"):
        clip = read_clip(str(cut), lambda n, fps: np.linspace(0, n - 1, 8).astype(int), backend)
        shapes.append(tuple(clip.shape))
        numbers = frame_numbers(clip)
        assert numbers == sorted(numbers) and max(numbers) < 48
    assert shapes[0] == shapes[1] == (8, 72, 128, 3)
    reader = PyAVReader(str(cut))  # its seeking read runs into the broken tail: that ends the video there
    numbers = frame_numbers(reader.get_frames(np.linspace(0, reader.num_frames - 1, 8).astype(int)))
    assert numbers == sorted(numbers) and max(numbers) < 48


@pytest.mark.parametrize("content,reason", [(b"", "zero-length"), (b"\x00garbage" * 100, "cannot decode")])
def test_broken_files_raise_decode_error_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason) as err:
        read_clip(str(path), lambda n, fps: [0])
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="file not found"):
        open_video(str(tmp_path / "nope.avi"))


def test_truncated_mp4_is_refused(video_factory, tmp_path):
    """PyAV writes the mp4 index at the end: cut the file and no backend can open it."""
    data = open(video_factory(), "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="decord: .*pyav: "):
        read_clip(str(cut), lambda n, fps: [0])


def test_damaged_h264_slices_still_give_the_clip(video_factory, tmp_path):
    """Bytes overwritten inside the coded frames: the decoders conceal the damage; the clip comes back
    whole, with the right frames where they decode."""
    path = video_factory(num_frames=48, gop=48, noise=8)
    data = bytearray(open(path, "rb").read())
    mdat = data.find(b"mdat")
    size = int.from_bytes(data[mdat - 4 : mdat], "big")
    rng = np.random.default_rng(0)
    for pos in rng.integers(mdat + size // 2, mdat + size - 8, 40):  # inside the later P-frames
        data[pos] = rng.integers(256)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    for backend in ("decord", "pyav"):
        clip = read_clip(str(damaged), lambda n, fps: [0, 20, 40], backend)
        assert clip.shape == (3, 72, 128, 3)
        assert frame_numbers(clip)[0] == 0


def test_fallback_when_decord_returns_garbled_frames(video_factory):
    """decord 0.6.0 returns 4 garbled channels for cinepak at 96x72; the clip comes from PyAV instead."""
    path = video_factory(codec="cinepak", width=96)
    with pytest.raises(DecodeError, match="shape"):
        DecordReader(path).get_frames([0, 10])
    clip = read_clip(path, lambda n, fps: [0, 10], "decord")
    assert torch.equal(clip, PyAVReader(path).get_frames([0, 10]))
    assert frame_numbers(clip) == [0, 10]


def test_fallback_to_pyav_when_decord_cannot_open(video_factory):
    """decord's bundled FFmpeg has no AV1 decoder; PyAV's has: the clip is read through the fallback."""
    path = video_factory(codec="av1", num_frames=20)
    with pytest.raises(Exception):
        DecordReader(path)
    assert isinstance(open_video(path, "decord"), PyAVReader)
    assert frame_numbers(read_clip(path, lambda n, fps: [0, 10, 19], "decord")) == [0, 10, 19]


def test_mpeg_ts_without_seekable_index(video_factory):
    """An MPEG-TS (no index, timestamps not starting at zero) is read frame-exactly, even with decord asked
    for: decord 0.6.0 returns the wrong frames from it without an error, its probe finds it, so PyAV reads it."""
    path = video_factory(codec="h264-ts", num_frames=30)
    assert frame_numbers(DecordReader(path).get_frames([0, 3])) != [0, 3]
    assert frame_numbers(read_clip(path, lambda n, fps: [0, 3, 10, 29], "decord")) == [0, 3, 10, 29]
