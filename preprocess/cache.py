"""Step caches: content fingerprints, hash keys, atomic writes.

A step's output file is named `<clip key>-<hash>.npz`, the hash covering the step's inputs (the source's
fingerprint or the upstream outputs' hashes) and its options. Present means done: files appear only by
rename once complete, so a killed run leaves no half-written output."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preprocess.corpus import Clip, part_name
from sslfer.files import save_npz, write_table
from sslfer.npz import NpzArrays, load_npz

_SAMPLE = 1 << 16
_LISTING_CHUNK = 1 << 16  # names of a step folder turned into Arrow at a time


def _file_digest(path: Path, h) -> None:
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        if size > 2 * _SAMPLE:
            f.seek(size - _SAMPLE)
            h.update(f.read(_SAMPLE))
        if size > 4 * _SAMPLE:
            f.seek(size // 2)
            h.update(f.read(_SAMPLE))


def fingerprint(clip: Clip) -> str:
    """Content fingerprint of a clip: size and sampled bytes of the file (or of every frame's name and size
    and the first and last frame's bytes). Cheap on a large corpus, and unchanged when the corpus moves."""
    h = hashlib.sha1(clip.rel.encode())
    try:
        if clip.path.is_dir():
            files = sorted(p for p in clip.path.iterdir() if p.is_file())
            for p in files:
                h.update(f"{p.name}:{p.stat().st_size};".encode())
            for p in files[:1] + files[-1:]:
                _file_digest(p, h)
        else:
            _file_digest(clip.path, h)
    except OSError as e:  # unreadable input: key it by the error so a fixed file is picked up next time
        h.update(f"error:{type(e).__name__}".encode())
    return h.hexdigest()


class Stamps:
    """Content fingerprints remembered with each clip's stat stamp (size, mtime, inode): a rerun reads a file's
    bytes only when its stamp changed. For a frames folder the stamp is the folder's own (it changes when frames
    are added, removed or renamed, not when one is rewritten in place). One table per part of a split run, kept
    and matched as columns (a million clips are a few arrays, not a million tuples)."""

    COLUMNS = ("rel", "size", "mtime_ns", "inode", "fingerprint")

    def __init__(self, path: Path):
        self.path = Path(path)
        self.known = None  # the table of the last run
        if self.path.is_file():
            import pyarrow.parquet as pq

            try:
                self.known = pq.read_table(self.path, columns=list(self.COLUMNS))
            except Exception:  # noqa: BLE001 - a damaged table only costs reading the files again
                self.known = None
        self.now = None  # the table to save
        self.read = 0  # clips whose content was read this run

    def fingerprints(self, clips: list[Clip]) -> list[str]:
        """Each clip's content fingerprint, in order: the remembered one where the stamp is unchanged, else read
        from the file. A clip that cannot be stat'ed is fingerprinted by its error and not remembered."""
        import pyarrow as pa
        import pyarrow.compute as pc

        stamp = np.full((len(clips), 3), -1, np.int64)
        ok = np.zeros(len(clips), bool)
        for i, c in enumerate(clips):
            try:
                st = os.stat(c.file)
            except OSError:
                continue
            stamp[i], ok[i] = (st.st_size, st.st_mtime_ns, st.st_ino), True
        rels = pa.array([c.rel for c in clips], pa.string())
        fps: list[str | None] = [None] * len(clips)
        hit = np.zeros(len(clips), bool)
        if self.known is not None and len(clips):
            rows = pc.index_in(rels, self.known["rel"]).fill_null(-1).to_numpy(zero_copy_only=False)
            hit = ok & (rows >= 0)
            known = np.stack([self.known[c].to_numpy(zero_copy_only=False).astype(np.int64)
                              for c in ("size", "mtime_ns", "inode")], 1) if self.known.num_rows else stamp[:0]
            hit[hit] = (known[rows[hit]] == stamp[hit]).all(1)
            for i, fp in zip(np.flatnonzero(hit), self.known["fingerprint"].take(rows[hit]).to_pylist()):
                fps[i] = fp
        for i in np.flatnonzero(~hit):
            fps[i] = fingerprint(clips[i])
        self.read = int((ok & ~hit).sum())
        unchanged = self.known is not None and self.read == 0 and int(ok.sum()) == self.known.num_rows
        if not unchanged:
            self.now = pa.table({"rel": rels.filter(ok), "size": stamp[ok, 0], "mtime_ns": stamp[ok, 1],
                                 "inode": stamp[ok, 2],
                                 "fingerprint": pa.array([f for f, good in zip(fps, ok) if good], pa.string())})
        return fps

    def save(self) -> None:
        if self.now is not None:
            write_table(self.path, self.now)


def digest(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


_encode = json.JSONEncoder(sort_keys=True, default=str).encode


def digest_of(*head, tail: tuple = ()) -> Callable[..., str]:
    """f(*inputs) = digest(*head, *inputs, *tail), the constant parts (a step's name, version and options)
    encoded once: a rerun hashes each clip's inputs for every step (~3.4 M digests at VoxCeleb2 size)."""
    before = "[" + "".join(_encode(p) + ", " for p in head)
    after = "".join(", " + _encode(p) for p in tail) + "]"

    def f(*inputs) -> str:
        assert inputs, "digest_of needs at least one input"
        return hashlib.sha1((before + ", ".join(map(_encode, inputs)) + after).encode()).hexdigest()[:16]
    return f


def digest_items(head: tuple, items: Iterable, tail: tuple = ()) -> str:
    """digest(*head, list(items), *tail), hashed as it is encoded: no list and no text of the whole corpus."""
    h = hashlib.sha1(("[" + "".join(_encode(p) + ", " for p in head) + "[").encode())
    for i, item in enumerate(items):
        h.update(((", " if i else "") + _encode(item)).encode())
    h.update(("]" + "".join(", " + _encode(p) for p in tail) + "]").encode())
    return h.hexdigest()[:16]


# per-frame lists of a step's info record that its index keeps only as their length (key -> name of the count):
# the whole record stays in the output file; at ~33 frames a clip (~2 KB of FaceSwap donors) these lists would be
# most of a rerun's memory at VoxCeleb2 size
INDEX_COUNTS = {"faceswap": {"donors": "frames"}}


class StepCache:
    """One folder per step; one file per clip and input hash. `infos()` reads many outputs' info records from
    an index kept beside them (one table per part of a split run), so a rerun opens no output file."""

    def __init__(self, root: Path, step: str, part: str = "0/1"):
        self.dir = root / step
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.dir / f"index-{part_name(part)}.parquet"
        self.counts = INDEX_COUNTS.get(step, {})

    def _indexed(self, text: str) -> str:
        """An info record as the index keeps it (per-frame lists as their length)."""
        if not self.counts:
            return text
        info = json.loads(text)
        for name, count in self.counts.items():
            if name in info:
                info[count] = len(info.pop(name))
        return json.dumps(info)

    def path(self, key: str, h: str) -> Path:
        return self.dir / f"{key}-{h}.npz"

    def missing(self, wanted: Mapping[str, str]) -> set[str]:
        """The keys whose output (key -> hash) is not in the folder, from one listing of its names: no file is
        stat'ed (a rerun asks for every clip, and a stat per output is a random read where the inodes are not
        cached: 1.13 M outputs a step at VoxCeleb2 size)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        present = []
        with os.scandir(self.dir) as entries:
            while True:
                names = [e.name for _, e in zip(range(_LISTING_CHUNK), entries)]
                if not names:
                    break
                present.append(pa.array(names, pa.string()))
        present = pa.chunked_array(present, pa.string()).combine_chunks()
        keys, out = list(wanted), set()
        for i in range(0, len(keys), _LISTING_CHUNK):
            chunk = keys[i:i + _LISTING_CHUNK]
            found = pc.is_in(pa.array([f"{k}-{wanted[k]}.npz" for k in chunk], pa.string()), value_set=present)
            out.update(k for k, here in zip(chunk, found.to_numpy(zero_copy_only=False)) if not here)
        return out

    def save(self, key: str, h: str, arrays: dict, info: dict) -> None:
        save_npz(self.path(key, h), arrays, info)

    def prune(self, current: dict[str, str]) -> int:
        """Delete older versions of these clips' outputs (key -> current hash); one pass over the folder, so
        that saving stays O(1) per clip. Other clips' files (another part's) are left alone."""
        removed = 0
        with os.scandir(self.dir) as entries:
            for e in entries:
                if not e.name.endswith(".npz"):
                    continue
                key, _, h = e.name[:-4].rpartition("-")
                if key in current and current[key] != h:
                    Path(e.path).unlink(missing_ok=True)
                    removed += 1
        return removed

    def load(self, key: str, h: str) -> tuple[dict, dict]:
        return load_npz(self.path(key, h))

    def open(self, key: str, h: str) -> NpzArrays:
        return NpzArrays(self.path(key, h))

    def infos(self, wanted: dict[str, str], written: Mapping[str, str] = {}) -> InfoRecords:  # noqa: B006
        """key -> info of the output (key, hash) for every key in wanted (all must exist), as the index keeps it
        (INDEX_COUNTS): from the index where it holds that hash (matched as columns), else from `written` (the
        JSON text of outputs this run wrote, as the jobs returned them), else from the output file; the index is
        updated."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        keys = pa.array(list(wanted), pa.string())
        hashes = pa.array(list(wanted.values()), pa.string())
        texts: list[str | None] = [None] * len(keys)
        hit = np.zeros(len(keys), bool)
        indexed_rows = -1
        if self.index_path.is_file() and len(keys):
            try:
                t = pq.read_table(self.index_path, columns=["key", "hash", "info"])
                rows = pc.index_in(keys, t["key"]).fill_null(-1).to_numpy(zero_copy_only=False)
                hit = rows >= 0
                hit[hit] = pc.equal(t["hash"].take(rows[hit]), hashes.filter(hit)).to_numpy(zero_copy_only=False)
                current = (t.schema.metadata or {}).get(b"counts") == json.dumps(self.counts).encode()
                for i, text in zip(np.flatnonzero(hit), t["info"].take(rows[hit]).to_pylist()):
                    texts[i] = text if current else self._indexed(text)  # an index of older code: once
                indexed_rows = t.num_rows if current else -1
            except Exception:  # noqa: BLE001 - a damaged index only costs reading the outputs again
                texts, hit = [None] * len(keys), np.zeros(len(keys), bool)
        for i in np.flatnonzero(~hit):
            key = keys[i].as_py()
            if key in written:
                texts[i] = self._indexed(written[key])
                continue
            with NpzArrays(self.path(key, wanted[key])) as z:
                texts[i] = self._indexed(z.info_text())
        if not hit.all() or indexed_rows != len(keys):
            order = pc.sort_indices(keys)
            table = pa.table({"key": keys.take(order), "hash": hashes.take(order),
                              "info": pa.array(texts, pa.string()).take(order)})
            write_table(self.index_path, table.replace_schema_metadata({"counts": json.dumps(self.counts)}))
        return InfoRecords(dict(zip(wanted, texts)))


class InfoRecords(MutableMapping):
    """key -> a step output's info record, kept as its JSON text and parsed on each access: a parsed record
    costs several times its text, and a run reads each record once or twice. Records set here (a failed job's)
    are kept as given."""

    def __init__(self, texts: dict[str, str | dict]):
        self._records = texts

    def __getitem__(self, key: str) -> dict:
        record = self._records[key]
        return json.loads(record) if isinstance(record, str) else record

    def __setitem__(self, key: str, info: dict) -> None:
        self._records[key] = info

    def __delitem__(self, key: str) -> None:
        del self._records[key]

    def __iter__(self):
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)


@dataclass
class Plan:
    """Per clip: the hash keying each step's output."""
    clips: list[Clip]
    faces: dict = field(default_factory=dict)
    region: dict = field(default_factory=dict)
    faceswap: dict = field(default_factory=dict)
