"""CAFD (METHODS.md 5): URFM's output shapes and its positional bias that follows the face's landmarks; APT's prompts in
a frozen Swin (window attention, by hand) and ViT (prepended, dropped); the loss terms, the ablation switches, the
cache refused, and training end to end."""
import math

import pytest
import torch
from conftest import face_config, records

from vidkd.config import load_config
from vidkd.distill.build import build_distiller
from vidkd.distill.cafd import FACE_TEMPLATE, URFM, FixedRegions, face_distances, on_common_grid
from vidkd.engine.trainer import PRECISIONS, Trainer, cast_for_training
from vidkd.errors import ConfigError
from vidkd.models import REGISTRIES


def test_urfm_gives_l_local_features_and_an_attention_map_per_query():
    urfm = URFM(64, 32, queries=49)
    h, attention = urfm(torch.randn(2, 64, 14, 14))
    assert h.shape == (2, 49, 32) and attention.shape == (2, 49, 14, 14)
    assert torch.allclose(attention.sum((2, 3)), torch.ones(2, 49))
    with pytest.raises(ValueError, match="not a square grid"):
        URFM(64, 32, queries=50)


def test_the_distance_adds_the_pixels_distance_to_the_landmark_nearest_the_centre():
    """Query 0 of a 7 x 7 grid is centred at (1/14, 1/14); the template landmark nearest it is the left eye. Pixel 0
    of a 14 x 14 map is centred at (1/28, 1/28)."""
    eye = (FACE_TEMPLATE[0][0] / 112, FACE_TEMPLATE[0][1] / 112)
    plain = math.hypot(1 / 14 - 1 / 28, 1 / 14 - 1 / 28)
    to_eye = math.hypot(eye[0] - 1 / 28, eye[1] - 1 / 28)
    assert face_distances(49, (14, 14), 0.0)[0, 0].item() == pytest.approx(plain, rel=1e-5)
    assert face_distances(49, (14, 14), 2.0)[0, 0].item() == pytest.approx(plain + 2 * to_eye, rel=1e-5)


def test_the_positional_bias_changes_with_the_landmark_distances():
    """On a map of zeros the features say nothing, so each query's attention is the softmax of its bias row alone.
    With the table falling with the bucket, gamma 0 attends around the query's centre; gamma 1 pulls the attention of
    a query near the left eye towards the eye."""
    def attention(gamma):
        urfm = URFM(8, 16, queries=49, buckets=32, gamma=gamma)
        with torch.no_grad():
            urfm.table.copy_(-torch.arange(32.0))  # nearer: more attention
        return urfm(torch.zeros(1, 8, 28, 28))[1][0]

    plain, face = attention(0.0), attention(1.0)
    assert not torch.allclose(plain, face)
    query = 7 * 2 + 1  # centre (3/14, 5/14) in (x, y): the left eye (0.34, 0.46) is its nearest landmark
    peak = divmod(int(plain[query].argmax()), 28)  # (row, column) of the pixel it attends to most
    assert abs(peak[0] - 10) <= 1 and abs(peak[1] - 6) <= 1  # its own centre: row 5/14 * 28 = 10, column 6
    eye_pixel = (int(FACE_TEMPLATE[0][1] / 112 * 28), int(FACE_TEMPLATE[0][0] / 112 * 28))
    far_pixel = (26, 26)
    gain = face[query] / plain[query]
    assert gain[eye_pixel] > gain[far_pixel]  # the eye gains attention relative to a far pixel


# The method: APT in a frozen Swin / ViT teacher, the loss terms, the ablation switches, training end to end.
CROP = 32


def cafd(teacher="swin_face_tiny", student="mobilefacenet_tiny", **overrides):
    args = {"TASK": "face", "DISTILL.METHOD": "cafd", "DATA.TRAIN_CROP_SIZE": CROP, "MODEL.TEACHERS": f"[{teacher}]",
            "DISTILL.CAFD_DIM": 16, "DISTILL.CAFD_HEADS": 2, "DISTILL.CAFD_PROMPTS": 3, **overrides}
    cfg = load_config(None, [str(x) for kv in args.items() for x in kv])
    torch.manual_seed(0)
    face = REGISTRIES["face"]
    return build_distiller(cfg, face[student](crop_size=CROP), [face[teacher](crop_size=CROP)], {"identity": 5}).train()


def face_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"input": torch.randn(4, 3, CROP, CROP, generator=g), "targets": {"identity": torch.tensor([0, 1, 2, 3])}}


