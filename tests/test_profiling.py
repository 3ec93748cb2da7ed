"""FLOP counts against published figures, unsupported-op reporting, latency, peak memory and the CLI."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from vidkd.models import build_image_model, build_model
from vidkd.profiling import count_flops, measure_latency, peak_memory_mb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name, gflops", [("r3d_18", 40.697), ("mc3_18", 43.343), ("r2plus1d_18", 40.519)])
def test_torchvision_published_ops(name, gflops):
    """torchvision's weights metadata `_ops` at 1x3x16x112x112."""
    result = count_flops(build_model(name, 400, 16, 112), (1, 3, 16, 112, 112))
    assert result["gflops"] == pytest.approx(gflops, rel=0.01)


def test_x3d_xs_paper_figures():
    """X3D paper: X3D-XS 0.60 GFLOPs, 3.79 M params at 4x160x160 (pytorchvideo's zoo 0.91: see flops.py)."""
    result = count_flops(build_model("x3d_xs", 400, 4, 160), (1, 3, 4, 160, 160))
    assert result["gflops"] == pytest.approx(0.60, rel=0.05)
    assert result["params_m"] == pytest.approx(3.79, rel=0.01)


@pytest.mark.parametrize("name, gflops, digits, params", [("resnet18", 1.82, 2, 11.69), ("resnet50", 4.1, 1, 25.56),
                                                          ("deit_tiny", 1.3, 1, 5.72), ("swin_tiny", 4.5, 1, 28.29)])
def test_image_models_published_figures(name, gflops, digits, params):
    """At 1x3x224x224 with 1000 classes: GFLOPs as published to the digits published (torchvision's ResNet-18
    1.82; ResNet-50 4.1, DeiT-Ti 1.3 (DeiT paper), Swin-T 4.5 (Swin paper)), parameters as timm's."""
    result = count_flops(build_image_model(name, 1000, 224), (1, 3, 224, 224))
    assert round(result["gflops"], digits) == gflops
    assert result["params_m"] == pytest.approx(params, abs=0.01)


def test_videomae_vit_b():
    result = count_flops(build_model("videomae_vit_b", 400, 16, 224), (1, 3, 16, 224, 224))
    assert result["gflops"] == pytest.approx(180, rel=0.03)
    assert "aten::scaled_dot_product_attention" not in result["unsupported"]


def test_fused_attention_counts_as_the_explicit_one():
    """sdpa_flop charges the fused kernel what fvcore charges the two written-out matrix products; a hand count
    for ViT-Ti (3 heads of 64) on 4x32x32 with 16-pixel patches: 2 x 2 x 2 = 8 tokens, per block and head
    2 * 8 * 8 * 64 multiply-adds."""
    model = build_model("videomae_vit_ti", 4, 4, 32, depth=2)
    fused = count_flops(model, (1, 3, 4, 32, 32))["gflops"]
    for block in model.blocks:
        block.attn.keep_map = True
    explicit = count_flops(model, (1, 3, 4, 32, 32))["gflops"]
    assert fused == explicit
    model.blocks[0].attn.keep_map = model.blocks[1].attn.keep_map = False
    model.blocks[0].attn.forward = lambda x: model.blocks[0].attn.proj(x)  # no attention in block 0
    assert fused - count_flops(model, (1, 3, 4, 32, 32))["gflops"] == pytest.approx(
        (3 * 2 * 8 * 8 * 64 + 8 * 192 * 3 * 192) / 1e9)  # the attention products and the qkv projection


class CumsumNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.cumsum(x, dim=1))


def test_unsupported_ops_reported():
    result = count_flops(CumsumNet(), (2, 8))
    assert result["unsupported"] == {"aten::cumsum": 1}
    assert result["gflops"] == pytest.approx(2 * 8 * 4 / 1e9)
    assert result["params_m"] == pytest.approx(36 / 1e6)


def test_latency():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        result = measure_latency(nn.Conv3d(3, 8, 3), (2, 3, 4, 32, 32), device, warmup=1, runs=3)
        assert 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]
        assert ("peak_mb" in result) == (device == "cuda")


