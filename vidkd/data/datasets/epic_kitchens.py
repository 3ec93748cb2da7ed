"""EPIC-KITCHENS-100 action segments in the official layout.

Annotations (github.com/epic-kitchens/epic-kitchens-100-annotations):
  EPIC_100_<split>.csv: narration_id,participant_id,video_id,narration_timestamp,start_timestamp,
      stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,
      all_noun_classes (frames 1-based, inclusive)
  EPIC_100_verb_classes.csv / EPIC_100_noun_classes.csv: id,key,instances,category (ids 0..n-1)
  EPIC_100_video_info.csv: video_id,duration,fps,resolution
Data: `<participant_id>/videos/<video_id>.MP4`, or frames `<participant_id>/rgb_frames/<video_id>/`.

start_frame / stop_frame count frames at 60 a second whatever the video's own rate (59.94, 29.97, 47.95 or
90 fps): they name the 60 fps `rgb_frames` directly, and reach a video file's own frames through time.
"""
import math
import os

from vidkd.data.datasets.csv_rows import new_id, read_csv_rows, to_number
from vidkd.data.manifest import Manifest, VideoRecord
from vidkd.errors import AnnotationError

# The time base of start_frame / stop_frame: |frame - timestamp * 60| <= 1 on every row of EPIC_100_validation.csv,
# for the 59.94, 29.97, 47.95 and 90 fps videos alike (against 59.94 the error reaches 117 frames).
EPIC_FRAME_RATE = 60
SEGMENT_COLUMNS = ("narration_id", "participant_id", "video_id", "start_frame", "stop_frame",
                   "verb_class", "noun_class")


def action_id(verb, noun):
    """The action (verb, noun pair) as one integer: verb * 1000 + noun."""
    return verb * 1000 + noun


def read_class_keys(path):
    """The `key` column of a class file in `id` order; the ids must be 0..n-1."""
    rows = sorted((to_number(row["id"], path, line, "id"), line, row["key"])
                  for line, row in read_csv_rows(path, ("id", "key")))
    for i, (class_id, line, _) in enumerate(rows):
        if class_id != i:
            raise AnnotationError(path, line, f"class ids must be 0..{len(rows) - 1} without gaps; "
                                              f"id {i} is {'repeated' if class_id < i else 'missing'}")
    return [key for _, _, key in rows]


def read_video_info(path):
    """Map video_id to (duration in seconds, fps)."""
    info = {}
    for line, row in read_csv_rows(path, ("video_id", "duration", "fps")):
        duration = to_number(row["duration"], path, line, "duration", float)
        fps = to_number(row["fps"], path, line, "fps", float)
        if not (0 < duration < math.inf and 0 < fps < math.inf):
            raise AnnotationError(path, line, f"duration and fps must be positive and finite, got {duration}, {fps}")
        info[row["video_id"]] = (duration, fps)
    return info


def parse_epic100(annotations_dir, data_root, split, use_frames=False):
    """Manifest of `EPIC_100_<split>.csv` (split: "train" or "validation"), one sample per action segment, and
    the number of segments whose stop_frame was past their video's end (clamped to its last frame).

    Label sets {"verb", "noun"} from the class files; frames stored 0-based inclusive, at EPIC_FRAME_RATE.
    """
    verbs = read_class_keys(os.path.join(annotations_dir, "EPIC_100_verb_classes.csv"))
    nouns = read_class_keys(os.path.join(annotations_dir, "EPIC_100_noun_classes.csv"))
    info = read_video_info(os.path.join(annotations_dir, "EPIC_100_video_info.csv"))
    path = os.path.join(annotations_dir, f"EPIC_100_{split}.csv")
    samples, clamped, ids = [], 0, {}
    for line, row in read_csv_rows(path, SEGMENT_COLUMNS):
        targets = {}
        for head, keys in (("verb", verbs), ("noun", nouns)):
            y = to_number(row[f"{head}_class"], path, line, f"{head}_class")
            if not 0 <= y < len(keys):
                raise AnnotationError(path, line, f"unknown class: {head}_class {y} is not an id "
                                                  f"(0..{len(keys) - 1}) of EPIC_100_{head}_classes.csv")
            targets[head] = y
        new_id(ids, row["narration_id"], path, line)
        start = to_number(row["start_frame"], path, line, "start_frame")
        stop = to_number(row["stop_frame"], path, line, "stop_frame")
        video = row["video_id"]
        if video not in info:
            raise AnnotationError(path, line, f"video {video!r} is not in EPIC_100_video_info.csv")
        duration, _ = info[video]
        if not 1 <= start <= stop:
            raise AnnotationError(path, line, f"start_frame {start} and stop_frame {stop}: need "
                                              f"1 <= start_frame <= stop_frame")
        last = math.floor(duration * EPIC_FRAME_RATE)  # the video's last frame (1-based, at 60 fps)
        if start > last:
            raise AnnotationError(path, line, f"start_frame {start} is beyond the end of {video} "
                                              f"({duration} s = {last} frames at {EPIC_FRAME_RATE} fps)")
        if stop > last:
            stop, clamped = last, clamped + 1
        folder = "rgb_frames" if use_frames else "videos"
        name = video if use_frames else f"{video}.MP4"
        samples.append(VideoRecord(id=row["narration_id"], path=f"{row['participant_id']}/{folder}/{name}",
                                   targets=targets, start_frame=start - 1, stop_frame=stop - 1,
                                   fps=float(EPIC_FRAME_RATE), frames=use_frames))
    manifest = Manifest("epic100", split, os.path.abspath(data_root), {"verb": verbs, "noun": nouns}, samples)
    return manifest, clamped
