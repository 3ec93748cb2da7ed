"""Image datasets (TASK image) as manifests: image folders, CIFAR-10/100's python pickles, MNIST-format idx files.

A folder's images stay files (`path` the image, relative to the root). CIFAR and MNIST-format data come as
arrays: they are written once as a uint8 `.npy` array per split, `[N, H, W]` or `[N, H, W, 3]`, beside the
manifests, and a sample is row r of it (`start_frame = stop_frame = r`), read memory-mapped by
`vidkd.data.decoders.ArrayReader`.
"""
import gzip
import os

import numpy as np

from vidkd import safe_pickle
from vidkd.data.decoders import IMAGE_EXTENSIONS
from vidkd.data.manifest import Manifest, VideoRecord
from vidkd.errors import AnnotationError

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """An idx file (MNIST's format; gzip-compressed or not) as a numpy array. Its header: two zero bytes, the
    element type, the number of dimensions, then each size as a big-endian 32-bit integer."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise AnnotationError(path, 0, f"cannot read the idx file: {e}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_TYPES or not 1 <= data[3] <= 4:
        raise AnnotationError(path, 0, "not an idx file (its first bytes are not 00 00 <type> <dimensions>)")
    dims = data[3]
    if len(data) < 4 + 4 * dims:
        raise AnnotationError(path, 0, "idx header cut short")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(IDX_TYPES[data[2]])
    body = data[4 + 4 * dims:]
    if len(body) != dtype.itemsize * int(np.prod(shape)):
        raise AnnotationError(path, 0, f"idx header says {list(shape)} of {dtype} ({dtype.itemsize * np.prod(shape)} "
                                       f"bytes), the file holds {len(body)}")
    return np.frombuffer(body, dtype).reshape(shape)


def array_manifest(out_dir, dataset, split, images, labels, names):
    """Write `images` (uint8 `[N, H, W]` or `[N, H, W, 3]`) to `<out_dir>/<split>_images.npy` and return the
    manifest whose sample r is row r, labelled `labels[r]` (an index into `names`)."""
    os.makedirs(out_dir, exist_ok=True)
    array = f"{split}_images.npy"
    np.save(os.path.join(out_dir, array), np.ascontiguousarray(images, dtype=np.uint8))
    samples = [VideoRecord(f"{split}_{r:06d}", array, {"label": int(y)}, r, r) for r, y in enumerate(labels)]
    return Manifest(dataset, split, os.path.abspath(out_dir), {"label": list(names)}, samples)


def parse_idx_pair(images_path, labels_path, names):
    """Images `[N, H, W]` uint8 and labels `[N]` from an idx pair, checked against each other and `names`."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise AnnotationError(images_path, 0,
                              f"expected uint8 images [N, H, W], got {images.dtype} {list(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise AnnotationError(labels_path, 0, f"expected {len(images)} labels (one per image of {images_path}), "
                                              f"got shape {list(labels.shape)}")
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(names):
        raise AnnotationError(labels_path, 0, f"labels must lie in 0..{len(names) - 1}, found {labels.min()}.."
                                              f"{labels.max()}")
    return images, labels


FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]


def idx_file(root, stem):
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise AnnotationError(os.path.join(root, stem), 0, "missing (looked for it with and without .gz)")


def idx_manifests(root, out, names):
    """The train and test manifests (and arrays, in `out`) of MNIST-format idx files in `root`."""
    manifests = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = parse_idx_pair(idx_file(root, f"{prefix}-images-idx3-ubyte"),
                                        idx_file(root, f"{prefix}-labels-idx1-ubyte"), names)
        manifests.append(array_manifest(out, "idx", split, images, labels, names))
    return manifests


def _field(batch, key, path):
    """`batch[key]`, whether the pickle was written by Python 3 (str keys) or Python 2 (bytes keys)."""
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise AnnotationError(path, 0, f"a CIFAR batch must hold {key!r}; it holds {sorted(map(str, batch))}")


def read_cifar_batch(path, label_key):
    """Images `[N, 32, 32, 3]` and labels of one CIFAR python batch (`data_batch_1`, `test`, ...), read by the
    restricted unpickler (numeric arrays, lists, bytes; anything else is refused, naming it)."""
    batch = safe_pickle.load(path, allow_numpy=True, encoding="bytes")
    if not isinstance(batch, dict):
        raise AnnotationError(path, 0, f"a CIFAR batch is a dict, this pickle holds a {type(batch).__name__}")
    data, labels = np.asarray(_field(batch, "data", path)), np.asarray(_field(batch, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise AnnotationError(path, 0, f"expected uint8 data [N, 3072] and N labels, got {data.dtype} "
                                       f"{list(data.shape)} and {list(labels.shape)} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar_names(path, key):
    """The class names of a CIFAR `batches.meta` / `meta` file."""
    names = _field(safe_pickle.load(path, encoding="bytes"), key, path)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def parse_image_folder(root, dataset, split, names=None, extensions=IMAGE_EXTENSIONS):
    """A manifest of `<root>/<class>/<image>` (class folders in sorted order, or `names`); files of other
    types (not ending in one of `extensions`) are left out."""
    if not os.path.isdir(root):
        raise AnnotationError(root, 0, "not a folder of class folders")
    names = names or sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    samples = []
    for label, name in enumerate(names):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            raise AnnotationError(root, 0, f"class folder {name!r} is missing")
        for image in sorted(os.listdir(folder)):
            if image.lower().endswith(extensions):
                samples.append(VideoRecord(f"{name}/{image}", f"{name}/{image}", {"label": label}))
    if not samples:
        raise AnnotationError(root, 0, f"no images ({', '.join(extensions)}) in its class folders")
    return Manifest(dataset, split, os.path.abspath(root), {"label": list(names)}, samples)
