"""The GPU training path, run on the CPU: DeepSpeed bf16 (DeepSpeed's CPU accelerator runs it) and fp32 for every
method, on 1 process and on 2 ranks with ZeRO-2, with a checkpoint and an exact resume, the EMA kept in fp32, and
the teacher-output cache filled (by tools/cache_teachers.py and by training) and read by the loader's workers.
fp16 goes as far as the CPU allows: DeepSpeed's CPU accelerator has none, so its loss scaling is untested here
(README); the methods' fp16 forward and backward are.

Every run is tools/train_net.py's (or tools/cache_teachers.py's) main, several per process (tools/run_many.py).
"""
import json
import math
import os

import pytest
import torch
from conftest import TIMEOUT, launch, load_student, ok, records, write_config

from vidkd.config import load_config
from vidkd.distill.build import build_distiller, methods_for, teachers_needed
from vidkd.engine.ema import EMA
from vidkd.engine.trainer import PRECISIONS, cast_for_training
from vidkd.models import build_image_model, build_model
from vidkd.models.base import build_face_model
from vidkd.models.checkpoint import read_state_dict

# The student is a plain 3D CNN: X3D's average pool has no bf16 kernel on the CPU (it has on GPUs).
MODELS = {"STUDENT": "c3d_tiny", "TEACHERS": ["videomae_vit_ti", "c3d_small"]}
RUN = {"MODEL": MODELS, "DISTILL": {"RKD_WEIGHT": 1.0}, "TRAIN": {"EMA": True, "EMA_DECAY": 0.9, "EVAL_PERIOD": 1},
       "TEST": {"BATCH_SIZE": 8}}
CACHED = {"DISTILL": {"RKD_WEIGHT": 1.0, "CACHE": "auto", "CACHE_VIEWS": 2}, "DATA": {"NUM_WORKERS": 1}}


def without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def plan(tmp_path, dataset, extra, names):
    """Runs of each method of `names` (`cached`: the dual teacher from the cache, which tools/cache_teachers.py
    fills first): each straight through its 2 epochs (`<name>_a`) and stopped after epoch 1, then resumed
    (`<name>_b`). Returns the runs."""
    runs = [["cache_teachers", "--config", str(tmp_path / "cached.yaml")]] if "cached" in names else []
    for name in names:
        groups = {k: dict(v) for k, v in RUN.items()}
        if name == "cached":
            groups["DISTILL"].update(CACHED["DISTILL"] | {"CACHE_DIR": str(tmp_path / "cache")})
            groups["DATA"] = CACHED["DATA"]
        for group, values in extra.items():
            groups[group] = groups.get(group, {}) | values if isinstance(values, dict) else values
        method = "dual_teacher" if name == "cached" else name
        config = write_config(tmp_path / f"{name}.yaml", dataset, tmp_path / f"{name}_a", method, **groups)
        b = ["OUTPUT_DIR", str(tmp_path / f"{name}_b")]
        runs += [["train_net", "--config", config], ["train_net", "--config", config, *b, "TRAIN.EPOCHS", "1"],
                 ["train_net", "--config", config, "--resume", "auto", *b]]
    return runs


def run_all(tmp_path, runs, ranks):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs))
    # every method three times (straight, stopped, resumed) in one process: more than one run's time limit
    return ok(launch(["tools/run_many.py", str(path)], ranks=ranks, threads=None if ranks > 1 else "1",
                     timeout=3 * TIMEOUT))


def check_runs(tmp_path, names, dtype, metric="test/top1"):
    """`metric`: the test metric in [0, 100] (TASK face: test/accuracy, the verification's)."""
    for name in names:
        a, b = tmp_path / f"{name}_a", tmp_path / f"{name}_b"
        history = records(a)
        assert [r["epoch"] for r in history] == [1, 2] and history[-1]["skipped_steps"] == 0, name
        assert all(math.isfinite(v) for k, v in history[-1].items() if k.startswith("loss/")), name
        assert 0 <= history[-1][metric] <= 100
        # The checkpoint holds what DeepSpeed trained, in the training precision: the student and the
        # training-only heads, no teacher.
        module = read_state_dict(str(a / "checkpoints"))  # its latest: epoch_0002
        assert module and not any(k.startswith("teachers") for k in module), name
        assert {v.dtype for k, v in module.items() if v.is_floating_point()} == {dtype}, name
        # Exact resume: the resumed run ends with the uninterrupted one's exported student (the fp32 EMA) and
        # metrics records.
        got, want = load_student(b)["model"], load_student(a)["model"]
        assert got.keys() == want.keys() and all(v.dtype in (torch.float32, torch.int64) for v in got.values())
        assert [k for k in got if not torch.equal(got[k], want[k])] == [], name
        assert without_seconds(records(b)) == without_seconds(history), name
        assert math.isclose(history[-1]["student_checksum"], sum(float(v.double().sum()) for v in want.values()),
                            rel_tol=1e-12)


