"""Health check of a manifest's videos: missing, zero-length, unreadable, truncated (or timed out), and whether
seeking in each is exact (vidkd.data.seeking).

"truncated" means fewer frames decode (PyAV, to the end) than the container holds, by more than one frame
(decoders may drop the last one). An AVI's header counts the zero-length "repeat the previous frame" chunks of
its index as frames: they are not missing frames. Frame folders are checked for missing or unreadable JPEGs.
"""
import os
import struct
from multiprocessing import Pool

from tqdm import tqdm

from vidkd.data.decoders import DecordReader, FrameFolderReader, PyAVReader
from vidkd.data.manifest import Manifest
from vidkd.data.seeking import BACKENDS, probe, save_index
from vidkd.data.video_dataset import time_limit
from vidkd.errors import DecodeError, DecodeTimeout

STATUSES = ("ok", "missing", "zero-length", "unreadable", "truncated", "timeout")


def check_video(path, timeout=120.0):
    """`(status, detail, seek verdict)` of one video file; the verdict (`vidkd.data.seeking.probe`) is None
    unless frames decode."""
    if not os.path.isfile(path):
        return "missing", "file not found", None
    if os.path.getsize(path) == 0:
        return "zero-length", "0 bytes", None
    try:
        with time_limit(timeout, path):
            return _decode_all(path)
    except DecodeTimeout as e:
        return "timeout", str(e), None
    except DecodeError as e:
        return "unreadable", str(e), None


def _decode_all(path):
    import av

    reported = []
    for reader in (DecordReader, PyAVReader):
        try:
            reported.append(reader(path).num_frames)
        except Exception as e:  # the decoder's own error type
            reported.append(f"{reader.__name__}: {str(e).splitlines()[0]}")
    counts = [n for n in reported if isinstance(n, int)]
    if not counts:
        return "unreadable", "; ".join(reported), None
    try:
        with av.open(path) as container:  # the header's count (AVI: from its main header), less AVI repeat chunks
            stream = container.streams.video[0]
            counts.append(stream.frames - avi_repeat_chunks(path, stream.index))
        verdict = probe(path)  # one sequential decode of the whole file, and reads through each backend's seeking
    except DecodeTimeout:
        raise
    except Exception as e:  # PyAV's error types, IndexError without a video stream, DecodeError if nothing decodes
        return "unreadable", f"PyAV: {str(e).splitlines()[0] if str(e) else type(e).__name__}", None
    decoded, error = verdict.pop("frames"), verdict.pop("error")
    if error:
        stopped = f"decoding stopped with {error} after {decoded} frames"
        return "truncated", f"{stopped} (container reports {max(counts)} frames)", None
    if decoded < max(counts) - 1:
        return "truncated", f"{decoded} frames decode, the container reports {max(counts)}", None
    failed = [n for n in reported if not isinstance(n, int)]  # one backend failed: still readable
    inexact = [b for b in BACKENDS if not verdict[b]]
    action = "PyAV reads it" if verdict["pyav"] else "PyAV decodes it from the first frame"
    return "ok", f"{decoded} frames" + (f" ({'; '.join(failed)})" if failed else "") + (
        f"; seeking inexact with {' and '.join(inexact)}: {action}" if inexact else ""), verdict


def avi_repeat_chunks(path, stream_index):
    """How many entries of an AVI's `idx1` index are zero-length chunks of the video stream (0 for other files,
    or an AVI without that index: a truncated one loses it, as it is written last). OpenDML's extended indexes
    (files over 1 GB) are not read: repeat chunks there still count as missing frames."""
    if not path.lower().endswith(".avi"):
        return 0
    prefix = b"%02d" % stream_index
    with open(path, "rb") as f:
        if f.read(12)[8:] != b"AVI ":
            return 0
        while len(header := f.read(8)) == 8:
            chunk, size = struct.unpack("<4sI", header)
            if chunk == b"idx1":
                entries = f.read(min(size, os.fstat(f.fileno()).st_size - f.tell()))  # a damaged size: what is there
                return sum(1 for ckid, _, _, length in struct.iter_unpack("<4sIII", entries[: len(entries) // 16 * 16])
                           if ckid[:2] == prefix and ckid[2:] in (b"dc", b"db") and length == 0)
            f.seek(size + size % 2, os.SEEK_CUR)  # RIFF chunks are padded to an even size
    return 0


def check_frame_folder(path, template):
    try:
        reader = FrameFolderReader(path, template)
        reader.get_frames(range(reader.num_frames))
    except DecodeError as e:
        return "unreadable", str(e), None
    return "ok", f"{reader.num_frames} frames", None


def _check(job):
    path, frames, template = job
    return path, *(check_frame_folder(path, template) if frames else check_video(path))


def check_manifest(manifest_path, workers=2):
    """`[(path, status, detail, seek verdict)]` for every distinct video of the manifest, in path order; writes
    the verdicts to the manifest's seek index (`<split>.seek.json`)."""
    manifest = Manifest.load(manifest_path)
    jobs = sorted({(manifest.abspath(r), r.frames, manifest.frame_template) for r in manifest.samples})
    with Pool(workers) as pool:
        results = list(tqdm(pool.imap(_check, jobs, chunksize=4), total=len(jobs), desc="checking", unit="video"))
    save_index(manifest_path, {path: verdict for path, _, _, verdict in results if verdict is not None})
    return results
