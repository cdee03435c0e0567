"""SimCLR's InfoNCE over the views of all ranks, and the paper's method on top of it: TimeAug, HardNeg and FaceSwap
only change which views the batch holds; MaskFN adds in-batch false negatives as extra positives (Eq. 1-2)."""
from __future__ import annotations

import torch

from train import distributed as dist
from train.losses import false_negatives, info_nce, near_duplicates
from train.methods import register_method
from train.methods.base import ProjectedBackbone, SSLMethod


def view_groups(world: int, views_per_rank: int, hardneg: bool, device=None) -> torch.Tensor:
    """Group of each gathered view: a rank's views are [anchors, hard negatives; their positives], and anchor i,
    its hard negative (instance anchors + i) and both positives form one group."""
    local = torch.arange(views_per_rank, device=device) % (views_per_rank // 2)
    if hardneg:
        local = local % (views_per_rank // 4)
    return (torch.arange(world, device=device)[:, None] * views_per_rank + local[None]).reshape(-1)


def contrastive_step(z_local: torch.Tensor, region_local: torch.Tensor, speaker_local: torch.Tensor,
                     clip_local: torch.Tensor, time_local: torch.Tensor, cfg) -> dict:
    """InfoNCE (+ MaskFN) over the views of all ranks. Locally views are [instances; their positives]; two
    views of one clip closer than T2 (hardneg_gap) from different groups are neither positive nor negative."""
    z = dist.all_gather_grad(z_local)
    v = len(z_local)
    positive = (torch.arange(dist.world(), device=z.device)[:, None] * v
                + (torch.arange(v, device=z.device) + v // 2) % v).reshape(-1)
    ignore = near_duplicates(dist.all_gather_nograd(clip_local), dist.all_gather_nograd(time_local),
                             cfg.hardneg_gap, view_groups(dist.world(), v, cfg.hardneg, z.device))
    false_neg = None
    if cfg.maskfn:
        region = dist.all_gather_nograd(region_local)
        speaker = dist.all_gather_nograd(speaker_local.repeat(2))
        false_neg = false_negatives(region, positive, speaker, cfg.n_fn)
    return info_nce(z, positive, cfg.temperature, false_neg, cfg.fn_weight, cfg.positive_in_denominator, ignore)


@register_method("simclr")
class SimCLR(ProjectedBackbone, SSLMethod):
    """InfoNCE over 2N views (+ MaskFN when cfg.maskfn)."""

    def __init__(self, cfg):
        super().__init__(cfg.arch, cfg.proj_hidden, cfg.proj_dim)
        self.cfg = cfg

    def forward(self, views: torch.Tensor, batch: dict) -> dict:
        return contrastive_step(self.project(views).float(), batch["region"], batch["speaker"], batch["clip"],
                                batch["time"], self.cfg)
