"""Process-group set-up from torchrun's or srun's environment, and gathers across ranks.

`all_gather_grad` is the gather the contrastive loss needs: every rank computes the loss over the global
batch, so the gradient of a rank's own embeddings is the sum over ranks of each rank's gradient of them
(all_reduce in backward); DDP then averages parameter gradients, which gives exactly the single-process
gradient of the global loss."""
from __future__ import annotations

import datetime
import os
import subprocess

import torch
import torch.distributed as tdist


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def launch_env(environ=os.environ) -> dict | None:
    """How this process was started, when it is one rank of several: torchrun's variables (RANK, WORLD_SIZE,
    LOCAL_RANK), else srun's for a job step of several tasks (SLURM_PROCID, SLURM_STEP_NUM_TASKS,
    SLURM_LOCALID; a batch script itself has no SLURM_STEP_ID, so `python -m train` run there directly stays
    one process). None for a single process."""
    e = environ
    if int(e.get("WORLD_SIZE", "1")) > 1:
        return {"launcher": "torchrun", "rank": int(e["RANK"]), "world": int(e["WORLD_SIZE"]),
                "local_rank": int(e.get("LOCAL_RANK", "0"))}
    step_tasks = int(e.get("SLURM_STEP_NUM_TASKS", e.get("SLURM_NTASKS", "1")))
    if "SLURM_STEP_ID" in e and step_tasks > 1:
        return {"launcher": "srun", "rank": int(e["SLURM_PROCID"]), "world": step_tasks,
                "local_rank": int(e.get("SLURM_LOCALID", "0"))}
    return None


def _srun_rendezvous(environ=os.environ) -> tuple[str, str]:
    """MASTER_ADDR/MASTER_PORT for srun-launched ranks: as given, else the step's first node and a port from
    the job id (the same on every rank; a requeued job keeps its id)."""
    addr = environ.get("MASTER_ADDR")
    if not addr:
        nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                                 timeout=60)
            addr = out.stdout.split()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            raise RuntimeError(f"srun ranks need MASTER_ADDR (the first node of the job): could not get it from "
                               f"`scontrol show hostnames {nodes}`; export it before srun") from None
    port = environ.get("MASTER_PORT") or str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000)
    return addr, port


def setup(device: str, timeout_min: float = 10.0) -> tuple[int, int, str]:
    """Join the process group when launched by torchrun or srun; returns (rank, world, device). A collective
    that waits longer than timeout_min for a rank fails instead of hanging."""
    env = launch_env()
    if env and not is_distributed():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if env["launcher"] == "srun":
            addr, port = _srun_rendezvous()
            init = f"tcp://{addr}:{port}"
        else:
            init = "env://"
        if device.startswith("cuda"):
            local = env["local_rank"]
            if local >= torch.cuda.device_count():
                raise RuntimeError(f"rank {env['rank']} is local rank {local} but this node shows "
                                   f"{torch.cuda.device_count()} GPU(s): start at most one rank per GPU")
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        tdist.init_process_group(backend, init_method=init, rank=env["rank"], world_size=env["world"],
                                 timeout=datetime.timedelta(minutes=timeout_min))
    return rank(), world(), device


def cleanup():
    if is_distributed():
        tdist.destroy_process_group()


class _GatherGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = [torch.zeros_like(x) for _ in range(tdist.get_world_size())]
        tdist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        tdist.all_reduce(grad)
        n = grad.shape[0] // tdist.get_world_size()
        r = tdist.get_rank()
        return grad[r * n:(r + 1) * n]


def all_gather_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from all ranks (rank order), differentiably."""
    return _GatherGrad.apply(x) if is_distributed() else x


@torch.no_grad()
def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    out = [torch.zeros_like(x) for _ in range(tdist.get_world_size())]
    tdist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        x = x.clone()
        tdist.all_reduce(x)
        x /= tdist.get_world_size()
    return x


def all_true(flag: bool, device: str) -> bool:
    """Whether flag is true on every rank (every rank gets the same answer, so they all act alike)."""
    if not is_distributed():
        return flag
    t = torch.tensor([0 if flag else 1], device=device)
    tdist.all_reduce(t)
    return int(t) == 0


def reduce_max(values: list[int], device: str) -> list[int]:
    """Each value's maximum over the ranks."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def gather_objects(obj) -> list:
    """Every rank's obj, in rank order (pickled)."""
    if not is_distributed():
        return [obj]
    out: list = [None] * world()
    tdist.all_gather_object(out, obj)
    return out


def gather_messages(message: str | None) -> list[str]:
    """Every rank's message (None where it has none), as 'rank r: message'."""
    if not is_distributed():
        return [f"{message}"] if message else []
    return [f"rank {r}: {m}" for r, m in enumerate(gather_objects(message)) if m]


def broadcast_object(obj):
    """Rank 0's obj on every rank (pickled)."""
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
