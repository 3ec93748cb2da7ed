"""Multi-view evaluation (METHODS.md 7): softmax scores averaged over a video's views, top-1 / top-5, mean
class accuracy, confusion matrices, and the EPIC-KITCHENS action (verb, noun) metrics (METHODS.md 2.3).

The test loader yields one item per (video, view); `MultiViewEvaluator.update` takes its batches with the
model's logits. Each (index, view) counts once, however many times it arrives, and views whose video failed
to decode (`valid = False`) are left out; a video without any valid view is reported as missing and is not
in any denominator.

Distributed evaluation: each rank updates with its own batches, then `synchronize()` sums the ranks' state.
The DistributedSampler pads the last ranks with items that another rank also sees, so the same view can be
on two ranks. The per-view seen masks ([N, V]) tell which views several ranks saw, but summed probabilities
cannot be un-summed, so each rank holds its most recent `pending_views` views back (not yet added to its
sums): at synchronize() every duplicated view is kept on exactly one rank and dropped from the others'
pending views. The sampler's padding is always the last item of a rank, so it is always held back; a view
that several ranks saw and that none of them still holds raises RuntimeError (raise `pending_views`).
"""
from collections import deque

import torch
import torch.distributed as dist

ACTION_HEADS = ("verb", "noun")


def topk_correct(scores, targets, k):
    """BoolTensor [M]: whether each row's target is among its k highest scores (`scores` [M, K])."""
    return (scores.topk(k, dim=1).indices == targets[:, None]).any(dim=1)


def pair_topk(verb_scores, noun_scores, k):
    """The k highest (verb, noun) pairs of the outer product `verb_scores[m, i] * noun_scores[m, j]` (scores
    non-negative), as action indices `i * K_noun + j`, LongTensor [M, k].

    Exact without forming the [M, K_v * K_n] product: a pair outside the k best verbs (or nouns) is
    outscored by the k pairs that replace its verb by one of the k best verbs, so the k best pairs are
    among the k x k pairs of the k best verbs and the k best nouns.
    """
    kv, kn = min(k, verb_scores.shape[1]), min(k, noun_scores.shape[1])
    pv, iv = verb_scores.topk(kv, dim=1)
    pn, i_n = noun_scores.topk(kn, dim=1)
    scores = (pv[:, :, None] * pn[:, None, :]).flatten(1)
    actions = (iv[:, :, None] * noun_scores.shape[1] + i_n[:, None, :]).flatten(1)
    return actions.gather(1, scores.topk(k, dim=1).indices)


def _confusion(scores, targets, k):
    return torch.bincount(targets * k + scores.argmax(dim=1), minlength=k * k).view(k, k)


def _class_accuracy(confusion):
    cm = confusion.double()
    return 100 * cm.diagonal() / cm.sum(dim=1)


def _percent(hits):
    """Mean of a BoolTensor as a percentage (nan when empty)."""
    return float(hits.double().mean() * 100) if hits.numel() else float("nan")


