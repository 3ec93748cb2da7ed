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

import torch
from tqdm import tqdm

from vidkd.data.loader import build_loader
from vidkd.distill.build import build_distiller, teachers_needed
from vidkd.engine import distributed
from vidkd.engine.evaluate import MultiViewEvaluator
from vidkd.errors import ConfigError
from vidkd.models import MODELS, build_from_config
from vidkd.models.base import split_heads
from vidkd.models.checkpoint import load_checkpoint, save_model

log = logging.getLogger("vidkd.engine")
CHECKPOINTS = "checkpoints"


def check_config(cfg):
    """What can be checked before anything runs: model names, teacher checkpoint list, files."""
    m = cfg.MODEL
    for key, name in [("MODEL.STUDENT", m.STUDENT)] + [(f"MODEL.TEACHERS[{i}]", n) for i, n in enumerate(m.TEACHERS)]:
        if name not in MODELS:
            raise ConfigError(f"config key {key}: unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
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


def lr_factor(step, warmup, total, base, minimum):
    """Linear warm-up to `base`, then cosine decay to `minimum`, as a factor of `base` (for LambdaLR)."""
    if step < warmup:
        return step / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return (minimum + (base - minimum) * 0.5 * (1 + math.cos(math.pi * progress))) / base


def deepspeed_config(cfg, device):
    gpu = device.type == "cuda"
    precision = cfg.DEEPSPEED.PRECISION if gpu else "fp32"
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
    """The student and the teachers the method needs, checkpoints loaded."""
    k, m = sum(heads.values()), cfg.MODEL
    student = build_from_config(cfg, m.STUDENT, k)
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
        teachers.append(teacher)
    return student, teachers


@torch.no_grad()
def evaluate(model, loader, heads, device, desc="test", show=True):
    """Multi-view evaluation (softmax averaged over n_clips x n_crops views); returns (metrics, evaluator)."""
    model.eval()
    views = loader.dataset.n_clips * loader.dataset.n_crops
    evaluator = MultiViewEvaluator(len(loader.dataset.manifest.samples), heads, views)
    loader.set_epoch(0)
    dtype = next(model.parameters()).dtype
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not show, leave=False):
        logits = model(batch["video"].to(device, dtype, non_blocking=True)).float()
        evaluator.update(batch["index"], batch["view"], batch["valid"], batch["targets"], split_heads(logits, heads))
    evaluator.synchronize()
    return evaluator.compute(), evaluator


