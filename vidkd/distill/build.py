"""Distillation methods by name (DISTILL.METHOD), each given the teachers it needs."""
from vidkd.distill.cafd import CAFD
from vidkd.distill.ce import CE
from vidkd.distill.crd import CRD
from vidkd.distill.dkd import DKD
from vidkd.distill.dual_teacher import DualTeacher
from vidkd.distill.embedding import Embedding
from vidkd.distill.fbt import FBT
from vidkd.distill.fitnet import FitNet
from vidkd.distill.iled_rpsd import ILEDRPSD
from vidkd.distill.kd import KD
from vidkd.distill.ofa import OFA
from vidkd.distill.pat import PAT
from vidkd.distill.rkd import RKD
from vidkd.errors import ConfigError

METHODS = {"ce": CE, "kd": KD, "dkd": DKD, "fitnet": FitNet, "rkd": RKD, "ofa": OFA, "crd": CRD,
           "pat": PAT, "fbt": FBT, "dual_teacher": DualTeacher, "cafd": CAFD, "iled_rpsd": ILEDRPSD,
           "embedding": Embedding}


def methods_for(task):
    """The names of the methods that train models of TASK `task`, sorted."""
    return sorted(name for name, method in METHODS.items() if task in method.tasks)


def teachers_needed(cfg):
    """Indices into MODEL.TEACHERS that DISTILL.METHOD runs, as the method says."""
    return METHODS[cfg.DISTILL.METHOD].teacher_indices(cfg)


def build_distiller(cfg, student, teachers, heads):
    """`teachers`: the models of `teachers_needed(cfg)`, in that order."""
    method = cfg.DISTILL.METHOD
    if cfg.TASK not in METHODS[method].tasks:
        raise ConfigError(f"config key DISTILL.METHOD: {method} trains TASK {' or '.join(METHODS[method].tasks)} "
                          f"models, this config's TASK is {cfg.TASK}; methods for {cfg.TASK}: "
                          f"{', '.join(methods_for(cfg.TASK))}")
    return METHODS[method](student, teachers, heads, cfg)
