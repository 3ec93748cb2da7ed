"""TASK image: the methods on image model pairings, the image data layouts (folders, CIFAR pickles, idx, arrays),
and a run of tools/train_net.py on images."""
import csv
import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from conftest import REPO, launch, ok, records
from PIL import Image

from vidkd.config import load_config
from vidkd.data.datasets.images import parse_image_folder, read_cifar_batch, read_idx
from vidkd.data.loader import build_loader
from vidkd.distill.build import build_distiller, teachers_needed
from vidkd.errors import AnnotationError, UnsafePickleError
from vidkd.models import build_image_model

CROP = 32
PAIRS = {"CNN -> ViT": (("resnet_mini",), "deit_mini"), "ViT -> CNN": (("deit_mini",), "resnet_mini"),
         "CNN -> MLP": (("convnext_mini",), "resmlp_mini"), "Swin -> CNN": (("swin_mini",), "resnet_mini")}
DUAL = {"ViT + CNN -> CNN": (("deit_mini", "resnet_mini"), "resnet_mini")}
CASES = [(m, p) for m in ("ce", "kd", "dkd", "fitnet", "rkd", "ofa", "crd", "pat", "fbt") for p in sorted(PAIRS)]


@pytest.mark.parametrize("method, pair", CASES + [("dual_teacher", p) for p in DUAL])
def test_methods_train_on_image_pairings_with_losses_going_down(method, pair):
    """Each single-teacher method on each family pairing; the dual teacher (SDD's maps as one-frame clips, RKD on)
    on a ViT and a CNN teaching a CNN."""
    teacher_names, student_name = (PAIRS | DUAL)[pair]
    rkd = ["DISTILL.RKD_WEIGHT", "1.0"] if method in ("rkd", "dual_teacher") else []
    cfg = load_config(None, ["TASK", "image", "DISTILL.METHOD", method, "DATA.TRAIN_CROP_SIZE", str(CROP),
                             "MODEL.TEACHERS", f"[{', '.join(teacher_names)}]", "DISTILL.TEACHER_INDEX", "0", *rkd])
    torch.manual_seed(0)
    teachers = [build_image_model(name, 4, CROP) for name in teacher_names]
    distiller = build_distiller(cfg, build_image_model(student_name, 4, CROP),
                                [teachers[i] for i in teachers_needed(cfg)], {"label": 4}).train()
    distiller.num_samples = 6
    g = torch.Generator().manual_seed(1)
    batch = {"input": torch.randn(6, 3, CROP, CROP, generator=g), "index": torch.arange(6),
             "targets": {"label": torch.randint(0, 4, (6,), generator=g)}}
    optimizer = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=3e-3)
    totals = []
    for _ in range(20):
        logits, losses = distiller(batch)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(float(loss.detach()))
    assert logits.shape == (6, 4)
    assert sum(totals[-3:]) / 3 < 0.8 * totals[0], totals
    assert not any(p.requires_grad for t in distiller.teachers for p in t.parameters())


