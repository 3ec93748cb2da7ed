"""Parsers of the official HMDB51 / Kinetics / EPIC-KITCHENS-100 layouts, and the data_prep scripts."""
import csv
import json
import math
import os
import runpy
import subprocess
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
from conftest import frame_image, frame_numbers
from PIL import Image

from vidkd.data.datasets.epic_kitchens import action_id, parse_epic100
from vidkd.data.datasets.hmdb51 import parse_hmdb51
from vidkd.data.datasets.kinetics import parse_kinetics_csv, parse_path_label_list
from vidkd.data.manifest import Manifest, VideoRecord
from vidkd.data.sampling import ClipSpec
from vidkd.data.transforms import TestTransform
from vidkd.data.video_dataset import VideoDataset
from vidkd.errors import AnnotationError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(text)
    return str(path)


def raises_at(name, line, fn, *args, match=""):
    """`fn(*args)` raises an AnnotationError for file `name` at `line` whose message contains `match`."""
    with pytest.raises(AnnotationError) as e:
        fn(*args)
    assert os.path.basename(e.value.path) == name and e.value.line == line, str(e.value)
    assert f"{name}:{line}: " in str(e.value) and match in str(e.value)


# HMDB51 ------------------------------------------------------------------------------------------------


def make_hmdb(tmp_path):
    """Three classes; split 1 of `wave` has CRLF, trailing spaces, a blank line and a missing video."""
    videos, splits = tmp_path / "videos", tmp_path / "splits"
    for cls, names in {"wave": ["w1.avi", "w2.avi", "w3.avi"], "brush_hair": ["b1.avi", "b2.avi"],
                       "cartwheel": ["c1.mp4"]}.items():
        for name in names:
            write(videos / cls / name)
    write(splits / "wave_test_split1.txt", "w1.avi 1 \r\nw2.avi 2\r\n\r\nw3.avi 0\r\nw4.avi 1\r\n")
    write(splits / "brush_hair_test_split1.txt", "b1.avi 1\nb2.avi 2\nb1.avi 1\n")
    write(splits / "cartwheel_test_split1.txt", "c1.mp4 1\n")
    write(splits / "cartwheel_test_split2.txt", "c1.mp4 2\n")
    return videos, splits


def test_hmdb51_manifests(tmp_path):
    videos, splits = make_hmdb(tmp_path)
    manifests, missing = parse_hmdb51(videos, splits, 1)
    train, test = manifests["train"], manifests["test"]
    assert train.label_sets == test.label_sets == {"label": ["brush_hair", "cartwheel", "wave"]}
    assert [(r.id, r.path, r.targets["label"]) for r in train.samples] == [
        ("b1", "brush_hair/b1.avi", 0), ("c1", "cartwheel/c1.mp4", 1), ("w1", "wave/w1.avi", 2),
        ("w4", "wave/w4.avi", 2)]
    assert [r.path for r in test.samples] == ["brush_hair/b2.avi", "wave/w2.avi"]
    assert missing == {"train": ["wave/w4.avi"], "test": []}
    assert train.root == str(videos) and os.path.isabs(train.root)
    assert (train.dataset, train.split, test.split) == ("hmdb51", "train", "test")


def test_hmdb51_split_id_selects_files(tmp_path):
    videos, splits = make_hmdb(tmp_path)
    manifests, _ = parse_hmdb51(videos, splits, 2)
    assert manifests["test"].label_sets["label"] == ["cartwheel"]
    assert [r.path for r in manifests["test"].samples] == ["cartwheel/c1.mp4"] and not manifests["train"].samples


@pytest.mark.parametrize("text, line, match", [
    ("w1.avi 1\nw2.avi 3\n", 2, "<video> <0|1|2>"),
    ("w1.avi 1\n\nw2.avi\n", 3, "<video> <0|1|2>"),
    ("w1.avi 1\nw2.avi 2\nw1.avi 2\n", 3, "different values"),
])
def test_hmdb51_bad_rows(tmp_path, text, line, match):
    videos, splits = make_hmdb(tmp_path)
    write(splits / "wave_test_split1.txt", text)
    raises_at("wave_test_split1.txt", line, parse_hmdb51, videos, splits, 1, match=match)