def test_peak_memory_grows_with_the_clip():
    kwargs = dict(num_classes=10, num_frames=4, crop_size=64)
    small = peak_memory_mb("video", "x3d_xs", kwargs, (1, 3, 4, 64, 64))
    big = peak_memory_mb("video", "x3d_xs", dict(kwargs, crop_size=160), (1, 3, 4, 160, 160))
    assert 0 < small < big


def test_profile_net_cli(tmp_path):
    out = tmp_path / "profile.json"
    cmd = [sys.executable, "tools/profile_net.py", "--config", "configs/demo/synthetic.yaml",
           "--models", "x3d_xs", "tsm_resnet18", "--frames", "4", "--size", "64", "--runs", "2",
           "--batch", "2", "--json", str(out),
           "MODEL.TEACHERS", "[x3d_xs]", "MODEL.STUDENT", "tsm_resnet18"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "x3d_xs" in proc.stdout and "aten::" in proc.stdout
    report = json.loads(out.read_text())
    assert report["input_shape"] == [1, 3, 4, 64, 64]
    assert report["views_per_video"] == 2
    for name in ("x3d_xs", "tsm_resnet18"):
        model = report["models"][name]
        assert model["gflops"] > 0 and model["params_m"] > 0 and model["cpu_peak_mb"] > 0
        assert model["gflops_per_video"] == pytest.approx(2 * model["gflops"])
        assert model["unsupported"]
        for batch in ("1", "2"):
            assert model["latency"]["cpu"][batch]["median_ms"] > 0
    teacher, student = report["models"]["x3d_xs"]["gflops"], report["models"]["tsm_resnet18"]["gflops"]
    assert report["distillation"]["teachers_forward"] == {"x3d_xs": teacher}
    assert report["distillation"]["ratio"] == pytest.approx((teacher + 3 * student) / (3 * student))
    assert "distillation cost" in proc.stdout


def test_profile_net_profiles_image_models(tmp_path):
    out = tmp_path / "profile.json"
    cmd = [sys.executable, "tools/profile_net.py", "--config", "configs/demo/synthetic.yaml", "TASK", "image",
           "MODEL.TEACHERS", "[deit_mini]", "MODEL.STUDENT", "resnet_mini", "--runs", "2", "--batch", "2",
           "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["input_shape"] == [1, 3, 32, 32]
    for name in ("deit_mini", "resnet_mini"):
        direct = count_flops(build_image_model(name, 400, 32), (1, 3, 32, 32))
        assert report["models"][name]["gflops"] == pytest.approx(direct["gflops"])
    assert report["distillation"]["ratio"] > 1


def test_benchmark_distill_times_fbt_against_kd_with_its_training_only_parameters():
    """tools/benchmark_distill.py on the frame-level FBT config (random images): a row per step, the CPU peaks from
    its second pass (rising above 0 with the steps' tensors), and FBT's trainable parameters beyond the student
    (L2G, the fusion tail, the projections and the temperature; not the copy's frozen front)."""
    from vidkd.config import load_config
    from vidkd.distill.build import build_distiller
    from vidkd.engine.trainer import build_models

    config = "configs/image/fbt/synthetic_frames.yaml"
    cmd = [sys.executable, "tools/benchmark_distill.py", "--config", config, "--steps", "1", "DISTILL.FBT_DIM", "16",
           "--compare", "kd"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {line[:20].strip(): line[20:].split() for line in proc.stdout.splitlines()
            if line[:20].strip() in ("student alone", "teachers' forward", "fbt, live", "fbt, cached", "kd, live")}
    assert len(rows) == 5 and all(float(r[2]) > 0 for r in rows.values())  # inputs/s, ms/step, peak MB, params
    cfg = load_config(os.path.join(ROOT, config), ["DISTILL.FBT_DIM", "16"])
    distiller = build_distiller(cfg, *build_models(cfg, {"label": 400}), {"label": 400})
    trained = sum(p.numel() for n, p in distiller.named_parameters() if p.requires_grad and not n.startswith("student."))
    frozen = sum(p.numel() for p in distiller.fusion.copy.parameters() if not p.requires_grad)
    assert float(rows["fbt, live"][3]) == pytest.approx(trained / 1e6, abs=0.005) and frozen > 0
    assert rows["kd, live"][3] == "0.00" and "fbt live / kd live" in proc.stdout
