"""Hold out labelled videos that the teachers do not train on, for the dual teacher's DATA.CALIBRATION_SPLIT.

    python data_prep/hold_out.py MANIFEST_DIR/train.json --per-class 10 [--seed 0] [--kept teachers]
                                 [--held calibration]

writes MANIFEST_DIR/teachers.json (train the teachers on it: DATA.TRAIN_SPLIT teachers) and
MANIFEST_DIR/calibration.json (--per-class videos of each class, drawn with --seed), each with its part of the
manifest's seek index. On videos a teacher trained on, it is confident and right whether or not it generalises;
on these it is not, so DATW can tell a reliable teacher from a memorising one (README, "Dual teacher").
"""
import argparse

from vidkd.cli import run
from vidkd.data.manifest import Manifest, write_hold_out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", help="the training manifest (e.g. MANIFEST_DIR/train.json)")
    p.add_argument("--per-class", type=int, required=True, help="videos of each class to hold out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kept", default="teachers", help="split name of the videos kept for the teachers")
    p.add_argument("--held", default="calibration", help="split name of the held-out videos")
    args = p.parse_args(argv)
    if args.per_class < 1:
        p.error("--per-class must be at least 1")
    for path in write_hold_out(args.manifest, args.per_class, args.seed, args.kept, args.held):
        m = Manifest.load(path)
        print(f"{path}: {len(m.samples)} videos")
    return 0


if __name__ == "__main__":
    run(main)
