"""RKD (Park et al., CVPR 2019) on pooled embeddings: L = CE + gamma * (25 * distance + 50 * angle term),
gamma = DISTILL.RKD_WEIGHT."""
from vidkd.distill.base import Distiller
from vidkd.distill.losses import rkd_loss


class RKD(Distiller):
    tasks = ("video", "image", "face")

    def teacher_targets(self, video):
        return {"embedding": self.run_teacher(0, video)[2]}

    def forward(self, batch):
        e_t = self.targets(batch)["embedding"]
        z_s, _, e_s = self.student_taps(batch["input"])
        c = self.cfg
        return z_s, {"ce": c.CE_WEIGHT * self.ce(z_s, batch["targets"]),
                     "rkd": c.RKD_WEIGHT * rkd_loss(e_s, e_t)}  # gamma * L_RKD(e_s, e_t)
