"""Face datasets: identity folders split into training identities and held-out ones whose pairs are verified
(`split_identities`, `identity_pairs`, a pair list CSV), and the verification sets' own files: LFW's `pairs.txt` and
insightface's `.bin`.

- `pairs.txt` (LFW, and the same layout for other sets): a header `<folds> <pairs>`, then per fold `pairs` lines of
  one person (`name i j`: images i and j of `name`) and `pairs` lines of two (`name1 i name2 j`); image i of `name`
  is `<root>/<name>/<name>_<iiii>.<ext>`.
- `.bin` (insightface: LFW, CFP-FP, AgeDB-30, CALFW, CPLFW): a pickle of `(bins, issame_list)`, `bins` the encoded
  images (JPEG bytes) of the pairs one after the other (pair k: images 2k and 2k + 1), `issame_list` one boolean per
  pair; written by Python 2 (str) or 3 (bytes). Read by vidkd's restricted unpickler: a pickle naming anything but
  plain data is refused, naming it, and one holding other data than bytes and booleans is refused, naming the file.
"""
import csv
import os
import random
from collections import defaultdict
from dataclasses import replace

from vidkd import safe_pickle
from vidkd.data.datasets.csv_rows import write_manifests
from vidkd.data.datasets.images import parse_image_folder
from vidkd.data.decoders import IMAGE_EXTENSIONS
from vidkd.data.manifest import Manifest, VideoRecord
from vidkd.errors import AnnotationError

PNG_SIGNATURE = b"\x89PNG"
BIN_FOLDS = 10  # insightface's .bin sets are verified in 10 folds of consecutive pairs


def read_verification_bin(path):
    """`(images, same)`: the encoded images (bytes, two per pair) and one bool per pair of an insightface `.bin`."""
    data = safe_pickle.load(path, encoding="bytes")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        size = f" of {len(data)}" if isinstance(data, (tuple, list)) else ""
        raise AnnotationError(path, 0, f"a verification .bin holds (images, issame_list); this one holds a "
                                       f"{type(data).__name__}{size}")
    images, same = data
    for what, items, kinds in (("images", images, (bytes, bytearray)), ("issame_list", same, (bool,))):
        if not isinstance(items, (list, tuple)):
            raise AnnotationError(path, 0, f"its {what} is a {type(items).__name__}, not a list")
        bad = next((i for i, x in enumerate(items) if not isinstance(x, kinds)), None)
        if bad is not None:
            raise AnnotationError(path, 0, f"{what}[{bad}] is a {type(items[bad]).__name__}, not "
                                           f"{' or '.join(k.__name__ for k in kinds)}")
    if len(images) != 2 * len(same):
        raise AnnotationError(path, 0, f"{len(images)} images for {len(same)} pairs (two images a pair)")
    return [bytes(b) for b in images], list(same)


def read_pairs(path, root, ext="jpg"):
    """`(pairs, folds)`: `[(image_a, image_b, same)]` of a `pairs.txt`, in its order (fold by fold), and the number
    of folds of its header. Errors name the file and line."""
    with open(path) as f:
        lines = [line.split() for line in f]
    if not lines or len(lines[0]) != 2 or not all(x.isdigit() for x in lines[0]):
        raise AnnotationError(path, 1, "the header is '<folds> <pairs per fold and kind>'")
    folds, per = (int(x) for x in lines[0])

    def image(name, number, line):
        if not number.isdigit():
            raise AnnotationError(path, line, f"image number {number!r} is not a number")
        return os.path.join(root, name, f"{name}_{int(number):04d}.{ext}")

    pairs = []
    for line, parts in enumerate(lines[1:], start=2):
        if len(parts) == 3:
            pairs.append((image(parts[0], parts[1], line), image(parts[0], parts[2], line), True))
        elif len(parts) == 4:
            pairs.append((image(parts[0], parts[1], line), image(parts[2], parts[3], line), False))
        elif parts:
            raise AnnotationError(path, line, f"{len(parts)} fields: a pair is 'name i j' or 'name1 i name2 j'")
    if len(pairs) != 2 * folds * per:
        raise AnnotationError(path, 0, f"{len(pairs)} pairs; the header promises {folds} folds x 2 x {per}")
    return pairs, folds


def split_identities(manifest, holdout, min_images, seed):
    """`(train, held, few)` of a manifest of identity folders (label set `label`): identities with fewer than
    `min_images` images are left out and named in `few` (`{name: count}`); of the others, `holdout` drawn with `seed`
    go to `held` (for verification on unseen people), the rest to `train`, relabelled 0..n-1 in name order."""
    names = manifest.label_sets["label"]
    counts = {name: 0 for name in names}
    for record in manifest.samples:
        counts[names[record.targets["label"]]] += 1
    few = {name: n for name, n in counts.items() if n < min_images}
    kept = [name for name in names if name not in few]
    if holdout >= len(kept):
        raise AnnotationError(manifest.root, 0, f"{len(kept)} identities with {min_images}+ images: cannot hold out "
                                                f"{holdout} and train on the rest")
    held_names = sorted(random.Random(seed).sample(kept, holdout))

    def subset(chosen, split):
        index = {name: i for i, name in enumerate(chosen)}
        samples = [replace(r, targets={"label": index[names[r.targets["label"]]]}) for r in manifest.samples
                   if names[r.targets["label"]] in index]
        return replace(manifest, split=split, label_sets={"label": list(chosen)}, samples=samples)

    return subset([n for n in kept if n not in held_names], "train"), subset(held_names, "test"), few


