"""Teacher-output cache: the frozen teachers run once per augmented view, not once per step.

Each training video gets a fixed pool of DISTILL.CACHE_VIEWS views (clip start, crop box, flip drawn from
`(SEED, video, view)`: VideoDataset `views`); each epoch draws one view per video. For every (video, view)
the method's `teacher_targets` (teacher logits, and e.g. the dual teacher's projected SDD targets) are
computed once and stored as fp16 in memory-mapped `.npy` files; training reads them instead of running the
teachers: the loader's workers read each item's targets with its clip (`VideoDataset.teacher_cache`), so they
come with the batch (pinned with it on a GPU), not from a read inside the training step.

The cache lives in `<DISTILL.CACHE_DIR or teacher_cache/ beside the manifest>/<key>/`, where the key hashes
the training manifest, the teachers' checkpoint files, the view spec, the method's target spec and the precision
the targets are computed in (whether the teachers run under bf16 autocast on this device): any change
gives another key, hence a rebuild, never a silent mismatch. It is filled in `<key>.partial/`, where rank r of
W fills the slots `s = video * V + view` with `s % W == r` into its own shard files at row `s // W` and marks
each filled row (a killed fill resumes where it stopped), then renamed to `<key>/` with its `meta.json`.
"""
import hashlib
import json
import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vidkd.data.video_dataset import collate
from vidkd.distill.build import teachers_needed
from vidkd.engine import distributed
from vidkd.errors import ConfigError
from vidkd.hashing import sha256_of_files
from vidkd.models.fast import AUTOCAST_DEVICES

log = logging.getLogger("vidkd.engine")
# Config keys that change the clips of a view, and those that change what the method's teachers output.
VIEW_KEYS = ("NUM_FRAMES", "SAMPLING_RATE", "SAMPLING", "TARGET_FPS", "TRAIN_CROP_SIZE", "TRAIN_CROP_SCALE",
             "TRAIN_CROP_RATIO", "FLIP", "MEAN", "STD")
TARGET_KEYS = ("METHOD", "TEACHER_INDEX", "SDD", "SDD_DIM", "SDD_PHI", "RKD_WEIGHT")
MODEL_KEYS = ("STUDENT", "TEACHERS", "VIT_PATCH_SIZE", "VIT_STEM", "VIT_DEPTH")


def _digest(path):
    """SHA-256 of a checkpoint file, or of every file of a checkpoint folder (sorted), or "" for none."""
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, f) for root, _, names in os.walk(path) for f in names) if path else []
    return sha256_of_files(files) if files else ""


def cache_spec(cfg, manifest, device):
    """Everything the cached outputs depend on (JSON-able), for teachers run on `device`."""
    m = cfg.MODEL
    return {
        # DEEPSPEED.PRECISION is not in it: the teachers and the fixed SDD projections run outside what it casts.
        "teacher_autocast": m.TEACHER_AUTOCAST and device.type in AUTOCAST_DEVICES,
        "manifest": [manifest.root] + [[r.path, r.start_frame, r.stop_frame, r.fps, r.frames] for r in manifest.samples],
        "teachers": [[m.TEACHERS[i], _digest(m.TEACHER_CHECKPOINTS[i])] for i in teachers_needed(cfg)],
        "views": {"count": cfg.DISTILL.CACHE_VIEWS, "seed": cfg.SEED, **{k: cfg.DATA[k] for k in VIEW_KEYS}},
        "targets": {**{k: cfg.DISTILL[k] for k in TARGET_KEYS}, **{k: m[k] for k in MODEL_KEYS}},
    }


def cache_folder(cfg, spec):
    root = cfg.DISTILL.CACHE_DIR or os.path.join(cfg.DATA.MANIFEST_DIR, "teacher_cache")
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(root, key)


class ViewItems(Dataset):
    """The slots (video * V + view) one rank fills, as dataset items."""

    def __init__(self, dataset, slots):
        self.dataset, self.slots = dataset, slots

    def __len__(self):
        return len(self.slots)

    def __getitem__(self, k):
        video, view = divmod(int(self.slots[k]), self.dataset.views)
        return self.dataset.view_item(video, view)


