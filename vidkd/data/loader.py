"""The loader the engine uses: manifest -> VideoDataset -> DataLoader, with failed videos counted per epoch.

The sampler is always a DistributedSampler (one replica when not distributed), so one process and N
processes run the same code and the order of an epoch depends only on `(SEED, epoch)`.
"""
import itertools
import logging
import os
import signal
import threading

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from vidkd.data.manifest import Manifest, check_same_classes
from vidkd.data.sampling import ClipSpec
from vidkd.data.seeking import load_index
from vidkd.data.transforms import TestTransform, TrainTransform
from vidkd.data.video_dataset import VideoDataset, collate
from vidkd.errors import DataError
from vidkd.tasks import IMAGE_TASKS

log = logging.getLogger("vidkd.data")


class FailureTracker:
    """Videos that failed to decode: each logged once, counted per epoch; more than `max_fraction` of the
    split's videos in one epoch stops the run with DataError listing them."""

    def __init__(self, split, num_videos, max_fraction):
        self.split, self.num_videos, self.max_fraction = split, num_videos, max_fraction
        self.logged, self.epoch_failures = set(), {}

    def start_epoch(self):
        self.epoch_failures = {}

    def add(self, failures):
        for path, message in failures:
            if path not in self.logged:
                self.logged.add(path)
                log.warning("skipped a video: %s", message)
            self.epoch_failures[path] = message
        if len(self.epoch_failures) > self.max_fraction * self.num_videos:
            listing = "\n  ".join(sorted(self.epoch_failures.values()))
            raise DataError(
                f"{len(self.epoch_failures)} of {self.num_videos} videos in split {self.split!r} failed to decode "
                f"this epoch, more than DATA.MAX_FAIL_FRACTION = {self.max_fraction}:\n  {listing}"
            )

    @property
    def count(self):
        return len(self.epoch_failures)


class EpochSampler(Sampler):
    """Yields `(epoch, index)` from a DistributedSampler, so that each item knows its epoch; the first `skip`
    indices of the epoch are left out (a run resumed mid-epoch)."""

    def __init__(self, sampler):
        self.sampler, self.skip = sampler, 0

    def set_epoch(self, epoch, skip=0):
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __len__(self):
        return len(self.sampler) - self.skip

    def __iter__(self):
        return ((self.sampler.epoch, i) for i in itertools.islice(self.sampler, self.skip, None))


def _worker_failure(error):
    """Whether a RuntimeError of a DataLoader iterator means a worker died or a batch missed DATA.BATCH_TIMEOUT."""
    text = str(error)
    return text.startswith("DataLoader worker") or text.startswith("DataLoader timed out")


class VideoLoader:
    """Iterates batches `{"input", "targets", "index", "view", "valid"}`; call `set_epoch` before each epoch.

    With loader workers: when a worker dies (killed, out of memory) or a batch takes longer than
    DATA.BATCH_TIMEOUT (a decode hung in native code, out of reach of DATA.DECODE_TIMEOUT), the workers are
    killed and started afresh, the batch that was due is skipped (yielded as None) and its videos counted as
    failed, and the epoch goes on. PyTorch's SIGCHLD handler, which raises wherever the main process happens
    to be (in the middle of an optimiser step), is turned off: a dead worker is noticed while a batch is
    awaited, within 5 s."""

    def __init__(self, dataset, loader, tracker):
        self.dataset, self.loader, self.tracker = dataset, loader, tracker

    def set_epoch(self, epoch, start_batch=0):
        """Iterate epoch `epoch` from its batch `start_batch` on (the batches before are the ones a resumed run
        already trained on)."""
        self.loader.sampler.set_epoch(epoch, start_batch * self.loader.batch_size)
        self.tracker.start_epoch()

    def __len__(self):
        return len(self.loader)

    @property
    def batches_per_epoch(self):
        """Batches in a whole epoch of this rank, whatever `start_batch`."""
        n, b = len(self.loader.sampler.sampler), self.loader.batch_size
        return n // b if self.loader.drop_last else -(-n // b)

    def __iter__(self):
        sampler, size = self.loader.sampler, self.loader.batch_size
        batch_index = sampler.skip // size
        while True:
            iterator = iter(self.loader)
            if self.loader.num_workers and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                for batch in iterator:
                    self.tracker.add(batch.pop("failures"))
                    batch_index += 1
                    yield batch
                return
            except RuntimeError as e:
                if not self.loader.num_workers or not _worker_failure(e):
                    raise
                reason = str(e)
                self._restart(iterator)
            indices = list(itertools.islice(sampler.sampler, batch_index * size, (batch_index + 1) * size))
            lost = [self.dataset.manifest.abspath(self.dataset.manifest.samples[i]) for i in indices]
            log.warning("epoch %d, batch %d lost (%s); loader workers restarted, its %d videos skipped",
                        sampler.sampler.epoch + 1, batch_index + 1, reason, len(lost))
            self.tracker.add([(path, f"{path}: in a batch lost with its loader worker ({reason})") for path in lost])
            batch_index += 1
            sampler.skip = batch_index * size
            yield None

    def _restart(self, iterator):
        """Kill the workers of `iterator` (a hung one ignores anything gentler) so the next iter() starts anew."""
        for worker in iterator._workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGKILL)
        iterator._shutdown_workers()
        self.loader._iterator = None  # persistent workers: otherwise iter() would hand back the broken one


