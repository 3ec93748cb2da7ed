"""data_prep/check_videos.py on a manifest holding good, missing, empty, unreadable and truncated videos."""
import os
import subprocess
import sys

from conftest import write_test_video

from vidkd.data.check import check_video
from vidkd.data.manifest import Manifest, VideoRecord

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "data_prep", "check_videos.py")


def test_each_kind_of_bad_video_is_reported(tmp_path):
    write_test_video(tmp_path / "good.mp4")
    full = write_test_video(tmp_path / "full.avi", codec="mjpeg", num_frames=48)
    data = full.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])  # the AVI header still says 48 frames
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 50)
    names = ["good.mp4", "full.avi", "cut.avi", "empty.mp4", "junk.mp4", "gone.mp4"]
    manifest = Manifest("t", "train", str(tmp_path), {"label": ["a"]},
                        [VideoRecord(n, n, {"label": 0}) for n in names])
    manifest.save(str(tmp_path / "train.json"))

    report = tmp_path / "bad.tsv"
    run = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "train.json"), "--report", str(report)],
                         capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    assert "4 of 6 videos are bad" in run.stdout
    rows = {os.path.basename(line.split("\t")[0]): line.split("\t")[1] for line in report.read_text().splitlines()}
    assert rows == {"cut.avi": "truncated", "empty.mp4": "zero-length", "junk.mp4": "unreadable",
                    "gone.mp4": "missing"}
    status, detail, verdict = check_video(str(tmp_path / "cut.avi"))
    assert status == "truncated" and "reports 48" in detail and verdict is None
    assert check_video(str(tmp_path / "good.mp4")) == ("ok", "48 frames", {"decord": True, "pyav": True})
