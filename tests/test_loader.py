"""The dataset and loader on real encoded videos: reproducible clips, test views, transforms,
EPIC-style segments and frame folders, and corrupt / missing videos skipped and counted."""
import logging
import os
import runpy

import numpy as np
import pytest
import torch
from conftest import REPO, frame_image, frame_numbers, write_test_video
from PIL import Image

from vidkd.config import load_config
from vidkd.data.loader import build_loader
from vidkd.data.manifest import Manifest, VideoRecord
from vidkd.data.sampling import ClipSpec
from vidkd.data.transforms import TestTransform, spatial_crop
from vidkd.data.video_dataset import VideoDataset
from vidkd.data.seeking import load_index, save_index
from vidkd.errors import AnnotationError, DataError


def make_manifest(root, n_good=6, bad=(), split="train"):
    """n_good real videos of 40..60 frames in 3 classes, plus the named bad files."""
    samples = []
    for k in range(n_good):
        write_test_video(root / f"v{k}.mp4", num_frames=40 + 4 * k)
        samples.append(VideoRecord(f"v{k}", f"v{k}.mp4", {"label": k % 3}))
    for name, content in bad:
        if content is not None:
            (root / name).write_bytes(content)
        samples.append(VideoRecord(name, name, {"label": 0}))
    manifest = Manifest("test", split, str(root), {"label": ["a", "b", "c"]}, samples)
    manifest.save(str(root / "manifests" / f"{split}.json"))
    return manifest


def config(root, *overrides):
    return load_config(None, ["DATA.MANIFEST_DIR", str(root / "manifests"), "DATA.NUM_FRAMES", "8",
                              "DATA.SAMPLING_RATE", "2", "DATA.TRAIN_CROP_SIZE", "56",
                              "DATA.TEST_SHORT_SIDE", "72", "DATA.TEST_CROP_SIZE", "64", "TRAIN.BATCH_SIZE", "2",
                              "TEST.BATCH_SIZE", "4", "DATA.NUM_WORKERS", "0", *overrides])


def batches(loader, epoch=0):
    loader.set_epoch(epoch)
    return list(loader)


def test_training_batches_identical_with_0_and_2_workers(tmp_path):
    make_manifest(tmp_path)
    runs = [batches(build_loader(config(tmp_path, "DATA.NUM_WORKERS", str(w)), train=True)) for w in (0, 2)]
    assert len(runs[0]) == len(runs[1]) == 3
    for a, b in zip(*runs):
        assert a["input"].shape == (2, 3, 8, 56, 56) and a["input"].dtype == torch.float32
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["index"], b["index"])
        assert torch.equal(a["targets"]["label"], a["index"] % 3)
    other_epoch = batches(build_loader(config(tmp_path), train=True), epoch=1)
    assert not torch.equal(torch.cat([b["input"] for b in runs[0]]), torch.cat([b["input"] for b in other_epoch]))


def test_test_views_cover_every_clip_and_crop(tmp_path):
    make_manifest(tmp_path, n_good=2, split="test")
    loader = build_loader(config(tmp_path, "TEST.NUM_CLIPS", "3", "TEST.NUM_CROPS", "3"), train=False)
    assert len(loader.dataset) == 2 * 3 * 3
    got = [(int(i), int(v)) for b in batches(loader) for i, v in zip(b["index"], b["view"])]
    assert sorted(got) == [(i, v) for i in range(2) for v in range(9)]


def test_test_clip_frames_are_the_sampled_ones(tmp_path):
    """Undo the normalisation (mean 0, std 1) and read back which frames each view holds."""
    manifest = make_manifest(tmp_path, n_good=1, split="test")  # 40 frames
    spec = ClipSpec(4, 3)
    ds = VideoDataset(manifest, spec, TestTransform(72, 64, [0, 0, 0], [1, 1, 1]), False, n_clips=2, n_crops=1)
    for view, expected in [(0, [0, 3, 6, 9]), (1, [30, 33, 36, 39])]:
        item = ds[view]
        frames = (item["input"].permute(1, 2, 3, 0) * 255).round()
        assert item["view"] == view and frame_numbers(frames) == expected


def test_three_crops_take_left_center_right():
    frames = torch.from_numpy(np.stack([frame_image(0, 72, 128)]))  # ramp 0..15 left to right
    means = [float(spatial_crop(frames.permute(0, 3, 1, 2), 64, k, 3).float().mean()) for k in range(3)]
    assert means[0] < means[1] < means[2]
    assert means[0] == pytest.approx(7.5 * 63 / 127, abs=0.6)  # columns 0..63 of a 0..15 ramp
    with pytest.raises(ValueError):
        spatial_crop(frames, 64, 0, 2)


def test_normalisation_uses_config_mean_and_std(tmp_path):
    value = 0.45 * 255
    frames = torch.full((4, 72, 128, 3), round(value), dtype=torch.uint8)
    out = TestTransform(72, 64, [0.45] * 3, [0.225] * 3)(frames, 0, 1)
    assert out.shape == (3, 4, 64, 64)
    assert float(out.abs().max()) == pytest.approx(abs(round(value) / 255 - 0.45) / 0.225, abs=1e-5)


