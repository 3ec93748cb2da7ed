r"""Write EPIC-KITCHENS-100 action manifests (train.json, validation.json) from the official annotations.

    python data_prep/prepare_epic100.py --annotations epic-kitchens-100-annotations \
        --data EPIC-KITCHENS [--frames] --out data/epic100

--data holds <participant_id>/videos/<video_id>.MP4, or with --frames <participant_id>/rgb_frames/<video_id>/.
"""
import argparse

from vidkd.cli import run
from vidkd.data.datasets.csv_rows import write_manifests
from vidkd.data.datasets.epic_kitchens import parse_epic100


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True, help="folder of the EPIC_100_*.csv files")
    p.add_argument("--data", required=True, help="dataset root with the participants' folders")
    p.add_argument("--frames", action="store_true", help="use the extracted rgb_frames instead of videos")
    p.add_argument("--out", required=True, help="output folder for <split>.json")
    args = p.parse_args(argv)
    write_manifests(args.out, [parse_epic100(args.annotations, args.data, s, args.frames)
                               for s in ("train", "validation")])


if __name__ == "__main__":
    run(main)
