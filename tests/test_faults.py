"""Nothing lost: real training processes killed with SIGKILL at random steps and resumed, a corrupt newest
checkpoint, NaN losses injected at chosen steps. Each run is `tools/train_net.py` in its own process (one
process, or 2 DeepSpeed ranks with ZeRO-2) on the tiny synthetic dataset of conftest.

The reference is the same config run without interruption: the resumed runs must end with bit-identical
student weights (EMA included) and the same metrics records (all but the wall-clock seconds).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TIMEOUT, clean_env, command, launch, load_student, ok, records, write_config

from vidkd.engine import checkpointing
from vidkd.errors import CheckpointError
from vidkd.hashing import sha256_of_files
from vidkd.models.checkpoint import read_state_dict

# Dual teacher (DATW meters, SDD branch) with EMA; 16 training videos in batches of 2: 8 batches an epoch on one
# process, 4 per rank on two; a checkpoint every 2 batches.
RUN = {"MODEL": {"STUDENT": "c3d_tiny", "TEACHERS": ["videomae_vit_ti", "c3d_small"]},
       "TRAIN": {"BATCH_SIZE": 2, "EPOCHS": 2, "EVAL_PERIOD": 1, "CHECKPOINT_STEPS": 2, "KEEP_CHECKPOINTS": 2,
                 "EMA": True, "EMA_DECAY": 0.9},
       "SOLVER": {"OPTIMIZER": "adamw", "BASE_LR": 0.003}}


def config(tmp_path, dataset, name, method="dual_teacher", **extra):
    groups = {k: dict(v) for k, v in RUN.items()}
    for group, values in extra.items():
        groups.setdefault(group, {}).update(values)
    return write_config(tmp_path / f"{name}.yaml", dataset, tmp_path / name, method, **groups), tmp_path / name


def without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def assert_same_run(out, reference):
    """Bit-identical exported student (the EMA) and equal metrics records."""
    got, want = load_student(out)["model"], load_student(reference)["model"]
    assert got.keys() == want.keys()
    assert [k for k in got if not torch.equal(got[k], want[k])] == []
    assert without_seconds(records(out)) == without_seconds(records(reference))


def position(tag):
    """(epochs done, batches done in the next) of a checkpoint tag: epoch_0001_batch_000006 -> (1, 6)."""
    parts = tag.split("_")
    return int(parts[1]), int(parts[3]) if len(parts) > 2 else 0


def kill_at_a_random_step(args, out, ranks, rng, log, positions):
    """Start the run; once it has checkpointed at one of `positions` (drawn at random) or beyond, SIGKILL it
    (every rank, and the loader workers) after a random 0-0.2 s more: in a step, a checkpoint write or an
    evaluation. `positions` leave the run at least an evaluation to do. Returns the newest checkpoint's tag."""
    target = positions[rng.integers(len(positions))]
    with open(log, "w") as f:
        proc = subprocess.Popen(command(args, ranks), cwd=REPO, env=clean_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    folder = os.path.join(out, "checkpoints")
    deadline = time.time() + TIMEOUT
    while not any(position(m["tag"]) >= target for m in checkpointing.complete(folder)):
        assert proc.poll() is None, f"the run ended before checkpoint {target}:\n{open(log).read()[-3000:]}"
        assert time.time() < deadline, f"no checkpoint {target} within the time limit"
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.2))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "student.pt")), "the run finished before the kill"
    tag = checkpointing.complete(folder)[0]["tag"]
    assert position(tag) >= target
    return tag


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The uninterrupted single-process run."""
    tmp = tmp_path_factory.mktemp("reference")
    path, out = config(tmp, dataset, "ref")
    ok(launch(["tools/train_net.py", "--config", path]))
    return path, out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_killed_at_a_random_step_and_resumed_equals_the_uninterrupted_run(dataset, reference, tmp_path, seed):
    path, out = config(tmp_path, dataset, "killed", DATA={"NUM_WORKERS": 1})  # a loader worker, killed too
    tag = kill_at_a_random_step(["tools/train_net.py", "--config", path], out, 1, np.random.default_rng(seed),
                                tmp_path / "killed.log", [(0, 2), (0, 4), (0, 6), (1, 0), (1, 2)])
    resumed = ok(launch(["tools/train_net.py", "--config", path, "--resume", "auto"]))
    epoch, batch = position(tag)
    assert f"resumed from epoch {epoch}, batch {batch} (checkpoint {tag})" in resumed.stderr
    if batch:  # the progress bar starts where the checkpoint left the epoch
        assert f"epoch {epoch + 1}/2:  {100 * batch // 8:>2d}%" in resumed.stderr
    assert_same_run(out, reference[1])
    kept = [m["tag"] for m in checkpointing.complete(out / "checkpoints")]
    assert kept == ["epoch_0002", "epoch_0001_batch_000006"]  # KEEP_CHECKPOINTS 2, newest first


def test_two_ranks_killed_and_resumed_equal_the_uninterrupted_run(dataset, tmp_path):
    ds = {"DEEPSPEED": {"ZERO_STAGE": 2}, "TRAIN": {"CHECKPOINT_STEPS": 1}}
    ref_path, ref_out = config(tmp_path, dataset, "ref2", **ds)
    ok(launch(["tools/train_net.py", "--config", ref_path], ranks=2))
    path, out = config(tmp_path, dataset, "killed2", **ds)
    args = ["tools/train_net.py", "--config", path]
    tag = kill_at_a_random_step(args, out, 2, np.random.default_rng(7), tmp_path / "killed2.log",
                                [(0, 1), (0, 2), (0, 3), (1, 0)])
    resumed = ok(launch(args, ranks=2))
    assert "resumed from epoch {}, batch {} (checkpoint {})".format(*position(tag), tag) in resumed.stderr
    assert_same_run(out, ref_out)


def test_a_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(dataset, reference, tmp_path):
    path, out = config(tmp_path, dataset, "corrupt")
    ok(launch(["tools/train_net.py", "--config", path]))
    newest = out / "checkpoints" / "epoch_0002"
    model = newest / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:1000])  # truncated, as by a full disk
    (out / "checkpoints" / ".partial_epoch_0003").mkdir()  # a write killed half-way: ignored
    resumed = ok(launch(["tools/train_net.py", "--config", path]))
    assert f"checkpoint {newest} is damaged (mp_rank_00_model_states.pt has 1000 bytes" in resumed.stderr
    assert "resumed from epoch 1, batch 6 (checkpoint epoch_0001_batch_000006)" in resumed.stderr
    aside = out / "checkpoints" / "damaged_epoch_0002"  # kept for a look, out of `latest` and the kept ones
    assert f"damaged checkpoint set aside as {aside}" in resumed.stderr
    assert (aside / "mp_rank_00_model_states.pt").stat().st_size == 1000
    assert (out / "checkpoints" / "latest").read_text() == "epoch_0002"  # the resumed run's own, intact
    assert_same_run(out, reference[1])


def test_when_every_checkpoint_is_damaged_they_are_set_aside_and_training_starts_afresh(tmp_path):
    folder = tmp_path / "checkpoints"
    for epoch in (1, 2):  # two checkpoints whose model file no longer matches its manifest
        tag = f"epoch_{epoch:04d}"
        (folder / tag).mkdir(parents=True)
        (folder / tag / "model.pt").write_bytes(b"x" * 10)
        (folder / tag / checkpointing.MANIFEST).write_text(json.dumps(
            {"tag": tag, "position": {"epoch": epoch, "batch": 0}, "config": "",
             "files": {"model.pt": {"bytes": 10, "sha256": "0" * 64}}}))
    (folder / "latest").write_text("epoch_0002")
    assert checkpointing.resume_point(str(folder), "") is None
    # Nothing left that `latest` names or that later pruning would rank above the new run's checkpoints.
    assert sorted(os.listdir(folder)) == ["damaged_epoch_0001", "damaged_epoch_0002"]
    assert checkpointing.complete(str(folder)) == []


def test_a_checkpoint_of_another_config_is_refused_naming_the_keys(dataset, reference, tmp_path):
    path, out = config(tmp_path, dataset, "other", TRAIN={"EPOCHS": 1})
    ok(launch(["tools/train_net.py", "--config", path]))
    refused = launch(["tools/train_net.py", "--config", path, "SOLVER.BASE_LR", "0.01", "TRAIN.EPOCHS", "2"])
    assert refused.returncode == 1
    assert "written with another config" in refused.stderr
    assert "SOLVER.BASE_LR: 0.003 in the checkpoint, 0.01 now" in refused.stderr
    assert "TRAIN.EPOCHS" not in refused.stderr  # a longer schedule is a resumable change
    fresh = launch(["tools/train_net.py", "--config", path, "--resume", "none"])
    assert fresh.returncode == 1 and "holds checkpoints of an earlier run" in fresh.stderr


NAN_DRIVER = """
import runpy, sys
from vidkd.distill.ce import CE

