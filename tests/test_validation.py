"""Every value checked before anything runs: each config key's rule (defaults.RULES) and the relations between
keys (defaults.RELATIONS), refused at load with the key and the file and line that set it; manifests refused when
loaded, naming the file and the sample; a run that would not train refused instead of exiting 0."""
import argparse
import json
import math
import os
import runpy

import pytest
from conftest import REPO, launch, write_config
from test_config import write

from vidkd.config import load_config
from vidkd.data.loader import build_loaders
from vidkd.data.manifest import Manifest, VideoRecord, check_same_classes
from vidkd.engine.trainer import check_steps
from vidkd.errors import AnnotationError, ConfigError


# What a study of absurd configs found unchecked (raw tracebacks, silent or late failures): (yaml, key).
ABSURD = [
    ("TRAIN:\n  BATCH_SIZE: 0\n", "TRAIN.BATCH_SIZE"),
    ("TRAIN:\n  BATCH_SIZE: -4\n", "TRAIN.BATCH_SIZE"),
    ("TEST:\n  BATCH_SIZE: 0\n", "TEST.BATCH_SIZE"),
    ("DATA:\n  NUM_FRAMES: 0\n", "DATA.NUM_FRAMES"),
    ("DATA:\n  NUM_FRAMES: -8\n", "DATA.NUM_FRAMES"),
    ("DATA:\n  TRAIN_CROP_SIZE: 0\n", "DATA.TRAIN_CROP_SIZE"),
    ("DATA:\n  TEST_CROP_SIZE: -112\n", "DATA.TEST_CROP_SIZE"),
    ("DATA:\n  TRAIN_CROP_SIZE: 12500\n", "DATA.TRAIN_CROP_SIZE"),  # 240 GB a batch
    ("TRAIN:\n  BATCH_SIZE: 64\nDATA:\n  NUM_FRAMES: 256\n  TRAIN_CROP_SIZE: 1024\n", "TRAIN.BATCH_SIZE"),
    ("TRAIN:\n  GRAD_ACCUM_STEPS: 0\n", "TRAIN.GRAD_ACCUM_STEPS"),
    ("TRAIN:\n  EVAL_PERIOD: 0\n", "TRAIN.EVAL_PERIOD"),
    ("TRAIN:\n  CHECKPOINT_PERIOD: 0\n", "TRAIN.CHECKPOINT_PERIOD"),
    ("DATA:\n  TRAIN_CROP_SCALE: [1.0, 0.4]\n", "DATA.TRAIN_CROP_SCALE"),
    ("DATA:\n  TRAIN_CROP_SCALE: [0.4]\n", "DATA.TRAIN_CROP_SCALE"),
    ("DATA:\n  TRAIN_CROP_SCALE: [0.0, 1.0]\n", "DATA.TRAIN_CROP_SCALE"),
    ("DATA:\n  TRAIN_CROP_RATIO: [1.33, 0.75]\n", "DATA.TRAIN_CROP_RATIO"),
    ("DATA:\n  MEAN: [0.45]\n", "DATA.MEAN"),
    ("DATA:\n  MEAN: [123.7, 116.3, 103.5]\n", "DATA.MEAN"),  # 0..255 values where [0, 1] ones belong
    ("DATA:\n  STD: [0.0, 0.225, 0.225]\n", "DATA.STD"),
    ("DATA:\n  NUM_WORKERS: -1\n", "DATA.NUM_WORKERS"),
    ("DATA:\n  PREFETCH_FACTOR: 0\n", "DATA.PREFETCH_FACTOR"),
    ("SEED: -1\n", "SEED"),
    (f"SEED: {2**76}\n", "SEED"),
    ("DISTILL:\n  SDD_DIM: 0\n", "DISTILL.SDD_DIM"),
    ("DISTILL:\n  CACHE_VIEWS: 1000000000\n", "DISTILL.CACHE_VIEWS"),
    ("TRAIN:\n  EPOCHS: 0\n", "TRAIN.EPOCHS"),
    ("TRAIN:\n  EPOCHS: -3\n", "TRAIN.EPOCHS"),
    ("DATA:\n  SAMPLING_RATE: 0\n", "DATA.SAMPLING_RATE"),
    ("DISTILL:\n  TEMPERATURE: 0.0\n", "DISTILL.TEMPERATURE"),
    ("TEST:\n  NUM_CLIPS: 0\n", "TEST.NUM_CLIPS"),
    ("MODEL:\n  NUM_CLASSES: -5\n", "MODEL.NUM_CLASSES"),
    ("DATA:\n  MAX_FAIL_FRACTION: -0.1\n", "DATA.MAX_FAIL_FRACTION"),
    ("DATA:\n  MAX_FAIL_FRACTION: 1.5\n", "DATA.MAX_FAIL_FRACTION"),
    ("DATA:\n  BATCH_TIMEOUT: 1.0e+300\n", "DATA.BATCH_TIMEOUT"),
    ("DATA:\n  TEST_SHORT_SIDE: 100\n  TEST_CROP_SIZE: 112\n", "DATA.TEST_CROP_SIZE"),
    ("SOLVER:\n  BASE_LR: 0.0\n", "SOLVER.BASE_LR"),
    ("SOLVER:\n  MIN_LR: 0.5\n", "SOLVER.MIN_LR"),
    ("SOLVER:\n  WARMUP_EPOCHS: 40.0\n", "SOLVER.WARMUP_EPOCHS"),
    ("MODEL:\n  VIT_STEM: conv\n  VIT_PATCH_SIZE: 6\n", "MODEL.VIT_PATCH_SIZE"),
    ("DISTILL:\n  METHOD: rkd\n", "DISTILL.METHOD"),
    ("DATA:\n  TRAIN_SPLIT: ''\n", "DATA.TRAIN_SPLIT"),
    ("EXPORT:\n  ONNX_OPSET: 99\n", "EXPORT.ONNX_OPSET"),
]


