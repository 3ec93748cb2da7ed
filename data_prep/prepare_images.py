r"""Write image manifests (train.json, test.json; TASK image) from an image dataset's own layout.

    python data_prep/prepare_images.py folder --train imagenet/train --test imagenet/val --out data/imagenet
    python data_prep/prepare_images.py cifar --root cifar-100-python --out data/cifar100
    python data_prep/prepare_images.py idx --root fashion-mnist --out data/fashion_mnist [--names a b ...]

- folder: `<split>/<class>/<image>` folders; the test split must have the training split's classes.
- cifar: the python version of CIFAR-10 (`data_batch_1..5`, `test_batch`, `batches.meta`) or CIFAR-100 (`train`,
  `test`, `meta`; fine labels), read by vidkd's restricted unpickler (numeric arrays, lists and bytes only).
- idx: MNIST-format files (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-...`), as
  MNIST, Fashion-MNIST and KMNIST ship; class names from --names, else Fashion-MNIST's when there are 10.

Array datasets (cifar, idx) are written as `<split>_images.npy` beside the manifests.

Fashion-MNIST installs offline from Debian:
    apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb fm
    python data_prep/prepare_images.py idx --root fm/usr/share/datasets/fashion-mnist --out data/fashion_mnist
"""
import argparse
import os

import numpy as np

from vidkd.cli import run
from vidkd.data.datasets.csv_rows import write_manifests
from vidkd.data.datasets.images import (
    FASHION_MNIST, array_manifest, idx_manifests, parse_image_folder, read_cifar_batch, read_cifar_names,
)
from vidkd.errors import AnnotationError

def from_cifar(root, out):
    if os.path.isfile(os.path.join(root, "meta")):  # CIFAR-100
        splits, label_key = {"train": ["train"], "test": ["test"]}, "fine_labels"
        names = read_cifar_names(os.path.join(root, "meta"), "fine_label_names")
    else:
        splits, label_key = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, "labels"
        names = read_cifar_names(os.path.join(root, "batches.meta"), "label_names")
    manifests = []
    for split, files in splits.items():
        parts = [read_cifar_batch(os.path.join(root, f), label_key) for f in files]
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if len(labels) and not 0 <= labels.min() <= labels.max() < len(names):
            raise AnnotationError(os.path.join(root, files[0]), 0, f"labels outside 0..{len(names) - 1}")
        manifests.append(array_manifest(out, "cifar", split, images, labels, names))
    return manifests


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layout", choices=("folder", "cifar", "idx"))
    p.add_argument("--root", help="cifar / idx: the folder of the dataset's files")
    p.add_argument("--train", help="folder: the training split's class folders")
    p.add_argument("--test", help="folder: the test split's class folders")
    p.add_argument("--names", nargs="+", help="idx: class names, in label order")
    p.add_argument("--out", required=True, help="output folder for <split>.json (and the arrays)")
    args = p.parse_args(argv)
    needed = {"folder": ("train", "test"), "cifar": ("root",), "idx": ("root",)}[args.layout]
    for name in needed:
        if not getattr(args, name):
            p.error(f"{args.layout} needs --{name}")
    if args.layout == "folder":
        train = parse_image_folder(args.train, "folder", "train")
        manifests = [train, parse_image_folder(args.test, "folder", "test", train.label_sets["label"])]
    elif args.layout == "cifar":
        manifests = from_cifar(args.root, args.out)
    else:
        manifests = idx_manifests(args.root, args.out, args.names or FASHION_MNIST)
    write_manifests(args.out, manifests)


if __name__ == "__main__":
    run(main)
