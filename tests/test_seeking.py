"""Frame i is the i-th frame of one sequential decode, through both backends, on files where seeking is not exact:
OpenCV's real samples (MPEG-4 Part 2 with B-frames in AVI; cinepak in an AVI whose index holds zero-length repeat
chunks) and files written here with B-frames. Ground truth: PyAV decoding the whole file, frame after frame."""
import json
import os
import runpy
import shutil

import av
import numpy as np
import pytest
from conftest import REPO

from vidkd.data import sampling, seeking
from vidkd.data.check import check_video
from vidkd.data.decoders import DecordReader, PyAVReader, open_video, read_clip
from vidkd.data.manifest import Manifest, VideoRecord
from vidkd.data.sampling import ClipSpec
from vidkd.data.video_dataset import VideoDataset

SHARED_VIDEOS = os.path.join(os.path.dirname(REPO), "shared", "data", "videos")
WRITTEN = {  # name -> write_test_video arguments: the two ways the issue found seeking to go wrong
    "h264_pts_in_decode_order.mp4": {"codec": "h264", "bframes": 2, "pts_in_decode_order": True, "gop": 24},
    "xvid_bframes.avi": {"codec": "mpeg4", "bframes": 2, "gop": 24},
    "h264_bframes.mp4": {"codec": "h264", "bframes": 2, "gop": 24},  # a well-made file: seeking is exact
}


@pytest.fixture(params=["Megamind.avi", "tree.avi", *WRITTEN])
def video(request, video_factory):
    if request.param in WRITTEN:
        name, ext = os.path.splitext(request.param)
        return video_factory(name, ext[1:], num_frames=96, height=48, width=64, digits=2, **WRITTEN[request.param])
    path = os.path.join(SHARED_VIDEOS, request.param)
    if not os.path.isdir(SHARED_VIDEOS):
        pytest.skip("../shared/data/videos is not on this machine")
    return path


@pytest.fixture(autouse=True)
def forget_verdicts():
    seeking._known.clear()
    yield
    seeking._known.clear()