def test_epic_style_segments_and_frame_folders(tmp_path):
    """Frames sampled inside [start, stop] of a segment counted at 50 fps, from its JPEG frame folder (at that
    rate: indexed directly) and from a 25 fps video (reached through time)."""
    write_test_video(tmp_path / "P01_01.MP4", num_frames=48, fps=25)
    folder = tmp_path / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    for i in range(48):  # 1-based names, as EPIC-KITCHENS ships them
        Image.fromarray(frame_image(i, 72, 128)).save(folder / f"frame_{i + 1:010d}.jpg", quality=95)
    records = [VideoRecord("a", "P01_01.MP4", {"verb": 1, "noun": 2}, 20, 29, 50.0),
               VideoRecord("b", "rgb_frames/P01_01", {"verb": 1, "noun": 2}, 20, 29, 50.0, frames=True)]
    manifest = Manifest("epic100", "validation", str(tmp_path), {"verb": ["x", "y"], "noun": list("pqr")}, records)
    ds = VideoDataset(manifest, ClipSpec(4, mode="segment"), TestTransform(72, 64, [0] * 3, [1] * 3), False)
    # folder: [20, 30), floor(20 + (k + 0.5) * 2.5); video: [floor(20 / 2), floor(29 / 2) + 1) = [10, 15),
    # floor(10 + (k + 0.5) * 1.25)
    for j, expected in [(0, [10, 11, 13, 14]), (1, [21, 23, 26, 28])]:
        item = ds[j]
        frames = (item["input"].permute(1, 2, 3, 0) * 255).round()
        assert frame_numbers(frames) == expected
        assert item["targets"] == {"verb": 1, "noun": 2}
    # dense, 2 frames apart at 25 fps: a stride of 2 of the video's frames, 4 of the folder's (at 50 fps)
    ds = VideoDataset(manifest, ClipSpec(3, 2, target_fps=25.0), TestTransform(72, 64, [0] * 3, [1] * 3), False)
    for j, expected in [(0, [10, 12, 14]), (1, [20, 24, 28])]:  # the window in the middle of [lo, hi)
        assert frame_numbers((ds[j]["input"].permute(1, 2, 3, 0) * 255).round()) == expected


def test_corrupt_and_missing_videos_are_skipped_and_counted(tmp_path, caplog):
    bad = [("empty.mp4", b""), ("junk.avi", b"RIFF" + os.urandom(3000)), ("gone.mp4", None)]
    make_manifest(tmp_path, n_good=6, bad=bad)
    loader = build_loader(config(tmp_path, "DATA.MAX_FAIL_FRACTION", "0.5", "TRAIN.BATCH_SIZE", "1"), train=True)
    with caplog.at_level(logging.WARNING, logger="vidkd.data"):
        for epoch in range(2):
            seen = [int(i) for b in batches(loader, epoch) for i in b["index"]]
            assert len(seen) == 9 and all(i < 6 for i in seen)  # every item came from a good video
            assert loader.tracker.count == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3  # each bad file logged once, not once per epoch
    for name, _ in bad:
        assert sum(name in w for w in warnings) == 1


def test_too_many_failures_stop_the_run_listing_the_files(tmp_path):
    make_manifest(tmp_path, n_good=6, bad=[("a.mp4", b""), ("b.mp4", b"")])
    loader = build_loader(config(tmp_path, "DATA.MAX_FAIL_FRACTION", "0.1", "TRAIN.BATCH_SIZE", "1"), train=True)
    message = r"1 of 8 videos in split 'train' failed to decode this epoch, more than DATA\.MAX_FAIL_FRACTION = 0\.1"
    with pytest.raises(DataError, match=message) as err:
        batches(loader)
    assert "a.mp4" in str(err.value) or "b.mp4" in str(err.value)


def test_a_failed_test_video_is_flagged_not_replaced(tmp_path):
    make_manifest(tmp_path, n_good=2, bad=[("empty.mp4", b"")], split="test")
    loader = build_loader(config(tmp_path, "TEST.NUM_CLIPS", "1", "TEST.NUM_CROPS", "1",
                                 "DATA.MAX_FAIL_FRACTION", "0.5"), train=False)
    (batch,) = batches(loader)
    assert batch["valid"].tolist() == [True, True, False]
    assert batch["index"].tolist() == [0, 1, 2]
    assert loader.tracker.count == 1


