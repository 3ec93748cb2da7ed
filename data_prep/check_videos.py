"""Scan the videos of a manifest: report the ones that are missing, zero-length, unreadable or truncated, and
the ones in which seeking is inexact; write the manifest's seek index.

    python data_prep/check_videos.py data/hmdb51/split1/train.json [--workers 2] [--report bad.tsv]

Each video is opened with both decoders and decoded to the end with PyAV, and reads through each decoder's
seeking path are compared with that sequential decode (see vidkd.data.check and vidkd.data.seeking). Prints a
table of counts, writes the bad files with their reasons to a TSV report and the seek verdicts to
`<split>.seek.json` beside the manifest (the loader reads it, so it probes no file on first use), and exits with
status 1 when any video is bad.
"""
import argparse
import os
from collections import Counter

from vidkd.cli import run
from vidkd.data.check import STATUSES, check_manifest
from vidkd.data.seeking import BACKENDS, index_path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", help="a manifest written by a data_prep script (<split>.json)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--report", help="TSV of bad files (default: next to the manifest, <split>_bad_videos.tsv)")
    args = p.parse_args(argv)
    results = check_manifest(args.manifest, args.workers)
    counts = Counter(status for _, status, _, _ in results)
    print(f"\n{'status':<12}{'videos':>8}")
    for status in STATUSES:
        print(f"{status:<12}{counts[status]:>8}")
    verdicts = {path: verdict for path, _, _, verdict in results if verdict is not None}
    instead = {"decord": "read with PyAV instead", "pyav": "decoded from their first frame instead"}
    for backend in BACKENDS:
        inexact = sorted(path for path, verdict in verdicts.items() if not verdict[backend])
        print(f"{backend}: seeking is inexact in {len(inexact)} of {len(verdicts)} videos"
              + (f" ({instead[backend]}), e.g. {inexact[0]}" if inexact else ""))
    print(f"seek index: {index_path(args.manifest)}")
    bad = [r for r in results if r[1] != "ok"]
    report = args.report or os.path.splitext(args.manifest)[0] + "_bad_videos.tsv"
    with open(report, "w") as f:
        f.writelines(f"{path}\t{status}\t{detail}\n" for path, status, detail, _ in bad)
    print(f"{len(bad)} of {len(results)} videos are bad" + (f"; listed in {report}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    run(main)
