"""Process-group set-up from torchrun's environment, and gathers across ranks.

`all_gather_grad` is the gather the contrastive loss needs: every rank computes the loss over the global
batch, so the gradient of a rank's own embeddings is the sum over ranks of each rank's gradient of them
(all_reduce in backward); DDP then averages parameter gradients, which gives exactly the single-process
gradient of the global loss."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as tdist


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def setup(device: str, timeout_min: float = 10.0) -> tuple[int, int, str]:
    """Join the process group when launched by torchrun; returns (rank, world, device). A collective that
    waits longer than timeout_min for a rank fails instead of hanging."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        tdist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
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


def gather_messages(message: str | None) -> list[str]:
    """Every rank's message (None where it has none), as 'rank r: message'."""
    if not is_distributed():
        return [f"{message}"] if message else []
    out: list = [None] * world()
    tdist.all_gather_object(out, message)
    return [f"rank {r}: {m}" for r, m in enumerate(out) if m]


def broadcast_object(obj):
    """Rank 0's obj on every rank (pickled)."""
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
