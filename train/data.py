"""Batches from the shards: index the shards once (where each clip sample lies), plan which clips give each
step's anchors (train/plan.py), then per step read those clips and assemble the views.

A batch holds M instances, each with two views: rows 0..M-1 are the first views (anchors, and with HardNeg their
hard negatives), rows M..2M-1 their positives (TimeAug frame, maybe its FaceSwap composite or a CutMix).
`batch_size` counts instances: with HardNeg half of them are hard negatives (a frame of the same speaker >= T2
away, with its own positive). Everything random in a step comes from (seed, step, rank), so any step can be
made again exactly: resuming needs only the step number."""
from __future__ import annotations

import hashlib
import tarfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from preprocess.schema import ClipSample, SchemaError
from train.plan import epoch_plan
from train.sampling import frame_offset_positive, hard_negative, hard_negative_apart, timeaug_positive
from train.settings import TrainConfig

STEP_STREAM = 0x5EED  # keeps a step's sampling apart from the plan's random numbers
READ_ERRORS = (tarfile.TarError, EOFError, OSError, SchemaError, KeyError, ValueError)


def _tar_files(f, skip_ext: frozenset, skip_all: bool = False,
               stop: int | None = None) -> Iterator[tuple[str, int, bytes]]:
    """(name, offset of the member's first header, content) of the regular files of a tar stream; b"" for those
    whose extension is in skip_ext (seeked over, not read). `stop`: end at this offset instead of at the
    end-of-archive marker. A small reader: the tarfile module costs ~40 us per member, and a clip sample has 14
    members. Handles ustar prefixes and pax long names; raises ValueError on a damaged header, EOFError on a
    truncated file."""
    long_name, member_start = None, None
    while True:
        here = f.tell()
        if stop is not None and here >= stop:
            return
        header = f.read(512)
        if len(header) < 512:
            raise EOFError("truncated tar (no end-of-archive marker)")
        if header.count(0) == 512:
            return
        stored = int(header[148:156].strip(b"\0 ") or b"-1", 8)
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise ValueError("damaged tar header (checksum)")
        member_start = here if member_start is None else member_start
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
        if kind == b"L":  # GNU long name: the next member's name
            long_name = f.read(padded)[:size].rstrip(b"\0").decode()
            continue
        name, long_name, start, member_start = long_name or name, None, member_start, None
        regular = kind in (b"0", b"\0")
        if not regular or skip_all or name.rsplit("/", 1)[-1].split(".", 1)[-1] in skip_ext:
            f.seek(padded, 1)
            if regular:
                yield name, start, b""
            continue
        data = f.read(padded)
        if len(data) < padded:
            raise EOFError(f"truncated tar (in {name})")
        yield name, start, data[:size]


def _split_name(name: str) -> tuple[str, str] | None:
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        return None
    return name[: len(name) - len(base)] + base.split(".", 1)[0], base.split(".", 1)[1]


def _group_samples(members: Iterator[tuple[str, int, bytes]]) -> Iterator[dict]:
    current: dict | None = None
    for name, start, data in members:
        parts = _split_name(name)
        if parts is None:
            continue
        key, ext = parts
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key, "__start__": start}
        current[ext] = data
    if current is not None:
        yield current


def iter_tar_samples(path: Path, skip: frozenset = frozenset()) -> Iterator[dict]:
    """Raw WebDataset samples of one tar (files grouped by key, in order), without reading the files whose
    extension is in `skip`. Raises on a damaged tar."""
    with open(path, "rb", buffering=1 << 20) as f:
        for sample in _group_samples(_tar_files(f, skip)):
            sample.pop("__start__")
            yield sample


def index_tar(path: Path) -> tuple[list[str], list[int], list[int], str | None]:
    """Keys of a tar's samples with the byte range [start, end) of each, reading only the headers (unbuffered:
    512 bytes per member, not a buffer refill per seek). On a damaged or truncated tar: the samples before the
    damage, and the reason."""
    keys, starts, ends = [], [], []
    try:
        with open(path, "rb", buffering=0) as f:
            last = None
            for name, start, _ in _tar_files(f, frozenset(), skip_all=True):
                parts = _split_name(name)
                if parts is None:
                    continue
                if parts[0] != last:
                    if last is not None:
                        ends.append(start)
                    keys.append(parts[0])
                    starts.append(start)
                    last = parts[0]
            if last is not None:
                ends.append(f.tell() - 512)  # the end-of-archive marker's first block
        return keys, starts, ends, None
    except (OSError, EOFError, ValueError) as e:
        n = len(ends)  # the sample being read when the damage was met is dropped
        return keys[:n], starts[:n], ends[:n], f"{type(e).__name__}: {e}"


def cached_index_tar(path: Path, cache_dir: Path) -> tuple[list[str], list[int], list[int], str | None]:
    """index_tar, kept in cache_dir per shard and reused while the shard's size and mtime are unchanged (a rerun
    of the trainer, and every rank but the first, then read no tar header). Without a writable cache_dir it
    just scans."""
    from preprocess.cache import save_npz
    from preprocess.npz import load_npz

    try:
        st = path.stat()
    except OSError as e:
        return [], [], [], f"{type(e).__name__}: {e}"
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    cached = cache_dir / f"{path.name}.npz"
    try:
        arrays, info = load_npz(cached)
        if info.get("stamp") == stamp:
            return info["keys"], arrays["start"].tolist(), arrays["end"].tolist(), info["error"]
    except (OSError, ValueError, KeyError):
        pass
    keys, starts, ends, error = index_tar(path)
    if error is None:  # a damaged shard is scanned again next time (it may have been rebuilt)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            save_npz(cached, {"start": np.array(starts, np.int64), "end": np.array(ends, np.int64)},
                     {"stamp": stamp, "keys": keys, "error": None})
        except OSError:
            pass
    return keys, starts, ends, error


