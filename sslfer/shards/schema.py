"""The shard schema: the one definition of what `make shards` writes and the trainer reads.

A shard folder holds
  shard-NNNNNN.tar   WebDataset tar shards; one sample per clip (all its kept frames), see ClipSample
  manifest.parquet   one row per kept frame (MANIFEST_COLUMNS); schema version and descriptor in its metadata
  rejects.parquet    one row per dropped file, frame or composite, with the reason (REJECT_COLUMNS)
  summary.json       counts and timings of the last run
  config.toml        the resolved options of the last run
A sample's files (WebDataset: `<key>.<ext>`): numeric arrays are .npy (never pickled), images are JPEG
blobs: the JPEGs of all frames concatenated, with an int64 offsets array of n+1 entries, so that the trainer
decodes only the frames it draws.
"""
from __future__ import annotations

import io
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import cv2
import numpy as np

SCHEMA_VERSION = 1
MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
SUMMARY = "summary.json"
CONFIG = "config.toml"
SHARD_NAME = "shard-{:06d}.tar"

MANIFEST_COLUMNS = {
    "key": "sample key of the clip in the shards (WebDataset __key__)",
    "speaker": "speaker id (the identity)",
    "video": "video id",
    "clip": "clip id",
    "source": "input file or folder, relative to DATA",
    "frame": "row of the frame in the sample's arrays (a clip's kept frames; of its window for long clips)",
    "source_frame": "frame number in the source (timestamp x stream rate for videos, file number for frames)",
    "timestamp": "presentation time in seconds, from the stream",
    "shard": "shard file, relative to the manifest",
    "n_faces": "faces the detector saw in the frame (the tracked or largest one was kept)",
    "has_region": "region descriptor stored",
    "has_swap": "FaceSwap composite stored",
    "swap_donor": "donors of the frame's composites as '<clip key>/<frame>', ';'-separated (empty when none)",
    "sample_hash": "hash of the clip's cached step outputs (an incremental repack rewrites a clip when it changes)",
}
REJECT_COLUMNS = {
    "source": "input file or folder, relative to DATA",
    "key": "clip key ('' when the clip could not be named)",
    "frame": "sampled frame index (-1 for the whole clip)",
    "timestamp": "seconds (-1 for the whole clip)",
    "step": "pipeline step that dropped it: discover | faces | faceswap",
    "reason": "why, in words",
}


def arrow_schema(columns: dict):
    """The Arrow types of MANIFEST_COLUMNS or REJECT_COLUMNS (empty tables keep them: parts merge cleanly)."""
    import pyarrow as pa

    types = {"frame": pa.int64(), "source_frame": pa.int64(), "timestamp": pa.float64(), "n_faces": pa.int64(),
             "has_region": pa.bool_(), "has_swap": pa.bool_()}
    return pa.schema([(name, types.get(name, pa.string())) for name in columns])


# Sample members: meta.json, the per-frame arrays (FRAME_FIELDS), and the JPEG blobs.
META = "meta.json"          # speaker, video, clip, source, schema, region descriptor, donors
JPEG_BLOBS = ("faces", "swaps", "eyes", "mouth")  # <name>.jpgs + <name>.idx.npy; a swap of length 0 = none


@dataclass(frozen=True)
class FrameField:
    """A per-frame array of a clip sample: one row per kept frame, stored as the sample's `member` (.npy) and read
    as the ClipSample attribute `name`. Windows slice it, the writer and the reader carry it: declaring it is all
    the format needs. `derive` computes it when the shards are packed from the faces step's arrays of the clip
    (time, source_frame, landmarks, boxes, and the eye/mouth/face JPEGs): a field of yours, registered with
    register_frame_field in a module named in SSLFER_PLUGINS; `make shards` then repacks (nothing else reruns)."""
    name: str
    member: str
    about: str
    derive: Callable[[dict], np.ndarray] | None = None
    version: int = 1  # bump when `derive` changes what it computes: the shards are repacked


