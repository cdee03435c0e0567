"""Which clips give each step's anchors: a pure function of the shards' clip order, the seed and the epoch.

An epoch streams the shards in a seeded order, `interleave` of them read side by side (each next clip comes from
a random open shard), and every clip enters a buffer with `uses` (anchors_per_clip) anchors to give. Each step
draws its anchors from the buffer *without replacement*, so a step's anchors are distinct clips whenever the
buffer holds enough; clips with no use left leave the buffer, new ones stream in. The buffer holds
`buffer_factor` x the step's anchors. The plan is global (all ranks together, then split by rank), so a batch's
make-up does not depend on the number of ranks or data workers, and any step can be re-made from (seed, step)
alone: that is what makes resuming exact.

Only a corpus with fewer clips than a step needs anchors gets repeated clips in a step (each clip then as
evenly often as possible); the loss masks the near-duplicates this creates (train/losses.py)."""
from __future__ import annotations

import math

import numpy as np

PLAN_STREAM = 0x51F3  # keeps the plan's random numbers apart from the per-step sampling's


def steps_per_epoch(n_clips: int, anchors_per_step: int, uses: int) -> int:
    """Every clip gives `uses` anchors per epoch; the last, incomplete step is dropped."""
    return max(1, math.floor(n_clips * uses / anchors_per_step))


def stream_order(shards: list[np.ndarray], interleave: int, rng: np.random.Generator) -> np.ndarray:
    """Clip ids in the order an epoch reads them: shards in a random order, `interleave` open at a time, the
    next clip taken from a uniformly chosen open shard (within a shard, clips keep their stored order)."""
    queue = [shards[i] for i in rng.permutation(len(shards)) if len(shards[i])]
    total = sum(len(s) for s in queue)
    out = np.empty(total, np.int64)
    draws = rng.random(total)
    open_shards: list[np.ndarray] = []
    pos: list[int] = []
    nxt = 0
    for i in range(total):
        while len(open_shards) < max(1, interleave) and nxt < len(queue):
            open_shards.append(queue[nxt])
            pos.append(0)
            nxt += 1
        j = int(draws[i] * len(open_shards))
        out[i] = open_shards[j][pos[j]]
        pos[j] += 1
        if pos[j] == len(open_shards[j]):
            del open_shards[j], pos[j]
    return out


def epoch_plan(shards: list[np.ndarray], steps: int, anchors: int, uses: int, buffer_size: int,
               interleave: int, seed: int, epoch: int) -> np.ndarray:
    """[steps, anchors] clip ids of every step's anchors in this epoch."""
    rng = np.random.default_rng([seed, epoch, PLAN_STREAM])
    stream = stream_order(shards, interleave, rng)
    buffer_size = max(buffer_size, anchors)
    plan = np.empty((steps, anchors), np.int64)
    buf = np.empty(0, np.int64)
    left = np.empty(0, np.int64)
    p = 0
    for s in range(steps):
        if len(buf) == 0 and p >= len(stream):  # only when a tiny corpus is used up: read it again
            stream, p = stream_order(shards, interleave, rng), 0
        new = stream[p:p + buffer_size - len(buf)]
        p += len(new)
        buf = np.concatenate([buf, new])
        left = np.concatenate([left, np.full(len(new), uses, np.int64)])
        if len(buf) >= anchors:
            # clips with more uses left are drawn first, so that the buffer stays varied to the epoch's end
            pick = rng.choice(len(buf), anchors, replace=False, p=left / left.sum())
        elif (left - 1).sum() >= anchors - len(buf):  # the epoch's last clips: every one, then their uses left
            tokens = np.repeat(np.arange(len(buf)), left - 1)
            pick = np.concatenate([np.arange(len(buf)), rng.choice(tokens, anchors - len(buf), replace=False)])
        else:  # fewer clips than anchors: every clip, then again, as evenly as possible
            rounds = -(-anchors // len(buf))
            pick = np.concatenate([rng.permutation(len(buf)) for _ in range(rounds)])[:anchors]
        plan[s] = buf[pick]
        np.subtract.at(left, pick, 1)
        keep = left > 0
        buf, left = buf[keep], left[keep]
    return plan
