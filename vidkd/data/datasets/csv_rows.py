"""Shared helpers of the dataset parsers: annotation rows with `file:line` errors, and writing manifests."""
import csv
import io
import os

from vidkd.errors import AnnotationError


def read_csv_rows(path, columns):
    """Yield `(line_no, row)` for each data row of a CSV file whose header holds `columns`.

    `row` maps each header name to its stripped value; blank lines are skipped; the header is line 1.
    Raises AnnotationError for a missing file or column and for a row with the wrong number of fields.
    """
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        absent = [c for c in columns if c not in header]
        if absent:
            raise AnnotationError(path, 1, f"missing column(s) {', '.join(absent)} in header {header}")
        for fields in reader:
            if not "".join(fields).strip():
                continue
            if len(fields) != len(header):
                raise AnnotationError(path, reader.line_num, f"{len(fields)} fields, the header has {len(header)}")
            yield reader.line_num, {h: v.strip() for h, v in zip(header, fields)}
    except csv.Error as e:
        raise AnnotationError(path, reader.line_num, f"not a readable CSV file: {e}")


def read_lines(path):
    """Yield `(line_no, text)` for each non-blank line of a text file, stripped (CRLF and trailing spaces)."""
    for line_no, line in enumerate(io.StringIO(_read_text(path), newline=None), 1):
        if line.strip():
            yield line_no, line.strip()


def _read_text(path):
    """The text of a UTF-8 file (without a byte-order mark); a byte that is not UTF-8 is an error at its line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise AnnotationError(path, 0, f"cannot read: {e.strerror}")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise AnnotationError(path, data.count(b"\n", 0, e.start) + 1,
                              f"not UTF-8 text: {e.reason} at byte {e.start} ({data[e.start:e.end]!r})")


def to_number(value, path, line, what, kind=int):
    """`kind(value)`, or an AnnotationError naming the field."""
    try:
        return kind(value)
    except ValueError:
        raise AnnotationError(path, line, f"{what} must be {'an integer' if kind is int else 'a number'}, "
                                          f"got {value!r}")


def new_id(seen, sample_id, path, line):
    """Record the id of the sample on `line` of `path` in `seen` (id -> where it was given); an AnnotationError if
    an earlier line gave it: the ids of a manifest are unique."""
    if sample_id in seen:
        raise AnnotationError(path, line, f"sample id {sample_id!r} again (first at {seen[sample_id]}): ids must be "
                                          f"unique")
    seen[sample_id] = f"{path}:{line}"


def class_index(index, name, path, line):
    """`index[name]` (a class name or id to its integer label), or an "unknown class" AnnotationError."""
    try:
        return index[name]
    except KeyError:
        raise AnnotationError(path, line, f"unknown class {name!r}")


def write_manifests(out_dir, manifests, missing=None):
    """Save each manifest as `<out_dir>/<split>.json` and print its counts.

    `missing` maps a split to the video files listed but not found; each is written to
    `<out_dir>/missing_<split>.txt`, one per line.
    """
    for m in manifests:
        m.save(os.path.join(out_dir, f"{m.split}.json"))
        classes = "".join(f", {head}: {len(names)} classes" for head, names in m.label_sets.items())
        report = f"{m.split}: {len(m.samples)} samples{classes}"
        if missing is not None and m.split in missing:
            lost = missing[m.split]
            report_path = os.path.join(out_dir, f"missing_{m.split}.txt")
            with open(report_path, "w") as f:
                f.writelines(f"{p}\n" for p in lost)
            report += f", {len(lost)} missing videos (listed in {report_path})"
        print(report)
