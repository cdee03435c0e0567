"""How batches are made, simulated at full size (bookkeeping only, no images): `make bench-batches`.

1. Make-up of a step's batch at VoxCeleb1's clip lengths (min 4 s, mean 8.2 s, at 25/6 fps), 256 anchors per
   step (SimCLR's batch; the method's presets have 128 anchors + 128 hard negatives): distinct clips, same-clip
   anchor pairs < 1 s apart and identical-frame pairs, for 1 and 8 GPUs x 4 loader workers. Baseline: the
   previous loader (per-worker buffer of 64 clips, anchors drawn with replacement), emulated step by step.
2. Mixing: distinct batch-mates per clip over 10 epochs of a 2,000-clip corpus (shards of ~430 clips, VoxCeleb1's
   ~600 KB clips in 256 MB shards), against an ideal uniform shuffle of the whole corpus every epoch (the same
   steps per epoch). Target >= 0.8.
3. Planning time per epoch at 15k and 153k clips (VoxCeleb1): it must grow linearly.
4. HardNeg groups (anchor, its positive, its hard negative, that one's positive) at VoxCeleb1's clip lengths and
   at 4 s (the shortest clips): how many of a group's four same-identity negative pairs are closer than T2, for
   `sslfer` (T1 1 s by time, T2 3 s) and `official` (2-6 frames, T2 2.88 s). Baseline: the previous sampler (hard
   negative >= T2 from the anchor only, its positive unconstrained; every pair closer than T2 masked out of the
   loss). Now: the hard negative and its positive are drawn >= T2 from both the anchor and its positive when the
   clip allows, and the mask applies only between groups.

Prints Markdown for docs/performance.md."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.plan import epoch_plan, steps_per_epoch  # noqa: E402
from train.positives.hardneg import hard_negative, hard_negative_apart  # noqa: E402
from train.positives.timeaug import frame_offset_positive, timeaug_positive  # noqa: E402

FPS = 25 / 6


def voxceleb_clip_frames(n: int, rng) -> np.ndarray:
    seconds = np.minimum(4.0 + rng.exponential(4.2, n), 145.0)  # min 4 s, mean ~8.2 s
    return np.floor(seconds * FPS).astype(int)


def shards_of(n_clips: int, per_shard: int) -> list[np.ndarray]:
    ids = np.arange(n_clips)
    return [ids[i:i + per_shard] for i in range(0, n_clips, per_shard)]


def batch_mates(plans: list[np.ndarray], n: int) -> np.ndarray:
    """Per clip, how many distinct other clips shared a step with it over all the plans ([steps, anchors])."""
    met = np.zeros((n, n), bool)
    for plan in plans:
        for row in plan:
            u = np.unique(row)
            met[np.ix_(u, u)] = True
    np.fill_diagonal(met, False)
    return met.sum(1)


def ideal_batch_mates(n: int, anchors: int, epochs: int, steps: int, seed: int = 0) -> float:
    """The same count when every epoch is a uniform random shuffle of the whole corpus."""
    rng = np.random.default_rng(seed)
    plans = [rng.permutation(n)[:steps * anchors].reshape(steps, anchors) for _ in range(epochs)]
    return float(batch_mates(plans, n).mean())


def previous_loader_steps(frames: np.ndarray, shards: list[np.ndarray], anchors: int, uses: int, world: int,
                          workers: int, steps: int, seed: int = 0) -> list[list[tuple[int, int]]]:
    """The previous ShardStream's bookkeeping, step by step: each (rank, worker) reads its shards (or, with
    fewer shards than readers, every k-th sample), keeps a buffer of 64 clips, draws its anchors with
    replacement and drops a clip once it gave `uses` anchors. Returns each global step's (clip, frame) anchors."""
    readers = world * workers
    local = anchors // world
    out_by_reader = []
    for reader in range(readers):
        rng = np.random.default_rng([seed, 0, reader])
        worker = reader % workers
        quota = steps // workers + (worker < steps % workers)
        by_shard = len(shards) >= readers
        mine = shards[reader::readers] if by_shard else shards
        share = min(readers, len(frames))

        def stream():
            while True:
                n = 0
                for i in (rng.permutation(len(mine)) if by_shard else range(len(mine))):
                    for cid in mine[i]:
                        if by_shard or n % share == reader % share:
                            yield int(cid)
                        n += 1
        source = stream()
        buffer, used, batches = [], [], []
        for _ in range(quota):
            while len(buffer) < 64:
                buffer.append(next(source))
                used.append(0)
            batch = []
            for _ in range(local):
                b = int(rng.integers(len(buffer)))
                used[b] += 1
                batch.append((buffer[b], int(rng.integers(frames[buffer[b]]))))
            batches.append(batch)
            keep = [i for i, u in enumerate(used) if u < uses]
            buffer, used = [buffer[i] for i in keep], [used[i] for i in keep]
        out_by_reader.append(batches)
    steps_out = []
    for s in range(steps):
        worker, k = s % workers, s // workers
        steps_out.append(sum((out_by_reader[r * workers + worker][k] for r in range(world)), []))
    return steps_out


