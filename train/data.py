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
from dataclasses import dataclass

import numpy as np
import torch

from sslfer.shards.index import ClipReader, ShardIndex
from sslfer.shards.schema import ClipSample, SchemaError
from train.plan import epoch_plan
from train.sampling import frame_offset_positive, hard_negative, hard_negative_apart, timeaug_positive
from train.settings import TrainConfig

STEP_STREAM = 0x5EED  # keeps a step's sampling apart from the plan's random numbers
READ_ERRORS = (tarfile.TarError, EOFError, OSError, SchemaError, KeyError, ValueError)


@dataclass
class View:
    cid: int
    clip: ClipSample
    frame: int
    swap: int = -1  # which of the frame's FaceSwap composites (-1: the face itself)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of everything random in one step of one rank (frames drawn, FaceSwap, augmentation)."""
    return int(np.random.default_rng([seed, step, rank, STEP_STREAM]).integers(2 ** 62))


def parse_list(text: str, kind=float) -> list:
    return [kind(x) for x in text.replace(" ", "").split(",") if x]


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
        self.by_speaker = index.clips_by_speaker()
        self.time_frames = parse_list(cfg.timeaug_frames, int)
        self.time_weights = parse_list(cfg.timeaug_frame_weights) or [1.0] * len(self.time_frames)
        if len(self.time_weights) != len(self.time_frames) or any(d < 1 for d in self.time_frames):
            raise ValueError(f"timeaug_frames={cfg.timeaug_frames!r} needs positive offsets and as many "
                             f"timeaug_frame_weights ({cfg.timeaug_frame_weights!r})")

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
        stats = {"distinct_clips": len(set(mine.tolist())), "hardneg_missing": 0, "hardneg_other_clip": 0,
                 "hardneg_close": 0, "swaps": 0, "unreadable": 0}
        anchors, positives, extra = [], [], []
        for cid in mine.tolist():
            a = self.view(cid, rng, stats)
            anchors.append(a)
            positives.append(self.positive(a, rng, stats))
            if cfg.hardneg:
                extra.append(self.hard_negative(a, positives[-1], rng, stats))
        anchors += [e[0] for e in extra]
        positives += [e[1] for e in extra]
        images = [self.image(v) for v in anchors] + [self.image(v) for v in positives]
        if cfg.cutmix:
            self.cutmix(images, anchors, rng, stats)
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
        """The TimeAug frame (inside `bounds` when given), maybe as its FaceSwap composite."""
        cfg = self.cfg
        p = a.frame
        if cfg.timeaug:
            p = (frame_offset_positive(len(a.clip), a.frame, rng, self.time_frames, self.time_weights, bounds)
                 if self.time_frames else timeaug_positive(a.clip.time, a.frame, rng, cfg.time_max, bounds))
        swap = -1
        if cfg.faceswap and rng.random() < cfg.p_swap:
            choices = np.flatnonzero(a.clip.swap_slots()[p])  # one of the frame's composites (donors vary)
            if len(choices):
                swap = int(choices[rng.integers(len(choices))]) if len(choices) > 1 else int(choices[0])
        stats["swaps"] += swap >= 0
        return View(a.cid, a.clip, p, swap)

    def hard_negative(self, a: View, p: View, rng, stats) -> tuple[View, View]:
        """The hard negative and its positive. First choice: a frame of the anchor's clip >= T2 from both the
        anchor and its positive, its positive drawn among the frames as far (the group's four negative pairs are
        all >= T2 apart). Else, as the paper states it, a frame >= T2 from the anchor (a pair of the group closer
        than T2 is counted in hardneg_close). Else a frame of another clip of the same speaker; else (no such
        clip: counted) an independent instance of a random clip."""
        times, gap = a.clip.time, self.cfg.hardneg_gap
        apart = hard_negative_apart(times, a.frame, p.frame, rng, gap)
        if apart is not None:
            h = View(a.cid, a.clip, apart[0])
            return h, self.positive(h, rng, stats, apart[1])
        h = hard_negative(times, a.frame, rng, gap)
        if h is not None:
            neg = View(a.cid, a.clip, h)
            neg_pos = self.positive(neg, rng, stats)
            stats["hardneg_close"] += min(abs(times[i] - times[j]) for i in (a.frame, p.frame)
                                          for j in (neg.frame, neg_pos.frame)) < gap - 1e-6
            return neg, neg_pos
        ids, off = self.by_speaker
        spk = int(self.index.speaker[a.cid])
        same = ids[off[spk]:off[spk + 1]]
        same = same[same != a.cid]
        if len(same):
            stats["hardneg_other_clip"] += 1
            neg = self.view(int(same[rng.integers(len(same))]), rng, stats)
        else:
            stats["hardneg_missing"] += 1
            other = int(rng.integers(len(self.index) - 1)) if len(self.index) > 1 else a.cid
            neg = self.view(other + (other >= a.cid) if len(self.index) > 1 else other, rng, stats)
        return neg, self.positive(neg, rng, stats)

    @staticmethod
    def image(view: View) -> np.ndarray:
        if view.swap >= 0:
            return view.clip.image("swaps", view.frame, view.swap)
        return view.clip.image("faces", view.frame)

    def cutmix(self, images: list[np.ndarray], anchors: list[View], rng, stats) -> None:
        """Table 1 row (c): a positive keeps its centre patch (half the side) on another speaker's frame."""
        m = len(anchors)
        speakers = self.index.speaker[[v.cid for v in anchors]]
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
