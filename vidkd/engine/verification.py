"""Face verification protocols (METHODS.md 7) on similarity scores (higher: more alike) of image pairs.

- `kfold_accuracy`: LFW's protocol. The pairs, in their list's order, split into `folds` consecutive folds
  (scikit-learn's KFold without shuffling: LFW's ten sets); for each fold the threshold that is most accurate on the
  other folds (`best_threshold`) decides "same" (score above it) on that fold; the mean and standard deviation of
  the folds' accuracies.
- `tpr_at_fpr`: the IJB-style operating points from one score list (scikit-learn's ROC curve): at each FPR, the
  highest true-positive rate with a false-positive rate at most that; `nan` for an FPR below 1 / (different pairs),
  which so few pairs cannot measure.
- `plot_roc`: the ROC curves as a PNG, FPR on a log axis.
- `embed` and `verify`: a model's embeddings of a split's images (on 1 process or N), and the protocols on a pair
  list of them (`evaluate_pairs`: both, with the metrics the engine logs).
"""
import math
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve
from sklearn.model_selection import KFold
from tqdm import tqdm

from vidkd.data.datasets.faces import read_pair_list
from vidkd.errors import AnnotationError, ConfigError


def best_threshold(scores, same):
    """The threshold `t` of the rule "same if score > t" most accurate on `(scores, same)`: the midpoint between
    two neighbouring distinct scores (or +-inf: all "different", all "same"); the highest of equally good ones."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order].astype(np.int64)
    n, positives = len(s), int(y.sum())
    # calling the top k "same": right are the same pairs among them and the different pairs below them
    k = np.arange(n + 1)
    true_pos = np.concatenate([[0], np.cumsum(y)])
    right = true_pos + (n - positives) - (k - true_pos)
    cut = np.concatenate([[True], s[1:] < s[:-1], [True]])  # k where a threshold can fall (no tie split)
    best = int(np.flatnonzero(cut)[np.argmax(right[cut])])
    if best == 0:
        return math.inf
    if best == n:
        return -math.inf
    return float((s[best - 1] + s[best]) / 2)


def kfold_accuracy(scores, same, folds=10):
    """`{"accuracy", "std", "thresholds"}` of LFW's protocol (accuracy in percent)."""
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    accuracies, thresholds = [], []
    for train, test in KFold(n_splits=folds, shuffle=False).split(scores):
        t = best_threshold(scores[train], same[train])
        thresholds.append(t)
        accuracies.append(float(np.mean((scores[test] > t) == same[test])))
    return {"accuracy": 100 * float(np.mean(accuracies)), "std": 100 * float(np.std(accuracies)),
            "thresholds": thresholds}


def lowest_fpr(same):
    """The smallest false-positive rate the pairs can measure: one different pair in all of them."""
    negatives = int(np.sum(~np.asarray(same, dtype=bool)))
    return 1 / negatives if negatives else math.nan


def tpr_at_fpr(scores, same, fprs):
    """`{fpr: tpr}` for each target FPR (nan below `lowest_fpr`)."""
    fpr, tpr, _ = roc_curve(np.asarray(same, dtype=bool), np.asarray(scores, dtype=np.float64),
                            drop_intermediate=False)
    floor = lowest_fpr(same)
    return {f: float(tpr[fpr <= f + 1e-12].max()) if f >= floor * (1 - 1e-9) else math.nan for f in fprs}


