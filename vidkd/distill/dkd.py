"""DKD (Zhao et al., CVPR 2022): L = CE + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD), with epochs
counted from 1 as in the reference code (mdistiller): the first epoch gets 1 / warmup."""
from vidkd.distill.base import Distiller
from vidkd.distill.losses import dkd_loss, dkd_warmup


class DKD(Distiller):
    def teacher_targets(self, video):
        return {"logits": self.run_teacher(0, video)[0]}

    def forward(self, batch):
        z_t = self.targets(batch)["logits"]
        z_s = self.student(batch["input"])
        c = self.cfg

        def dkd(s, t, y):
            return dkd_loss(s, t, y, c.DKD_ALPHA, c.DKD_BETA, c.TEMPERATURE)

        warm = dkd_warmup(self.epoch + 1, c.DKD_WARMUP)  # the engine counts epochs from 0
        loss = c.LOGIT_WEIGHT * warm * self.per_head(dkd, z_s, z_t, batch["targets"])
        return z_s, {"ce": c.CE_WEIGHT * self.ce(z_s, batch["targets"]), "dkd": loss}
