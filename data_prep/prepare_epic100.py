r"""Write EPIC-KITCHENS-100 action manifests (train.json, validation.json) from the official annotations.

    python data_prep/prepare_epic100.py --annotations epic-kitchens-100-annotations \
        --data EPIC-KITCHENS [--frames] [--splits validation] --out data/epic100

--data holds <participant_id>/videos/<video_id>.MP4, or with --frames <participant_id>/rgb_frames/<video_id>/.
A segment that ends past its video's end (EPIC_100_video_info.csv) is clamped to the video's last frame and counted.
"""
import argparse
import os

from vidkd.cli import run
from vidkd.data.datasets.csv_rows import write_manifests
from vidkd.data.datasets.epic_kitchens import parse_epic100


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True, help="folder of the EPIC_100_*.csv files")
    p.add_argument("--data", required=True, help="dataset root with the participants' folders")
    p.add_argument("--frames", action="store_true", help="use the extracted rgb_frames instead of videos")
    p.add_argument("--splits", nargs="+", choices=("train", "validation"), default=["train", "validation"],
                   help="the splits to write (EPIC_100_<split>.csv each)")
    p.add_argument("--out", required=True, help="output folder for <split>.json")
    args = p.parse_args(argv)
    for split in args.splits:
        if not os.path.isfile(os.path.join(args.annotations, f"EPIC_100_{split}.csv")):
            p.error(f"no EPIC_100_{split}.csv in {args.annotations} (--splits names the splits to write)")
    parsed = [parse_epic100(args.annotations, args.data, split, args.frames) for split in args.splits]
    write_manifests(args.out, [manifest for manifest, _ in parsed])
    for manifest, clamped in parsed:
        if clamped:
            ends = "segment ends past its" if clamped == 1 else "segments end past their"
            print(f"{manifest.split}: {clamped} {ends} video's end (clamped to the end)")


if __name__ == "__main__":
    run(main)
