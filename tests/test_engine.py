"""The training engine and tools/test_net.py on real parts: real encoded videos (the synthetic dataset, tiny),
real models, real DeepSpeed (ZeRO-2 over 2 CPU ranks with gloo, started by the `deepspeed` launcher), each
run in its own process as a user runs it; plus the engine's pure functions in-process.

Rank equality: after each epoch the trainer averages the ranks' batch-norm statistics and all-gathers
per-tensor sums of the student's state (distributed.check_replicas), raising if any rank differs; the
checksum goes into the epoch's metrics record. The test checks it against the exported student.pt and,
independently of the trainer, against the fp32 weights DeepSpeed's zero_to_fp32.py rebuilds from both
ranks' ZeRO-2 partitions.
"""
import csv
import json
import math
import os
import re

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from conftest import checksum, evaluated_metrics, free_port, launch, load_student, ok, records, write_config

from vidkd.data.synthetic import CLASSES
from vidkd.engine import distributed
from vidkd.engine.trainer import lr_factor, param_groups

# ----------------------------------------------------------------------------------------------- 2 ranks
def test_two_rank_deepspeed_zero2_kd_checkpoints_resume_and_equal_ranks(dataset, tmp_path):
    out = tmp_path / "kd"
    config = write_config(tmp_path / "kd.yaml", dataset, out, "kd",
                          DEEPSPEED={"ZERO_STAGE": 2}, DISTILL={"TEACHER_INDEX": 0})  # teacher: videomae_vit_ti
    # OMP_NUM_THREADS unset: distributed.init gives each of the 2 ranks its share of the cores
    first = ok(launch(["tools/train_net.py", "--config", config], ranks=2, threads=None))
    assert "teacher videomae_vit_ti has no checkpoint" in first.stderr
    ckpt = out / "checkpoints"
    for epoch in (1, 2):  # every epoch checkpointed; ZeRO-2 over 2 ranks: one optimizer partition per rank
        files = sorted(os.listdir(ckpt / f"epoch_{epoch:04d}"))
        assert files == ["MANIFEST.json", "mp_rank_00_model_states.pt", "rank_000.pt", "rank_001.pt",
                         "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert (ckpt / "latest").read_text().strip() == "epoch_0002"
    history = records(out)
    assert [r["epoch"] for r in history] == [1, 2]
    for r in history:
        assert r["loss/kd"] >= 0 and math.isclose(r["loss/total"], r["loss/ce"] + r["loss/kd"], rel_tol=1e-9)
        assert r["test/num_videos"] == 8 and r["test/num_missing"] == 0

    # Equal ranks. The trainer raised on any difference, so a finished run means they agreed; its checksum is
    # that of the exported student (rank 0's) ...
    student = load_student(out)["model"]
    assert math.isclose(history[-1]["student_checksum"], checksum(student), rel_tol=1e-12)
    # ... and, independently of the trainer, the fp32 master weights DeepSpeed rebuilds from the two ranks'
    # ZeRO-2 partitions (each rank owns and updates half of them) are exactly that student.
    rebuilt = tmp_path / "fp32"
    ok(launch([str(ckpt / "zero_to_fp32.py"), str(ckpt), str(rebuilt), "--tag", "epoch_0002"]))
    fp32 = torch.load(rebuilt / "pytorch_model.bin", map_location="cpu", weights_only=True)
    fp32 = {k[len("student."):]: v for k, v in fp32.items() if k.startswith("student.")}
    assert fp32.keys() == student.keys()
    assert [k for k in fp32 if not torch.equal(fp32[k], student[k])] == []

    # tools/test_net.py under the launcher, on the exported student, reproduces the trainer's last (2-rank)
    # evaluation: the exported student is the model that was evaluated (batch-norm statistics averaged).
    evaluated = ok(launch(["tools/test_net.py", "--config", config, "--checkpoint", str(out / "student.pt"),
                           "OUTPUT_DIR", str(tmp_path / "eval2")], ranks=2, threads=None))
    assert evaluated.stdout.count("results (x3d_xs") == 1  # printed by rank 0 only
    with open(tmp_path / "eval2" / "test_metrics.json") as f:
        assert json.load(f)["metrics"] == evaluated_metrics(history[-1])

    # The same command with 3 epochs resumes from epoch 2 and runs only epoch 3.
    resumed = ok(launch(["tools/train_net.py", "--config", config, "--resume", "auto", "TRAIN.EPOCHS", "3"],
                        ranks=2, threads=None))
    assert "resumed from epoch 2" in resumed.stderr
    assert "epoch 3/3" in resumed.stderr and "epoch 1/3" not in resumed.stderr and "epoch 2/3" not in resumed.stderr
    after = records(out)
    assert [r["epoch"] for r in after] == [1, 2, 3]
    assert after[:2] == history
    assert (ckpt / "latest").read_text().strip() == "epoch_0003"
    assert math.isclose(after[-1]["student_checksum"], checksum(load_student(out)["model"]), rel_tol=1e-12)
    assert after[-1]["student_checksum"] != history[-1]["student_checksum"]  # epoch 3 did train


# ----------------------------------------------------------------------------------------------- 1 rank
def test_single_process_ce_run_and_test_net_agree(dataset, tmp_path):
    out = tmp_path / "ce"
    config = write_config(tmp_path / "ce.yaml", dataset, out, "ce")
    trained = ok(launch(["tools/train_net.py", "--config", config]))
    history = records(out)
    assert [r["epoch"] for r in history] == [1, 2]
    for r in history:  # the loss and the test metrics every epoch (EVAL_PERIOD 1)
        assert set(k for k in r if k.startswith("loss/")) == {"loss/ce", "loss/total"}
        assert r["loss/total"] == r["loss/ce"] and 0 < r["loss/ce"] < 20
        assert {"test/top1", "test/top5", "test/label/top1", "test/label/mean_class_acc"} <= r.keys()
        assert r["test/num_videos"] == 8
    assert "results (ce, student x3d_xs, 1 clips x 1 crops)" in trained.stdout
    with open(out / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    saved = load_student(out)
    assert saved["meta"]["name"] == "x3d_xs" and saved["meta"]["heads"] == {"label": 8}
    assert math.isclose(history[-1]["student_checksum"], checksum(saved["model"]), rel_tol=1e-12)

    # test_net.py on the exported student and the same config: the trainer's last test metrics, exactly
    evaluated = ok(launch(["tools/test_net.py", "--config", config, "--checkpoint", str(out / "student.pt")]))
    with open(out / "test_metrics.json") as f:
        summary = json.load(f)
    assert summary["model"] == "x3d_xs" and (summary["num_clips"], summary["num_crops"]) == (1, 1)
    assert summary["metrics"]["top1"] == history[-1]["test/top1"]
    assert summary["metrics"] == evaluated_metrics(history[-1])
    assert f"top1                  {history[-1]['test/top1']:.2f}" in evaluated.stdout
    with open(out / "per_class_accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class_name"] for r in rows] == sorted(CLASSES) and all(r["videos"] == "1" for r in rows)
    assert math.isclose(100 * sum(int(r["correct"]) for r in rows) / 8, summary["metrics"]["top1"])
    for name in CLASSES:
        assert name in evaluated.stdout  # the per-class table
    with open(out / "confusion_label.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_dual_teacher_run_estimates_datw_on_the_calibration_split(dataset, tmp_path):
    """DATA.CALIBRATION_SPLIT: each teacher's temperature and held-out class confidence are estimated on its
    videos (here the test split's 8, one view each) before training, and DATW trains with them."""
    out = tmp_path / "dual"
    config = write_config(tmp_path / "dual.yaml", dataset, out, "dual_teacher",
                          MODEL={"TEACHERS": ["c3d_tiny", "c3d_tiny"]}, TRAIN={"EPOCHS": 1},
                          DATA={"CALIBRATION_SPLIT": "test"},
                          DISTILL={"DATW_CONFIDENCE": "heldout_class", "DATW_CALIBRATE": True, "SDD_DIM": 16})
    run = ok(launch(["tools/train_net.py", "--config", config]))
    # the 8 test videos, one view each, went through both teachers before training (the values themselves:
    # test_distill.py's calibrate test)
    assert re.search(r"calibration \(8 views, head label\): ViT top-1 [\d.]+, T [\d.e+-]+, mean true-class p "
                     r"[\d.]+; CNN top-1", run.stderr), run.stderr[-3000:]
    (record,) = records(out)
    assert math.isfinite(record["loss/datw"]) and "stats/w_vit/mean" in record
    plain = ok(launch(["tools/train_net.py", "--config", write_config(
        tmp_path / "plain.yaml", dataset, tmp_path / "plain", "dual_teacher", MODEL={"TEACHERS": ["c3d_tiny"] * 2},
        TRAIN={"EPOCHS": 1}, DATA={"CALIBRATION_SPLIT": "test"}, DISTILL={"SDD_DIM": 16})]))
    assert "calibration (" not in plain.stderr  # the paper's DATW has nothing to estimate there
    assert records(tmp_path / "plain")[0]["loss/datw"] != record["loss/datw"]  # the estimates changed the targets


def test_bad_config_fails_before_anything_runs(dataset, tmp_path):
    out = tmp_path / "bad"
    config = write_config(tmp_path / "bad.yaml", dataset, out, "ce")
    proc = launch(["tools/train_net.py", "--config", config, "MODEL.STUDENT", "x3d_q"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "MODEL.STUDENT" in proc.stderr and "x3d_q" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()  # nothing written: it failed before training started
    proc = launch(["tools/train_net.py", "--config", config, "MODEL.NUM_CLASSES", "5"])  # the manifest has 8
    assert proc.returncode == 1 and "MODEL.NUM_CLASSES is 5" in proc.stderr and "8 classes" in proc.stderr, \
        proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not out.exists()
    proc = launch(["tools/test_net.py", "--config", config, "--checkpoint", str(tmp_path / "none.pt"),
                   "--model", "x3d_q"])
    assert proc.returncode == 1 and "--model" in proc.stderr and "x3d_q" in proc.stderr, proc.stderr[-3000:]
    proc = launch(["tools/test_net.py", "--config", config, "--checkpoint", str(tmp_path / "none.pt")])
    assert proc.returncode == 1 and "none.pt" in proc.stderr and "not found" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------- units
def test_lr_factor_warmup_then_cosine():
    base, low = 0.1, 0.001
    f = lambda step: lr_factor(step, 4, 12, base, low)  # noqa: E731  4 warm-up steps, 12 in all
    assert [f(s) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]  # linear warm-up to the base
    # cosine over steps 4..12: progress 0.25 -> 0.5 * (1 + cos(pi / 4)) = 0.853553
    assert math.isclose(f(6), (low + (base - low) * 0.8535533905932737) / base)  # 0.855018
    assert math.isclose(f(8), (low + (base - low) * 0.5) / base)  # half way: 0.505
    assert math.isclose(f(12), low / base) and math.isclose(f(30), low / base)  # the minimum, then held
    assert lr_factor(0, 0, 10, base, 0.0) == 1.0  # no warm-up: starts at the base


def test_param_groups_no_decay_for_biases_norms_and_1d():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(3, 4, 3)
            self.bn = nn.BatchNorm3d(4)
            self.ln = nn.LayerNorm(4)
            self.fc = nn.Linear(4, 2)
            self.scale = nn.Parameter(torch.ones(4))  # a 1-D parameter that is neither bias nor norm
            self.frozen = nn.Linear(4, 4).requires_grad_(False)

    net = Net()
    decay, no_decay = param_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(decay["params"]) == ids([net.conv.weight, net.fc.weight])
    assert ids(no_decay["params"]) == ids([net.conv.bias, net.bn.weight, net.bn.bias, net.ln.weight, net.ln.bias,
                                           net.fc.bias, net.scale])  # frozen parameters in neither


def test_launcher_env_slurm_plain_and_launcher():
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[03-05,07]"}
    assert distributed.launcher_env(slurm) == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                               "MASTER_ADDR": "gpu03", "MASTER_PORT": "29500"}
    assert distributed.launcher_env({**slurm, "SLURM_JOB_NODELIST": "node7,node8"})["MASTER_ADDR"] == "node7"
    plain = distributed.launcher_env({})
    assert {k: plain[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")} == {
        "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    assert 0 < int(plain["MASTER_PORT"]) < 65536
    # a single SLURM task is a plain run; a launcher's own variables win over SLURM's
    assert distributed.launcher_env({**slurm, "SLURM_NTASKS": "1"})["WORLD_SIZE"] == "1"
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    assert distributed.launcher_env({**slurm, **torchrun}) == torchrun


def test_cpu_threads_shared_among_the_ranks_of_a_node():
    assert distributed.cpu_threads({"LOCAL_SIZE": "2"}, cpus=2) == 1  # the deepspeed launcher, 2 ranks
    assert distributed.cpu_threads({"LOCAL_WORLD_SIZE": "4"}, cpus=16) == 4  # torchrun
    assert distributed.cpu_threads({"SLURM_NTASKS_PER_NODE": "4"}, cpus=2) == 1  # never 0
    assert distributed.cpu_threads({"LOCAL_SIZE": "2", "OMP_NUM_THREADS": "2"}, cpus=2) is None  # user's choice
    assert distributed.cpu_threads({}, cpus=2) is None  # alone on the node: torch's default


def _replica_worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.Linear(1, 2))
        bn = model[1]
        bn.running_mean.fill_(rank * 2.0)  # each rank's own statistics: rank 0 -> 0, rank 1 -> 2
        bn.running_var.fill_(1.0 + rank)
        device = torch.device("cpu")
        result = {"differs_before": None}
        try:
            distributed.check_replicas(model, device)
        except RuntimeError as e:
            result["differs_before"] = str(e)
        distributed.average_batchnorm_stats(model, device)
        result["mean"], result["var"] = bn.running_mean.tolist(), bn.running_var.tolist()
        result["checksum"] = distributed.check_replicas(model, device)
        if rank == 1:
            with torch.no_grad():
                model[2].weight[0, 0] += 1e-3
        try:
            distributed.check_replicas(model, device, "student")
        except RuntimeError as e:
            result["differs_after"] = str(e)
        # rank 0's text reaches every rank, whatever the others pass: non-ASCII, empty, and None
        result["texts"] = [distributed.broadcast_text(t if rank == 0 else "other", device)
                           for t in ("shard0.npy does not match: é", "", None)]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_replica_check_and_batchnorm_averaging_across_two_processes(tmp_path):
    mp.spawn(_replica_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in results:
        # different batch-norm statistics are caught, by name ...
        assert "1.running_mean" in r["differs_before"] and "1.running_var" in r["differs_before"]
        assert "0.weight" not in r["differs_before"]
        # ... averaged over the ranks, after which the models agree
        assert r["mean"] == [1.0] * 4 and r["var"] == [1.5] * 4
        # one changed weight on one rank fails the check on every rank
        assert "different students" in r["differs_after"] and "2.weight (ranks [1])" in r["differs_after"]
    assert results[0]["checksum"] == results[1]["checksum"]
    assert results[0]["texts"] == results[1]["texts"] == ["shard0.npy does not match: é", "", None]