def clip_spec(cfg):
    """The frames of one input: DATA.NUM_FRAMES for a clip; one frame for an image (TASK image: an image file,
    a row of an image array, or one frame of a video, random in training, TEST.NUM_CLIPS evenly spaced ones in
    testing, whose scores are averaged)."""
    d = cfg.DATA
    return ClipSpec(d.NUM_FRAMES if cfg.TASK == "video" else 1, d.SAMPLING_RATE, d.SAMPLING, d.TARGET_FPS)


def manifest_path(cfg, train, split=None):
    """The manifest of the training split, or of `split` (default: the test split) read as test views."""
    d = cfg.DATA
    return os.path.join(d.MANIFEST_DIR, f"{d.TRAIN_SPLIT if train else split or d.TEST_SPLIT}.json")


def build_dataset(cfg, train, split=None, cache_views=0):
    """`cache_views`: views per training video when the teachers' outputs come from the teacher-output cache
    (`vidkd.engine.teacher_cache.views`), else 0 (fresh draws every epoch)."""
    d, path = cfg.DATA, manifest_path(cfg, train, split)
    manifest = Manifest.load(path)
    if train:
        manifest = manifest.per_class(d.TRAIN_PER_CLASS, cfg.SEED)
        transform = TrainTransform(d.TRAIN_CROP_SIZE, d.TRAIN_CROP_SCALE, d.TRAIN_CROP_RATIO, d.FLIP, d.MEAN, d.STD,
                                   d.TRAIN_PAD)
    else:
        transform = TestTransform(d.TEST_SHORT_SIDE, d.TEST_CROP_SIZE, d.MEAN, d.STD)
    return VideoDataset(manifest, clip_spec(cfg), transform, train, cfg.TEST.NUM_CLIPS, cfg.TEST.NUM_CROPS,
                        d.DECODER, d.DECODE_THREADS, cfg.SEED, d.MAX_RETRIES, d.DECODE_TIMEOUT,
                        cache_views if train else 0, load_index(path), image=cfg.TASK in IMAGE_TASKS)


def build_loader(cfg, train, rank=0, world_size=1, split=None, cache_views=0):
    """The training (shuffled, last partial batch dropped) or test loader of this rank; `split`: another
    manifest read as the test split is (DATA.CALIBRATION_SPLIT); `cache_views`: see `build_dataset`."""
    d = cfg.DATA
    dataset = build_dataset(cfg, train, split, cache_views)
    sampler = EpochSampler(DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train,
                                              seed=cfg.SEED))
    loader = DataLoader(
        dataset,
        batch_size=cfg.TRAIN.BATCH_SIZE if train else cfg.TEST.BATCH_SIZE,
        sampler=sampler,
        num_workers=d.NUM_WORKERS,
        collate_fn=collate,
        pin_memory=d.PIN_MEMORY and torch.cuda.is_available(),
        drop_last=train,
        prefetch_factor=d.PREFETCH_FACTOR if d.NUM_WORKERS > 0 else None,
        persistent_workers=d.NUM_WORKERS > 0,
        timeout=d.BATCH_TIMEOUT if d.NUM_WORKERS > 0 else 0,
    )
    if d.NUM_WORKERS:
        # Batches come from the workers as shared-memory files, not as file descriptors that the main process
        # must fetch from the worker that sent them: a hung worker cannot block the main process that way.
        torch.multiprocessing.set_sharing_strategy("file_system")
    split = d.TRAIN_SPLIT if train else split or d.TEST_SPLIT
    return VideoLoader(dataset, loader, FailureTracker(split, len(dataset.manifest.samples), d.MAX_FAIL_FRACTION))


def build_loaders(cfg, rank=0, world_size=1, cache_views=0):
    """The training and test loaders of this rank; the test manifest must have the training manifest's classes (but
    for faces: its identities are others, held out for verification)."""
    train = build_loader(cfg, True, rank, world_size, cache_views=cache_views)
    test = build_loader(cfg, False, rank, world_size)
    if cfg.TASK != "face":
        check_same_classes(train.dataset.manifest, manifest_path(cfg, True), test.dataset.manifest,
                           manifest_path(cfg, False))
    return train, test


def build_calibration_loader(cfg, train_manifest):
    """The DATA.CALIBRATION_SPLIT videos read as test views, all of them on every rank (each rank estimates the
    same statistics from them); its classes must be the training split's."""
    loader = build_loader(cfg, False, split=cfg.DATA.CALIBRATION_SPLIT)
    check_same_classes(train_manifest, manifest_path(cfg, True), loader.dataset.manifest,
                       manifest_path(cfg, False, cfg.DATA.CALIBRATION_SPLIT))
    return loader
