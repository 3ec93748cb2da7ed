"""HMDB51 in its official layout.

Videos: `videos_dir/<class>/<video>` (`.avi` officially; any name the split files list is used as is).
Splits: `splits_dir/<class>_test_split<N>.txt` for N in 1, 2, 3, one line `<video> <0|1|2>` per video
(1 = train, 2 = test, 0 = unused).
"""
import os

from vidkd.data.datasets.csv_rows import new_id, read_lines
from vidkd.data.manifest import Manifest, VideoRecord
from vidkd.errors import AnnotationError

SPLITS = {"1": "train", "2": "test"}


def parse_hmdb51(videos_dir, splits_dir, split_id=1):
    """Return `({"train": Manifest, "test": Manifest}, {"train": [missing], "test": [missing]})`.

    Classes are the sorted names of the split files of `split_id` (label set "label"). A listed video whose
    file is absent stays in the manifest and is also listed (path relative to `videos_dir`) in the second dict.
    """
    suffix = f"_test_split{split_id}.txt"
    try:
        split_files = sorted(n for n in os.listdir(splits_dir) if n.endswith(suffix))
    except OSError as e:
        raise AnnotationError(splits_dir, 0, f"cannot list the split files: {e.strerror}")
    if not split_files:
        raise AnnotationError(splits_dir, 0, f"no <class>{suffix} files")
    classes = [n[: -len(suffix)] for n in split_files]
    root = os.path.abspath(videos_dir)
    samples = {"train": [], "test": []}
    missing = {"train": [], "test": []}
    ids = {"train": {}, "test": {}}  # the same file name in two classes' folders would give one id twice
    for label, (cls, name) in enumerate(zip(classes, split_files)):
        path = os.path.join(splits_dir, name)
        has_folder = os.path.isdir(os.path.join(root, cls))
        seen = {}  # video -> (value, line)
        for line, text in read_lines(path):
            if not has_folder:
                raise AnnotationError(path, line, f"unknown class {cls!r}: no folder {os.path.join(root, cls)}")
            fields = text.rsplit(maxsplit=1)
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise AnnotationError(path, line, f"expected '<video> <0|1|2>', got {text!r}")
            video, value = fields
            if video in seen:
                if seen[video][0] != value:
                    raise AnnotationError(path, line, f"{video} is listed twice with different values "
                                                      f"({seen[video][0]} on line {seen[video][1]}, {value} here)")
                continue
            seen[video] = (value, line)
            if value == "0":
                continue
            split, rel, sample_id = SPLITS[value], f"{cls}/{video}", os.path.splitext(video)[0]
            new_id(ids[split], sample_id, path, line)
            samples[split].append(VideoRecord(id=sample_id, path=rel, targets={"label": label}))
            if not os.path.isfile(os.path.join(root, rel)):
                missing[split].append(rel)
    manifests = {s: Manifest("hmdb51", s, root, {"label": classes}, samples[s]) for s in samples}
    return manifests, missing