def test_hmdb51_one_file_name_in_two_classes_is_refused(tmp_path):
    videos, splits = make_hmdb(tmp_path)
    write(splits / "wave_test_split1.txt", "w1.avi 1\nb2.avi 2\n")  # brush_hair_test_split1.txt has b2.avi 2 first
    raises_at("wave_test_split1.txt", 2, parse_hmdb51, videos, splits, 1, match="sample id 'b2' again (first at ")


def test_hmdb51_unknown_class(tmp_path):
    videos, splits = make_hmdb(tmp_path)
    write(splits / "jump_test_split1.txt", "\nj1.avi 1\n")
    raises_at("jump_test_split1.txt", 2, parse_hmdb51, videos, splits, 1, match="unknown class 'jump'")


# Kinetics ----------------------------------------------------------------------------------------------

K_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"
K_ROWS = ['zumba,zz1,0,10,train,0\n', '"air drumming",ad1,5,15,train,0\n', 'abseiling,ab1,100,110,train,1\n',
          'zumba,zz2,30,40,train,0\n']


def make_kinetics(tmp_path, layout):
    """Clips of K_ROWS except zz2, flat or in `<label with _ for spaces>/` folders."""
    for label, clip in [("zumba", "zz1_000000_000010"), ("air drumming", "ad1_000005_000015"),
                        ("abseiling", "ab1_000100_000110")]:
        folder = tmp_path / "videos" / (label.replace(" ", "_") if layout == "folders" else "")
        write(folder / f"{clip}.mp4")
    return write(tmp_path / "train.csv", K_HEADER + "".join(K_ROWS)), tmp_path / "videos"


@pytest.mark.parametrize("layout", ["flat", "folders"])
def test_kinetics_csv(tmp_path, layout):
    csv_path, videos = make_kinetics(tmp_path, layout)
    m, missing, repeated = parse_kinetics_csv(csv_path, videos)
    assert m.label_sets == {"label": ["abseiling", "air drumming", "zumba"]}
    assert [(r.id, r.targets["label"]) for r in m.samples] == [
        ("zz1_000000_000010", 2), ("ad1_000005_000015", 1), ("ab1_000100_000110", 0)]
    folder = "air_drumming/" if layout == "folders" else ""
    assert m.samples[1].path == f"{folder}ad1_000005_000015.mp4"
    assert os.path.isfile(m.abspath(m.samples[1]))
    assert missing == ["zz2_000030_000040.mp4"] and repeated == []
    assert (m.dataset, m.split) == ("kinetics400", "train")