def identity_pairs(manifest, seed):
    """`[(image_a, image_b, same)]` (paths relative to the manifest's root): every pair of two images of one identity
    and as many pairs of two identities, drawn with `seed`, shuffled together (so every fold of the 10-fold protocol
    holds both kinds)."""
    by_identity = defaultdict(list)
    for record in manifest.samples:
        by_identity[record.targets["label"]].append(record.path)
    same = [(a, b, True) for paths in by_identity.values() for i, a in enumerate(paths) for b in paths[i + 1:]]
    rng, ids = random.Random(seed), sorted(by_identity)
    if len(ids) < 2:
        raise AnnotationError(manifest.root, 0, "pairs of two identities need at least two identities")
    different = set()
    while len(different) < len(same):
        x, y = rng.sample(ids, 2)
        different.add((rng.choice(by_identity[x]), rng.choice(by_identity[y]), False))
    pairs = same + sorted(different)
    rng.shuffle(pairs)
    return pairs


def write_pair_list(path, pairs):
    """A CSV `image_a,image_b,same` (same: 1 or 0)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_a", "image_b", "same"])
        writer.writerows([a, b, int(same)] for a, b, same in pairs)


def read_pair_list(path, root):
    """`[(image_a, image_b, same)]` of `write_pair_list`'s CSV, paths joined to `root`; errors name the line."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["image_a", "image_b", "same"]:
        raise AnnotationError(path, 1, "the header is image_a,image_b,same")
    pairs = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3 or row[2] not in ("0", "1"):
            raise AnnotationError(path, line, f"expected image_a,image_b,0|1, got {','.join(row)!r}")
        pairs.append((os.path.join(root, row[0]), os.path.join(root, row[1]), row[2] == "1"))
    return pairs


def prepare_identity_folders(root, out, holdout, min_images, seed, extensions=IMAGE_EXTENSIONS):
    """`split_identities` of the identity folders under `root` and `identity_pairs` of the held-out ones, written to
    `out` (train.json, test.json, pairs.csv); returns `(train, held, few, pairs)`."""
    manifest = parse_image_folder(root, "faces", "train", extensions=extensions)
    train, held, few = split_identities(manifest, holdout, min_images, seed)
    write_manifests(out, [train, held])
    pairs = identity_pairs(held, seed)
    write_pair_list(os.path.join(out, "pairs.csv"), pairs)
    return train, held, few, pairs


def image_manifest(paths, root, split):
    """A manifest of `paths` (absolute image files), one unlabelled sample each, in order."""
    samples = [VideoRecord(f"{i:06d}", p, {"label": 0}) for i, p in enumerate(paths)]
    return Manifest("faces", split, os.path.abspath(root), {"label": ["face"]}, samples)


def verification_set(path, out_dir):
    """`(manifest, pairs, folds)` of a verification set: an insightface `.bin` (its images written once as files in
    `out_dir`, image 2k and 2k + 1 a pair, 10 folds) or an LFW `pairs.txt` (its images under the folder holding it,
    the folds of its header); `pairs` `[(image_a, image_b, same)]` as absolute paths of the manifest's images."""
    if path.endswith(".bin"):
        images, same = read_verification_bin(path)
        os.makedirs(out_dir, exist_ok=True)
        paths = []
        for i, data in enumerate(images):
            ext = "png" if data.startswith(PNG_SIGNATURE) else "jpg"
            name = os.path.join(os.path.abspath(out_dir), f"{i:06d}.{ext}")
            if not os.path.isfile(name) or os.path.getsize(name) != len(data):
                with open(name, "wb") as f:
                    f.write(data)
            paths.append(name)
        pairs = [(paths[2 * k], paths[2 * k + 1], s) for k, s in enumerate(same)]
        return image_manifest(paths, out_dir, os.path.basename(path)), pairs, BIN_FOLDS
    root = os.path.dirname(os.path.abspath(path))
    pairs, folds = read_pairs(path, root)
    paths = sorted({p for a, b, _ in pairs for p in (a, b)})
    missing = next((p for p in paths if not os.path.isfile(p)), None)
    if missing is not None:
        raise AnnotationError(path, 0, f"image {missing} of its pairs not found (pairs.txt's images lie under the "
                                       f"folder holding it: <name>/<name>_0001.jpg)")
    return image_manifest(paths, root, os.path.basename(path)), pairs, folds
