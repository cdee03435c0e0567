"""BYOL: online network with predictor, EMA target whose momentum goes to 1 by a cosine; symmetric loss."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from sslfer.backbone import mlp
from train.losses import byol_loss
from train.methods import register_method
from train.methods.base import ProjectedBackbone, SSLMethod


@register_method("byol")
class BYOL(SSLMethod):
    def __init__(self, cfg):
        super().__init__()
        hidden, proj_dim = cfg.proj_hidden, cfg.proj_dim
        self.online = ProjectedBackbone(cfg.arch, hidden, proj_dim)
        self.online.projector = mlp(self.online.projector[0].in_features, hidden, proj_dim, bn=True)
        self.predictor = mlp(proj_dim, hidden, proj_dim, bn=True)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.base_momentum = cfg.byol_momentum
        self.progress = 0.0  # fraction of training done

    @property
    def backbone(self):
        return self.online.backbone

    def begin_step(self, step: int, total_steps: int) -> None:
        self.progress = step / max(total_steps, 1)

    @torch.no_grad()
    def _ema(self):
        m = 1 - (1 - self.base_momentum) * (math.cos(math.pi * self.progress) + 1) / 2
        for o, t in zip(self.online.parameters(), self.target.parameters()):
            t.mul_(m).add_(o.detach(), alpha=1 - m)

    def forward(self, views: torch.Tensor, batch: dict) -> dict:
        x1, x2 = views.chunk(2)
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
