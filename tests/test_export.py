"""tools/export_student.py: TorchScript and ONNX files that give the eager student's logits at any batch size,
for the plain 3D CNNs and X3D, and no export of a checkpoint that holds more than the student."""
import os
import runpy
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch

from vidkd.models import build_model
from vidkd.models.checkpoint import save_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = (3, 8, 32, 32)  # configs/demo/synthetic.yaml: c3d_tiny, 8 frames at 32 px
HEADS = {"label": 8}
EXPORTER = runpy.run_path(os.path.join(ROOT, "tools", "export_student.py"))  # its functions; main() not run


def export(checkpoint, out):
    cmd = [sys.executable, "tools/export_student.py", "--config", "configs/demo/synthetic.yaml",
           "--checkpoint", str(checkpoint), "--out", str(out), "--runs", "2"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # the way to read it back
def test_exports_give_the_eager_logits(tmp_path):
    torch.manual_seed(0)
    model = build_model("c3d_tiny", sum(HEADS.values()), CLIP[1], CLIP[2])  # trained for zero steps
    save_model(model, tmp_path / "student.pt", heads=HEADS, method="ce")
    proc = export(tmp_path / "student.pt", tmp_path / "export")
    assert proc.returncode == 0, proc.stderr
    assert "max |logits - eager logits|" in proc.stdout
    assert all(name in proc.stdout for name in ("eager", "TorchScript", "ONNX Runtime"))

    scripted = torch.jit.load(tmp_path / "export" / "c3d_tiny.torchscript.pt")
    session = onnxruntime.InferenceSession(str(tmp_path / "export" / "c3d_tiny.onnx"),
                                           providers=["CPUExecutionProvider"])
    model.eval()
    for batch in (1, 3):  # traced at batch 1: 3 needs the dynamic batch axis
        clip = torch.randn(batch, *CLIP)
        with torch.inference_mode():
            expected = model(clip)
            torch.testing.assert_close(scripted(clip), expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(session.run(None, {"clip": clip.numpy()})[0], expected.numpy(), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_x3d_exports(tmp_path):
    """x3d_xs and x3d_s are one network; its activations must be ops a TorchScript file can hold."""
    model = build_model("x3d_xs", 4, 4, 32).eval()
    exported = EXPORTER["export"](model, torch.randn(1, 3, 4, 32, 32), str(tmp_path), 17)
    with torch.jit.optimized_execution(False):  # the JIT's passes at the first calls take seconds on X3D's graph
        for path, runtime in exported.values():
            EXPORTER["check"](path, runtime, model, (2, 3, 4, 32, 32), 1e-5)


def test_training_only_keys_refused(tmp_path):
    model = build_model("c3d_tiny", sum(HEADS.values()), CLIP[1], CLIP[2])
    state = {**model.state_dict(), "g_aux.0.weight": torch.zeros(4, 4)}  # e.g. an auxiliary head of a method
    torch.save({"model": state, "meta": {"name": "c3d_tiny", "heads": HEADS}}, tmp_path / "student.pt")
    proc = export(tmp_path / "student.pt", tmp_path / "export")
    assert proc.returncode == 1
    assert "g_aux.0.weight" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("method, parts", [("pat", ["raa.", "aligners.", "prompts."]),
                                           ("fbt", ["fusion.l2g.", "fusion.copy.", "project.", "log_scale"])])
def test_pat_and_fbt_export_the_student_alone_and_their_training_only_keys_are_refused(tmp_path, method, parts):
    from vidkd.config import load_config
    from vidkd.distill.build import build_distiller
    from vidkd.errors import CheckpointError
    from vidkd.models import build_image_model

    cfg = load_config(None, ["TASK", "image", "DISTILL.METHOD", method, "MODEL.STUDENT", "resnet_mini",
                             "MODEL.TEACHERS", "[deit_mini]", "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32",
                             "DISTILL.PAT_DIM", "32", "DISTILL.PAT_HEADS", "4", "DISTILL.FBT_DIM", "32"])
    heads = {"label": 4}
    distiller = build_distiller(cfg, build_image_model("resnet_mini", 4, 32), [build_image_model("deit_mini", 4, 32)],
                                heads)
    extra = {k: v for k, v in distiller.state_dict().items() if not k.startswith("student.")}
    assert all(any(k.startswith(p) for k in extra) for p in parts)  # each training-only part has weights

    def write(state):
        torch.save({"model": state, "meta": {"name": "resnet_mini", "heads": heads}}, tmp_path / "student.pt")
        return EXPORTER["load_student"](cfg, str(tmp_path / "student.pt"))

    student = write(distiller.student_state_dict())  # what training exports: the student's weights, all of them
    assert all(torch.equal(v, distiller.student.state_dict()[k]) for k, v in student.state_dict().items())
    with pytest.raises(CheckpointError, match="training-only parts") as refused:
        write({**distiller.student_state_dict(), **extra})
    assert all(p in str(refused.value) for p in parts)