def check_cache(tmp_path, proc):
    # tools/cache_teachers.py filled the cache (rank 0 reports it) that the three cached runs then read, in the
    # loader's workers: one key, since the tool builds the teachers and projections exactly as training does
    (folder,) = (tmp_path / "cache").iterdir()
    assert proc.stdout.count(f"teacher cache: {folder} (16 videos x 2 views") == 1
    assert proc.stderr.count(f"teacher outputs from the cache {folder}") >= 3


# fp32 on 2 ranks: test_faults, test_engine
@pytest.mark.parametrize("precision, ranks", [("bf16", 1), ("bf16", 2), ("fp32", 1)])
def test_every_method_trains_checkpoints_and_resumes_exactly(dataset, tmp_path, precision, ranks):
    """2 ranks: ZeRO-2, 2 batches a rank an epoch."""
    extra = {"DEEPSPEED": {"PRECISION": precision, "ZERO_STAGE": 2 if ranks > 1 else 0}}
    names = methods_for("video") + ["cached"]
    proc = run_all(tmp_path, plan(tmp_path, dataset, extra, names), ranks)
    check_runs(tmp_path, names, PRECISIONS[precision])
    check_cache(tmp_path, proc)
    shards = {f.split(".")[-2] for f in os.listdir(next((tmp_path / "cache").iterdir())) if ".shard" in f}
    assert shards == {f"shard{r}" for r in range(ranks)}  # each rank filled its own shard


def test_image_methods_train_in_bf16_on_2_ranks_checkpoint_and_resume_exactly(dataset, tmp_path):
    """TASK image, the frame-level path (one frame of each synthetic video), in bf16 on 2 ranks with ZeRO-2: CRD
    (its memory banks, one per rank, are method state), OFA, FBT (its fusion model's copy of the teacher, partly
    frozen, inside the engine; evaluated beside the student) and the dual teacher (SDD on one-frame maps), each
    straight, stopped and resumed, as above."""
    extra = {"TASK": "image", "MODEL": {"STUDENT": "resnet_mini", "TEACHERS": ["deit_mini", "resnet_mini"]},
             "DEEPSPEED": {"PRECISION": "bf16", "ZERO_STAGE": 2}}
    names = ["crd", "dual_teacher", "fbt", "ofa"]
    run_all(tmp_path, plan(tmp_path, dataset, extra, names), 2)
    check_runs(tmp_path, names, torch.bfloat16)
    logged = {k for n in names for k in records(tmp_path / f"{n}_a")[-1]}
    assert {"loss/crd", "loss/ofa_exits", "loss/sdd_aux", "loss/infonce", "test/fusion/top1"} <= logged


def test_face_iled_rpsd_trains_in_bf16_on_2_ranks_checkpoints_and_resumes_exactly(face_data, tmp_path):
    """TASK face on the tiny face set, in bf16 on 2 ranks with ZeRO-2: ILED + RPSD, whose memory banks (a pair per
    rank, 3 batches deep, so they wrap within the run) are method state, straight, stopped and resumed, as above."""
    extra = {"TASK": "face", "DEEPSPEED": {"PRECISION": "bf16", "ZERO_STAGE": 2},
             "MODEL": {"STUDENT": "iresnet_tiny", "TEACHERS": ["swin_face_tiny"], "TEACHER_CHECKPOINTS": [""]}}
    run_all(tmp_path, plan(tmp_path, face_data, extra, ["iled_rpsd"]), 2)
    check_runs(tmp_path, ["iled_rpsd"], torch.bfloat16, "test/accuracy")
    last = records(tmp_path / "iled_rpsd_a")[-1]
    assert last["loss/iled"] > 0 and last["loss/rpsd"] > 0


