"""KD (Hinton et al., 2015) from one teacher: L = CE + alpha * T^2 * KL(p_t || p_s)."""
from vidkd.distill.base import Distiller
from vidkd.distill.losses import kd_loss


class KD(Distiller):
    def teacher_targets(self, video):
        return {"logits": self.run_teacher(0, video)[0]}

    def forward(self, batch):
        z_t = self.targets(batch)["logits"]
        z_s = self.student(batch["input"])
        c = self.cfg
        kd = self.per_head(lambda s, t, y: kd_loss(s, t, c.TEMPERATURE), z_s, z_t, batch["targets"])
        return z_s, {"ce": c.CE_WEIGHT * self.ce(z_s, batch["targets"]), "kd": c.LOGIT_WEIGHT * kd}
