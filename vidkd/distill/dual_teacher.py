"""Dual-teacher video distillation (arXiv 2511.09469; formulation of METHODS.md section 2).

A heterogeneous ViT teacher V and a homogeneous 3D-CNN teacher C teach a lightweight CNN student:
`L = CE + alpha * L_DATW + beta * L_SDD + gamma * L_RKD(e_s, e_V)`.

DATW (2.1), per sample and head, all detached: `s_k = log(c_k + 1e-8) + lambda_d * d_k`,
`w = softmax_k(s / tau_w)`, `z_f = w_V z_V + w_C z_C`, `L_DATW = T^2 KL(softmax(z_f / T) || p_s)`. With
confidence `neg_entropy` the confidence term is `-H(p_k)` itself (already on a log scale).
On the training videos, which the teachers usually trained on too, every teacher is confident and right, so a
confidence measured there cannot tell a teacher that generalises from one that memorised. With
DATA.CALIBRATION_SPLIT (videos the teachers did not train on, data_prep/hold_out.py), `calibrate` measures each
teacher there before training: `heldout_class` confidence is its mean true-class probability per class, and
DATW_CALIBRATE divides its logits by a temperature fitted there (minimum NLL). DATW_DISCREPANCY_WHERE
teacher_right counts `d_k` only where teacher k predicts the label. The README's ablation measures all of them.

SDD (2.2): both teachers' last-stage maps, pooled to the student's last-stage grid, are projected to width d
by phi_V, phi_C (fixed seeded orthogonal 1x1x1 convs, or phi_V learned to predict phi_C(f_C) from f_V on
teacher features only; computed in fp32 on the teachers' fp32 maps, whatever the training precision) and
layer-normed per position without affine parameters. Targets
`r_C = sg(phi_C f_C)`, `r_res = sg(phi_V f_V - phi_C f_C)`; the student's map feeds `g_main` (1x1x1 conv)
-> r_C and the Structure Discrepancy Branch `g_aux` -> r_res. Both heads exist only in training. On images
(TASK image: the frame-level path, an image ViT and CNN teaching an image CNN) every map `[B, C, H, W]` is taken as
a one-frame clip `[B, C, 1, H, W]`, so SDD's 3D layers serve both tasks.
"""
import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from vidkd.distill.base import Distiller
from vidkd.distill.blocks import SqueezeExcite
from vidkd.distill.losses import kd_loss, kl_per_sample, match_grid, rkd_loss
from vidkd.errors import ConfigError, DataError
from vidkd.models.taps import probe
from vidkd.tasks import input_size

log = logging.getLogger("vidkd.distill")


def as_volume(f):
    """A map `[B, C, H, W]` (an image model's) as a one-frame clip's `[B, C, 1, H, W]`; a clip's map as it is."""
    return f if f.dim() == 5 else f.unsqueeze(2)


def teacher_weights(z_v, z_c, z_s, y, cfg, heldout=None):
    """DATW weights `[B, 2]` (ViT, CNN), detached; each row sums to 1. `heldout`: `[2, K]`, each teacher's mean
    true-class probability per class on the calibration split (DATW_CONFIDENCE heldout_class)."""
    fixed = {"fixed": (0.5, 0.5), "vit_only": (1.0, 0.0), "cnn_only": (0.0, 1.0)}
    if cfg.DATW_MODE in fixed:
        return torch.tensor(fixed[cfg.DATW_MODE], device=z_s.device).expand(len(z_s), 2)
    with torch.no_grad():
        z_s = z_s.detach().float()
        scores = []
        for k, z_k in enumerate((z_v, z_c)):
            p_k = z_k.softmax(1)
            if cfg.DATW_CONFIDENCE == "neg_entropy":
                confidence = (p_k * z_k.log_softmax(1)).sum(1)  # -H(p_k)
            else:
                c_k = {"true_class": lambda: p_k.gather(1, y[:, None])[:, 0], "max_prob": lambda: p_k.amax(1),
                       "heldout_class": lambda: heldout[k][y]}[cfg.DATW_CONFIDENCE]()
                confidence = torch.log(c_k + 1e-8)  # log(c_k + 1e-8)
            if cfg.DATW_DISCREPANCY == "kl":
                d_k = kl_per_sample(z_k, z_s, cfg.TEMPERATURE)  # KL(p_k || p_s) at T
            else:
                d_k = 1 - F.cosine_similarity(z_k, z_s, dim=1)
            if cfg.DATW_DISCREPANCY_WHERE == "teacher_right":
                d_k = d_k * (z_k.argmax(1) == y)  # d_k counted where teacher k predicts y
            scores.append(confidence + cfg.DATW_LAMBDA * d_k)  # s_k = log c_k + lambda_d d_k
        return (torch.stack(scores, 1) / cfg.DATW_TAU).softmax(1)  # w = softmax_k(s / tau_w)


