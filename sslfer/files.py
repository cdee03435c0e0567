"""Files written whole or not at all: atomic writes (bytes, parquet tables, npz arrays) and large .npy arrays
read and written by row without holding them in memory."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from sslfer.npz import save_npz_bytes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """data as path's new content, or path untouched: written under a name of this process and thread, then
    renamed (a leftover of a killed writer with the same name is overwritten, never read)."""
    tmp = f"{path.parent}/.{path.name}.{os.getpid()}-{threading.get_ident()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(tmp, flags, 0o666)  # the umask applies, as to any new file
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(path: Path, table) -> None:
    """A pyarrow Table as parquet, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def save_npz(path: Path, arrays: dict, info: dict) -> None:
    """Arrays plus a JSON-able `info` dict, written atomically (no pickle)."""
    atomic_write_bytes(path, save_npz_bytes(arrays, info))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NpyArray:
    """A .npy file read and written by row through os.pread/os.pwrite rather than a memory map: what it touches
    stays in the kernel's page cache (shared, reclaimable) instead of this process's resident memory, so going
    through AffectNet's ~14 GB of aligned faces keeps the resident set flat. a[rows] reads rows (an int, a slice
    or an index array; contiguous runs are read in one call); np.asarray(a) reads it all."""

    def __init__(self, path: Path, writable: bool = False):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            self.shape, fortran, self.dtype = read_header(f)
            self.offset = f.tell()
        if fortran or self.dtype.hasobject:
            raise ValueError(f"{self.path}: expected a C-ordered plain array")
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self):
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None

    def __getstate__(self):  # a file descriptor means nothing in another process: reopened there by path
        return {k: v for k, v in self.__dict__.items() if k != "fd"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.fd = os.open(self.path, os.O_RDONLY)

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self[np.array([idx])][0]
        if isinstance(idx, tuple):
            raise IndexError(f"{self.path.name}: index rows only (one int, slice, mask or index array)")
        if isinstance(idx, slice):
            rows, shape = np.arange(len(self))[idx], None
        else:
            idx = np.asarray(idx)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise IndexError(f"{self.path.name}: a mask of {idx.shape} for {len(self)} rows")
                idx = np.flatnonzero(idx)
            elif idx.dtype.kind not in "iu" and idx.size:
                raise IndexError(f"{self.path.name}: rows are indexed by integers, a slice or a mask, "
                                 f"not {idx.dtype}")
            rows, shape = idx.astype(np.int64).reshape(-1), idx.shape
        if len(rows) and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"{self.path.name}: row out of range for {len(self)} rows")
        rows = np.where(rows < 0, rows + len(self), rows)
        out = np.empty((len(rows),) + self.row_shape, self.dtype)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        starts = np.flatnonzero(np.diff(ordered, prepend=-2) != 1)  # runs of consecutive rows, one read each
        ends = np.append(starts[1:], len(ordered))
        flat = out.reshape(len(rows), -1).view(np.uint8) if len(rows) else None
        for a, b in zip(starts, ends):
            first, n = int(ordered[a]), int(b - a)
            in_place = np.array_equal(order[a:b], np.arange(a, b))
            target = flat[a:b] if in_place else np.empty((n, self.row_bytes), np.uint8)
            self._read_into(memoryview(target).cast("B"), self.offset + first * self.row_bytes)
            if not in_place:
                flat[order[a:b]] = target
        return out if shape is None else out.reshape(shape + self.row_shape)

    def _read_into(self, buf: memoryview, pos: int) -> None:
        while len(buf):  # one call reads at most ~2 GiB on Linux
            n = os.preadv(self.fd, [buf[:1 << 30]], pos)
            if n == 0:
                raise OSError(f"{self.path}: short read (truncated file?)")
            buf, pos = buf[n:], pos + n

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def write(self, start: int, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, self.dtype)
        if rows.shape[1:] != self.row_shape or start < 0 or start + len(rows) > len(self):
            raise ValueError(f"{self.path.name}: cannot write {rows.shape} at row {start} of {self.shape}")
        data = memoryview(rows).cast("B")
        pos = self.offset + start * self.row_bytes
        while len(data):  # pwrite may write less than asked
            n = os.pwrite(self.fd, data, pos)
            data, pos = data[n:], pos + n

    def __setitem__(self, i: int, row: np.ndarray) -> None:
        self.write(int(i), np.asarray(row)[None])


class ArrayWriter:
    """A large .npy array filled in place by row (`.array.write(start, rows)`, never whole in RAM), under a
    temporary name until `finish()` renames it: readers see a complete file or none."""

    def __init__(self, path: Path, shape: tuple, dtype):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # left by a killed writer
            pid = stale.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _alive(int(pid)):
                stale.unlink(missing_ok=True)
        self.tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.tmp"
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                  "shape": tuple(int(n) for n in shape)}
        with open(self.tmp, "wb") as f:
            np.lib.format.write_array_header_2_0(f, header)
            f.truncate(f.tell() + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)  # sparse
        self.array = NpyArray(self.tmp, writable=True)

    def finish(self) -> NpyArray:
        os.fsync(self.array.fd)
        del self.array
        os.replace(self.tmp, self.path)
        return NpyArray(self.path)

    def discard(self) -> None:
        if hasattr(self, "array"):
            del self.array
        self.tmp.unlink(missing_ok=True)
