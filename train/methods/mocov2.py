"""MoCo-v2: query encoder, momentum key encoder, a queue of keys from past batches (all ranks)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from train import distributed as dist
from train.losses import moco_loss
from train.methods import register_method
from train.methods.base import ProjectedBackbone, SSLMethod


@register_method("mocov2")
class MoCoV2(SSLMethod):
    def __init__(self, cfg):
        super().__init__()
        self.query = ProjectedBackbone(cfg.arch, cfg.proj_hidden, cfg.proj_dim)
        self.key = copy.deepcopy(self.query).requires_grad_(False)
        self.momentum, self.temperature = cfg.moco_momentum, cfg.temperature
        self.register_buffer("queue", nn.functional.normalize(torch.randn(cfg.moco_queue, cfg.proj_dim), dim=1))
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

    def forward(self, views: torch.Tensor, batch: dict) -> dict:
        x1, x2 = views.chunk(2)
        q = torch.cat([self.query(x1), self.query(x2)])
        with torch.no_grad():
            self._momentum_update()
            k = nn.functional.normalize(torch.cat([self.key(x2), self.key(x1)]).float(), dim=1)
        out = moco_loss(q, k, self.queue.clone().detach(), self.temperature)
        self._enqueue(k[: len(x1)])
        return out
