"""Streaming batches from the shards: plain iterator stages (shard list -> samples -> shuffle buffer -> batches).

A batch holds M instances, each with two views: view a (rows 0..M-1) is the anchor frame, view a+M its positive
(TimeAug frame, maybe its FaceSwap composite or a CutMix). With HardNeg, every anchor brings a second instance:
a frame of the same speaker >= T2 away with its own positive, so M = 2 x anchors."""
from __future__ import annotations

import hashlib
import math
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from preprocess.schema import ClipSample, SchemaError
from train.sampling import hard_negative, timeaug_positive
from train.settings import TrainConfig


def _tar_files(f, skip_ext: frozenset) -> Iterator[tuple[str, bytes]]:
    """(name, content) of the regular files of a tar stream, b"" for those whose extension is in skip_ext
    (seeked over, not read). A small reader: the tarfile module costs ~40 us per member, and a clip sample has
    14 members. Handles ustar prefixes and pax long names; raises ValueError on a damaged header, EOFError on a
    truncated file."""
    long_name = None
    while True:
        header = f.read(512)
        if len(header) < 512:
            raise EOFError("truncated tar (no end-of-archive marker)")
        if header.count(0) == 512:
            return
        stored = int(header[148:156].strip(b"\0 ") or b"-1", 8)
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise ValueError("damaged tar header (checksum)")
        size = int(header[124:136].strip(b"\0 ") or b"0", 8)
        kind = header[156:157]
        name = header[:100].rstrip(b"\0").decode()
        prefix = header[345:500].rstrip(b"\0").decode() if header[257:262] == b"ustar" else ""
        name = f"{prefix}/{name}" if prefix else name
        padded = (size + 511) // 512 * 512
        if kind == b"x":  # pax header: records "<len> key=value\n"; only the path matters here
            data = f.read(padded)[:size].decode()
            for record in data.splitlines():
                key_value = record.split(" ", 1)[1] if " " in record else ""
                if key_value.startswith("path="):
                    long_name = key_value[5:]
            continue
        name, long_name = long_name or name, None
        if kind not in (b"0", b"\0") or name.rsplit("/", 1)[-1].split(".", 1)[-1] in skip_ext:
            f.seek(padded, 1)
            if kind in (b"0", b"\0"):
                yield name, b""
            continue
        data = f.read(padded)
        if len(data) < padded:
            raise EOFError(f"truncated tar (in {name})")
        yield name, data[:size]


def iter_tar_samples(path: Path, skip: frozenset = frozenset()) -> Iterator[dict]:
    """Raw WebDataset samples of one tar (files grouped by key, in order), without reading the files whose
    extension is in `skip`. Raises on a damaged tar."""
    current: dict | None = None
    with open(path, "rb", buffering=1 << 20) as f:
        for name, data in _tar_files(f, skip):
            base = name.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            key, ext = name[: len(name) - len(base)] + base.split(".", 1)[0], base.split(".", 1)[1]
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[ext] = data
    if current is not None:
        yield current


# sample files the trainer never reads (the eye and mouth crops are for region embeddings, made offline)
UNUSED = frozenset({"eyes.jpgs", "mouth.jpgs", "landmarks.npy", "frame.npy"})


def speaker_id(name: str) -> int:
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:7], "big")


@dataclass
class View:
    clip: ClipSample
    frame: int
    swap: bool = False


