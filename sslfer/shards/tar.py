"""The shards' tar files, written and read: byte for byte what webdataset's TarWriter writes (without importing it,
or torch), read by a small reader of the headers (tarfile costs ~40 us a member, and a clip sample has 14), indexed
by byte range per sample and cached per shard."""
from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np

from sslfer.shards.schema import SHARD_NAME


_TAR_BLOCK, _TAR_RECORD = 512, 10240


def tar_member(name: str, data: bytes) -> bytes:
    """One regular file as `tarfile` writes it in its default (PAX) format with webdataset's fields (mode 0444,
    mtime 0, owner bigdata): a ustar header made here for short ASCII names (tarfile's Python-level header
    costs ~25 µs a member, this ~6; 14 members a sample), tarfile's own for the rest; then the data, padded."""
    if name.isascii() and len(name) < 100 and len(data) < 8 ** 11:
        header = bytearray(_TAR_BLOCK)
        header[:len(name)] = name.encode()
        header[100:157] = b"0000444\x000000000\x000000000\x00%011o\x0000000000000\x00        0" % len(data)
        header[257:265] = b"ustar\x0000"
        header[265:272], header[297:304] = b"bigdata", b"bigdata"
        header[148:155] = b"%06o\x00" % sum(header)
    else:
        member = tarfile.TarInfo(name)
        member.size, member.mtime, member.mode, member.uname, member.gname = len(data), 0, 0o444, "bigdata", "bigdata"
        header = member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return bytes(header) + data + bytes(-len(data) % _TAR_BLOCK)


class ShardWriter:
    """Sequential shards of at most max_bytes, numbered from `first`, each renamed into place when closed. Byte
    for byte what webdataset's TarWriter writes, without importing it (and torch) here."""

    def __init__(self, out: Path, max_bytes: float, first: int = 0):
        self.out, self.max_bytes = out, max_bytes
        self.index, self.size, self.file = first - 1, 0, None
        self.total, self.written = 0, []

    @property
    def name(self) -> str:
        return SHARD_NAME.format(self.index)

    def _open(self):
        self.index += 1
        self.size = 0
        self.file = open(self.out / f".{self.name}.tmp", "wb")

    def close(self):
        if self.file is not None:
            self.size += 2 * _TAR_BLOCK  # the end-of-archive blocks, then zeros to a whole record, as tarfile
            self.file.write(bytes(2 * _TAR_BLOCK + -self.size % _TAR_RECORD))
            self.file.close()
            (self.out / f".{self.name}.tmp").replace(self.out / self.name)
            self.total += (self.out / self.name).stat().st_size
            self.written.append(self.name)
            self.file = None

    def write(self, sample: dict) -> str:
        if self.file is None or self.size >= self.max_bytes:
            self.close()
            self._open()
        data = b"".join(tar_member(f"{sample['__key__']}.{name}", sample[name])
                        for name in sorted(k for k in sample if k != "__key__"))  # as webdataset's TarWriter
        self.file.write(data)
        self.size += len(data)  # bytes on disk, tar headers and padding included
        return self.name


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
    from sslfer.files import save_npz
    from sslfer.npz import load_npz

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
