"""Distillation methods by name (DISTILL.METHOD), each given the teachers it needs."""
from vidkd.distill.ce import CE
from vidkd.distill.crd import CRD
from vidkd.distill.dkd import DKD
from vidkd.distill.dual_teacher import DualTeacher
from vidkd.distill.fitnet import FitNet
from vidkd.distill.kd import KD
from vidkd.distill.ofa import OFA
from vidkd.distill.rkd import RKD

METHODS = {"ce": CE, "kd": KD, "dkd": DKD, "fitnet": FitNet, "rkd": RKD, "ofa": OFA, "crd": CRD,
           "dual_teacher": DualTeacher}


def teachers_needed(cfg):
    """Indices into MODEL.TEACHERS that DISTILL.METHOD runs, as the method says."""
    return METHODS[cfg.DISTILL.METHOD].teacher_indices(cfg)


def build_distiller(cfg, student, teachers, heads):
    """`teachers`: the models of `teachers_needed(cfg)`, in that order."""
    return METHODS[cfg.DISTILL.METHOD](student, teachers, heads, cfg)
