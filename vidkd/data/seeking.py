"""Is seeking exact in a video file? Decided once per file and backend, remembered, and acted on by the readers.

Frame i of a video is the i-th frame of one sequential decode of the whole file. Readers seek (to a keyframe,
then decode forward) because it is fast, but in some files a seek lands on other frames without an error:
decord seeks to the wrong place in MPEG-4 Part 2 AVIs with B-frames (HMDB51's codec family: in OpenCV's
Megamind.avi, index 165 read after 120 gives frame 11), and PyAV, which matches frames by timestamp, gets
neighbouring frames where the timestamps follow decode order (AVI's packed B-frames, some H.264 mp4 files), and
decord returns frame 11 for frame 0 of an MPEG-TS, a container without an index.
No property of a container tells these apart reliably, so `probe` compares reads through each backend's seeking
path with a sequential decode, at windows spread over the file, pixel for pixel (both use FFmpeg's decoders: a
right frame is the same bytes; a near neighbour in a still scene is not). Where decord's reads differ, PyAV
reads the file; where PyAV's do, PyAV decodes it forward from its first frame (HMDB51 and Kinetics clips are
seconds long; a long EPIC-KITCHENS video read that way costs a decode up to the clip).

Verdicts are remembered per process, and in a seek index beside a manifest (`<split>.seek.json`, written by
`data_prep/check_videos.py`, which decodes every file anyway; valid for the file's size and modification time and
for the decord and PyAV versions that made it). A file in neither is probed on first use over its first
`PREFIX_FRAMES` frames (wrong seeks are systematic: they show from the second keyframe on).
"""
import json
import os
import stat

import numpy as np

from vidkd.errors import DecodeError, DecodeTimeout

BACKENDS = ("decord", "pyav")
PREFIX_FRAMES = 600  # frames probed on first use of a file that no seek index lists
WINDOWS = 6  # probe windows per file, each read as a training clip is: 4 indices 2 apart

_known = {}  # file_key -> {"decord": bool, "pyav": bool}


def file_key(path):
    """`(absolute path, size, mtime in ns)` of a video file, the one `os.stat` of a read; DecodeError where there is
    no such file or it is empty."""
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise DecodeError(path, "file not found")
    if st.st_size == 0:
        raise DecodeError(path, "zero-length file")
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def decoder_versions():
    import av
    import decord

    return {"decord": decord.__version__, "av": av.__version__}


def seeks_exactly(key, backend, index=None):
    """Whether `backend`'s seeking path returns the sequential decode's frames in the file of `key` (`file_key`):
    from this process's memory, else `index` (a seek index's `videos`, keyed by absolute path), else a probe of the
    file's start."""
    path = key[0]
    if key not in _known:
        entry = (index or {}).get(key[0])
        if entry is not None and (entry["size"], entry["mtime"]) == key[1:]:
            _known[key] = {b: entry[b] for b in BACKENDS}
        else:
            import av

            try:
                _known[key] = probe(path, PREFIX_FRAMES)
            except DecodeTimeout:
                raise
            except (DecodeError, av.FFmpegError):  # PyAV cannot decode it: no sequential decode to compare with
                _known[key] = {"decord": True, "pyav": False}  # decord reads it as it can; PyAV will fail on it
    return _known[key][backend]


def probe(path, limit=None):
    """`{"decord": bool, "pyav": bool, "frames": n, "error": str}`: whether each backend's seeking reads give the
    frames of a sequential decode (of the first `limit` frames; None: all), how many frames that decode gave, and
    the error that ended it early ("" if none). Windows are placed by the packet count, so one decode does."""
    from vidkd.data.decoders import DecordReader, PyAVReader

    pyav = PyAVReader(path)  # its seeking reads keep no state between calls: one reader does for every window
    starts = np.linspace(0, max(min(pyav.num_frames, limit or np.inf) - 7, 0), WINDOWS).astype(int).tolist()
    truth = pyav.decode_forward({s + 2 * k for s in starts for k in range(4)}, (limit or np.inf) - 1)
    n = pyav.decoded
    if not n:
        raise DecodeError(path, "no frame decodes" + (f" ({pyav.error})" if pyav.error else ""))
    windows = [w for w in ([s + 2 * k for k in range(4) if s + 2 * k < n] for s in starts) if w]
    verdict = {"frames": n, "error": pyav.error}
    for name, new_reader in (("decord", lambda: DecordReader(path)), ("pyav", lambda: pyav)):
        try:
            shared = new_reader()  # one reader for every window in turn (as read_chunks reads), and a new one each
            verdict[name] = bool(windows) and all(
                np.array_equal(reader.get_frames(w).numpy(), np.stack([truth[i] for i in w]))
                for w in windows for reader in (new_reader(), shared))
        except DecodeTimeout:
            raise
        except Exception:  # the backend cannot read the file at all: the readers fall back to the other one
            verdict[name] = False
    return verdict


def index_path(manifest_path):
    return os.path.splitext(manifest_path)[0] + ".seek.json"


def save_index(manifest_path, verdicts):
    """Write the seek index of a manifest: `verdicts` maps absolute video paths to `probe` results."""
    videos = {}
    for path, verdict in sorted(verdicts.items()):
        key, size, mtime = file_key(path)
        videos[key] = {"size": size, "mtime": mtime, **{b: verdict[b] for b in BACKENDS}}
    tmp = index_path(manifest_path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"versions": decoder_versions(), "videos": videos}, f, indent=0)
    os.replace(tmp, index_path(manifest_path))


def copy_index(source_manifest, target_manifest, videos):
    """Give `target_manifest` the entries of `source_manifest`'s seek index for `videos` (absolute paths), as they
    are: an entry made for an older state of its file stays stale (the file is probed when read)."""
    videos = set(videos)
    entries = {p: v for p, v in load_index(source_manifest).items() if p in videos}
    tmp = index_path(target_manifest) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"versions": decoder_versions(), "videos": entries}, f, indent=0)
    os.replace(tmp, index_path(target_manifest))


def load_index(manifest_path):
    """The `videos` of a manifest's seek index, or {} when there is none (its files are probed on first use). An
    unreadable index, or one made by other decoder versions, is ignored the same way."""
    try:
        with open(index_path(manifest_path)) as f:
            data = json.load(f)
        if data["versions"] != decoder_versions():
            return {}
        return {p: v for p, v in data["videos"].items() if all(isinstance(v.get(k), bool) for k in BACKENDS)
                and all(type(v.get(k)) is int for k in ("size", "mtime"))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
