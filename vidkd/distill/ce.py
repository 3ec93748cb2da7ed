"""Supervised training alone: the student without a teacher, or a teacher being fine-tuned. L = CE (TASK face: the
margin head's L_FR)."""
from vidkd.distill.base import Distiller


class CE(Distiller):
    tasks = ("video", "image", "face")

    @classmethod
    def teacher_indices(cls, cfg):
        return []

    def forward(self, batch):
        z_s = self.student(batch["input"])
        return z_s, {"ce": self.cfg.CE_WEIGHT * self.ce(z_s, batch["targets"])}
