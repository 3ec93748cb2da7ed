"""The face methods (METHODS.md 6): ILED + RPSD's total and memory banks by hand, its ablations, the embedding
baselines by hand, and every face method (iled_rpsd, embedding mse / cosine, fitnet, rkd) trained on the tiny face
set through the Trainer, live and (iled_rpsd, embedding) from the teacher-output cache."""
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import face_config, records

from vidkd.config import load_config
from vidkd.data.loader import build_dataset
from vidkd.data.video_dataset import collate
from vidkd.distill.build import build_distiller
from vidkd.engine import teacher_cache
from vidkd.engine.trainer import Trainer, build_models
from vidkd.errors import ConfigError

HEADS = {"identity": 5}
B, D = 4, 64


def distiller(tmp_path, method, *extra):
    cfg = load_config(None, face_config(tmp_path, tmp_path / "out", method, **dict(zip(extra[::2], extra[1::2]))))
    torch.manual_seed(0)
    return build_distiller(cfg, *build_models(cfg, HEADS), HEADS)


def batch(seed, with_teacher=True):
    """Random 32 px faces, identities, and (with_teacher) the teacher's embedding as the cache would give it."""
    g = torch.Generator().manual_seed(seed)
    out = {"input": torch.randn(B, 3, 32, 32, generator=g), "index": torch.arange(B),
           "targets": {"identity": torch.randint(0, 5, (B,), generator=g)}}
    if with_teacher:
        out["teacher"] = {"embedding": torch.randn(B, D, generator=g)}
    return out


def hand_iled(e_s, e_t, r=40.0, s=0.9, b=0.1):
    total = 0.0
    for i in range(len(e_s)):
        c = float(e_s[i] @ e_t[i] / (e_s[i].norm() * e_t[i].norm()))
        total += math.log(1 + math.exp(r * (s - c))) / r + b * (1 - c)
    return total / len(e_s)


def hand_rpsd(e_s, e_t, m_s, m_t, r=60.0, t=0.05, b=1.0):
    total = 0.0
    for i in range(len(e_s)):
        for j in range(len(m_s)):
            delta = abs(float(e_s[i] @ m_s[j] / e_s[i].norm()) - float(e_t[i] @ m_t[j] / e_t[i].norm()))
            total += b / r * math.log(1 + math.exp(r * (delta - t)))
    return total / (len(e_s) * len(m_s))