def fit_temperature(logits, y):
    """The temperature T minimising the NLL of softmax(logits / T) over held-out samples (temperature scaling,
    Guo et al., ICML 2017), searched on a log grid from 0.05 to 50."""
    grid = torch.logspace(math.log10(0.05), math.log10(50), 121, dtype=torch.float64)
    nll = torch.stack([F.cross_entropy(logits.double() / t, y) for t in grid])  # NLL(softmax(z / T), y)
    return float(grid[nll.argmin()])  # T* = argmin_T NLL


def position_norm(x):
    """Layer norm over the channels at every position, no affine parameters: [B, d, T, H, W]."""
    return F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)


class Projection(nn.Module):
    """phi: a 1x1x1 conv without bias, orthogonal weights drawn from `generator`, applied in the dtype of the maps
    it receives (the teachers' fp32). Fixed: the weight is an fp32 buffer, which neither DeepSpeed nor the
    training precision casts, so the cached SDD targets do not depend on DEEPSPEED.PRECISION (and, rebuilt from
    the seed, it is left out of checkpoints). Learned: a parameter, trained like any other."""

    def __init__(self, c_in, dim, generator, learned=False):
        super().__init__()
        weight = nn.init.orthogonal_(torch.empty(dim, c_in, 1, 1, 1), generator=generator)
        if learned:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight, persistent=False)

    def forward(self, f):
        return F.conv3d(f, self.weight.to(f.dtype))  # phi(f)


def discrepancy_branch(channels, dim):
    """g_aux: depthwise-separable 3D conv + squeeze-excitation + 1x1x1 conv to width d."""
    return nn.Sequential(
        nn.Conv3d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.Conv3d(channels, channels, 1, bias=False), nn.BatchNorm3d(channels), nn.ReLU(inplace=True),
        SqueezeExcite(channels, 3, 8), nn.Conv3d(channels, dim, 1),
    )


