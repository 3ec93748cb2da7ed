"""One interface over the video decoders: decord (default), PyAV, and folders of JPEG frames.

A reader gives `num_frames`, `fps` and `get_frames(indices) -> uint8 tensor [T, H, W, 3]`: frame i is the i-th
frame of a sequential decode of the file. Readers seek to the nearest keyframe and decode forward to the last
wanted frame, never the whole video, in the files where that gives those frames (`vidkd.data.seeking` decides,
once per file and backend). Where decord's seeking is inexact, PyAV reads the file instead (decord can get even a
sequential read wrong: in an H.264 file with timestamps in decode order it starts at frame 26); where PyAV's is,
PyAV decodes forward from the first frame.

Containers often report more frames than really decode (a truncated file, an AVI whose header disagrees
with its index, a last frame that one backend drops). Both readers therefore return exactly one frame per
requested index: an index past the last frame that really decodes gets that last frame, so sampling stays
inside the frames that decode and both backends give the same clip shape. A file that decodes no frame at
all raises DecodeError.
"""
import bisect
import functools
import os

import numpy as np
import torch
from PIL import Image

from vidkd.data.seeking import BACKENDS, file_key, seeks_exactly
from vidkd.errors import DecodeError, DecodeTimeout


class DecordReader:
    def __init__(self, path, threads=1):
        import decord

        self.path = path
        self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
        self.num_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps())

    def get_frames(self, indices):
        indices = [int(i) for i in indices]
        try:
            frames = self._vr.get_batch(indices).asnumpy()
        except Exception:  # decord raises its own error type for frames it cannot decode: go one by one
            frames = _fill_from_decodable(self.path, indices, self._one)
        if frames.shape[-1] != 3:  # seen: cinepak at 96x72 comes back as 4 garbled channels
            raise DecodeError(self.path, f"decord returned frames of shape {frames.shape[1:]}")
        return torch.from_numpy(frames)

    def _one(self, i):
        try:
            return self._vr[i].asnumpy()
        except Exception:  # decord's DECORDError and IndexError past the end
            return None