@pytest.mark.parametrize("text,key", ABSURD)
def test_an_absurd_value_is_refused_at_load_naming_the_key_file_and_line(tmp_path, text, key):
    path = write(tmp_path, "absurd.yaml", text)
    line = 1 + next(i for i, t in enumerate(text.splitlines()) if t.strip().startswith(key.split(".")[-1] + ":"))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}:{line}: config key {key!r}"), str(error.value)


def test_a_relation_names_every_key_and_where_each_was_set(tmp_path):
    path = write(tmp_path, "lr.yaml", "SEED: 1\nSOLVER:\n  MIN_LR: 0.01\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, ["SOLVER.BASE_LR", "0.001"])
    assert str(error.value) == (
        f"{path}:3: config key 'SOLVER.MIN_LR': the schedule decays from SOLVER.BASE_LR to SOLVER.MIN_LR: "
        f"MIN_LR <= BASE_LR; got SOLVER.MIN_LR = 0.01 ({path}:3), SOLVER.BASE_LR = 0.001 (command line)")


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    write(tmp_path, "base.yaml", "DATA:\n  NUM_FRAMES: 8\n  SAMPLING_RATE: 2\n  NUM_FRAMES: 4\n")
    child = write(tmp_path, "child.yaml", "_BASE_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml:4: key 'NUM_FRAMES' is given twice in one mapping, on lines "
                                          r"2 and 4"):
        load_config(child)
    top = write(tmp_path, "top.yaml", "SEED: 1\nDATA: {FLIP: true}\nSEED: 2\n")
    with pytest.raises(ConfigError, match=r"top\.yaml:3: key 'SEED' is given twice in one mapping, on lines 1 and 3"):
        load_config(top)
    loop = write(tmp_path, "alias.yaml", "SEED: 1\nX: &a [*a, {b: 1, b: 2}]\n")  # an alias inside itself
    with pytest.raises(ConfigError, match=r"alias\.yaml:2: key 'b' is given twice"):
        load_config(loop)


def test_an_output_dir_that_is_a_file_or_inside_one_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(ConfigError, match=r"^command line: config key 'OUTPUT_DIR' must be a folder path"):
            load_config(None, ["OUTPUT_DIR", str(out)])
    assert load_config(None, ["OUTPUT_DIR", str(tmp_path / "new" / "run")]).OUTPUT_DIR == str(tmp_path / "new" / "run")


@pytest.mark.parametrize("task", ["video", "image", "face"])
def test_every_run_of_the_demo_and_of_its_ablation_validates(tmp_path, task):
    """tools/demo.py's trainings, each its config file with its overrides, and every variant of its ablation
    file (every file of configs/ loads: test_config.py): video, six trainings and configs/ablations/demo.yaml;
    image, two teachers and configs/ablations/demo_image.yaml; face, the transformer teacher and
    configs/ablations/demo_face.yaml."""
    demo = runpy.run_path(os.path.join(REPO, "tools", "demo.py"))
    data, config, vit, cnn, ablation = (os.path.join(REPO, p) if p else None for p in demo["DEFAULTS"][task])
    args = argparse.Namespace(config=config, vit_config=vit, cnn_config=cnn, ablation=ablation)
    cfg = load_config(args.config, ["OUTPUT_DIR", str(tmp_path)])
    assert cfg.TASK == task
    runs = demo["runs"](cfg, args)
    assert len(runs) == {"video": 6, "image": 2, "face": 1}[task]
    for name, _, path, overrides in runs:
        run_cfg = load_config(path, overrides + ["OUTPUT_DIR", str(tmp_path / name)])
        assert run_cfg.OUTPUT_DIR == str(tmp_path / name) and run_cfg.TASK == task
    variants = demo["read_variants"](os.path.join(REPO, "configs", "ablations", "demo.yaml") if task == "video"
                                     else ablation)
    expected = {"student alone", "KD from the ViT", "KD from the CNN"}
    if task == "video":
        assert len(variants) >= 17 and expected | {"dual (default)"} <= set(variants)
    elif task == "face":  # the table: the student alone, ILED + RPSD, CAFD and embedding MSE
        assert {"student alone", "ILED + RPSD", "CAFD", "embedding MSE"} <= set(variants)
    else:  # the table: the student alone, and KD, DKD, FitNet, CRD and OFA from each teacher
        assert {"student alone"} | {f"{m} from the {t}" for m in ("KD", "DKD", "FitNet", "CRD", "OFA")
                                    for t in ("ViT", "CNN")} <= set(variants)
    for overrides in variants.values():
        load_config(args.config, demo["teacher_checkpoints"](cfg) + overrides + ["SEED", "2"])
    for text in ["[a, b]", "{}", "a: [DISTILL.METHOD]"]:
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match="bad.yaml: an ablation file maps"):
            demo["read_variants"](str(tmp_path / "bad.yaml"))