@pytest.mark.parametrize("teacher", ["swin_face_tiny", "vit_face_tiny"])
def test_only_the_prompts_learn_in_the_teacher_and_its_weights_stay_bit_identical(teacher):
    distiller = cafd(teacher)
    frozen = distiller.teachers[0]
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    prompts = [p.detach().clone() for p in distiller.apt.prompts]
    assert [name for name, _ in distiller.apt.named_parameters()] == [f"prompts.{i}" for i in range(4)]
    assert not {id(p) for p in frozen.parameters()} & {id(p) for p in distiller.parameters()}
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        _, losses = distiller(face_batch())
        assert set(losses) == {"ce", "attention", "feature", "teacher_fr"}
        sum(losses.values()).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.apt.prompts)
        assert all(p.grad is None for p in frozen.parameters())
        optimizer.step()
    assert all(torch.equal(v, frozen.state_dict()[k]) for k, v in before.items())
    assert all(not torch.equal(a, b) for a, b in zip(prompts, distiller.apt.prompts))
    assert not any(k.startswith(("apt", "urfm", "msa", "teacher_margin")) for k in distiller.student_state_dict())


def test_swin_prompted_window_attention_is_the_softmax_over_the_windows_keys_and_the_prompts():
    """Block 0 of stage 1 (4 x 4 windows, width 32, 2 heads) on 4 windows (2 images x 2 windows) with a shift mask,
    computed by hand for every window, head and query: the logits of the window's 16 keys get the relative-position
    bias and the mask, those of the 3 prompts (through norm1, then the k / v rows of qkv) get neither."""
    distiller = cafd()
    block = distiller.teachers[0].body.net.layers[1].blocks[0]
    attn, c, heads = block.attn, 32, 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, c, generator=g)
    mask = torch.where(torch.rand(2, 16, 16, generator=g) < 0.3, -100.0, 0.0)
    with torch.no_grad(), distiller.apt.prompting():
        got = attn(x, mask)
    w, b = attn.qkv.weight.detach(), attn.qkv.bias.detach()
    prompts = block.norm1(distiller.apt.prompts[1]).detach()  # [3, 32]
    bias, hd = attn._get_rel_pos_bias()[0].detach(), c // heads
    expected = torch.zeros(4, 16, c)
    for window in range(4):
        for h in range(heads):
            rows = slice(h * hd, (h + 1) * hd)
            wq, wk, wv = w[rows], w[c:][rows], w[2 * c:][rows]
            bq, bk, bv = b[rows], b[c:][rows], b[2 * c:][rows]
            keys = torch.cat([x[window] @ wk.T + bk, prompts @ wk.T + bk])  # 16 + 3 keys
            values = torch.cat([x[window] @ wv.T + bv, prompts @ wv.T + bv])
            for i in range(16):
                q = x[window, i] @ wq.T + bq
                logits = (keys @ q) * hd ** -0.5
                logits[:16] += bias[h, i] + mask[window % 2, i]  # only the window's own columns
                expected[window, i, rows] = torch.softmax(logits, 0) @ values
    expected = attn.proj(expected).detach()
    assert torch.allclose(got, expected, atol=1e-5)
    with torch.no_grad():  # not prompting: timm's own attention, which differs (no prompt columns)
        plain = attn(x, mask)
    assert not torch.allclose(plain, got, atol=1e-3)


@pytest.mark.parametrize("apt", [True, False])
def test_the_teacher_unprompted_is_bit_identical_to_the_unpatched_teacher(apt):
    distiller = cafd(**{"DISTILL.CAFD_APT": apt})
    teacher = distiller.teachers[0]
    untouched = REGISTRIES["face"]["swin_face_tiny"](crop_size=CROP).eval()
    untouched.load_state_dict(teacher.state_dict())
    patched = ["forward" in vars(block.attn) for layer in teacher.body.net.layers for block in layer.blocks]
    assert patched == [apt] * 4
    x = face_batch()["input"]
    with torch.no_grad():
        assert torch.equal(teacher(x), untouched(x))
        if apt:
            with distiller.apt.prompting():
                assert not torch.allclose(teacher(x), untouched(x))


def test_vit_prompts_are_prepended_at_each_stage_and_dropped_after_it():
    """vit_face_tiny: 4 blocks, one per stage, 16 patch tokens and a class token. Each block gets its stage's own 3
    prompts in front; every stage gives back the 17 tokens it was given."""
    distiller = cafd("vit_face_tiny")
    teacher = distiller.teachers[0]
    seen = {}
    for i, block in enumerate(teacher.body.net.blocks):
        block.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(("in", i), args[0]))
        block.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(("out", i), out))
    x = face_batch()["input"]
    with torch.no_grad(), distiller.apt.prompting():
        _, features, _ = distiller.teacher_taps[0](x)
    for i in range(4):
        assert seen["in", i].shape[1] == 3 + 17 and seen["out", i].shape[1] == 17
        assert torch.equal(seen["in", i][0, :3], distiller.apt.prompts[i].detach())  # this stage's, fresh
    with torch.no_grad():
        _, plain, _ = distiller.teacher_taps[0](x)
    assert all(f.shape == p.shape == (4, 64, 4, 4) for f, p in zip(features, plain))
    assert seen["in", 0].shape[1] == 17 and not torch.allclose(features[-1], plain[-1])  # unprompted: no prompts


