"""Step `pack`: write the WebDataset shards, the manifest and the rejects table.

Shards are written under temporary names and renamed when closed; the manifest is removed first and written
last, so a folder with a manifest always has complete shards that match it."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from preprocess.cache import digest, digest_of
from sslfer.files import write_table
from sslfer.shards.schema import (MANIFEST, MANIFEST_COLUMNS, REJECT_COLUMNS, REJECTS, SCHEMA_VERSION,
                                  ClipSample, arrow_schema, derived_fields, join_jpegs)
from sslfer.shards.tar import ShardWriter


def pack_is_current(out: Path, pack_hash: str) -> bool:
    path = out / MANIFEST
    if not path.is_file():
        return False
    meta = pq.read_schema(path).metadata or {}
    if meta.get(b"pack_hash", b"").decode() != pack_hash:
        return False
    return all((out / s).is_file() for s in shard_names(pq.read_table(path, columns=["shard"])))


def shard_names(manifest: pa.Table) -> list[str]:
    """The shards a manifest names (one row per frame: counted in Arrow, not as a Python string per row)."""
    return sorted(pc.unique(manifest.column("shard")).to_pylist())


def write_parquet(path: Path, rows: list[dict], columns: dict, metadata: dict | None = None) -> None:
    table = pa.Table.from_pylist([{c: r[c] for c in columns} for r in rows], schema=arrow_schema(columns))
    if metadata:
        table = table.replace_schema_metadata({k: str(v) for k, v in metadata.items()})
    write_table(path, table)


def fields_version() -> str:
    """The user's frame fields and their versions: adding or changing one repacks the shards."""
    return ";".join(f"{f.name}:{f.member}:{f.version}" for f in derived_fields())


def clip_sample(clip, faces: dict, region: dict, region_info: dict, swaps: dict, swap_info: dict) -> ClipSample:
    meta = {"schema": SCHEMA_VERSION, "speaker": clip.speaker, "video": clip.video, "clip": clip.clip,
            "source": clip.rel, "region_descriptor": region_info["descriptor"], "donors": swap_info["donors"],
            "swaps_per_frame": swap_info["swaps_per_frame"]}
    jpegs = {name: (faces[f"{name}_blob"], faces[f"{name}_idx"]) for name in ("faces", "eyes", "mouth")}
    jpegs["swaps"] = (swaps["swaps_blob"], swaps["swaps_idx"])
    frames = {"time": faces["time"], "source_frame": faces["source_frame"], "landmarks": faces["landmarks"],
              "boxes": faces["boxes"], "region": region["region"]}
    for f in derived_fields():  # the user's fields (FRAME_FIELDS with `derive`), from the faces step's arrays
        frames[f.name] = np.asarray(f.derive(faces))
        if len(frames[f.name]) != len(faces["time"]):
            raise ValueError(f"frame field {f.name!r}: derive gave {len(frames[f.name])} rows for "
                             f"{len(faces['time'])} frames")
    return ClipSample(clip.key, meta, frames, jpegs)


def sample_hashes(clips, plan) -> dict[str, str]:
    sample_hash = digest_of()
    return {c.key: sample_hash(plan.faces[c.key], plan.region[c.key], plan.faceswap[c.key]) for c in clips}


