"""The contract every distillation method keeps, and what they share.

A method is an `nn.Module` holding the student (trained) and any training-only modules (exits, branches,
regressors), and using the teachers (frozen: eval mode, no gradients, outputs in fp32), which it holds outside
its module tree (see `Distiller.__init__`). `forward(batch)` returns
`(student_logits, losses)`: the logits `[B, sum K]` of all heads side by side, and a dict of named loss
terms that the engine sums. A method may also fill `self.stats` with per-sample values in [0, 1] to log
(`{name: [B]}`, e.g. the DATW weight of a teacher): the engine logs each one's epoch mean and histogram as
`stats/<name>/mean` and `stats/<name>/hist`. Methods know nothing of DeepSpeed; the engine knows nothing of any method.

Several label heads (EPIC-KITCHENS-100: verb and noun) are one classifier of `sum K` outputs, split per head;
each loss term is applied per head and summed.

TASK face: a face model's output is its embedding `[B, D]` (returned where the logits are), and the method owns a
margin head over the training identities (FACE.MARGIN, `vidkd.distill.margins`): `ce` is its loss L_FR. Like every
training-only module it is not exported.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vidkd.distill.margins import HEADS
from vidkd.models.base import split_heads
from vidkd.models.taps import FeatureTaps, probe
from vidkd.tasks import input_size


def input_in_weight_dtype(module, args):
    """Forward pre-hook: the clip in the dtype of the module's weights (bf16 / fp16 under DeepSpeed's mixed
    precision), whatever the loader gave."""
    dtype = next(module.parameters()).dtype
    return (args[0].to(dtype),) + args[1:]


class Distiller(nn.Module):
    def __init__(self, student, teachers, heads, cfg):
        super().__init__()
        self.student = student
        # The frozen teachers are a plain tuple, not submodules, so the module the engine hands to DeepSpeed holds
        # only what trains. Inside it, DeepSpeed's bf16 / fp16 would cast their weights (the teachers' outputs,
        # hence the cached targets, would change with DEEPSPEED.PRECISION, and MODEL.TEACHER_AUTOCAST decides
        # their precision), broadcast them from rank 0 at start-up (every rank loads the same checkpoint anyway),
        # put their batch-norm statistics in every checkpoint, and under ZeRO-3 partition weights that never
        # change, only to gather them again at every step. The engine moves them to the device itself.
        self.teachers = tuple(t.requires_grad_(False).eval() for t in teachers)  # eval: BN statistics, dropout
        self.heads = dict(heads)  # head name -> classes, in the classifier's order
        self.cfg = cfg.DISTILL
        self.epoch = 0  # set by the engine (DKD's warm-up)
        self.cached = False  # set by the engine when the teachers' outputs come from the teacher-output cache
        self.num_samples = 0  # set by the engine: the training split's size (batch["index"] counts in it)
        self.seed = cfg.SEED
        self.stats = {}
        student.register_forward_pre_hook(input_in_weight_dtype, prepend=True)  # before channels-last: one copy
        self.student_taps = FeatureTaps(student)
        self.teacher_taps = [FeatureTaps(t) for t in self.teachers]
        self.margin = None  # TASK face: the margin head over the identities (L_FR)
        if cfg.TASK == "face":
            self.margin = HEADS[cfg.FACE.MARGIN](probe(student, input_size(cfg))["embed_dim"], sum(self.heads.values()))

    def split(self, logits):
        """`{head: [B, K_head]}` from the side-by-side logits."""
        return split_heads(logits, self.heads)

    def run_teacher(self, k, video, learn=False):
        """Teacher k's `(logits, stage features, embedding)`, in fp32. `video`: the input as the loader gives it
        (fp32), whatever the student's precision. Without `learn` they carry no gradient. With `learn`, gradients
        flow through the frozen teacher to the parts this method owns and inserts into it (prompts added by hooks
        on its stages, say): the teacher's own weights (requires_grad off) get none."""
        if learn:
            logits, features, embedding = self.teacher_taps[k](video)
            return logits.float(), [f.float() for f in features], embedding.float()
        with torch.inference_mode():
            logits, features, embedding = self.teacher_taps[k](video)

        def fp32(t):
            # A fresh copy made outside inference mode: an inference tensor cannot be saved for backward, and
            # losses do save teacher outputs (FitNet's MSE target; a learned phi_V's input when no pooling).
            return t.to(torch.float32, copy=True)

        return fp32(logits), [fp32(f) for f in features], fp32(embedding)

    def method_state(self):
        """State of the method that is not a parameter (a memory bank), as a dict of tensors: saved per rank in
        every checkpoint and given back to `load_method_state` on resume."""
        return {}

    def load_method_state(self, state):
        """Restore what `method_state` gave."""

    @classmethod
    def teacher_indices(cls, cfg):
        """Indices into MODEL.TEACHERS that the method runs (here: the one of DISTILL.TEACHER_INDEX)."""
        return [cfg.DISTILL.TEACHER_INDEX]

    tasks = ("video", "image")  # the TASKs whose models the method trains (face: with `ce` the margin loss)

    calibrates = False  # whether `calibrate` has anything to estimate (with this config)

    def calibrate(self, loader, device):
        """Estimate what the method needs from labelled videos its teachers did not train on (`loader`: test views
        of DATA.CALIBRATION_SPLIT), before training; deterministic, so a resumed run estimates the same."""

    def figures(self, batch):
        """Pictures of what the method learned, on a batch of test inputs (`{"input"}`), as `{file name:
        matplotlib Figure}`: the engine saves them as PNG files in OUTPUT_DIR at the end of a run (eval mode, no
        gradients)."""
        return {}

    def evaluated_models(self):
        """Models the method trains besides the student, by name (`{name: module}`, each taking the test input and
        giving logits): the engine evaluates each beside the student and logs `test/<name>/<metric>`."""
        return {}

    def teacher_targets(self, video):
        """What the method needs from its teachers for `video`, as a dict of tensors `[B, ...]` (what the
        teacher-output cache stores); a method whose teachers train, or whose targets change as it trains,
        raises ConfigError."""
        return {}

    def targets(self, batch):
        """The teachers' outputs for this batch: from the cache when the batch carries them, else live (never
        in a run on the cache: a batch without them there is a defect, not a reason to run the teachers)."""
        if "teacher" in batch:
            return batch["teacher"]
        if self.cached:
            raise RuntimeError("a batch of a run on the teacher-output cache carries no teacher outputs")
        return self.teacher_targets(batch["input"])

    def ce(self, logits, targets):
        """Cross-entropy with the labels, summed over heads; for TASK face, the margin head's loss on the embedding
        (`logits`) and the identities."""
        if self.margin is not None:
            return self.margin(logits, next(iter(targets.values())))[0]
        return sum(F.cross_entropy(z.float(), targets[h]) for h, z in self.split(logits).items())

    def per_head(self, loss_fn, z_s, z_t, targets):
        """`loss_fn(z_s_head, z_t_head, y_head)` summed over heads."""
        s, t = self.split(z_s), self.split(z_t)
        return sum(loss_fn(s[h], t[h], targets[h]) for h in self.heads)

    def student_state_dict(self):
        """What is exported: the student alone, without any training-only module."""
        return self.student.state_dict()
