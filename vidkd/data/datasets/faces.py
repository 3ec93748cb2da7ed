"""Face verification sets: LFW's `pairs.txt` and insightface's `.bin` files.

- `pairs.txt` (LFW, and the same layout for other sets): a header `<folds> <pairs>`, then per fold `pairs` lines of
  one person (`name i j`: images i and j of `name`) and `pairs` lines of two (`name1 i name2 j`); image i of `name`
  is `<root>/<name>/<name>_<iiii>.<ext>`.
- `.bin` (insightface: LFW, CFP-FP, AgeDB-30, CALFW, CPLFW): a pickle of `(bins, issame_list)`, `bins` the encoded
  images (JPEG bytes) of the pairs one after the other (pair k: images 2k and 2k + 1), `issame_list` one boolean per
  pair; written by Python 2 (str) or 3 (bytes). Read by vidkd's restricted unpickler: a pickle naming anything but
  plain data is refused, naming it, and one holding other data than bytes and booleans is refused, naming the file.
"""
import os

from vidkd import safe_pickle
from vidkd.errors import AnnotationError


def read_verification_bin(path):
    """`(images, same)`: the encoded images (bytes, two per pair) and one bool per pair of an insightface `.bin`."""
    data = safe_pickle.load(path, encoding="bytes")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise AnnotationError(path, 0, f"a verification .bin holds (images, issame_list); this one holds a "
                                       f"{type(data).__name__}{f' of {len(data)}' if isinstance(data, (tuple, list)) else ''}")
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
