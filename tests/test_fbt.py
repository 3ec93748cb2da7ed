"""FBT (METHODS.md 4) on image models: the fusion model runs on the student's own stage parameters (the same
objects) and on a copy of the teacher's tail that trains while the teacher does not; knowledge flows T -> F -> S;
every ablation switch removes what it names; the fusion model is evaluated beside the student."""
import math

import pytest
import torch
from test_pat import CROP, batch
from timm.models.swin_transformer import SwinTransformerBlock

from vidkd.config import load_config
from vidkd.distill.build import build_distiller
from vidkd.engine.trainer import evaluate
from vidkd.errors import ConfigError
from vidkd.models import build_image_model

TAILS = {  # the teacher's modules after its stage 3, which the fusion model's copy trains
    "resnet_mini": {"net.layer4", "net.fc"},
    "swin_mini": {"net.layers.3", "net.norm", "net.head"},
    "deit_mini": {"net.blocks.3", "net.norm", "net.head"},
    "mobilenetv2_mini": {"net.blocks.5", "net.blocks.6", "net.conv_head", "net.bn2", "net.classifier"},
}


def fbt(teacher="deit_mini", student="resnet_mini", *overrides):
    cfg = load_config(None, ["TASK", "image", "DISTILL.METHOD", "fbt", "DATA.TRAIN_CROP_SIZE", str(CROP),
                             "MODEL.TEACHERS", f"[{teacher}]", "DISTILL.FBT_DIM", "32", *overrides])
    torch.manual_seed(0)
    return build_distiller(cfg, build_image_model(student, 4, CROP), [build_image_model(teacher, 4, CROP)],
                           {"label": 4}).train()


def params(module, names):
    return {id(p) for name in names for p in module.get_submodule(name).parameters()}


@pytest.mark.parametrize("student", ["resnet_mini", "deit_mini"])
def test_the_fusion_model_runs_on_the_students_own_stage_parameters(student):
    distiller = fbt("deit_mini", student)
    s, x = distiller.student, batch()["input"]
    _, features, _ = distiller.student_taps(x)
    logits, embedding = distiller.fusion.from_stage(features[-2])
    assert logits.shape == (4, 4) and embedding.shape == (4, 64)  # the teacher's classes and width
    logits.sum().backward()
    reached = {id(p) for p in s.parameters() if p.grad is not None}
    assert params(s, s.stage_names[:-1]) <= reached  # stages 1-3 of F are the student's
    assert not reached & params(s, [s.stage_names[-1], s.head_name])  # the student's stage 4 and head are not in F
    assert not any(k.startswith("student") for k in distiller.fusion.state_dict())  # held once, by the distiller
    distiller.eval()
    with torch.no_grad():  # identity, not equality: the student's weights changed, F changed
        before = distiller.fusion(x)
        for p in s.get_submodule(s.stage_names[0]).parameters():
            p.add_(0.05)
        assert not torch.allclose(distiller.fusion(x), before)


@pytest.mark.parametrize("teacher", sorted(TAILS))
def test_the_fusion_tail_is_a_trainable_copy_of_the_teachers_and_the_teacher_stays_frozen(teacher):
    distiller = fbt(teacher)
    frozen, copy, x = distiller.teachers[0], distiller.fusion.copy, batch()["input"]
    trained = {n for n, p in copy.named_parameters() if p.requires_grad}
    assert {n for n in trained if not any(n.startswith(t + ".") for t in TAILS[teacher])} == set()
    assert all(any(n.startswith(t + ".") for n in trained) for t in TAILS[teacher])
    assert not {p.data_ptr() for p in frozen.parameters()} & {p.data_ptr() for p in copy.parameters()}
    # the copy's tail on the teacher's own stage-3 output gives the teacher's logits, bit for bit
    out = {}
    hook = frozen.get_submodule(frozen.stage_names[-2]).register_forward_hook(lambda m, a, o: out.update(o=o))
    with torch.no_grad():
        expected = frozen(x)
        hook.remove()
        copy.eval()
        distiller.fusion._replacement = out["o"]
        assert torch.equal(copy(x[:1]), expected)
    distiller.fusion._replacement = None
    distiller.train()  # the tail trains in training mode, the frozen front stays in eval mode (its BN statistics)
    assert {m.training for n, m in copy.named_modules() if any(n.startswith(t) for t in TAILS[teacher])} == {True}
    assert distiller.fusion._frozen and not any(m.training for m in distiller.fusion._frozen)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    start = {n: p.detach().clone() for n, p in copy.named_parameters()}
    optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        _, losses = distiller(batch())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert all(torch.equal(v, frozen.state_dict()[k]) for k, v in before.items())
    moved = {n for n, p in copy.named_parameters() if not torch.equal(p, start[n])}
    assert moved and moved <= trained  # the tail learns, the copy's frozen part does not