def test_iled_rpsd_total_by_hand_for_a_fixed_batch_and_bank(tmp_path):
    d = distiller(tmp_path, "iled_rpsd", "TRAIN.BATCH_SIZE", 2).train()  # banks of 3 x 2 rows
    g = torch.Generator().manual_seed(5)
    past_s, past_t = F.normalize(torch.randn(5, D, generator=g), dim=1), F.normalize(torch.randn(5, D, generator=g),
                                                                                     dim=1)
    d.banks["student"].push(past_s)  # 5 of 6 rows held
    d.banks["teacher"].push(past_t)
    x = batch(0)
    torch.manual_seed(1)
    e_s, losses = d(x)
    assert set(losses) == {"ce", "iled", "rpsd"}
    e_s, e_t = e_s.detach().double(), x["teacher"]["embedding"].double()
    assert losses["iled"].item() == pytest.approx(1.0 * hand_iled(e_s, e_t), rel=1e-5)
    # RPSD against the 5 past rows only: the batch is pushed after its loss
    assert losses["rpsd"].item() == pytest.approx(40.0 * hand_rpsd(e_s, e_t, past_s.double(), past_t.double()),
                                                  rel=1e-5)
    torch.manual_seed(1)
    ce = d.ce(d.student(x["input"]), x["targets"])
    assert losses["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    # then the batch went in: the oldest rows dropped, the newest (L2-normalised) last
    held = d.banks["student"].contents()
    assert torch.allclose(held, torch.cat([past_s[3:], F.normalize(e_s.float(), dim=1)]), atol=1e-6)
    assert torch.allclose(d.banks["teacher"].contents()[-B:], F.normalize(e_t.float(), dim=1), atol=1e-6)


def test_the_first_step_has_empty_banks_and_no_rpsd_and_the_total_backpropagates(tmp_path):
    d = distiller(tmp_path, "iled_rpsd").train()
    _, losses = d(batch(0))
    assert losses["rpsd"].item() == 0.0 and d.banks["student"].count == B
    _, losses = d(batch(1))
    assert losses["rpsd"].item() > 0
    sum(losses.values()).backward()  # the bank's copy is read by backward after the push wrote into the bank
    assert all(p.grad is not None for p in d.student.parameters() if p.requires_grad)


def test_banks_keep_fifo_order_across_steps_and_restored_banks_give_the_same_next_loss(tmp_path):
    d = distiller(tmp_path, "iled_rpsd", "TRAIN.BATCH_SIZE", 2, "DISTILL.ILED_RPSD_BANK", 2).train()  # 4 rows
    pushed = []
    for step in range(3):  # 12 teacher rows through a bank of 4
        x = batch(step)
        d(x)
        pushed.append(F.normalize(x["teacher"]["embedding"], dim=1))
    assert torch.allclose(d.banks["teacher"].contents(), torch.cat(pushed)[-4:])
    state = {k: v.clone() for k, v in d.method_state().items()}
    assert set(state) == {"student.data", "student.meta", "teacher.data", "teacher.meta"}
    weights = {k: v.clone() for k, v in d.state_dict().items()}

    d.eval()  # as a resumed run: the same weights, then the saved banks
    other = distiller(tmp_path, "iled_rpsd", "TRAIN.BATCH_SIZE", 2, "DISTILL.ILED_RPSD_BANK", 2)
    other.load_state_dict(weights)
    other.load_method_state(state)
    for m in (d, other):
        m.train()
    torch.manual_seed(3)
    _, want = d(batch(9))
    torch.manual_seed(3)
    _, got = other(batch(9))
    assert all(torch.equal(got[k], want[k]) for k in want) and want["rpsd"] > 0
    assert all(torch.equal(a, b) for a, b in zip(other.method_state().values(), d.method_state().values()))


@pytest.mark.parametrize("off, kept", [("DISTILL.RPSD_WEIGHT", "iled"), ("DISTILL.ILED_WEIGHT", "rpsd")])
def test_each_ablation_removes_its_term(tmp_path, off, kept):
    full = distiller(tmp_path, "iled_rpsd").train()
    ablated = distiller(tmp_path, "iled_rpsd", off, 0.0).train()
    for step in range(2):
        x = batch(step)
        torch.manual_seed(4)
        _, want = full(x)
        torch.manual_seed(4)
        _, got = ablated(x)
    assert set(got) == {"ce", kept}
    assert torch.equal(got["ce"], want["ce"]) and torch.equal(got[kept], want[kept])
    assert (ablated.method_state() == {}) == (kept == "iled")  # no banks without RPSD
    with pytest.raises(ConfigError, match="DISTILL.ILED_WEIGHT or DISTILL.RPSD_WEIGHT above 0"):
        load_config(None, face_config(tmp_path, tmp_path, "iled_rpsd", **{"DISTILL.ILED_WEIGHT": 0.0,
                                                                            "DISTILL.RPSD_WEIGHT": 0.0}))


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_embedding_losses_by_hand(tmp_path, kind):
    d = distiller(tmp_path, "embedding", "DISTILL.EMBED_LOSS", kind, "DISTILL.FEATURE_WEIGHT", 2.5).train()
    x = batch(0)
    e_s, losses = d(x)
    e_s, e_t = e_s.detach().double(), x["teacher"]["embedding"].double()
    if kind == "mse":
        want = sum(float((e_s[i, k] - e_t[i, k]) ** 2) for i in range(B) for k in range(D)) / (B * D)
    else:
        want = sum(1 - float(e_s[i] @ e_t[i] / (e_s[i].norm() * e_t[i].norm())) for i in range(B)) / B
    assert set(losses) == {"ce", f"embed_{kind}"}
    assert losses[f"embed_{kind}"].item() == pytest.approx(2.5 * want, rel=1e-5)


@pytest.mark.parametrize("method", ["iled_rpsd", "embedding"])
def test_mismatched_embedding_widths_are_refused_naming_the_keys(tmp_path, method):
    # iresnet_tiny is 64-d, iresnet18 512-d
    with pytest.raises(ConfigError, match=r"MODEL.STUDENT and MODEL.TEACHERS.*MODEL.STUDENT iresnet_tiny gives 64-d"
                                          r".*MODEL.TEACHERS\[0\] iresnet18 gives 512-d"):
        distiller(tmp_path, method, "MODEL.TEACHERS", "[iresnet18]")


TRAINED = {"iled_rpsd": {}, "embedding_mse": {"DISTILL.EMBED_LOSS": "mse"},
           "embedding_cosine": {"DISTILL.EMBED_LOSS": "cosine"}, "fitnet": {}, "rkd": {"DISTILL.RKD_WEIGHT": 1.0}}


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_every_face_method_trains_with_its_loss_falling_and_verifies(face_data, tmp_path, name):
    method = name.split("_")[0] if name.startswith("embedding") else name
    out = tmp_path / name
    cfg = load_config(None, face_config(face_data, out, method, **TRAINED[name], **{
        "TRAIN.EPOCHS": 4, "TRAIN.EVAL_PERIOD": 4, "SOLVER.OPTIMIZER": "adamw", "SOLVER.BASE_LR": 0.003,
        "SOLVER.WARMUP_EPOCHS": 0.0}))
    Trainer(cfg, "none").fit()
    history = records(out)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    terms = [k for k in history[0] if k.startswith("loss/") and k != "loss/total"]
    assert len(terms) >= 2, terms  # L_FR and the distillation term(s)
    assert history[-1]["loss/total"] < history[0]["loss/total"], [r["loss/total"] for r in history]
    assert math.isfinite(history[-1]["test/accuracy"]) and 0 <= history[-1]["test/accuracy"] <= 100


@pytest.mark.parametrize("method", ["iled_rpsd", "embedding"])
def test_the_teacher_cache_serves_the_face_methods(face_data, tmp_path, caplog, method):
    """DISTILL.CACHE auto: the teacher's embeddings stored once (within fp16 of the live teacher's, and giving its
    losses on the same views), then a run trains from them."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    cfg = load_config(None, face_config(face_data, out, method, **{"DISTILL.CACHE": "auto", "DISTILL.CACHE_VIEWS": 2,
                                                                    "DISTILL.CACHE_DIR": str(cache)}))
    torch.manual_seed(0)
    data = build_dataset(cfg, train=True, cache_views=teacher_cache.views(cfg))
    heads = {h: len(n) for h, n in data.manifest.label_sets.items()}
    d = build_distiller(cfg, *build_models(cfg, heads), heads)
    data.teacher_cache = teacher_cache.prepare(cfg, d, data, torch.device("cpu"), 0, 1)
    x = collate([data.view_item(i, v) for i, v in [(0, 0), (7, 1), (12, 1), (29, 0)]])
    assert set(x["teacher"]) == {"embedding"} and x["teacher"]["embedding"].shape == (4, 64)
    d.train()
    with torch.no_grad():
        live = d.teacher_targets(x["input"])["embedding"]
        assert torch.allclose(x["teacher"]["embedding"].float(), live, rtol=2e-3, atol=2e-3)
        live_in = {"input": x["input"], "targets": x["targets"]}
        torch.manual_seed(1)
        _, from_live = d(live_in)
        torch.manual_seed(1)
        if method == "iled_rpsd":  # the same banks for both
            d.load_method_state({k: torch.zeros_like(v) for k, v in d.method_state().items()})
        _, from_cache = d({**live_in, "teacher": {"embedding": x["teacher"]["embedding"].float()}})
    for name in from_live:
        assert torch.isclose(from_cache[name], from_live[name], rtol=1e-2, atol=1e-4), name

    with caplog.at_level(logging.INFO, logger="vidkd.engine"):
        Trainer(cfg, "none").fit()
    assert f"teacher outputs from the cache {data.teacher_cache.folder}" in caplog.text  # the one filled above
    history = records(out)
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(math.isfinite(v) for k, v in history[-1].items() if k.startswith("loss/"))
    assert math.isfinite(history[-1]["test/accuracy"])
