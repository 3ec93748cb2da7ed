"""tools/predict.py as a user runs it: the top classes and probabilities it prints are the model's own softmax on
the frames its preprocessing names (decoded, resampled, resized and cropped here by another path), and bad
input (a missing or corrupt video, a checkpoint it cannot preprocess for) is reported by name."""
import av
import numpy as np
import pytest
import torch
import yaml
from torchvision.transforms.v2 import functional as F

from conftest import launch, ok, write_test_video
from vidkd.models import build_model
from vidkd.models.checkpoint import save_model

CLASSES = [f"action number {i}" for i in range(7)]  # names with spaces, as Kinetics' are
# not I3D's own 0.5 / 0.5: the tool must build the model for the clip's normalisation (I3D maps it to [-1, 1])
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]  # nor the config defaults
PREPROCESS = {"fps": 25, "short_side": 40, "crop": 32, "mean": MEAN, "std": STD}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    # a small I3D, saved as data_prep/convert_i3d_deepmind.py saves the real one (its last block in the meta)
    i3d = build_model("i3d", len(CLASSES), 30, 32, last_block="Mixed_3b", data_mean=MEAN, data_std=STD).eval()
    student = build_model("c3d_tiny", len(CLASSES), 8, 32).eval()
    with torch.no_grad():  # spread the untrained logits: a top 5 far from ties
        i3d.head_module().weight.mul_(30)
        student.head.weight.mul_(30)
    videos = {
        "fast": write_test_video(root / "fast.mp4", num_frames=61, height=48, width=80, fps=50, noise=40),
        "tall": write_test_video(root / "tall.mp4", num_frames=40, height=64, width=48, fps=25, noise=40),
    }
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)
    save_model(i3d, str(root / "i3d.pt"), heads={"label": len(CLASSES)}, labels=CLASSES, preprocess=PREPROCESS,
               last_block="Mixed_3b")
    save_model(student, str(root / "student.pt"), heads={"label": len(CLASSES)}, method="ce")  # as training writes
    return root, {"i3d": i3d, "student": student}, {k: str(v) for k, v in videos.items()}


def expected(model, path, keep, short_side, crop, mean, std):
    """Softmax of `model` on frames `keep` of `path`: PyAV decode, short side resized, center crop, normalised."""
    with av.open(path) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    x = torch.from_numpy(frames[keep]).permute(0, 3, 1, 2)  # [T, 3, H, W]
    x = F.center_crop(F.resize(x, short_side, antialias=True), crop).float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model(x.permute(1, 0, 2, 3)[None])[0].softmax(0)


def printed_tables(stdout):
    """{video path: [(class, prob), ...]} from the output."""
    tables, current = {}, None
    for line in stdout.splitlines():
        if " frames at " in line and " -> clip of " in line:
            current = tables.setdefault(line.split(": ")[0], [])
        elif current is not None and line.strip() and line.split()[0].isdigit():
            rank, prob, name = line.split(maxsplit=2)
            assert int(rank) == len(current) + 1
            current.append((name, float(prob)))
    return tables


def check_top5(rows, probs, names):
    top = probs.topk(5)
    assert [name for name, _ in rows] == [names[int(i)] for i in top.indices]
    np.testing.assert_allclose([p for _, p in rows], top.values.numpy(), rtol=0, atol=1e-4)
    assert all(a >= b for (_, a), (_, b) in zip(rows, rows[1:])) and sum(p for _, p in rows) <= 1 + 1e-4
    assert rows[0][1] - rows[-1][1] > 0.01  # the test means something only if the classes are told apart


def test_meta_preprocessing_and_bad_videos(files):
    root, models, videos = files
    missing, corrupt = str(root / "missing.mp4"), str(root / "corrupt.mp4")
    proc = launch(["tools/predict.py", videos["fast"], missing, corrupt, videos["tall"],
                   "--checkpoint", str(root / "i3d.pt"), "--max-frames", "31"])
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith(f"error: {missing}: file not found")
    assert errors[1].startswith(f"error: {corrupt}: cannot decode")
    assert "2 of 4 videos failed" in proc.stderr
    tables = printed_tables(proc.stdout)
    assert list(tables) == [videos["fast"], videos["tall"]]
    # fast: 61 frames at 50 fps -> every other frame, the 31 times of 25 fps inside the video (the whole video);
    # tall: 40 frames at 25 fps -> the centred 31 (--max-frames): room 9, start 4.5 -> frames 4..34
    for key, keep in (("fast", slice(0, 61, 2)), ("tall", slice(4, 35))):
        probs = expected(models["i3d"], videos[key], keep, 40, 32, MEAN, STD)
        check_top5(tables[videos[key]], probs, CLASSES)
    assert "-> clip of 31 x 32 x 32" in proc.stdout


def test_config_preprocessing_for_a_training_checkpoint(files, tmp_path):
    """student.pt records its heads only: the clip and class names come from the config."""
    root, models, videos = files
    config = tmp_path / "student.yaml"
    config.write_text(yaml.safe_dump({
        "MODEL": {"STUDENT": "c3d_tiny"},
        "DATA": {"MANIFEST_DIR": str(tmp_path / "no_manifests"), "NUM_FRAMES": 8, "SAMPLING_RATE": 3,
                 "TEST_SHORT_SIDE": 36, "TEST_CROP_SIZE": 32, "MEAN": [0.45] * 3, "STD": [0.225] * 3}}))
    proc = ok(launch(["tools/predict.py", videos["fast"], "--checkpoint", str(root / "student.pt"),
                      "--config", str(config), "--top", "5"]))
    # one 8 x 3 clip centred in 61 frames: span 22, start (61 - 22) / 2 = 19.5 -> 19
    probs = expected(models["student"], videos["fast"], slice(19, 41, 3), 36, 32, [0.45] * 3, [0.225] * 3)
    check_top5(printed_tables(proc.stdout)[videos["fast"]], probs, [f"class {k}" for k in range(len(CLASSES))])
    assert "-> clip of 8 x 32 x 32" in proc.stdout

    bare = tmp_path / "bare.pt"  # a plain state dict: nothing says how to preprocess
    torch.save(models["student"].state_dict(), bare)
    proc = launch(["tools/predict.py", videos["fast"], "--checkpoint", str(bare)])
    assert proc.returncode == 1 and not printed_tables(proc.stdout)
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {bare}: records no preprocessing (meta 'preprocess'); "
                                                     f"give the model's --config")
