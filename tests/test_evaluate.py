"""MultiViewEvaluator on hand-computed examples, its synchronize() across two gloo processes, plot_confusion."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from vidkd.engine.evaluate import MultiViewEvaluator, pair_topk, plot_confusion, topk_correct


def logits_of(probs):
    """Logits whose softmax is exactly `probs` (rows summing to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log()


def feed(ev, rows, logits, targets, head="label"):
    """One batch: `rows` [(index, view, valid)], `logits` [B, K], `targets` {index: target}."""
    index, view, valid = (torch.tensor(c) for c in zip(*rows))
    ev.update(index, view, valid, {head: torch.tensor([targets[i] for i in index.tolist()])}, {head: logits})


def test_softmax_average_decides():
    # 3 videos x 2 views x 4 classes; each video's two views have different argmaxes.
    # softmax([4, 0, 0, 0])     = [.9479, .0174, .0174, .0174]   (e^4 = 54.598, sum 57.598)
    # softmax([0, 6, 5.8, 0])   = [.0014, .5483, .4489, .0014]   (e^6 = 403.43, e^5.8 = 330.30, sum 735.73)
    # video 0 (target 0): views A = [4, 0, 0, 0], B = [0, 6, 5.8, 0]
    #   mean softmax = [.4746, .2829, .2332, .0094] -> 0 (right); mean logits [2, 3, 2.9, 0] -> 1; votes 1:1
    # video 1 (target 3): the same with classes reversed, A = [0, 0, 0, 4], B = [0, 5.8, 6, 0]
    #   mean softmax = [.0094, .2332, .2829, .4746] -> 3 (right); mean logits [0, 2.9, 3, 2] -> 2
    # video 2 (target 0): A = [0, 4, 0, 0], B = [6, 0, 0, 5.8]
    #   mean softmax = [.2829, .4746, .0094, .2332] -> 1 (wrong); mean logits [3, 2, 0, 2.9] -> 0
    # softmax averaging: top-1 = 2/3; logit averaging would give 1/3.
    logits = torch.tensor([[4, 0, 0, 0], [0, 6, 5.8, 0],
                           [0, 0, 0, 4], [0, 5.8, 6, 0],
                           [0, 4, 0, 0], [6, 0, 0, 5.8]], dtype=torch.float16)  # any float dtype
    rows = [(0, 0, True), (0, 1, True), (1, 0, True), (1, 1, True), (2, 0, True), (2, 1, True)]
    ev = MultiViewEvaluator(3, {"label": 4}, num_views=2)
    feed(ev, rows[:4], logits[:4], {0: 0, 1: 3, 2: 0})
    feed(ev, rows[4:], logits[4:], {0: 0, 1: 3, 2: 0})
    m = ev.compute()
    assert m["label/top1"] == pytest.approx(200 / 3)
    assert m["top1"] == m["label/top1"]
    assert "label/top5" not in m and "top5" not in m  # K = 4 < 5
    assert m["num_videos"] == 3 and m["num_missing"] == 0


def test_padding_duplicates_invalid_views_and_missing_videos():
    # 3 videos x 2 views x 3 classes (logits = log of the probabilities below)
    # video 0 (target 0): view 0 [.2, .7, .1], view 1 [.8, .1, .1] -> sum [1.0, .8, .2] -> 0 (right);
    #   view 0 arrives three times (padding); counted again it would give [1.2, 1.5, .3] -> 1 (wrong)
    # video 1 (target 2): view 0 [.1, .1, .8]; view 1 invalid [.98, .01, .01] -> skipped -> 2 (right);
    #   counted it would give [1.08, .11, .81] -> 0 (wrong)
    # video 2 (target 1): no valid view -> missing, not in the denominator
    # top-1 = 2/2 = 100 (66.7 if the missing video were counted, 0 or 50 if duplicates / invalid were)
    targets = {0: 0, 1: 2, 2: 1}
    ev = MultiViewEvaluator(3, {"label": 3}, num_views=2)
    feed(ev, [(0, 0, True), (0, 1, True), (1, 0, True)], logits_of([[.2, .7, .1], [.8, .1, .1], [.1, .1, .8]]),
         targets)
    feed(ev, [(1, 1, False), (2, 0, False), (2, 1, False), (0, 0, True), (0, 0, True)],
         logits_of([[.98, .01, .01], [.98, .01, .01], [.98, .01, .01], [.2, .7, .1], [.2, .7, .1]]), targets)
    m = ev.compute()
    assert m["num_videos"] == 2 and m["num_missing"] == 1
    assert m["top1"] == 100.0
    # the confusion matrix only holds the two evaluated videos
    assert ev.confusion_matrix("label").tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_top5_on_six_classes():
    # one view; the target's rank among the 6 probabilities [.30, .25, .20, .12, .08, .05]:
    # video 0 rank 1, video 1 rank 3, video 2 rank 5, video 3 rank 6 -> top-1 = 1/4, top-5 = 3/4
    ranked = [.30, .25, .20, .12, .08, .05]
    target_rank = [1, 3, 5, 6]
    targets = {0: 2, 1: 4, 2: 0, 3: 5}
    probs = []
    for n, r in enumerate(target_rank):
        others = [c for c in range(6) if c != targets[n]]
        order = others[:r - 1] + [targets[n]] + others[r - 1:]  # order[i] = class with the i-th probability
        p = [0.0] * 6
        for i, c in enumerate(order):
            p[c] = ranked[i]
        probs.append(p)
    ev = MultiViewEvaluator(4, {"label": 6}, num_views=1)
    feed(ev, [(n, 0, True) for n in range(4)], logits_of(probs), targets)
    m = ev.compute()
    assert m["top1"] == 25.0 and m["label/top1"] == 25.0
    assert m["top5"] == 75.0 and m["label/top5"] == 75.0


def test_mean_class_accuracy_and_confusion_matrix():
    # 4 classes, one view; targets [0, 0, 0, 1, 1, 2], predictions [0, 0, 1, 1, 2, 2]; class 3 has no video
    # confusion (rows true, cols predicted): [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # per class: 2/3, 1/2, 1/1, nan -> mean class accuracy (2/3 + 1/2 + 1) / 3 = 13/18 = 72.2 %; top-1 4/6
    truth, pred = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2]
    probs = [[.7 if c == p else .1 for c in range(4)] for p in pred]
    ev = MultiViewEvaluator(6, {"label": 4}, num_views=1)
    feed(ev, [(n, 0, True) for n in range(6)], logits_of(probs), dict(enumerate(truth)))
    cm = ev.confusion_matrix("label")
    assert cm.dtype == torch.long
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    acc = ev.per_class_accuracy("label")
    assert acc[:3].tolist() == pytest.approx([200 / 3, 50.0, 100.0]) and math.isnan(acc[3])
    m = ev.compute()
    assert m["label/mean_class_acc"] == pytest.approx(1300 / 18)
    assert m["top1"] == pytest.approx(400 / 6)


