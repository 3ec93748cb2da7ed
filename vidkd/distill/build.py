"""Distillation methods by name (DISTILL.METHOD), each given the teachers it needs."""
from vidkd.distill.ce import CE
from vidkd.distill.dkd import DKD
from vidkd.distill.dual_teacher import DualTeacher
from vidkd.distill.fitnet import FitNet
from vidkd.distill.kd import KD
from vidkd.distill.ofa import OFA
from vidkd.distill.rkd import RKD

METHODS = {"ce": CE, "kd": KD, "dkd": DKD, "fitnet": FitNet, "rkd": RKD, "ofa": OFA, "dual_teacher": DualTeacher}


def teachers_needed(cfg):
    """Indices into MODEL.TEACHERS that the method runs: none, the one of DISTILL.TEACHER_INDEX, or both."""
    method = cfg.DISTILL.METHOD
    if method == "ce":
        return []
    if method == "dual_teacher":
        return [0, 1]
    return [cfg.DISTILL.TEACHER_INDEX]


def build_distiller(cfg, student, teachers, heads):
    """`teachers`: the models of `teachers_needed(cfg)`, in that order."""
    return METHODS[cfg.DISTILL.METHOD](student, teachers, heads, cfg)
