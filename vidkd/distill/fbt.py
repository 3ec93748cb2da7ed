"""FBT: fuse before transfer (METHODS.md section 4; paper 002), for image models of any family.

The fusion model `F = head_T o stage4_T o L2G o stage3_S o stage2_S o stage1_S`:
- the student's first stages (all but the last) are the student's own: F reads the map the student's stage 3 gives
  in the same forward, so their parameters are the student's (the same objects) and learn from both models' losses;
- L2G turns that map `[B, C_s, H_s, W_s]` into what the teacher's stage 3 gives (its width, grid and layout): for a
  CNN teacher a 1x1 conv + BN, resized to the teacher's grid; otherwise a patch embedding (a conv of kernel and
  stride H_s / H_t, then resized to the teacher's grid, then layer norm) and one Swin block (window 7 or the
  largest divisor of the grid below it, no shift;
  DISTILL.FBT_L2G_BLOCK false leaves it out); a token teacher's class token is a learned token of L2G's;
- `stage4_T` and `head_T` are a trainable copy of the teacher's: everything after its stage 3 (found by autograd:
  what a gradient reaches from the logits back to stage 3's output). The frozen teacher stays as it is. The copy's
  earlier part is frozen and runs on one blank image per batch only (its stage-3 output is replaced by L2G's), so
  a test crop other than the training crop reaches the tail through L2G alone.
Knowledge `K = {f, p}`: the pooled final feature (the embedding) and the logits of T, S and F. For each pair
`(i, j)` of DISTILL.FBT_PAIRS (i teaches j; "ts", "tf", "fs"):
    L(K_i, K_j) = InfoNCE(P_i(f_i), P_j(f_j); tau) + L_OFA(p_j, p_i)
with `P` a Linear projection per model to DISTILL.FBT_DIM (unit vectors), `tau` learnable (DISTILL.FBT_TEMPERATURE
at the start, 1 / tau at most 100 as in CLIP), and i's feature and logits detached (knowledge flows T -> F -> S;
i's projection still learns). DISTILL.FBT_INFONCE / FBT_OFA switch either term off (the paper's ablations (F),
(G)); dropping "tf" from the pairs is ablation (C).
L = CE + beta * sum InfoNCE + alpha * sum L_OFA, beta = DISTILL.FEATURE_WEIGHT, alpha = DISTILL.LOGIT_WEIGHT.
The fusion model's test accuracy is logged beside the student's (`evaluated_models`).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock

from vidkd.distill.base import Distiller, input_in_weight_dtype
from vidkd.distill.blocks import heads_for
from vidkd.distill.losses import info_nce, ofa_loss
from vidkd.engine.ema import plain_copy
from vidkd.errors import ConfigError
from vidkd.models.taps import from_grid, pool_embedding, probe
from vidkd.tasks import input_size

MAX_SCALE = 100.0  # 1 / tau at most, as CLIP clamps its learned temperature
WINDOW = 7  # Swin's; on a grid it does not divide, the largest divisor below it (no padded tokens in attention)


def resize(x, grid):
    """A channels-first map at `grid`: averaged down, or bilinearly up."""
    if tuple(x.shape[-2:]) == tuple(grid):
        return x
    if all(a >= b for a, b in zip(x.shape[-2:], grid)):
        return F.adaptive_avg_pool2d(x, grid)
    return F.interpolate(x, size=tuple(grid), mode="bilinear", align_corners=False)


class L2G(nn.Module):
    """The student's stage-3 map -> the teacher's stage-3 output, in its layout."""

    def __init__(self, student_stage, teacher_stage, layout, prefix, block=True):
        super().__init__()
        c_in, c_out, self.grid, self.layout = (student_stage["channels"], teacher_stage["channels"],
                                               teacher_stage["grid"], layout)
        if layout == "NCHW":  # a CNN teacher: 1x1 conv + BN
            self.embed, self.norm, self.block = nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), None
        else:  # patch embedding + one Swin block
            k = max(1, student_stage["grid"][0] // self.grid[0])
            self.embed, self.norm = nn.Conv2d(c_in, c_out, k, stride=k), nn.LayerNorm(c_out)
            window = [next(w for w in range(min(WINDOW, side), 0, -1) if side % w == 0) for side in self.grid]
            self.block = SwinTransformerBlock(c_out, self.grid, heads_for(c_out), window_size=window) if block else None
        self.prefix = nn.Parameter(torch.zeros(1, prefix, c_out)) if prefix else None  # a class token of its own
        if prefix:
            nn.init.trunc_normal_(self.prefix, std=0.02)

    def forward(self, x):
        x = resize(self.embed(x), self.grid)
        if self.layout == "NCHW":
            return self.norm(x)
        x = self.norm(x.permute(0, 2, 3, 1))  # [B, H, W, C]
        if self.block is not None:
            x = self.block(x)
        prefix = self.prefix.expand(len(x), -1, -1) if self.prefix is not None else None
        return from_grid(x.permute(0, 3, 1, 2), self.layout, prefix)


class Fusion(nn.Module):
    """F, given the student's stage-3 map (`from_stage`), or an image (`forward`: the fusion model evaluated)."""

    def __init__(self, student_taps, teacher, size, probes, block=True):
        """`probes`: `(student's, teacher's)` `probe` results at `size`."""
        super().__init__()
        self._student_taps = (student_taps,)  # not a submodule: the student is the distiller's
        self._frozen = []  # the copy's modules before the tail
        self.copy = plain_copy(teacher).requires_grad_(True)
        self.copy.__dict__.pop("forward", None)  # the teacher's bf16 autocast (MODEL.TEACHER_AUTOCAST): not the copy's
        self.size = tuple(size)  # the training input's, on which the copy's frozen front runs (its output replaced)
        self.copy.register_forward_pre_hook(input_in_weight_dtype, prepend=True)
        stage3 = self.copy.get_submodule(self.copy.stage_names[-2])
        self._replacement, self._saved = None, {}
        stage3.register_forward_hook(lambda module, args, output: self._replacement)
        self.copy.embed_module().register_forward_pre_hook(lambda module, args: self._saved.update(embed=args[0]))
        raw = self._find_tail(stage3, size)
        s_stage, t_stage = (found["stages"][-2] for found in probes)
        layout = teacher.layouts()[-2]
        prefix = raw[1] - math.prod(t_stage["grid"]) if layout == "tokens" else 0
        self.l2g = L2G(s_stage, t_stage, layout, prefix, block)

    def _find_tail(self, stage3, size):
        """Makes trainable what a gradient from the logits reaches back to the teacher's stage-3 output (stage 4,
        the head); the rest stays frozen, in eval mode. Returns that output's shape."""
        shape = []

        def stand_in(module, args, output):
            shape.extend(output.shape)
            return output.detach().requires_grad_()

        hook = stage3.register_forward_hook(stand_in, prepend=True)
        try:
            self.copy.eval()(torch.zeros(1, 3, *size, device=next(self.copy.parameters()).device)).sum().backward()
        finally:
            hook.remove()
        for p in self.copy.parameters():
            p.requires_grad_(p.grad is not None)
            p.grad = None
        self._frozen = [m for m in self.copy.modules()
                        if any(True for _ in m.parameters(recurse=False))
                        and not any(p.requires_grad for p in m.parameters(recurse=False))]
        self.train()
        return shape

    def train(self, mode=True):
        """Also the student's mode (the fusion model is evaluated on its stages); the copy's frozen modules stay
        in eval mode (their batch-norm statistics stay the teacher's), each module alone: a frozen ViT holds its
        trainable blocks."""
        super().train(mode)
        for m in self._frozen:
            m.training = False
        self._student_taps[0].model.train(mode)
        return self

    def from_stage(self, stage3):
        """`(logits, embedding)` of F on the student's stage-3 map (the copy's frozen front runs on one blank image
        of the training size: what it gives is replaced)."""
        self._replacement = self.l2g(stage3)
        try:
            logits = self.copy(stage3.new_zeros(1, 3, *self.size, dtype=torch.float32))
        finally:
            self._replacement = None
        embedding = pool_embedding(self._saved.pop("embed"), self.copy.embed_module(), len(stage3))
        return logits, embedding

    def forward(self, image):
        return self.from_stage(self._student_taps[0](image)[1][-2])[0]


