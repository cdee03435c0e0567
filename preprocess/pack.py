"""Step `pack`: write the WebDataset shards, the manifest and the rejects table.

Shards are written under temporary names and renamed when closed; the manifest is removed first and written
last, so a folder with a manifest always has complete shards that match it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from preprocess.cache import atomic_write_bytes
from preprocess.schema import (MANIFEST, MANIFEST_COLUMNS, REJECT_COLUMNS, REJECTS, SCHEMA_VERSION, SHARD_NAME,
                               ClipSample, join_jpegs)


def pack_is_current(out: Path, pack_hash: str) -> bool:
    path = out / MANIFEST
    if not path.is_file():
        return False
    meta = pq.read_schema(path).metadata or {}
    if meta.get(b"pack_hash", b"").decode() != pack_hash:
        return False
    shards = set(pq.read_table(path, columns=["shard"]).column("shard").to_pylist())
    return all((out / s).is_file() for s in shards)


def write_parquet(path: Path, rows: list[dict], columns: dict, metadata: dict | None = None) -> None:
    table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.string()) for c in columns})
    table = table.select(list(columns))
    if metadata:
        table = table.replace_schema_metadata({k: str(v) for k, v in metadata.items()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


class ShardWriter:
    """Sequential shards of at most max_bytes, each renamed into place when closed."""

    def __init__(self, out: Path, max_bytes: float):
        self.out, self.max_bytes = out, max_bytes
        self.index, self.size, self.file, self.tar = -1, 0, None, None
        self.total = 0

    @property
    def name(self) -> str:
        return SHARD_NAME.format(self.index)

    def _open(self):
        self.index += 1
        self.size = 0
        self.file = open(self.out / f".{self.name}.tmp", "wb")
        self.tar = wds.TarWriter(self.file, encoder=False, mtime=0)

    def close(self):
        if self.tar is not None:
            self.tar.close()
            self.file.close()
            (self.out / f".{self.name}.tmp").replace(self.out / self.name)
            self.total += (self.out / self.name).stat().st_size
            self.tar = None

    def write(self, sample: dict) -> str:
        if self.tar is None or self.size >= self.max_bytes:
            self.close()
            self._open()
        self.size += self.tar.write(sample)
        return self.name


def clip_sample(clip, faces: dict, region: dict, region_info: dict, swaps: dict, swap_info: dict) -> ClipSample:
    meta = {"schema": SCHEMA_VERSION, "speaker": clip.speaker, "video": clip.video, "clip": clip.clip,
            "source": clip.rel, "region_descriptor": region_info["descriptor"], "donors": swap_info["donors"]}
    jpegs = {name: (faces[f"{name}_blob"], faces[f"{name}_idx"]) for name in ("faces", "eyes", "mouth")}
    jpegs["swaps"] = (swaps["swaps_blob"], swaps["swaps_idx"])
    return ClipSample(key=clip.key, meta=meta, time=faces["time"], source_frame=faces["source_frame"],
                      landmarks=faces["landmarks"], boxes=faces["boxes"], region=region["region"], jpegs=jpegs)


def pack(out: Path, clips, plan, caches, cfg, pack_hash: str, discover_rejects: list, infos: dict) -> dict:
    from tqdm import tqdm

    (out / MANIFEST).unlink(missing_ok=True)
    for tmp in out.glob(".shard-*.tmp"):
        tmp.unlink()
    order = sorted(clips, key=lambda c: hashlib.sha1(f"{cfg.pack_seed}|{c.key}".encode()).hexdigest())
    writer = ShardWriter(out, cfg.shard_max_mb * 1e6)
    rows, rejects = [], list(discover_rejects)
    rels = {c.key: c.rel for c in clips}
    for c in plan.clips:
        rejects.extend(infos[c.key]["rejects"])
    region_dim, region_descriptor = 0, ""
    for clip in tqdm(order, desc="pack", unit="clip", dynamic_ncols=True):
        faces, _ = caches["faces"].load(clip.key, plan.faces[clip.key])
        region, region_info = caches["region"].load(clip.key, plan.region[clip.key])
        if plan.faceswap[clip.key]:
            swaps, swap_info = caches["faceswap"].load(clip.key, plan.faceswap[clip.key])
        else:  # faceswap=false
            n = len(faces["time"])
            blob, idx = join_jpegs([b""] * n)
            swaps = {"swaps_blob": blob, "swaps_idx": idx}
            swap_info = {"donors": [""] * n, "rejects": []}
        rejects.extend({**r, "source": rels[clip.key]} for r in swap_info["rejects"])
        sample = clip_sample(clip, faces, region, region_info, swaps, swap_info)
        region_dim, region_descriptor = int(sample.region.shape[1]), region_info["descriptor"]
        shard = writer.write(sample.to_wds())
        has_swap = sample.has_swap()
        for i in range(len(sample)):
            rows.append({"key": clip.key, "speaker": clip.speaker, "video": clip.video, "clip": clip.clip,
                         "source": clip.rel, "frame": i, "source_frame": int(sample.source_frame[i]),
                         "timestamp": float(sample.time[i]), "shard": shard,
                         "n_faces": int(faces["n_faces"][i]), "has_region": True,
                         "has_swap": bool(has_swap[i]), "swap_donor": swap_info["donors"][i]})
    writer.close()
    for stale in out.glob("shard-*.tar"):  # left by an earlier, larger packing
        if int(stale.stem.split("-")[1]) > writer.index:
            stale.unlink()
    write_parquet(out / REJECTS, [{**r, "frame": int(r["frame"]), "timestamp": float(r["timestamp"])}
                                  for r in rejects], REJECT_COLUMNS)
    metadata = {"schema_version": SCHEMA_VERSION, "pack_hash": pack_hash, "shards": writer.index + 1,
                "bytes": writer.total, "region_descriptor": region_descriptor, "region_dim": region_dim,
                "columns": json.dumps(MANIFEST_COLUMNS)}
    write_parquet(out / MANIFEST, rows, MANIFEST_COLUMNS, metadata)
    return {"shards": writer.index + 1, "bytes": writer.total, "frames": len(rows)}


def merge_parts(shards: Path) -> dict:
    """Join the manifests and rejects of a split run (SHARDS/parts/i-of-n) into SHARDS/."""
    parts = sorted((shards / "parts").glob("*-of-*"))
    if not parts:
        raise FileNotFoundError(f"{shards}/parts: no parts to merge (run make shards with part=i/n first)")
    n = int(parts[0].name.split("-of-")[1])
    expected = {f"{i}-of-{n}" for i in range(n)}
    have = {p.name for p in parts if (p / MANIFEST).is_file()}
    if have != expected:
        raise FileNotFoundError(f"parts missing or unfinished: {', '.join(sorted(expected - have))}")
    tables, rejects, total, count = [], [], 0, 0
    descriptors = set()
    for name in sorted(expected, key=lambda s: int(s.split("-")[0])):
        t = pq.read_table(shards / "parts" / name / MANIFEST)
        meta = t.schema.metadata
        descriptors.add((meta[b"region_descriptor"], meta[b"region_dim"]))
        total += int(meta[b"bytes"])
        count += int(meta[b"shards"])
        shard_col = pa.array([f"parts/{name}/{s}" for s in t.column("shard").to_pylist()])
        tables.append(t.set_column(t.schema.get_field_index("shard"), "shard", shard_col))
        rejects.append(pq.read_table(shards / "parts" / name / REJECTS))
    if len(descriptors) > 1:
        raise ValueError("parts were built with different region descriptors; rebuild them with one config")
    (desc, dim), = descriptors
    merged = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    metadata = {"schema_version": SCHEMA_VERSION, "pack_hash": "merged", "shards": count, "bytes": total,
                "region_descriptor": desc.decode(), "region_dim": dim.decode(),
                "columns": json.dumps(MANIFEST_COLUMNS)}
    write_parquet(shards / REJECTS, pa.concat_tables([r.replace_schema_metadata(None) for r in rejects])
                  .to_pylist(), REJECT_COLUMNS)
    write_parquet(shards / MANIFEST, merged.to_pylist(), MANIFEST_COLUMNS, metadata)
    return {"parts": n, "frames": merged.num_rows, "shards": count, "bytes": total}
