"""Load model weights from the checkpoint layouts people have, and save vidkd's own.

Read (always `torch.load(..., weights_only=True)`: tensors and plain data only):
- a file holding a state dict, possibly wrapped in `model` / `module` / `state_dict` / `model_state`
  (VideoMAE: `model` or `module`; pytorchvideo hub: `model_state`; vidkd: `model`), with its keys possibly
  prefixed `module.` / `_orig_mod.` / `backbone.` / `encoder.`;
- a DeepSpeed checkpoint folder (`latest` names the tag; `<tag>/mp_rank_00_model_states.pt` holds `module`).

Then fit it to the model: a prefix the model has and the checkpoint lacks (vidkd's `net.` around a
third-party network) is added; a classifier of another class count is dropped (reported); a learned
position table of another token grid is resized trilinearly over (T, H, W), e.g. 16 -> 8 frames; a position
table meant for a model whose table is fixed (sin-cos, not a parameter) is dropped (reported). Any other
missing, unexpected, mis-shaped or mis-typed key is an error naming the keys; `partial=True` allows missing and
unexpected keys (a backbone-only load) and reports them.
"""
import glob
import math
import os

import torch
import torch.nn.functional as F

from vidkd.errors import CheckpointError

WRAPPER_KEYS = ("model", "module", "state_dict", "model_state")
PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.")
DEEPSPEED_STATES = "mp_rank_00_model_states.pt"


def read_state_dict(path):
    """The tensors of a checkpoint file or DeepSpeed folder, unwrapped and without wrapper prefixes."""
    file = _deepspeed_file(path) if os.path.isdir(path) else path
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: checkpoint not found")
    except Exception as e:  # pickle.UnpicklingError for objects beyond plain data, RuntimeError for a bad zip
        first_line = str(e).partition("\n")[0]
        raise CheckpointError(f"{file}: cannot be read as a weights-only checkpoint ({type(e).__name__}: {first_line})")
    unwrapped = set()  # ids of the dicts looked into: a pickle may make a dict its own wrapper
    while isinstance(data, dict) and id(data) not in unwrapped:
        unwrapped.add(id(data))
        data = next((data[k] for k in WRAPPER_KEYS if isinstance(data.get(k), dict)), data)
    items = data.items() if isinstance(data, dict) else ()
    state = {k: v for k, v in items if isinstance(k, str) and torch.is_tensor(v)}
    if not state:
        raise CheckpointError(f"{file}: holds no tensors under any of {WRAPPER_KEYS}")
    return {_strip(k): v for k, v in state.items()}


def _deepspeed_file(folder):
    latest = os.path.join(folder, "latest")
    if not os.path.isfile(latest):
        files = sorted(glob.glob(os.path.join(folder, "*", DEEPSPEED_STATES)), key=os.path.getmtime)
        if not files:
            raise CheckpointError(f"{folder}: neither a 'latest' file nor any */{DEEPSPEED_STATES}")
        return files[-1]
    try:
        with open(latest, encoding="utf-8") as f:
            tag = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{latest}: cannot be read as the name of a tag ({e})")
    file = os.path.join(folder, tag, DEEPSPEED_STATES)
    if not os.path.isfile(file):
        raise CheckpointError(f"{latest}: names the tag {tag!r}, but {file} does not exist")
    return file


def _strip(key):
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def load_checkpoint(model, path, partial=False):
    """Load `path` into `model`; returns a report `{"loaded", "missing", "unexpected", "notes"}`."""
    state = read_state_dict(path)
    own = model.state_dict()
    prefix = max(("", "net."), key=lambda p: sum(p + k in own for k in state))
    state = {prefix + k: v for k, v in state.items()}
    notes = []
    head = f"{model.head_name}.weight"
    if head in state and state[head].shape != own[head].shape and state[head].shape[1:] == own[head].shape[1:]:
        notes.append(f"classifier dropped: {state[head].shape[0]} classes in the checkpoint, {own[head].shape[0]} here")
        state = {k: v for k, v in state.items() if not k.startswith(model.head_name + ".")}
    if "pos_embed" in state:
        if "pos_embed" not in own:
            notes.append("pos_embed dropped: this model's position table is fixed (sin-cos), not a parameter")
            del state["pos_embed"]
        elif state["pos_embed"].shape != own["pos_embed"].shape:
            state["pos_embed"] = _resize_positions(state["pos_embed"], model.token_grid, path)
            notes.append(f"pos_embed resized to the token grid {tuple(model.token_grid)}")
    unfit = [f"{k}: {_describe(v)} in the checkpoint, {_describe(own[k])} in the model"
             for k, v in state.items() if k in own and _describe(v) != _describe(own[k])]
    if unfit:
        raise CheckpointError(f"{path}: mis-shaped or mis-typed keys:\n  " + "\n  ".join(unfit))
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    if (missing or unexpected) and not partial:
        raise CheckpointError(f"{path}: does not fit model {getattr(model, 'name', type(model).__name__)!r} "
                              f"(use a partial load to allow it)\n  missing: {missing}\n  unexpected: {unexpected}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"loaded": len(state) - len(unexpected), "missing": missing, "unexpected": unexpected, "notes": notes}


def _describe(tensor):
    """Shape and kind of a tensor: what a checkpoint's must share with the model's to load into it (bf16 into
    fp32 is fine; integers or complex numbers into floats, or a sparse layout, are not)."""
    kind = "complex" if tensor.is_complex() else "float" if tensor.is_floating_point() else "integer"
    layout = "" if tensor.layout == torch.strided else f" {tensor.layout}"
    return f"{tuple(tensor.shape)} {kind}{layout}"


def _resize_positions(table, grid, path):
    """[1, N, D] position table -> the model's (T, H, W) grid, trilinear. The old grid keeps the model's
    spatial size if N allows, else its frame count, else square H = W."""
    dense_floats = table.layout == torch.strided and table.is_floating_point()
    if not (dense_floats and table.dim() == 3 and len(table) == 1 and table.numel()):
        raise CheckpointError(f"{path}: pos_embed {_describe(table)} is not a [1, tokens, width] table of floats")
    n, d = table.shape[1:]
    t, h, w = grid
    if n % (h * w) == 0:
        old = (n // (h * w), h, w)
    elif n % t == 0 and math.isqrt(n // t) ** 2 == n // t:
        side = math.isqrt(n // t)
        old = (t, side, side)
    else:
        raise CheckpointError(f"{path}: pos_embed has {n} tokens, which fit no grid near {tuple(grid)}")
    cube = table.reshape(1, *old, d).permute(0, 4, 1, 2, 3)
    cube = F.interpolate(cube, size=tuple(grid), mode="trilinear", align_corners=False)
    return cube.permute(0, 2, 3, 4, 1).reshape(1, t * h * w, d)


def save_model(model, path, **meta):
    """vidkd's own weights file `{"model": state_dict, "meta": {...}}` (plain data), written atomically; floating
    tensors in fp32 whatever the precision the model trained in."""
    tmp = f"{path}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"model": state, "meta": {"name": getattr(model, "name", ""), **meta}}, tmp)
    os.replace(tmp, path)


def saved_meta(path):
    """The `meta` dict of a vidkd weights file (save_model's), or {} (no such file, another layout, unreadable)."""
    if not os.path.isfile(path):
        return {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return {}  # load_checkpoint reports what is wrong with the file
    meta = data.get("meta") if isinstance(data, dict) else None
    return meta if isinstance(meta, dict) else {}


def saved_heads(path):
    """The `heads` ({label set: classes}) recorded in a vidkd weights file (save_model's meta), or None."""
    return saved_meta(path).get("heads")