class PyAVReader:
    """PyAV reader. The frame index is built from the demuxed packets (no decoding): frame i is the i-th
    presentation timestamp, as decord counts them (where that is not so, `seek=False`)."""

    def __init__(self, path, threads=1, seek=True):
        self.path, self._threads, self._seek = path, threads, seek
        self._container, self._frames, self.decoded, self.error = None, None, 0, ""  # _frames: a decode at `decoded`
        self._open()
        pts = [p.pts for p in self._container.demux(self._stream) if p.size > 0]
        self._pts = sorted(pts) if None not in pts else None  # None: the container has no timestamps
        self.num_frames = len(pts)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 0.0

    def _open(self):
        import av

        if self._container is not None:
            self._container.close()
        self._container = av.open(self.path)
        if not self._container.streams.video:
            raise DecodeError(self.path, "no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_count = self._threads

    def get_frames(self, indices):
        indices = [int(i) for i in indices]
        if self._pts is None or not self._seek:
            got = self.decode_forward(set(indices))
        else:
            got = self._decode_seek(sorted(set(indices)))
        return torch.from_numpy(_fill_from_decodable(self.path, indices, got.get))

    def _decode_seek(self, wanted):
        """Seek to the keyframe before the first wanted frame, decode forward to the last one. Frames that
        are neither wanted nor referenced by others (non-reference B-frames) are skipped, not decoded."""
        targets = {self._pts[i]: i for i in wanted if i < len(self._pts)}
        if not targets:
            return {}
        self._frames = None  # the container moves: a sequential decode cannot go on
        first, last = min(targets), max(targets)
        import av

        self._container.seek(first, stream=self._stream, backward=True, any_frame=False)
        codec, out = self._stream.codec_context, {}
        try:
            for packet in self._container.demux(self._stream):
                codec.skip_frame = "DEFAULT" if packet.pts in targets or packet.pts is None else "NONREF"
                for frame in codec.decode(packet if packet.size else None):
                    if frame.pts is None:
                        continue
                    if not out and frame.pts > first:  # the seek overshot: start again from the beginning
                        return self.decode_forward(set(wanted))
                    if frame.pts in targets:
                        out[targets[frame.pts]] = frame.to_ndarray(format="rgb24")
                    if frame.pts >= last:
                        return out
        except av.FFmpegError:  # a broken tail ends the video there, as in decode_forward
            pass
        return out or self.decode_forward(set(wanted))  # nothing after the seek: some containers (MPEG-TS)

    def decode_forward(self, wanted, last=None):
        """Frames of `wanted` (a set of indices), decoded forward from the first frame and counted (containers
        without timestamps, or that seek badly), up to frame `last` (default: the last wanted). The decode goes on
        from where the last call left it unless a wanted frame lies before that, so a video read chunk by chunk
        (read_chunks) is decoded once. A decoding error ends the video there (a broken tail: the frames before it
        are the file's frames); `decoded` counts the frames decoded so far and `error` says what stopped them."""
        import av

        if self._frames is None or min(wanted, default=0) < self.decoded:
            self._open()
            self._stream.codec_context.skip_frame = "DEFAULT"
            self._frames, self.decoded, self.error = self._container.decode(self._stream), 0, ""
        out, last = {}, max(wanted) if last is None else last
        while self.decoded <= last:
            try:
                frame = next(self._frames, None)
            except av.FFmpegError as e:
                self._frames, self.error = iter(()), f"{type(e).__name__}: {e}"
                frame = None
            if frame is None:
                break
            if self.decoded in wanted:
                out[self.decoded] = frame.to_ndarray(format="rgb24")
            self.decoded += 1
        return out


class FrameFolderReader:
    """A folder of JPEG frames `template.format(i + first)` (EPIC-KITCHENS `rgb_frames`, 1-based)."""

    def __init__(self, path, template, first=1):
        self.path, self._template, self._first = path, template, first
        names = os.listdir(path) if os.path.isdir(path) else []
        self.num_frames = sum(n.endswith(".jpg") for n in names)
        self.fps = 0.0
        if not self.num_frames:
            raise DecodeError(path, "no frame folder or no .jpg frames in it")

    def get_frames(self, indices):
        return torch.from_numpy(_fill_from_decodable(self.path, [int(i) for i in indices], self._one))

    def _one(self, i):
        try:
            with Image.open(os.path.join(self.path, self._template.format(i + self._first))) as image:
                return np.asarray(image.convert("RGB"))
        except OSError:  # missing or broken JPEG (PIL's UnidentifiedImageError is an OSError)
            return None


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp")


class ImageFileReader:
    """One image file as a 1-frame video (TASK image). A truncated or unreadable file raises DecodeError."""

    def __init__(self, path):
        self.path, self.num_frames, self.fps = path, 1, 0.0

    def get_frames(self, indices):
        try:
            with Image.open(self.path) as image:
                frame = np.asarray(image.convert("RGB"))  # convert loads every pixel: a cut file fails here
        except OSError as e:  # missing, empty, truncated, not an image (UnidentifiedImageError is an OSError)
            raise DecodeError(self.path, f"cannot read the image ({e})") from None
        return torch.from_numpy(frame[None].repeat(len(indices), 0))


class ArrayReader:
    """A `.npy` array of images `[N, H, W]` (grey) or `[N, H, W, 3]`, uint8, as an N-frame video: a sample is one
    row, `start_frame = stop_frame = row` (data_prep writes datasets kept as arrays this way: CIFAR,
    Fashion-MNIST). Read memory-mapped, never unpickled."""

    def __init__(self, path):
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DecodeError(path, f"not a readable .npy array ({e})") from None
        if self._array.dtype != np.uint8 or self._array.ndim not in (3, 4) or self._array.shape[3:] not in ((), (3,)):
            raise DecodeError(path, f"expected uint8 images [N, H, W] or [N, H, W, 3], got {self._array.dtype} "
                                    f"{list(self._array.shape)}")
        self.path, self.num_frames, self.fps = path, len(self._array), 0.0

    def get_frames(self, indices):
        frames = np.asarray(self._array[np.asarray(indices, dtype=np.int64)])
        return torch.from_numpy(frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=3))


