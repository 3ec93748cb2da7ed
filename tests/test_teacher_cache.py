"""The teacher-output cache: same losses as live teachers on the same views, keyed by everything it depends
on, filled by a real process that is killed and resumed, and used by tools/train_net.py."""
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from conftest import REPO, TIMEOUT, clean_env, command, launch, ok, records, write_config

from vidkd.config import load_config
from vidkd.data.loader import build_dataset, build_loader
from vidkd.data.video_dataset import collate
from vidkd.distill.build import build_distiller
from vidkd.engine import teacher_cache
from vidkd.engine.trainer import build_models
from vidkd.errors import ConfigError

MODELS = {"STUDENT": "c3d_tiny", "TEACHERS": ["videomae_vit_ti", "c3d_small"]}


def cache_config(tmp_path, dataset, method="dual_teacher", *overrides):
    path = write_config(tmp_path / "cache.yaml", dataset, tmp_path / "run", method, MODEL=MODELS,
                        DISTILL={"CACHE": "auto", "CACHE_VIEWS": 2, "CACHE_DIR": str(tmp_path / "cache"),
                                 "RKD_WEIGHT": 1.0})
    return path, load_config(path, list(overrides))


CPU = torch.device("cpu")


def read_all(cache, samples, views):
    """`{name: fp32 [len(samples), ...]}` of the stored targets of the slots (samples[i], views[i])."""
    rows = [cache.read(s, v) for s, v in zip(samples, views)]
    return {name: torch.stack([r[name] for r in rows]).float() for name in cache.names}


def key(cfg, manifest, device=CPU):
    return teacher_cache.cache_folder(cfg, teacher_cache.cache_spec(cfg, manifest, device))


def distiller_and_data(cfg):
    torch.manual_seed(0)
    dataset = build_dataset(cfg, train=True)
    heads = {h: len(n) for h, n in dataset.manifest.label_sets.items()}
    return build_distiller(cfg, *build_models(cfg, heads), heads), dataset


@pytest.mark.parametrize("method", ["dual_teacher", "kd", "fitnet"])
def test_training_from_the_cache_gives_the_live_losses_on_the_same_views(dataset, tmp_path, method):
    _, cfg = cache_config(tmp_path, dataset, method)
    distiller, data = distiller_and_data(cfg)
    cache = teacher_cache.prepare(cfg, distiller, data, torch.device("cpu"), 0, 1)
    assert os.path.isfile(os.path.join(cache.folder, "meta.json")) and not os.path.exists(cache.folder + ".partial")
    distiller.train()
    data.teacher_cache = cache  # what the engine does: items carry their stored targets
    batch = collate([data.view_item(i, v) for i, v in [(0, 0), (3, 1), (7, 1), (15, 0)]])
    assert batch["sample"].tolist() == [0, 3, 7, 15] and batch["view"].tolist() == [0, 1, 1, 0]
    live_in = {"video": batch["video"], "targets": batch["targets"]}
    assert all(t.dtype == torch.float16 for t in batch["teacher"].values())
    stored = {name: t.float() for name, t in batch["teacher"].items()}
    with torch.no_grad():
        live = distiller.teacher_targets(batch["video"])
        assert stored.keys() == live.keys()
        for name in live:  # fp16 storage: within its rounding
            assert torch.allclose(stored[name], live[name], rtol=2e-3, atol=2e-3), name
        torch.manual_seed(1)  # the same dropout in both student forwards
        _, from_live = distiller(live_in)
        torch.manual_seed(1)
        _, from_cache = distiller({**live_in, "teacher": stored})
    assert from_live.keys() == from_cache.keys()
    for name in from_live:
        assert torch.isclose(from_cache[name], from_live[name], rtol=1e-2, atol=1e-4), (name, from_cache, from_live)