class MultiViewEvaluator:
    """Accumulates per-video softmax probabilities over the views of `num_samples` videos.

    `heads`: ordered `{head: num_classes}`; `num_views`: views per video (`n_clips * n_crops`).
    """

    def __init__(self, num_samples, heads, num_views, pending_views=1024):
        if not heads:
            raise ValueError("MultiViewEvaluator needs at least one head")
        self.num_samples, self.num_views = int(num_samples), int(num_views)
        self.heads = dict(heads)
        self.pending_views = int(pending_views)
        self._offsets, start = {}, 0
        for head, k in self.heads.items():
            self._offsets[head] = (start, start + int(k))
            start += int(k)
        self._sums = torch.zeros(self.num_samples, start, dtype=torch.float64)
        self._seen = torch.zeros(self.num_samples, self.num_views, dtype=torch.bool)
        self._targets = {head: torch.full((self.num_samples,), -1, dtype=torch.long) for head in self.heads}
        self._pending = deque()  # ((index, view), probabilities [sum of K]) not yet in _sums
        self._synchronized = False

    # ---------------------------------------------------------------- accumulation
    @torch.no_grad()
    def update(self, index, view, valid, targets, logits):
        """One batch: `index`, `view` LongTensor [B], `valid` BoolTensor [B], `targets` {head: LongTensor[B]},
        `logits` {head: [B, K]} (any float dtype; the softmax is taken in fp32)."""
        if self._synchronized:
            raise RuntimeError("update() after synchronize(): the synchronised state would be counted twice")
        index, view = torch.as_tensor(index).long().cpu(), torch.as_tensor(view).long().cpu()
        valid = torch.as_tensor(valid).bool().cpu()
        b = index.shape[0]
        if view.shape != (b,) or valid.shape != (b,):
            raise ValueError(f"index, view and valid must all be [B]; got {tuple(index.shape)}, "
                             f"{tuple(view.shape)}, {tuple(valid.shape)}")
        if b and (index.min() < 0 or index.max() >= self.num_samples):
            raise ValueError(f"sample index out of range 0..{self.num_samples - 1}: {index.tolist()}")
        if b and (view.min() < 0 or view.max() >= self.num_views):
            raise ValueError(f"view out of range 0..{self.num_views - 1}: {view.tolist()}")
        probs = []
        for head, k in self.heads.items():
            z = logits[head]
            if z.shape != (b, k):
                raise ValueError(f"logits[{head!r}] has shape {tuple(z.shape)}, expected ({b}, {k})")
            probs.append(z.detach().float().softmax(dim=1).double().cpu())
        probs = torch.cat(probs, dim=1)
        self._store_targets(index, targets)

        rows, keys = [], []
        for row, (n, v, ok) in enumerate(zip(index.tolist(), view.tolist(), valid.tolist())):
            if ok and not self._seen[n, v]:
                self._seen[n, v] = True
                rows.append(row)
                keys.append((n, v))
        if rows:
            self._pending.extend(zip(keys, probs[rows].unbind(0)))
        if len(self._pending) > self.pending_views:
            self._add([self._pending.popleft() for _ in range(len(self._pending) - self.pending_views)],
                      self._sums)

    def _store_targets(self, index, targets):
        for head in self.heads:
            t = torch.as_tensor(targets[head]).long().cpu()
            known = self._targets[head][index]
            clash = (known >= 0) & (known != t)
            if clash.any():
                n, new, old = int(index[clash][0]), int(t[clash][0]), int(known[clash][0])
                raise ValueError(f"sample {n} arrived with {head} target {new} after {old}")
            self._targets[head][index] = t

    @staticmethod
    def _add(items, sums):
        if items:
            idx = torch.tensor([key[0] for key, _ in items], dtype=torch.long)
            sums.index_add_(0, idx, torch.stack([p for _, p in items]))

    # ---------------------------------------------------------------- distributed
    def synchronize(self):
        """Combine the ranks' state (all ranks must call it; no-op without torch.distributed). Afterwards
        every rank holds the global state and `compute()` gives the same result on each."""
        if not (dist.is_available() and dist.is_initialized()) or self._synchronized:
            return
        rank, world = dist.get_rank(), dist.get_world_size()
        device = self._comm_device()

        def reduce(t, op):
            t = t.to(device)
            dist.all_reduce(t, op=op)
            return t.cpu()

        seen = self._seen.int()
        cached = torch.zeros_like(seen)
        for (n, v), _ in self._pending:
            cached[n, v] = 1
        # m: how many ranks saw each view; k: how many of them no longer hold it back (so cannot drop it)
        m = reduce(seen.clone(), dist.ReduceOp.SUM)
        k = reduce(seen - cached, dist.ReduceOp.SUM)
        duplicated = m > 1
        lost = duplicated & (k > 1)
        if lost.any():
            n, v = (int(x) for x in lost.nonzero()[0])
            raise RuntimeError(
                f"{int(lost.sum())} views (e.g. sample {n} view {v}) were seen by several ranks and added to the "
                f"sums of more than one; construct MultiViewEvaluator with a larger pending_views "
                f"(now {self.pending_views})")
        holder = reduce(torch.where(cached.bool(), rank, world).int(), dist.ReduceOp.MIN)
        # keep each duplicated view on one rank: the rank that no longer holds it, else the lowest holder
        drop = cached.bool() & duplicated & ((k == 1) | (holder != rank))
        sums = self._sums.clone()
        self._add([(key, p) for key, p in self._pending if not drop[key]], sums)

        self._sums = reduce(sums, dist.ReduceOp.SUM)
        self._seen = m > 0
        self._targets = {h: reduce(t.clone(), dist.ReduceOp.MAX) for h, t in self._targets.items()}
        self._pending.clear()
        self._synchronized = True

    @staticmethod
    def _comm_device():
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ---------------------------------------------------------------- metrics
    def _evaluated(self):
        """Averaged probabilities [M, sum of K] and the mask [N] of the samples with a valid view."""
        sums = self._sums.clone()
        self._add(list(self._pending), sums)
        count = self._seen.sum(dim=1)
        evaluated = count > 0
        return sums[evaluated] / count[evaluated, None], evaluated

    def _head(self, head, scores, evaluated):
        """(probabilities [M, K], targets [M]) of one head."""
        if head not in self.heads:
            raise KeyError(f"unknown head {head!r}; heads: {list(self.heads)}")
        lo, hi = self._offsets[head]
        targets = self._targets[head][evaluated]
        bad = (targets < 0) | (targets >= hi - lo)
        if bad.any():
            raise ValueError(f"{int(bad.sum())} evaluated samples have no valid {head} target "
                             f"(0..{hi - lo - 1}), e.g. {targets[bad][:5].tolist()}")
        return scores[:, lo:hi], targets

    def scores(self, head):
        """Averaged probabilities of every sample, float64 [N, K]; rows of missing samples are nan."""
        if head not in self.heads:
            raise KeyError(f"unknown head {head!r}; heads: {list(self.heads)}")
        scores, evaluated = self._evaluated()
        lo, hi = self._offsets[head]
        out = torch.full((self.num_samples, hi - lo), float("nan"), dtype=torch.float64)
        out[evaluated] = scores[:, lo:hi]
        return out

    def confusion_matrix(self, head):
        """LongTensor [K, K] over the evaluated videos: rows = true class, columns = top-1 prediction."""
        return _confusion(*self._head(head, *self._evaluated()), self.heads[head])

    def per_class_accuracy(self, head):
        """Top-1 accuracy (percent) of each class, tensor [K]; nan for a class without evaluated videos."""
        return _class_accuracy(self.confusion_matrix(head))

    def compute(self):
        """Metrics in percent, plus `num_videos` (with a valid view) and `num_missing` (without)."""
        scores, evaluated = self._evaluated()
        metrics, probs = {}, {}
        for head, k in self.heads.items():
            p, t = probs[head] = self._head(head, scores, evaluated)
            metrics[f"{head}/top1"] = _percent(topk_correct(p, t, 1))
            if k >= 5:
                metrics[f"{head}/top5"] = _percent(topk_correct(p, t, 5))
            per_class = _class_accuracy(_confusion(p, t, k))
            metrics[f"{head}/mean_class_acc"] = float(per_class.nanmean()) if len(t) else float("nan")
        if all(h in self.heads for h in ACTION_HEADS):
            (pv, tv), (pn, tn) = probs["verb"], probs["noun"]
            action = tv * self.heads["noun"] + tn
            for k in (1, 5):
                if k <= self.heads["verb"] * self.heads["noun"]:
                    metrics[f"action/top{k}"] = _percent((pair_topk(pv, pn, k) == action[:, None]).any(dim=1))
        if len(self.heads) == 1:
            (head,) = self.heads
            for k in ("top1", "top5"):
                if f"{head}/{k}" in metrics:
                    metrics[k] = metrics[f"{head}/{k}"]
        metrics["num_videos"] = int(evaluated.sum())
        metrics["num_missing"] = self.num_samples - metrics["num_videos"]
        return metrics


def plot_confusion(matrix, class_names, path, title, dpi=100):
    """Save a row-normalised confusion matrix as a PNG (class names on the axes when K <= 60)."""
    from matplotlib.figure import Figure

    cm = torch.as_tensor(matrix).double()
    k = cm.shape[0]
    rows = cm.sum(dim=1, keepdim=True)
    norm = torch.where(rows > 0, cm / rows.clamp(min=1), torch.zeros_like(cm)).numpy()
    side = min(24.0, max(6.0, 3.0 + 0.22 * k))
    fig = Figure(figsize=(side + 1.5, side), dpi=dpi)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 60:
        names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
        if len(names) != k:
            raise ValueError(f"{len(names)} class names for a {k} x {k} matrix")
        size = 8 if k <= 30 else 6
        ax.set_xticks(range(k), names, rotation=90, fontsize=size)
        ax.set_yticks(range(k), names, fontsize=size)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path
