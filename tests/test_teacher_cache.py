"""The teacher-output cache: same losses as live teachers on the same views, keyed by everything it depends
on, filled by real processes that are killed (on 1, then 2, then 1 ranks) and resumed, healed from the files a
kill cuts short and from damage its checksums find, and used by tools/train_net.py."""
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace

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
    dataset = build_dataset(cfg, train=True, cache_views=teacher_cache.views(cfg))
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
    live_in = {"input": batch["input"], "targets": batch["targets"]}
    assert all(t.dtype == torch.float16 for t in batch["teacher"].values())
    stored = {name: t.float() for name, t in batch["teacher"].items()}
    with torch.no_grad():
        live = distiller.teacher_targets(batch["input"])
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
    loader = build_loader(cfg, True, cache_views=teacher_cache.views(cfg))
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
        distiller({"input": batch["input"], "targets": batch["targets"]})


def test_require_without_a_cache_and_learned_phi_are_refused(dataset, tmp_path):
    _, cfg = cache_config(tmp_path, dataset, "dual_teacher", "DISTILL.CACHE", "require")
    distiller, data = distiller_and_data(cfg)
    with pytest.raises(ConfigError, match="DISTILL.CACHE require: no teacher cache for this config"):
        teacher_cache.prepare(cfg, distiller, data, CPU, 0, 1)
    _, learned = cache_config(tmp_path, dataset, "dual_teacher", "DISTILL.SDD_PHI", "learned")
    with pytest.raises(ConfigError, match="DISTILL.CACHE: with DISTILL.SDD_PHI learned"):
        distiller_and_data(learned)


# ----------------------------------------------------------------------------------------------- healing
# Fills one clip at a time: whichever clips a fill computes, and on however many ranks, each clip's targets are
# the same bits. The tests below fill the dual teacher's cache of 16 videos x 1 view.
ONE_AT_A_TIME = ["TEST.BATCH_SIZE", "1"]
HEALED = ONE_AT_A_TIME + ["DISTILL.CACHE_VIEWS", "1"]
SLOTS = list(range(16)), [0] * 16


@pytest.fixture(scope="module")
def filled(dataset, tmp_path_factory):
    """A complete cache, filled once for the tests below (each damages its own copy), with what refills it and
    every row it holds."""
    tmp = tmp_path_factory.mktemp("filled")
    path, cfg = cache_config(tmp, dataset, "dual_teacher", *HEALED)
    distiller, data = distiller_and_data(cfg)
    cache = teacher_cache.prepare(cfg, distiller, data, CPU, 0, 1)
    return SimpleNamespace(path=path, distiller=distiller, data=data, folder=cache.folder,
                           rows=read_all(cache, *SLOTS))


def config_in(filled, tmp_path, mode="auto"):
    """The filled cache's config with DISTILL.CACHE `mode` and its cache in tmp_path."""
    return load_config(filled.path, HEALED + ["DISTILL.CACHE_DIR", str(tmp_path / "cache"), "DISTILL.CACHE", mode])


def copy_of(filled, tmp_path):
    """A copy of the filled cache, where `config_in(filled, tmp_path)` finds it."""
    folder = str(tmp_path / "cache" / os.path.basename(filled.folder))
    shutil.copytree(filled.folder, folder)
    return folder


def prepare_and_compare(filled, cfg, folder):
    """Open (heal) the cache of `cfg` at `folder`: it is complete, intact, and holds the filled cache's rows."""
    cache = teacher_cache.prepare(cfg, filled.distiller, filled.data, CPU, 0, 1)
    assert cache.folder == folder and not os.path.exists(folder + ".partial")
    assert teacher_cache.damage(folder) is None
    rows = read_all(cache, *SLOTS)
    assert rows.keys() == filled.rows.keys() == {"z_v", "z_c", "r_c", "r_res", "e_v"}
    for name in rows:
        assert torch.equal(rows[name], filled.rows[name]), name


