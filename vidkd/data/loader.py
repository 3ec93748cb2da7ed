"""The loader the engine uses: manifest -> VideoDataset -> DataLoader, with failed videos counted per epoch.

The sampler is always a DistributedSampler (one replica when not distributed), so one process and N
processes run the same code and the order of an epoch depends only on `(SEED, epoch)`.
"""
import logging
import os

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from vidkd.data.manifest import Manifest
from vidkd.data.sampling import ClipSpec
from vidkd.data.transforms import TestTransform, TrainTransform
from vidkd.data.video_dataset import VideoDataset, collate
from vidkd.errors import DataError

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
                log.warning("skipped a video that does not decode: %s", message)
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
    """Yields `(epoch, index)` from a DistributedSampler, so that each item knows its epoch."""

    def __init__(self, sampler):
        self.sampler = sampler

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        return ((self.sampler.epoch, i) for i in self.sampler)


class VideoLoader:
    """Iterates batches `{"video", "targets", "index", "view", "valid"}`; call `set_epoch` before each epoch."""

    def __init__(self, dataset, loader, tracker):
        self.dataset, self.loader, self.tracker = dataset, loader, tracker

    def set_epoch(self, epoch):
        self.loader.sampler.set_epoch(epoch)
        self.tracker.start_epoch()

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.tracker.add(batch.pop("failures"))
            yield batch


def clip_spec(cfg):
    d = cfg.DATA
    return ClipSpec(d.NUM_FRAMES, d.SAMPLING_RATE, d.SAMPLING, d.TARGET_FPS)


def build_dataset(cfg, train):
    d = cfg.DATA
    split = d.TRAIN_SPLIT if train else d.TEST_SPLIT
    manifest = Manifest.load(os.path.join(d.MANIFEST_DIR, f"{split}.json"))
    if train:
        manifest = manifest.per_class(d.TRAIN_PER_CLASS, cfg.SEED)
        transform = TrainTransform(d.TRAIN_CROP_SIZE, d.TRAIN_CROP_SCALE, d.TRAIN_CROP_RATIO, d.FLIP, d.MEAN, d.STD)
    else:
        transform = TestTransform(d.TEST_SHORT_SIDE, d.TEST_CROP_SIZE, d.MEAN, d.STD)
    return VideoDataset(manifest, clip_spec(cfg), transform, train, cfg.TEST.NUM_CLIPS, cfg.TEST.NUM_CROPS,
                        d.DECODER, d.DECODE_THREADS, cfg.SEED, d.MAX_RETRIES, d.DECODE_TIMEOUT)


def build_loader(cfg, train, rank=0, world_size=1):
    """The training (shuffled, last partial batch dropped) or test loader of this rank."""
    d = cfg.DATA
    dataset = build_dataset(cfg, train)
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
    )
    split = d.TRAIN_SPLIT if train else d.TEST_SPLIT
    return VideoLoader(dataset, loader, FailureTracker(split, len(dataset.manifest.samples), d.MAX_FAIL_FRACTION))
