"""CRD (Tian et al., ICLR 2020): contrastive representation distillation against momentum memory banks.

The pooled embeddings of student and teacher go through linear embedding heads `g_s`, `g_t` (training only) to
`DISTILL.CRD_DIM` dimensions, L2-normalised: `v_s = g_s(e_s) / |.|`, `v_t = g_t(e_t) / |.|`. Two memory banks hold one
vector per training sample, `M_s` and `M_t`. For sample i, the positive is the other network's bank entry of i
and `DISTILL.CRD_NEGATIVES` entries of other samples, drawn uniformly, are the negatives; the loss is the softmax
(InfoNCE) form of CRD's contrastive objective, at temperature `tau = DISTILL.CRD_TEMPERATURE`:
    L_CRD = -log softmax([v_s . M_t[i], v_s . M_t[n_1..K]] / tau)_0
            - log softmax([v_t . M_s[i], v_t . M_s[n_1..K]] / tau)_0
Then the banks move towards this step's vectors, `M[i] <- normalise(m M[i] + (1 - m) v)`, m = DISTILL.CRD_MOMENTUM
(0.5, as CRD's code).
L = CE + beta * L_CRD, beta = DISTILL.FEATURE_WEIGHT. The banks are the method's state: one per rank (a rank
updates the rows of its own samples), saved in each rank's checkpoint file and restored on resume.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vidkd.distill.base import Distiller
from vidkd.distill.losses import bank_update, crd_nce
from vidkd.models.taps import probe
from vidkd.tasks import input_size


class CRD(Distiller):
    def __init__(self, student, teachers, heads, cfg):
        super().__init__(student, teachers, heads, cfg)
        size = input_size(cfg)
        dim = cfg.DISTILL.CRD_DIM
        self.embed_s = nn.Linear(probe(student, size)["embed_dim"], dim)  # g_s
        self.embed_t = nn.Linear(probe(self.teachers[0], size)["embed_dim"], dim)  # g_t
        self.banks = None  # {"student": M_s, "teacher": M_t}, [N, dim], made at the first step

    def teacher_targets(self, video):
        return {"embedding": self.run_teacher(0, video)[2]}

    def method_state(self):
        return dict(self.banks) if self.banks is not None else {}

    def load_method_state(self, state):
        self.banks = {k: v.to(self.embed_s.weight.device) for k, v in state.items()} if state else None

    def _make_banks(self, device):
        """Random unit vectors, from a generator of their own (the run's other draws stay as they are)."""
        g = torch.Generator().manual_seed(self.seed)
        n, dim = self.num_samples, self.cfg.CRD_DIM
        self.banks = {k: F.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
                      for k in ("student", "teacher")}

    def forward(self, batch):
        e_t = self.targets(batch)["embedding"]
        z_s, _, e_s = self.student_taps(batch["input"])
        # the heads in the training precision (bf16 / fp16 under DeepSpeed), the vectors and the loss in fp32
        v_s = F.normalize(self.embed_s(e_s).float(), dim=1)
        v_t = F.normalize(self.embed_t(e_t.to(self.embed_t.weight.dtype)).float(), dim=1)
        if self.banks is None:
            self._make_banks(v_s.device)
        i, c = batch["index"].to(v_s.device), self.cfg
        k = min(c.CRD_NEGATIVES, self.num_samples - 1)
        negatives = torch.randint(0, self.num_samples, (len(i), k), device=v_s.device)
        rows = torch.cat([i[:, None], negatives], 1)  # [B, 1 + K]: the positive first

        loss = (crd_nce(v_s, self.banks["teacher"], rows, c.CRD_TEMPERATURE)
                + crd_nce(v_t, self.banks["student"], rows, c.CRD_TEMPERATURE))
        for name, v in (("student", v_s), ("teacher", v_t)):
            bank_update(self.banks[name], i, v, c.CRD_MOMENTUM)
        return z_s, {"ce": c.CE_WEIGHT * self.ce(z_s, batch["targets"]), "crd": c.FEATURE_WEIGHT * loss}
