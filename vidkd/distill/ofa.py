"""OFA (Hao et al., NeurIPS 2023): the OFA loss on the student's logits and on an exit branch at every stage.

`L_OFA = mean_b sum_c -[(p_t + onehot)^eps - onehot]_c * log p_s,c` (METHODS.md 1). Exit of stage i (1..4):
(4 - i) depthwise-separable conv blocks of spatial stride 2 (3D on a clip's maps, 2D on an image's) -> global
average pool -> Linear, so every exit classifies from a map as coarse as the last stage's. A token student's
stages arrive folded to their grid and take the same exits (METHODS.md's patch-merging transformer exits for
token stages are not built yet). Exits exist only in training.
L = CE + alpha * (L_OFA(student) + sum_i L_OFA(exit_i)).
"""
import torch.nn as nn

from vidkd.distill.base import Distiller
from vidkd.distill.losses import ofa_loss
from vidkd.models.taps import probe
from vidkd.tasks import input_size


# per grid dimensions (3: T, H, W; 2: H, W): convolution, batch norm, pooling, stride 2 in space only
LAYERS = {3: (nn.Conv3d, nn.BatchNorm3d, nn.AdaptiveAvgPool3d, (1, 2, 2)),
          2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d, 2)}


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


class OFA(Distiller):
    def __init__(self, student, teachers, heads, cfg):
        super().__init__(student, teachers, heads, cfg)
        stages = probe(student, input_size(cfg))["stages"]
        n = len(stages)
        self.exits = nn.ModuleList(exit_branch(s["channels"], n - 1 - i, sum(self.heads.values()), len(s["grid"]))
                                   for i, s in enumerate(stages))

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
