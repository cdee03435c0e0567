"""Which frames of a clip make the positive (TimeAug) and the hard negative (HardNeg), by timestamps.

Frame choices can be confined to a run of frames [lo, hi] (indices, inclusive): a hard negative's positive is
drawn inside the run of frames that are all at least T2 from the anchor and the anchor's positive, so that every
negative of a HardNeg group stays a true one."""
from __future__ import annotations

import numpy as np


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