def test_kinetics_csv_rows_repeating_a_clip_and_its_label_are_kept_once(tmp_path):
    _, videos = make_kinetics(tmp_path, "flat")
    csv_path = write(tmp_path / "train.csv", K_HEADER + "".join(K_ROWS[:2] + [K_ROWS[0], K_ROWS[1], K_ROWS[0]]))
    m, _, repeated = parse_kinetics_csv(csv_path, videos)
    assert [r.id for r in m.samples] == ["zz1_000000_000010", "ad1_000005_000015"] and repeated == [4, 5, 6]
    run = run_script("prepare_kinetics.py", "--train-csv", csv_path, "--videos", videos, "--out", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    assert f"{csv_path}: 3 rows repeat an earlier row's clip and label, each kept once (lines 4, 5, 6)" in run.stdout
    assert "train: 2 samples" in run.stdout


def test_kinetics_csv_given_classes_and_split_from_stem(tmp_path):
    _, videos = make_kinetics(tmp_path, "flat")
    csv_path = write(tmp_path / "val.csv", "label,youtube_id,time_start,time_end,split\n"
                                          "zumba,zz1,0,10,val\nabseiling,ab1,100,110,test\n")
    m, missing, _ = parse_kinetics_csv(csv_path, videos, classes=["abseiling", "jumping", "zumba"])
    assert [r.targets["label"] for r in m.samples] == [2, 0] and m.split == "val" and not missing
    assert m.label_sets["label"] == ["abseiling", "jumping", "zumba"]


@pytest.mark.parametrize("lines, line, match", [
    (["label,youtube_id,time_start,split\n"], 1, "missing column(s) time_end"),
    ([K_HEADER, K_ROWS[0], "zumba,zz3,0,10,train\n"], 3, "5 fields, the header has 6"),
    ([K_HEADER, K_ROWS[0], K_ROWS[1], "zumba,zz3,0,ten,train,0\n"], 4, "time_end must be an integer"),
    ([K_HEADER, "\n", "dancing,zz3,0,10,train,0\n"], 3, "unknown class 'dancing'"),
    ([K_HEADER, "zumba,zz3,-10,0,train,0\n"], 2, "need 0 <= time_start < time_end"),
    ([K_HEADER, K_ROWS[0], "\"air drumming\",zz1,0,10,val,0\n"], 3,
     "sample id 'zz1_000000_000010' again (first at "),  # the same clip with another label
])
def test_kinetics_csv_errors(tmp_path, lines, line, match):
    csv_path = write(tmp_path / "k.csv", "".join(lines))
    classes = ["air drumming", "zumba"]
    raises_at("k.csv", line, parse_kinetics_csv, csv_path, tmp_path, classes, match=match)


def test_kinetics_path_label_list(tmp_path):
    classes = ["abseiling", "air drumming", "zumba"]
    list_path = write(tmp_path / "train_list.txt", "a/x 1.mp4 2\nb/y.mp4 air_drumming\n/abs/z.mp4 zumba  \r\n")
    m = parse_path_label_list(list_path, tmp_path, classes)
    assert [(r.id, r.path, r.targets["label"]) for r in m.samples] == [
        ("x 1", "a/x 1.mp4", 2), ("y", "b/y.mp4", 1), ("z", "/abs/z.mp4", 2)]
    assert m.split == "train_list" and m.root == str(tmp_path) and m.label_sets["label"] == classes
    write(tmp_path / "bad.txt", "a.mp4 0\nb.mp4 3\n")
    raises_at("bad.txt", 2, parse_path_label_list, tmp_path / "bad.txt", tmp_path, classes, match="unknown class '3'")
    write(tmp_path / "bad.txt", "a.mp4 0\n\nb.mp4\n")
    raises_at("bad.txt", 3, parse_path_label_list, tmp_path / "bad.txt", tmp_path, classes, match="<path> <label>")
    write(tmp_path / "bad.txt", "a/x.mp4 0\nb/x.mp4 1\n")
    raises_at("bad.txt", 2, parse_path_label_list, tmp_path / "bad.txt", tmp_path, classes,
              match="sample id 'x' again (first at ")


def test_a_byte_that_is_not_utf8_is_reported_at_its_line(tmp_path):
    videos, splits = make_hmdb(tmp_path)
    (splits / "wave_test_split1.txt").write_bytes(b"w1.avi 1\r\nw2.avi 2\r\nw\xe9.avi 1\r\n")
    raises_at("wave_test_split1.txt", 3, parse_hmdb51, videos, splits, 1, match="not UTF-8 text")
    rows = K_HEADER + K_ROWS[0] * 2000 + "caf\xe9,zz1,0,10,train,0\n"  # the bad byte far past the first read
    (tmp_path / "k.csv").write_bytes(rows.encode("latin-1"))
    raises_at("k.csv", 2002, parse_kinetics_csv, tmp_path / "k.csv", tmp_path, match="not UTF-8 text")


# EPIC-KITCHENS-100 -------------------------------------------------------------------------------------

E_HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
            "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")


def e_row(nid="P01_01_0", video="P01_01", start="1", stop="100", verb_class="2", noun_class="1"):
    return (f'{nid},{video[:3]},{video},00:00:00.00,00:00:00.00,00:00:02.00,{start},{stop},'
            f'"open tap, then wash",open,{verb_class},tap,{noun_class},"[\'tap\', \'water\']","[1, 3]"\n')