def write_idx(path, array, compress):
    codes = {np.dtype(np.uint8): 0x08}
    data = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data += array.tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_read_with_and_without_gzip_and_bad_ones_are_refused(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = str(tmp_path / ("x.idx" + (".gz" if compress else "")))
    write_idx(path, images, compress)
    assert np.array_equal(read_idx(path), images)
    cut = tmp_path / "cut.idx"
    cut.write_bytes(open(path, "rb").read()[:-1] if not compress else gzip.decompress(open(path, "rb").read())[:-1])
    with pytest.raises(AnnotationError, match=r"cut.idx: idx header says \[2, 3, 4\] of uint8 \(24 bytes\), the file holds 23"):
        read_idx(str(cut))
    (tmp_path / "text.idx").write_text("hello")
    with pytest.raises(AnnotationError, match="not an idx file"):
        read_idx(str(tmp_path / "text.idx"))


def test_the_real_fashion_mnist_files_read_when_installed():
    """Debian's dataset-fashion-mnist (`make test` fetches it; or installed): 60000 training images of 28 x 28."""
    roots = [os.path.join(REPO, "data/debian/usr/share/datasets/fashion-mnist"), "/usr/share/datasets/fashion-mnist"]
    root = next((r for r in roots if os.path.isdir(r)), None)
    if root is None:  # `make test` fetches it from Debian's archive where apt-get can
        pytest.skip("Debian's dataset-fashion-mnist is neither fetched by make test nor installed")
    images = read_idx(f"{root}/train-images-idx3-ubyte.gz")
    labels = read_idx(f"{root}/train-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and np.bincount(labels).tolist() == [6000] * 10


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's str opcodes (SHORT_BINSTRING / BINSTRING), as CIFAR's own files hold them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def write_cifar_batch(path, data, labels):
    with open(path, "wb") as f:
        Python2Pickler(f, protocol=2).dump({b"batch_label": b"testing batch 1 of 1", b"labels": labels,
                                            b"data": data, b"filenames": [b"a.png"] * len(labels)})


def test_a_cifar_batch_in_python_2s_layout_reads_and_one_carrying_an_object_is_refused(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    write_cifar_batch(tmp_path / "test_batch", data, [0, 9, 4])
    images, labels = read_cifar_batch(str(tmp_path / "test_batch"), "labels")
    assert images.shape == (3, 32, 32, 3) and labels.tolist() == [0, 9, 4]
    assert np.array_equal(images[1, :, :, 2], data[1, 2048:].reshape(32, 32))  # channel planes, row-major

    class Payload:
        def __reduce__(self):
            return os.system, ("touch " + str(tmp_path / "ran"),)

    with open(tmp_path / "evil", "wb") as f:
        Python2Pickler(f, protocol=2).dump({b"data": data, b"labels": Payload()})
    with pytest.raises(UnsafePickleError, match=r"evil.*posix.system"):
        read_cifar_batch(str(tmp_path / "evil"), "labels")
    assert not (tmp_path / "ran").exists()


def image_folder(root, per_class=6, broken=()):
    """Class folders `a`, `b` of PNG images (a: dark top half, b: dark bottom half, so a flip keeps the class);
    `broken`: (class, name, bytes) files written as given."""
    for label, cls in enumerate("ab"):
        os.makedirs(root / cls, exist_ok=True)
        for i in range(per_class):
            pixels = np.full((36, 40, 3), 200, np.uint8)
            pixels[18 * label: 18 * (label + 1)] = 10 + 5 * i
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    for cls, name, content in broken:
        (root / cls / name).write_bytes(content)
    return root


def image_config(tmp_path, manifests, method="ce", *more):
    return load_config(None, ["TASK", "image", "DATA.MANIFEST_DIR", str(manifests), "DATA.TRAIN_CROP_SIZE", "32",
                              "DATA.TEST_SHORT_SIDE", "32", "DATA.TEST_CROP_SIZE", "32", "DATA.NUM_WORKERS", "0",
                              "TRAIN.BATCH_SIZE", "4", "DISTILL.METHOD", method, *more])


def test_a_truncated_or_empty_image_is_skipped_and_counted(tmp_path):
    good = (tmp_path / "ok.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    root = image_folder(tmp_path / "train", broken=[("a", "empty.png", b""), ("b", "cut.png", good.read_bytes()[:30])])
    manifest = parse_image_folder(str(root), "folder", "train")
    (tmp_path / "m").mkdir()
    manifest.save(str(tmp_path / "m" / "train.json"))
    loader = build_loader(image_config(tmp_path, tmp_path / "m", "ce", "DATA.MAX_FAIL_FRACTION", "0.5"), True)
    loader.set_epoch(0)
    seen = sum(len(b["input"]) for b in loader)
    assert seen == 12 and loader.tracker.count == 2  # 14 images, 2 broken: replaced by others, and counted


def test_train_net_trains_on_an_image_folder(tmp_path):
    """TASK image end to end: data_prep/prepare_images.py on class folders of PNGs, then tools/train_net.py."""
    for split in ("train", "test"):
        image_folder(tmp_path / split)
    out = tmp_path / "folder"
    ok(launch(["data_prep/prepare_images.py", "folder", "--train", str(tmp_path / "train"), "--test",
               str(tmp_path / "test"), "--out", str(tmp_path / "m")]))
    (tmp_path / "c.yaml").write_text("TASK: image\nMODEL:\n  TEACHERS: [deit_mini, resnet_mini]\n")
    args = ["DATA.MANIFEST_DIR", str(tmp_path / "m"), "DATA.TRAIN_CROP_SIZE", "32",
            "DATA.TRAIN_PAD", "2", "DATA.TEST_SHORT_SIDE", "32", "DATA.TEST_CROP_SIZE", "32", "DATA.NUM_WORKERS", "0",
            "TRAIN.BATCH_SIZE", "4", "TRAIN.EPOCHS", "3", "DISTILL.METHOD", "ce", "MODEL.STUDENT", "resnet_mini",
            "DEEPSPEED.PRECISION", "fp32", "TEST.NUM_CLIPS", "1", "TEST.NUM_CROPS", "1", "OUTPUT_DIR", str(out)]
    ok(launch(["tools/train_net.py", "--config", str(tmp_path / "c.yaml"), *args]))
    history = records(str(out))
    assert len(history) == 3 and history[-1]["loss/total"] < history[0]["loss/total"]
    assert 0 <= history[-1]["test/top1"] <= 100
    # tools/test_net.py on the exported student: the training run's last evaluation, per class and as a matrix
    ok(launch(["tools/test_net.py", "--config", str(tmp_path / "c.yaml"), "--checkpoint", str(out / "student.pt"),
               *args[:-1], str(tmp_path / "tested")]))
    with open(tmp_path / "tested" / "test_metrics.json") as f:
        metrics = json.load(f)["metrics"]
    assert metrics["top1"] == pytest.approx(history[-1]["test/top1"]) and "top5" not in metrics  # 2 classes
    with open(tmp_path / "tested" / "per_class_accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class_name"] for r in rows] == ["a", "b"] and [int(r["videos"]) for r in rows] == [6, 6]
    assert sum(float(r["top1"]) for r in rows) / 2 == pytest.approx(metrics["top1"], abs=0.01)
    assert (tmp_path / "tested" / "confusion_label.png").stat().st_size > 0


def test_a_checkpoint_in_timms_layout_loads_and_a_classifier_of_another_size_is_dropped(tmp_path):
    """A local file of timm's own state dict (no `net.` prefix): every weight lands in vidkd's model. A classifier
    of another class count is dropped and reported in a partial load (MODEL.PARTIAL_LOAD: a backbone to fine-tune)
    and refused otherwise (a teacher with a fresh classifier would teach noise); a missing weight is refused,
    naming it."""
    import timm

    from vidkd.errors import CheckpointError
    from vidkd.models.checkpoint import load_checkpoint
    from vidkd.models.image import MINI_RESNET

    net = timm.create_model("resnet18", pretrained=False, num_classes=4, **MINI_RESNET)
    torch.save(net.state_dict(), tmp_path / "same.pth")
    model = build_image_model("resnet_mini", 4, CROP)
    load_checkpoint(model, str(tmp_path / "same.pth"))
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in net.state_dict().items())
    other = timm.create_model("resnet18", pretrained=False, num_classes=10, **MINI_RESNET)
    torch.save({"state_dict": other.state_dict()}, tmp_path / "ten.pth")
    report = load_checkpoint(model, str(tmp_path / "ten.pth"), partial=True)
    assert report["notes"] == ["classifier dropped: 10 classes in the checkpoint, 4 here"]
    assert report["missing"] == ["net.fc.bias", "net.fc.weight"] and report["unexpected"] == []
    assert torch.equal(model.net.conv1.weight, other.conv1.weight)
    with pytest.raises(CheckpointError, match=r"missing: \['net.fc.bias', 'net.fc.weight'\]"):
        load_checkpoint(model, str(tmp_path / "ten.pth"))
    cut = {k: v for k, v in net.state_dict().items() if k != "layer2.0.conv1.weight"}
    torch.save(cut, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match=r"(?s)cut.pth: does not fit .*missing: \['net.layer2.0.conv1.weight'\]"):
        load_checkpoint(model, str(tmp_path / "cut.pth"))


def test_a_killed_image_run_with_crd_resumes_bit_identical_memory_banks_included(tmp_path):
    """CRD's memory banks are method state, in each rank's checkpoint file: a run killed mid-epoch or at an
    epoch's end and resumed ends with the uninterrupted run's student, bit for bit, and its metrics."""
    from test_faults import assert_same_run, kill_at_a_random_step, position

    for split in ("train", "test"):
        image_folder(tmp_path / split)
    ok(launch(["data_prep/prepare_images.py", "folder", "--train", str(tmp_path / "train"), "--test",
               str(tmp_path / "test"), "--out", str(tmp_path / "m")]))
    (tmp_path / "c.yaml").write_text("TASK: image\nMODEL:\n  TEACHERS: [deit_mini, deit_mini]\n"
                                     "  STUDENT: resnet_mini\n")
    common = ["DATA.MANIFEST_DIR", str(tmp_path / "m"), "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_SHORT_SIDE", "32",
              "DATA.TEST_CROP_SIZE", "32", "DATA.NUM_WORKERS", "0", "TRAIN.BATCH_SIZE", "2", "TRAIN.EPOCHS", "2",
              "TRAIN.CHECKPOINT_STEPS", "2", "DISTILL.METHOD", "crd", "DISTILL.CRD_NEGATIVES", "5",
              "DEEPSPEED.PRECISION", "fp32", "TEST.NUM_CLIPS", "1", "TEST.NUM_CROPS", "1"]
    runs = {name: ["tools/train_net.py", "--config", str(tmp_path / "c.yaml"), *common, "OUTPUT_DIR",
                   str(tmp_path / name)] for name in ("whole", "killed")}
    ok(launch(runs["whole"]))
    tag = kill_at_a_random_step(runs["killed"], tmp_path / "killed", 1, np.random.default_rng(0),
                                tmp_path / "killed.log", [(0, 2), (0, 4), (1, 0), (1, 2)])
    resumed = ok(launch([*runs["killed"], "--resume", "auto"]))
    epoch, batch = position(tag)
    assert f"resumed from epoch {epoch}, batch {batch}" in resumed.stderr
    assert_same_run(tmp_path / "killed", tmp_path / "whole")
    assert "loss/crd" in records(str(tmp_path / "whole"))[0]


def test_a_method_owned_prompt_inside_a_frozen_teacher_learns_and_the_teacher_does_not(tmp_path):
    """`run_teacher(k, x, learn=True)`: a prompt the method owns, added to a teacher stage's input by a hook,
    gets a gradient and trains; the teacher's weights get none and do not move; the prompt is the distiller's
    (its state dict, what DeepSpeed and checkpoints see), not the teacher's."""
    from vidkd.distill.kd import KD

    class Prompted(KD):
        def __init__(self, *args):
            super().__init__(*args)
            self.prompt = torch.nn.Parameter(torch.zeros(1, 16, 1, 1))  # added to the input of stage 2
            stage = self.teachers[0].get_submodule(self.teachers[0].stage_names[1])
            stage.register_forward_pre_hook(lambda module, args: (args[0] + self.prompt,))

        def forward(self, batch):
            z_prompted = self.run_teacher(0, batch["input"], learn=True)[0]
            return z_prompted, {"ce": self.ce(z_prompted, batch["targets"])}

    cfg = load_config(None, ["TASK", "image", "DISTILL.METHOD", "kd", "DATA.TRAIN_CROP_SIZE", "32"])
    torch.manual_seed(0)
    teacher = build_image_model("resnet_mini", 4, 32)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = Prompted(build_image_model("resnet_mini", 4, 32), [teacher], {"label": 4}, cfg)
    batch = {"input": torch.randn(4, 3, 32, 32), "targets": {"label": torch.tensor([0, 1, 2, 3])}}
    optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        _, losses = distiller(batch)
        optimizer.zero_grad()
        losses["ce"].backward()
        assert distiller.prompt.grad is not None and distiller.prompt.grad.abs().sum() > 0
        optimizer.step()
    assert distiller.prompt.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert "prompt" in distiller.state_dict() and not any(k.startswith("teachers") for k in distiller.state_dict())


def test_teacher_targets_of_image_views_come_from_the_cache_as_computed_live(tmp_path):
    from vidkd.data.video_dataset import collate
    from vidkd.engine import teacher_cache
    from vidkd.engine.trainer import build_models

    image_folder(tmp_path / "train")
    (tmp_path / "m").mkdir()
    parse_image_folder(str(tmp_path / "train"), "folder", "train").save(str(tmp_path / "m" / "train.json"))
    cfg = image_config(tmp_path, tmp_path / "m", "kd", "MODEL.TEACHERS", "[deit_mini, deit_mini]", "MODEL.STUDENT",
                       "resnet_mini", "DATA.TRAIN_PAD", "2", "DISTILL.CACHE", "auto", "DISTILL.CACHE_VIEWS", "2",
                       "DISTILL.CACHE_DIR", str(tmp_path / "cache"))
    from vidkd.data.loader import build_dataset

    torch.manual_seed(0)
    data = build_dataset(cfg, True, cache_views=teacher_cache.views(cfg))
    distiller = build_distiller(cfg, *build_models(cfg, {"label": 2}), {"label": 2})
    cache = teacher_cache.prepare(cfg, distiller, data, torch.device("cpu"), 0, 1)
    data.teacher_cache = cache
    batch = collate([data.view_item(i, v) for i, v in [(0, 0), (3, 1), (11, 1)]])
    assert batch["input"].shape == (3, 3, 32, 32)
    with torch.no_grad():
        live = distiller.teacher_targets(batch["input"])["logits"]
    torch.testing.assert_close(batch["teacher"]["logits"].float(), live, rtol=2e-3, atol=2e-3)
    spec = teacher_cache.cache_spec(cfg, data.manifest, torch.device("cpu"))["views"]
    assert spec["task"] == "image" and spec["TRAIN_PAD"] == 2


def test_the_frame_level_path_reads_one_random_frame_per_video_and_k_evenly_spaced_frames_in_testing(dataset):
    """TASK image on a video manifest: a training item is one frame of its video, [3, H, W]; testing gives
    TEST.NUM_CLIPS frames of each video, evenly spaced (the synthetic test videos' frame i has brightness 5 i)."""
    cfg = load_config(None, ["TASK", "image", "DATA.MANIFEST_DIR", str(dataset / "manifests"), "DATA.TRAIN_CROP_SIZE",
                             "32", "DATA.TEST_SHORT_SIDE", "32", "DATA.TEST_CROP_SIZE", "32", "DATA.NUM_WORKERS", "0",
                             "TEST.NUM_CLIPS", "3", "TEST.NUM_CROPS", "1", "DATA.MEAN", "[0.0, 0.0, 0.0]",
                             "DATA.STD", "[1.0, 1.0, 1.0]"])
    from vidkd.data.loader import build_dataset

    train, test = build_dataset(cfg, True), build_dataset(cfg, False)
    item = train[(0, 0)]
    assert item["input"].shape == (3, 32, 32)
    assert len(test) == 3 * len(test.manifest.samples)
    means = [float(test[v]["input"].mean()) * 255 for v in range(3)]
    assert means[0] < means[1] < means[2]  # later frames are brighter: first, middle, last of the video



def test_ofa_exits_follow_each_stages_layout_token_stages_merging_to_a_small_grid():
    """A ViT student's token stages get transformer exits whose patch merging stops at a grid side of 7 or less
    (DeiT at 224: 14 -> 7; a 15 x 15 grid pads to 16 -> 8 -> 4); a CNN student's maps get conv exits."""
    from vidkd.distill.ofa import TokenExit

    def exits(student, crop):
        cfg = load_config(None, ["TASK", "image", "DISTILL.METHOD", "ofa", "DATA.TRAIN_CROP_SIZE", str(crop),
                                 "MODEL.TEACHERS", "[resnet_mini]"])
        return build_distiller(cfg, build_image_model(student, 4, crop), [build_image_model("resnet_mini", 4, crop)],
                               {"label": 4}).exits

    vit = exits("deit_mini", 56)  # patch 4: a 14 x 14 grid of width 64
    assert all(isinstance(e, TokenExit) for e in vit)
    assert [len(e.merge) for e in vit] == [1] * 4 and [len(e.blocks) for e in vit] == [3, 3, 2, 1]
    assert vit[0].fc.in_features == 128
    odd = TokenExit(8, (15, 15), 1, 4)
    assert len(odd.merge) == 2 and odd(torch.randn(2, 8, 15, 15)).shape == (2, 4)
    small = TokenExit(8, (2, 7, 7), 1, 4)  # a video ViT's grid (T', H', W'), already small
    assert len(small.merge) == 0 and small(torch.randn(2, 8, 2, 7, 7)).shape == (2, 4)
    cnn = exits("resnet_mini", 32)
    assert not any(isinstance(e, TokenExit) for e in cnn)
    assert [sum(isinstance(m, torch.nn.Conv2d) for m in e.modules()) for e in cnn] == [6, 4, 2, 0]
