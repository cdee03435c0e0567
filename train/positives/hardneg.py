"""HardNeg: half of a step's instances are hard negatives, one per anchor: a frame of the same speaker at least T2
(hardneg_gap) away, with its own positive. Frame choices can be confined to a run of frames [lo, hi] (indices,
inclusive): a hard negative's positive is drawn inside the run of frames that are all at least T2 from the anchor
and the anchor's positive, so that every negative of a HardNeg group stays a true one."""
from __future__ import annotations

import numpy as np

from train.positives.base import View


def hard_negative(times: np.ndarray, anchor: int, rng: np.random.Generator, gap: float) -> int | None:
    """A uniformly chosen frame of the same clip at least `gap` seconds from the anchor, or None."""
    far = np.flatnonzero(np.abs(times - times[anchor]) >= gap - 1e-9)
    return int(rng.choice(far)) if len(far) else None


def hard_negative_apart(times: np.ndarray, anchor: int, positive: int, rng: np.random.Generator,
                        gap: float) -> tuple[int, tuple[int, int]] | None:
    """A uniformly chosen frame at least `gap` seconds from both the anchor and its positive, with the run of
    such frames around it (its own positive, drawn inside the run, is then as far from both); or None."""
    far = ((np.abs(times - times[anchor]) >= gap - 1e-9) & (np.abs(times - times[positive]) >= gap - 1e-9))
    idx = np.flatnonzero(far)
    if not len(idx):
        return None
    h = int(idx[rng.integers(len(idx))])
    near = np.flatnonzero(~far)
    lo = int(near[near < h].max()) + 1 if (near < h).any() else 0
    hi = int(near[near > h].min()) - 1 if (near > h).any() else len(times) - 1
    return h, (lo, hi)


class HardNegatives:
    """The hard negative of an anchor and its positive, for the batch builder (its `view` reads clips, its
    `positive` makes positives)."""

    def __init__(self, cfg, builder):
        self.gap, self.builder = cfg.hardneg_gap, builder
        self.by_speaker = builder.index.clips_by_speaker()

    def __call__(self, a: View, p: View, rng, stats) -> tuple[View, View]:
        """First choice: a frame of the anchor's clip >= T2 from both the anchor and its positive, its positive
        drawn among the frames as far (the group's four negative pairs are all >= T2 apart). Else, as the paper
        states it, a frame >= T2 from the anchor (a pair of the group closer than T2 is counted in hardneg_close).
        Else a frame of another clip of the same speaker; else (no such clip: counted) an independent instance of
        a random clip."""
        builder, times, gap = self.builder, a.clip.time, self.gap
        apart = hard_negative_apart(times, a.frame, p.frame, rng, gap)
        if apart is not None:
            h = View(a.cid, a.clip, apart[0])
            return h, builder.positive(h, rng, stats, apart[1])
        h = hard_negative(times, a.frame, rng, gap)
        if h is not None:
            neg = View(a.cid, a.clip, h)
            neg_pos = builder.positive(neg, rng, stats)
            stats["hardneg_close"] += min(abs(times[i] - times[j]) for i in (a.frame, p.frame)
                                          for j in (neg.frame, neg_pos.frame)) < gap - 1e-6
            return neg, neg_pos
        ids, off = self.by_speaker
        index = builder.index
        spk = int(index.speaker[a.cid])
        same = ids[off[spk]:off[spk + 1]]
        same = same[same != a.cid]
        if len(same):
            stats["hardneg_other_clip"] += 1
            neg = builder.view(int(same[rng.integers(len(same))]), rng, stats)
        else:
            stats["hardneg_missing"] += 1
            other = int(rng.integers(len(index) - 1)) if len(index) > 1 else a.cid
            neg = builder.view(other + (other >= a.cid) if len(index) > 1 else other, rng, stats)
        return neg, builder.positive(neg, rng, stats)
