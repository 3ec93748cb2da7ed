"""Health check of a manifest's videos: missing, zero-length, unreadable, truncated (or timed out).

"truncated" means fewer frames decode (PyAV, to the end) than the container reports, by more than one frame
(decoders may drop the last one). Frame folders are checked for missing or unreadable JPEGs.
"""
import os
from multiprocessing import Pool

from tqdm import tqdm

from vidkd.data.decoders import DecordReader, FrameFolderReader, PyAVReader
from vidkd.data.video_dataset import time_limit
from vidkd.errors import DecodeError, DecodeTimeout

STATUSES = ("ok", "missing", "zero-length", "unreadable", "truncated", "timeout")


def check_video(path, timeout=120.0):
    """`(status, detail)` of one video file."""
    if not os.path.isfile(path):
        return "missing", "file not found"
    if os.path.getsize(path) == 0:
        return "zero-length", "0 bytes"
    try:
        with time_limit(timeout, path):
            return _decode_all(path)
    except DecodeTimeout as e:
        return "timeout", str(e)
    except DecodeError as e:
        return "unreadable", str(e)


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
        return "unreadable", "; ".join(reported)
    try:
        with av.open(path) as container:
            counts.append(container.streams.video[0].frames)  # the header's count (AVI: from its main header)
            decoded = sum(1 for _ in container.decode(video=0))
    except Exception as e:  # PyAV's error types (InvalidDataError, ...) for a stream broken mid-way
        return "truncated", f"decoding stopped with {type(e).__name__}: {e} (container reports {max(counts)} frames)"
    if decoded == 0:
        return "unreadable", "no frame decodes"
    if decoded < max(counts) - 1:
        return "truncated", f"{decoded} frames decode, the container reports {max(counts)}"
    failed = [n for n in reported if not isinstance(n, int)]  # one backend failed: still readable
    return "ok", f"{decoded} frames" + (f" ({'; '.join(failed)})" if failed else "")


def check_frame_folder(path, template):
    try:
        reader = FrameFolderReader(path, template)
        reader.get_frames(range(reader.num_frames))
    except DecodeError as e:
        return "unreadable", str(e)
    return "ok", f"{reader.num_frames} frames"


def _check(job):
    path, frames, template = job
    return path, *(check_frame_folder(path, template) if frames else check_video(path))


def check_manifest(manifest, workers=2):
    """`[(path, status, detail)]` for every distinct video of the manifest, in path order."""
    jobs = sorted({(manifest.abspath(r), r.frames, manifest.frame_template) for r in manifest.samples})
    with Pool(workers) as pool:
        return list(tqdm(pool.imap(_check, jobs, chunksize=4), total=len(jobs), desc="checking", unit="video"))