def fill(folder, distiller, dataset, cfg, device, rank, world):
    """Compute and store this rank's slots in `<folder>.partial`; then (rank 0) rename it to `folder`."""
    partial, views = folder + ".partial", dataset.views
    os.makedirs(partial, exist_ok=True)
    rows = -(-len(dataset.manifest.samples) * views // world)
    slots = np.arange(rank, len(dataset.manifest.samples) * views, world)
    done_path = os.path.join(partial, f"filled.shard{rank}.npy")
    done = np.load(done_path) if os.path.isfile(done_path) else np.zeros(rows, bool)
    todo = slots[~done[slots // world]]
    if len(todo) < len(slots):
        log.info("teacher cache: resuming the fill, %d of %d views of this rank already stored",
                 len(slots) - len(todo), len(slots))
    loader = DataLoader(ViewItems(dataset, todo), batch_size=cfg.TEST.BATCH_SIZE, num_workers=cfg.DATA.NUM_WORKERS,
                        collate_fn=collate)
    arrays, at = {}, 0
    distiller.eval()
    for batch in tqdm(loader, desc="teacher cache", unit="batch", disable=rank != 0):
        with torch.no_grad():
            out = distiller.teacher_targets(batch["video"].to(device))
        row = todo[at:at + len(batch["video"])] // world
        at += len(batch["video"])
        for name, t in out.items():
            if name not in arrays:
                path = os.path.join(partial, f"{name}.shard{rank}.npy")
                mode = "r+" if os.path.isfile(path) else "w+"
                arrays[name] = np.lib.format.open_memmap(path, mode, np.float16, (rows, *t.shape[1:]))
            arrays[name][row] = t.detach().cpu().half().numpy()  # fp16: half the bytes, ample for logits
        for array in arrays.values():
            array.flush()
        done[row] = True
        np.save(done_path + ".tmp.npy", done)
        os.replace(done_path + ".tmp.npy", done_path)  # marked only once the rows are on disk
    distributed.barrier()
    if rank == 0:
        with open(os.path.join(partial, "meta.json"), "w") as f:
            json.dump({"world": world, "views": views, "rows": rows, "names": sorted(arrays) or _names(partial)}, f)
        os.replace(partial, folder)
    distributed.barrier()


def _names(partial):
    """Target names from the shard files (a resumed fill whose rank 0 had nothing left to compute)."""
    return sorted({f.split(".shard")[0] for f in os.listdir(partial) if ".shard" in f and not f.startswith("filled")})


class TeacherCache:
    """Reads the stored targets of a (video, view) slot. It goes to the loader's workers with the dataset: each
    process maps the shard files itself, at its first read (a memory map is not sent between processes)."""

    def __init__(self, folder):
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
        self.folder, self.world, self.views, self.rows = folder, meta["world"], meta["views"], meta["rows"]
        self.names, self._arrays = meta["names"], None

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def read(self, sample, view):
        """`{name: fp16 tensor}` of training video `sample` at view `view`."""
        if self._arrays is None:
            self._arrays = {name: [np.load(os.path.join(self.folder, f"{name}.shard{r}.npy"), mmap_mode="r")
                                   for r in range(self.world)] for name in self.names}
        s = sample * self.views + view
        return {name: torch.from_numpy(np.array(shards[s % self.world][s // self.world]))
                for name, shards in self._arrays.items()}


def prepare(cfg, distiller, dataset, device, rank, world):
    """The cache for this config (DISTILL.CACHE auto: built if missing; require: ConfigError if missing)."""
    folder = cache_folder(cfg, cache_spec(cfg, dataset.manifest, device))
    if not os.path.isfile(os.path.join(folder, "meta.json")):
        if cfg.DISTILL.CACHE == "require":
            raise ConfigError(f"DISTILL.CACHE require: no teacher cache for this config at {folder} (build it with "
                              f"tools/cache_teachers.py, or set DISTILL.CACHE auto)")
        fill(folder, distiller, dataset, cfg, device, rank, world)
    log.info("teacher outputs from the cache %s", folder)
    return TeacherCache(folder)