def test_the_key_changes_with_what_the_outputs_depend_on(dataset, tmp_path):
    path, cfg = cache_config(tmp_path, dataset)
    manifest = build_dataset(cfg, train=True).manifest
    base = key(cfg, manifest)
    ckpt = tmp_path / "teacher.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, ckpt)
    changed = {"a view": ["DATA.TRAIN_CROP_SCALE", "[0.5, 1.0]"], "the views": ["DISTILL.CACHE_VIEWS", "3"],
               "the targets": ["DISTILL.SDD_DIM", "64"], "the teacher": ["MODEL.TEACHERS", "[videomae_vit_s, c3d_small]"],
               "a checkpoint": ["MODEL.TEACHER_CHECKPOINTS", f"[{ckpt}, '']"]}  # last: used below
    for what, overrides in changed.items():
        other = load_config(path, overrides)
        assert key(other, manifest) != base, what
    before = key(other, manifest)
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")  # the same file name with other bytes
    assert key(other, manifest) != before
    same = load_config(path, ["DISTILL.TEMPERATURE", "2.0", "DISTILL.LOGIT_WEIGHT", "0.5", "TRAIN.EPOCHS", "9",
                              "DEEPSPEED.PRECISION", "fp32"])
    assert key(same, manifest) == base  # losses, and what DeepSpeed trains in (the targets are the same: below)
    # Teacher autocast changes the outputs where it applies (a GPU), not on the CPU, where it is a no-op.
    no_autocast = load_config(path, ["MODEL.TEACHER_AUTOCAST", "False"])
    assert key(no_autocast, manifest) == base
    gpu = torch.device("cuda")  # only its type is read: no GPU needed
    assert key(no_autocast, manifest, gpu) != key(cfg, manifest, gpu) and key(no_autocast, manifest, gpu) == base


def test_loader_workers_read_the_targets_with_the_clips(dataset, tmp_path):
    """The cache goes to the loader's worker processes with the dataset (each maps the shards itself): every
    training item of an epoch carries the stored targets of its own (video, view) slot, in fp16."""
    _, cfg = cache_config(tmp_path, dataset, "kd", "DATA.NUM_WORKERS", "2")
    distiller, data = distiller_and_data(cfg)
    cache = teacher_cache.prepare(cfg, distiller, data, CPU, 0, 1)
    loader = build_loader(cfg, True)
    loader.dataset.teacher_cache = cache
    loader.set_epoch(0)
    seen, reference = 0, teacher_cache.TeacherCache(cache.folder)
    for batch in loader:
        expected = read_all(reference, batch["sample"].tolist(), batch["view"].tolist())
        assert batch["teacher"].keys() == expected.keys() == {"logits"}
        assert batch["teacher"]["logits"].dtype == torch.float16
        assert torch.equal(batch["teacher"]["logits"].float(), expected["logits"])
        seen += len(batch["sample"])
    assert seen == 16 and cache._arrays is None  # read in the workers only, never mapped in this process


def test_a_run_on_the_cache_never_runs_its_teachers(dataset, tmp_path):
    _, cfg = cache_config(tmp_path, dataset, "kd")
    distiller, data = distiller_and_data(cfg)
    distiller.cached = True  # as the engine sets it
    batch = collate([data.view_item(0, 0), data.view_item(1, 1)])
    with pytest.raises(RuntimeError, match="carries no teacher outputs"):
        distiller({"video": batch["video"], "targets": batch["targets"]})


def test_require_without_a_cache_and_learned_phi_are_refused(dataset, tmp_path):
    _, cfg = cache_config(tmp_path, dataset, "dual_teacher", "DISTILL.CACHE", "require")
    distiller, data = distiller_and_data(cfg)
    with pytest.raises(ConfigError, match="DISTILL.CACHE require: no teacher cache for this config"):
        teacher_cache.prepare(cfg, distiller, data, CPU, 0, 1)
    _, learned = cache_config(tmp_path, dataset, "dual_teacher", "DISTILL.SDD_PHI", "learned")
    with pytest.raises(ConfigError, match="DISTILL.CACHE: with DISTILL.SDD_PHI learned"):
        distiller_and_data(learned)