def _previous(out: Path, pack_options: str):
    """The current manifest's source, sample_hash and shard columns (dictionary-encoded: a row per frame, ~37 M
    at VoxCeleb2 size, holds three small integers) when an incremental repack can build on it (same pack
    options, this schema, every shard present), else None."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        schema = pq.read_schema(path)
        meta = schema.metadata or {}
        if meta.get(b"pack_options", b"").decode() != pack_options or "sample_hash" not in schema.names or \
                int(meta.get(b"schema_version", b"-1")) != SCHEMA_VERSION:
            return None
        columns = ["source", "sample_hash", "shard"]
        table = pq.read_table(path, columns=columns, read_dictionary=columns)
    except Exception:  # noqa: BLE001 - a damaged manifest: pack everything again
        return None
    if not all((out / s).is_file() for s in shard_names(table)):
        return None
    return table


ROWS_PER_FLUSH = 1 << 16


def _rows_table(columns: dict[str, list], schema: pa.Schema) -> pa.Table:
    return pa.table({name: pa.array(np.concatenate(v) if v and isinstance(v[0], np.ndarray) else v,
                                    schema.field(name).type) for name, v in columns.items()}, schema=schema)


def pack(out: Path, clips, plan, caches, cfg, pack_hash: str, discover_rejects: list, infos: dict,
         swap_infos: dict) -> dict:
    """Write the shards, the manifest and the rejects table. Incremental: the shards of the previous packing
    whose clips are all unchanged are kept as they are; clips that are new or changed, and the unchanged clips
    that shared a shard with a changed or removed one, are written to new shards; then the manifest is
    replaced (atomically) and the shards it no longer names are deleted."""
    pack_options = digest(cfg.shard_max_mb, cfg.pack_seed, cfg.window_s, fields_version())
    for tmp in out.glob(".shard-*.tmp"):
        tmp.unlink()
    want = sample_hashes(clips, plan)
    previous = _previous(out, pack_options)
    if previous is None:  # everything is packed again: no manifest until the new one is whole
        (out / MANIFEST).unlink(missing_ok=True)
    done, first_shard, kept_shards, dirty = _reusable(previous, clips, want)
    todo = [c for c, is_done in zip(clips, done) if not is_done]
    order = sorted(todo, key=lambda c: hashlib.sha1(f"{cfg.pack_seed}|{c.key}".encode()).hexdigest())
    written, new_rows_path = _write_shards(out, order, plan, caches, cfg, want, first_shard)
    shards = sorted(kept_shards + written)
    region_descriptor, region_dim = "", 0
    if clips:
        region_info = caches["region"].load(clips[0].key, plan.region[clips[0].key])[1]
        region_descriptor, region_dim = region_info["descriptor"], int(region_info["dim"])
    metadata = {"schema_version": SCHEMA_VERSION, "pack_hash": pack_hash, "pack_options": pack_options,
                "shards": len(shards), "bytes": sum((out / s).stat().st_size for s in shards),
                "region_descriptor": region_descriptor, "region_dim": region_dim,
                "columns": json.dumps(MANIFEST_COLUMNS)}
    schema = arrow_schema(MANIFEST_COLUMNS).with_metadata({k: str(v) for k, v in metadata.items()})
    frames = _write_manifest(out, schema, dirty, new_rows_path)
    _write_rejects(out, plan, discover_rejects, infos, swap_infos)
    named = set(shards)
    for stale in out.glob("shard-*.tar"):  # replaced by this packing (or left by an earlier one)
        if stale.name not in named:
            stale.unlink()
    return {"shards": len(shards), "shards_written": len(written), "shards_kept": len(named) - len(written),
            "clips_written": len(todo), "bytes": metadata["bytes"], "frames": frames}


def _reusable(previous, clips, want: dict) -> tuple[np.ndarray, int, list[str], object]:
    """(which clips sit in a kept shard, the first new shard's number, the kept shards, the previous manifest's
    shards to leave out: None when there is no manifest to build on). A window's rows name its clip by source;
    compared row group by row group."""
    done = np.zeros(len(clips), bool)
    if previous is None:
        return done, 0, [], None
    rels = pa.array([c.rel for c in clips], pa.string())
    wanted = pa.array([want[c.key] for c in clips], pa.string())
    batches = previous.to_batches()
    stale_shards = set()
    for b in batches:
        source = b.column("source")  # per dictionary entry: its clip and that clip's hash now
        now = pa.DictionaryArray.from_arrays(source.indices, wanted.take(pc.index_in(source.dictionary, rels)))
        stale = pc.fill_null(pc.not_equal(now, b.column("sample_hash")), True)
        stale_shards.update(pc.unique(b.column("shard").filter(stale)).to_pylist())
    dirty = pa.array(sorted(stale_shards), pa.string())
    for b in batches:
        keep = pc.invert(pc.is_in(b.column("shard"), dirty))
        kept_sources = pc.unique(b.column("source").filter(keep)).to_pylist()
        done[pc.index_in(pa.array(kept_sources, pa.string()), rels).drop_null().to_numpy(zero_copy_only=False)] = True
    existing = [int(name.split("-")[1].split(".")[0]) for name in shard_names(previous)]
    return done, max(existing, default=-1) + 1, sorted(set(shard_names(previous)) - stale_shards), dirty


def _write_shards(out: Path, order: list, plan, caches, cfg, want: dict, first_shard: int) -> tuple[list[str], Path]:
    """The clips' samples (window by window) into new shards, and their manifest rows into a temporary parquet
    file, flushed as they come (~37 M rows at VoxCeleb2 size). Returns (shards written, that file)."""
    from sslfer.progress import progress

    writer = ShardWriter(out, cfg.shard_max_mb * 1e6, first=first_shard)
    schema = arrow_schema(MANIFEST_COLUMNS)
    columns: dict[str, list] = {name: [] for name in schema.names}  # column-wise: no dict per frame
    new_rows_path, buffered = out / f".{MANIFEST}.new.tmp", 0
    new_rows_out = pq.ParquetWriter(new_rows_path, schema)
    for clip in progress(order, desc="pack", unit="clip", dynamic_ncols=True):
        if buffered >= ROWS_PER_FLUSH:
            new_rows_out.write_table(_rows_table(columns, schema))
            columns, buffered = {name: [] for name in schema.names}, 0
        whole, n_faces = _load_sample(clip, plan, caches)
        first = 0
        for sample in whole.windows(cfg.window_s):
            shard = writer.write(sample.to_wds())
            n = len(sample)
            for name, value in (("key", sample.key), ("speaker", clip.speaker), ("video", clip.video),
                                ("clip", clip.clip), ("source", clip.rel), ("shard", shard),
                                ("sample_hash", want[clip.key])):
                columns[name] += [value] * n
            columns["frame"].append(np.arange(n, dtype=np.int64))
            columns["source_frame"].append(sample.source_frame.astype(np.int64))
            columns["timestamp"].append(sample.time.astype(np.float64))
            columns["n_faces"].append(n_faces[first:first + n].astype(np.int64))
            columns["has_region"].append(np.ones(n, bool))
            columns["has_swap"].append(sample.has_swap())
            columns["swap_donor"] += sample.meta["donors"]
            first += n
            buffered += n
    writer.close()
    new_rows_out.write_table(_rows_table(columns, schema))
    new_rows_out.close()
    return writer.written, new_rows_path


def _load_sample(clip, plan, caches) -> tuple[ClipSample, np.ndarray]:
    """The clip's sample from its step outputs, and its frames' face counts."""
    faces, _ = caches["faces"].load(clip.key, plan.faces[clip.key])
    region, region_info = caches["region"].load(clip.key, plan.region[clip.key])
    if plan.faceswap[clip.key]:
        swaps, swap_info = caches["faceswap"].load(clip.key, plan.faceswap[clip.key])
    else:  # faceswap=false
        n = len(faces["time"])
        blob, idx = join_jpegs([b""] * n)
        swaps = {"swaps_blob": blob, "swaps_idx": idx}
        swap_info = {"donors": [""] * n, "rejects": [], "swaps_per_frame": 1}
    return clip_sample(clip, faces, region, region_info, swaps, swap_info), faces["n_faces"]


def _write_rejects(out: Path, plan, discover_rejects: list, infos: dict, swap_infos: dict) -> None:
    rels = {c.key: c.rel for c in plan.clips}
    rejects = list(discover_rejects)
    for c in plan.clips:
        rejects.extend(infos[c.key]["rejects"])
    for key, info in swap_infos.items():
        rejects.extend({**r, "source": rels[key]} for r in info["rejects"])
    write_parquet(out / REJECTS, [{**r, "frame": int(r["frame"]), "timestamp": float(r["timestamp"])}
                                  for r in rejects], REJECT_COLUMNS)


def _write_manifest(out: Path, schema: pa.Schema, dirty, new_rows_path: Path) -> int:
    """The manifest, streamed: the previous manifest's rows outside the `dirty` shards (none when dirty is None),
    then the new rows; written under a temporary name and renamed into place. Returns its rows."""
    tmp, rows = out / f".{MANIFEST}.tmp", 0
    try:
        with pq.ParquetWriter(tmp, schema) as manifest:
            if dirty is not None:
                for b in pq.ParquetFile(out / MANIFEST).iter_batches(ROWS_PER_FLUSH, columns=schema.names):
                    kept = pa.Table.from_batches([b]).select(schema.names).cast(schema)
                    kept = kept.filter(pc.invert(pc.is_in(kept.column("shard"), dirty)))
                    manifest.write_table(kept)
                    rows += kept.num_rows
            for b in pq.ParquetFile(new_rows_path).iter_batches(ROWS_PER_FLUSH):
                manifest.write_table(pa.Table.from_batches([b]).cast(schema))
                rows += b.num_rows
        os.replace(tmp, out / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)
        new_rows_path.unlink(missing_ok=True)
    return rows


# options that may differ between the parts of one run (they do not change what a part writes)
_PER_PART_OPTIONS = {"part", "workers", "clip_timeout_s", "device", "cache_dir", "region_batch_size"}


def merge_parts(shards: Path) -> dict:
    """Join the manifests and rejects of a split run (SHARDS/parts/i-of-n) into SHARDS/, after checking the
    parts belong together: one n, every part finished, the same options, schema and region descriptor. Streams
    part by part (Arrow tables, one part in memory at a time); discovery's rejects, seen by every part, once."""
    from preprocess.settings import ShardsConfig
    from sslfer.config import ConfigError, load_config

    folders = sorted((shards / "parts").glob("*-of-*")) if (shards / "parts").is_dir() else []
    if not folders:
        raise FileNotFoundError(f"{shards}/parts: no parts to merge (run make shards with part=i/n first)")
    ns = sorted({int(p.name.split("-of-")[1]) for p in folders if p.name.split("-of-")[1].isdigit()})
    if len(ns) != 1:
        raise ValueError(f"{shards}/parts holds parts of {' and '.join(map(str, ns))}: remove the stale ones")
    n = ns[0]
    names = [f"{i}-of-{n}" for i in range(n)]
    missing = [name for name in names if not (shards / "parts" / name / MANIFEST).is_file()]
    if missing:
        raise FileNotFoundError(f"parts missing or unfinished: {', '.join(missing)}")
    configs = {}
    for name in names:
        try:
            cfg = dataclasses.asdict(load_config(ShardsConfig, shards / "parts" / name / "config.toml"))
        except (ConfigError, FileNotFoundError, OSError) as e:
            raise ValueError(f"part {name}: unreadable config.toml ({e})") from None
        configs[name] = {k: v for k, v in cfg.items() if k not in _PER_PART_OPTIONS}
    first = configs[names[0]]
    for name in names[1:]:
        diff = sorted(k for k in first if configs[name].get(k) != first[k])
        if diff:
            raise ValueError(f"parts {names[0]} and {name} were built with different options ({', '.join(diff)}): "
                             "rebuild them with one config")
    manifest_schema, reject_schema = arrow_schema(MANIFEST_COLUMNS), arrow_schema(REJECT_COLUMNS)
    total = count = frames = 0
    descriptors = set()
    for name in names:  # footers only: validate and total before writing anything
        path = shards / "parts" / name / MANIFEST
        schema, rows = pq.read_schema(path), pq.read_metadata(path).num_rows
        meta = schema.metadata or {}
        if int(meta.get(b"schema_version", b"-1")) != SCHEMA_VERSION or set(schema.names) != set(manifest_schema.names):
            raise ValueError(f"part {name}: manifest of another schema version; rebuild it")
        if rows:
            descriptors.add((meta[b"region_descriptor"].decode(), meta[b"region_dim"].decode()))
        total, count, frames = total + int(meta.get(b"bytes", b"0")), count + int(meta.get(b"shards", b"0")), \
            frames + rows
    if len(descriptors) > 1:
        raise ValueError("parts were built with different region descriptors; rebuild them with one config")
    (desc, dim), = descriptors or {("", "0")}
    metadata = {"schema_version": SCHEMA_VERSION, "pack_hash": "merged", "shards": count, "bytes": total,
                "region_descriptor": desc, "region_dim": dim, "columns": json.dumps(MANIFEST_COLUMNS)}
    manifest_schema = manifest_schema.with_metadata({k: str(v) for k, v in metadata.items()})
    seen_discover = set()
    tmp_manifest, tmp_rejects = shards / f".{MANIFEST}.merge.tmp", shards / f".{REJECTS}.merge.tmp"
    try:
        with pq.ParquetWriter(tmp_manifest, manifest_schema) as manifest_out, \
                pq.ParquetWriter(tmp_rejects, reject_schema) as rejects_out:
            for name in names:  # one part in memory at a time
                t = pq.read_table(shards / "parts" / name / MANIFEST).select(manifest_schema.names)
                shard_col = pc.binary_join_element_wise(f"parts/{name}/", t.column("shard"), "")  # a row per frame
                t = t.set_column(t.schema.get_field_index("shard"), "shard", shard_col)
                manifest_out.write_table(t.cast(manifest_schema))
                r = pq.read_table(shards / "parts" / name / REJECTS).select(reject_schema.names).cast(reject_schema)
                keep = []
                for row in r.to_pylist():  # rejects are few; discovery's are repeated in every part
                    if row["step"] == "discover":
                        if (row["source"], row["reason"]) in seen_discover:
                            continue
                        seen_discover.add((row["source"], row["reason"]))
                    keep.append(row)
                rejects_out.write_table(pa.Table.from_pylist(keep, schema=reject_schema))
        os.replace(tmp_rejects, shards / REJECTS)
        os.replace(tmp_manifest, shards / MANIFEST)
    finally:
        tmp_manifest.unlink(missing_ok=True)
        tmp_rejects.unlink(missing_ok=True)
    return {"parts": n, "frames": frames, "shards": count, "bytes": total,
            "rejects": pq.read_metadata(shards / REJECTS).num_rows}