def make_epic(tmp_path, rows=None):
    ann = tmp_path / "annotations"
    write(ann / "EPIC_100_verb_classes.csv", "id,key,instances,category\n"
          "2,open,\"['open', 'unscrew']\",manipulation\n0,take,\"['take']\",retrieve\n1,put,\"['put']\",leave\n")
    write(ann / "EPIC_100_noun_classes.csv", "id,key,instances,category\n"
          "0,tap,\"['tap']\",appliances\n1,plate,\"['plate']\",crockery\n2,cup,\"['cup']\",crockery\n")
    write(ann / "EPIC_100_video_info.csv", "video_id,duration,fps,resolution\n"
          "P01_01,10.0,50.0,1920x1080\nP02_03,2.0,59.94005994005994,1920x1080\n")
    if rows is None:
        rows = [e_row(), e_row("P02_03_7", "P02_03", "50", "120", "0", "2")]
    write(ann / "EPIC_100_train.csv", E_HEADER + "".join(rows))
    write(ann / "EPIC_100_validation.csv", E_HEADER + e_row("P01_01_9", start="490", stop="501"))
    return ann


def test_epic100_manifest(tmp_path):
    ann = make_epic(tmp_path)
    m, clamped = parse_epic100(ann, tmp_path / "data", "train")
    assert m.label_sets == {"verb": ["take", "put", "open"], "noun": ["tap", "plate", "cup"]} and clamped == 0
    a, b = m.samples
    assert (a.id, a.path, a.targets, a.start_frame, a.stop_frame, a.fps, a.frames) == (
        "P01_01_0", "P01/videos/P01_01.MP4", {"verb": 2, "noun": 1}, 0, 99, 60.0, False)
    assert (b.start_frame, b.stop_frame, b.fps, b.targets) == (49, 119, 60.0, {"verb": 0, "noun": 2})  # a 59.94 fps video
    assert (m.dataset, m.split, m.root) == ("epic100", "train", str(tmp_path / "data"))
    frames, _ = parse_epic100(ann, tmp_path / "data", "validation", use_frames=True)
    (c,) = frames.samples
    assert (c.path, c.frames, c.start_frame, c.stop_frame, c.fps) == ("P01/rgb_frames/P01_01", True, 489, 500, 60.0)
    assert action_id(2, 1) == 2001 and action_id(a.targets["verb"], a.targets["noun"]) == 2001


def test_epic100_a_stop_past_the_video_end_is_clamped_and_counted(tmp_path):
    """P01_01 lasts 10 s: 600 frames at 60 fps (its own 50 fps are not the annotations' time base)."""
    ann = make_epic(tmp_path, [e_row("P01_01_0", stop="600"), e_row("P01_01_1", stop="601"),
                               e_row("P01_01_2", start="600", stop="900"),
                               e_row("P02_03_0", "P02_03", stop="120")])  # P02_03: 2 s at 59.94 fps, 120 frames at 60
    m, clamped = parse_epic100(ann, tmp_path, "train")
    assert [(r.start_frame, r.stop_frame) for r in m.samples] == [(0, 599), (0, 599), (599, 599), (0, 119)]
    assert clamped == 2


@pytest.mark.parametrize("bad, match", [
    (e_row(verb_class="x"), "verb_class must be an integer"),
    (e_row(verb_class="3"), "unknown class: verb_class 3"),
    (e_row(noun_class="-1"), "unknown class: noun_class -1"),
    (e_row(start="60", stop="59"), "start_frame <= stop_frame"),
    (e_row(start="0"), "1 <= start_frame"),
    (e_row(start="601", stop="700"), "start_frame 601 is beyond the end of P01_01 (10.0 s = 600 frames at 60 fps)"),
    (e_row(video="P03_02"), "'P03_02' is not in EPIC_100_video_info.csv"),
    (e_row("P01_01_1"), "sample id 'P01_01_1' again (first at "),
])
def test_epic100_bad_rows(tmp_path, bad, match):
    ann = make_epic(tmp_path, [e_row("P01_01_1"), e_row("P01_01_2"), bad])
    raises_at("EPIC_100_train.csv", 4, parse_epic100, ann, tmp_path, "train", match=match)


