"""ILED + RPSD (METHODS.md 6; paper 004): face distillation of the embedding, instance by instance and in relation to
past samples. TASK face only: the student's and the teacher's outputs are their embeddings `e_s`, `e_t` `[B, D]`,
compared L2-normalised, so the two widths D must match (checked at construction).

    L = L_FR + lambda_ILED * L_ILED + lambda_RPSD * L_RPSD

- L_FR: the margin head's loss (FACE.MARGIN; the paper's SphereFace2).
- L_ILED (`vidkd.distill.losses.iled_loss`): a rescaled softplus of each sample's `cos(e_s,i, e_t,i)`, whose gradient
  goes mostly to the hard samples (r 40, s 0.9, b 0.1).
- L_RPSD (`vidkd.distill.losses.rpsd_loss`): the batch's cosine similarities to a memory bank of past embeddings,
  the student's against its bank (`S_s = E_s M_s^T`) matched to the teacher's against its own (`S_t = E_t M_t^T`)
  (r' 60, t 0.05, b' 1).

The banks (`vidkd.distill.memory.FifoBank`): the last `DISTILL.ILED_RPSD_BANK x TRAIN.BATCH_SIZE` L2-normalised
embeddings of student and teacher, oldest first. As in the paper, RPSD compares the batch with the embeddings of
PAST batches only: the banks are pushed after the loss of the batch is computed, so the current batch is not in
them; at the first step they are empty and L_RPSD is 0, until they fill it uses what they hold. They are the
method's state, one pair per rank (a rank pushes its own batches): saved in each rank's checkpoint file and
restored on resume. With DISTILL.RPSD_WEIGHT 0 there are no banks (and no state); with a weight 0 the term is
neither computed nor logged (the ablations ILED only / RPSD only are configs). The teacher is frozen, so its
embedding is cacheable (DISTILL.CACHE).
"""
import torch
import torch.nn.functional as F

from vidkd.distill.base import Distiller
from vidkd.distill.losses import iled_loss, rpsd_loss
from vidkd.distill.memory import FifoBank
from vidkd.errors import ConfigError
from vidkd.models.taps import probe
from vidkd.tasks import input_size


def matching_widths(d_s, teacher, cfg, method):
    """The embedding width D shared by the student (`d_s`, as its margin head takes it: probed once, by the base) and
    the teacher of DISTILL.TEACHER_INDEX, or a ConfigError naming MODEL.STUDENT and MODEL.TEACHERS when they differ
    (`method` compares the two embeddings directly)."""
    d_t = probe(teacher, input_size(cfg))["embed_dim"]
    if d_s != d_t:
        k = cfg.DISTILL.TEACHER_INDEX
        raise ConfigError(f"config keys MODEL.STUDENT and MODEL.TEACHERS: DISTILL.METHOD {method} compares the "
                          f"student's embedding with the teacher's, their widths must match: MODEL.STUDENT "
                          f"{cfg.MODEL.STUDENT} gives {d_s}-d embeddings, MODEL.TEACHERS[{k}] {cfg.MODEL.TEACHERS[k]} "
                          f"gives {d_t}-d")
    return d_s


class ILEDRPSD(Distiller):
    tasks = ("face",)

    def __init__(self, student, teachers, heads, cfg):
        super().__init__(student, teachers, heads, cfg)
        dim = matching_widths(self.margin.weight.shape[1], self.teachers[0], cfg, "iled_rpsd")
        size = cfg.DISTILL.ILED_RPSD_BANK * cfg.TRAIN.BATCH_SIZE
        # {"student": M_s, "teacher": M_t}; moved to the embeddings' device at the first step
        self.banks = {k: FifoBank(size, dim) for k in ("student", "teacher")} if cfg.DISTILL.RPSD_WEIGHT > 0 else {}

    def teacher_targets(self, video):
        return {"embedding": self.run_teacher(0, video)[2]}

    def method_state(self):
        return {f"{name}.{k}": v for name, bank in self.banks.items() for k, v in bank.state().items()}

    def load_method_state(self, state):
        for name, bank in self.banks.items():
            bank.load({k: state[f"{name}.{k}"] for k in ("data", "meta")})

    def forward(self, batch):
        e_t = self.targets(batch)["embedding"].float()
        e_s = self.student(batch["input"])  # TASK face: the output is the embedding
        c = self.cfg
        losses = {"ce": c.CE_WEIGHT * self.ce(e_s, batch["targets"])}  # L_FR
        if c.ILED_WEIGHT > 0:
            losses["iled"] = c.ILED_WEIGHT * iled_loss(e_s, e_t)  # lambda_ILED * L_ILED
        if self.banks:
            # copies: the pushes below write into the banks that the backward of this loss reads
            m_s, m_t = (self._bank(name, e_s.device).contents().clone() for name in ("student", "teacher"))
            rpsd = rpsd_loss(e_s, e_t, m_s, m_t) if len(m_s) else e_s.new_zeros((), dtype=torch.float32)
            losses["rpsd"] = c.RPSD_WEIGHT * rpsd  # lambda_RPSD * L_RPSD, against past batches only
            self.banks["student"].push(F.normalize(e_s.detach().float(), dim=1))
            self.banks["teacher"].push(F.normalize(e_t, dim=1))
        return e_s, losses

    def _bank(self, name, device):
        bank = self.banks[name]
        if bank.data.device != device:
            bank.data = bank.data.to(device)
        return bank
