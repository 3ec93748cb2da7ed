"""Every method trains a few steps on tiny models with its losses going down; DATW and SDD in detail."""
import math

import pytest
import torch

from vidkd.config import load_config
from vidkd.distill.build import build_distiller, methods_for, teachers_needed
from vidkd.distill.dual_teacher import fit_temperature, teacher_weights
from vidkd.errors import ConfigError
from vidkd.models import build_model

FRAMES, CROP = 4, 32


def config(method, *overrides):
    """rkd with DISTILL.RKD_WEIGHT 1.0 unless `overrides` set it (the config refuses rkd with its default 0)."""
    rkd = ["DISTILL.RKD_WEIGHT", "1.0"] if method == "rkd" else []
    return load_config(None, ["DISTILL.METHOD", method, "DATA.NUM_FRAMES", str(FRAMES),
                              "DATA.TRAIN_CROP_SIZE", str(CROP), "MODEL.STUDENT", "x3d_xs", *rkd, *overrides])


def make(method, heads=None, *overrides):
    cfg = config(method, *overrides)
    heads = heads or {"label": 4}
    k = sum(heads.values())
    torch.manual_seed(0)
    teachers = [build_model("videomae_vit_ti", k, FRAMES, CROP, depth=2),
                build_model("x3d_m", k, FRAMES, CROP)]
    student = build_model("x3d_xs", k, FRAMES, CROP, dropout=0.0)
    distiller = build_distiller(cfg, student, [teachers[i] for i in teachers_needed(cfg)], heads)
    distiller.num_samples = 6
    return distiller


def batch(heads=None, n=6):
    g = torch.Generator().manual_seed(1)
    heads = heads or {"label": 4}
    return {"input": torch.randn(n, 3, FRAMES, CROP, CROP, generator=g), "index": torch.arange(n),
            "targets": {h: torch.randint(0, k, (n,), generator=g) for h, k in heads.items()}}


@pytest.mark.parametrize("method", methods_for("video"))
def test_losses_go_down_and_teachers_stay_frozen(method):
    distiller = make(method, None, *(["DISTILL.RKD_WEIGHT", "1.0"] if method == "rkd" else [])).train()
    teacher_state = [{k: v.clone() for k, v in t.state_dict().items()} for t in distiller.teachers]
    params = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    b = batch()
    totals = []
    for _ in range(16):
        logits, losses = distiller(b)
        assert logits.shape == (6, 4) and "ce" in losses
        assert all(v.dtype == torch.float32 and v.dim() == 0 for v in losses.values())
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(float(loss.detach()))
    assert sum(totals[-3:]) / 3 < 0.8 * totals[0], totals  # OFA keeps the teacher's entropy: no 0 floor
    assert all(not t.training for t in distiller.teachers)
    assert not any(p.requires_grad for t in distiller.teachers for p in t.parameters())
    assert all(torch.equal(v, state[k]) for t, state in zip(distiller.teachers, teacher_state)
               for k, v in t.state_dict().items())
    # the teachers are outside the module tree DeepSpeed wraps (and checkpoints)
    assert not any(name.startswith("teachers") for name in distiller.state_dict())
    assert len(distiller.teachers) == len(teachers_needed(config(method)))
    assert set(distiller.student_state_dict()) == set(distiller.student.state_dict())


def test_datw_weights_match_a_hand_computed_example():
    cfg = config("dual_teacher").DISTILL  # T = 4, lambda_d = 1, tau_w = 1, true-class confidence, KL
    z_v = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    z_c = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    z_s = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    w = teacher_weights(z_v, z_c, z_s, y, cfg)

    def kl(z_k, z_s, T=4.0):  # KL(softmax(z_k / T) || softmax(z_s / T)) for 2 classes, by hand
        p = [math.exp(a / T) / sum(math.exp(b / T) for b in z_k) for a in z_k]
        q = [math.exp(a / T) / sum(math.exp(b / T) for b in z_s) for a in z_s]
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    def softmax(z):
        return [math.exp(a) / sum(math.exp(b) for b in z) for a in z]

    expected = []
    for i in range(2):
        s_v = math.log(softmax(z_v[i].tolist())[y[i]] + 1e-8) + kl(z_v[i].tolist(), z_s[i].tolist())
        s_c = math.log(softmax(z_c[i].tolist())[y[i]] + 1e-8) + kl(z_c[i].tolist(), z_s[i].tolist())
        expected.append(math.exp(s_v) / (math.exp(s_v) + math.exp(s_c)))
    # sample 0: the ViT is right (p = 0.881) and disagrees with the student; the CNN is unsure (0.5)
    assert w[:, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[0] > 0.6 and expected[1] < 0.45  # sample 1: the CNN is the one right
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert not w.requires_grad


def test_datw_ablation_modes():
    z = torch.randn(3, 5)
    y = torch.tensor([0, 1, 2])
    for mode, w_vit in [("fixed", 0.5), ("vit_only", 1.0), ("cnn_only", 0.0)]:
        cfg = config("dual_teacher", "DISTILL.DATW_MODE", mode).DISTILL
        assert teacher_weights(z, z, z, y, cfg)[:, 0].tolist() == [w_vit] * 3
    cfg = config("dual_teacher", "DISTILL.DATW_LAMBDA", "0").DISTILL  # confidence only
    z_v, z_c = torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    w = teacher_weights(z_v, z_c, torch.zeros(1, 2), torch.tensor([0]), cfg)
    p_v, p_c = 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-1))
    assert float(w[0, 0]) == pytest.approx(p_v / (p_v + p_c), abs=1e-6)  # softmax of log c_k = c_k / sum c


