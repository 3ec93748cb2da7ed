"""Multi-view evaluation of a trained model on DATA.TEST_SPLIT, on 1 process or N.

    python tools/test_net.py --config configs/hmdb51/....yaml --checkpoint output/run/student.pt [KEY VALUE ...]
    python tools/test_net.py --config ... --model videomae_vit_b --checkpoint teacher.pt   # e.g. a teacher
    deepspeed --num_gpus 8 tools/test_net.py --config ... --checkpoint ...             # or torchrun, srun

The model is MODEL.STUDENT (or --model), built for DATA.NUM_FRAMES x DATA.TEST_CROP_SIZE clips with one
classifier for all label sets of the test manifest, and loaded from --checkpoint (a weights file or a
DeepSpeed checkpoint folder of that model; MODEL.PARTIAL_LOAD applies). Each video is scored with the
softmax averaged over TEST.NUM_CLIPS x TEST.NUM_CROPS views. Prints top-1 / top-5 (EPIC-KITCHENS-100:
verb, noun and action) and a per-class accuracy table; writes OUTPUT_DIR/test_metrics.json,
OUTPUT_DIR/per_class_accuracy.csv and OUTPUT_DIR/confusion_<head>.png.

TASK face: the model's embeddings verify the pairs of the test split (FACE.PAIRS) and of every FACE.VERIFICATION_SETS
entry (insightface `.bin` files, whose images are written once under OUTPUT_DIR/verification/<set>/, and LFW
`pairs.txt` lists): k-fold accuracy, TPR at FACE.FPRS and at the lowest FPR each set can measure. Prints one row per
set; writes OUTPUT_DIR/test_metrics.json and OUTPUT_DIR/roc.png (every set's ROC curve).
"""
import argparse
import csv
import json
import logging
import os

from vidkd.cli import run
from vidkd.config import load_config
from vidkd.data.loader import build_loader
from vidkd.engine import distributed
from vidkd.data.datasets.faces import verification_set
from vidkd.engine.evaluate import plot_confusion
from vidkd.engine.trainer import evaluate
from vidkd.engine.verification import evaluate_pairs, pair_indices, plot_roc, split_pairs
from vidkd.errors import CheckpointError, ConfigError
from vidkd.models import REGISTRIES, build_from_config
from vidkd.models.checkpoint import load_checkpoint, saved_heads

log = logging.getLogger("vidkd.test")
FULL_TABLE_CLASSES = 100  # heads with more classes print only their 10 best and 10 worst classes


def results_table(metrics):
    keys = [k for k in metrics if not k.startswith("num_")] + [k for k in metrics if k.startswith("num_")]
    width = max(len(k) for k in keys)
    cells = {k: f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in metrics.items()}
    return "\n".join(f"{k:<{width}}  {cells[k]}" for k in keys if k in cells)


def per_class_rows(evaluator, class_names):
    """One row per (head, class): videos evaluated, top-1 hits and accuracy (percent, nan without videos)."""
    rows = []
    for head in evaluator.heads:
        confusion = evaluator.confusion_matrix(head)
        for k, name in enumerate(class_names[head]):
            videos, hits = int(confusion[k].sum()), int(confusion[k, k])
            rows.append({"head": head, "class_index": k, "class_name": name, "videos": videos, "correct": hits,
                         "top1": 100.0 * hits / videos if videos else float("nan")})
    return rows


def per_class_table(rows, head):
    rows = [r for r in rows if r["head"] == head]
    shown = rows
    if len(rows) > FULL_TABLE_CLASSES:
        ranked = sorted((r for r in rows if r["videos"]), key=lambda r: -r["top1"])
        shown = ranked[:10] + [None] + ranked[-10:]
    width = max(len("class"), *(len(r["class_name"]) for r in rows))
    lines = [f"{'class':<{width}}  {'videos':>6}  {'top1':>6}"]
    for r in shown:
        if r is None:
            lines.append(f"{'...':<{width}}  (full table in per_class_accuracy.csv)")
        else:
            lines.append(f"{r['class_name']:<{width}}  {r['videos']:>6}  {r['top1']:>6.1f}")
    return "\n".join(lines)