def test_attention_maps_meet_on_the_coarser_grid_as_distributions():
    fine = torch.zeros(1, 1, 4, 4)
    fine[0, 0, 0, 0], fine[0, 0, 3, 3] = 0.75, 0.25
    coarse = torch.full((1, 1, 2, 2), 0.25)
    a_t, a_s = on_common_grid(fine, coarse)
    assert torch.equal(a_s, coarse) and torch.allclose(a_t, torch.tensor([[[[0.75, 0.0], [0.0, 0.25]]]]))


def test_the_ablation_switches_remove_what_they_name():
    full = cafd("vit_face_tiny", "iresnet_tiny")
    _, losses = full(face_batch())
    assert set(losses) == {"ce", "attention", "feature", "teacher_fr"} and isinstance(full.urfm_s, URFM)
    assert losses["attention"] > 0  # the teacher's 4 x 4 attention and the student's 2 x 2, met on 2 x 2
    no_urfm = cafd(**{"DISTILL.CAFD_URFM": False})
    assert isinstance(no_urfm.urfm_s, FixedRegions) and isinstance(no_urfm.urfm_t, FixedRegions)
    assert set(no_urfm(face_batch())[1]) == {"ce", "feature", "teacher_fr"}  # no learned attention to compare
    no_apt = cafd(**{"DISTILL.CAFD_APT": False})
    assert no_apt.apt is None and not hasattr(no_apt, "teacher_margin")
    assert set(no_apt(face_batch())[1]) == {"ce", "attention", "feature"}
    assert no_apt.teacher_targets(face_batch()["input"])["features"].shape == (4, 128, 1, 1)
    flat = cafd(**{"DISTILL.CAFD_GAMMA": 0.0})
    grid = (8, 8)
    plain = (face_distances(49, grid, 0.0) / (math.sqrt(2) / 32)).long().clamp(max=31)
    assert torch.equal(flat.urfm_s.bucket_index(grid), plain)
    assert not torch.equal(full.urfm_s.bucket_index(grid), plain)
    assert [p.shape for p in cafd(**{"DISTILL.CAFD_PROMPTS": 5}).apt.prompts] == [(5, c) for c in (16, 32, 64, 128)]


def test_the_cache_is_refused_while_the_prompts_train_and_bad_settings_name_their_keys():
    with pytest.raises(ConfigError, match="DISTILL.CACHE"):
        cafd(**{"DISTILL.CACHE": "auto"})
    with pytest.raises(ConfigError, match="DISTILL.CACHE"):
        cafd().teacher_targets(face_batch()["input"])
    cafd(**{"DISTILL.CACHE": "auto", "DISTILL.CAFD_APT": False})  # the plain teacher's map can be cached
    with pytest.raises(ConfigError, match="DISTILL.CAFD_QUERIES"):
        cafd(**{"DISTILL.CAFD_QUERIES": 50})
    with pytest.raises(ConfigError, match="DISTILL.CAFD_APT"):  # a CNN teacher has nothing to prompt
        cafd("iresnet_tiny")
    assert cafd("iresnet_tiny", **{"DISTILL.CAFD_APT": False}).apt is None


@pytest.mark.parametrize("teacher", ["swin_face_tiny", "vit_face_tiny"])
def test_cafd_steps_in_bf16_with_fp32_losses_and_an_fp32_teacher(teacher):
    """What DeepSpeed trains (student, URFMs, MSA, prompts, margin heads) in bf16; the teacher outside, in fp32."""
    distiller = cast_for_training(cafd(teacher), PRECISIONS["bf16"]).train()
    assert {p.dtype for p in distiller.parameters()} == {torch.bfloat16}
    _, losses = distiller(face_batch())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in distiller.parameters())
    assert all(p.dtype == torch.float32 and p.grad is None for p in distiller.teachers[0].parameters())


def test_cafd_trains_a_face_student_through_the_trainer_with_its_loss_falling(face_data, tmp_path):
    """The ViT teacher: its last map is 4 x 4 at 32 px (the tiny Swin's is 1 x 1, where the attention term is 0)."""
    cfg = load_config(None, face_config(face_data, tmp_path / "cafd", "cafd", **{
        "TRAIN.EPOCHS": 3, "MODEL.TEACHERS": "[vit_face_tiny]", "DISTILL.CAFD_DIM": 16, "DISTILL.CAFD_HEADS": 2,
        "DISTILL.CAFD_PROMPTS": 3, "SOLVER.OPTIMIZER": "adamw", "SOLVER.BASE_LR": 0.003}))
    Trainer(cfg, "none").fit()
    history = records(str(tmp_path / "cafd"))
    assert len(history) == 3 and history[-1]["loss/total"] < history[0]["loss/total"]
    assert all(f"loss/{k}" in history[0] for k in ("ce", "attention", "feature", "teacher_fr"))