@pytest.mark.parametrize("pair, learns, still", [
    ("tf", ["fusion.copy", "fusion.l2g", "project.t", "project.f", "student.net.layer1"],
     ["student.net.layer4", "student.net.fc"]),  # F learns from T (and through F, the student's stages 1-3)
    ("fs", ["student.net.layer4", "project.f", "project.s"], ["fusion.copy", "fusion.l2g"]),  # S from F, not back
])
def test_knowledge_flows_from_the_first_of_each_pair_to_the_second(pair, learns, still):
    distiller = fbt("deit_mini", "resnet_mini", "DISTILL.FBT_PAIRS", f"[{pair}]", "DISTILL.CE_WEIGHT", "0")
    _, losses = distiller(batch())
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in distiller.named_parameters() if p.requires_grad}

    def got(prefix):
        return any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix))

    assert all(got(p) for p in learns) and not any(got(p) for p in still)
    assert distiller.log_scale.grad is not None


def test_the_loss_terms_and_the_temperatures_start():
    distiller = fbt()
    assert distiller.log_scale.exp().item() == pytest.approx(1 / 0.07)
    _, losses = distiller(batch())
    assert set(losses) == {"ce", "infonce", "ofa"} and all(torch.isfinite(v) and v > 0 for v in losses.values())
    # 4 images: InfoNCE of unrelated features is near log 4 per pair and direction, over the 3 pairs
    assert 3 * math.log(4) / 3 < losses["infonce"].item() < 3 * math.log(4) * 3


def test_the_ablation_switches_remove_what_they_name():
    assert isinstance(fbt().fusion.l2g.block, SwinTransformerBlock)
    assert fbt("deit_mini", "resnet_mini", "DISTILL.FBT_L2G_BLOCK", "False").fusion.l2g.block is None
    cnn = fbt("resnet_mini").fusion.l2g  # a CNN teacher: a 1x1 conv + BN
    assert cnn.block is None and isinstance(cnn.norm, torch.nn.BatchNorm2d) and cnn.embed.kernel_size == (1, 1)
    no_nce = fbt("deit_mini", "resnet_mini", "DISTILL.FBT_INFONCE", "False")
    assert not hasattr(no_nce, "project") and set(no_nce(batch())[1]) == {"ce", "ofa"}
    assert set(fbt("deit_mini", "resnet_mini", "DISTILL.FBT_OFA", "False")(batch())[1]) == {"ce", "infonce"}
    no_tf = fbt("deit_mini", "resnet_mini", "DISTILL.FBT_PAIRS", "[ts, fs]")  # (C): F is built but learns nothing
    assert not any(p.requires_grad for p in no_tf.fusion.parameters()) and no_tf.project["f"].weight.requires_grad
    no_fusion = fbt("deit_mini", "resnet_mini", "DISTILL.FBT_PAIRS", "[ts]")  # no pair names F: none is built
    assert no_fusion.fusion is None and no_fusion.evaluated_models() == {} and sorted(no_fusion.project) == ["s", "t"]
    with pytest.raises(ConfigError, match="DISTILL.FBT_PAIRS"):
        fbt("deit_mini", "resnet_mini", "DISTILL.FBT_PAIRS", "[st]")
    cfg = load_config(None, ["DISTILL.METHOD", "fbt", "DATA.NUM_FRAMES", "4", "DATA.TRAIN_CROP_SIZE", "32"])
    with pytest.raises(ConfigError, match="DISTILL.METHOD: fbt trains TASK image models"):
        build_distiller(cfg, build_image_model("resnet_mini", 4, CROP), [build_image_model("deit_mini", 4, CROP)],
                        {"label": 4})


class Batches(list):
    """A list of batches with the loader's two attributes `evaluate` reads."""

    def __init__(self, batches, dataset):
        super().__init__(batches)
        self.dataset = dataset

    def set_epoch(self, epoch):
        pass


def test_the_fusion_model_is_evaluated_as_the_student_is():
    from types import SimpleNamespace

    distiller = fbt()
    b = batch()
    dataset = SimpleNamespace(n_clips=1, n_crops=1, manifest=SimpleNamespace(samples=[0] * 4))
    loader = Batches([{**b, "view": torch.zeros(4, dtype=torch.long), "valid": torch.ones(4, dtype=torch.bool)}],
                     dataset)
    (name, model), = distiller.evaluated_models().items()
    metrics, _ = evaluate(model, loader, {"label": 4}, torch.device("cpu"), show=False)
    with torch.no_grad():
        hits = (distiller.fusion(b["input"]).argmax(1) == b["targets"]["label"]).float().mean().item()
    assert name == "fusion" and metrics["top1"] == pytest.approx(100 * hits)
    assert not distiller.student.training  # evaluated in eval mode, the student's stages included
    with torch.no_grad():  # a test crop other than the training crop: L2G resizes the student's map
        assert distiller.fusion(torch.randn(2, 3, 48, 48)).shape == (2, 4)


def test_the_copy_does_not_inherit_the_teachers_autocast():
    from vidkd.models.fast import speed_up

    cfg = load_config(None, ["TASK", "image", "DISTILL.METHOD", "fbt", "DATA.TRAIN_CROP_SIZE", str(CROP),
                             "MODEL.TEACHERS", "[deit_mini]"])
    teacher = speed_up(build_image_model("deit_mini", 4, CROP), cfg.MODEL, teacher=True)
    assert "forward" in teacher.__dict__  # MODEL.TEACHER_AUTOCAST: bf16 autocast on a GPU, for the frozen teacher
    distiller = build_distiller(cfg, build_image_model("resnet_mini", 4, CROP), [teacher], {"label": 4})
    assert "forward" not in distiller.fusion.copy.__dict__  # the copy trains in the training precision
