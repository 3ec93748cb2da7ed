"""Process group set-up for one process or N: `deepspeed` / `torchrun` launchers, SLURM, or a plain `python`.

The launcher's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are used as they are;
under SLURM (srun) they are derived from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and the first host of
SLURM_JOB_NODELIST; a plain `python tools/train_net.py` is rank 0 of 1. The backend is NCCL on GPUs, gloo
on the CPU (where DeepSpeed's CPU accelerator is selected before DeepSpeed is imported). On the CPU, ranks
sharing a node share its cores out (unless OMP_NUM_THREADS is set): the `deepspeed` launcher leaves every
rank all the cores, and 2 ranks x 2 threads on 2 cores train ~10x slower than 2 x 1.

Data parallelism keeps the ranks' parameters identical, but not their batch-norm statistics (DeepSpeed,
unlike DDP, does not broadcast buffers): `average_batchnorm_stats` averages them before a model is
evaluated, checkpointed or exported, and `check_replicas` verifies that the ranks hold the same model.
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


def local_world_size(env=os.environ):
    """Ranks on this node, from the launcher (torchrun, deepspeed, SLURM with --ntasks-per-node); 1 if unknown."""
    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return 1


def cpu_threads(env=os.environ, cpus=None):
    """Intra-op threads for a CPU rank: None (leave torch's default) when OMP_NUM_THREADS is set or the rank is
    alone on its node, else the node's cores divided among its ranks (at least 1)."""
    local = local_world_size(env)
    if "OMP_NUM_THREADS" in env or local <= 1:
        return None
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cpus // local)


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
        threads = cpu_threads()
        if threads:
            torch.set_num_threads(threads)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def all_reduce_sum(values, device):
    """Sum a list of floats over all ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def _world():
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank():
    """This process's rank (0 outside a distributed run)."""
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def barrier():
    """Wait for every rank (nothing to wait for outside a distributed run)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def broadcast_text(text, device):
    """Rank 0's `text` (a str or None) on every rank; other ranks' `text` is ignored. Sent as UTF-8 bytes in a
    tensor, never as a pickle."""
    if _world() == 1:
        return text
    data = torch.tensor(list(text.encode()) if rank() == 0 and text is not None else [], dtype=torch.uint8)
    size = torch.tensor([len(data) if rank() == 0 and text is not None else -1], dtype=torch.int64, device=device)
    torch.distributed.broadcast(size, 0)
    if size.item() <= 0:
        return None if size.item() < 0 else ""
    buffer = data.to(device) if rank() == 0 else torch.empty(size.item(), dtype=torch.uint8, device=device)
    torch.distributed.broadcast(buffer, 0)
    return bytes(buffer.cpu().tolist()).decode()


def all_gather_floats(values, device):
    """Every rank's list of floats (each rank passes as many): a list of `world_size` lists, rank order."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if _world() == 1:
        return [t.tolist()]
    gathered = [torch.empty_like(t) for _ in range(_world())]
    torch.distributed.all_gather(gathered, t)
    return [g.tolist() for g in gathered]


@torch.no_grad()
def average_batchnorm_stats(module, device):
    """Average the running mean and variance of every batch norm in `module` over all ranks (each rank's own
    come from its own batches)."""
    stats = [b for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
             and m.track_running_stats and m.running_mean is not None for b in (m.running_mean, m.running_var)]
    if _world() == 1 or not stats:
        return
    flat = torch.cat([b.detach().double().flatten() for b in stats]).to(device)
    torch.distributed.all_reduce(flat)
    flat /= _world()
    for b, v in zip(stats, flat.split([b.numel() for b in stats])):
        b.copy_(v.view_as(b).to(b.device, b.dtype))


@torch.no_grad()
def check_replicas(module, device, what="model", rtol=1e-6):
    """Raise RuntimeError (on every rank) if `module`'s state dict differs between ranks, naming the tensors.
    Compares per tensor its sum and its sum of absolute values (float64), to `rtol` of the latter. Returns this
    rank's checksum: the sum of all entries of the state dict."""
    names, values = [], []
    for name, t in module.state_dict().items():
        t = t.detach().double()
        names.append(name)
        values += [float(t.sum()), float(t.abs().sum())]
    ranks = all_gather_floats(values, device)
    ref = ranks[0]
    bad = {}
    for r, other in enumerate(ranks[1:], 1):
        for i, name in enumerate(names):
            tol = rtol * max(abs(ref[2 * i + 1]), 1e-12)
            if abs(other[2 * i] - ref[2 * i]) > tol or abs(other[2 * i + 1] - ref[2 * i + 1]) > tol:
                bad.setdefault(name, []).append(r)
    if bad:
        listing = ", ".join(f"{n} (ranks {rs})" for n, rs in list(bad.items())[:10])
        raise RuntimeError(f"the ranks hold different {what}s: {len(bad)} of {len(names)} tensors differ from "
                           f"rank 0's: {listing}")
    return sum(values[0::2])
