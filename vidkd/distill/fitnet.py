"""FitNet (Romero et al., ICLR 2015) hint at the last stage: L = CE + beta * MSE(r(f_s), f_t).

The student's last-stage map is pooled to the teacher's grid and mapped to its width by a 1x1x1 conv
regressor `r` (training only); a ViT teacher's tokens arrive folded to their (T', H', W') grid.
"""
from vidkd.distill.base import Distiller
from vidkd.distill.losses import Regressor, fitnet_loss, match_grid
from vidkd.models.taps import probe
from vidkd.tasks import input_size


class FitNet(Distiller):
    tasks = ("video", "image", "face")

    def __init__(self, student, teachers, heads, cfg):
        super().__init__(student, teachers, heads, cfg)
        c_s = probe(student, input_size(cfg))["stages"][-1]["channels"]
        c_t = probe(self.teachers[0], input_size(cfg))["stages"][-1]["channels"]
        self.regressor = Regressor(c_s, c_t)

    def teacher_targets(self, video):
        return {"feature": self.run_teacher(0, video)[1][-1]}

    def forward(self, batch):
        f_t = self.targets(batch)["feature"]
        z_s, f_s, _ = self.student_taps(batch["input"])
        hint = self.regressor(match_grid(f_s[-1], f_t.shape[2:]))
        c = self.cfg
        return z_s, {"ce": c.CE_WEIGHT * self.ce(z_s, batch["targets"]),
                     "fitnet": c.FEATURE_WEIGHT * fitnet_loss(hint, f_t)}