class DualTeacher(Distiller):
    """Teachers: `teachers[0]` the ViT V, `teachers[1]` the 3D CNN C."""

    @classmethod
    def teacher_indices(cls, cfg):
        return [0, 1]  # the ViT, the 3D CNN

    def __init__(self, student, teachers, heads, cfg):
        super().__init__(student, teachers, heads, cfg)
        c = self.cfg
        self.temperature, self.heldout = {}, {}  # per head, from `calibrate`
        if c.SDD and c.SDD_PHI == "learned" and c.CACHE != "live":
            raise ConfigError("DISTILL.CACHE: with DISTILL.SDD_PHI learned, phi_V trains and the SDD targets change "
                              "as the run goes: cache them with SDD_PHI fixed, or set DISTILL.CACHE live")
        if c.SDD:
            last = [probe(m, input_size(cfg))["stages"][-1] for m in (student, *self.teachers)]
            (c_s, c_v, c_c), grid = (s["channels"] for s in last), last[0]["grid"]
            self.grid = (1,) * (3 - len(grid)) + grid  # an image's (H, W) as (1, H, W)
            generator = torch.Generator().manual_seed(cfg.SEED)
            self.phi_c = Projection(c_c, c.SDD_DIM, generator)
            self.phi_v = Projection(c_v, c.SDD_DIM, generator, learned=c.SDD_PHI == "learned")
            self.g_main = nn.Conv3d(c_s, c.SDD_DIM, 1)
            self.g_aux = discrepancy_branch(c_s, c.SDD_DIM)

    @property
    def calibrates(self):
        return self.cfg.DATW_CALIBRATE or self.cfg.DATW_CONFIDENCE == "heldout_class"

    @torch.no_grad()
    def calibrate(self, loader, device):
        """DATW's estimates on videos the teachers did not train on (every view of DATA.CALIBRATION_SPLIT), per
        head: each teacher's temperature T_k (DATW_CALIBRATE; else 1) and its mean true-class probability per
        class, softmax(z_k / T_k)[y], for DATW_CONFIDENCE heldout_class (a class without views there takes the
        teacher's mean over all views). The views are test views (centre crops), as the teachers' reliability on
        unseen videos is meant; training clips are crops of other scales, which the estimates do not model."""
        logits, labels = [[], []], {h: [] for h in self.heads}
        loader.set_epoch(0)
        for batch in tqdm(loader, desc="calibration", unit="batch", leave=False):
            if batch is None:  # lost with a loader worker (counted by the loader)
                continue
            valid, video = batch["valid"], batch["input"].to(device)
            for k in (0, 1):
                logits[k].append(self.run_teacher(k, video)[0][valid].cpu())
            for h in self.heads:
                labels[h].append(batch["targets"][h][valid])
        if not sum(len(z_k) for z_k in logits[0]):
            raise DataError("DATA.CALIBRATION_SPLIT: no view of its videos decodes: nothing to estimate DATW on")
        z = [self.split(torch.cat(z_k)) for z_k in logits]
        for h, classes in self.heads.items():
            y = torch.cat(labels[h])
            temps = [fit_temperature(z_k[h], y) if self.cfg.DATW_CALIBRATE else 1.0 for z_k in z]
            confidence = torch.stack([(z_k[h] / t).softmax(1).gather(1, y[:, None])[:, 0] for z_k, t in zip(z, temps)])
            sums = torch.zeros(2, classes, dtype=torch.float64).index_add_(1, y, confidence.double())
            counts = torch.bincount(y, minlength=classes)
            mean = torch.where(counts > 0, sums / counts.clamp(min=1), confidence.double().mean(1, keepdim=True))
            self.temperature[h], self.heldout[h] = temps, mean.float().to(device)
            accuracy = [float((z_k[h].argmax(1) == y).double().mean()) * 100 for z_k in z]
            log.info("calibration (%d views, head %s): ViT top-1 %.1f, T %.3g, mean true-class p %.3f; CNN top-1 "
                     "%.1f, T %.3g, mean true-class p %.3f", len(y), h, accuracy[0], temps[0],
                     confidence[0].mean(), accuracy[1], temps[1], confidence[1].mean())

    def teacher_targets(self, video):
        """Both teachers' logits; with SDD its targets r_C and r_res on the student's grid (and phi_V f_V when
        phi_V learns: live only); with RKD the ViT's embedding."""
        c = self.cfg
        z_v, f_v, e_v = self.run_teacher(0, video)
        z_c, f_c, _ = self.run_teacher(1, video)
        out = {"z_v": z_v, "z_c": z_c}
        if c.SDD:
            out["r_c"], out["r_res"], p_v = self.sdd_targets(as_volume(f_v[-1]), as_volume(f_c[-1]), self.grid)
            if c.SDD_PHI == "learned":
                out["p_v"] = p_v
        if c.RKD_WEIGHT:
            out["e_v"] = e_v
        return out

    def forward(self, batch):
        video, y, c = batch["input"], batch["targets"], self.cfg
        t = self.targets(batch)
        z_s, f_s, e_s = self.student_taps(video)
        losses = {"ce": c.CE_WEIGHT * self.ce(z_s, y)}
        datw, s, v, cnn = 0.0, self.split(z_s), self.split(t["z_v"]), self.split(t["z_c"])
        if self.calibrates and not self.heldout:
            raise ConfigError("DISTILL.DATW_CALIBRATE / DATW_CONFIDENCE heldout_class: estimated by `calibrate` on "
                              "DATA.CALIBRATION_SPLIT before training (the trainer does it); it was not called")
        for i, h in enumerate(self.heads):
            if c.DATW_CALIBRATE:  # calibrated teachers: z_k / T_k
                v[h], cnn[h] = v[h] / self.temperature[h][0], cnn[h] / self.temperature[h][1]
            w = teacher_weights(v[h], cnn[h], s[h], y[h], c, self.heldout.get(h))
            z_f = w[:, :1] * v[h] + w[:, 1:] * cnn[h]  # z_f = w_V z_V + w_C z_C
            datw = datw + kd_loss(s[h], z_f, c.TEMPERATURE)  # T^2 KL(softmax(z_f / T) || p_s)
            if i == 0:
                self.stats = {"w_vit": w[:, 0]}
        losses["datw"] = c.LOGIT_WEIGHT * datw
        if c.SDD:
            losses.update(self.sdd(t, as_volume(f_s[-1])))
        if c.RKD_WEIGHT:
            losses["rkd"] = c.RKD_WEIGHT * rkd_loss(e_s, t["e_v"])  # gamma * L_RKD(e_s, e_V)
        return z_s, losses

    def sdd_targets(self, f_v, f_c, grid):
        """(r_C, r_res, phi_V f_V) on the student's grid; the targets carry no gradient."""
        p_c = position_norm(self.phi_c(match_grid(f_c, grid)))
        p_v = position_norm(self.phi_v(match_grid(f_v, grid)))
        return p_c.detach(), (p_v - p_c).detach(), p_v

    def sdd(self, t, f_s):
        beta = self.cfg.FEATURE_WEIGHT
        losses = {"sdd_main": beta * F.mse_loss(self.g_main(f_s).float(), t["r_c"]),  # MSE(g_main(f_S), r_C)
                  "sdd_aux": beta * F.mse_loss(self.g_aux(f_s).float(), t["r_res"])}  # MSE(g_aux(f_S), r_res)
        if self.cfg.SDD_PHI == "learned":  # phi_V learns to predict phi_C(f_C) from f_V alone
            losses["sdd_phi"] = F.mse_loss(t["p_v"], t["r_c"])
        return losses
