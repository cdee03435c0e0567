"""Batches from the shards: index the shards once (where each clip sample lies), plan which clips give each
step's anchors (train/plan.py), then per step read those clips and assemble the views.

A batch holds M instances, each with two views: rows 0..M-1 are the first views (anchors, and with HardNeg their
hard negatives), rows M..2M-1 their positives (TimeAug frame, maybe its FaceSwap composite or a CutMix).
`batch_size` counts instances: with HardNeg half of them are hard negatives (a frame of the same speaker >= T2
away, with its own positive). Everything random in a step comes from (seed, step, rank), so any step can be
made again exactly: resuming needs only the step number."""
from __future__ import annotations

import tarfile
import warnings

import numpy as np
import torch

from sslfer.shards.index import ClipReader, ShardIndex
from sslfer.shards.schema import ClipSample, SchemaError
from train.plan import epoch_plan
from train.positives import View, active_pieces
from train.positives.hardneg import HardNegatives
from train.settings import TrainConfig

STEP_STREAM = 0x5EED  # keeps a step's sampling apart from the plan's random numbers
READ_ERRORS = (tarfile.TarError, EOFError, OSError, SchemaError, KeyError, ValueError)
# what a step's batch counts (its "stats"): summed over the ranks into every log row, the run's totals and summary
BATCH_COUNTS = ("distinct_clips", "hardneg_missing", "hardneg_other_clip", "hardneg_close", "swaps", "unreadable")


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of everything random in one step of one rank (frames drawn, FaceSwap, augmentation)."""
    return int(np.random.default_rng([seed, step, rank, STEP_STREAM]).integers(2 ** 62))


class BatchStream(torch.utils.data.IterableDataset):
    """This rank's batches for steps [start_step, end_step). With W loader workers, worker w makes steps
    start_step + w, + W, ... (the order in which the DataLoader hands them out)."""

    def __init__(self, index: ShardIndex, cfg: TrainConfig, rank: int, world: int, start_step: int,
                 end_step: int, steps_per_epoch: int, augment_here: bool = False):
        self.index, self.cfg, self.rank, self.world = index, cfg, rank, world
        self.start_step, self.end_step, self.steps_per_epoch = start_step, end_step, steps_per_epoch
        self.augment_here = augment_here  # CPU training: augment in the loader workers, in parallel
        self.anchors = anchors_per_step(cfg)  # over all ranks
        self.local = self.anchors // world
        self._plan: tuple[int, np.ndarray] | None = None
        self._reader: ClipReader | None = None
        self._bad: set[int] = set()
        self.pieces = active_pieces(cfg, self)  # TimeAug, FaceSwap, CutMix, yours: train/positives/
        self.hard_negative = HardNegatives(cfg, self) if cfg.hardneg else None

    def plan(self, epoch: int) -> np.ndarray:
        if self._plan is None or self._plan[0] != epoch:
            cfg = self.cfg
            p = epoch_plan(self.index.shard_clips(), self.steps_per_epoch, self.anchors, cfg.anchors_per_clip,
                           cfg.shuffle_factor * self.anchors, cfg.interleave_shards, cfg.seed, epoch)
            self._plan = (epoch, p)
        return self._plan[1]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        for step in range(self.start_step + worker, self.end_step, workers):
            yield self.batch(step)

    # ---------------------------------------------------------------- one step
    def batch(self, step: int) -> dict:
        cfg = self.cfg
        epoch, j = divmod(step, self.steps_per_epoch)
        mine = self.plan(epoch)[j, self.rank * self.local:(self.rank + 1) * self.local]
        seed = step_seed(cfg.seed, step, self.rank)
        rng = np.random.default_rng(seed)
        stats = {**dict.fromkeys(BATCH_COUNTS, 0), "distinct_clips": len(set(mine.tolist()))}
        anchors, positives, extra = [], [], []
        for cid in mine.tolist():
            a = self.view(cid, rng, stats)
            anchors.append(a)
            positives.append(self.positive(a, rng, stats))
            if self.hard_negative:
                extra.append(self.hard_negative(a, positives[-1], rng, stats))
        anchors += [e[0] for e in extra]
        positives += [e[1] for e in extra]
        images = [self.image(v) for v in anchors] + [self.image(v) for v in positives]
        for piece in self.pieces:
            piece.edit_images(images, anchors, rng, stats)
        views = anchors + positives
        batch = {
            "step": step,
            "images": np.stack(images).transpose(0, 3, 1, 2),
            "boxes": np.stack([v.clip.boxes[v.frame] for v in views]).astype(np.float32),
            "region": np.stack([v.clip.region[v.frame] for v in views]).astype(np.float32),
            "speaker": self.index.speaker[[v.cid for v in anchors]],
            "clip": self.index.origin[[v.cid for v in views]],  # windows of one clip are one clip here
            "time": np.array([v.clip.time[v.frame] for v in views], np.float64),
            "offset": np.array([p.clip.time[p.frame] - a.clip.time[a.frame] for a, p in zip(anchors, positives)
                                if p.cid == a.cid], np.float32),
            "stats": stats,
        }
        if self.augment_here:
            from sslfer.augment import augment

            gen = torch.Generator().manual_seed(seed)
            batch["views"] = augment(torch.from_numpy(batch.pop("images")), torch.from_numpy(batch["boxes"]),
                                     cfg.image_size, gen, **augment_options(cfg, len(views)))[0]
        return batch

    def load(self, cid: int, rng, stats) -> tuple[int, ClipSample]:
        """The clip, or when it cannot be read, a readable one drawn at random (counted, warned once)."""
        if self._reader is None:
            self._reader = ClipReader(self.index, cache=max(64, 4 * self.local))
        last = None
        for _ in range(64):
            if cid not in self._bad:
                try:
                    return cid, self._reader.get(cid)
                except READ_ERRORS as e:
                    self._bad.add(cid)
                    last = f"{self.index.paths[self.index.shard[cid]].name}: {type(e).__name__}: {e}"
                    warnings.warn(f"skipping unreadable clip {self.index.keys[cid]!r} in {last}")
            stats["unreadable"] += 1
            cid = int(rng.integers(len(self.index)))
        raise RuntimeError(f"rank {self.rank}: no readable clip sample in 64 tries (last: {last}); check the "
                           f"shards (`make shards` again)")

    def view(self, cid: int, rng, stats) -> View:
        cid, clip = self.load(cid, rng, stats)
        return View(cid, clip, int(rng.integers(len(clip))))


    def positive(self, a: View, rng, stats, bounds: tuple[int, int] | None = None) -> View:
        """The anchor's frame, passed through every active positive-pair piece (inside `bounds` when given)."""
        p = View(a.cid, a.clip, a.frame)
        for piece in self.pieces:
            p = piece.choose(a, p, rng, stats, bounds)
        stats["swaps"] += p.swap >= 0
        return p

    @staticmethod
    def image(view: View) -> np.ndarray:
        if view.swap >= 0:
            return view.clip.image("swaps", view.frame, view.swap)
        return view.clip.image("faces", view.frame)


def anchors_per_step(cfg: TrainConfig) -> int:
    """batch_size counts instances; with HardNeg half of them are the anchors' hard negatives."""
    return cfg.batch_size // 2 if cfg.hardneg else cfg.batch_size


def augment_options(cfg: TrainConfig, n_views: int) -> dict:
    """The augmentation's probabilities; colour jitter has its own for the first views (anchors and hard
    negatives) and the second (positives)."""
    half = n_views // 2
    p_colour = torch.tensor([cfg.p_colour_first] * half + [cfg.p_colour] * (n_views - half))
    return {"p_mask": cfg.p_landmark_mask, "p_colour": p_colour, "p_blur": cfg.p_blur, "p_gray": cfg.p_gray,
            "blur_kernel": cfg.blur_kernel}