def test_a_decode_past_the_timeout_is_abandoned_and_counted(tmp_path):
    """DATA.DECODE_TIMEOUT: the alarm stops the decode; training gives up after MAX_RETRIES more videos,
    testing flags the view."""
    manifest = make_manifest(tmp_path, n_good=2)
    spec, transform = ClipSpec(8, 2), TestTransform(72, 64, [0] * 3, [1] * 3)
    train = VideoDataset(manifest, spec, None, True, max_retries=2, timeout=1e-4)
    with pytest.raises(DataError, match=r"3 videos in a row failed(.|\n)*longer than 0\.0001 s \(DATA\.DECODE_TIMEOUT"):
        train[0]
    item = VideoDataset(manifest, spec, transform, False, timeout=1e-4)[0]
    assert item["valid"] is False and "DECODE_TIMEOUT" in item["failures"][0][1]
    assert VideoDataset(manifest, spec, transform, False, timeout=30.0)[0]["valid"] is True


def test_train_per_class_keeps_a_seeded_subset_of_each_class_in_manifest_order():
    counts = {0: 5, 1: 2, 2: 3}
    samples = [VideoRecord(f"{c}_{k}", f"{c}_{k}.mp4", {"verb": c, "noun": 0}) for c, n in counts.items()
               for k in range(n)]
    manifest = Manifest("test", "train", "/r", {"verb": ["a", "b", "c"], "noun": ["x"]}, samples)
    assert manifest.per_class(0, seed=0) is manifest
    subsets = {seed: [r.id for r in manifest.per_class(2, seed).samples] for seed in range(6)}
    for ids in subsets.values():
        assert [i.split("_")[0] for i in ids] == ["0", "0", "1", "1", "2", "2"]  # 2 of each (the first head)
        assert ids == sorted(ids, key=[r.id for r in samples].index)
    assert ids == [r.id for r in manifest.per_class(2, 5).samples]  # same seed, same subset
    assert len({tuple(ids) for ids in subsets.values()}) > 1  # other seeds draw other videos
    assert len(manifest.per_class(4, 0).samples) == 4 + 2 + 3  # a class with fewer keeps all of them


def test_hold_out_splits_a_manifest_and_its_seek_index(tmp_path, capsys):
    """data_prep/hold_out.py: the held videos (N per class, seeded) and the kept ones partition the manifest;
    each file gets the seek-index entries of its videos; a hold-out that empties a class is refused."""
    paths = [write_test_video(tmp_path / f"v{i}.mp4", num_frames=8, height=32, width=32) for i in range(6)]
    samples = [VideoRecord(f"v{i}", os.path.basename(p), {"label": i % 2}) for i, p in enumerate(paths)]
    Manifest("t", "train", str(tmp_path), {"label": ["a", "b"]}, samples).save(str(tmp_path / "train.json"))
    save_index(str(tmp_path / "train.json"), {str(p): {"decord": True, "pyav": i % 3 == 0} for i, p in enumerate(paths)})
    main = runpy.run_path(os.path.join(REPO, "data_prep", "hold_out.py"))["main"]
    assert main([str(tmp_path / "train.json"), "--per-class", "1", "--seed", "3"]) == 0
    kept, held = (Manifest.load(str(tmp_path / f"{s}.json")) for s in ("teachers", "calibration"))
    assert (kept.split, held.split) == ("teachers", "calibration")
    assert sorted(r.targets["label"] for r in held.samples) == [0, 1]
    assert sorted(r.id for r in kept.samples + held.samples) == [f"v{i}" for i in range(6)]
    assert [r.id for r in held.samples] == [r.id for r in Manifest.load(str(tmp_path / "train.json")).per_class(
        1, 3).samples]
    for m, split in ((kept, "teachers"), (held, "calibration")):
        index = load_index(str(tmp_path / f"{split}.json"))
        assert set(index) == {str(tmp_path / r.path) for r in m.samples}
        assert all(v["pyav"] == (int(os.path.basename(p)[1]) % 3 == 0) for p, v in index.items())
    assert "calibration.json: 2 videos" in capsys.readouterr().out
    with pytest.raises(AnnotationError, match=r"train\.json: holding out 3 videos per class leaves none of "
                                              r"label class\(es\) a, b to train on"):
        main([str(tmp_path / "train.json"), "--per-class", "3"])
    with pytest.raises(AnnotationError, match=r"train\.json: the kept \('train'\) and held"):
        main([str(tmp_path / "train.json"), "--per-class", "1", "--kept", "train"])
    os.utime(paths[0], ns=(1, 1))  # a video changed since it was probed: its entry is copied stale, not renewed
    main([str(tmp_path / "train.json"), "--per-class", "1", "--seed", "3"])
    copied = {**load_index(str(tmp_path / "teachers.json")), **load_index(str(tmp_path / "calibration.json"))}
    assert copied[str(paths[0])]["mtime"] != 1 and copied == load_index(str(tmp_path / "train.json"))


def test_train_per_class_applies_to_training_only(tmp_path):
    make_manifest(tmp_path, n_good=9)
    make_manifest(tmp_path, n_good=9, split="test")
    cfg = config(tmp_path, "DATA.TRAIN_PER_CLASS", "1")
    train, test = build_loader(cfg, train=True), build_loader(cfg, train=False)
    assert sorted(r.targets["label"] for r in train.dataset.manifest.samples) == [0, 1, 2]
    assert len(test.dataset.manifest.samples) == 9