# ----------------------------------------------------------------------------------------------- units
def config(method, *overrides):
    return load_config(None, ["DISTILL.METHOD", method, "DATA.NUM_FRAMES", "4", "DATA.TRAIN_CROP_SIZE", "32",
                              "MODEL.STUDENT", "c3d_tiny", "DISTILL.RKD_WEIGHT", "1.0", *overrides])


def models_of(task):
    """(teachers, student, one input's shape): video, a tiny ViT and 3D CNN teaching a 3D CNN; image, a DeiT and a
    ResNet teaching a DeiT (OFA's token exits); face, a Swin teaching an IResNet (64-d embeddings)."""
    if task == "face":
        return [build_face_model("swin_face_tiny", 32)], build_face_model("iresnet_tiny", 32), (3, 32, 32)
    if task == "video":
        return ([build_model("videomae_vit_ti", 4, 4, 32, depth=2), build_model("c3d_small", 4, 4, 32)],
                build_model("c3d_tiny", 4, 4, 32), (3, 4, 32, 32))
    return [build_image_model("deit_mini", 4, 32), build_image_model("resnet_mini", 4, 32)], build_image_model(
        "deit_mini", 4, 32), (3, 32, 32)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method, task", [(m, t) for t in ("video", "image", "face") for m in methods_for(t)])
def test_every_method_steps_in_reduced_precision_with_fp32_losses_and_teachers(method, precision, task):
    """What DeepSpeed trains, cast as it casts it; the teachers outside, in fp32, fed the fp32 input."""
    models = {"image": ["MODEL.TEACHERS", "[deit_mini, resnet_mini]"], "video": [],
              "face": ["MODEL.STUDENT", "iresnet_tiny", "MODEL.TEACHERS", "[swin_face_tiny]",
                       "MODEL.TEACHER_CHECKPOINTS", "['']"]}[task]
    cfg = config(method, "TASK", task, *models)
    torch.manual_seed(0)
    teachers, student, shape = models_of(task)
    distiller = build_distiller(cfg, student, [teachers[i] for i in teachers_needed(cfg)], {"label": 4})
    distiller.num_samples = 4
    cast_for_training(distiller, PRECISIONS[precision]).train()
    dtype = PRECISIONS[precision]
    assert {p.dtype for p in distiller.parameters()} == {dtype}
    assert all(p.dtype == torch.float32 for t in distiller.teachers for p in t.parameters())
    seen = []
    for t in distiller.teachers:
        t.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    g = torch.Generator().manual_seed(1)
    batch = {"input": torch.randn(4, *shape, generator=g), "index": torch.arange(4),
             "targets": {"label": torch.tensor([0, 1, 2, 3])}}
    logits, losses = distiller(batch)
    assert logits.dtype == dtype
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in distiller.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == dtype and torch.isfinite(g).all() for g in grads)
    assert len(seen) >= len(distiller.teachers) and set(seen) <= {torch.float32}  # PAT runs its teacher twice


def test_the_teachers_targets_do_not_depend_on_the_training_precision():
    """Teachers outside what DeepSpeed casts, fixed SDD projections as fp32 buffers: the dual teacher's cached
    targets are the same, bit for bit, whatever DEEPSPEED.PRECISION (so the cache key leaves it out)."""
    targets = {}
    for precision in ("fp32", "bf16"):
        cfg = config("dual_teacher")
        torch.manual_seed(0)
        teachers = [build_model("videomae_vit_ti", 4, 4, 32, depth=2), build_model("c3d_small", 4, 4, 32)]
        distiller = build_distiller(cfg, build_model("c3d_tiny", 4, 4, 32), teachers, {"label": 4})
        cast_for_training(distiller, PRECISIONS[precision]).train()
        assert distiller.phi_c.weight.dtype == distiller.phi_v.weight.dtype == torch.float32
        assert "phi_c.weight" not in distiller.state_dict()  # rebuilt from the seed, not checkpointed
        with torch.no_grad():
            targets[precision] = distiller.teacher_targets(torch.randn(2, 3, 4, 32, 32, generator=torch.Generator()
                                                                       .manual_seed(3)))
    assert targets["fp32"].keys() == targets["bf16"].keys() == {"z_v", "z_c", "r_c", "r_res", "e_v"}
    assert all(torch.equal(targets["fp32"][k], targets["bf16"][k]) for k in targets["fp32"])


