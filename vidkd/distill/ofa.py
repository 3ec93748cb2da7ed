"""OFA (Hao et al., NeurIPS 2023): the OFA loss on the student's logits and on an exit branch at every stage.

`L_OFA = mean_b sum_c -[(p_t + onehot)^eps - onehot]_c * log p_s,c` (METHODS.md 1). The exit of stage i (1..n,
n stages), by the stage's declared layout:
- a map (CNN, Swin): (n - i) depthwise-separable conv blocks of spatial stride 2 (3D on a clip's maps, 2D on an
  image's) -> global average pool -> Linear, so every exit classifies from a map as coarse as the last stage's;
- tokens (ViT, DeiT, ResMLP; on their folded grid): patch merging (Swin's: each 2 x 2 spatial neighbourhood to one
  token of twice the width, the grid zero-padded to even sides) while a spatial side is above SMALL_GRID ->
  min(n - i + 1, 3) transformer blocks -> layer norm -> mean over tokens -> Linear. SMALL_GRID = 7, the grid of a
  Swin's last stage at 224 pixels (vidkd's choice for METHODS.md's "a small grid").
Exits exist only in training. L = CE + alpha * (L_OFA(student) + sum_i L_OFA(exit_i)).
"""
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from vidkd.distill.base import Distiller
from vidkd.distill.blocks import LAYERS, heads_for
from vidkd.distill.losses import ofa_loss
from vidkd.models.taps import probe
from vidkd.tasks import input_size


def separable_block(c_in, c_out, dims):
    """Depthwise 3x3(x3) (spatial stride 2) -> BN -> ReLU -> pointwise -> BN -> ReLU."""
    conv, norm, _, stride = LAYERS[dims]
    return nn.Sequential(
        conv(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False), norm(c_in), nn.ReLU(inplace=True),
        conv(c_in, c_out, 1, bias=False), norm(c_out), nn.ReLU(inplace=True),
    )


def exit_branch(channels, blocks, num_classes, dims):
    layers = [separable_block(channels * 2**b, channels * 2 ** (b + 1), dims) for b in range(blocks)]
    width = channels * 2**blocks
    return nn.Sequential(*layers, LAYERS[dims][2](1), nn.Flatten(), nn.Linear(width, num_classes))


SMALL_GRID = 7


class PatchMerging(nn.Module):
    """Swin's patch merging on a channels-first grid `[B, C, (T,) H, W]`: each 2 x 2 spatial neighbourhood's 4C
    values -> LayerNorm -> Linear to 2C (here: one convolution of kernel and stride (1,) 2, 2 on the grid padded
    to even sides, then LayerNorm over channels)."""

    def __init__(self, channels, dims):
        super().__init__()
        conv, _, _, stride = LAYERS[dims]
        self.reduce = conv(channels, 2 * channels, stride, stride=stride)
        self.norm = nn.LayerNorm(2 * channels)

    def forward(self, x):
        h, w = x.shape[-2:]
        x = self.reduce(F.pad(x, (0, w % 2, 0, h % 2)))
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class TokenExit(nn.Module):
    def __init__(self, channels, grid, blocks, num_classes):
        super().__init__()
        merges, side = [], max(grid[-2:])
        while side > SMALL_GRID:
            merges.append(PatchMerging(channels, len(grid)))
            channels, side = 2 * channels, (side + 1) // 2
        self.merge = nn.Sequential(*merges)
        self.blocks = nn.Sequential(*(Block(channels, heads_for(channels)) for _ in range(blocks)))
        self.norm, self.fc = nn.LayerNorm(channels), nn.Linear(channels, num_classes)

    def forward(self, x):
        tokens = self.merge(x).flatten(2).transpose(1, 2)  # [B, N, C]
        return self.fc(self.norm(self.blocks(tokens)).mean(1))


class OFA(Distiller):
    def __init__(self, student, teachers, heads, cfg):
        super().__init__(student, teachers, heads, cfg)
        stages, k = probe(student, input_size(cfg))["stages"], sum(self.heads.values())
        n = len(stages)
        self.exits = nn.ModuleList(
            TokenExit(s["channels"], s["grid"], min(n - i, 3), k) if layout == "tokens"
            else exit_branch(s["channels"], n - 1 - i, k, len(s["grid"]))
            for i, (s, layout) in enumerate(zip(stages, student.layouts())))

    def teacher_targets(self, video):
        return {"logits": self.run_teacher(0, video)[0]}

    def forward(self, batch):
        z_t = self.targets(batch)["logits"]
        z_s, features, _ = self.student_taps(batch["input"])
        c, y = self.cfg, batch["targets"]

        def ofa(s, t, y_head):
            return ofa_loss(s, t, y_head, c.OFA_EPS)

        exits = sum(self.per_head(ofa, exit(f), z_t, y) for exit, f in zip(self.exits, features))
        return z_s, {"ce": c.CE_WEIGHT * self.ce(z_s, y), "ofa": c.LOGIT_WEIGHT * self.per_head(ofa, z_s, z_t, y),
                     "ofa_exits": c.LOGIT_WEIGHT * exits}
