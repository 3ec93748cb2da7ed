"""The training engine: DeepSpeed for every run (1 process or N), whatever the method.

config -> loaders -> student + teachers -> distiller (vidkd.distill) -> DeepSpeed engine -> per-epoch
meters, JSON-lines metrics, TensorBoard, checkpoints -> multi-view evaluation -> results table, plots and
the exported student. The engine sums the loss terms a method returns; it knows nothing of any method.
"""
import json
import logging
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from vidkd.data.loader import build_calibration_loader, build_loaders
from vidkd.distill.build import build_distiller, teachers_needed
from vidkd.engine import checkpointing, distributed, teacher_cache
from vidkd.engine.ema import EMA
from vidkd.engine.evaluate import MultiViewEvaluator
from vidkd.engine.verification import evaluate_pairs, plot_roc, split_pairs
from vidkd.errors import ConfigError, TrainingError
from vidkd.models import REGISTRIES, build_from_config
from vidkd.models.base import check_takes_input
from vidkd.models.base import split_heads
from vidkd.models.checkpoint import load_checkpoint, save_model
from vidkd.models.fast import speed_up
from vidkd.models.taps import probe
from vidkd.tasks import input_size

log = logging.getLogger("vidkd.engine")
CHECKPOINTS = "checkpoints"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_config(cfg):
    """What the config loader cannot check (defaults.RULES and RELATIONS, checked at load): the model registry,
    the teacher checkpoint list against the teachers the method needs, files."""
    m = cfg.MODEL
    for key, name in [("MODEL.STUDENT", m.STUDENT)] + [(f"MODEL.TEACHERS[{i}]", n) for i, n in enumerate(m.TEACHERS)]:
        if name not in REGISTRIES[cfg.TASK]:
            raise ConfigError(f"config key {key}: unknown model {name!r}; registered: "
                              f"{', '.join(sorted(REGISTRIES[cfg.TASK]))}")
    if len(m.TEACHER_CHECKPOINTS) != len(m.TEACHERS):
        raise ConfigError(f"config key MODEL.TEACHER_CHECKPOINTS has {len(m.TEACHER_CHECKPOINTS)} entries, "
                          f"MODEL.TEACHERS {len(m.TEACHERS)}")
    needed = teachers_needed(cfg)
    if needed and max(needed) >= len(m.TEACHERS):
        raise ConfigError(f"config key DISTILL.METHOD {cfg.DISTILL.METHOD!r} needs teacher {max(needed)}, "
                          f"MODEL.TEACHERS has {len(m.TEACHERS)}")
    files = [("MODEL.STUDENT_CHECKPOINT", m.STUDENT_CHECKPOINT)]
    files += [(f"MODEL.TEACHER_CHECKPOINTS[{i}]", m.TEACHER_CHECKPOINTS[i]) for i in needed]
    for key, path in files:
        if path and not os.path.exists(path):
            raise ConfigError(f"config key {key}: checkpoint {path!r} not found")


def param_groups(module, weight_decay):
    """Trainable parameters: weights with weight decay; norms, biases and other 1-D parameters without."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def upgrade_meters(meters):
    """The meters of an epoch in progress as this version keeps them: checkpoints written before methods' stats
    were generic hold the dual teacher's `w_vit` beside the sums, not under `stats`."""
    if "stats" in meters:
        return meters
    old = {k: v for k, v in meters.items() if k != "w_vit"}
    return {**old, "stats": {"w_vit": meters["w_vit"]} if len(meters["w_vit"]) else {}}


def lr_factor(step, warmup, total, base, minimum):
    """Linear warm-up to `base`, then cosine decay to `minimum`, as a factor of `base` (for LambdaLR)."""
    if step < warmup:
        return step / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return (minimum + (base - minimum) * 0.5 * (1 + math.cos(math.pi * progress))) / base


def check_precision(cfg, device):
    """DEEPSPEED.PRECISION against what the device's DeepSpeed accelerator runs."""
    if cfg.DEEPSPEED.PRECISION == "fp16" and device.type == "cpu":
        raise ConfigError("config key DEEPSPEED.PRECISION fp16: DeepSpeed's CPU accelerator has no fp16 "
                          "(bf16 and fp32 run on the CPU)")