def test_a_student_without_kernels_for_the_precision_is_refused_by_name():
    from vidkd.engine.trainer import check_student_runs
    from vidkd.errors import ConfigError

    def student(cfg, name):  # as training builds it: cast, taking its fp32 clip through the distiller's hook
        distiller = build_distiller(cfg, build_model(name, 4, 4, 32), [], {"label": 4})
        return cast_for_training(distiller, torch.bfloat16).student

    cfg = config("ce", "MODEL.STUDENT", "x3d_xs", "DEEPSPEED.PRECISION", "bf16")
    with pytest.raises(ConfigError, match=r"DEEPSPEED.PRECISION bf16: the student x3d_xs cannot run in it on cpu "
                                          r"\(.*avg_pool3d"):
        check_student_runs(cfg, student(cfg, "x3d_xs"))
    check_student_runs(config("ce"), student(config("ce"), "c3d_tiny"))


def test_fp16_on_the_cpu_is_refused_before_anything_runs(dataset, tmp_path):
    out = tmp_path / "fp16"
    config_path = write_config(tmp_path / "fp16.yaml", dataset, out, "ce", DEEPSPEED={"PRECISION": "fp16"})
    proc = launch(["tools/train_net.py", "--config", config_path])
    assert proc.returncode == 1 and "DEEPSPEED.PRECISION fp16" in proc.stderr and "CPU" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_the_ema_is_fp32_moves_by_steps_bf16_would_round_away_and_has_no_taps():
    from vidkd.models.taps import FeatureTaps

    torch.manual_seed(0)
    student = build_model("c3d_tiny", 4, 4, 32)
    taps = FeatureTaps(student)
    cast_for_training(student, torch.bfloat16)
    ema = EMA(student, 0.999)
    assert {p.dtype for p in ema.module.parameters()} == {torch.float32}
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(p.abs().clamp(min=1e-3) * 0.1)  # a 10 % move: the EMA takes 1e-4 of it
    ema.update(student)
    w = dict(student.named_parameters())
    for name, p in ema.module.named_parameters():
        expected = before[name] + 0.001 * (w[name].float() - before[name])  # ema + (1 - decay)(w - ema)
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(p, before[name])
        if p.dim() > 1:  # the same step on a bf16 copy of the (non-zero) weights rounds away almost entirely
            start = before[name].bfloat16()
            assert (start.lerp(w[name].detach(), 0.001) == start).float().mean() > 0.9
    for name, b in ema.module.named_buffers():  # batch-norm statistics: the student's own
        assert torch.equal(b, dict(student.named_buffers())[name].to(b.dtype))
    # the copy carries none of the student's hooks: its forward writes nothing into the student's taps
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in ema.module.modules())
    taps._active = True  # as inside a taps call of the student
    ema.module(torch.randn(1, 3, 4, 32, 32))
    assert taps._saved == {}


def test_the_ema_of_a_compiled_student_runs_its_own_weights():
    torch.manual_seed(0)
    student = build_model("c3d_tiny", 4, 4, 32)
    student.compile()  # MODEL.COMPILE (lazy: nothing compiles unless the student is called)
    ema = EMA(student, 0.9)
    assert ema.module._compiled_call_impl is None
    torch.nn.init.zeros_(ema.module.head.weight)
    torch.nn.init.constant_(ema.module.head.bias, 1.0)
    assert torch.equal(ema.module(torch.randn(2, 3, 4, 32, 32)), torch.ones(2, 4))


def test_a_checkpoint_of_another_precision_is_refused_by_name(dataset, tmp_path):
    """A checkpoint written before checkpoints recorded their precision, by a CPU run whose config said bf16
    (the CPU then trained fp32 whatever the config said): resumed in bf16 it is refused, naming both."""
    out = tmp_path / "old"
    path = write_config(tmp_path / "old.yaml", dataset, out, "ce", MODEL=MODELS, TRAIN={"EPOCHS": 1})
    ok(launch(["tools/train_net.py", "--config", path]))
    manifest_path = out / "checkpoints" / "epoch_0001" / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest.pop("precision") == "fp32"
    manifest["config"] = manifest["config"].replace("PRECISION: fp32", "PRECISION: bf16")
    manifest_path.write_text(json.dumps(manifest))
    proc = launch(["tools/train_net.py", "--config", path, "DEEPSPEED.PRECISION", "bf16", "TRAIN.EPOCHS", "2"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "epoch_0001: trained in fp32, resumed with DEEPSPEED.PRECISION bf16" in proc.stderr
    assert [r["epoch"] for r in records(out)] == [1]  # nothing lost, nothing trained
