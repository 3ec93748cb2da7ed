"""Process group set-up for one process or N: `deepspeed` / `torchrun` launchers, SLURM, or a plain `python`.

The launcher's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are used as they are;
under SLURM (srun) they are derived from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and the first host of
SLURM_JOB_NODELIST; a plain `python tools/train_net.py` is rank 0 of 1. The backend is NCCL on GPUs, gloo
on the CPU (where DeepSpeed's CPU accelerator is selected before DeepSpeed is imported).
"""
import os
import re
import socket

import torch


def _first_host(nodelist):
    """First host of a SLURM nodelist: "gpu[03-05,07],cpu1" -> "gpu03"."""
    match = re.match(r"([^\[,]+)(?:\[([^\]]+)\])?", nodelist)
    prefix, ranges = match.group(1), match.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launcher_env(env=os.environ):
    """The variables torch.distributed needs, from the launcher, SLURM, or defaults for a single process."""
    if "RANK" in env:
        out = {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k in env}
        out.setdefault("LOCAL_RANK", env.get("LOCAL_RANK", "0"))
        return out
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
                "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
                "MASTER_ADDR": env.get("MASTER_ADDR", _first_host(env["SLURM_JOB_NODELIST"])),
                "MASTER_PORT": env.get("MASTER_PORT", "29500")}
    return {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": env.get("MASTER_PORT", _free_port())}


def init():
    """Set up the process group; returns (rank, world_size, device)."""
    os.environ.update(launcher_env())
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def all_reduce_sum(values, device):
    """Sum a list of floats over all ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()
