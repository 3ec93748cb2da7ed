"""The manifest: the one file format between `data_prep/` (official layouts) and the training loader.

A manifest is a JSON file for one split of one dataset:

    {"dataset": "hmdb51", "split": "train", "root": "/abs/dataset/root",
     "label_sets": {"label": ["brush_hair", "cartwheel", ...]},        # or {"verb": [...], "noun": [...]}
     "samples": [{"id": "...", "path": "brush_hair/x.avi", "targets": {"label": 0},
                  "start_frame": 0, "stop_frame": -1, "fps": 0.0, "frames": false}, ...]}

`path` is relative to `root` (or absolute). `start_frame` / `stop_frame` are 0-based and inclusive;
`stop_frame = -1` means "to the last frame that decodes". `frames = true` means `path` is a folder of JPEG
frames named by `frame_template`.

`fps` is the time base: `fps > 0` is the rate at which `start_frame` / `stop_frame` count (EPIC-KITCHENS-100:
60, whatever the video's own rate). A frame folder's frames are at that rate and are indexed directly; a video
file's own frames are reached through time (`VideoRecord.frame_range`). `fps = 0`: the frames are the decoded
file's own.

`Manifest.load` refuses (AnnotationError naming the file and the sample) a split without samples, a repeated id,
a target outside its label set, a frame range other than `0 <= start_frame <= stop_frame` (or `stop_frame = -1`),
and an fps that is negative, NaN or infinite. Whether a start lies past a video's end is known only once it is
decoded (data_prep/check_videos.py).
"""
import json
import math
import os
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields, replace

from vidkd.errors import AnnotationError

FRAME_TEMPLATE = "frame_{:010d}.jpg"  # EPIC-KITCHENS `rgb_frames/<video>/frame_0000000001.jpg` (1-based)


@dataclass
class VideoRecord:
    """One sample: a video (or a segment of one) and its integer targets, one per label set."""

    id: str
    path: str
    targets: dict
    start_frame: int = 0
    stop_frame: int = -1
    fps: float = 0.0
    frames: bool = False

    def frame_range(self, num_frames, fps):
        """`[start_frame, stop_frame]` as the half-open range `[lo, hi)` of the frames that decode: `num_frames`
        of them at `fps` (a file's own rate; 0: unknown). A folder's frames, or frames without a time base, are
        taken as they are. In a file, frame f of the time base (shown from f / self.fps to (f + 1) / self.fps)
        becomes the file's frame on screen at the middle of that interval, so both layouts show the same moment."""
        through_time = self.fps > 0 and fps > 0 and not self.frames
        scale = fps / self.fps if through_time else 1.0
        lo = math.floor((self.start_frame + 0.5) * scale)  # n = floor(t * fps), t = (f + 1/2) / self.fps
        hi = num_frames if self.stop_frame < 0 else min(math.floor((self.stop_frame + 0.5) * scale) + 1, num_frames)
        return lo, hi


@dataclass
class Manifest:
    dataset: str
    split: str
    root: str
    label_sets: dict
    samples: list = field(default_factory=list)
    frame_template: str = FRAME_TEMPLATE

    def per_class(self, count, seed):
        """A copy with at most `count` samples of each class of the first label set, drawn with `seed`, in
        manifest order (0 keeps every sample)."""
        if count == 0:
            return self
        head, rng, by_class = next(iter(self.label_sets)), random.Random(seed), defaultdict(list)
        for i, rec in enumerate(self.samples):
            by_class[rec.targets[head]].append(i)
        keep = sorted(i for idx in by_class.values() for i in rng.sample(idx, min(count, len(idx))))
        return replace(self, samples=[self.samples[i] for i in keep])

    def hold_out(self, count, seed):
        """`(kept, held)`: `held` has `count` samples of each class of the first label set, drawn with `seed` as
        `per_class` draws them; `kept` has the others. Both in manifest order."""
        held = self.per_class(count, seed)
        ids = {r.id for r in held.samples}
        return replace(self, samples=[r for r in self.samples if r.id not in ids]), held

    def abspath(self, record):
        return record.path if os.path.isabs(record.path) else os.path.join(self.root, record.path)

    def save(self, path):
        """Write atomically (temporary name, then rename) so an interrupted write leaves no half file."""
        data = asdict(self)
        tmp = f"{path}.tmp"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(data, f, indent=0)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise AnnotationError(path, 0, "manifest not found (run the data_prep script for this dataset)")
        except json.JSONDecodeError as e:
            raise AnnotationError(path, e.lineno, f"not a valid manifest: {e.msg}")
        except (OSError, ValueError, RecursionError) as e:  # a folder, not UTF-8, a huge int, deep nesting
            raise AnnotationError(path, 0, f"not a valid manifest: {e}")
        samples = data.pop("samples", None) if isinstance(data, dict) else None
        if not isinstance(samples, list):
            raise AnnotationError(path, 0, "not a vidkd manifest: no list of samples")
        try:
            manifest = cls(**data, samples=[VideoRecord(**s) for s in samples])
        except TypeError as e:  # a missing or unknown field
            raise AnnotationError(path, 0, f"not a vidkd manifest: {e}")
        _check_types(manifest, path, "the manifest")
        heads = manifest.label_sets
        if not heads or not all(isinstance(names, list) and all(isinstance(n, str) for n in names)
                                for names in heads.values()):
            raise AnnotationError(path, 0, f"label_sets must map one or more heads to lists of class names, "
                                           f"got {heads!r}")
        if not manifest.samples:
            raise AnnotationError(path, 0, "no samples: the split is empty")
        first = {}  # id -> index of the sample with that id
        for i, rec in enumerate(manifest.samples):
            _check_types(rec, path, f"sample {i}")
            _check_sample(rec, heads, f"sample {i} ({rec.id!r})", path)
            if first.setdefault(rec.id, i) != i:
                raise AnnotationError(path, 0, f"sample {i} ({rec.id!r}): the id of sample {first[rec.id]} too "
                                               f"(ids must be unique)")
        return manifest


