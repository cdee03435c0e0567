"""FaceSwap: with probability p_swap the positive is one of its frame's stored composites (the frame's inner face
on another person's head, made by `make shards`)."""
from __future__ import annotations

import numpy as np

from train.positives import register_positive
from train.positives.base import PositivePair, View


@register_positive("faceswap")
class FaceSwap(PositivePair):
    def choose(self, anchor: View, positive: View, rng, stats, bounds=None) -> View:
        if rng.random() >= self.cfg.p_swap:
            return positive
        choices = np.flatnonzero(positive.clip.swap_slots()[positive.frame])  # one of the composites (donors vary)
        if not len(choices):
            return positive
        swap = int(choices[rng.integers(len(choices))]) if len(choices) > 1 else int(choices[0])
        return View(positive.cid, positive.clip, positive.frame, swap)
