"""PAT (METHODS.md 3) on image models: RAA and aligners fit every teacher family's stages, AFP leaves an untrained
teacher bit-identical and trains only its prompts, the feedback is method state that survives a kill."""
import numpy as np
import pytest
import torch
from PIL import Image
from conftest import launch, ok, records

from vidkd.config import load_config
from vidkd.distill.build import build_distiller
from vidkd.errors import ConfigError
from vidkd.models import build_image_model
from vidkd.models.taps import probe

CROP = 32
TEACHERS = {"CNN": "resnet_mini", "Swin": "swin_mini", "ViT": "deit_mini", "MLP": "resmlp_mini"}


def pat(teacher, student="resnet_mini", *overrides):
    cfg = load_config(None, ["TASK", "image", "DISTILL.METHOD", "pat", "DATA.TRAIN_CROP_SIZE", str(CROP),
                             "MODEL.TEACHERS", f"[{teacher}]", "DISTILL.PAT_DIM", "32", "DISTILL.PAT_HEADS", "4",
                             *overrides])
    torch.manual_seed(0)
    return build_distiller(cfg, build_image_model(student, 4, CROP), [build_image_model(teacher, 4, CROP)],
                           {"label": 4}).train()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"input": torch.randn(4, 3, CROP, CROP, generator=g), "index": torch.arange(4),
            "targets": {"label": torch.tensor([0, 1, 2, 3])}}


@pytest.mark.parametrize("family", sorted(TEACHERS))
@pytest.mark.parametrize("student", ["resnet_mini", "deit_mini"])
def test_raa_and_the_aligners_give_each_teacher_stage_its_own_shape(family, student):
    distiller = pat(TEACHERS[family], student)
    x = batch()["input"]
    _, f_s, _ = distiller.student_taps(x)
    tokens = distiller.raa(f_s)
    assert [t.shape for t in tokens] == [(4, 16, 32)] * 4  # q = 16 tokens of width d = 32 per student stage
    _, f_t, _ = distiller.run_teacher(0, x)
    assert [a(t).shape for a, t in zip(distiller.aligners, tokens)] == [f.shape for f in f_t]
    assert distiller.raa.weights.shape == (4, 64, 64)  # the attention map over all stages' tokens


@pytest.mark.parametrize("family", sorted(TEACHERS))
def test_an_untrained_afp_leaves_the_teacher_bit_identical_and_only_prompts_learn(family):
    distiller = pat(TEACHERS[family])
    teacher, x = distiller.teachers[0], batch()["input"]
    plain = distiller.run_teacher(0, x)
    distiller._prompting = True
    prompted = distiller.run_teacher(0, x, learn=True)
    distiller._prompting = False
    assert torch.equal(plain[0], prompted[0]) and all(torch.equal(a, b) for a, b in zip(plain[1], prompted[1]))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # the second step: beta is no longer 0, so the prompt blocks' weights get gradients too
        _, losses = distiller(batch())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        assert all(p.grad is None for p in teacher.parameters())
        optimizer.step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    prompts = distiller.prompts["1"]
    assert prompts.beta.item() != 0 and prompts.prompt[0].weight.grad.abs().sum() > 0
    assert set(distiller.feedback) == {0, 1, 2, 3}
    assert [f.shape for f in distiller.feedback.values()] == [(4, s["channels"], *s["grid"]) for s in
                                                             probe(teacher, (CROP, CROP))["stages"]]


def test_the_ablation_switches_remove_what_they_name():
    base = pat("deit_mini", "resnet_mini", "DISTILL.PAT_RAA", "False", "DISTILL.PAT_AFP", "False")
    assert not base.raa.attend and len(base.prompts) == 0
    _, losses = base(batch())
    assert set(losses) == {"ce", "kd", "hcl"}  # no prompted pass, no regulariser
    some = pat("deit_mini", "resnet_mini", "DISTILL.PAT_AFP_STAGES", "[2, 3]", "DISTILL.PAT_TOKENS", "4")
    assert sorted(some.prompts) == ["2", "3"] and some.raa(some.student_taps(batch()["input"])[1])[0].shape[1] == 4
    blind = pat("deit_mini", "resnet_mini", "DISTILL.PAT_FEEDBACK", "False")
    blind(batch())
    torch.nn.init.constant_(blind.prompts["0"].beta, 1.0)
    blind.feedback = {i: f * 1e6 for i, f in blind.feedback.items()}  # ignored: zeros go in instead
    out = blind(batch())[1]["hcl"]
    blind.feedback = {}
    assert torch.equal(out, blind(batch())[1]["hcl"])
    for key, value, message in [("DISTILL.PAT_TOKENS", "8", "not a square"), ("DISTILL.PAT_AFP_STAGES", "[4]", "not among"),
                                ("DISTILL.PAT_HEADS", "5", "multiple of DISTILL.PAT_HEADS")]:
        with pytest.raises(ConfigError, match=message):
            pat("deit_mini", "resnet_mini", key, value)


