"""Training checkpoints that survive a kill: written under a temporary name and renamed, each with a manifest.

A checkpoint is a DeepSpeed folder `OUTPUT_DIR/checkpoints/<tag>/` (model, optimiser, scheduler and the
client state, which holds the resume position, EMA and history) plus one `rank_NNN.pt` per rank (that rank's
partial-epoch meters) and `MANIFEST.json`: the step, the config, and the size and SHA-256 of every file.
It is written as `.partial_<tag>/`, the manifest last, then renamed to `<tag>/` and named in `latest`: a run
killed (or out of disk space) while writing leaves the previous checkpoints as they were. The newest
TRAIN.KEEP_CHECKPOINTS complete checkpoints are kept.

On resume, the newest checkpoint whose files match its manifest is used; a truncated or corrupt one (or one whose
manifest lists no files, or whose folder holds files the manifest does not list) is reported, the previous one
tried, and the damaged ones are set aside as `damaged_<tag>/` (kept for a look, no longer named in `latest` nor
counted among the kept checkpoints). Every file resume reads is read without running code from it: the rank
files and DeepSpeed's own files by torch's weights-only reader (DeepSpeed's loader is given a checkpoint engine
that reads so), so a run folder from elsewhere cannot run code; the manifest is an integrity check, not the
security boundary. A checkpoint written with another config is refused, naming the keys
that differ, unless they are among RESUMABLE_CHANGES (schedule length, periods, loader and decoder settings); a
key vidkd added after the checkpoint was written, at its default (which keeps what the checkpoint's run did), is no
difference.
"""
import json
import logging
import os
import pickle
import shutil

import torch
import yaml
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from vidkd.config.defaults import get_defaults
from vidkd.engine import distributed
from vidkd.errors import CheckpointError, ConfigError
from vidkd.hashing import sha256_of_files

log = logging.getLogger("vidkd.engine")
MANIFEST = "MANIFEST.json"
PARTIAL = ".partial_"
DAMAGED = "damaged_"
# Config keys a resumed run may change: how long and how often, and how data is read, not what is learnt.
# Keys added to vidkd with a default that changed what runs written before them did (TEACHER_AUTOCAST: GPU teachers
# went from fp32 to bf16 autocast): missing from a checkpoint's config, they still differ. Every other key vidkd adds
# must default to what runs did before it.
CHANGED_BY_DEFAULT = ("MODEL.TEACHER_AUTOCAST",)
RESUMABLE_CHANGES = ("OUTPUT_DIR", "TRAIN.EPOCHS", "TRAIN.EVAL_PERIOD", "TRAIN.CHECKPOINT_PERIOD",
                     "TRAIN.CHECKPOINT_STEPS", "TRAIN.KEEP_CHECKPOINTS", "TRAIN.MAX_BAD_STEPS", "DATA.NUM_WORKERS",
                     "DATA.PREFETCH_FACTOR", "DATA.PIN_MEMORY", "DATA.DECODER", "DATA.DECODE_THREADS",
                     "DATA.DECODE_TIMEOUT", "DATA.BATCH_TIMEOUT", "TEST.BATCH_SIZE")


# What DeepSpeed's files hold besides tensors and plain data (ZeRO's optimiser states): a loss scaler and a
# fragment address (unpickled by setting their attributes) and an enum value; none runs code of a file's choosing.
DEEPSPEED_CLASSES = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, reading with torch's weights-only reader (it unpickles fully)."""

    def load(self, path, map_location=None):
        try:
            with torch.serialization.safe_globals(DEEPSPEED_CLASSES):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:  # what torch's reader refuses: a global outside its allowlist
            lines = str(e).splitlines()  # torch's message also suggests the full unpickler: not shown
            reason = next((line for line in lines if "GLOBAL" in line or "WeightsUnpickler error" in line), lines[0])
            raise CheckpointError(f"{path}: refused, it holds more than weights and plain data ({reason.strip()})")


def load(engine, folder, tag):
    """Load checkpoint `tag` of `folder` into the DeepSpeed `engine`, every file read weights-only; its client
    state."""
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
    _, state = engine.load_checkpoint(folder, tag=tag, load_module_strict=False)
    if state is None:
        raise CheckpointError(f"{os.path.join(folder, tag)}: DeepSpeed found no checkpoint to load there")
    return state


def rank_file(rank):
    return f"rank_{rank:03d}.pt"


def _write_atomic(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(engine, folder, tag, client_state, rank_state, config_text, keep):
    """Every rank calls this. Writes checkpoint `tag` (see the module docstring) and prunes old ones. A folder
    that cannot be written (full disk, read-only) raises CheckpointError saying so and which checkpoint is kept."""
    rank = distributed.rank()
    partial = os.path.join(folder, PARTIAL + tag)
    try:
        if rank == 0 and os.path.isdir(partial):
            shutil.rmtree(partial)  # left by a run killed while writing
        distributed.barrier()
        engine.save_checkpoint(folder, tag=PARTIAL + tag, client_state=client_state, save_latest=False,
                               exclude_frozen_parameters=True)
        torch.save(rank_state, os.path.join(partial, rank_file(rank)))
        distributed.barrier()
        if rank == 0:
            _publish(folder, partial, tag, client_state, config_text, keep)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        shutil.rmtree(partial, ignore_errors=True)  # give back the space the half-written files took
        kept = next((m["tag"] for m in complete(folder) if not damage(folder, m)), None)
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{folder}: cannot write checkpoint {tag} ({reason}); kept: "
                              f"{os.path.join(folder, kept) if kept else 'no intact checkpoint'}")
    distributed.barrier()