def cut(path, how):
    """Cut an .npy file as a kill while it was created or written can leave it."""
    data = Path(path).read_bytes()
    header = len(data) - np.load(path, mmap_mode="r").nbytes
    Path(path).write_bytes({"empty": b"", "header only": data[:header], "short": data[:-100]}[how])


def as_killed(folder):
    """Turn a complete cache back into the partial fill that a kill just before its end leaves: every row
    computed and marked, no meta.json yet."""
    os.remove(os.path.join(folder, "meta.json"))
    os.rename(folder, folder + ".partial")
    return folder + ".partial"


@pytest.mark.parametrize("file, how", [("z_v.shard0.npy", "empty"), ("r_c.shard0.npy", "header only"),
                                       ("filled.shard0.npy", "short")])
def test_a_file_a_kill_cut_short_is_discarded_with_its_marks_and_its_rows_computed_again(filled, tmp_path, caplog,
                                                                                        file, how):
    """The states a kill while a shard (or the marks) was created leaves, kept with every row marked filled
    (which a kill cannot leave, so that using any mark would show): the rank's shards and marks are discarded."""
    folder = copy_of(filled, tmp_path)
    cut(os.path.join(as_killed(folder), file), how)
    caplog.set_level(logging.INFO, "vidkd.engine")
    prepare_and_compare(filled, config_in(filled, tmp_path), folder)
    assert f"{os.path.join(folder + '.partial', file)} is cut short or unreadable" in caplog.text
    assert "resuming the fill" not in caplog.text


def test_a_resumed_fill_computes_the_rows_not_marked_and_only_those(filled, tmp_path, caplog):
    """The state a kill mid-way leaves (simulated): rows past the last mark computed but not marked, or not yet
    computed at all (garbage here, which must not survive)."""
    folder = copy_of(filled, tmp_path)
    partial = as_killed(folder)
    marks = np.load(os.path.join(partial, "filled.shard0.npy"))
    marks[10:] = False
    np.save(os.path.join(partial, "filled.shard0.npy"), marks)
    for name in filled.rows:
        shard = np.load(os.path.join(partial, f"{name}.shard0.npy"), mmap_mode="r+")
        shard[10:] = 7.0
        shard.flush()
    caplog.set_level(logging.INFO, "vidkd.engine")
    prepare_and_compare(filled, config_in(filled, tmp_path), folder)
    assert "resuming the fill, 10 of 16 views of this rank already stored" in caplog.text


def swap_two_rows(path):
    """Plausible garbage: two rows of a shard exchanged, the file still a valid .npy of the right shape."""
    shard = np.load(path, mmap_mode="r+")
    shard[[3, 5]] = shard[[5, 3]]
    shard.flush()


DAMAGES = {"meta.json": os.remove, "z_c.shard0.npy": swap_two_rows,
           "r_res.shard0.npy": lambda path: cut(path, "short")}


@pytest.mark.parametrize("file", DAMAGES)
def test_a_damaged_cache_is_refused_under_require_and_rebuilt_under_auto(filled, tmp_path, caplog, file):
    """A deleted meta.json, two rows exchanged in a shard, a shard cut short: found by the checksums when the
    cache is opened, before any row is read."""
    folder = copy_of(filled, tmp_path)
    damaged = os.path.join(folder, file)
    DAMAGES[file](damaged)
    message = "is missing or unreadable" if file == "meta.json" else "does not match its SHA-256 in"
    with pytest.raises(ConfigError, match=re.escape(f"DISTILL.CACHE require: the teacher cache for this config is "
                                                    f"damaged: {damaged} {message}") + ".*tools/cache_teachers.py"):
        teacher_cache.prepare(config_in(filled, tmp_path, "require"), filled.distiller, filled.data, CPU, 0, 1)
    caplog.set_level(logging.WARNING, "vidkd.engine")
    prepare_and_compare(filled, config_in(filled, tmp_path), folder)
    assert f"{damaged} {message}" in caplog.text and f"deleting {folder} and building it again" in caplog.text


