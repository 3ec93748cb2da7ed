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
each filled row, so a killed fill resumes where it stopped. The layout depends on W, which rank 0 records in
`layout.json` before any shard is written: a fill resumed on another number of ranks discards the partial one
(rows of two layouts never mix), and a shard or mark file that a kill left empty or cut short is discarded
with its rank's marks, those rows computed again. Rank 0 then writes `meta.json` with the SHA-256 of every
shard file and renames the folder to `<key>/`. The sums are checked once per run, when the cache is opened
(`prepare`): a cache without a readable meta.json, or with a shard that does not match its sum, is deleted
and rebuilt under DISTILL.CACHE auto (with a warning naming the file), and refused under require.
"""
import hashlib
import json
import logging
import os
import shutil

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


def views(cfg):
    """Views per training video for the loader: DISTILL.CACHE_VIEWS when the teachers' outputs come from the
    cache (DISTILL.CACHE not live, and the method runs a teacher), else 0 (fresh draws every epoch)."""
    return cfg.DISTILL.CACHE_VIEWS if cfg.DISTILL.CACHE != "live" and teachers_needed(cfg) else 0


def _digest(path):
    """SHA-256 of a checkpoint file, or of every file of a checkpoint folder (sorted), or "" for none."""
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, f) for root, _, names in os.walk(path) for f in names) if path else []
    return sha256_of_files(files) if files else ""


def cache_spec(cfg, manifest, device):
    """Everything the cached outputs depend on (JSON-able), for teachers run on `device`."""
    m = cfg.MODEL
    # What only some runs set enters only when set, so the caches of video runs keep the keys they had before.
    views = {"task": cfg.TASK} if cfg.TASK != "video" else {}
    views.update({"TRAIN_PAD": cfg.DATA.TRAIN_PAD} if cfg.DATA.TRAIN_PAD else {})
    return {
        # DEEPSPEED.PRECISION is not in it: the teachers and the fixed SDD projections run outside what it casts.
        "teacher_autocast": m.TEACHER_AUTOCAST and device.type in AUTOCAST_DEVICES,
        "manifest": [manifest.root] + [[r.path, r.start_frame, r.stop_frame, r.fps, r.frames] for r in manifest.samples],
        "teachers": [[m.TEACHERS[i], _digest(m.TEACHER_CHECKPOINTS[i])] for i in teachers_needed(cfg)],
        "views": {"count": cfg.DISTILL.CACHE_VIEWS, "seed": cfg.SEED, **{k: cfg.DATA[k] for k in VIEW_KEYS}, **views},
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
    layout = os.path.join(partial, "layout.json")
    if rank == 0:
        _start_layout(partial, layout, world)
    distributed.barrier()  # the layout is settled before any rank reads or writes a shard
    rows = -(-len(dataset.manifest.samples) * views // world)
    slots = np.arange(rank, len(dataset.manifest.samples) * views, world)
    done_path, done = _marks(partial, rank, rows)
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
            out = distiller.teacher_targets(batch["input"].to(device))
        row = todo[at:at + len(batch["input"])] // world
        at += len(batch["input"])
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
        names = sorted(arrays) or _names(partial)
        shards = [f"{name}.shard{r}.npy" for name in names for r in range(world)]
        sums = {f: sha256_of_files([os.path.join(partial, f)]) for f in shards}
        with open(os.path.join(partial, "meta.json"), "w") as f:
            json.dump({"world": world, "views": views, "rows": rows, "names": names, "sha256": sums}, f)
        os.replace(partial, folder)
    distributed.barrier()


def _start_layout(partial, layout, world):
    """Keep a partial fill only if it was laid out for `world` ranks; else start it afresh, recording `world`."""
    if os.path.isdir(partial):
        try:
            with open(layout) as f:
                was = json.load(f).get("world")
        except (OSError, ValueError, AttributeError):
            was = None  # never written, or cut short by a kill
        if was == world:
            return
        log.warning("teacher cache: discarding the partial fill %s, laid out for %s ranks: filling it again on %d",
                    partial, was or "an unknown number of", world)
        if os.path.isfile(layout):
            os.remove(layout)  # first: a kill in rmtree leaves a folder that is discarded again, never reused
        shutil.rmtree(partial)
    os.makedirs(partial)
    with open(layout, "w") as f:  # before any shard
        json.dump({"world": world}, f)


def _marks(partial, rank, rows):
    """(path, bool [rows]) of this rank's marks of filled rows. If one of its files is not a whole .npy file of
    `rows` rows (a kill while it was created can leave it empty, or with a header only), its marks and shards are
    deleted first, and all its rows are computed again."""
    done_path = os.path.join(partial, f"filled.shard{rank}.npy")
    shards = [os.path.join(partial, f) for f in os.listdir(partial)
              if f.endswith(f".shard{rank}.npy") and not f.startswith("filled.")]
    cut = [path for path, dtype in [(done_path, np.bool_)] + [(path, np.float16) for path in shards]
           if os.path.isfile(path) and not _whole(path, dtype, rows)]
    if cut:
        log.warning("teacher cache: %s is cut short or unreadable (a fill killed while writing it?): discarding "
                    "rank %d's shards and marks, its views are computed again", cut[0], rank)
        for path in [done_path] + shards:  # the marks first: shards without marks are merely filled again
            if os.path.isfile(path):
                os.remove(path)
    return done_path, np.load(done_path) if os.path.isfile(done_path) else np.zeros(rows, bool)


def _whole(path, dtype, rows):
    """Whether `path` is a complete .npy file of `rows` rows of `dtype` (a short file does not map)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return array.dtype == dtype and array.shape[:1] == (rows,)