calls, bad = [0], {bad}
forward = CE.forward


def poisoned(self, batch):
    z, losses = forward(self, batch)
    calls[0] += 1
    if calls[0] in bad or (bad == [] and calls[0] >= 3):  # [] = every call from the third on
        losses["ce"] = losses["ce"] * float("nan")
    return z, losses


CE.forward = poisoned
sys.argv = ["tools/train_net.py"] + sys.argv[1:]
runpy.run_path("tools/train_net.py", run_name="__main__")
"""


def run_poisoned(tmp_path, path, bad):
    driver = tmp_path / "driver.py"
    driver.write_text(NAN_DRIVER.replace("{bad}", repr(bad)))
    return launch([str(driver), "--config", path])


def finite_checkpoints(out):
    for manifest in checkpointing.complete(out / "checkpoints"):
        state = read_state_dict(str(out / "checkpoints" / manifest["tag"] / "mp_rank_00_model_states.pt"))
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_nan_loss_skips_the_step_and_is_counted(dataset, tmp_path):
    path, out = config(tmp_path, dataset, "nan", method="ce", TRAIN={"EMA": False})
    proc = ok(run_poisoned(tmp_path, path, [5]))
    assert "epoch 1, batch 5: non-finite loss term(s) ce; step skipped (1 in a row, 1 in all)" in proc.stderr
    assert [r["skipped_steps"] for r in records(out)] == [1, 0]
    assert all(np.isfinite(r["loss/ce"]) for r in records(out))
    finite_checkpoints(out)


def test_nan_losses_in_a_row_stop_the_run_keeping_the_last_good_checkpoint(dataset, tmp_path):
    path, out = config(tmp_path, dataset, "nans", method="ce", TRAIN={"EMA": False, "MAX_BAD_STEPS": 3})
    proc = run_poisoned(tmp_path, path, [])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert ("error: 3 steps in a row had a non-finite loss (last: ce; TRAIN.MAX_BAD_STEPS); the last good "
            f"checkpoint: {out / 'checkpoints' / 'epoch_0000_batch_000004'}") in proc.stderr
    finite_checkpoints(out)
    assert not (out / "student.pt").exists()


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.parametrize("fault,message", [(signal.SIGSTOP, "DataLoader timed out after 3.0 seconds"),
                                           (signal.SIGKILL, "exited unexpectedly")])
def test_a_hung_or_dead_loader_worker_loses_one_batch_and_the_run_goes_on(dataset, tmp_path, fault, message):
    """A worker stopped (as one hung in native code) or killed early in epoch 1: when a batch of its is due
    (in epoch 1, or in epoch 2 as the workers persist), the loader times out or notices the death, restarts
    the workers and skips that batch."""
    path, out = config(tmp_path, dataset, "worker", method="ce", DATA={"NUM_WORKERS": 2, "BATCH_TIMEOUT": 3.0,
                                                                     "MAX_FAIL_FRACTION": 0.2},
                       TRAIN={"EMA": False, "CHECKPOINT_STEPS": 1})
    log = tmp_path / "worker.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(command(["tools/train_net.py", "--config", path]), cwd=REPO, env=clean_env(),
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    while not checkpointing.complete(out / "checkpoints"):
        assert proc.poll() is None, open(log).read()[-3000:]
        time.sleep(0.02)
    workers = children(proc.pid)
    assert len(workers) == 2, workers  # the training loader's; the test loader's start at the first evaluation
    os.kill(workers[1], fault)
    try:
        assert proc.wait(timeout=TIMEOUT) == 0, open(log).read()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        if fault == signal.SIGSTOP and os.path.exists(f"/proc/{workers[1]}"):
            os.kill(workers[1], signal.SIGKILL)
    text = open(log).read()
    assert "loader workers restarted, its 2 videos skipped" in text and message in text
    history = records(out)
    assert sorted(r["failed_videos"] for r in history) == [0, 2]  # the lost batch's two videos, in one epoch
    assert load_student(out)["model"]  # the run finished and exported its student


class RunsCode:
    """A pickle that runs a shell command when unpickled fully."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def rewrite_manifest(checkpoint, files):
    """The attacker's move: the manifest made to match the folder (or to list `files` only)."""
    manifest = json.loads((checkpoint / checkpointing.MANIFEST).read_text())
    manifest["files"] = {name: {"bytes": (checkpoint / name).stat().st_size,
                                "sha256": sha256_of_files([str(checkpoint / name)])} for name in files}
    (checkpoint / checkpointing.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("tamper", ["manifest rewritten", "manifest emptied", "file added"])
def test_a_tampered_run_folder_runs_no_code_on_resume(dataset, reference, tmp_path, tamper):
    """A run folder from elsewhere: the newest checkpoint's model file replaced by a pickle that runs code."""
    path, out = reference
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.copy(path, tmp_path / "run.yaml")
    config_text = (tmp_path / "run.yaml").read_text().replace(str(out), str(copy))
    (tmp_path / "run.yaml").write_text(config_text)
    newest, marker = copy / "checkpoints" / "epoch_0002", tmp_path / "PWNED"
    if tamper == "file added":
        torch.save({"x": RunsCode(marker)}, newest / "extra.pt")
    else:
        torch.save({"module": RunsCode(marker)}, newest / "mp_rank_00_model_states.pt")
        listed = [n for n in os.listdir(newest) if n != checkpointing.MANIFEST]
        rewrite_manifest(newest, listed if tamper == "manifest rewritten" else [])
    run = launch(["tools/train_net.py", "--config", str(tmp_path / "run.yaml")])
    assert not marker.exists(), "code from the checkpoint ran"
    if tamper == "manifest rewritten":  # intact by its manifest: refused when read, naming the file
        assert run.returncode == 1
        assert f"{newest / 'mp_rank_00_model_states.pt'}: refused, it holds more than weights" in run.stderr
        assert re.search(r"GLOBAL (posix|os)\.system", run.stderr) and "weights_only` set to `False`" not in run.stderr
    else:  # damage: set aside, the previous checkpoint used
        ok(run)
        reason = "its manifest lists no files" if tamper == "manifest emptied" else \
            "it holds files its manifest does not list: extra.pt"
        assert f"checkpoint {newest} is damaged ({reason})" in run.stderr
        assert "resumed from epoch 1, batch 6" in run.stderr


def test_deepspeeds_files_are_read_weights_only(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"optimizer_state_dict": RunsCode(marker)}, tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(CheckpointError, match=r"optim_states.pt: refused.*GLOBAL (posix|os)\.system"):
        checkpointing.WeightsOnlyCheckpointEngine().load(str(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    assert not marker.exists()
    state = {"module": {"w": torch.ones(2)}, "ds_version": "0.19.8", "shapes": torch.Size([2])}
    torch.save(state, tmp_path / "ok.pt")
    assert torch.equal(checkpointing.WeightsOnlyCheckpointEngine().load(str(tmp_path / "ok.pt"))["module"]["w"],
                       torch.ones(2))


@pytest.fixture
def tmpfs():
    """Mount a size-limited tmpfs at a path (a disk that fills up, or is made read-only); unmounted after."""
    mounted = []

    def mount(path, size, read_only=False):
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        mount_tmpfs = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
        if subprocess.run(mount_tmpfs, capture_output=True, check=False).returncode:
            pytest.skip("this machine cannot mount a tmpfs (not root): no full or read-only disk to test on")
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_while_saving_says_what_is_kept(dataset, tmp_path, tmpfs):
    """Room for one checkpoint: the second cannot be written; the run says so and keeps the first."""
    path, out = config(tmp_path, dataset, "sized", method="ce", TRAIN={"EMA": False, "CHECKPOINT_STEPS": 0})
    ok(launch(["tools/train_net.py", "--config", path, "TRAIN.EPOCHS", "1"]))
    size = sum(f.stat().st_size for f in (out / "checkpoints" / "epoch_0001").iterdir())
    full = tmp_path / "full"
    tmpfs(full, int(size * 1.6) + 512 * 1024)
    path, out = config(full, dataset, "run", method="ce", TRAIN={"EMA": False, "CHECKPOINT_STEPS": 0})
    run = launch(["tools/train_net.py", "--config", path])
    assert run.returncode == 1
    assert f"{out / 'checkpoints'}: cannot write checkpoint epoch_0002 (" in run.stderr
    assert f"kept: {out / 'checkpoints' / 'epoch_0001'}" in run.stderr and "Traceback" not in run.stderr
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch_0001", "latest"]  # the half-written one removed


def test_a_read_only_checkpoint_folder_falls_back_and_says_it_cannot_save(dataset, reference, tmp_path, tmpfs):
    path, out = reference
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoints"))
    (tmp_path / "run.yaml").write_text(Path(path).read_text().replace(str(out), str(copy)))
    tmpfs(copy / "checkpoints", "64m")
    shutil.copytree(out / "checkpoints", copy / "checkpoints", dirs_exist_ok=True)
    model = copy / "checkpoints" / "epoch_0002" / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:1000])
    subprocess.run(["mount", "-o", "remount,ro", str(copy / "checkpoints")], check=True)
    run = launch(["tools/train_net.py", "--config", str(tmp_path / "run.yaml")])
    assert "cannot set damaged checkpoints aside in" in run.stderr and "Read-only file system" in run.stderr
    assert "resumed from epoch 1, batch 6 (checkpoint epoch_0001_batch_000006)" in run.stderr
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "cannot write checkpoint" in run.stderr
    assert f"kept: {copy / 'checkpoints' / 'epoch_0001_batch_000006'}" in run.stderr


def test_the_input_audit_holds_on_every_attack(tmp_path):
    """tools/audit_inputs.py: 141 crafted pickles, tampered run folders, damaged caches, absurd configs and bad
    manifests given to the tools; each must be refused naming what is wrong, or repaired, with no code run."""
    proc = launch(["tools/audit_inputs.py", "--work", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    table = {row.split()[0]: row.split()[-3:] for row in proc.stdout.splitlines() if re.match(r"\w.* \d+ +\d+ +\d+$", row)}
    assert table["all"] == ["141", "141", "0"], proc.stdout[-3000:]
    assert not list((tmp_path / "markers").iterdir())  # no payload ran