class ShardStream(torch.utils.data.IterableDataset):
    """Yields exactly `batches` batches per rank and epoch, split over the data-loader workers.

    Each (rank, worker) reads its own shards (or, with fewer shards than readers, its own share of the
    samples), cycling through them in a seeded order, with a shuffle buffer of clips."""

    def __init__(self, shards: list[Path], cfg: TrainConfig, rank: int, world: int, batches: int, epoch: int,
                 local_anchors: int, n_clips: int, augment_here: bool = False):
        self.shards, self.cfg, self.rank, self.world, self.n_clips = shards, cfg, rank, world, n_clips
        self.augment_here = augment_here  # CPU training: augment in the loader workers, in parallel
        self.batches, self.epoch, self.local_anchors = batches, epoch, local_anchors

    def _reader_share(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        readers, reader = self.world * workers, self.rank * workers + worker
        quota = self.batches // workers + (worker < self.batches % workers)
        return readers, reader, quota

    def samples(self, readers: int, reader: int, rng: np.random.Generator) -> Iterator[ClipSample]:
        """This reader's clips, endlessly. With at least as many shards as readers, whole shards (in a seeded
        order each pass); otherwise every reader reads all shards in a fixed order and keeps every k-th sample
        (k = readers, or the number of clips when there are fewer clips than readers)."""
        by_shard = len(self.shards) >= readers
        mine = self.shards[reader::readers] if by_shard else list(self.shards)
        share = min(readers, max(self.n_clips, 1))
        bad: set[Path] = set()
        while True:
            produced = False
            n = 0
            for i in (rng.permutation(len(mine)) if by_shard else range(len(mine))):
                path = mine[i]
                if path in bad:
                    continue
                try:
                    for raw in iter_tar_samples(path, UNUSED):
                        if by_shard or n % share == reader % share:
                            produced = True
                            yield ClipSample.from_wds(raw)
                        n += 1
                except (tarfile.TarError, EOFError, OSError, SchemaError, KeyError, ValueError) as e:
                    bad.add(path)
                    self.bad_shards += 1
                    warnings.warn(f"skipping damaged shard {path.name}: {e}")
            if not produced:
                raise RuntimeError("no readable sample in this reader's shards")

    def __iter__(self):
        readers, reader, quota = self._reader_share()
        rng = np.random.default_rng([self.cfg.seed, self.epoch, reader])
        self.bad_shards = 0
        stream = self.samples(readers, reader, rng)
        buffer: list[ClipSample] = []
        uses: list[int] = []
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        for _ in range(quota):
            while len(buffer) < self.cfg.shuffle_clips:
                try:
                    buffer.append(next(stream))
                except StopIteration:
                    break
                uses.append(0)
            batch = self.make_batch(buffer, uses, rng)
            if self.augment_here:
                batch["views"] = self.augment(batch.pop("images"), batch["boxes"], gen)
            yield batch
            for i in sorted((i for i, u in enumerate(uses) if u >= self.cfg.anchors_per_clip), reverse=True):
                buffer.pop(i)
                uses.pop(i)

    def make_batch(self, buffer: list[ClipSample], uses: list[int], rng: np.random.Generator) -> dict:
        cfg = self.cfg
        anchors, positives = [], []
        stats = {"hardneg_missing": 0, "swaps": 0, "positives_same_frame": 0}
        extra: list[tuple[View, View]] = []
        for _ in range(self.local_anchors):
            b = int(rng.integers(len(buffer)))
            uses[b] += 1
            clip = buffer[b]
            a = int(rng.integers(len(clip)))
            anchors.append(View(clip, a))
            positives.append(self.positive(clip, a, rng, stats))
            if cfg.hardneg:
                neg = self.hard_negative(buffer, b, a, rng)
                if neg is None:  # counted; its slot gets an independent instance instead (never a duplicate)
                    stats["hardneg_missing"] += 1
                    c = buffer[int(rng.integers(len(buffer)))]
                    neg = View(c, int(rng.integers(len(c))))
                extra.append((neg, self.positive(neg.clip, neg.frame, rng, stats)))
        anchors += [e[0] for e in extra]
        positives += [e[1] for e in extra]
        images = [self.image(v) for v in anchors] + [self.image(v) for v in positives]
        if cfg.cutmix:
            self.cutmix(images, anchors, rng, stats)
        views = anchors + positives
        return {
            "images": np.stack(images).transpose(0, 3, 1, 2),
            "boxes": np.stack([v.clip.boxes[v.frame] for v in views]).astype(np.float32),
            "region": np.stack([v.clip.region[v.frame] for v in views]).astype(np.float32),
            "speaker": np.array([speaker_id(v.clip.meta["speaker"]) for v in anchors], np.int64),
            "offset": np.array([p.clip.time[p.frame] - a.clip.time[a.frame] for a, p in zip(anchors, positives)
                                if p.clip is a.clip], np.float32),
            "stats": {**stats, "bad_shards": self.bad_shards},
        }

    def augment(self, images: np.ndarray, boxes: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        from train.augment import augment

        cfg = self.cfg
        return augment(torch.from_numpy(images), torch.from_numpy(boxes), cfg.image_size, gen,
                       cfg.p_landmark_mask, cfg.p_colour, cfg.p_blur, cfg.p_gray)[0]

    def positive(self, clip: ClipSample, a: int, rng, stats) -> View:
        cfg = self.cfg
        p = timeaug_positive(clip.time, a, rng, cfg.time_max) if cfg.timeaug else a
        stats["positives_same_frame"] += p == a
        swap = bool(cfg.faceswap and rng.random() < cfg.p_swap and clip.has_swap()[p])
        stats["swaps"] += swap
        return View(clip, p, swap)

    def hard_negative(self, buffer: list[ClipSample], b: int, a: int, rng) -> View | None:
        clip = buffer[b]
        h = hard_negative(clip.time, a, rng, self.cfg.hardneg_gap)
        if h is not None:
            return View(clip, h)
        same = [c for i, c in enumerate(buffer) if i != b and c.meta["speaker"] == clip.meta["speaker"]]
        if same:  # another clip of the same speaker that is in the buffer
            c = same[int(rng.integers(len(same)))]
            return View(c, int(rng.integers(len(c))))
        return None

    @staticmethod
    def image(view: View) -> np.ndarray:
        return view.clip.image("swaps" if view.swap else "faces", view.frame)

    def cutmix(self, images: list[np.ndarray], anchors: list[View], rng, stats) -> None:
        """Table 1 row (c): a positive keeps its centre patch (half the side) on another speaker's frame."""
        m = len(anchors)
        speakers = [v.clip.meta["speaker"] for v in anchors]
        for i in range(m):
            if rng.random() >= self.cfg.p_swap:
                continue
            others = [j for j in range(m) if speakers[j] != speakers[i]]
            if not others:
                continue
            donor = images[m + others[int(rng.integers(len(others)))]].copy()
            s = donor.shape[0]
            lo, hi = s // 4, s - s // 4
            donor[lo:hi, lo:hi] = images[m + i][lo:hi, lo:hi]
            images[m + i] = donor
            stats["swaps"] += 1


def epoch_batches(n_clips: int, cfg: TrainConfig) -> int:
    """Steps per epoch: every clip gives anchors_per_clip anchors, over the global batch."""
    return max(1, math.floor(n_clips * cfg.anchors_per_clip / cfg.batch_size))
