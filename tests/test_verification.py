"""Face verification: LFW's 10-fold protocol and TPR at FPR against hand-computed values, the ROC picture, and the
pair lists: LFW's pairs.txt and insightface's .bin (Python 2 or 3), through the restricted unpickler."""
import io
import math
import os
import pickle

import numpy as np
import pytest
from PIL import Image
from test_images import Python2Pickler

from vidkd.data.datasets.faces import read_pairs, read_verification_bin
from vidkd.engine.verification import best_threshold, kfold_accuracy, plot_roc, tpr_at_fpr
from vidkd.errors import AnnotationError, UnsafePickleError


def test_ten_folds_choose_each_threshold_on_the_other_nine():
    """10 folds of 5 pairs: same pairs score 0.8 and 0.7, different ones 0.3, 0.2, 0.1; in fold 0 a hard different
    pair (0.75) replaces the 0.1. On any 9 folds the best rule is "same above 0.5" (44 or 45 of 45 right; above
    0.775 only 36), so every fold's threshold is 0.5: fold 0 gets 4 of 5 right, the others 5 of 5."""
    scores, same = [], []
    for fold in range(10):
        scores += [0.8, 0.7, 0.75 if fold == 0 else 0.1, 0.3, 0.2]
        same += [True, True, False, False, False]
    result = kfold_accuracy(scores, same)
    assert result["thresholds"] == [0.5] * 10
    assert result["accuracy"] == pytest.approx(98.0)  # (0.8 + 9 x 1.0) / 10
    assert result["std"] == pytest.approx(6.0)  # sqrt((0.18^2 + 9 x 0.02^2) / 10)


def test_the_best_threshold_splits_no_tie_and_ends_at_infinity():
    s = np.array([0.9, 0.5, 0.5, 0.1])
    assert best_threshold(s, np.array([True, True, False, False])) == 0.7  # 0.5 | 0.5 cannot be split: 3 of 4
    assert best_threshold(s, np.array([False, False, False, False])) == math.inf  # nothing is "same"
    assert best_threshold(s, np.array([True, True, True, True])) == -math.inf


def test_tpr_at_fpr_on_a_known_score_distribution():
    """1000 different pairs scoring 0.000, 0.001, ..., 0.999; 100 same pairs, half at 0.9995 (above every different
    pair), half at 0.5 (tied with one different pair). FPR 1e-3 allows one false positive, 0.4 allows 400 (the
    different pairs from 0.6 up: the same pairs at 0.5 stay out), 0.5 allows 500 (from 0.5 up, the tie included);
    1e-4 is below 1 / 1000, which 1000 different pairs cannot measure."""
    rng = np.random.default_rng(0)
    scores = np.concatenate([np.arange(1000) / 1000, np.full(50, 0.9995), np.full(50, 0.5)])
    same = np.concatenate([np.zeros(1000, bool), np.ones(100, bool)])
    order = rng.permutation(len(scores))
    got = tpr_at_fpr(scores[order], same[order], [1e-4, 1e-3, 1e-2, 0.4, 0.5])
    assert math.isnan(got[1e-4])
    assert [got[f] for f in (1e-3, 1e-2, 0.4, 0.5)] == [0.5, 0.5, 0.5, 1.0]


def test_the_roc_picture_is_written(tmp_path):
    rng = np.random.default_rng(0)
    same = rng.random(400) < 0.5
    plot_roc({"student": (rng.normal(same.astype(float), 1.0), same), "teacher": (rng.normal(2 * same, 1.0), same)},
             tmp_path / "roc.png")
    picture = Image.open(tmp_path / "roc.png")
    assert picture.size[0] > 300 and len(set(picture.convert("L").getdata())) > 20


def jpeg(shade):
    out = io.BytesIO()
    Image.fromarray(np.full((112, 112, 3), shade, np.uint8)).save(out, "JPEG")
    return out.getvalue()


@pytest.mark.parametrize("writer", ["python 2", "protocol 2", "protocol 4"])
def test_a_verification_bin_written_by_python_2_or_3_reads(tmp_path, writer):
    images, same = [jpeg(10), jpeg(20), jpeg(30), jpeg(40)], [True, False]
    with open(tmp_path / "lfw.bin", "wb") as f:
        if writer == "python 2":  # insightface's own files: Python 2 str for the images
            Python2Pickler(f, protocol=2).dump((images, same))
        else:
            pickle.dump((images, same), f, protocol=int(writer[-1]))
    got_images, got_same = read_verification_bin(str(tmp_path / "lfw.bin"))
    assert got_images == images and got_same == same
    assert np.asarray(Image.open(io.BytesIO(got_images[2]))).mean() == pytest.approx(30, abs=2)


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, ("touch " + self.path,)


@pytest.mark.parametrize("content, message", [
    ("payload", r"refused posix\.system"),
    ({"images": []}, "holds \\(images, issame_list\\); this one holds a dict"),
    (([b"a", b"b"], [1]), r"issame_list\[0\] is a int, not bool"),
    (([b"a", "b"], [True]), r"images\[1\] is a str, not bytes or bytearray"),
    (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
])
def test_a_bin_carrying_anything_else_is_refused_naming_it(tmp_path, content, message):
    ran = tmp_path / "ran"
    if content == "payload":
        content = ([b"a", Payload(str(ran))], [True])
    with open(tmp_path / "x.bin", "wb") as f:
        pickle.dump(content, f, protocol=2)
    with pytest.raises((UnsafePickleError, AnnotationError), match=message) as refused:
        read_verification_bin(str(tmp_path / "x.bin"))
    assert "x.bin" in str(refused.value) and not ran.exists()


def test_lfw_pairs_read_fold_by_fold_and_a_bad_line_is_named(tmp_path):
    (tmp_path / "pairs.txt").write_text("2 1\nAnn 1 2\nAnn 1 Bob 3\nBob 2 4\nCy 1 Ann 12\n")
    pairs, folds = read_pairs(str(tmp_path / "pairs.txt"), "lfw")
    assert folds == 2 and [p[2] for p in pairs] == [True, False, True, False]
    assert pairs[1] == (os.path.join("lfw", "Ann", "Ann_0001.jpg"), os.path.join("lfw", "Bob", "Bob_0003.jpg"), False)
    (tmp_path / "bad.txt").write_text("2 1\nAnn 1 2\nAnn 1 Bob\nBob 2 4\nCy 1 Ann 12\n")
    with pytest.raises(AnnotationError, match=r"bad.txt:3: image number 'Bob' is not a number"):
        read_pairs(str(tmp_path / "bad.txt"), "lfw")
    (tmp_path / "short.txt").write_text("10 300\nAnn 1 2\n")
    with pytest.raises(AnnotationError, match="1 pairs; the header promises 10 folds x 2 x 300"):
        read_pairs(str(tmp_path / "short.txt"), "lfw")