def test_epic100_bad_files(tmp_path):
    ann = make_epic(tmp_path)
    write(ann / "EPIC_100_train.csv", E_HEADER.replace(",noun_class", "") + "x\n")
    raises_at("EPIC_100_train.csv", 1, parse_epic100, ann, tmp_path, "train", match="missing column(s) noun_class")
    write(ann / "EPIC_100_noun_classes.csv", "id,key\n0,tap\n2,cup\n")
    raises_at("EPIC_100_noun_classes.csv", 3, parse_epic100, ann, tmp_path, "train", match="id 1 is missing")
    make_epic(tmp_path)
    write(ann / "EPIC_100_video_info.csv", "video_id,duration,fps,resolution\nP01_01,10.0,fast,1920x1080\n")
    raises_at("EPIC_100_video_info.csv", 2, parse_epic100, ann, tmp_path, "train", match="fps must be a number")
    write(ann / "EPIC_100_video_info.csv", "video_id,duration,fps,resolution\nP01_01,1e999,50,1920x1080\n")
    raises_at("EPIC_100_video_info.csv", 2, parse_epic100, ann, tmp_path, "train", match="positive and finite")


# data_prep scripts -------------------------------------------------------------------------------------


def run_script(name, *args):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, os.path.join(REPO, "data_prep", name), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_prepare_hmdb51_cli(tmp_path):
    videos, splits = make_hmdb(tmp_path)
    out = tmp_path / "out"
    r = run_script("prepare_hmdb51.py", "--videos", videos, "--splits", splits, "--split-id", 1, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "train: 4 samples" in r.stdout and "test: 2 samples" in r.stdout
    assert len(Manifest.load(out / "train.json").samples) == 4 and len(Manifest.load(out / "test.json").samples) == 2
    assert (out / "missing_train.txt").read_text() == "wave/w4.avi\n"


def test_prepare_kinetics_cli(tmp_path):
    train_csv, videos = make_kinetics(tmp_path, "folders")
    val_csv = write(tmp_path / "validate.csv", "label,youtube_id,time_start,time_end,split\nzumba,zz1,0,10,val\n")
    out = tmp_path / "out"
    r = run_script("prepare_kinetics.py", "--videos", videos, "--train-csv", train_csv, "--csv", val_csv, "--out", out)
    assert r.returncode == 0, r.stderr
    assert len(Manifest.load(out / "train.json").samples) == 3
    val = Manifest.load(out / "val.json")
    assert val.label_sets["label"] == ["abseiling", "air drumming", "zumba"] and val.samples[0].targets == {"label": 2}
    assert (out / "missing_train.txt").read_text() == "zz2_000030_000040.mp4\n"
    assert (out / "missing_val.txt").read_text() == ""

    write(tmp_path / "classes.txt", "abseiling\nair drumming\nzumba\n")
    write(tmp_path / "mylist.txt", "air_drumming/ad1_000005_000015.mp4 1\n")
    r = run_script("prepare_kinetics.py", "--videos", videos, "--list", tmp_path / "mylist.txt",
                   "--classes", tmp_path / "classes.txt", "--out", out)
    assert r.returncode == 0, r.stderr
    assert Manifest.load(out / "mylist.json").samples[0].targets == {"label": 1}

    bad_csv = write(tmp_path / "bad.csv", "label,youtube_id,time_start,time_end,split\nzumba,zz1,0\n")
    r = run_script("prepare_kinetics.py", "--videos", videos, "--train-csv", bad_csv, "--out", out)
    assert r.returncode == 1 and "bad.csv:2: " in r.stderr and "Traceback" not in r.stderr


def test_prepare_epic100_cli(tmp_path):
    ann = make_epic(tmp_path)
    out = tmp_path / "out"
    r = run_script("prepare_epic100.py", "--annotations", ann, "--data", tmp_path, "--frames", "--out", out)
    assert r.returncode == 0, r.stderr
    train, val = Manifest.load(out / "train.json"), Manifest.load(out / "validation.json")
    assert len(train.samples) == 2 and len(val.samples) == 1 and val.samples[0].frames
    assert json.loads((out / "train.json").read_text())["label_sets"]["verb"] == ["take", "put", "open"]
    os.remove(ann / "EPIC_100_train.csv")  # validation only, as in the real annotations at hand
    r = run_script("prepare_epic100.py", "--annotations", ann, "--data", tmp_path, "--out", out)
    assert r.returncode == 2 and "no EPIC_100_train.csv in" in r.stderr and "--splits" in r.stderr
    r = run_script("prepare_epic100.py", "--annotations", ann, "--data", tmp_path, "--splits", "validation",
                   "--out", tmp_path / "only")
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path / "only") == ["validation.json"] and "clamped" not in r.stdout