def _check_sample(rec, heads, what, path):
    """An AnnotationError naming the manifest and the sample unless its targets fit the label sets, its frame range
    is `0 <= start_frame <= stop_frame` (or stop_frame -1: to the end) and its fps a finite rate >= 0."""
    if rec.targets.keys() != heads.keys() or not all(
            type(y) is int and 0 <= y < len(heads[head]) for head, y in rec.targets.items()):
        sizes = ", ".join(f"{h}: {len(n)} classes" for h, n in heads.items())
        raise AnnotationError(path, 0, f"{what}: targets {rec.targets} do not fit the label sets ({sizes})")
    if not (0 <= rec.start_frame and (rec.stop_frame == -1 or rec.start_frame <= rec.stop_frame)):
        raise AnnotationError(path, 0, f"{what}: start_frame {rec.start_frame} and stop_frame {rec.stop_frame}: need "
                                       f"0 <= start_frame <= stop_frame (or stop_frame -1, to the end)")
    if not 0 <= rec.fps < math.inf:
        raise AnnotationError(path, 0, f"{what}: fps {rec.fps} must be a finite rate, or 0 for the file's own frames")


def check_same_classes(train, train_path, test, test_path):
    """An AnnotationError naming the test manifest unless its label sets are the training manifest's: the same
    heads with the same class names in the same order (the model's outputs are the training classes)."""
    for head, names in train.label_sets.items():
        other = test.label_sets.get(head)
        if other is None:
            problem = "missing here"
        elif len(other) != len(names):
            problem = f"{len(other)} classes here, {len(names)} there"
        elif other != names:
            k = next(k for k, (a, b) in enumerate(zip(names, other)) if a != b)
            problem = f"class {k} is {other[k]!r} here, {names[k]!r} there"
        else:
            continue
        raise AnnotationError(test_path, 0, f"label set {head!r} of the training manifest {train_path}: {problem} "
                                            f"(a test split must have the training classes, in their order)")
    extra = sorted(set(test.label_sets) - set(train.label_sets))
    if extra:
        raise AnnotationError(test_path, 0, f"label set(s) {extra} that the training manifest {train_path} lacks")


def _check_types(record, path, what):
    """An AnnotationError unless each field of the dataclass `record` holds its annotated type (an int may
    stand for a float, a bool for nothing else)."""
    for f in fields(record):
        value = getattr(record, f.name)
        if not isinstance(value, (int, float) if f.type is float else f.type) or (
                isinstance(value, bool) and f.type is not bool):
            raise AnnotationError(path, 0, f"{what}: {f.name} must be a {f.type.__name__}, got {value!r}")


def write_hold_out(manifest_path, count, seed, kept_split, held_split):
    """Split a manifest into `<kept_split>.json` and `<held_split>.json` beside it (`Manifest.hold_out`), each with
    the entries of the manifest's seek index for its videos; returns their paths. A split name that would
    overwrite the manifest, or a hold-out that leaves a class of any label set without videos to train on, is an
    error."""
    from vidkd.data.seeking import copy_index

    manifest, folder = Manifest.load(manifest_path), os.path.dirname(os.path.abspath(manifest_path))
    paths = [os.path.join(folder, f"{split}.json") for split in (kept_split, held_split)]
    if len({*paths, os.path.abspath(manifest_path)}) < 3:
        raise AnnotationError(manifest_path, 0, f"the kept ({kept_split!r}) and held ({held_split!r}) splits need "
                                                f"two names other than this manifest's")
    kept, held = manifest.hold_out(count, seed)
    for head, names in manifest.label_sets.items():
        empty = sorted({r.targets[head] for r in manifest.samples} - {r.targets[head] for r in kept.samples})
        if empty:
            raise AnnotationError(manifest_path, 0, f"holding out {count} videos per class leaves none of {head} "
                                                    f"class(es) {', '.join(names[c] for c in empty[:5])} to train "
                                                    f"on: hold out fewer")
    for path, split, part in zip(paths, (kept_split, held_split), (kept, held)):
        replace(part, split=split).save(path)
        copy_index(manifest_path, path, {os.path.abspath(manifest.abspath(r)) for r in part.samples})
    return paths