class FBT(Distiller):
    tasks = ("image",)

    def __init__(self, student, teachers, heads, cfg):
        super().__init__(student, teachers, heads, cfg)
        c, size, teacher = self.cfg, input_size(cfg), self.teachers[0]
        for who, model in (("student", student), ("teacher", teacher)):
            if len(model.stage_names) < 2:
                raise ConfigError(f"DISTILL.METHOD fbt: the {who} {model.name} has {len(model.stage_names)} stage; "
                                  f"the fusion model joins the student's stages before its last to the teacher's last")
        members, probes = set("".join(c.FBT_PAIRS)), (probe(student, size), probe(teacher, size))
        self.fusion = Fusion(self.student_taps, teacher, size, probes, c.FBT_L2G_BLOCK) if "f" in members else None
        if self.fusion is not None and "tf" not in c.FBT_PAIRS:  # ablation (C): F learns from no one; fixed, it
            self.fusion.requires_grad_(False)  # does not decay either (AdamW would shrink weights without gradients)
        if c.FBT_INFONCE:
            widths = {"s": probes[0]["embed_dim"], "t": probes[1]["embed_dim"]}
            widths["f"] = widths["t"]
            self.project = nn.ModuleDict({m: nn.Linear(widths[m], c.FBT_DIM) for m in sorted(members)})  # P_i
            self.log_scale = nn.Parameter(torch.tensor([math.log(1 / c.FBT_TEMPERATURE)]))  # log(1 / tau)

    def teacher_targets(self, x):
        logits, _, embedding = self.run_teacher(0, x)
        return {"logits": logits, "embedding": embedding}

    def evaluated_models(self):
        return {"fusion": self.fusion} if self.fusion is not None else {}

    def forward(self, batch):
        x, y, c = batch["input"], batch["targets"], self.cfg
        targets = self.targets(batch)
        z_s, features, e_s = self.student_taps(x)
        knowledge = {"t": (targets["logits"], targets["embedding"]), "s": (z_s, e_s)}
        if self.fusion is not None:
            knowledge["f"] = self.fusion.from_stage(features[-2])
        losses = {"ce": c.CE_WEIGHT * self.ce(z_s, y)}
        if c.FBT_INFONCE:
            scale = self.log_scale.float().exp().clamp(max=MAX_SCALE)  # 1 / tau

            def unit(m, e):
                return F.normalize(self.project[m](e.to(self.project[m].weight.dtype)).float(), dim=1)  # P_m(f_m)

            losses["infonce"] = c.FEATURE_WEIGHT * sum(
                info_nce(unit(i, knowledge[i][1].detach()), unit(j, knowledge[j][1]), scale) for i, j in c.FBT_PAIRS)
        if c.FBT_OFA:
            def ofa(s, t, y_head):
                return ofa_loss(s, t.detach(), y_head, c.OFA_EPS)

            losses["ofa"] = c.LOGIT_WEIGHT * sum(self.per_head(ofa, knowledge[j][0], knowledge[i][0], y)
                                                 for i, j in c.FBT_PAIRS)
        return z_s, losses
