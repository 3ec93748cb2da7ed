"""The fast paths (vidkd.models.fast, Distiller.run_teacher) change no output: teachers in inference mode under
every method's backward, bf16 autocast on the GPU only, channels_last_3d, torch.compile with the taps."""
import copy
import os
import shutil

import pytest
import torch
from test_distill import batch, make

from vidkd.config import load_config
from vidkd.distill.build import methods_for
from vidkd.models import build_model
from vidkd.models import fast as fast_paths
from vidkd.models.fast import speed_up
from vidkd.models.taps import FeatureTaps

# Inductor compiles its CPU kernels with $CXX, else g++.
CXX = shutil.which(os.environ.get("CXX", "g++"))


def fast(*switches):
    """MODEL with every fast path off but `switches` (MODEL keys set to True)."""
    keys = ["CHANNELS_LAST", "COMPILE", "TEACHER_AUTOCAST"]
    overrides = [v for k in keys for v in (f"MODEL.{k}", str(k in switches))]
    return load_config(None, overrides).MODEL


def outputs(model, x):
    """Logits, stage features and embedding through the taps, in eval mode, without gradients."""
    taps = FeatureTaps(model.eval())
    try:
        with torch.no_grad():
            logits, features, embedding = taps(x)
    finally:
        taps.remove()
    return [logits, *features, embedding]


def assert_close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)


@pytest.mark.parametrize("variant", methods_for("video") + ["dual_teacher_learned_phi"])
def test_every_method_backpropagates_through_inference_mode_teachers(variant):
    method, learned = variant.removesuffix("_learned_phi"), variant.endswith("_learned_phi")
    distiller = make(method, None, *(["DISTILL.SDD_PHI", "learned"] if learned else [])).train()
    modes = []
    for teacher in distiller.teachers:
        teacher.register_forward_hook(lambda *_: modes.append(torch.is_inference_mode_enabled()))
    _, losses = distiller(batch())
    sum(losses.values()).backward()
    assert modes == [True] * len(distiller.teachers)
    assert all(p.grad is not None for p in distiller.student.parameters() if p.requires_grad)
    if learned:
        assert distiller.phi_v.weight.grad is not None  # phi_V trains on the ViT's features
    assert not any(p.grad is not None for t in distiller.teachers for p in t.parameters())
    if distiller.teachers:
        logits, features, embedding = distiller.run_teacher(0, batch()["input"])
        assert all(t.dtype == torch.float32 and not t.is_inference() and not t.requires_grad
                   for t in [logits, *features, embedding])


def test_teacher_autocast_is_a_no_op_on_the_cpu():
    torch.manual_seed(0)
    teacher = build_model("c3d_tiny", 4, 4, 32)
    x = torch.randn(2, 3, 4, 32, 32)
    expected = outputs(teacher, x)
    speed_up(teacher, fast("TEACHER_AUTOCAST"), teacher=True)
    autocast = []
    teacher.head.register_forward_hook(lambda *_: autocast.append(torch.is_autocast_enabled("cpu")))
    assert_close(outputs(teacher, x), expected, tol=0)
    assert autocast == [False]
    clone = copy.deepcopy(teacher)  # the copy runs its own weights, not the original's
    torch.nn.init.zeros_(clone.head.weight)
    torch.nn.init.zeros_(clone.head.bias)
    assert torch.equal(outputs(clone, x)[0], torch.zeros(2, 4))


@pytest.mark.parametrize("autocast_devices, head_dtype", [({"cuda"}, torch.float32), ({"cuda", "cpu"}, torch.bfloat16)])
def test_teacher_autocast_runs_bf16_where_asked_with_fp32_outputs(monkeypatch, autocast_devices, head_dtype):
    """The same code path as on a GPU, run on this CPU by adding the CPU to the autocast devices."""
    monkeypatch.setattr(fast_paths, "AUTOCAST_DEVICES", autocast_devices)
    distiller, video = make("kd"), batch()["input"]
    expected = distiller.run_teacher(0, video)
    speed_up(distiller.teachers[0], fast("TEACHER_AUTOCAST"), teacher=True)
    dtypes = []
    distiller.teachers[0].head.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    got = distiller.run_teacher(0, video)
    assert dtypes == [head_dtype]
    assert all(t.dtype == torch.float32 for t in [got[0], *got[1], got[2]])
    tolerance = 1e-4 if head_dtype == torch.float32 else 0.05  # bf16 keeps 8 bits of mantissa
    torch.testing.assert_close(got[0], expected[0], rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name, frames, crop", [("c3d_tiny", 4, 32), ("x3d_xs", 4, 64), ("videomae_vit_ti", 4, 32)])
def test_channels_last_3d_gives_the_same_outputs(name, frames, crop):
    torch.manual_seed(0)
    model = build_model(name, 5, frames, crop)
    x = torch.randn(2, 3, frames, crop, crop)  # the batch stays contiguous
    expected = outputs(model, x)
    speed_up(model, fast("CHANNELS_LAST"))
    got = outputs(model, x)
    assert_close(got, expected)
    # The activations follow the clip's format (a ViT's folded tokens are laid out so anyway).
    assert all(f.is_contiguous(memory_format=torch.channels_last_3d) and not f.is_contiguous() for f in got[1:-1])
    for p in model.parameters():
        p.data.view(torch.uint8)  # how DeepSpeed broadcasts parameters: channels_last_3d weights would raise


def test_channels_last_leaves_2d_backbones_alone():
    model = build_model("tsm_resnet18", 5, 4, 64)
    x = torch.randn(1, 3, 4, 64, 64)
    strides = [f.stride() for f in outputs(model, x)]
    speed_up(model, fast("CHANNELS_LAST"))
    assert [f.stride() for f in outputs(model, x)] == strides


@pytest.mark.skipif(CXX is None, reason="torch.compile on the CPU needs a C++ compiler ($CXX or g++), none on PATH")
def test_compiled_model_gives_the_same_outputs_and_features():
    torch.manual_seed(0)
    model = build_model("c3d_tiny", 5, 4, 32)
    x = torch.randn(2, 3, 4, 32, 32)
    expected = outputs(model, x)
    keys = list(model.state_dict())
    speed_up(model, fast("COMPILE"))
    assert_close(outputs(model, x), expected)  # the taps' hooks fire inside the compiled call
    assert list(model.state_dict()) == keys  # compiled in place: checkpoints and DeepSpeed see the same module