def _names(partial):
    """Target names from the shard files (a resumed fill whose rank 0 had nothing left to compute)."""
    return sorted({f.split(".shard")[0] for f in os.listdir(partial) if ".shard" in f and not f.startswith("filled")})


def damage(folder):
    """What is wrong with the cache in `folder` (a message naming the file), or None if its meta.json reads and
    every shard file matches the SHA-256 recorded there."""
    meta_path = os.path.join(folder, "meta.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        sums = {f"{name}.shard{r}.npy": meta["sha256"][f"{name}.shard{r}.npy"]
                for name in meta["names"] for r in range(meta["world"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{meta_path} is missing or unreadable ({e})"
    for file, digest in sums.items():
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            return f"{path} is missing"
        try:
            if sha256_of_files([path]) != digest:
                return f"{path} does not match its SHA-256 in {meta_path}"
        except OSError as e:  # unreadable: damage like any other (every rank waits for rank 0's verdict)
            return f"{path} cannot be read ({e})"
    return None


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
    """The cache for this config, its files checked against their checksums (DISTILL.CACHE auto: built if
    missing, rebuilt if damaged; require: ConfigError if missing or damaged)."""
    folder = cache_folder(cfg, cache_spec(cfg, dataset.manifest, device))
    problem = (damage(folder) if os.path.exists(folder) else "") if rank == 0 else None  # "": no cache yet
    problem = distributed.broadcast_text(problem, device)  # rank 0 reads the shards once; every rank acts on it
    distributed.barrier()  # every rank has its verdict before rank 0 deletes or fills a cache
    if problem is not None:
        if cfg.DISTILL.CACHE == "require":
            found = (f"the teacher cache for this config is damaged: {problem}" if problem
                     else f"no teacher cache for this config at {folder}")
            raise ConfigError(f"DISTILL.CACHE require: {found} (build it with tools/cache_teachers.py, which "
                              f"replaces a damaged one, or set DISTILL.CACHE auto)")
        if problem and rank == 0:
            log.warning("teacher cache: %s: deleting %s and building it again", problem, folder)
            shutil.rmtree(folder)
        fill(folder, distiller, dataset, cfg, device, rank, world)
    log.info("teacher outputs from the cache %s", folder)
    return TeacherCache(folder)