class Trainer:
    def __init__(self, cfg, resume="auto"):
        check_config(cfg)
        self.cfg = cfg
        self.rank, self.world, self.device = distributed.init()
        import deepspeed

        torch.manual_seed(cfg.SEED)
        self.train_loader = build_loader(cfg, True, self.rank, self.world)
        self.test_loader = build_loader(cfg, False, self.rank, self.world)
        label_sets = self.train_loader.dataset.manifest.label_sets
        self.heads = {h: len(names) for h, names in label_sets.items()}
        self.class_names = label_sets
        student, teachers = build_models(cfg, self.heads)
        distiller = build_distiller(cfg, student, teachers, self.heads)
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
            model=distiller, optimizer=optimizer, lr_scheduler=schedule, config=deepspeed_config(cfg, self.device))
        self.ema = None
        if t.EMA:
            self.ema = torch.optim.swa_utils.AveragedModel(
                student, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(t.EMA_DECAY))
        self.out = cfg.OUTPUT_DIR
        self.start_epoch, self.history = 0, []
        if self.rank == 0:
            os.makedirs(self.out, exist_ok=True)
            with open(os.path.join(self.out, "config.yaml"), "w") as f:
                f.write(cfg.dump())
        if resume == "auto" and os.path.isfile(os.path.join(self.out, CHECKPOINTS, "latest")):
            self._resume()

    @property
    def distiller(self):
        return self.engine.module

    def _resume(self):
        _, state = self.engine.load_checkpoint(os.path.join(self.out, CHECKPOINTS), load_module_strict=False)
        self.start_epoch, self.history = state["epoch"], state["history"]
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        log.info("resumed from epoch %d", self.start_epoch)

    def _save(self, epoch):
        state = {"epoch": epoch, "history": self.history, "ema": self.ema.state_dict() if self.ema else None}
        self.engine.save_checkpoint(os.path.join(self.out, CHECKPOINTS), tag=f"epoch_{epoch:04d}",
                                    client_state=state, exclude_frozen_parameters=True)

    def train_epoch(self, epoch):
        self.distiller.train()
        self.distiller.epoch = epoch
        self.train_loader.set_epoch(epoch)
        sums, count, w_vit = {}, 0, []
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.cfg.TRAIN.EPOCHS}", unit="batch",
                   disable=self.rank != 0)
        dtype = next(self.distiller.student.parameters()).dtype
        for batch in bar:
            batch = {"video": batch["video"].to(self.device, dtype, non_blocking=True),
                     "targets": {h: y.to(self.device) for h, y in batch["targets"].items()}}
            _, losses = self.engine(batch)
            loss = sum(losses.values())
            self.engine.backward(loss)
            self.engine.step()
            if self.ema is not None:
                self.ema.update_parameters(self.distiller.student)
            n = len(batch["video"])
            count += n
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) * n
            if "w_vit" in self.distiller.stats:
                w_vit.append(self.distiller.stats["w_vit"].detach().float().cpu())
            bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in losses.items()})
        names = sorted(sums)
        reduced = distributed.all_reduce_sum([sums[k] for k in names] + [count], self.device)
        record = {"epoch": epoch + 1, "lr": self.scheduler.get_last_lr()[0],
                  "failed_videos": self.train_loader.tracker.count}
        record.update({f"loss/{k}": v / reduced[-1] for k, v in zip(names, reduced[:-1])})
        record["loss/total"] = sum(record[f"loss/{k}"] for k in names)
        if w_vit:
            w = torch.cat(w_vit)
            hist = distributed.all_reduce_sum(torch.histc(w, bins=10, min=0, max=1).tolist() + [float(w.sum())],
                                              self.device)
            record["datw/w_vit_mean"] = hist[-1] / sum(hist[:-1])
            record["datw/w_vit_hist"] = hist[:-1]
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
        return checksum

    def fit(self):
        """Train from `start_epoch` to TRAIN.EPOCHS; returns the final test metrics."""
        from torch.utils.tensorboard import SummaryWriter

        t = self.cfg.TRAIN
        writer = SummaryWriter(os.path.join(self.out, "tensorboard")) if self.rank == 0 else None
        metrics = {}
        for epoch in range(self.start_epoch, t.EPOCHS):
            start = time.time()
            record = self.train_epoch(epoch)
            record["student_checksum"] = self._synchronize_models()
            last = epoch + 1 == t.EPOCHS
            if last or (epoch + 1) % t.EVAL_PERIOD == 0:
                metrics, _ = evaluate(self.eval_model(), self.test_loader, self.heads, self.device,
                                      show=self.rank == 0)
                record.update({f"test/{k}": v for k, v in metrics.items()})
            record["seconds"] = time.time() - start
            self.history.append(record)
            if self.rank == 0:
                self._log(record, writer)
            if last or (epoch + 1) % t.CHECKPOINT_PERIOD == 0:
                self._save(epoch + 1)
        if self.rank == 0:
            writer.close()
            save_model(self.eval_model(), os.path.join(self.out, "student.pt"), heads=self.heads,
                       method=self.cfg.DISTILL.METHOD)
        return metrics

    def _log(self, record, writer):
        with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = {k: v for k, v in record.items() if k != "student_checksum"}  # the checksum is in metrics.jsonl only
        for key, value in shown.items():
            if isinstance(value, (int, float)):
                writer.add_scalar(key, value, record["epoch"])
        line = "  ".join(f"{k}={v:.4g}" for k, v in shown.items() if isinstance(v, float) and "hist" not in k)
        tqdm.write(f"epoch {record['epoch']}: {line}")
