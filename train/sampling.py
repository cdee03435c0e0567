"""Which frames of a clip make the positive (TimeAug) and the hard negative (HardNeg), by timestamps."""
from __future__ import annotations

import numpy as np


def time_offset(rng: np.random.Generator, t_max: float) -> float:
    """|t1| from the decreasing ("downscale") triangular density p(t) = 2 (T1 - t) / T1^2 on [0, T1]:
    inverse CDF of F(t) = 1 - (1 - t/T1)^2. Mean T1/3."""
    return t_max * (1.0 - np.sqrt(1.0 - rng.random()))


def timeaug_positive(times: np.ndarray, anchor: int, rng: np.random.Generator, t_max: float) -> int:
    """Index of the frame nearest anchor time ± t1 (random sign; the other sign when that side of the clip is
    too short), never further than t_max from the anchor."""
    t1 = time_offset(rng, t_max)
    sign = 1 if rng.random() < 0.5 else -1
    t0 = times[anchor]
    for s in (sign, -sign):
        target = t0 + s * t1
        if times[0] - 1e-9 <= target <= times[-1] + 1e-9:
            break
    i = int(np.clip(np.searchsorted(times, target), 1, len(times) - 1)) if len(times) > 1 else 0
    best = i if len(times) == 1 or abs(times[i] - target) < abs(times[i - 1] - target) else i - 1
    return best if abs(times[best] - t0) <= t_max + 1e-9 else anchor


def hard_negative(times: np.ndarray, anchor: int, rng: np.random.Generator, gap: float) -> int | None:
    """A uniformly chosen frame of the same clip at least `gap` seconds from the anchor, or None."""
    far = np.flatnonzero(np.abs(times - times[anchor]) >= gap - 1e-9)
    return int(rng.choice(far)) if len(far) else None