FRAME_FIELDS: dict[str, FrameField] = {f.name: f for f in (
    FrameField("time", "time.npy", "float64 [n] timestamps, seconds"),
    FrameField("source_frame", "frame.npy", "int32 [n] the frame's index in the source"),
    FrameField("landmarks", "landmarks.npy", "float16 [n, 478, 2] face mesh, aligned-crop pixels"),
    FrameField("boxes", "boxes.npy", "float16 [n, 2, 4] eyes and mouth x0 y0 x1 y1, aligned-crop pixels"),
    FrameField("region", "region.npy", "float16 [n, D] MaskFN descriptor (D = 1024 for resnet18); zeros where absent"),
)}


def register_frame_field(field: FrameField) -> FrameField:
    if field.derive is None:
        raise ValueError(f"frame field {field.name!r}: give `derive` (how make shards computes it)")
    known = FRAME_FIELDS.get(field.name)
    if known is not None and known != field:
        raise ValueError(f"frame field {field.name!r} is declared already")
    if any(f.member == field.member and f.name != field.name for f in FRAME_FIELDS.values()) or \
            not field.member.endswith(".npy") or field.member.split(".")[0] in JPEG_BLOBS + ("meta",):
        raise ValueError(f"frame field {field.name!r}: member {field.member!r} must be a new <name>.npy")
    FRAME_FIELDS[field.name] = field
    return field


def derived_fields() -> list[FrameField]:
    return [f for f in FRAME_FIELDS.values() if f.derive is not None]


class SchemaError(ValueError):
    """Shards missing, empty, or written by an incompatible version; reported as one line."""


def encode_npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def decode_npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(b: bytes | memoryview) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR_RGB)  # RGB straight from the decoder
    if img is None:
        raise ValueError("not a JPEG")
    return img