def test_pat_refuses_a_video_config_naming_the_key():
    cfg = load_config(None, ["DISTILL.METHOD", "pat", "DATA.NUM_FRAMES", "4", "DATA.TRAIN_CROP_SIZE", "32"])
    with pytest.raises(ConfigError, match="config key DISTILL.METHOD: pat trains TASK image models, this config's "
                                          "TASK is video; methods for video: ce, crd, dkd"):
        build_distiller(cfg, build_image_model("resnet_mini", 4, CROP), [build_image_model("deit_mini", 4, CROP)],
                        {"label": 4})


def test_a_killed_pat_run_resumes_bit_identical_feedback_included(tmp_path):
    from test_faults import assert_same_run, kill_at_a_random_step, position
    from test_images import image_folder

    for split in ("train", "test"):
        image_folder(tmp_path / split)
    ok(launch(["data_prep/prepare_images.py", "folder", "--train", str(tmp_path / "train"), "--test",
               str(tmp_path / "test"), "--out", str(tmp_path / "m")]))
    (tmp_path / "c.yaml").write_text("TASK: image\nMODEL:\n  TEACHERS: [deit_mini]\n  TEACHER_CHECKPOINTS: ['']\n"
                                     "  STUDENT: resnet_mini\n")
    common = ["DATA.MANIFEST_DIR", str(tmp_path / "m"), "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_SHORT_SIDE", "32",
              "DATA.TEST_CROP_SIZE", "32", "DATA.NUM_WORKERS", "0", "TRAIN.BATCH_SIZE", "2", "TRAIN.EPOCHS", "2",
              "TRAIN.CHECKPOINT_STEPS", "2", "DISTILL.METHOD", "pat", "DISTILL.PAT_DIM", "32", "DISTILL.PAT_HEADS",
              "4", "DEEPSPEED.PRECISION", "fp32", "TEST.NUM_CLIPS", "1", "TEST.NUM_CROPS", "1"]
    runs = {name: ["tools/train_net.py", "--config", str(tmp_path / "c.yaml"), *common, "OUTPUT_DIR",
                   str(tmp_path / name)] for name in ("whole", "killed")}
    ok(launch(runs["whole"]))
    tag = kill_at_a_random_step(runs["killed"], tmp_path / "killed", 1, np.random.default_rng(0),
                                tmp_path / "killed.log", [(0, 2), (0, 4), (1, 2)])
    resumed = ok(launch([*runs["killed"], "--resume", "auto"]))
    epoch, batch_ = position(tag)
    assert f"resumed from epoch {epoch}, batch {batch_}" in resumed.stderr
    assert_same_run(tmp_path / "killed", tmp_path / "whole")
    assert {"loss/hcl", "loss/reg"} <= set(records(str(tmp_path / "whole"))[0])
    picture = Image.open(tmp_path / "whole" / "raa_attention.png")  # the RAA attention of a test batch
    assert picture.size[0] > 200 and len(set(picture.convert("L").getdata())) > 20


def test_the_raa_attention_picture_marks_the_stages_and_needs_raa():
    distiller = pat("deit_mini", "resnet_mini").eval()
    with torch.no_grad():
        (name, figure), = distiller.figures({"input": batch()["input"]}).items()
    ax = figure.axes[0]
    assert name == "raa_attention.png" and ax.images[0].get_array().shape == (64, 64)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stage 1", "stage 2", "stage 3", "stage 4"]
    assert len(ax.lines) == 6  # 3 boundaries between 4 stages, each across and down
    assert pat("deit_mini", "resnet_mini", "DISTILL.PAT_RAA", "False").figures({"input": batch()["input"]}) == {}
