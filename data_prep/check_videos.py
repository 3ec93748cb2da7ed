"""Scan the videos of a manifest and report the ones that are missing, zero-length, unreadable or truncated.

    python data_prep/check_videos.py data/hmdb51/split1/train.json [--workers 2] [--report bad.tsv]

Each video is opened with both decoders and decoded to the end with PyAV (see vidkd.data.check). Prints a
table of counts, writes the bad files with their reasons to a TSV report, and exits with status 1 when any
video is bad.
"""
import argparse
import os
from collections import Counter

from vidkd.cli import run
from vidkd.data.check import STATUSES, check_manifest
from vidkd.data.manifest import Manifest


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", help="a manifest written by a data_prep script (<split>.json)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--report", help="TSV of bad files (default: next to the manifest, <split>_bad_videos.tsv)")
    args = p.parse_args(argv)
    manifest = Manifest.load(args.manifest)
    results = check_manifest(manifest, args.workers)
    counts = Counter(status for _, status, _ in results)
    print(f"\n{'status':<12}{'videos':>8}")
    for status in STATUSES:
        print(f"{status:<12}{counts[status]:>8}")
    bad = [r for r in results if r[1] != "ok"]
    report = args.report or os.path.splitext(args.manifest)[0] + "_bad_videos.tsv"
    with open(report, "w") as f:
        f.writelines(f"{path}\t{status}\t{detail}\n" for path, status, detail in bad)
    print(f"{len(bad)} of {len(results)} videos are bad" + (f"; listed in {report}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    run(main)
