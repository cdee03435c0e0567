"""What every SSL method is: a torch module with a `backbone` (the network that is exported and evaluated) and a
forward that turns a step's views into its loss."""
from __future__ import annotations

import torch
import torch.nn as nn

from sslfer.backbone import mlp, resnet_backbone


class SSLMethod(nn.Module):
    """views: [2M, 3, S, S], rows 0..M-1 the first views (anchors and their hard negatives), rows M..2M-1 their
    positives. batch: the step's per-view tensors on the device (region [2M, D] descriptors, speaker [M], clip and
    time [2M]). forward returns at least loss (to minimise), l1 and top1 (instance discrimination), all tensors;
    more keys (l2, masked_pairs) are logged when present."""

    backbone: nn.Module

    def begin_step(self, step: int, total_steps: int) -> None:
        """Called before every step (e.g. a momentum schedule)."""

    def forward(self, views: torch.Tensor, batch: dict) -> dict:
        raise NotImplementedError


class ProjectedBackbone(nn.Module):
    """Backbone + projection Linear(feat, hidden) - ReLU - Linear(hidden, proj_dim)."""

    def __init__(self, arch: str, hidden: int, proj_dim: int):
        super().__init__()
        self.backbone, width = resnet_backbone(arch)
        self.projector = mlp(width, hidden, proj_dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x)