def planned_steps(frames: np.ndarray, shards, anchors: int, uses: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    plan = epoch_plan(shards, steps, anchors, uses, 4 * anchors, 16, seed, 0)
    return [[(int(c), int(rng.integers(frames[c]))) for c in row] for row in plan]


def make_up(steps: list[list[tuple[int, int]]]) -> dict:
    distinct, close, same = [], [], []
    for batch in steps:
        clips = np.array([c for c, _ in batch])
        fr = np.array([f for _, f in batch])
        distinct.append(len(set(clips.tolist())))
        i, j = np.triu_indices(len(batch), 1)
        same_clip = clips[i] == clips[j]
        close.append(int((same_clip & (np.abs(fr[i] - fr[j]) / FPS < 1.0)).sum()))
        same.append(int((same_clip & (fr[i] == fr[j])).sum()))
    return {"distinct": np.mean(distinct), "close": np.mean(close), "same": np.mean(same)}


SAMPLERS = {  # preset: (T2, TimeAug positive of frame i of a clip's timestamps, within bounds)
    "sslfer": (3.0, lambda t, i, rng, b: timeaug_positive(t, i, rng, 1.0, b)),
    "official": (2.88, lambda t, i, rng, b: frame_offset_positive(len(t), i, rng, [2, 3, 4, 5, 6], [5, 4, 3, 2, 1],
                                                                  b)),
}


def hardneg_groups(frames: np.ndarray, preset: str, apart: bool, seed: int = 0) -> dict:
    """Per group: the four negative pairs' distances; with `apart` the sampler of train/data.py (the hard
    negative >= T2 from anchor and positive, falling back to >= T2 from the anchor), else the previous one."""
    gap, positive = SAMPLERS[preset]
    rng = np.random.default_rng(seed)
    close_groups = close_pairs = fallback = close_with_room = 0
    for n in frames:
        t = np.arange(n) / FPS
        a = int(rng.integers(n))
        p = positive(t, a, rng, None)
        found = hard_negative_apart(t, a, p, rng, gap) if apart else None
        if found is not None:
            h, hp = found[0], positive(t, found[0], rng, found[1])
        else:
            fallback += apart
            h = hard_negative(t, a, rng, gap)
            if h is None:  # the sampler takes another clip of the speaker: no pair of one clip
                continue
            hp = positive(t, h, rng, None)
        close = sum(abs(t[i] - t[j]) < gap - 1e-6 for i in (a, p) for j in (h, hp))
        close_groups += close > 0
        close_pairs += close
        close_with_room += close > 0 and found is not None
    return {"groups": close_groups / len(frames), "pairs": close_pairs / (4 * len(frames)),
            "fallback": fallback / len(frames), "close_with_room": close_with_room}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=20000, help="corpus for the make-up table")
    ap.add_argument("--steps", type=int, default=40, help="steps simulated for the make-up table")
    ap.add_argument("--mixing-clips", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--per-shard", type=int, default=430, help="clips per shard (256 MB of ~600 KB clips)")
    ap.add_argument("--groups", type=int, default=100000, help="HardNeg groups simulated per row")
    a = ap.parse_args()
    rng = np.random.default_rng(0)

    print("### Make-up of a step's batch (256 anchors, VoxCeleb1 clip lengths, "
          f"{a.clips:,} clips in shards of {a.per_shard})\n")
    print("| loader | GPUs x workers | distinct clips | same-clip pairs < 1 s | identical-frame pairs |")
    print("|---|---|---:|---:|---:|")
    frames = voxceleb_clip_frames(a.clips, rng)
    shards = shards_of(a.clips, a.per_shard)
    for world in (1, 8):
        old = make_up(previous_loader_steps(frames, shards, 256, 1, world, 4, a.steps))
        print(f"| previous (buffer of 64, with replacement) | {world} x 4 | {old['distinct']:.1f} | "
              f"{old['close']:.1f} | {old['same']:.1f} |")
    new = make_up(planned_steps(frames, shards, 256, 1, a.steps))
    print(f"| planned (buffer of 4 x 256, without replacement) | any | {new['distinct']:.1f} | "
          f"{new['close']:.1f} | {new['same']:.1f} |")

    n, e = a.mixing_clips, a.epochs
    print(f"\n### Mixing: distinct batch-mates per clip over {e} epochs, {n:,} clips, shards of {a.per_shard}\n")
    print("| anchors per step | steps per epoch | planned | ideal uniform shuffle | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for anchors in (128, 256):
        steps = steps_per_epoch(n, anchors, 1)
        plans = [epoch_plan(shards_of(n, a.per_shard), steps, anchors, 1, 4 * anchors, 16, 0, ep)
                 for ep in range(e)]
        got = float(batch_mates(plans, n).mean())
        ideal = ideal_batch_mates(n, anchors, e, steps)
        print(f"| {anchors} | {steps} | {got:.0f} | {ideal:.0f} | **{got / ideal:.2f}** |")

    print("\n### Planning time per epoch (128 anchors per step, shards of 430)\n")
    print("| clips | seconds | µs per clip |")
    print("|---:|---:|---:|")
    for n in (15_352, 153_516):
        shards = shards_of(n, a.per_shard)
        t = time.perf_counter()
        epoch_plan(shards, steps_per_epoch(n, 128, 1), 128, 1, 512, 16, 0, 0)
        dt = time.perf_counter() - t
        print(f"| {n:,} | {dt:.2f} | {dt / n * 1e6:.1f} |")

    print(f"\n### HardNeg groups: same-identity negatives closer than T2 inside a group ({a.groups:,} groups)\n")
    print("| preset | clips | previous: groups / pairs masked | now: groups with a pair < T2 where the clip has "
          "room | now: clip without room (groups) | now: groups / pairs < T2 there, kept as negatives |")
    print("|---|---|---:|---:|---:|---:|")
    lengths = {"VoxCeleb1 lengths": voxceleb_clip_frames(a.groups, rng),
               "4 s": np.full(a.groups, int(4 * FPS))}
    for preset in SAMPLERS:
        for name, frames in lengths.items():
            old = hardneg_groups(frames, preset, apart=False)
            new = hardneg_groups(frames, preset, apart=True)
            print(f"| {preset} | {name} | {old['groups']:.1%} / {old['pairs']:.1%} | {new['close_with_room']} | "
                  f"{new['fallback']:.1%} | {new['groups']:.1%} / {new['pairs']:.1%} |")


if __name__ == "__main__":
    main()