def test_a_killed_fill_resumes_and_training_reads_the_cache(dataset, tmp_path):
    path, cfg = cache_config(tmp_path, dataset, "dual_teacher", "DISTILL.CACHE_VIEWS", "4", "TEST.BATCH_SIZE", "2")
    args = ["tools/cache_teachers.py", "--config", path, "DISTILL.CACHE_VIEWS", "4", "TEST.BATCH_SIZE", "2"]
    with open(tmp_path / "fill.log", "w") as f:
        proc = subprocess.Popen(command(args), cwd=REPO, env=clean_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    folder = key(cfg, build_dataset(cfg, True).manifest)
    marks, deadline = os.path.join(folder + ".partial", "filled.shard0.npy"), time.time() + TIMEOUT
    while not (os.path.isfile(marks) and np.load(marks).sum() >= 10):
        assert proc.poll() is None and time.time() < deadline, open(tmp_path / "fill.log").read()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(folder) and np.load(marks).sum() < 16 * 4  # killed half-way
    resumed = ok(launch(args))
    assert "resuming the fill" in resumed.stderr and f"teacher cache: {folder} (16 videos x 4 views" in resumed.stdout
    filled = teacher_cache.TeacherCache(folder)
    os.rename(folder, folder + ".resumed")
    ok(launch(args))  # a fresh fill: the same numbers
    fresh = teacher_cache.TeacherCache(folder)
    slots = torch.arange(16).repeat_interleave(4).tolist(), torch.arange(4).repeat(16).tolist()
    fresh, filled = read_all(fresh, *slots), read_all(filled, *slots)
    for name in fresh:
        assert torch.equal(fresh[name], filled[name]), name
    trained = ok(launch(["tools/train_net.py", "--config", path, "DISTILL.CACHE_VIEWS", "4",
                         "DISTILL.CACHE", "require", "TRAIN.EPOCHS", "1"]))
    assert f"teacher outputs from the cache {folder}" in trained.stderr


def test_two_ranks_fill_their_own_shards_with_the_one_process_numbers(dataset, tmp_path):
    path, cfg = cache_config(tmp_path, dataset)
    two = ok(launch(["tools/cache_teachers.py", "--config", path, "DISTILL.CACHE_DIR", str(tmp_path / "two")],
                    ranks=2))
    assert two.stdout.count("teacher cache: ") == 1  # rank 0 reports
    ok(launch(["tools/cache_teachers.py", "--config", path, "DISTILL.CACHE_DIR", str(tmp_path / "one")]))
    (a,), (b,) = (list((tmp_path / d).iterdir()) for d in ("two", "one"))
    assert a.name == b.name  # the key does not depend on the number of ranks
    two, one = teacher_cache.TeacherCache(str(a)), teacher_cache.TeacherCache(str(b))
    assert (two.world, one.world) == (2, 1)
    assert sorted(os.listdir(a)) == sorted(["meta.json"] + [f"{n}.shard{r}.npy" for n in two.names + ["filled"]
                                                              for r in (0, 1)])
    samples, views = torch.arange(16).repeat_interleave(2).tolist(), torch.arange(2).repeat(16).tolist()
    x, y = read_all(two, samples, views), read_all(one, samples, views)
    for name in x:  # other batches, other float rounding: within fp16's
        assert torch.allclose(x[name], y[name], rtol=1e-2, atol=1e-2), name
    trained = ok(launch(["tools/train_net.py", "--config", path, "DISTILL.CACHE", "require", "DISTILL.CACHE_DIR",
                         str(tmp_path / "two"), "TRAIN.EPOCHS", "1"], ranks=2))
    assert f"teacher outputs from the cache {a}" in trained.stderr
    (record,) = records(tmp_path / "run")
    assert record["epoch"] == 1 and record["skipped_steps"] == 0
    assert all(np.isfinite(record[f"loss/{k}"]) for k in ("ce", "datw", "sdd_main", "sdd_aux", "rkd"))
