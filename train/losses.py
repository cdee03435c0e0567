"""Losses as pure functions of embeddings and index tensors (no model, no distributed code).

Views are rows of z. `positive[a]` is the index of view a's positive view. `false_neg[a]` holds the indices of
view a's MaskFN extra positives (-1 = none). `ignore[a, k]` marks pairs that are neither positive nor negative
(near-duplicates: two views of one clip closer in time than T2, from different instances' groups). All
similarities are computed in fp32 with autocast switched off: under bf16 autocast a logit near 14 would be
rounded to steps of 1/16."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def fp32(fn):
    """Run fn with autocast off (its inputs are cast to float inside)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        device = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)
    return wrapped


def near_duplicates(clip: torch.Tensor, time: torch.Tensor, gap: float,
                    group: torch.Tensor | None = None) -> torch.Tensor:
    """[V, V] bool: views of the same clip less than `gap` seconds apart, from different groups (`group`: the
    views of one anchor, its positive, its hard negative and that one's positive share a group; None: every
    view its own). Inside a group every pair is what the method made it (positive, or a hard negative sampled
    to be a negative); between groups two such views can only meet when a step repeats a clip (a corpus with
    fewer clips than a step's anchors). Frames exactly `gap` apart are not near-duplicates: the hard-negative
    sampler accepts them, and frame timestamps such as 12 x 0.24 s = 2.88 s carry rounding errors, hence the
    tolerance."""
    same = clip[:, None] == clip[None, :]
    close = (time[:, None] - time[None, :]).abs() < gap - 1e-6
    if group is None:
        return same & close & ~torch.eye(len(clip), dtype=torch.bool, device=clip.device)
    return same & close & (group[:, None] != group[None, :])



@fp32
def false_negatives(descriptors: torch.Tensor, positive: torch.Tensor, speaker: torch.Tensor,
                    k: int) -> torch.Tensor:
    """MaskFN: per view, the k views whose region descriptors are most cosine-similar, leaving out the view
    itself, its positive and every view of the same speaker (hard negatives included). [V, k], -1 where fewer
    than k candidates exist."""
    d = F.normalize(descriptors.float(), dim=1)
    sim = d @ d.T
    v = len(d)
    banned = speaker[:, None] == speaker[None, :]
    banned |= torch.eye(v, dtype=torch.bool, device=d.device)
    banned[torch.arange(v, device=d.device), positive] = True
    sim = sim.masked_fill(banned, float("-inf"))
    k = min(k, v)
    values, idx = sim.topk(k, dim=1)
    return idx.masked_fill(torch.isinf(values), -1)


@fp32
def info_nce(z: torch.Tensor, positive: torch.Tensor, temperature: float,
             false_neg: torch.Tensor | None = None, fn_weight: float = 0.5,
             positive_in_denominator: bool = False, ignore: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """InfoNCE over all views, with MaskFN terms (paper Eq. 1-2).

    For view a with positive p and false negatives F(a), the negatives N(a) are all views but a, p, F(a) and
    the views k with ignore[a, k];
    L1_a = -log(e^{s_ap} / D_a(p)), L2_a = mean_{l in F(a)} -log(e^{s_al} / D_a(l)), with
    D_a(x) = sum_{k in N(a)} e^{s_ak} (paper), or that plus e^{s_ax} (positive_in_denominator: the SimCLR form of
    the official code). s = cosine similarity / temperature. Returns loss = mean L1 + fn_weight * mean L2 (L2
    over views that have a false negative), l1, l2, the instance-discrimination top-1 (the positive is the most
    similar view among it and the negatives) and masked_pairs (ignored pairs, each counted once)."""
    z = F.normalize(z.float(), dim=1)
    v = len(z)
    rows = torch.arange(v, device=z.device)
    sim = z @ z.T / temperature
    excluded = torch.eye(v, dtype=torch.bool, device=z.device)
    is_positive = torch.zeros_like(excluded)
    is_positive[rows, positive] = True
    if ignore is not None:
        excluded |= ignore
    not_candidate = excluded & ~is_positive  # for top-1: what the positive competes with are the negatives
    excluded |= is_positive
    has_fn = torch.zeros(v, dtype=torch.bool, device=z.device)
    if false_neg is not None and false_neg.numel():
        valid = false_neg >= 0
        r = rows[:, None].expand_as(false_neg)[valid]
        excluded[r, false_neg[valid]] = True
        has_fn = valid.any(1)
    neg_lse = sim.masked_fill(excluded, float("-inf")).logsumexp(1)

    def term(s_pos: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
        return -s_pos + (torch.logaddexp(lse, s_pos) if positive_in_denominator else lse)

    l1 = term(sim[rows, positive], neg_lse).mean()
    l2 = torch.zeros((), device=z.device)
    if has_fn.any():
        valid = false_neg >= 0
        per = term(sim.gather(1, false_neg.clamp(min=0)), neg_lse[:, None].expand_as(false_neg))
        per_view = (per * valid).sum(1) / valid.sum(1).clamp(min=1)
        l2 = per_view[has_fn].mean()
    with torch.no_grad():
        top1 = (sim.masked_fill(not_candidate, float("-inf")).argmax(1) == positive).float().mean()
        masked = ((ignore & ~is_positive).sum() / 2) if ignore is not None else torch.zeros((), device=z.device)
    return {"loss": l1 + fn_weight * l2, "l1": l1, "l2": l2, "top1": top1, "masked_pairs": masked}


@fp32
def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> dict:
    """MoCo: q against its key k (positive) and the queue of past keys (negatives)."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / temperature
    labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
    loss = F.cross_entropy(logits, labels)
    return {"loss": loss, "l1": loss.detach(), "top1": (logits.argmax(1) == 0).float().mean()}


@fp32
def byol_loss(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL: 2 - 2 cos(prediction, target projection), averaged."""
    return (2 - 2 * F.cosine_similarity(p.float(), target.float(), dim=1)).mean()
