"""The video dataset over a manifest: decode a clip, sample its frames, transform it.

Training: one item per video (with the teachers' stored outputs for its view, under "teacher", when
`teacher_cache` is set), one random clip (frames, crop and flip drawn from `(seed, epoch, index)`, so
an item is the same whichever worker makes it). With a pool of `views` per video (the teacher-output cache),
each epoch picks one of the video's views from `(seed, epoch, index)` and the view's draws come from
`(seed, index, view)`, so a view is the same clip every time. Testing: `n_clips x n_crops` items per video, each with
its view index. With `image`, a sample is read as a 1-frame clip (an image file, a row of an image array, a frame of
a video) and an item is that frame, `[3, H, W]`. A video that cannot be decoded is reported in the item's `failures` (path, message); in
training another sample is drawn in its place, in testing the item comes back with
`valid = False` so the evaluator can leave it out rather than score a different video.
"""
import signal
import threading
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from vidkd.data.decoders import FrameFolderReader, read_clip, still_reader
from vidkd.data.sampling import test_indices, train_indices
from vidkd.errors import DataError, DecodeError, DecodeTimeout


class VideoDataset(Dataset):
    def __init__(self, manifest, spec, transform, train, n_clips=1, n_crops=1, decoder="decord",
                 threads=1, seed=0, max_retries=10, timeout=0.0, views=0, seek_index=None, image=False):
        self.manifest, self.spec, self.transform, self.train, self.views = manifest, spec, transform, train, views
        self.image = image  # items are images [3, H, W]: the one frame of a 1-frame clip
        self.n_clips, self.n_crops = (1, 1) if train else (n_clips, n_crops)
        self.decoder, self.threads, self.seed = decoder, threads, seed
        self.max_retries, self.timeout = max_retries, timeout
        self.seek_index = seek_index  # the manifest's seek index (vidkd.data.seeking), or None: probe on first use
        # Set by the engine when the teachers' outputs come from the teacher-output cache: an object whose
        # `read(sample, view)` gives them as a dict of tensors, added to each training item as "teacher".
        self.teacher_cache = None

    def __len__(self):
        return len(self.manifest.samples) * self.n_clips * self.n_crops

    def __getitem__(self, key):
        """`key`: an item index, or `(epoch, index)` as EpochSampler gives it (the epoch seeds the draws, and
        travels with the index so that persistent workers need no message when an epoch starts)."""
        epoch, i = key if isinstance(key, tuple) else (0, key)
        return self._train_item(epoch, i) if self.train else self._test_item(i)

    def _train_item(self, epoch, i):
        rng = np.random.default_rng([self.seed, epoch, i])
        if self.views:
            return self.view_item(i, int(rng.integers(self.views)))
        return self._draw_item(i, 0, rng)

    def view_item(self, i, view):
        """View `view` of the pool of training video `i`."""
        return self._draw_item(i, view, np.random.default_rng([self.seed, 2**32, i, view]))

    def _draw_item(self, i, view, rng):
        """A training clip of video i (or of another one drawn from `rng` if it does not decode)."""
        failures, j = [], i
        for _ in range(self.max_retries + 1):
            try:
                frames = self._decode(j, lambda lo, hi, fps: train_indices(self.spec, lo, hi, fps, rng))
                break
            except DecodeError as e:
                failures.append((e.path, str(e)))
                j = int(rng.integers(len(self.manifest.samples)))
        else:
            listing = "\n".join(message for _, message in failures)
            raise DataError(f"{self.max_retries + 1} videos in a row failed to decode:\n{listing}")
        with torch.random.fork_rng(devices=[]):
            # the CPU generator, where the transforms draw (torch.manual_seed also queues a CUDA seeding, with a
            # stack trace, when CUDA is not initialised: 1.2 ms an item)
            torch.random.default_generator.manual_seed(int(rng.integers(2**62)))
            video = self.transform(frames)
        return self._item(j, view, video, True, failures, sample=i)

    def _test_item(self, i):
        j, view = divmod(i, self.n_clips * self.n_crops)
        clip, crop = divmod(view, self.n_crops)
        try:
            frames = self._decode(j, lambda lo, hi, fps: test_indices(self.spec, lo, hi, fps, self.n_clips, clip))
            return self._item(j, view, self.transform(frames, crop, self.n_crops), True, [])
        except DecodeError as e:
            size = self.transform.crop_size
            video = torch.zeros(3, self.spec.num_frames, size, size)
            return self._item(j, view, video, False, [(e.path, str(e))])

    def _item(self, j, view, video, valid, failures, sample=None):
        """Item of video j; `sample`: the index asked for (the key of the teacher cache), j unless replaced."""
        targets, sample = self.manifest.samples[j].targets, j if sample is None else sample
        item = {"input": video[:, 0] if self.image else video, "targets": dict(targets), "index": j, "view": view, "valid": valid,
                "failures": failures, "sample": sample}
        if self.train and self.teacher_cache is not None:
            item["teacher"] = self.teacher_cache.read(sample, view)
        return item

    def _decode(self, j, indices_in):
        """Frames of sample j; `indices_in(lo, hi, fps)` picks indices inside the sample's frame range, `fps`
        the rate of the frames it indexes (a file's own rate; a frame folder's is the manifest's)."""
        rec = self.manifest.samples[j]
        path = self.manifest.abspath(rec)

        def indices_for(num_frames, fps):
            lo, hi = rec.frame_range(num_frames, fps)
            if lo >= hi:
                raise DecodeError(path, f"segment starts at frame {lo} but {num_frames} frames decode")
            return indices_in(lo, hi, fps)

        with time_limit(self.timeout, path):
            reader = FrameFolderReader(path, self.manifest.frame_template) if rec.frames else still_reader(path)
            if reader is not None:
                return reader.get_frames(indices_for(reader.num_frames, rec.fps))
            return read_clip(path, indices_for, self.decoder, self.threads, self.seek_index)


@contextmanager
def time_limit(seconds, path):
    """Abandon decoding after `seconds` (SIGALRM; only in a process's main thread, as loader workers are)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise DecodeTimeout(path, f"decoding took longer than {seconds} s (DATA.DECODE_TIMEOUT)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def collate(batch):
    """default_collate, with the items' failure lists joined into one list."""
    failures = [f for item in batch for f in item.pop("failures")]
    out = default_collate(batch)
    out["failures"] = failures
    return out