def test_datw_heldout_confidence_and_discrepancy_where_the_teacher_is_right():
    cfg = config("dual_teacher", "DATA.CALIBRATION_SPLIT", "val", "DISTILL.DATW_CONFIDENCE", "heldout_class",
                 "DISTILL.DATW_LAMBDA", "0").DISTILL
    heldout = torch.tensor([[0.9, 0.2], [0.5, 0.5]])  # the ViT: reliable on class 0, not on class 1
    z = torch.zeros(2, 2)
    w = teacher_weights(z, z, z, torch.tensor([0, 1]), cfg, heldout)
    assert w[:, 0].tolist() == pytest.approx([0.9 / 1.4, 0.2 / 0.7], abs=1e-6)  # c_V / (c_V + c_C) per class
    cfg = config("dual_teacher", "DISTILL.DATW_DISCREPANCY_WHERE", "teacher_right").DISTILL
    z_v, z_c, z_s = torch.tensor([[0.0, 2.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    y = torch.tensor([0])  # the ViT is wrong: its discrepancy does not count; the CNN is right: its does
    p_v, p_c = 1 / (1 + math.exp(2)), 1 / (1 + math.exp(-2))
    q = 1 / (1 + math.exp(-0.5))  # softmax([2, 0] / 4)[0]
    d_c = q * math.log(q / 0.5) + (1 - q) * math.log((1 - q) / 0.5)
    s_v, s_c = math.log(p_v + 1e-8), math.log(p_c + 1e-8) + d_c
    w = teacher_weights(z_v, z_c, z_s, y, cfg)
    assert float(w[0, 0]) == pytest.approx(math.exp(s_v) / (math.exp(s_v) + math.exp(s_c)), abs=1e-6)


def test_fit_temperature_recovers_the_nll_optimum():
    """Two classes, logits [4, 0], the label 0 on 80 % of the samples: the NLL is least where
    sigmoid(4 / T) = 0.8, T = 4 / ln 4 = 2.885 (the grid's steps are 6 % apart)."""
    logits = torch.tensor([[4.0, 0.0]]).repeat(10, 1)
    y = torch.tensor([0] * 8 + [1] * 2)
    assert fit_temperature(logits, y) == pytest.approx(4 / math.log(4), rel=0.03)


class Batches:
    """Test-view batches as VideoLoader gives them."""

    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(self.batches)


def test_calibrate_estimates_each_teachers_class_confidence_on_the_heldout_views():
    d = make("dual_teacher", None, "DATA.CALIBRATION_SPLIT", "val", "DISTILL.DATW_CONFIDENCE", "heldout_class",
             "DISTILL.DATW_CALIBRATE", "true")
    views = [batch(n=4), batch(n=3)]
    views[1]["targets"]["label"] = torch.tensor([3, 3, 1])
    for b in views:
        b["valid"] = torch.ones(len(b["input"]), dtype=torch.bool)
    views[0]["valid"][2] = False  # a view that did not decode: left out
    d.calibrate(Batches(views), torch.device("cpu"))
    video = torch.cat([views[0]["input"][[0, 1, 3]], views[1]["input"]])
    y = torch.cat([views[0]["targets"]["label"][[0, 1, 3]], views[1]["targets"]["label"]])
    for k in (0, 1):
        z = d.run_teacher(k, video)[0]
        t = fit_temperature(z, y)
        assert d.temperature["label"][k] == t
        p = (z / t).softmax(1)[torch.arange(len(y)), y]
        for c in range(4):
            expected = p[y == c].mean() if (y == c).any() else p.mean()  # no view of the class: the mean
            assert float(d.heldout["label"][k, c]) == pytest.approx(float(expected), abs=1e-5)
    d.train()
    _, losses = d({**views[0]})  # trains with the estimates
    assert torch.isfinite(losses["datw"])
    fresh = make("dual_teacher", None, "DATA.CALIBRATION_SPLIT", "val", "DISTILL.DATW_CALIBRATE", "true").train()
    with pytest.raises(ConfigError, match="DISTILL.DATW_CALIBRATE / DATW_CONFIDENCE heldout_class: estimated by"):
        fresh(views[0])  # never calibrated: a clear error, not a KeyError


def test_sdd_targets_are_detached_and_projections_fixed():
    distiller = make("dual_teacher").train()
    assert not distiller.phi_v.weight.requires_grad and not distiller.phi_c.weight.requires_grad
    w = distiller.phi_c.weight.flatten(1)  # [256, 192]: orthonormal columns
    assert torch.allclose(w.T @ w, torch.eye(w.shape[1]), atol=1e-5)
    phi_before = distiller.phi_v.weight.clone()
    b = batch()
    _, f_v, _ = distiller.run_teacher(0, b["input"])
    _, f_c, _ = distiller.run_teacher(1, b["input"])
    f_v, f_c = f_v[-1].requires_grad_(), f_c[-1].requires_grad_()
    r_c, r_res, _ = distiller.sdd_targets(f_v, f_c, (1, 1, 1))
    assert not r_c.requires_grad and not r_res.requires_grad
    assert r_c.shape == (6, 256, 1, 1, 1)
    assert torch.allclose(r_c.mean(1), torch.zeros(6, 1, 1, 1), atol=1e-5)  # per-position layer norm
    optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.1)
    _, losses = distiller(b)
    sum(losses.values()).backward()
    optimizer.step()
    assert torch.equal(distiller.phi_v.weight, phi_before)
    assert distiller.g_aux[-1].weight.grad is not None
    export = set(distiller.student_state_dict())
    assert not any(k.startswith(("g_main", "g_aux", "phi")) for k in export)


def test_learned_phi_trains_only_from_teacher_features():
    distiller = make("dual_teacher", None, "DISTILL.SDD_PHI", "learned").train()
    assert distiller.phi_v.weight.requires_grad and not distiller.phi_c.weight.requires_grad
    _, losses = distiller(batch())
    assert "sdd_phi" in losses
    grads = torch.autograd.grad(losses["sdd_phi"], list(distiller.student.parameters()), allow_unused=True)
    assert all(g is None for g in grads)  # phi_V's loss never reaches the student


def test_epic_two_heads_losses_per_head():
    heads = {"verb": 3, "noun": 5}
    distiller = make("dual_teacher", heads).train()
    logits, losses = distiller(batch(heads))
    assert logits.shape == (6, 8)
    assert set(distiller.split(logits)) == {"verb", "noun"}
    assert distiller.stats["w_vit"].shape == (6,)


def test_dkd_warm_up_gives_the_first_epoch_one_warmup_th():
    """The engine counts epochs from 0; DKD's reference counts from 1: its first epoch has factor 1 / warmup."""
    distiller = make("dkd", None, "DISTILL.DKD_WARMUP", "20").train()
    losses = {}
    for epoch in (0, 19):  # the first epoch, and the last of the warm-up (factor 1)
        distiller.epoch = epoch
        torch.manual_seed(0)
        losses[epoch] = float(distiller(batch())[1]["dkd"])
    assert losses[19] > 0 and math.isclose(losses[0], losses[19] / 20, rel_tol=1e-5)


def test_rkd_method_is_weighted_by_rkd_weight():
    from vidkd.errors import ConfigError

    values = {}
    for weight in ("1.0", "2.5"):
        distiller = make("rkd", None, "DISTILL.RKD_WEIGHT", weight).train()
        torch.manual_seed(0)
        values[weight] = float(distiller(batch())[1]["rkd"])
    assert values["1.0"] > 0 and math.isclose(values["2.5"], 2.5 * values["1.0"], rel_tol=1e-5)
    with pytest.raises(ConfigError, match=r"^command line: config key 'DISTILL\.RKD_WEIGHT': the rkd method needs "
                                          r"DISTILL\.RKD_WEIGHT above 0"):
        config("rkd", "DISTILL.RKD_WEIGHT", "0.0")


@pytest.mark.parametrize("method", methods_for("video"))
def test_no_stage_map_outlives_a_step(method):
    """The taps keep stage maps only during their own call: methods that read none (CE, KD, DKD) leave none
    alive between steps, and the others leave none either."""
    distiller = make(method, None, "DISTILL.RKD_WEIGHT", "1.0").train()
    _, losses = distiller(batch())
    sum(losses.values()).backward()
    assert distiller.student_taps._saved == {} and all(t._saved == {} for t in distiller.teacher_taps)
    distiller.student(batch()["input"])  # a plain forward (evaluation) keeps nothing either
    assert distiller.student_taps._saved == {}
