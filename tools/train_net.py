"""Train a student (or fine-tune a teacher) with any vidkd method, on 1 process or N.

    python tools/train_net.py --config configs/hmdb51/dual_teacher_videomae_b_x3d_m_to_x3d_s.yaml [KEY VALUE ...]
    deepspeed --num_gpus 8 tools/train_net.py --config ...      # or torchrun, or srun under SLURM

Evaluates every TRAIN.EVAL_PERIOD epochs and at the end, checkpoints to OUTPUT_DIR/checkpoints
(`--resume auto`, the default, continues from the newest), writes metrics.jsonl, TensorBoard scalars,
curves.png and the exported student (student.pt), and prints a results table.
"""
import argparse
import logging
import os

from vidkd.cli import run
from vidkd.config import load_config
from vidkd.engine.plots import plot_history
from vidkd.engine.trainer import Trainer


def results_table(metrics):
    keys = [k for k in metrics if not k.startswith("num_")] + [k for k in metrics if k.startswith("num_")]
    width = max(len(k) for k in keys)
    cells = {k: f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in metrics.items()}
    return "\n".join(f"{k:<{width}}  {cells[k]}" for k in keys if k in cells)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--resume", choices=("auto", "none"), default="auto")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p.add_argument("overrides", nargs="*", help="KEY VALUE pairs overriding the config")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trainer = Trainer(cfg, args.resume)
    metrics = trainer.fit()
    if trainer.rank == 0:
        plot_history(trainer.history, os.path.join(cfg.OUTPUT_DIR, "curves.png"),
                     f"{cfg.DISTILL.METHOD}: {cfg.MODEL.STUDENT}")
        print(f"\nresults ({cfg.DISTILL.METHOD}, student {cfg.MODEL.STUDENT}, {cfg.TEST.NUM_CLIPS} clips x "
              f"{cfg.TEST.NUM_CROPS} crops):\n{results_table(metrics)}")
    return 0


if __name__ == "__main__":
    run(main)