# manifests ---------------------------------------------------------------------------------------------


def manifest_file(tmp_path, samples, name="m.json", label_sets=None):
    data = {"dataset": "t", "split": "train", "root": "/r", "label_sets": label_sets or {"label": ["a", "b"]},
            "samples": samples}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def sample(sid="v0", **fields):
    return {"id": sid, "path": f"{sid}.mp4", "targets": {"label": 0}, **fields}


@pytest.mark.parametrize("samples,message", [
    ([], "no samples: the split is empty"),
    ([sample("a"), sample("b"), sample("a")], "sample 2 ('a'): the id of sample 0 too"),
    ([sample(start_frame=10, stop_frame=5)], "sample 0 ('v0'): start_frame 10 and stop_frame 5: need 0 <= start"),
    ([sample(start_frame=-1)], "sample 0 ('v0'): start_frame -1 and stop_frame -1"),
    ([sample(stop_frame=-2)], "sample 0 ('v0'): start_frame 0 and stop_frame -2"),
    ([sample(), sample("v1", fps=-30.0)], "sample 1 ('v1'): fps -30.0 must be a finite rate"),
    ([sample(fps=math.nan)], "sample 0 ('v0'): fps nan"),
    ([sample(fps=math.inf)], "sample 0 ('v0'): fps inf"),
    ([sample(targets={"label": 2})], "sample 0 ('v0'): targets {'label': 2} do not fit"),
])
def test_a_bad_manifest_is_refused_naming_the_file_and_the_sample(tmp_path, samples, message):
    path = manifest_file(tmp_path, samples)
    with pytest.raises(AnnotationError) as error:
        Manifest.load(path)
    assert str(error.value).startswith(f"{path}: {message}"), str(error.value)


def test_open_ended_and_one_frame_segments_and_a_files_own_frames_are_allowed(tmp_path):
    samples = [sample("a", stop_frame=-1), sample("b", start_frame=7, stop_frame=7, fps=59.94), sample("c", fps=0)]
    assert [r.id for r in Manifest.load(manifest_file(tmp_path, samples)).samples] == ["a", "b", "c"]


