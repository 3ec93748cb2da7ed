"""TASK face through the engine: face models trained with the method's margin head, verification of the held-out
identities' pairs in training and in tools/test_net.py (the test split's pair list, an insightface `.bin` and an LFW
`pairs.txt` of the same images), embeddings on several ranks equal to one, and errors naming the file or key."""
import json
import os
import pickle
import shutil
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import face_config, launch, ok, records

from vidkd.config import load_config
from vidkd.data.datasets.faces import read_pair_list
from vidkd.data.loader import build_loader
from vidkd.distill.build import build_distiller
from vidkd.engine.verification import embed, pair_indices, split_pairs, verify
from vidkd.errors import AnnotationError, ConfigError
from vidkd.models import build_from_config


def test_train_net_and_test_net_verify_a_face_model(face_data, tmp_path):
    """The student alone (the margin head's loss) trains, the verification metrics are logged and the ROC drawn;
    test_net on the exported student gives the training run's last metrics, and on a `.bin` holding the same pairs
    (the same PNG bytes) exactly the same; an LFW pairs.txt of those images gives `verify` on the split's embeddings
    in its own order and folds."""
    out = tmp_path / "run"
    (tmp_path / "face.yaml").write_text("TASK: face\n")
    args = ["--config", str(tmp_path / "face.yaml"),
            *face_config(face_data, out, "ce", **{"TRAIN.EPOCHS": 3, "FACE.MARGIN": "cosface"})]
    ok(launch(["tools/train_net.py", *args]))
    history = records(str(out))
    assert history[-1]["loss/total"] < history[0]["loss/total"]
    last = history[-1]
    assert 0 <= last["test/accuracy"] <= 100 and last["test/num_pairs"] == 90 and last["test/num_missing"] == 0
    assert last["test/lowest_fpr"] == pytest.approx(1 / 45)
    assert np.isnan(last["test/tpr@fpr=1e-04"])  # 45 different pairs cannot measure an FPR of 1e-4
    assert (out / "roc.png").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0
    state = torch.load(out / "student.pt", map_location="cpu", weights_only=True)["model"]
    assert not any("margin" in k for k in state)  # the student alone: its embedding

    # the same pairs as a .bin (image 2k and 2k + 1 a pair) and as an LFW pairs.txt (5 folds of 9 + 9)
    pairs = read_pair_list(str(face_data / "manifests" / "pairs.csv"), str(face_data / "faces"))
    blob = [open(p, "rb").read() for a, b, _ in pairs for p in (a, b)]
    with open(tmp_path / "same.bin", "wb") as f:
        pickle.dump((blob, [s for *_, s in pairs]), f, protocol=2)
    lfw = tmp_path / "lfw"
    names = {}
    for path in sorted({p for a, b, _ in pairs for p in (a, b)}):
        person = os.path.basename(os.path.dirname(path))
        names[path] = (person, len([n for n in names.values() if n[0] == person]) + 1)
        (lfw / person).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, lfw / person / f"{person}_{names[path][1]:04d}.jpg")  # PNG bytes: decoded by content
    same = [(a, b) for a, b, s in pairs if s][:45]
    different = [(a, b) for a, b, s in pairs if not s][:45]
    lines, ordered = ["5 9"], []
    for fold in range(5):
        for a, b in same[9 * fold: 9 * fold + 9]:
            lines.append(f"{names[a][0]} {names[a][1]} {names[b][1]}")
            ordered.append((a, b, True))
        for a, b in different[9 * fold: 9 * fold + 9]:
            lines.append(f"{names[a][0]} {names[a][1]} {names[b][0]} {names[b][1]}")
            ordered.append((a, b, False))
    (lfw / "pairs.txt").write_text("\n".join(lines) + "\n")
    tested = tmp_path / "tested"
    ok(launch(["tools/test_net.py", "--checkpoint", str(out / "student.pt"), *args, "OUTPUT_DIR",
               str(tested), "FACE.VERIFICATION_SETS", f"['{tmp_path / 'same.bin'}', '{lfw / 'pairs.txt'}']"]))
    sets = json.loads((tested / "test_metrics.json").read_text())["sets"]
    assert list(sets) == ["test", "same.bin", "lfw"]
    for key in ("accuracy", "accuracy_std", "tpr@lowest_fpr", "num_pairs"):
        assert sets["test"][key] == pytest.approx(last[f"test/{key}"])
        assert sets["same.bin"][key] == pytest.approx(sets["test"][key])  # the same images and pairs, another path
    assert (tested / "roc.png").stat().st_size > 0

    cfg = load_config(None, args[2:])
    model = build_from_config(cfg, "iresnet_tiny", 0, "TEST_CROP_SIZE")
    model.load_state_dict(state)
    loader = build_loader(cfg, False)
    embeddings, missing = embed(model, loader, torch.device("cpu"), flip=True, show=False)
    paths = [loader.dataset.manifest.abspath(r) for r in loader.dataset.manifest.samples]
    expected, _, _ = verify(embeddings, missing, pair_indices(ordered, paths), 5, [1e-4])
    assert sets["lfw"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert sets["lfw"]["tpr@lowest_fpr"] == pytest.approx(expected["tpr@lowest_fpr"])
    assert sets["lfw"]["num_pairs"] == 90


def _embed_worker(rank, world, port, data_root, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = load_config(None, face_config(data_root, out_dir, "ce", **{"TEST.BATCH_SIZE": 2}))
        torch.manual_seed(0)
        model = build_from_config(cfg, "iresnet_tiny", 0)
        embeddings, missing = embed(model, build_loader(cfg, False, rank, world), torch.device("cpu"), True, show=False)
        torch.save({"embeddings": embeddings, "missing": missing}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_embeddings_on_four_ranks_equal_one(face_data, tmp_path):
    """18 test images on 4 ranks: the sampler pads two ranks with images another rank embeds too; each image's
    embedding is the one-process embedding (a view embedded twice counts once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_embed_worker, args=(4, port, face_data, str(tmp_path)), nprocs=4, join=True)
    cfg = load_config(None, face_config(face_data, tmp_path, "ce"))
    torch.manual_seed(0)
    model = build_from_config(cfg, "iresnet_tiny", 0)
    expected, missing = embed(model, build_loader(cfg, False), torch.device("cpu"), True, show=False)
    assert len(expected) == 18 and not missing.any()
    assert torch.allclose(expected.norm(dim=1), torch.ones(18, dtype=torch.float64))
    for rank in range(4):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(got["embeddings"], expected, atol=1e-6) and not got["missing"].any()


def test_flip_sums_the_mirror_images_embedding(face_data, tmp_path):
    cfg = load_config(None, face_config(face_data, tmp_path, "ce"))
    model = build_from_config(cfg, "iresnet_tiny", 0).eval()
    loader = build_loader(cfg, False)
    flipped, _ = embed(model, loader, torch.device("cpu"), flip=True, show=False)
    plain, _ = embed(model, loader, torch.device("cpu"), flip=False, show=False)
    loader.set_epoch(0)
    batch = next(iter(loader))
    with torch.no_grad():
        x = batch["input"]
        by_hand = torch.nn.functional.normalize(model(x) + model(x.flip(-1)), dim=1).double()
        alone = torch.nn.functional.normalize(model(x), dim=1).double()
    assert torch.allclose(flipped[batch["index"]], by_hand, atol=1e-6)
    assert torch.allclose(plain[batch["index"]], alone, atol=1e-6)
    assert not torch.allclose(flipped, plain)


def test_the_margin_head_is_the_methods_and_the_identities_its_classes(face_data, tmp_path):
    cfg = load_config(None, face_config(face_data, tmp_path, "ce", **{"FACE.MARGIN": "sphereface2"}))
    student = build_from_config(cfg, "iresnet_tiny", 0)
    distiller = build_distiller(cfg, student, [], {"label": 5})
    assert distiller.margin.weight.shape == (5, 64) and type(distiller.margin).__name__ == "SphereFace2"
    assert distiller.student_state_dict().keys() == student.state_dict().keys()
    e, y = torch.randn(4, 64), torch.tensor([0, 1, 2, 4])
    assert distiller.ce(e, {"label": y}) == distiller.margin(e, y)[0]


def test_a_classification_method_is_refused_for_faces(face_data, tmp_path):
    cfg = load_config(None, face_config(face_data, tmp_path, "kd"))
    face_methods = "cafd, ce, embedding, fitnet, iled_rpsd, rkd"
    with pytest.raises(ConfigError, match=f"DISTILL.METHOD: kd trains TASK video or image.*for face: {face_methods}$"):
        build_distiller(cfg, build_from_config(cfg, "iresnet_tiny", 0), [], {"label": 5})


def test_pair_list_errors_name_the_key_or_the_file(face_data, tmp_path):
    cfg = load_config(None, face_config(face_data, tmp_path, "ce", **{"FACE.PAIRS": "nope.csv"}))
    manifest = build_loader(cfg, False).dataset.manifest
    with pytest.raises(ConfigError, match="config key FACE.PAIRS: .*nope.csv not found"):
        split_pairs(cfg, manifest)
    manifests = tmp_path / "m"
    shutil.copytree(face_data / "manifests", manifests)
    rows = (manifests / "pairs.csv").read_text().splitlines()
    first = rows[1].split(",")[0]  # an image of the split, then one of nobody's
    (manifests / "pairs.csv").write_text("\n".join(rows[:3] + [f"{first},p9/0.png,0"]) + "\n")
    cfg = load_config(None, face_config(face_data, tmp_path, "ce", **{"DATA.MANIFEST_DIR": manifests}))
    with pytest.raises(AnnotationError, match=r"pairs.csv.*p9/0.png: in the pair list but not among the split's 18"):
        split_pairs(cfg, manifest)


def test_a_pairs_txt_with_a_missing_image_is_refused_naming_it(tmp_path):
    from vidkd.data.datasets.faces import verification_set

    (tmp_path / "a").mkdir()
    (tmp_path / "pairs.txt").write_text("1 1\na 1 2\na 1 b 1\n")
    with pytest.raises(AnnotationError, match=r"pairs.txt.*a/a_0001.jpg of its pairs not found"):
        verification_set(str(tmp_path / "pairs.txt"), str(tmp_path / "out"))