# EPIC-KITCHENS-100, the real annotations ---------------------------------------------------------------

EPIC_ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared/data/epic-kitchens-100-annotations"
# The earliest validation segment of a video at each of the four rates, and the video's rate.
EPIC_RATES = {"P04_24_0": Fraction(60000, 1001), "P09_07_0": Fraction(30000, 1001),
              "P17_02_0": Fraction(48000, 1001), "P18_09_0": Fraction(90)}


def epic_csv(name):
    """The rows of a real annotation file, read independently of vidkd (skips when the folder is absent)."""
    if not EPIC_ANNOTATIONS.is_dir():
        pytest.skip(f"no EPIC-KITCHENS-100 annotations in {EPIC_ANNOTATIONS}")
    with open(EPIC_ANNOTATIONS / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def seconds(timestamp):
    """'hh:mm:ss.ff' in seconds."""
    h, m, s = timestamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_epic100_every_real_validation_segment(tmp_path, capsys):
    rows = epic_csv("EPIC_100_validation.csv")
    duration = {v["video_id"]: float(v["duration"]) for v in epic_csv("EPIC_100_video_info.csv")}
    prepare = runpy.run_path(os.path.join(REPO, "data_prep", "prepare_epic100.py"))["main"]
    prepare(["--annotations", str(EPIC_ANNOTATIONS), "--data", str(tmp_path), "--splits", "validation",
             "--out", str(tmp_path / "out")])
    assert os.listdir(tmp_path / "out") == ["validation.json"]
    m = Manifest.load(tmp_path / "out" / "validation.json")
    assert {head: len(names) for head, names in m.label_sets.items()} == {"verb": 97, "noun": 300}
    assert (len(epic_csv("EPIC_100_verb_classes.csv")), len(epic_csv("EPIC_100_noun_classes.csv"))) == (97, 300)
    assert len(rows) == len(m.samples) == 9668
    assert [(r.id, r.path, r.targets, r.start_frame, r.fps) for r in m.samples] == [
        (row["narration_id"], f"{row['participant_id']}/videos/{row['video_id']}.MP4",
         {"verb": int(row["verb_class"]), "noun": int(row["noun_class"])}, int(row["start_frame"]) - 1, 60.0)
        for row in rows]
    past_end = {row["narration_id"]: math.floor(duration[row["video_id"]] * 60) - 1 for row in rows
                if int(row["stop_frame"]) > duration[row["video_id"]] * 60}  # -> the video's last 0-based frame
    assert {r.id: r.stop_frame for r, row in zip(m.samples, rows) if r.stop_frame != int(row["stop_frame"]) - 1} \
        == past_end and len(past_end) == 1
    assert "validation: 1 segment ends past its video's end (clamped to the end)" in capsys.readouterr().out


@pytest.mark.parametrize("use_frames", [False, True], ids=["videos", "rgb_frames"])
def test_epic100_real_segments_decode_at_their_timestamps(tmp_path, video_factory, use_frames):
    """A real segment of a 59.94, 29.97, 47.95 and 90 fps video, from a real encoded video at that rate or from
    60 fps JPEG frames, each frame showing its number. EPIC's frame number f names JPEG f, shown from
    (f - 1) / 60 to f / 60, and its timestamp t lies within one 60 fps frame of that (|f - 60 t| <= 1). A video
    at its own rate gives the frame on screen at (f - 1/2) / 60, whose display interval overlaps JPEG f's: t lies
    within one 60 fps frame of when that frame is shown too."""
    rows = {row["narration_id"]: row for row in epic_csv("EPIC_100_validation.csv")}
    native = {v["video_id"]: float(v["fps"]) for v in epic_csv("EPIC_100_video_info.csv")}
    m, _ = parse_epic100(EPIC_ANNOTATIONS, tmp_path, "validation", use_frames)
    m = replace(m, samples=[r for r in m.samples if r.id in EPIC_RATES])
    assert [r.id for r in m.samples] == list(EPIC_RATES)
    rates = {i: 60 if use_frames else rate for i, rate in EPIC_RATES.items()}  # of the frames written
    for rec in m.samples:
        row = rows[rec.id]
        assert float(EPIC_RATES[rec.id]) == pytest.approx(native[row["video_id"]])
        count = math.ceil((seconds(row["stop_timestamp"]) + 0.5) * rates[rec.id])  # the segment and 0.5 s more
        if use_frames:
            os.makedirs(m.abspath(rec))
            for i in range(count):
                Image.fromarray(frame_image(i, 32, 32, digits=2)).save(
                    os.path.join(m.abspath(rec), m.frame_template.format(i + 1)), quality=95)
        else:
            video_factory(os.path.splitext(rec.path)[0], "MP4", num_frames=count, height=32, width=32,
                          fps=rates[rec.id], digits=2)
    tolerance = 1 / 60
    ds = VideoDataset(m, ClipSpec(256, mode="segment"), TestTransform(32, 32, [0] * 3, [1] * 3), False)
    for j, rec in enumerate(m.samples):
        item, row = ds[j], rows[rec.id]
        assert item["valid"], item["failures"]
        shown = frame_numbers((item["input"].permute(1, 2, 3, 0) * 255).round(), digits=2)
        assert shown == sorted(shown) and set(shown) == set(range(shown[0], shown[-1] + 1))  # every frame, in order
        rate = float(rates[rec.id])
        start, stop = seconds(row["start_timestamp"]), seconds(row["stop_timestamp"])
        assert shown[0] / rate - tolerance <= start <= (shown[0] + 1) / rate + tolerance, (rec.id, shown[0])
        assert shown[-1] / rate - tolerance <= stop <= (shown[-1] + 1) / rate + tolerance, (rec.id, shown[-1])


def test_frame_range_counts_in_the_time_base():
    """[start, stop] at 60 fps as the frames of a file at its own rate (hand-computed), or of a frame folder."""
    rec = VideoRecord("a", "a.MP4", {}, start_frame=59, stop_frame=119, fps=60.0)  # 0.983 s to 1.983 s
    assert rec.frame_range(1000, 30.0) == (29, 60)  # floor(59.5 / 2), floor(119.5 / 2) + 1
    assert rec.frame_range(1000, 90.0) == (89, 180)  # floor(59.5 * 1.5), floor(119.5 * 1.5) + 1
    assert rec.frame_range(1000, 60000 / 1001) == (59, 120)  # floor(59.44), floor(119.38) + 1
    assert rec.frame_range(1000, 60.0) == (59, 120)
    assert rec.frame_range(50, 30.0) == (29, 50)  # the stop past the frames that decode
    assert rec.frame_range(1000, 0.0) == (59, 120)  # a container without a rate: its own frames
    folder = replace(rec, frames=True)
    assert folder.frame_range(1000, 60.0) == (59, 120) and folder.frame_range(100, 60.0) == (59, 100)
    whole = VideoRecord("b", "b.avi", {})  # fps 0, stop -1: the whole video
    assert whole.frame_range(48, 25.0) == (0, 48)