def warm_tar_index(shards_dir: Path, paths: list[Path], rank: int, world: int) -> None:
    """This rank's share (every world-th shard) of the tar indexes, into the cache that ShardIndex.build reads. Run
    by every rank before rank 0 builds the index: a first start on shards never indexed reads 1/world of the tar
    headers per rank (one rank alone: minutes at VoxCeleb2 size)."""
    for path in paths[rank::world]:
        cached_index_tar(path, shards_dir / ".cache" / "tar-index")


# sample files the trainer never reads (the eye and mouth crops are for region embeddings, made offline)
UNUSED = frozenset({"eyes.jpgs", "mouth.jpgs", "landmarks.npy", "frame.npy"})


@dataclass
class ShardIndex:
    """Where every readable clip sample lies, and its speaker. Clip ids are rows of these arrays."""
    paths: list[Path]
    keys: list[str]
    shard: np.ndarray      # int32: index into paths
    start: np.ndarray      # int64 byte ranges in the shard
    end: np.ndarray
    speaker: np.ndarray    # int64 speaker index (from the manifest)
    origin: np.ndarray     # int64 source clip index: the windows of one long clip share it
    problems: list[str]    # damaged shards and clips of the manifest that no shard holds

    composites: int = 0    # frames of the manifest with a FaceSwap composite

    @classmethod
    def build(cls, shards_dir: Path) -> "ShardIndex":
        """From the manifest's clips (schema.manifest_clips) and each shard's tar index (cached per shard).
        Columnar throughout: at VoxCeleb2 size (1.13 M clips, 37 M manifest rows) no Python object per row."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from preprocess.schema import manifest_clips, shard_paths, sorted_codes

        clips = manifest_clips(shards_dir)
        paths = shard_paths(shards_dir, clips)
        speaker_of, origin_of = sorted_codes(clips["speaker"]), sorted_codes(clips["source"])
        keys, shard, start, end, problems = [], [], [], [], []
        for i, path in enumerate(paths):
            k, s, e, err = cached_index_tar(path, shards_dir / ".cache" / "tar-index")
            if err:
                problems.append(f"{path.name}: {err} (clips after it unreadable)")
            keys.extend(k)
            shard.append(np.full(len(k), i, np.int32))
            start.append(np.asarray(s, np.int64))
            end.append(np.asarray(e, np.int64))
        # one lookup for all shards (a lookup per shard would hash the manifest's keys once per shard)
        at = pc.index_in(pa.array(keys, pa.string()), value_set=clips["key"])  # null: not in the manifest
        known = at.is_valid().to_numpy(zero_copy_only=False)
        row = at.drop_null().to_numpy().astype(np.int64)
        missing = len(clips["key"]) - len(np.unique(row))
        if missing:
            problems.append(f"{missing} clip(s) of the manifest are in no readable shard")

        def joined(parts, dtype):
            return np.concatenate(parts)[known] if parts else np.zeros(0, dtype)

        return cls(paths, [k for k, ok in zip(keys, known) if ok], joined(shard, np.int32),
                   joined(start, np.int64), joined(end, np.int64), speaker_of[row], origin_of[row], problems,
                   int(clips["composites"].sum()))

    def __len__(self):
        return len(self.keys)

    def fingerprint(self) -> str:
        """What the trainer reads: the shards, the clips and their byte ranges and speakers."""
        h = hashlib.sha256("\n".join(p.name for p in self.paths).encode())
        h.update("\n".join(self.keys).encode())
        for a in (self.shard, self.start, self.end, self.speaker, self.origin):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def shard_clips(self) -> list[np.ndarray]:
        """Clip ids of each shard, in their stored order."""
        order = np.argsort(self.shard, kind="stable")
        bounds = np.searchsorted(self.shard[order], np.arange(len(self.paths) + 1))
        return [order[bounds[i]:bounds[i + 1]] for i in range(len(self.paths))]

    def clips_by_speaker(self) -> tuple[np.ndarray, np.ndarray]:
        """(clip ids sorted by speaker, offsets per speaker): speaker s's clips are ids[off[s]:off[s+1]]."""
        order = np.argsort(self.speaker, kind="stable")
        return order, np.searchsorted(self.speaker[order], np.arange(self.speaker.max() + 2))


class ClipReader:
    """Reads clip samples by id (one seek and a read of the sample's byte range), with a small LRU cache."""

    def __init__(self, index: ShardIndex, cache: int):
        self.index, self.cache_size = index, cache
        self.cache: OrderedDict[int, ClipSample] = OrderedDict()
        self.files: dict[int, object] = {}

    def get(self, cid: int) -> ClipSample:
        if cid in self.cache:
            self.cache.move_to_end(cid)
            return self.cache[cid]
        s = int(self.index.shard[cid])
        f = self.files.get(s)
        if f is None:
            if len(self.files) >= 32:
                self.files.pop(next(iter(self.files))).close()
            f = self.files[s] = open(self.index.paths[s], "rb", buffering=1 << 16)
        f.seek(int(self.index.start[cid]))
        samples = list(_group_samples(_tar_files(f, UNUSED, stop=int(self.index.end[cid]))))
        if len(samples) != 1 or samples[0]["__key__"] != self.index.keys[cid]:
            raise ValueError(f"sample {self.index.keys[cid]!r} not where the index says")
        samples[0].pop("__start__")
        clip = ClipSample.from_wds(samples[0])
        self.cache[cid] = clip
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return clip


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
            from train.augment import augment

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