def test_verb_noun_action():
    # every sample: verb p = [.5, .4, .1], noun p = [.6, .3, .1]; action = verb * 3 + noun, scored by products
    #   (0,0) .30  (1,0) .24  (0,1) .15  (1,1) .12  (2,0) .06  | (0,2) .05  (1,2) .04  (2,1) .03  (2,2) .01
    # sample 0 target (0, 0): verb right, noun right, action top-1 right, top-5 in (rank 1)
    # sample 1 target (1, 0): verb wrong, noun right -> action top-1 wrong; top-5 in (rank 2)
    # sample 2 target (0, 2): verb right, noun wrong -> action wrong; top-5 out: both heads' targets are
    #   in their own top-3, yet the pair ranks 6th by the product
    # sample 3 target (2, 0): verb wrong (its worst class), noun right -> action wrong; top-5 in (rank 5)
    # verb top-1 2/4, noun top-1 3/4, action top-1 1/4, action top-5 3/4
    verb, noun = logits_of([[.5, .4, .1]] * 4), logits_of([[.6, .3, .1]] * 4)
    tv, tn = torch.tensor([0, 1, 0, 2]), torch.tensor([0, 0, 2, 0])
    ev = MultiViewEvaluator(4, {"verb": 3, "noun": 3}, num_views=1)
    ev.update(torch.arange(4), torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool),
              {"verb": tv, "noun": tn}, {"verb": verb, "noun": noun})
    m = ev.compute()
    assert m["verb/top1"] == 50.0 and m["noun/top1"] == 75.0
    assert m["action/top1"] == 25.0 and m["action/top5"] == 75.0
    assert "verb/top5" not in m and "top1" not in m  # K = 3; no plain alias with two heads
    assert m["num_videos"] == 4


def test_pair_topk_matches_the_full_outer_product():
    g = torch.Generator().manual_seed(0)
    pv = torch.rand(50, 7, generator=g, dtype=torch.float64).softmax(1)
    pn = torch.rand(50, 11, generator=g, dtype=torch.float64).softmax(1)
    full = (pv[:, :, None] * pn[:, None, :]).flatten(1)
    targets = torch.randint(0, 77, (50,), generator=g)
    for k in (1, 5):
        assert torch.equal(pair_topk(pv, pn, k), full.topk(k, dim=1).indices)
        assert torch.equal((pair_topk(pv, pn, k) == targets[:, None]).any(1), topk_correct(full, targets, k))


