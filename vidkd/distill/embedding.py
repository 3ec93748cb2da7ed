"""Embedding distillation, the face baselines of ILED + RPSD (METHODS.md 6): the student's embedding pulled onto the
frozen teacher's, sample by sample. TASK face only (the outputs are the embeddings `[B, D]`, whose widths must
match: checked at construction). DISTILL.EMBED_LOSS:

    mse:    L = L_FR + w * mean_i,d (e_s,id - e_t,id)^2        (the raw embeddings)
    cosine: L = L_FR + w * mean_i (1 - cos(e_s,i, e_t,i))       (direction only, as verification compares them)

w = DISTILL.FEATURE_WEIGHT, L_FR the margin head's loss (FACE.MARGIN). The teacher's embedding is cacheable.
"""
import torch.nn.functional as F

from vidkd.distill.base import Distiller
from vidkd.distill.iled_rpsd import matching_widths


def embedding_loss(e_s, e_t, kind):
    """`kind` mse: the mean squared difference over samples and dimensions; cosine: the batch mean of 1 - cos."""
    e_s, e_t = e_s.float(), e_t.float()
    if kind == "mse":
        return F.mse_loss(e_s, e_t)  # mean (e_s - e_t)^2
    return (1 - F.cosine_similarity(e_s, e_t, dim=1)).mean()  # mean_i (1 - cos_i)


class Embedding(Distiller):
    tasks = ("face",)

    def __init__(self, student, teachers, heads, cfg):
        super().__init__(student, teachers, heads, cfg)
        matching_widths(self.margin.weight.shape[1], self.teachers[0], cfg, "embedding")

    def teacher_targets(self, video):
        return {"embedding": self.run_teacher(0, video)[2]}

    def forward(self, batch):
        e_t = self.targets(batch)["embedding"]
        e_s = self.student(batch["input"])  # TASK face: the output is the embedding
        c = self.cfg
        return e_s, {"ce": c.CE_WEIGHT * self.ce(e_s, batch["targets"]),  # L_FR
                     f"embed_{c.EMBED_LOSS}": c.FEATURE_WEIGHT * embedding_loss(e_s, e_t, c.EMBED_LOSS)}
