"""The contract every distillation method keeps, and what they share.

A method is an `nn.Module` holding the student (trained), the teachers (frozen: eval mode, no gradients,
outputs in fp32) and any training-only modules (exits, branches, regressors). `forward(batch)` returns
`(student_logits, losses)`: the logits `[B, sum K]` of all heads side by side, and a dict of named loss
terms that the engine sums. A method may also fill `self.stats` with per-sample tensors to log (the DATW
weights). Methods know nothing of DeepSpeed; the engine knows nothing of any method.

Several label heads (EPIC-KITCHENS-100: verb and noun) are one classifier of `sum K` outputs, split per head;
each loss term is applied per head and summed.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vidkd.models.base import split_heads
from vidkd.models.taps import FeatureTaps


class Distiller(nn.Module):
    def __init__(self, student, teachers, heads, cfg):
        super().__init__()
        self.student = student
        self.teachers = nn.ModuleList(teachers)
        self.teachers.requires_grad_(False)
        self.heads = dict(heads)  # head name -> classes, in the classifier's order
        self.cfg = cfg.DISTILL
        self.epoch = 0  # set by the engine (DKD's warm-up)
        self.stats = {}
        self.student_taps = FeatureTaps(student)
        self.teacher_taps = [FeatureTaps(t) for t in self.teachers]

    def train(self, mode=True):
        super().train(mode)
        self.teachers.eval()  # frozen teachers stay in eval mode (batch-norm statistics, dropout)
        return self

    def split(self, logits):
        """`{head: [B, K_head]}` from the side-by-side logits."""
        return split_heads(logits, self.heads)

    def run_teacher(self, k, video):
        """Teacher k's `(logits, stage features, embedding)`, in fp32, carrying no gradient."""
        with torch.inference_mode():
            logits, features, embedding = self.teacher_taps[k](video)

        def fp32(t):
            # A fresh copy made outside inference mode: an inference tensor cannot be saved for backward, and
            # losses do save teacher outputs (FitNet's MSE target; a learned phi_V's input when no pooling).
            return t.to(torch.float32, copy=True)

        return fp32(logits), [fp32(f) for f in features], fp32(embedding)

    def teacher_targets(self, video):
        """What the method needs from its teachers for `video`, as a dict of tensors `[B, ...]` (what the
        teacher-output cache stores); a method whose teachers train, or whose targets change as it trains,
        raises ConfigError."""
        return {}

    def targets(self, batch):
        """The teachers' outputs for this batch: from the cache when the batch carries them, else live."""
        return batch["teacher"] if "teacher" in batch else self.teacher_targets(batch["video"])

    def ce(self, logits, targets):
        """Cross-entropy with the labels, summed over heads."""
        return sum(F.cross_entropy(z.float(), targets[h]) for h, z in self.split(logits).items())

    def per_head(self, loss_fn, z_s, z_t, targets):
        """`loss_fn(z_s_head, z_t_head, y_head)` summed over heads."""
        s, t = self.split(z_s), self.split(z_t)
        return sum(loss_fn(s[h], t[h], targets[h]) for h in self.heads)

    def student_state_dict(self):
        """What is exported: the student alone, without any training-only module."""
        return self.student.state_dict()