def write_outputs(out, cfg, args, name, metrics, evaluator, class_names):
    os.makedirs(out, exist_ok=True)
    rows = per_class_rows(evaluator, class_names)
    summary = {"model": name, "checkpoint": os.path.abspath(args.checkpoint), "split": cfg.DATA.TEST_SPLIT,
               "num_frames": cfg.DATA.NUM_FRAMES, "crop_size": cfg.DATA.TEST_CROP_SIZE,
               "num_clips": cfg.TEST.NUM_CLIPS, "num_crops": cfg.TEST.NUM_CROPS, "metrics": metrics}
    with open(os.path.join(out, "test_metrics.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, "per_class_accuracy.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for head in evaluator.heads:
        plot_confusion(evaluator.confusion_matrix(head), class_names[head], os.path.join(out, f"confusion_{head}.png"),
                       f"{name} on {cfg.DATA.TEST_SPLIT}: {head} (top-1 {metrics[f'{head}/top1']:.1f} %)")
    return rows


def face_sets(cfg, rank, world):
    """`[(name, loader, pairs, set's config)]`: the test split with its pair list, then each FACE.VERIFICATION_SETS
    entry (its manifest written under OUTPUT_DIR/verification/<set>/; rank 0 writes, the others wait)."""
    loader = build_loader(cfg, False, rank, world)
    sets = [(cfg.DATA.TEST_SPLIT, loader, split_pairs(cfg, loader.dataset.manifest), cfg)]
    for path in cfg.FACE.VERIFICATION_SETS:
        if not os.path.isfile(path):
            raise ConfigError(f"config key FACE.VERIFICATION_SETS: {path} not found")
        # a .bin by its file name; a pairs.txt by its folder's
        name = os.path.basename(path if path.endswith(".bin") else os.path.dirname(os.path.abspath(path)))
        folder = os.path.join(cfg.OUTPUT_DIR, "verification", name)
        for turn in (0, 1):  # rank 0 writes the images and the manifest, then the others read them
            if (rank == 0) == (turn == 0):
                manifest, pairs, folds = verification_set(path, os.path.join(folder, "images"))
                if rank == 0:
                    manifest.save(os.path.join(folder, "pairs.json"))
            distributed.barrier()
        own = cfg.clone()
        own.defrost()
        own.DATA.MANIFEST_DIR, own.DATA.TEST_SPLIT, own.FACE.FOLDS = folder, "pairs", folds
        own.freeze()
        indices = pair_indices(pairs, [manifest.abspath(r) for r in manifest.samples])
        sets.append((name, build_loader(own, False, rank, world), indices, own))
    return sets


def verification_table(results):
    """One row per set: accuracy +- std, TPR at the lowest FPR it measures and at each FACE.FPRS, pairs."""
    rates = [k for k in next(iter(results.values())) if k.startswith("tpr@fpr=")]
    width = max(len("set"), *(len(n) for n in results))
    lines = [f"{'set':<{width}}  {'accuracy':>14}  {'TPR@lowest FPR':>20}  " + "  ".join(f"{r[4:]:>14}" for r in rates)
             + f"  {'pairs':>6}  {'missing':>7}"]
    for name, m in results.items():
        lowest = f"{m['tpr@lowest_fpr']:.2f} @ {m['lowest_fpr']:.1e}"
        lines.append(f"{name:<{width}}  {m['accuracy']:>7.2f} ± {m['accuracy_std']:<4.2f}  {lowest:>20}  "
                     + "  ".join(f"{m[r]:>14.2f}" for r in rates)
                     + f"  {m['num_pairs']:>6}  {m['num_missing_pairs']:>7}")
    return "\n".join(lines)


def test_faces(cfg, args, name, model, device, rank, world):
    results, curves = {}, {}
    for set_name, loader, pairs, own in face_sets(cfg, rank, world):
        metrics, scores, same = evaluate_pairs(model, loader, pairs, own, device, set_name, rank == 0)
        results[set_name], curves[set_name] = metrics, (scores, same)
    if rank == 0:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, "test_metrics.json"), "w") as f:
            json.dump({"model": name, "checkpoint": os.path.abspath(args.checkpoint), "flip": cfg.FACE.FLIP,
                       "crop_size": cfg.DATA.TEST_CROP_SIZE, "sets": results}, f, indent=2)
        plot_roc(curves, os.path.join(cfg.OUTPUT_DIR, "roc.png"), f"{name}: verification")
        print(f"\nverification ({name}, {args.checkpoint}):\n{verification_table(results)}")
        print(f"\nwritten to {cfg.OUTPUT_DIR}: test_metrics.json, roc.png")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True, help="weights file or DeepSpeed checkpoint folder of the model")
    p.add_argument("--model", default=None, help="registered model name (default: MODEL.STUDENT)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p.add_argument("overrides", nargs="*", help="KEY VALUE pairs overriding the config")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    name, key = (args.model, "--model") if args.model else (cfg.MODEL.STUDENT, "config key MODEL.STUDENT")
    if name not in REGISTRIES[cfg.TASK]:
        raise ConfigError(f"{key}: unknown model {name!r}; registered: {', '.join(sorted(REGISTRIES[cfg.TASK]))}")
    if not os.path.exists(args.checkpoint):
        raise CheckpointError(f"{args.checkpoint}: checkpoint not found")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    rank, world, device = distributed.init()
    if cfg.TASK == "face":  # an embedding: no classes to check or to build for
        model = build_from_config(cfg, name, 0, "TEST_CROP_SIZE")
        report = load_checkpoint(model, args.checkpoint, cfg.MODEL.PARTIAL_LOAD)
        if rank == 0:
            log.info("%s from %s: %s", name, args.checkpoint, report)
        return test_faces(cfg, args, name, model.to(device), device, rank, world)
    loader = build_loader(cfg, False, rank, world)
    class_names = loader.dataset.manifest.label_sets
    heads = {h: len(names) for h, names in class_names.items()}
    trained_heads = saved_heads(args.checkpoint)
    if trained_heads is not None and dict(trained_heads) != heads:
        raise CheckpointError(f"{args.checkpoint}: trained for heads {dict(trained_heads)}, the test manifest of "
                              f"DATA.TEST_SPLIT {cfg.DATA.TEST_SPLIT!r} has {heads}")
    d = cfg.DATA
    if d.TEST_CROP_SIZE != d.TRAIN_CROP_SIZE:
        log.warning("DATA.TEST_CROP_SIZE %d != DATA.TRAIN_CROP_SIZE %d: the model is built for %d-pixel crops "
                    "(pooling and position tables follow the crop size)", d.TEST_CROP_SIZE, d.TRAIN_CROP_SIZE,
                    d.TEST_CROP_SIZE)
    model = build_from_config(cfg, name, sum(heads.values()), "TEST_CROP_SIZE")
    report = load_checkpoint(model, args.checkpoint, cfg.MODEL.PARTIAL_LOAD)
    if rank == 0:
        log.info("%s from %s: %s", name, args.checkpoint, report)
    model.to(device)

    metrics, evaluator = evaluate(model, loader, heads, device, show=rank == 0)
    if rank == 0:
        rows = write_outputs(cfg.OUTPUT_DIR, cfg, args, name, metrics, evaluator, class_names)
        for head in heads:
            print(f"\nper-class top-1, {head} ({len(class_names[head])} classes):\n{per_class_table(rows, head)}")
        print(f"\nresults ({name}, {args.checkpoint}, {cfg.DATA.TEST_SPLIT}, {cfg.TEST.NUM_CLIPS} clips x "
              f"{cfg.TEST.NUM_CROPS} crops):\n{results_table(metrics)}")
        print(f"\nwritten to {cfg.OUTPUT_DIR}: test_metrics.json, per_class_accuracy.csv, "
              + ", ".join(f"confusion_{h}.png" for h in heads))
    return 0


if __name__ == "__main__":
    run(main)
