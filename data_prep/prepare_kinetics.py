r"""Write Kinetics manifests (<split>.json) from the official CSVs, or from `<path> <label>` lists.

    python data_prep/prepare_kinetics.py --videos k400/videos --train-csv k400/train.csv \
        --csv k400/validate.csv --out data/k400
    python data_prep/prepare_kinetics.py --videos k400/videos --list train.txt --list val.txt \
        --classes classes.txt --out data/k400

CSV mode: the classes are the sorted labels of the train CSV; each CSV gives one manifest named by its
split column. Clips not found under --videos are left out and listed in <out>/missing_<split>.txt.
List mode: one manifest per list file, named by its stem; --classes has one class name per line.
"""
import argparse

from vidkd.cli import run
from vidkd.data.datasets.csv_rows import write_manifests
from vidkd.data.datasets.kinetics import index_videos, parse_kinetics_csv, parse_path_label_list, read_classes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", required=True, help="folder of the trimmed clips (flat or in subfolders)")
    p.add_argument("--train-csv", help="official train CSV (gives the class list)")
    p.add_argument("--csv", action="append", default=[], help="another official CSV (repeatable)")
    p.add_argument("--list", action="append", default=[], help="a '<path> <label>' list file (repeatable)")
    p.add_argument("--classes", help="class names, one per line (with --list)")
    p.add_argument("--out", required=True, help="output folder for <split>.json")
    args = p.parse_args(argv)
    if bool(args.train_csv) == bool(args.list):
        p.error("give either --train-csv [--csv ...] or --list ... --classes")
    if args.list:
        if not args.classes or args.csv:
            p.error("--list needs --classes and does not take --csv")
        classes = read_classes(args.classes)
        write_manifests(args.out, [parse_path_label_list(f, args.videos, classes) for f in args.list])
        return
    index = index_videos(args.videos)
    manifests, missing, classes = [], {}, None
    for csv_path in [args.train_csv, *args.csv]:
        m, lost, repeated = parse_kinetics_csv(csv_path, args.videos, classes, index=index)
        missing[m.split] = lost
        classes = m.label_sets["label"]  # the train CSV's classes for every split
        manifests.append(m)
        if repeated:
            print(f"{csv_path}: {len(repeated)} rows repeat an earlier row's clip and label, each kept once "
                  f"(lines {', '.join(map(str, repeated[:10]))}{', ...' if len(repeated) > 10 else ''})")
    write_manifests(args.out, manifests, missing)


if __name__ == "__main__":
    run(main)
