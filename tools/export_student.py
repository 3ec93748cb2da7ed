"""Export a trained student to TorchScript and ONNX, check both against the eager model, and time all three.

    python tools/export_student.py --config X.yaml --checkpoint OUTPUT_DIR/student.pt [--out DIR] [--runs 10]
        [--tolerance 1e-4] [KEY VALUE ...]

The student is MODEL.STUDENT built for DATA.NUM_FRAMES x DATA.TEST_CROP_SIZE clips, like tools/test_net.py
builds it, with the classes the checkpoint records (save_model's `heads`), else those of the DATA.TEST_SPLIT
manifest. The checkpoint must hold the student alone: a key the student does not have (an exit, branch or
head that exists only for training) or a student key it lacks is an error naming the keys, whatever
MODEL.PARTIAL_LOAD says. Writes to --out (default: the checkpoint's folder):

    <student>.torchscript.pt   traced in eval mode (torch.jit.load)
    <student>.onnx             opset EXPORT.ONNX_OPSET, input `clip` [B, 3, T, H, W], output `logits` [B, K],
                               B dynamic

Both are traced at batch 1 and checked at batch 2 on a random clip: the largest absolute difference from the
eager model's logits is printed, and one above --tolerance is an error. Then prints the CPU latency at batch
1 (median ms per clip) of the eager model, TorchScript and ONNX Runtime (CPU provider). Everything runs on the
CPU, the target of the exported files.
"""
import argparse
import os
import warnings

import onnx
import onnxruntime
import torch
from tqdm import tqdm

from vidkd.cli import run
from vidkd.config import load_config
from vidkd.data.manifest import Manifest
from vidkd.errors import CheckpointError, ConfigError, ExportError
from vidkd.profiling import measure_latency  # first: fvcore.nn imported quietly
from vidkd.models import REGISTRIES, build_from_config  # noqa: I001
from vidkd.models.checkpoint import load_checkpoint, saved_heads

CHECK_BATCH = 2  # not the traced batch size: a batch axis fixed by the trace shows up as an error


class OnnxRuntimeModel(torch.nn.Module):
    """An ONNX Runtime CPU session called like the eager model, so that the check and measure_latency take it."""

    def __init__(self, path):
        super().__init__()
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def forward(self, clip):
        return torch.from_numpy(self.session.run(None, {"clip": clip.numpy()})[0])


def load_student(cfg, checkpoint):
    """MODEL.STUDENT in eval mode with the weights of `checkpoint`, which must hold the student's keys and no
    other."""
    name = cfg.MODEL.STUDENT
    if name not in REGISTRIES[cfg.TASK]:
        raise ConfigError(f"config key MODEL.STUDENT: unknown model {name!r}; registered: {', '.join(sorted(REGISTRIES[cfg.TASK]))}")
    if not os.path.isfile(checkpoint):
        raise CheckpointError(f"{checkpoint}: not a weights file (training writes OUTPUT_DIR/student.pt)")
    heads = saved_heads(checkpoint)
    if heads is None:
        manifest = Manifest.load(os.path.join(cfg.DATA.MANIFEST_DIR, f"{cfg.DATA.TEST_SPLIT}.json"))
        heads = {head: len(names) for head, names in manifest.label_sets.items()}
    model = build_from_config(cfg, name, sum(heads.values()), "TEST_CROP_SIZE")
    report = load_checkpoint(model, checkpoint, partial=True)  # partial: to name the keys in an export's own terms
    if report["unexpected"] or report["missing"]:
        raise CheckpointError(f"{checkpoint}: does not hold exactly the weights of the student {name}, so nothing "
                              f"is exported\n"
                              f"  keys the student does not have (training-only parts?): {report['unexpected']}\n"
                              f"  student keys missing: {report['missing']}")
    return model.eval()


def export(model, clip, out, opset):
    """Trace `model` on `clip`, write it to the folder `out` as TorchScript and as ONNX of `opset`, and read both
    files back. Returns {runtime: (path, model read from it)}."""
    os.makedirs(out, exist_ok=True)
    ts_path, onnx_path = (os.path.join(out, model.name + ext) for ext in (".torchscript.pt", ".onnx"))
    # torch 2.14 deprecates TorchScript and the TorchScript-based ONNX exporter (dynamo=False), yet they are what
    # works for the students on the CPU: the dynamo exporter (and onnxscript, which it needs) stops on X3D's
    # dynamic batch axis ("Invalid ranges") and cannot convert its opset-18 graph down to opset 17.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        torch.jit.trace(model, clip, check_trace=False).save(ts_path)  # check_trace traces twice; check() compares
        torch.onnx.export(model, (clip,), onnx_path, dynamo=False, opset_version=opset, input_names=["clip"],
                          output_names=["logits"], dynamic_axes={"clip": {0: "batch"}, "logits": {0: "batch"}})
        scripted = torch.jit.load(ts_path)
    onnx.checker.check_model(onnx_path, full_check=True)
    return {"TorchScript": (ts_path, scripted), "ONNX Runtime": (onnx_path, OnnxRuntimeModel(onnx_path))}


def check(path, exported, model, shape, tolerance):
    """Error unless `exported` (read from `path`) gives `model`'s logits within `tolerance` on a random clip."""
    clip = torch.randn(shape)
    with torch.inference_mode():
        diff = (exported(clip) - model(clip)).abs().max().item()
    print(f"{path}: max |logits - eager logits| = {diff:.1e} on a random clip {list(shape)} "
          f"(tolerance {tolerance:.0e})")
    if not diff <= tolerance:  # `not <=`: a NaN fails too
        raise ExportError(f"{path}: logits differ from the eager model's by {diff:.3g} (> --tolerance {tolerance:g})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True, help="the student's weights file (training's OUTPUT_DIR/student.pt)")
    p.add_argument("--out", help="folder of the exported files (default: the checkpoint's)")
    p.add_argument("--runs", type=int, default=10, help="timed forwards per latency figure, after 3 warm-up ones")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest |exported - eager| logit difference")
    p.add_argument("overrides", nargs="*", help="KEY VALUE pairs overriding the config")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    model = load_student(cfg, args.checkpoint)

    d = cfg.DATA
    shape = (1, 3, d.NUM_FRAMES, d.TEST_CROP_SIZE, d.TEST_CROP_SIZE)
    torch.manual_seed(cfg.SEED)
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    exported = export(model, torch.randn(shape), out, cfg.EXPORT.ONNX_OPSET)
    print(f"{model.name} from {args.checkpoint}: wrote " + " and ".join(path for path, _ in exported.values())
          + f" (ONNX opset {cfg.EXPORT.ONNX_OPSET})")
    for path, runtime in exported.values():
        check(path, runtime, model, (CHECK_BATCH, *shape[1:]), args.tolerance)

    runtimes = {"eager": model, **{name: runtime for name, (_, runtime) in exported.items()}}
    latency = {name: measure_latency(runtime, shape, "cpu", runs=args.runs)["median_ms"]
               for name, runtime in tqdm(runtimes.items(), desc="latency")}
    print(f"\nCPU latency of {model.name}, clip {list(shape)}: median of {args.runs} forwards")
    print(f"{'runtime':<12} | {'ms/clip':>8} | {'speed-up':>8}")
    for name, ms in latency.items():
        print(f"{name:<12} | {ms:>8.2f} | {latency['eager'] / ms:>7.2f}x")
    return 0


if __name__ == "__main__":
    run(main)