def _publish(folder, partial, tag, client_state, config_text, keep):
    """Rank 0: the manifest of the written files, the rename to `tag`, `latest`, and the pruning."""
    files = {name: {"bytes": os.path.getsize(os.path.join(partial, name)),
                    "sha256": sha256_of_files([os.path.join(partial, name)])}
             for name in sorted(os.listdir(partial))}
    manifest = {"tag": tag, "position": client_state["position"], "precision": client_state["precision"],
                "config": config_text, "files": files}
    _write_atomic(os.path.join(partial, MANIFEST), json.dumps(manifest, indent=1))
    final = os.path.join(folder, tag)
    if os.path.isdir(final):
        shutil.rmtree(final)
    os.replace(partial, final)
    _write_atomic(os.path.join(folder, "latest"), tag)
    for old in complete(folder)[keep:]:
        shutil.rmtree(os.path.join(folder, old["tag"]))


def complete(folder):
    """Manifests of the finished checkpoints in `folder`, newest (furthest position) first."""
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        path = os.path.join(folder, name, MANIFEST)
        if name.startswith((PARTIAL, DAMAGED)) or not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                manifest = json.load(f)
            position = (int(manifest["position"]["epoch"]), int(manifest["position"]["batch"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("checkpoint %s has an unreadable manifest (%s); ignored", path, e)
            continue
        found.append({**manifest, "tag": name, "order": position})
    return sorted(found, key=lambda m: m["order"], reverse=True)


def damage(folder, manifest):
    """What is wrong with checkpoint `manifest` in `folder` (no files listed, a file not listed, a missing,
    truncated or changed file), or None."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "its manifest lists no files"
    unlisted = sorted(set(os.listdir(os.path.join(folder, manifest["tag"]))) - set(files) - {MANIFEST})
    if unlisted:
        return f"it holds files its manifest does not list: {', '.join(unlisted)}"
    for name, meta in files.items():
        if os.path.basename(name) != name or not isinstance(meta, dict) or not {"bytes", "sha256"} <= meta.keys():
            return f"its manifest's entry {name!r}: {meta!r} is not a file of the folder with its size and SHA-256"
        path = os.path.join(folder, manifest["tag"], name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != meta["bytes"]:
            return f"{name} has {os.path.getsize(path)} bytes, {meta['bytes']} when written"
        if sha256_of_files([path]) != meta["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def config_differences(saved_text, current_text):
    """Keys (dotted) whose values differ between two config dumps, except RESUMABLE_CHANGES and keys the saved
    dump lacks that are now at their defaults (added to vidkd since): {key: (saved, now)}."""
    def flat(node, prefix=""):
        out = {}
        for k, v in node.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    saved, now = flat(yaml.safe_load(saved_text)), flat(yaml.safe_load(current_text))
    defaults = flat(yaml.safe_load(get_defaults().dump()))
    return {k: (saved.get(k), now.get(k)) for k in sorted(saved.keys() | now.keys())
            if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES
            and not (k not in saved and k in defaults and now[k] == defaults[k] and k not in CHANGED_BY_DEFAULT)}


def resume_point(folder, config_text):
    """Every rank calls this. The manifest of the newest intact checkpoint in `folder`, or None if there is
    none. A damaged one is reported, skipped and set aside (by rank 0, once every rank has looked); one from
    another config raises ConfigError naming the differing keys."""
    damaged, found = [], None
    for manifest in complete(folder):
        where = os.path.join(folder, manifest["tag"])
        problem = damage(folder, manifest)
        if problem:
            log.warning("checkpoint %s is damaged (%s); trying the previous one", where, problem)
            damaged.append(manifest["tag"])
            continue
        differ = config_differences(manifest["config"], config_text)
        if differ:
            listing = "\n  ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in differ.items())
            raise ConfigError(f"{where}: written with another config (resume with the same config, or start "
                              f"afresh with --resume none or another OUTPUT_DIR):\n  {listing}")
        found = manifest
        break
    distributed.barrier()
    rank = distributed.rank()
    if rank == 0 and damaged:
        try:
            for tag in damaged:
                aside = os.path.join(folder, DAMAGED + tag)
                shutil.rmtree(aside, ignore_errors=True)  # an earlier resume set aside one of the same name
                os.replace(os.path.join(folder, tag), aside)
                log.warning("damaged checkpoint set aside as %s", aside)
            if found:
                _write_atomic(os.path.join(folder, "latest"), found["tag"])
            elif os.path.isfile(os.path.join(folder, "latest")):
                os.remove(os.path.join(folder, "latest"))
        except OSError as e:  # a read-only folder: the damaged ones stay where they are, and are skipped again
            log.warning("cannot set damaged checkpoints aside in %s (%s); left as they are", folder, e.strerror)
    distributed.barrier()
    return found


def load_rank_state(folder, tag, rank):
    path = os.path.join(folder, tag, rank_file(rank))
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing: the checkpoint was written by fewer ranks than run now")
    return torch.load(path, map_location="cpu", weights_only=True)
