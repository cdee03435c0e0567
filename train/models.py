"""Networks: a torchvision ResNet backbone with a projection MLP (SimCLR and the paper's method), MoCo-v2 and
BYOL wrappers. Each wrapper's `forward(view1, view2)` returns what its loss needs."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from sslfer.backbone import mlp, resnet_backbone
from train import distributed as dist
from train.losses import byol_loss, moco_loss


class Contrastive(nn.Module):
    """Backbone + projection Linear(feat, hidden) - ReLU - Linear(hidden, proj_dim)."""

    def __init__(self, arch: str, hidden: int, proj_dim: int):
        super().__init__()
        self.backbone, width = resnet_backbone(arch)
        self.projector = mlp(width, hidden, proj_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


class MoCo(nn.Module):
    """MoCo-v2: query encoder, momentum key encoder, a queue of keys from past batches (all ranks)."""

    def __init__(self, arch: str, hidden: int, proj_dim: int, queue: int, momentum: float, temperature: float):
        super().__init__()
        self.query = Contrastive(arch, hidden, proj_dim)
        self.key = copy.deepcopy(self.query).requires_grad_(False)
        self.momentum, self.temperature = momentum, temperature
        self.register_buffer("queue", nn.functional.normalize(torch.randn(queue, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def backbone(self):
        return self.query.backbone

    @torch.no_grad()
    def _momentum_update(self):
        for q, k in zip(self.query.parameters(), self.key.parameters()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor):
        keys = dist.all_gather_nograd(keys)
        n, size = len(keys), len(self.queue)
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % size)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> dict:
        q = torch.cat([self.query(x1), self.query(x2)])
        with torch.no_grad():
            self._momentum_update()
            k = nn.functional.normalize(torch.cat([self.key(x2), self.key(x1)]).float(), dim=1)
        out = moco_loss(q, k, self.queue.clone().detach(), self.temperature)
        self._enqueue(k[: len(x1)])
        return out


class BYOL(nn.Module):
    """BYOL: online network with predictor, EMA target; symmetric loss."""

    def __init__(self, arch: str, hidden: int, proj_dim: int, momentum: float):
        super().__init__()
        self.online = Contrastive(arch, hidden, proj_dim)
        self.online.projector = mlp(self.online.projector[0].in_features, hidden, proj_dim, bn=True)
        self.predictor = mlp(proj_dim, hidden, proj_dim, bn=True)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.base_momentum = momentum
        self.progress = 0.0  # fraction of training done, set by the loop (momentum -> 1 by a cosine)

    @property
    def backbone(self):
        return self.online.backbone

    @torch.no_grad()
    def _ema(self):
        m = 1 - (1 - self.base_momentum) * (math.cos(math.pi * self.progress) + 1) / 2
        for o, t in zip(self.online.parameters(), self.target.parameters()):
            t.mul_(m).add_(o.detach(), alpha=1 - m)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> dict:
        p1, p2 = self.predictor(self.online(x1)), self.predictor(self.online(x2))
        with torch.no_grad():
            self._ema()
            t1, t2 = self.target(x1), self.target(x2)
        loss = byol_loss(p1, t2) / 2 + byol_loss(p2, t1) / 2
        with torch.no_grad():
            z = nn.functional.normalize(torch.cat([p1, p2]).float(), dim=1)
            t = nn.functional.normalize(torch.cat([t2, t1]).float(), dim=1)
            top1 = ((z @ t.T).argmax(1) == torch.arange(len(z), device=z.device)).float().mean()
        return {"loss": loss, "l1": loss.detach(), "top1": top1}


def build_model(cfg) -> nn.Module:
    if cfg.method == "simclr":
        return Contrastive(cfg.arch, cfg.proj_hidden, cfg.proj_dim)
    if cfg.method == "mocov2":
        return MoCo(cfg.arch, cfg.proj_hidden, cfg.proj_dim, cfg.moco_queue, cfg.moco_momentum, cfg.temperature)
    if cfg.method == "byol":
        return BYOL(cfg.arch, cfg.proj_hidden, cfg.proj_dim, cfg.byol_momentum)
    raise ValueError(f"method={cfg.method!r}: expected simclr, mocov2 or byol")