def check_student_runs(cfg, student):
    """A training and a test clip through the student in the training precision on its device, before the run
    starts (their sizes were checked in fp32 when it was built): a layer with no kernel for that dtype there (on
    the CPU, X3D's 3D average pool has none for bf16) fails here, by name."""
    try:
        for crop in ("TRAIN_CROP_SIZE", "TEST_CROP_SIZE"):
            probe(student, input_size(cfg, crop))
    except (RuntimeError, NotImplementedError) as e:
        device = next(student.parameters()).device
        raise ConfigError(f"config key DEEPSPEED.PRECISION {cfg.DEEPSPEED.PRECISION}: the student "
                          f"{cfg.MODEL.STUDENT} cannot run in it on {device.type} ({str(e).splitlines()[0]})")


def check_steps(cfg, loader, world):
    """A run must take an optimiser step: the training split gives `loader.batches_per_epoch` whole batches per
    epoch and rank (the last partial batch is dropped), one step every TRAIN.GRAD_ACCUM_STEPS of them."""
    t, batches = cfg.TRAIN, loader.batches_per_epoch
    if batches * t.EPOCHS < t.GRAD_ACCUM_STEPS:
        raise ConfigError(f"config keys TRAIN.BATCH_SIZE {t.BATCH_SIZE}, TRAIN.EPOCHS {t.EPOCHS} and "
                          f"TRAIN.GRAD_ACCUM_STEPS {t.GRAD_ACCUM_STEPS}: split {loader.tracker.split!r} "
                          f"({loader.tracker.num_videos} videos, {world} rank(s)) gives {batches} whole batch(es) "
                          f"per epoch and rank, so the run would take no optimiser step")


def deepspeed_config(cfg):
    precision = cfg.DEEPSPEED.PRECISION
    ds = {
        "train_micro_batch_size_per_gpu": cfg.TRAIN.BATCH_SIZE,
        "gradient_accumulation_steps": cfg.TRAIN.GRAD_ACCUM_STEPS,
        "zero_optimization": {"stage": cfg.DEEPSPEED.ZERO_STAGE},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
    }
    if cfg.TRAIN.CLIP_GRAD > 0:
        ds["gradient_clipping"] = cfg.TRAIN.CLIP_GRAD
    return ds


def build_models(cfg, heads):
    """The student and the teachers the method needs, checkpoints loaded, with the config's fast paths
    (vidkd.models.fast), on the CPU in fp32."""
    k, m = sum(heads.values()), cfg.MODEL
    student = build_from_config(cfg, m.STUDENT, k)
    check_takes_input(student, cfg, "TEST_CROP_SIZE")  # the evaluation's clips
    if m.STUDENT_CHECKPOINT:
        log.info("student: %s", load_checkpoint(student, m.STUDENT_CHECKPOINT, m.PARTIAL_LOAD))
    teachers = []
    for i in teachers_needed(cfg):
        teacher = build_from_config(cfg, m.TEACHERS[i], k)
        if m.TEACHER_CHECKPOINTS[i]:
            report = load_checkpoint(teacher, m.TEACHER_CHECKPOINTS[i], m.PARTIAL_LOAD)
            log.info("teacher %s: %s", m.TEACHERS[i], report)
        else:
            log.warning("teacher %s has no checkpoint: it teaches from random weights", m.TEACHERS[i])
        teachers.append(speed_up(teacher, m, teacher=True))
    return speed_up(student, m), teachers


def cast_for_training(module, dtype):
    """What DeepSpeed's bf16 / fp16 does to the module it wraps, done before it is wrapped, so that every tool
    (training, tools/cache_teachers.py) runs the same weights: parameters in `dtype`, and batch-norm statistics
    too (PyTorch's batch norm takes weights and statistics of one dtype; DeepSpeed casts no buffer). Other
    buffers keep their dtype."""
    for p in module.parameters():
        p.data = p.data.to(dtype)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.running_mean is not None:
            m.running_mean.data, m.running_var.data = m.running_mean.to(dtype), m.running_var.to(dtype)
    return module


def build_training(cfg, heads, device):
    """The distiller (student, training-only heads, teachers) exactly as training runs it: on `device`, what
    DeepSpeed wraps in DEEPSPEED.PRECISION, the teachers (outside it) in fp32."""
    student, teachers = build_models(cfg, heads)
    distiller = build_distiller(cfg, student, [t.to(device) for t in teachers], heads)
    return cast_for_training(distiller.to(device), PRECISIONS[cfg.DEEPSPEED.PRECISION])


