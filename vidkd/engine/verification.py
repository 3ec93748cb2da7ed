"""Face verification protocols (METHODS.md 7) on similarity scores (higher: more alike) of image pairs.

- `kfold_accuracy`: LFW's protocol. The pairs, in their list's order, split into `folds` consecutive folds
  (scikit-learn's KFold without shuffling: LFW's ten sets); for each fold the threshold that is most accurate on the
  other folds (`best_threshold`) decides "same" (score above it) on that fold; the mean and standard deviation of
  the folds' accuracies.
- `tpr_at_fpr`: the IJB-style operating points from one score list (scikit-learn's ROC curve): at each FPR, the
  highest true-positive rate with a false-positive rate at most that; `nan` for an FPR below 1 / (different pairs),
  which so few pairs cannot measure.
- `plot_roc`: the ROC curves as a PNG, FPR on a log axis.
"""
import math

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve
from sklearn.model_selection import KFold


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
