"""CutMix (Table 1 row c): with probability p_swap a positive keeps its centre patch (half the side) on another
speaker's frame of the batch."""
from __future__ import annotations

import numpy as np

from train.positives import register_positive
from train.positives.base import PositivePair


@register_positive("cutmix")
class CutMix(PositivePair):
    def edit_images(self, images, anchors, rng, stats) -> None:
        m = len(anchors)
        speakers = self.builder.index.speaker[[v.cid for v in anchors]]
        for i in range(m):
            if rng.random() >= self.cfg.p_swap:
                continue
            others = np.flatnonzero(speakers != speakers[i])
            if not len(others):
                continue
            donor = images[m + int(others[rng.integers(len(others))])].copy()
            s = donor.shape[0]
            lo, hi = s // 4, s - s // 4
            donor[lo:hi, lo:hi] = images[m + i][lo:hi, lo:hi]
            images[m + i] = donor
            stats["swaps"] += 1