def plot_roc(curves, path, title="ROC"):
    """`curves`: `{name: (scores, same)}`; the PNG at `path`."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for name, (scores, same) in curves.items():
        fpr, tpr, _ = roc_curve(np.asarray(same, dtype=bool), np.asarray(scores, dtype=np.float64))
        floor = lowest_fpr(same)
        ax.plot(np.maximum(fpr, floor / 2), tpr, label=name)  # FPR 0 drawn at half the lowest measurable
    ax.set_xscale("log")
    ax.set(xlabel="false positive rate (log)", ylabel="true positive rate", title=title, ylim=(0, 1.01))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


@torch.no_grad()
def embed(model, loader, device, flip, desc="embed", show=True):
    """`(embeddings [N, D], missing [N])` of the loader's N images: each view's embedding (with `flip`, the sum of the
    image's and its mirror image's, insightface's flip test) L2-normalised, averaged over the image's views and
    normalised again; `missing` marks images none of whose views decoded. On N ranks each embeds its share and the
    shares are summed; a view two ranks embedded (the sampler's padding) counts once."""
    model.eval()
    n, views = len(loader.dataset.manifest.samples), loader.dataset.n_clips * loader.dataset.n_crops
    sums, seen = None, torch.zeros(n, views, dtype=torch.float64)
    loader.set_epoch(0)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not show, leave=False):
        x = batch["input"].to(device, non_blocking=True)
        e = model(x).float()
        if flip:
            e = e + model(x.flip(-1)).float()
        e = F.normalize(e, dim=1).double().cpu()
        if sums is None:
            sums = torch.zeros(n, views, e.shape[1], dtype=torch.float64)
        valid = batch["valid"].bool()
        index, view = batch["index"][valid], batch["view"][valid]
        sums[index, view], seen[index, view] = e[valid], 1.0  # a view seen twice here gives the same embedding
    if dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        sums, seen = sums.to(device), seen.to(device)
        dist.all_reduce(sums)
        dist.all_reduce(seen)
        sums, seen = sums.cpu() / seen.cpu().clamp(min=1)[..., None], seen.cpu().clamp(max=1)
    embeddings = F.normalize(sums.sum(1), dim=1)
    return embeddings, seen.sum(1) == 0


def pair_indices(pairs, paths):
    """`(a, b, same)` index arrays of `pairs` (`[(path_a, path_b, same)]`) into `paths` (a split's images in manifest
    order); a path not in the split raises KeyError naming it."""
    position = {p: i for i, p in enumerate(paths)}
    missing = next((p for pair in pairs for p in pair[:2] if p not in position), None)
    if missing is not None:
        raise KeyError(f"{missing}: in the pair list but not among the split's {len(paths)} images")
    a, b, same = zip(*((position[x], position[y], s) for x, y, s in pairs)) if pairs else ((), (), ())
    return np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), np.array(same, dtype=bool)


def split_pairs(cfg, manifest):
    """The test split's pair list (FACE.PAIRS inside DATA.MANIFEST_DIR), as `pair_indices` into its manifest."""
    path = os.path.join(cfg.DATA.MANIFEST_DIR, cfg.FACE.PAIRS)
    if not os.path.isfile(path):
        raise ConfigError(f"config key FACE.PAIRS: {path} not found (data_prep/prepare_faces.py writes it beside the "
                          f"manifests)")
    pairs = [(os.path.normpath(a), os.path.normpath(b), same) for a, b, same in read_pair_list(path, manifest.root)]
    try:
        return pair_indices(pairs, [os.path.normpath(manifest.abspath(r)) for r in manifest.samples])
    except KeyError as e:
        raise AnnotationError(path, 0, f"{e.args[0]} (split {manifest.split!r})") from None


def verify(embeddings, missing, pairs, folds, fprs):
    """`(metrics, scores, same)`: the cosine score of every pair `(a, b, same)` (index arrays) whose two images were
    embedded, LFW's k-fold accuracy (`accuracy`, `accuracy_std`, percent) and the TPR at each FPR of `fprs` and at the
    lowest FPR the pairs can measure (`tpr@fpr=<f>`, percent; `lowest_fpr`); `num_pairs` verified and
    `num_missing_pairs` left out for an image that failed to decode."""
    a, b, same = pairs
    kept = ~(missing[a] | missing[b]).numpy()
    a, b, same = a[kept], b[kept], same[kept]
    scores = (embeddings[a] * embeddings[b]).sum(1).numpy()
    accuracy = kfold_accuracy(scores, same, folds)
    floor = lowest_fpr(same)
    rates = tpr_at_fpr(scores, same, [*fprs, floor])
    metrics = {"accuracy": accuracy["accuracy"], "accuracy_std": accuracy["std"], "lowest_fpr": floor}
    metrics.update({f"tpr@fpr={f:.0e}": 100 * rates[f] for f in fprs})
    metrics["tpr@lowest_fpr"] = 100 * rates[floor]
    metrics.update({"num_pairs": len(scores), "num_missing_pairs": int((~kept).sum())})
    return metrics, scores, same


def evaluate_pairs(model, loader, pairs, cfg, device, desc="verify", show=True):
    """`verify` of `model`'s embeddings (`embed`) of the loader's split on `pairs` (`pair_indices`), with the config's
    FACE.FLIP, FOLDS and FPRS; also `num_images` and `num_missing` (images that failed to decode)."""
    embeddings, missing = embed(model, loader, device, cfg.FACE.FLIP, desc, show)
    metrics, scores, same = verify(embeddings, missing, pairs, cfg.FACE.FOLDS, cfg.FACE.FPRS)
    metrics.update({"num_images": len(missing), "num_missing": int(missing.sum())})
    return metrics, scores, same
