"""TimeAug: the positive is another frame of the same clip, |t| <= T1 from the anchor, drawn from a decreasing
(triangular) density of the offset (the paper), or by sampled-frame offsets with weights (the official code's)."""
from __future__ import annotations

import numpy as np

from train.positives import register_positive
from train.positives.base import PositivePair, View


def parse_list(text: str, kind=float) -> list:
    return [kind(x) for x in text.replace(" ", "").split(",") if x]


def time_offset(rng: np.random.Generator, t_max: float) -> float:
    """|t1| from the decreasing ("downscale") triangular density p(t) = 2 (T1 - t) / T1^2 on [0, T1]:
    inverse CDF of F(t) = 1 - (1 - t/T1)^2. Mean T1/3."""
    return t_max * (1.0 - np.sqrt(1.0 - rng.random()))


def timeaug_positive(times: np.ndarray, anchor: int, rng: np.random.Generator, t_max: float,
                     bounds: tuple[int, int] | None = None) -> int:
    """Index of the frame nearest anchor time ± t1 (random sign; the other sign when that side of the clip, or
    of `bounds`, is too short), never further than t_max from the anchor and never outside `bounds`."""
    lo, hi = bounds if bounds is not None else (0, len(times) - 1)
    t1 = time_offset(rng, t_max)
    sign = 1 if rng.random() < 0.5 else -1
    t0 = times[anchor]
    for s in (sign, -sign):
        target = t0 + s * t1
        if times[lo] - 1e-9 <= target <= times[hi] + 1e-9:
            break
    run = times[lo:hi + 1]
    i = int(np.clip(np.searchsorted(run, target), 1, len(run) - 1)) if len(run) > 1 else 0
    best = lo + (i if len(run) == 1 or abs(run[i] - target) < abs(run[i - 1] - target) else i - 1)
    return best if abs(times[best] - t0) <= t_max + 1e-9 else anchor


def frame_offset_positive(n: int, anchor: int, rng: np.random.Generator, offsets: list[int],
                          weights: list[float], bounds: tuple[int, int] | None = None) -> int:
    """The official code's TimeAug: an offset in sampled frames drawn from `offsets` with `weights`, random
    sign (the other sign when that side of the clip, or of `bounds`, is too short; the far end when neither
    fits)."""
    lo, hi = bounds if bounds is not None else (0, n - 1)
    w = np.asarray(weights, float)
    d = int(np.asarray(offsets)[rng.choice(len(offsets), p=w / w.sum())])
    sign = 1 if rng.random() < 0.5 else -1
    for s in (sign, -sign):
        if lo <= anchor + s * d <= hi:
            return anchor + s * d
    return hi if hi - anchor >= anchor - lo else lo


@register_positive("timeaug")
class TimeAug(PositivePair):
    def __init__(self, cfg, builder):
        super().__init__(cfg, builder)
        self.frames = parse_list(cfg.timeaug_frames, int)
        self.weights = parse_list(cfg.timeaug_frame_weights) or [1.0] * len(self.frames)
        if len(self.weights) != len(self.frames) or any(d < 1 for d in self.frames):
            raise ValueError(f"timeaug_frames={cfg.timeaug_frames!r} needs positive offsets and as many "
                             f"timeaug_frame_weights ({cfg.timeaug_frame_weights!r})")

    def choose(self, anchor: View, positive: View, rng, stats, bounds=None) -> View:
        clip = positive.clip
        frame = (frame_offset_positive(len(clip), anchor.frame, rng, self.frames, self.weights, bounds)
                 if self.frames else timeaug_positive(clip.time, anchor.frame, rng, self.cfg.time_max, bounds))
        return View(positive.cid, clip, frame, positive.swap)
