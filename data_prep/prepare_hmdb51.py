r"""Write HMDB51 manifests (train.json, test.json) from the official videos and split files.

    python data_prep/prepare_hmdb51.py --videos hmdb51/videos --splits hmdb51/testTrainMulti_7030_splits \
        --split-id 1 --out data/hmdb51/split1

Listed videos that are not on disk stay in the manifests (the loader skips them) and are listed in
<out>/missing_<split>.txt.
"""
import argparse

from vidkd.cli import run
from vidkd.data.datasets.csv_rows import write_manifests
from vidkd.data.datasets.hmdb51 import parse_hmdb51


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", required=True, help="folder of <class>/<video>.avi")
    p.add_argument("--splits", required=True, help="folder of <class>_test_split<N>.txt")
    p.add_argument("--split-id", type=int, choices=(1, 2, 3), default=1)
    p.add_argument("--out", required=True, help="output folder for <split>.json")
    args = p.parse_args(argv)
    manifests, missing = parse_hmdb51(args.videos, args.splits, args.split_id)
    write_manifests(args.out, manifests.values(), missing)


if __name__ == "__main__":
    run(main)