@functools.lru_cache(maxsize=8)
def _open_array(path, version):
    """One ArrayReader per array file and version (`(mtime, size)`: a rewritten file is opened afresh) in each
    process: every sample of an array dataset reads the same file."""
    return ArrayReader(path)


def still_reader(path):
    """The reader of an image file or an array of images, or None for a video."""
    if path.lower().endswith(IMAGE_EXTENSIONS):
        return ImageFileReader(path)
    if path.endswith(".npy"):
        try:
            stat = os.stat(path)
        except OSError as e:
            raise DecodeError(path, f"cannot open: {e.strerror}") from None
        return _open_array(path, (stat.st_mtime_ns, stat.st_size))
    return None


def _fill_from_decodable(path, indices, get):
    """Stack frames for `indices`; an index with no frame takes the nearest decodable frame before it
    (or, for the first, after it)."""
    got = {i: get(i) for i in sorted(set(indices))}
    ok = sorted(i for i, f in got.items() if f is not None)
    if not ok:
        raise DecodeError(path, f"none of frames {min(indices)}..{max(indices)} decodes")
    out = []
    for i in indices:
        if got[i] is None:
            i = ok[max(bisect.bisect_right(ok, i) - 1, 0)]
        out.append(got[i])
    return np.stack(out)


def _with_fallback(path, backend, threads, use, index):
    """`use(reader)` with `backend`; any failure (open or decode) is retried with the other backend. Where decord's
    seeking in `path` is inexact (`index`: a manifest's seek index, or None) it is passed over; where PyAV's is,
    PyAV decodes from the first frame."""
    key, errors = file_key(path), []
    for name in (backend,) + tuple(b for b in BACKENDS if b != backend):
        try:
            exact = seeks_exactly(key, name, index)
            if name == "decord" and not exact:
                errors.append("decord: seeking inexact in this file, not used")
                continue
            reader = DecordReader(path, threads) if name == "decord" else PyAVReader(path, threads, exact)
            if reader.num_frames == 0:
                raise DecodeError(path, "no frames")
            return use(reader)
        except DecodeTimeout:
            raise
        except Exception as e:  # each library raises its own error types for a broken file
            errors.append(f"{name}: " + str(e).removeprefix(f"{path}: ").split("\n")[0])
    raise DecodeError(path, "cannot decode (" + "; ".join(errors) + ")")


def open_video(path, backend="decord", threads=1, index=None):
    """A reader for `path`: `backend` if it opens the file, else the other one."""
    return _with_fallback(path, backend, threads, lambda reader: reader, index)


def read_clip(path, indices_for, backend="decord", threads=1, index=None):
    """Decode one clip: `indices_for(num_frames, fps)` gives the frame indices to read."""
    return _with_fallback(path, backend, threads, lambda r: r.get_frames(indices_for(r.num_frames, r.fps)), index)


def read_chunks(path, indices_for, each, chunk=64, backend="decord", threads=1, index=None):
    """Like read_clip, `chunk` frames at a time: the list of `each(frames)` of every chunk, in order, so that a
    long clip of large frames is never all in memory (tools/predict.py reads whole videos). A chunk wholly past
    the frames that decode gets the last one that does, as read_clip gives."""

    def use(reader):
        indices, out, last = indices_for(reader.num_frames, reader.fps), [], None
        for i in range(0, len(indices), chunk):
            part = indices[i : i + chunk]
            try:
                frames = reader.get_frames(part)
            except DecodeTimeout:
                raise
            except DecodeError:
                if last is None:
                    raise
                frames = last[-1:].expand(len(part), *last.shape[1:])
            out.append(each(frames))
            last = frames
        return out

    return _with_fallback(path, backend, threads, use, index)