def join_jpegs(jpegs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate JPEGs into (uint8 blob, int64 offsets[n+1])."""
    offsets = np.zeros(len(jpegs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(j) for j in jpegs])
    return np.frombuffer(b"".join(jpegs), np.uint8), offsets


def jpeg_at(blob: np.ndarray | bytes, offsets: np.ndarray, i: int) -> bytes:
    return bytes(blob[offsets[i]:offsets[i + 1]])


class ClipSample:
    """One clip: all its kept frames, in time order. `frames` holds its per-frame arrays by FRAME_FIELDS name
    (clip.time, clip.boxes ... read them; a reader that skipped a member gets None); `jpegs` its image blobs."""

    def __init__(self, key: str, meta: dict, frames: dict, jpegs: dict):
        self.key, self.meta, self.frames, self.jpegs = key, meta, frames, jpegs  # jpegs: name -> (blob, offsets)

    def __getattr__(self, name: str):
        frames = self.__dict__.get("frames")
        if frames is not None and name in FRAME_FIELDS:
            return frames.get(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __len__(self):
        return len(self.time)

    @property
    def swaps_per_frame(self) -> int:
        return int(self.meta.get("swaps_per_frame", 1))

    def image(self, name: str, i: int, j: int = 0) -> np.ndarray | None:
        """Decode frame i of blob `name` (faces, swaps, eyes, mouth) as RGB uint8 (for swaps: frame i's j-th
        composite); None when absent."""
        blob, offsets = self.jpegs[name]
        e = i * self.swaps_per_frame + j if name == "swaps" else i
        if offsets[e + 1] == offsets[e]:
            return None
        return decode_jpeg(jpeg_at(blob, offsets, e))

    def swap_slots(self) -> np.ndarray:
        """bool [n, swaps_per_frame]: which composites each frame has."""
        offsets = self.jpegs["swaps"][1]
        return (offsets[1:] > offsets[:-1]).reshape(len(self), self.swaps_per_frame)

    def has_swap(self) -> np.ndarray:
        return self.swap_slots().any(1)

    def windows(self, window_s: float) -> list["ClipSample"]:
        """The clip cut into consecutive windows of equal duration, at most window_s seconds each (so each is at
        least window_s / 2 long: room for TimeAug's 1 s and HardNeg's 3 s); [self] when it is shorter. A window
        is keyed `<clip key>_w<k>` and names its clip in meta (clip_key, window = [k, n], first_frame)."""
        span = float(self.time[-1] - self.time[0]) if len(self) else 0.0
        if window_s <= 0 or span <= window_s:
            return [self]
        n = math.ceil(span / window_s)
        cuts = [0, *np.searchsorted(self.time, self.time[0] + span * np.arange(1, n) / n).tolist(), len(self)]
        out = []
        for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            jpegs = {}
            for name, (blob, off) in self.jpegs.items():
                per = self.swaps_per_frame if name == "swaps" else 1
                jpegs[name] = (blob[off[a * per]:off[b * per]], off[a * per:b * per + 1] - off[a * per])
            meta = {**self.meta, "donors": self.meta["donors"][a:b], "clip_key": self.key, "window": [k, n],
                    "first_frame": a}
            frames = {name: None if v is None else v[a:b] for name, v in self.frames.items()}
            out.append(ClipSample(f"{self.key}_w{k}", meta, frames, jpegs))
        return out

    def to_wds(self) -> dict:
        out = {"__key__": self.key, META: json.dumps(self.meta).encode()}
        for name, array in self.frames.items():
            out[FRAME_FIELDS[name].member] = encode_npy(array)
        for name in JPEG_BLOBS:
            blob, offsets = self.jpegs[name]
            out[f"{name}.jpgs"] = blob.tobytes()
            out[f"{name}.idx.npy"] = encode_npy(offsets)
        return out

    @classmethod
    def from_wds(cls, sample: dict) -> "ClipSample":
        """Parse a raw WebDataset sample (bytes per extension). Raises SchemaError on a foreign sample."""
        try:
            meta = json.loads(sample[META])
        except (KeyError, ValueError) as e:
            raise SchemaError(f"sample {sample.get('__key__')!r}: no readable {META} ({e})") from None
        if meta.get("schema") != SCHEMA_VERSION:
            raise SchemaError(f"sample {sample.get('__key__')!r} has schema {meta.get('schema')}, "
                              f"this code reads {SCHEMA_VERSION}: rebuild the shards with `make shards`")
        def array(name):  # a reader may skip files it does not need: they come as b"" and load as None
            return decode_npy(sample[name]) if sample.get(name) else None

        jpegs = {n: (np.frombuffer(sample[f"{n}.jpgs"], np.uint8), array(f"{n}.idx.npy")) for n in JPEG_BLOBS}
        frames = {f.name: array(f.member) for f in FRAME_FIELDS.values() if f.member in sample}
        missing = [f.member for f in FRAME_FIELDS.values() if f.derive is None and f.member not in sample]
        if missing:
            raise SchemaError(f"sample {sample['__key__']!r} has no {', '.join(missing)}")
        return cls(sample["__key__"], meta, frames, jpegs)


def manifest_file(shards_dir: str | Path):
    """The manifest as a pyarrow ParquetFile (nothing read but its footer), after checking the folder is usable
    shards of this schema."""
    import pyarrow.parquet as pq

    shards_dir = Path(shards_dir)
    path = shards_dir / MANIFEST
    if not shards_dir.is_dir():
        raise SchemaError(f"{shards_dir}: no such folder (build shards with `make shards`)")
    if not path.is_file():
        raise SchemaError(f"{shards_dir}: no {MANIFEST} (not built, still building, or a split run "
                          f"not merged: `make shards-merge`)")
    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise SchemaError(f"{path}: unreadable ({e})") from None
    meta = file.schema_arrow.metadata or {}
    version = int(meta.get(b"schema_version", b"-1"))
    if version != SCHEMA_VERSION:
        raise SchemaError(f"{path}: schema version {version}, this code reads {SCHEMA_VERSION}; "
                          f"rebuild with `make shards`")
    if file.metadata.num_rows == 0:
        raise SchemaError(f"{path}: no frames (every clip was rejected; see {REJECTS})")
    return file


@contextmanager
def reading_manifest(shards_dir: str | Path):
    """A damaged manifest found while reading it (pyarrow raises several types) becomes a SchemaError."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        raise SchemaError(f"{Path(shards_dir) / MANIFEST}: unreadable ({e})") from None


def read_manifest(shards_dir: str | Path, columns: list[str] | None = None):
    """The manifest as a pyarrow Table (only `columns` when given), after checking the folder is usable shards
    of this schema. A frame per row: at VoxCeleb2 size that is 37 M rows; the trainer reads manifest_clips."""
    file = manifest_file(shards_dir)
    with reading_manifest(shards_dir):
        return file.read(columns=columns)


def manifest_clips(shards_dir: str | Path, batch_rows: int = 1 << 20) -> dict:
    """The manifest folded to one entry per clip, in the order clips first appear: key, speaker, source and
    shard (pyarrow string arrays) and composites (int64: frames with a FaceSwap composite). Streamed by record
    batch, so memory follows the clips, not the frames."""
    import pyarrow as pa
    import pyarrow.compute as pc

    file = manifest_file(shards_dir)
    names = ("key", "speaker", "source", "shard")
    heads: dict[str, list] = {c: [] for c in names}
    composites = []
    with reading_manifest(shards_dir):
        for batch in file.iter_batches(batch_size=batch_rows, columns=[*names, "has_swap"]):
            key = batch.column("key")
            change = pc.not_equal(key.slice(1), key.slice(0, len(key) - 1)).to_numpy(zero_copy_only=False)
            first = np.flatnonzero(np.concatenate([[True], change]))  # a clip's frames are consecutive rows
            for c in names:
                heads[c].append(batch.column(c).take(first))
            swaps = batch.column("has_swap").fill_null(False).to_numpy(zero_copy_only=False)
            composites.append(np.add.reduceat(swaps.astype(np.int64), first))
    # a clip cut by a batch boundary (or, in a hand-made manifest, not consecutive) appears more than once
    coded = pc.dictionary_encode(pa.concat_arrays(heads["key"]))
    ids = coded.indices.to_numpy()
    first = np.unique(ids, return_index=True)[1]
    clips = {c: pa.concat_arrays(heads[c]).take(first) for c in names[1:]}
    return {"key": coded.dictionary, **clips,
            "composites": np.bincount(ids, np.concatenate(composites), len(first)).astype(np.int64)}


def sorted_codes(values) -> np.ndarray:
    """Each value's index among the sorted distinct values of a pyarrow string array (np.unique's
    return_inverse without making a Python string per value)."""
    import pyarrow.compute as pc

    coded = pc.dictionary_encode(values)
    rank = pc.rank(coded.dictionary, sort_keys="ascending").to_numpy() - 1
    return rank[coded.indices.to_numpy()].astype(np.int64)


def shard_paths(shards_dir: str | Path, manifest=None) -> list[Path]:
    """Shard files listed in the manifest (a Table with a shard column, or manifest_clips; without one, the
    manifest's shard column read by record batch), in order."""
    import pyarrow.compute as pc

    if manifest is not None:
        names = set(pc.unique(manifest["shard"] if isinstance(manifest, dict) else manifest.column("shard")).to_pylist())
    else:
        file, names = manifest_file(shards_dir), set()
        with reading_manifest(shards_dir):
            for batch in file.iter_batches(batch_size=1 << 20, columns=["shard"]):
                names.update(pc.unique(batch.column("shard")).to_pylist())
    return [Path(shards_dir) / n for n in sorted(names)]