def sequential(path):
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def windows(n):
    """Training-clip-like reads all over the file: 8 frames 3 apart from 12 starts, and a backwards jump."""
    starts = np.linspace(0, n - 22, 12).astype(int).tolist()
    return [[s + 3 * k for k in range(8)] for s in starts] + [[n - 1, 0, n // 2]]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_both_backends_give_the_frames_of_a_sequential_decode(video, backend):
    truth = sequential(video)
    reader = open_video(video, backend)  # one reader for every read in turn (as predict.py reads a video)
    assert reader.num_frames == len(truth)
    for w in windows(len(truth)):
        np.testing.assert_array_equal(read_clip(video, lambda n, fps, w=w: w, backend).numpy(), truth[w], err_msg=str(w))
        np.testing.assert_array_equal(reader.get_frames(w).numpy(), truth[w], err_msg=f"one reader: {w}")


class Raw:
    """The decoded frames as they are (the identity transform), to compare with the sequential decode."""

    crop_size = 0

    def __call__(self, frames, *view):
        return frames


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_the_dataset_views_hold_the_frames_of_a_sequential_decode(video, backend):
    truth, spec = sequential(video), ClipSpec(8, sampling_rate=3)
    manifest = Manifest("t", "train", os.path.dirname(video), {"label": ["a"]},
                        [VideoRecord(str(i), video, {"label": 0}) for i in range(6)])
    train = VideoDataset(manifest, spec, Raw(), True, decoder=backend, seed=3)
    test = VideoDataset(manifest, spec, Raw(), False, n_clips=4, decoder=backend)
    for i in range(6):
        item = train[(1, i)]
        want = sampling.train_indices(spec, 0, len(truth), 0.0, np.random.default_rng([3, 1, i]))
        assert item["valid"] and not item["failures"]
        np.testing.assert_array_equal(item["input"].numpy(), truth[want], err_msg=f"train view {i}: {want}")
    for view in range(4):
        want = sampling.test_indices(spec, 0, len(truth), 0.0, 4, view)
        np.testing.assert_array_equal(test[view]["input"].numpy(), truth[want], err_msg=f"test view {view}")


def test_the_probe_finds_where_each_backend_seeks_wrongly(video_factory):
    """The verdicts behind the readers' choice, and the wrong frames they avoid."""
    verdicts = {}
    for name, kw in WRITTEN.items():
        stem, ext = os.path.splitext(name)
        path = video_factory(stem, ext[1:], num_frames=96, height=48, width=64, digits=2, **kw)
        verdicts[name] = seeking.probe(path)
        truth = sequential(path)
        for backend, reader in (("decord", DecordReader), ("pyav", PyAVReader)):
            wrong = [w for w in windows(96) if not np.array_equal(reader(path).get_frames(w).numpy(), truth[w])]
            assert verdicts[name][backend] == (not wrong), (name, backend)  # inexact exactly where seeking errs
    assert verdicts["xvid_bframes.avi"]["decord"] is False  # decord seeks wrongly in MPEG-4 Part 2 AVIs
    assert verdicts["h264_pts_in_decode_order.mp4"]["pyav"] is False  # frames matched by decode-order timestamps
    assert verdicts["h264_bframes.mp4"] == {"frames": 96, "error": "", "decord": True, "pyav": True}
    if os.path.isdir(SHARED_VIDEOS):
        mega = os.path.join(SHARED_VIDEOS, "Megamind.avi")
        assert seeking.probe(mega) == {"frames": 270, "error": "", "decord": False, "pyav": False}
        reader = DecordReader(mega)
        reader.get_frames([120])
        assert not np.array_equal(reader.get_frames([165]).numpy()[0], sequential(mega)[165])  # the read


def test_check_videos_writes_the_seek_index_that_the_loader_trusts(tmp_path, video_factory, monkeypatch, capsys):
    paths = [video_factory(os.path.splitext(n)[0], os.path.splitext(n)[1][1:], num_frames=96, height=48, width=64,
                           digits=2, **kw) for n, kw in WRITTEN.items()]
    manifest = Manifest("t", "train", str(tmp_path), {"label": ["a"]},
                        [VideoRecord(os.path.basename(p), os.path.basename(p), {"label": 0}) for p in paths])
    manifest.save(str(tmp_path / "train.json"))
    main = runpy.run_path(os.path.join(REPO, "data_prep", "check_videos.py"))["main"]
    assert main([str(tmp_path / "train.json"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "decord: seeking is inexact in 2 of 3 videos" in out and "pyav: seeking is inexact in 1 of 3" in out
    index = seeking.load_index(str(tmp_path / "train.json"))
    assert {os.path.basename(p): (v["decord"], v["pyav"]) for p, v in index.items()} == {
        "h264_pts_in_decode_order.mp4": (False, False), "xvid_bframes.avi": (False, True),
        "h264_bframes.mp4": (True, True)}

    probed = []
    real_probe = seeking.probe
    monkeypatch.setattr(seeking, "probe", lambda path, limit=None: probed.append(path) or real_probe(path, limit))
    for path in paths:
        np.testing.assert_array_equal(read_clip(path, lambda n, fps: [40, 70], index=index).numpy(),
                                      sequential(path)[[40, 70]])
    assert probed == []  # every verdict came from the index
    seeking._known.clear()
    shutil.copy(paths[1], paths[1] + ".tmp")
    os.replace(paths[1] + ".tmp", paths[1])
    os.utime(paths[1], (1, 1))  # the file changed since the check: its entry is stale, the file is probed again
    read_clip(paths[1], lambda n, fps: [40], index=index)
    assert probed == [paths[1]]


def test_check_video_on_the_real_samples():
    if not os.path.isdir(SHARED_VIDEOS):
        pytest.skip("../shared/data/videos is not on this machine")
    status, detail, verdict = check_video(os.path.join(SHARED_VIDEOS, "tree.avi"))
    assert (status, detail, verdict) == ("ok", "68 frames", {"decord": True, "pyav": True})  # 376 zero-length repeat chunks of its index are no lost frames
    status, detail, _ = check_video(os.path.join(SHARED_VIDEOS, "Megamind.avi"))
    assert status == "ok" and detail == "270 frames; seeking inexact with decord and pyav: PyAV decodes it from the first frame"


def test_an_avi_with_repeat_chunks_is_not_truncated(tmp_path):
    """FFmpeg's AVI muxer fills a gap in the timestamps with zero-length "repeat the previous frame" chunks, which
    the header counts as frames (as in tree.avi); a copy cut short loses the index that lists them."""
    path = tmp_path / "gaps.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts = 3 * i  # two repeat chunks after every frame
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 58  # 20 frames and 38 repeat chunks in the header's count
    assert check_video(str(path)) == ("ok", "20 frames", {"decord": True, "pyav": True})
    data = path.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) * 7 // 10])
    status, detail, _ = check_video(str(tmp_path / "cut.avi"))
    assert status == "truncated" and "reports 58" in detail


def test_a_seek_index_of_other_decoders_or_damaged_is_ignored(tmp_path, video_factory):
    path = video_factory("v", num_frames=20)
    manifest = str(tmp_path / "train.json")
    seeking.save_index(manifest, {path: {"decord": True, "pyav": False}})
    assert seeking.load_index(manifest)[os.path.abspath(path)]["pyav"] is False
    index_file = seeking.index_path(manifest)
    with open(index_file) as f:
        good = json.load(f)
    for damaged in ({**good, "versions": {"decord": "0.6.0", "av": "0.1"}}, {"videos": good["videos"]},
                    {**good, "videos": {path: {"decord": 1, "pyav": False, "size": 1, "mtime": 1}}}, []):
        with open(index_file, "w") as f:
            json.dump(damaged, f)
        assert seeking.load_index(manifest) == {}, damaged
    with open(index_file, "w") as f:
        f.write('{"versions": ')
    assert seeking.load_index(manifest) == {}