@pytest.mark.parametrize("test_sets,message", [
    ({"label": ["a", "b", "c"]}, "label set 'label' of the training manifest .*: 3 classes here, 2 there"),
    ({"label": ["b", "a"]}, "label set 'label' of the training manifest .*: class 0 is 'b' here, 'a' there"),
    ({"verb": ["a", "b"]}, "label set 'label' of the training manifest .*: missing here"),
    ({"label": ["a", "b"], "noun": ["x"]}, r"label set\(s\) \['noun'\] that the training manifest .* lacks"),
])
def test_a_test_split_with_other_classes_is_refused(tmp_path, test_sets, message):
    train = Manifest("t", "train", "/r", {"label": ["a", "b"]}, [VideoRecord("a", "a.mp4", {"label": 0})])
    test = Manifest("t", "test", "/r", test_sets, [])
    with pytest.raises(AnnotationError, match=f"^test.json: {message}"):
        check_same_classes(train, "train.json", test, "test.json")
    check_same_classes(train, "train.json", train, "train.json")


def test_the_loaders_refuse_a_test_manifest_of_other_classes(tmp_path):
    (tmp_path / "m").mkdir()
    manifest_file(tmp_path, [sample()], "m/train.json")
    test = manifest_file(tmp_path, [sample()], "m/test.json", {"label": ["a", "c"]})
    cfg = load_config(None, ["DATA.MANIFEST_DIR", str(tmp_path / "m"), "DATA.NUM_WORKERS", "0"])
    with pytest.raises(AnnotationError, match=f"^{test}: label set 'label' of the training manifest .*class 1 is 'c'"):
        build_loaders(cfg)


# runs --------------------------------------------------------------------------------------------------


def test_a_run_that_would_take_no_optimiser_step_is_refused(dataset):
    """16 training videos, the last partial batch dropped: batches of 32 give none; 4 batches of 4 in each of 2
    epochs are fewer than 9 to accumulate (in 3 epochs, one step). What Trainer checks once its loaders are built."""
    def refused(batches, *overrides):
        cfg = load_config(None, ["DATA.MANIFEST_DIR", str(dataset / "manifests"), "DATA.NUM_WORKERS", "0",
                                 "TRAIN.EPOCHS", "2", *overrides])
        train, _ = build_loaders(cfg)
        with pytest.raises(ConfigError, match=f"split 'train' \\(16 videos, 1 rank\\(s\\)\\) gives {batches} whole "
                                              f"batch\\(es\\) per epoch and rank, so the run would take no optimiser"):
            check_steps(cfg, train, 1)
        return cfg, train

    refused(0, "TRAIN.BATCH_SIZE", "32")
    cfg, train = refused(4, "TRAIN.BATCH_SIZE", "4", "TRAIN.GRAD_ACCUM_STEPS", "9")
    cfg.defrost()
    cfg.TRAIN.EPOCHS = 3
    check_steps(cfg, train, 1)


NAN_EVERY_STEP = """
import runpy, sys
from vidkd.distill.ce import CE

forward = CE.forward
CE.forward = lambda self, batch: (lambda z, losses: (z, {k: v * float("nan") for k, v in losses.items()}))(
    *forward(self, batch))
sys.argv = ["tools/train_net.py"] + sys.argv[1:]
runpy.run_path("tools/train_net.py", run_name="__main__")
"""


def test_an_epoch_whose_every_step_is_skipped_stops_the_run(dataset, tmp_path):
    """Every loss NaN, fewer steps in the epoch than TRAIN.MAX_BAD_STEPS: the run stops instead of exporting an
    untrained student."""
    driver = tmp_path / "driver.py"
    driver.write_text(NAN_EVERY_STEP)
    path = write_config(tmp_path / "nan.yaml", dataset, tmp_path / "nan", "ce",
                        MODEL={"STUDENT": "c3d_tiny"}, TRAIN={"EPOCHS": 1, "EMA": False})
    proc = launch([str(driver), "--config", path])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: epoch 1: every step was skipped" in proc.stderr
    assert not (tmp_path / "nan" / "student.pt").exists()