# ------------------------------------------------------------------ two processes with gloo

N, V, HEADS = 7, 3, {"verb": 4, "noun": 6}
INVALID = {(2, 1), (5, 0), (5, 1), (5, 2)}  # video 5 has no valid view
SCENARIOS = [(False, 1024), (False, 2), (True, 1024)]  # (sampler shuffle, pending_views)


def dataset_items():
    """Logits of every (video, view), targets, validity: the same in every process."""
    g = torch.Generator().manual_seed(1)
    logits = {h: torch.randn(N, V, k, generator=g) * 2 for h, k in HEADS.items()}
    targets = {h: torch.randint(0, k, (N,), generator=g) for h, k in HEADS.items()}
    return logits, targets


def run_items(ev, items, batch_size):
    """Update `ev` with test-loader items (item i = video i // V, view i % V) in batches."""
    logits, targets = dataset_items()
    for s in range(0, len(items), batch_size):
        i = torch.tensor(items[s:s + batch_size])
        n, v = i // V, i % V
        valid = torch.tensor([(a, b) not in INVALID for a, b in zip(n.tolist(), v.tolist())])
        ev.update(n, v, valid, {h: t[n] for h, t in targets.items()}, {h: z[n, v] for h, z in logits.items()})


def results(ev):
    return ev.compute(), {h: (ev.confusion_matrix(h), ev.scores(h)) for h in HEADS}


def _dist_worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out = {}
        # the test loader's sampler pads rank 1 with an item of rank 0 (its last item); with pending_views=2
        # rank 0 has already summed that item when synchronize() runs, so rank 1 must drop its copy
        for scenario in SCENARIOS:
            shuffle, pending = scenario
            items = list(DistributedSampler(range(N * V), num_replicas=world, rank=rank, shuffle=shuffle, seed=3))
            ev = MultiViewEvaluator(N, HEADS, V, pending_views=pending)
            run_items(ev, items, batch_size=4)
            ev.synchronize()
            out[scenario] = results(ev)
        ev = MultiViewEvaluator(N, HEADS, V, pending_views=0)  # the duplicate already summed on both ranks
        run_items(ev, list(DistributedSampler(range(N * V), num_replicas=world, rank=rank, shuffle=False)), 4)
        try:
            ev.synchronize()
            out["error"] = None
        except RuntimeError as e:
            out["error"] = str(e)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_synchronize_two_processes(tmp_path):
    assert N * V % 2 == 1  # so the sampler pads: one view arrives on both ranks
    mp.spawn(_dist_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    single = MultiViewEvaluator(N, HEADS, V)
    run_items(single, list(range(N * V)), batch_size=5)
    expected, expected_heads = results(single)  # {head: (confusion, scores)}
    assert expected["num_videos"] == N - 1 and expected["num_missing"] == 1
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for scenario in SCENARIOS:
            metrics, per_head = out[scenario]
            assert metrics.keys() == expected.keys()
            for key, value in expected.items():
                assert metrics[key] == pytest.approx(value), (rank, scenario, key)
            for h in HEADS:
                assert torch.equal(per_head[h][0], expected_heads[h][0])
                # each view counted once: the averaged probabilities match, nan for the missing video
                assert torch.allclose(per_head[h][1], expected_heads[h][1], equal_nan=True), (rank, scenario, h)
        assert "pending_views" in out["error"]


def test_synchronize_without_distributed_is_a_no_op():
    ev = MultiViewEvaluator(N, HEADS, V)
    run_items(ev, list(range(N * V)), batch_size=8)
    before = ev.compute()
    ev.synchronize()
    assert ev.compute() == before


# ------------------------------------------------------------------ plot

@pytest.mark.parametrize("k", [5, 80])
def test_plot_confusion_writes_png(tmp_path, k):
    from matplotlib.image import imread

    cm = torch.randint(0, 10, (k, k))
    cm[0] = 0  # a class with no video: its row stays empty
    path = tmp_path / f"cm{k}.png"
    plot_confusion(cm, [f"class {i}" for i in range(k)], str(path), f"{k} classes", dpi=50)
    assert path.exists() and path.stat().st_size > 0
    side = min(24.0, max(6.0, 3.0 + 0.22 * k))
    height, width = imread(str(path)).shape[:2]
    assert (height, width) == (round(side * 50), round((side + 1.5) * 50))
