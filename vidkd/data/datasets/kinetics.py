"""Kinetics (400 / 600 / 700) in its official layout, and plain `<path> <label>` lists.

Official CSV: header `label,youtube_id,time_start,time_end,split` (plus an optional `is_cc`). The
`label` column is required: a test CSV without labels cannot give targets and is rejected.
Trimmed clips are named `<youtube_id>_<time_start:06d>_<time_end:06d>.mp4` and may sit flat in
`videos_dir` or in any subfolders (e.g. `<label>/`, with or without `_` for spaces): they are found by
file name.
"""
import os

from vidkd.data.datasets.csv_rows import class_index, new_id, read_csv_rows, read_lines, to_number
from vidkd.data.manifest import Manifest, VideoRecord
from vidkd.errors import AnnotationError

COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def index_videos(videos_dir):
    """Map each file name under `videos_dir` (recursively, first in sorted order wins) to its relative path."""
    index = {}
    for dirpath, dirs, files in os.walk(videos_dir, followlinks=True):
        dirs.sort()
        rel = os.path.relpath(dirpath, videos_dir)
        for name in sorted(files):
            index.setdefault(name, name if rel == "." else os.path.join(rel, name))
    return index


def parse_kinetics_csv(csv_path, videos_dir, classes=None, index=None):
    """Return `(Manifest, missing, repeated)` for one official CSV; `missing` lists clip file names not found,
    `repeated` the lines that repeat an earlier line's clip and label (dropped: the clip is in the manifest once).
    A clip given again with another label is an AnnotationError naming both lines.

    `classes`: the class list (e.g. the train CSV's); default: the sorted labels of this CSV.
    `index`: `index_videos(videos_dir)`, to walk the folder once for several CSVs.
    The manifest's split is the CSV's `split` value if it has one, else the file stem.
    """
    rows = list(read_csv_rows(csv_path, COLUMNS))
    if classes is None:
        classes = sorted({row["label"] for _, row in rows} - {""})
    labels = {c: i for i, c in enumerate(classes)}
    if index is None:
        index = index_videos(videos_dir)
    samples, missing, repeated, ids, label_of = [], [], [], {}, {}
    for line, row in rows:
        label = class_index(labels, row["label"], csv_path, line)
        start = to_number(row["time_start"], csv_path, line, "time_start")
        end = to_number(row["time_end"], csv_path, line, "time_end")
        if not 0 <= start < end:
            raise AnnotationError(csv_path, line, f"time_start {start} and time_end {end}: need "
                                                  f"0 <= time_start < time_end")
        clip = f"{row['youtube_id']}_{start:06d}_{end:06d}"
        if label_of.get(clip) == label:  # an earlier line's clip and label again
            repeated.append(line)
            continue
        new_id(ids, clip, csv_path, line)  # the clip again with another label: an error naming both lines
        label_of[clip] = label
        name = f"{clip}.mp4"
        if name not in index:
            missing.append(name)
            continue
        samples.append(VideoRecord(id=clip, path=index[name], targets={"label": label}))
    split_values = {row["split"] for _, row in rows}
    split = split_values.pop() if len(split_values) == 1 else os.path.splitext(os.path.basename(csv_path))[0]
    return Manifest("kinetics400", split, os.path.abspath(videos_dir), {"label": list(classes)}, samples), missing, repeated


def read_classes(path):
    """The class names of a text file, one per line, in file order."""
    return [text for _, text in read_lines(path)]


def parse_path_label_list(list_path, root, classes):
    """Manifest of a list file, lines `<path> <label>` (split on the last whitespace, so paths may hold spaces).

    `label` is an index into `classes` or a class name (spaces may be written as `_`). Paths are relative
    to `root` or absolute. The split is the file stem.
    """
    labels = {str(i): i for i in range(len(classes))}
    for i, c in enumerate(classes):
        labels.update({c: i, c.replace(" ", "_"): i})
    samples, ids = [], {}
    for line, text in read_lines(list_path):
        fields = text.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise AnnotationError(list_path, line, f"expected '<path> <label>', got {text!r}")
        path, label = fields
        sample_id = os.path.splitext(os.path.basename(path))[0]
        new_id(ids, sample_id, list_path, line)
        samples.append(VideoRecord(id=sample_id, path=path,
                                   targets={"label": class_index(labels, label, list_path, line)}))
    split = os.path.splitext(os.path.basename(list_path))[0]
    return Manifest("kinetics400", split, os.path.abspath(root), {"label": list(classes)}, samples)