@torch.no_grad()
def evaluate(model, loader, heads, device, desc="test", show=True):
    """Multi-view evaluation (softmax averaged over n_clips x n_crops views); returns (metrics, evaluator)."""
    model.eval()
    views = loader.dataset.n_clips * loader.dataset.n_crops
    evaluator = MultiViewEvaluator(len(loader.dataset.manifest.samples), heads, views)
    loader.set_epoch(0)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not show, leave=False):
        # fp32 clips: the EMA and test_net's models are fp32; a bf16 / fp16 student casts them itself
        logits = model(batch["input"].to(device, non_blocking=True)).float()
        evaluator.update(batch["index"], batch["view"], batch["valid"], batch["targets"], split_heads(logits, heads))
    evaluator.synchronize()
    return evaluator.compute(), evaluator


class Trainer:
    def __init__(self, cfg, resume="auto"):
        check_config(cfg)
        self.cfg = cfg
        self.rank, self.world, self.device = distributed.init()
        check_precision(cfg, self.device)
        import deepspeed

        if cfg.TRAIN.DETERMINISTIC:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.SEED)
        self.train_loader, self.test_loader = build_loaders(cfg, self.rank, self.world, teacher_cache.views(cfg))
        check_steps(cfg, self.train_loader, self.world)
        label_sets = self.train_loader.dataset.manifest.label_sets
        self.heads = {h: len(names) for h, names in label_sets.items()}
        if cfg.MODEL.NUM_CLASSES and cfg.MODEL.NUM_CLASSES != sum(self.heads.values()):
            raise ConfigError(f"config key MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES}, but the training manifest "
                              f"has {sum(self.heads.values())} classes ({self.heads}): set it to 0 or to that")
        self.class_names = label_sets
        # TASK face: the held-out identities' pairs, verified at every evaluation (their scores kept for the ROC)
        self.pairs = split_pairs(cfg, self.test_loader.dataset.manifest) if cfg.TASK == "face" else None
        self.verified = {}
        distiller = build_training(cfg, self.heads, self.device)
        distiller.num_samples = len(self.train_loader.dataset.manifest.samples)
        if distiller.calibrates:
            for teacher in distiller.teachers:  # the calibration split is read as test views
                check_takes_input(teacher, cfg, "TEST_CROP_SIZE")
            distiller.calibrate(build_calibration_loader(cfg, self.train_loader.dataset.manifest), self.device)
        check_student_runs(cfg, distiller.student)
        s, t = cfg.SOLVER, cfg.TRAIN
        groups = param_groups(distiller, s.WEIGHT_DECAY)
        if s.OPTIMIZER == "sgd":
            optimizer = torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=s.BASE_LR)
        steps = max(len(self.train_loader) // t.GRAD_ACCUM_STEPS, 1)
        total, warmup = steps * t.EPOCHS, int(steps * s.WARMUP_EPOCHS)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup, total, s.BASE_LR, s.MIN_LR))
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=distiller, optimizer=optimizer, lr_scheduler=schedule, config=deepspeed_config(cfg))
        if self.train_loader.dataset.views:  # the loader's workers read the teachers' outputs with the clips
            self.train_loader.dataset.teacher_cache = teacher_cache.prepare(
                cfg, self.distiller, self.train_loader.dataset, self.device, self.rank, self.world)
            self.distiller.cached = True
        self.ema = EMA(self.distiller.student, t.EMA_DECAY) if t.EMA else None
        self.out, self.checkpoints = cfg.OUTPUT_DIR, os.path.join(cfg.OUTPUT_DIR, CHECKPOINTS)
        # Where training stands: epochs completed, batches done in the epoch in progress, and the meters of
        # that partial epoch on this rank (None at an epoch's start).
        self.position, self.meters, self.history = {"epoch": 0, "batch": 0}, None, []
        self.bad_steps = {"total": 0, "in_a_row": 0}  # steps skipped for a non-finite loss
        if resume == "auto":
            self._resume()
        elif checkpointing.complete(self.checkpoints):
            raise ConfigError(f"{self.checkpoints}: holds checkpoints of an earlier run; continue it with "
                              f"--resume auto, or train afresh in another OUTPUT_DIR (vidkd does not overwrite them)")
        if self.rank == 0:
            os.makedirs(self.out, exist_ok=True)
            with open(os.path.join(self.out, "config.yaml"), "w") as f:
                f.write(cfg.dump())
            with open(os.path.join(self.out, "metrics.jsonl"), "w") as f:  # the records up to the resumed step
                f.writelines(json.dumps(r) + "\n" for r in self.history)

    @property
    def distiller(self):
        return self.engine.module

    def _resume(self):
        manifest = checkpointing.resume_point(self.checkpoints, self.cfg.dump())
        if manifest is None:
            return
        precision = self.cfg.DEEPSPEED.PRECISION
        # Checkpoints from before the precision was recorded: the CPU trained fp32 whatever the config said.
        trained = manifest.get("precision") or (precision if self.device.type == "cuda" else "fp32")
        if trained != precision:
            raise ConfigError(f"{self.checkpoints}/{manifest['tag']}: trained in {trained}, resumed with "
                              f"DEEPSPEED.PRECISION {precision}: resume it with DEEPSPEED.PRECISION {trained}")
        state = checkpointing.load(self.engine, self.checkpoints, manifest["tag"])
        self.position, self.history, self.bad_steps = state["position"], state["history"], state["bad_steps"]
        if self.ema is not None:  # (older checkpoints hold torch's AveragedModel, with its step count)
            self.ema.load_state_dict({k: v for k, v in state["ema"].items() if k != "n_averaged"})
        # Per-rank state: the meters and batch-norm statistics of an epoch in progress, the method's own state.
        keeps_state = bool(state.get("method_state"))
        if self.position["batch"] or keeps_state:
            if state["world_size"] != self.world:
                raise ConfigError(f"{self.checkpoints}/{manifest['tag']}: saved by {state['world_size']} ranks "
                                  f"{'mid-epoch' if self.position['batch'] else 'with per-rank method state'}, resumed "
                                  f"with {self.world}: resume with as many ranks")
            own = checkpointing.load_rank_state(self.checkpoints, manifest["tag"], self.rank)
            self.distiller.load_method_state(own.get("method", {}))
        if self.position["batch"]:
            self.meters = upgrade_meters(own["meters"])
            with torch.no_grad():  # this rank's batch-norm statistics of the epoch in progress
                for name, buffer in self._rank_buffers().items():
                    buffer.copy_(own["buffers"][name])
        log.info("resumed from epoch %d, batch %d (checkpoint %s)", self.position["epoch"], self.position["batch"],
                 manifest["tag"])

    def _rank_buffers(self):
        """Buffers each rank updates from its own batches (batch-norm statistics) in the trained modules;
        averaged over the ranks only at epoch ends."""
        saved = self.distiller.state_dict(keep_vars=True)  # not the buffers a seed rebuilds (fixed SDD projections)
        return {n: b for n, b in self.distiller.named_buffers() if n in saved}

    def _save(self, meters):
        """Checkpoint the current position (`self.position`); `meters`: this rank's partial-epoch meters, saved
        with its own batch-norm statistics in its rank file."""
        student = self.distiller.student
        broken = [n for n, p in student.named_parameters() if not torch.isfinite(p).all()]
        if broken:
            raise TrainingError(f"the student's weights are not finite ({', '.join(broken[:5])}); the last good "
                                f"checkpoint in {self.checkpoints} is kept")
        epoch, batch = self.position["epoch"], self.position["batch"]
        tag = f"epoch_{epoch:04d}" + (f"_batch_{batch:06d}" if batch else "")
        state = {"position": dict(self.position), "precision": self.cfg.DEEPSPEED.PRECISION,
                 "history": self.history, "bad_steps": dict(self.bad_steps),
                 "world_size": self.world, "ema": self.ema.state_dict() if self.ema else None}
        method = self.distiller.method_state()
        state["method_state"] = bool(method)
        own = {"meters": meters, "buffers": self._rank_buffers(), "method": method}
        checkpointing.save(self.engine, self.checkpoints, tag, state, own, self.cfg.dump(),
                           self.cfg.TRAIN.KEEP_CHECKPOINTS)

    def _check_step(self, losses):
        """(whether any rank lost its batch, names of the non-finite loss terms if any rank has one), the same
        decision on every rank. `losses` is None for a lost batch."""
        local = [name for name, v in (losses or {}).items() if not torch.isfinite(v.detach()).all()]
        lost, bad = distributed.all_reduce_sum([float(losses is None), float(bool(local))], self.device)
        return lost > 0, (local or ["(on another rank)"]) if bad else []

    def _skip_step(self, bad, epoch, batch):
        self.bad_steps["total"] += 1
        self.bad_steps["in_a_row"] += 1
        if self.rank == 0:
            log.warning("epoch %d, batch %d: non-finite loss term(s) %s; step skipped (%d in a row, %d in all)",
                        epoch + 1, batch + 1, ", ".join(bad), self.bad_steps["in_a_row"], self.bad_steps["total"])
        if self.bad_steps["in_a_row"] >= self.cfg.TRAIN.MAX_BAD_STEPS:
            saved = checkpointing.complete(self.checkpoints)
            raise TrainingError(f"{self.bad_steps['in_a_row']} steps in a row had a non-finite loss (last: "
                                f"{', '.join(bad)}; TRAIN.MAX_BAD_STEPS); the last good checkpoint: "
                                f"{os.path.join(self.checkpoints, saved[0]['tag']) if saved else 'none'}")

    def train_epoch(self, epoch):
        """Train epoch `epoch` from batch `self.position["batch"]` on; returns its record (meters reduced over
        the ranks). Each step draws its random numbers from (SEED, epoch, batch, rank) alone, and the loader's
        from (SEED, epoch, index): a run resumed at any step repeats the uninterrupted one exactly."""
        t = self.cfg.TRAIN
        self.distiller.train()
        self.distiller.epoch = epoch
        start = self.position["batch"]
        self.train_loader.set_epoch(epoch, start)
        m = self.meters or {"sums": {}, "count": 0, "stats": {}, "failures": {}, "skipped": 0}
        self.meters = None
        self.train_loader.tracker.epoch_failures = m["failures"]
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{t.EPOCHS}", unit="batch", initial=start,
                   total=self.train_loader.batches_per_epoch, disable=self.rank != 0)
        for batch_index, batch in enumerate(bar, start):
            self.position["batch"] = batch_index + 1
            step_rng = np.random.default_rng([self.cfg.SEED, epoch, batch_index, self.rank])
            torch.manual_seed(int(step_rng.integers(2**62)))
            losses = None  # a batch lost with a loader worker (its videos are counted as failed)
            if batch is not None:
                # The clip in fp32, as the teachers take it (the student casts it to its own dtype).
                inputs = {"input": batch["input"].to(self.device, non_blocking=True), "index": batch["index"],
                          "targets": {h: y.to(self.device) for h, y in batch["targets"].items()}}
                if "teacher" in batch:  # stored as fp16, used as fp32 like a live teacher's outputs
                    inputs["teacher"] = {k: v.to(self.device, non_blocking=True).float()
                                         for k, v in batch["teacher"].items()}
                _, losses = self.engine(inputs)
            lost, bad = self._check_step(losses)
            if lost:  # every rank skips the step
                continue
            if bad:
                m["skipped"] += 1
                self._skip_step(bad, epoch, batch_index)
            else:
                self.bad_steps["in_a_row"] = 0
                self.engine.backward(sum(losses.values()))
                self.engine.step()
                if self.ema is not None and self.engine.micro_steps % t.GRAD_ACCUM_STEPS == 0:  # an optimiser step
                    self.ema.update(self.distiller.student)
                n = len(inputs["input"])
                m["count"] += n
                for name, value in losses.items():
                    m["sums"][name] = m["sums"].get(name, 0.0) + float(value.detach()) * n
                for name, values in self.distiller.stats.items():
                    m["stats"][name] = torch.cat([m["stats"].get(name, torch.zeros(0)), values.detach().float().cpu()])
                bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in losses.items()})
            last = batch_index + 1 == self.train_loader.batches_per_epoch
            if (t.CHECKPOINT_STEPS and (batch_index + 1) % t.CHECKPOINT_STEPS == 0 and not last
                    and self.engine.micro_steps % t.GRAD_ACCUM_STEPS == 0):
                m["failures"] = dict(self.train_loader.tracker.epoch_failures)
                self._save(m)
        names = sorted(m["sums"])
        reduced = distributed.all_reduce_sum([m["sums"][k] for k in names] + [m["count"]], self.device)
        if not reduced[-1]:
            raise TrainingError(f"epoch {epoch + 1}: every step was skipped (a non-finite loss, or the batch lost with "
                                f"a loader worker): the student did not train")
        record = {"epoch": epoch + 1, "lr": self.scheduler.get_last_lr()[0],
                  "failed_videos": self.train_loader.tracker.count, "skipped_steps": m["skipped"]}
        record.update({f"loss/{k}": v / reduced[-1] for k, v in zip(names, reduced[:-1])})
        record["loss/total"] = sum(record[f"loss/{k}"] for k in names)
        for name in sorted(m["stats"]):  # every rank logs the same names: the method's, from its first step
            v = m["stats"][name]
            hist = distributed.all_reduce_sum(torch.histc(v, bins=10, min=0, max=1).tolist() + [float(v.sum())],
                                              self.device)
            record[f"stats/{name}/mean"] = hist[-1] / sum(hist[:-1])
            record[f"stats/{name}/hist"] = hist[:-1]
        return record

    def eval_model(self):
        """The model evaluated and exported: the EMA of the student when on, else the student."""
        return self.ema.module if self.ema is not None else self.distiller.student

    def _synchronize_models(self):
        """Average the ranks' batch-norm statistics (each rank's come from its own batches: DeepSpeed does not
        broadcast buffers), then check that the ranks hold the same student (and EMA); raises if not. Returns
        the checksum of the evaluated model (the sum of its state dict's entries)."""
        models = [("student", self.distiller.student)] + ([("EMA student", self.ema.module)] if self.ema else [])
        checksum = None
        for what, model in models:
            distributed.average_batchnorm_stats(model, self.device)
            checksum = distributed.check_replicas(model, self.device, what)
        for model in self.distiller.evaluated_models().values():  # FBT's fusion model: its own statistics
            distributed.average_batchnorm_stats(model, self.device)
        return checksum

    def evaluate(self, model, name="test"):
        """The test metrics of `model`: classification over the test views, or for TASK face verification of the
        test split's pairs (whose scores are kept in `self.verified[name]` for the ROC curve)."""
        if self.cfg.TASK != "face":
            return evaluate(model, self.test_loader, self.heads, self.device, desc=name, show=self.rank == 0)[0]
        metrics, scores, same = evaluate_pairs(model, self.test_loader, self.pairs, self.cfg, self.device, name,
                                               self.rank == 0)
        self.verified[name] = (scores, same)
        return metrics

    def fit(self):
        """Train from `self.position` to TRAIN.EPOCHS; returns the final test metrics."""
        from torch.utils.tensorboard import SummaryWriter

        t = self.cfg.TRAIN
        writer = SummaryWriter(os.path.join(self.out, "tensorboard")) if self.rank == 0 else None
        metrics = {}
        for epoch in range(self.position["epoch"], t.EPOCHS):
            start = time.time()
            record = self.train_epoch(epoch)
            record["student_checksum"] = self._synchronize_models()
            last = epoch + 1 == t.EPOCHS
            if last or (epoch + 1) % t.EVAL_PERIOD == 0:
                metrics = self.evaluate(self.eval_model())
                record.update({f"test/{k}": v for k, v in metrics.items()})
                for name, model in self.distiller.evaluated_models().items():  # FBT's fusion model
                    record.update({f"test/{name}/{k}": v for k, v in self.evaluate(model, name).items()})
            record["seconds"] = time.time() - start
            self.history.append(record)
            if self.rank == 0:
                self._log(record, writer)
            self.position = {"epoch": epoch + 1, "batch": 0}
            if last or (epoch + 1) % t.CHECKPOINT_PERIOD == 0:
                self._save(None)
        if self.rank == 0:
            writer.close()
            save_model(self.eval_model(), os.path.join(self.out, "student.pt"), heads=self.heads,
                       method=self.cfg.DISTILL.METHOD)
            self._save_figures()
            if self.verified:
                plot_roc({"student" if n == "test" else n: v for n, v in self.verified.items()},
                         os.path.join(self.out, "roc.png"), f"{self.cfg.DISTILL.METHOD}: {self.cfg.MODEL.STUDENT} on "
                                                            f"{self.cfg.DATA.TEST_SPLIT} pairs")
        return metrics

    def _save_figures(self):
        """The method's pictures (`Distiller.figures`) of the first test batch, as PNG files in OUTPUT_DIR."""
        self.test_loader.set_epoch(0)
        batch = next((b for b in self.test_loader if b is not None), None)
        if batch is None:
            return
        self.distiller.eval()
        with torch.no_grad():
            figures = self.distiller.figures({"input": batch["input"].to(self.device)})
        self.distiller.train()
        for name, figure in figures.items():
            figure.savefig(os.path.join(self.out, name), dpi=80)
            log.info("%s written", os.path.join(self.out, name))

    def _log(self, record, writer):
        with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = {k: v for k, v in record.items() if k != "student_checksum"}  # the checksum is in metrics.jsonl only
        for key, value in shown.items():
            if isinstance(value, (int, float)):
                writer.add_scalar(key, value, record["epoch"])
        line = "  ".join(f"{k}={v:.4g}" for k, v in shown.items() if isinstance(v, float) and "hist" not in k)
        tqdm.write(f"epoch {record['epoch']}: {line}")