def marked(partial, world):
    """Views marked filled in `partial` if it is laid out for `world` ranks, else 0."""
    try:
        with open(os.path.join(partial, "layout.json")) as f:
            if json.load(f) != {"world": world}:
                return 0
        return sum(int(np.load(os.path.join(partial, f"filled.shard{r}.npy")).sum()) for r in range(world))
    except (OSError, ValueError):
        return 0


def kill_when_marked(args, ranks, partial, count, log):
    """Run `args` on `ranks` ranks and SIGKILL the lot (launcher and ranks) once its fill has marked `count`
    views; returns the run's output. A real kill, at whatever point of the fill it lands."""
    with open(log, "w") as f:
        proc = subprocess.Popen(command(args, ranks), cwd=REPO, env=clean_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + TIMEOUT
        while marked(partial, ranks) < count:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
    finally:
        with suppress(ProcessLookupError):  # all gone already (a failed run)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return log.read_text()


def test_a_fill_killed_on_1_then_2_then_1_ranks_gives_the_rows_of_a_fresh_fill(dataset, tmp_path):
    """Fills killed on 1 rank, then on 2 (the partial fill of 1 rank discarded: its layout is not theirs), then
    on 1 (the 2 ranks' discarded), then resumed on 1 rank to its end: every row is the bits of a fresh fill
    on 2 ranks, which tools/train_net.py then trains from on 2 ranks."""
    more = ["DISTILL.CACHE_VIEWS", "4", *ONE_AT_A_TIME]
    path, cfg = cache_config(tmp_path, dataset, "dual_teacher", *more)
    args = ["tools/cache_teachers.py", "--config", path, *more]
    folder = key(cfg, build_dataset(cfg, True).manifest)
    partial = folder + ".partial"
    logs = [kill_when_marked(args, ranks, partial, 8, tmp_path / f"fill{i}.log") for i, ranks in enumerate([1, 2, 1])]
    assert not os.path.exists(folder) and marked(partial, 1) < 16 * 4  # killed half-way
    assert f"discarding the partial fill {partial}, laid out for 1 ranks: filling it again on 2" in logs[1]
    assert f"discarding the partial fill {partial}, laid out for 2 ranks: filling it again on 1" in logs[2]
    resumed = ok(launch(args))
    assert "resuming the fill" in resumed.stderr and "discarding" not in resumed.stderr
    assert f"teacher cache: {folder} (16 videos x 4 views" in resumed.stdout
    runs = tmp_path / "runs.json"
    fresh = ["DISTILL.CACHE_DIR", str(tmp_path / "fresh")]
    runs.write_text(json.dumps([["cache_teachers", "--config", path, *more, *fresh],
                                ["train_net", "--config", path, *more, *fresh, "DISTILL.CACHE", "require",
                                 "TRAIN.EPOCHS", "1"]]))
    two = ok(launch(["tools/run_many.py", str(runs)], ranks=2))
    (other,) = (tmp_path / "fresh").iterdir()
    assert other.name == os.path.basename(folder)  # the key does not depend on the number of ranks
    assert two.stdout.count("teacher cache: ") == 1 and f"teacher outputs from the cache {other}" in two.stderr
    assert sorted(os.listdir(other)) == sorted(["meta.json", "layout.json"] + [
        f"{n}.shard{r}.npy" for n in ["filled", "z_v", "z_c", "r_c", "r_res", "e_v"] for r in (0, 1)])
    one, two_ranks = teacher_cache.TeacherCache(folder), teacher_cache.TeacherCache(str(other))
    assert (one.world, two_ranks.world) == (1, 2)
    slots = torch.arange(16).repeat_interleave(4).tolist(), torch.arange(4).repeat(16).tolist()
    x, y = read_all(one, *slots), read_all(two_ranks, *slots)
    for name in x:
        assert torch.equal(x[name], y[name]), name
    (record,) = records(tmp_path / "run")
    assert record["epoch"] == 1 and record["skipped_steps"] == 0
    assert all(np.isfinite(record[f"loss/{k}"]) for k in ("ce", "datw", "sdd_main", "sdd_aux", "rkd"))
