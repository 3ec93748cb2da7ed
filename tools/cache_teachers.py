"""Fill the teacher-output cache of a training config (see vidkd/engine/teacher_cache.py), on 1 process or N.

    python tools/cache_teachers.py --config X.yaml [KEY VALUE ...]
    deepspeed --num_gpus 8 tools/cache_teachers.py --config X.yaml      # each rank fills its own shard

Then train with `DISTILL.CACHE require` (or `auto`, which also fills a missing cache before training). A killed
fill resumes where it stopped (run again on as many ranks: on another number it starts afresh); a cache that
is already complete for this config is left as it is, and one that is damaged (a shard not matching its
SHA-256 in meta.json, or no readable meta.json) is deleted and built again.
"""
import argparse
import logging

import torch

from vidkd.cli import run
from vidkd.config import load_config
from vidkd.data.loader import build_dataset
from vidkd.distill.build import teachers_needed
from vidkd.engine import distributed, teacher_cache
from vidkd.engine.trainer import build_training, check_config, check_precision
from vidkd.errors import ConfigError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p.add_argument("overrides", nargs="*", help="KEY VALUE pairs overriding the config")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides + ["DISTILL.CACHE", "auto"])
    check_config(cfg)  # no cache for a config that training would refuse
    if not teachers_needed(cfg):
        raise ConfigError(f"config key DISTILL.METHOD {cfg.DISTILL.METHOD!r} runs no teacher: nothing to cache")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rank, world, device = distributed.init()
    check_precision(cfg, device)
    torch.manual_seed(cfg.SEED)  # a teacher without a checkpoint gets the same random weights as in training
    dataset = build_dataset(cfg, train=True, cache_views=teacher_cache.views(cfg))
    heads = {h: len(names) for h, names in dataset.manifest.label_sets.items()}
    distiller = build_training(cfg, heads, device)  # the teachers and projections exactly as training runs them
    cache = teacher_cache.prepare(cfg, distiller, dataset, device, rank, world)
    if rank == 0:
        print(f"teacher cache: {cache.folder} ({len(dataset.manifest.samples)} videos x {cache.views} views: "
              f"{', '.join(cache.names)})")
    return 0


if __name__ == "__main__":
    run(main)
