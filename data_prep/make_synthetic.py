"""Write the built-in synthetic dataset (HMDB51 official layout): see `vidkd.data.synthetic`."""
import argparse

from vidkd.cli import run
from vidkd.data.synthetic import CODECS, make_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output folder (gets videos/, splits/, SYNTHETIC_INFO.json)")
    parser.add_argument("--videos-per-class", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--codec", choices=sorted(CODECS), default="h264", help="H.264 mp4 or MPEG-4 Part 2 AVI")
    parser.add_argument("--bit-rate", type=int, default=None, help="bits/s (default: constant quality)")
    args = parser.parse_args(argv)
    info = make_dataset(args.out, args.videos_per_class, args.seed, args.height, args.width, args.frames, args.fps,
                        bit_rate=args.bit_rate, codec=args.codec)
    print(f"wrote {info['num_videos']} videos ({len(info['classes'])} classes) to {args.out}")


if __name__ == "__main__":
    run(main)
