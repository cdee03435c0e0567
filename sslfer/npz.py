"""Step outputs as .npz files (a stored zip of .npy arrays, as `np.savez` writes), written and read without
`zipfile`: a step output is a dozen small arrays, and zipfile's and np.load's per-member parsing (Python-level
zip headers, `ast.literal_eval` of every .npy header) cost ~0.3 ms per file, most of the bookkeeping of a
build at VoxCeleb2 size (~3.4 M outputs written and ~10 M read). Anything these fast paths do not expect
(compressed members, zip64, object or structured dtypes) goes through numpy's own reader and writer."""
from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

_LOCAL = struct.Struct("<4s5H3I2H")  # signature, version, flags, method, time, date, crc, sizes, name/extra lengths
_CENTRAL = struct.Struct("<4s6H3I5H2I")
_END = struct.Struct("<4s4H2IH")
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=][a-zA-Z]\d*)', 'fortran_order': (True|False), "
                         r"'shape': \(((?:\d+, ?)*\d*)\), \}")
_READ_WHOLE = 1 << 16  # files up to this size are read in one call; larger ones member by member
_DOS_DATE = (1980 - 1980) << 9 | 1 << 5 | 1  # 1980-01-01, as zipfile writes a ZipInfo without a date


def _npy_header(a: np.ndarray) -> bytes:
    """The .npy v1.0 header np.save writes for a C-contiguous array."""
    text = f"{{'descr': {np.lib.format.dtype_to_descr(a.dtype)!r}, 'fortran_order': False, 'shape': {a.shape!r}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * (pad % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def npz_bytes(arrays: dict) -> bytes:
    """The .npz file of these arrays (a stored zip; np.load reads it)."""
    local, central, pos = [], [], 0
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.hasobject or a.dtype.names is not None or a.dtype.subdtype is not None:
            raise TypeError(f"{name}: dtype {a.dtype} has no plain .npy form here")
        data = _npy_header(a) + np.ascontiguousarray(a).tobytes()
        fname = f"{name}.npy".encode()
        crc = zlib.crc32(data)
        if len(data) >= 0xFFFFFFFF or pos >= 0xFFFFFFFF:
            raise OverflowError("over 4 GB: needs zip64")
        local += [_LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, _DOS_DATE, crc, len(data), len(data), len(fname), 0),
                  fname, data]
        central.append(_CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, _DOS_DATE, crc, len(data), len(data),
                                     len(fname), 0, 0, 0, 0, 0o600 << 16, pos) + fname)
        pos += _LOCAL.size + len(fname) + len(data)
    directory = b"".join(central)
    end = _END.pack(b"PK\x05\x06", 0, 0, len(central), len(central), len(directory), pos, 0)
    return b"".join(local) + directory + end


def save_npz_bytes(arrays: dict, info: dict) -> bytes:
    """Arrays plus a JSON-able `info` dict as .npz bytes (no pickle)."""
    arrays = {"_info": np.frombuffer(json.dumps(info).encode(), np.uint8), **arrays}
    try:
        return npz_bytes(arrays)
    except (TypeError, OverflowError):
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()


class NpzArrays(Mapping):
    """The arrays of a step output, each read on first access: a step that needs a few of a file's arrays
    (FaceSwap: a donor's landmarks, and its faces only if it fits) reads only those. Close it, or use `with`."""

    def __init__(self, path: Path | str):
        self._fd, self._whole = os.open(path, os.O_RDONLY), None
        self._read: dict[str, np.ndarray] = {}
        self._numpy = None  # np.load's NpzFile, for files the fast path does not read
        try:
            self._members = self._directory()
        except (ValueError, struct.error):  # damaged or foreign: numpy's reader says what is wrong with it
            self._members = None
        if self._members is None:
            self._numpy = np.load(path, allow_pickle=False)

    def _directory(self) -> dict[str, tuple[int, int]] | None:
        """member name -> (offset of its local header, size) from the central directory; None where the file is
        not a plain stored zip."""
        size = os.fstat(self._fd).st_size
        tail_start = max(0, size - _READ_WHOLE)
        tail = os.pread(self._fd, size - tail_start, tail_start)
        self._whole = tail if tail_start == 0 else None
        at = tail.rfind(b"PK\x05\x06")
        if at < 0:
            raise ValueError("no end of central directory")
        _, disk, _, _, count, cd_size, cd_offset, _ = _END.unpack_from(tail, at)
        if disk or cd_offset == 0xFFFFFFFF or count == 0xFFFF:
            return None  # zip64 or multi-disk
        directory = tail[cd_offset - tail_start:] if cd_offset >= tail_start else \
            os.pread(self._fd, cd_size, cd_offset)
        members, pos = {}, 0
        for _ in range(count):
            (sig, _, _, flags, method, _, _, _, comp, plain, name_len, extra_len, comment_len, _, _, _,
             offset) = _CENTRAL.unpack_from(directory, pos)
            if sig != b"PK\x01\x02" or method != 0 or flags & 1 or comp != plain or 0xFFFFFFFF in (comp, offset):
                return None
            name = directory[pos + _CENTRAL.size:pos + _CENTRAL.size + name_len].decode()
            pos += _CENTRAL.size + name_len + extra_len + comment_len
            if not name.endswith(".npy"):
                return None
            members[name[:-4]] = (offset, plain)
        return members

    def _bytes(self, offset: int, n: int) -> bytes:
        return self._whole[offset:offset + n] if self._whole is not None else os.pread(self._fd, n, offset)

    def _load(self, name: str) -> np.ndarray:
        if self._numpy is not None:
            return self._numpy[name]
        offset, size = self._members[name]
        sig, *_, name_len, extra_len = _LOCAL.unpack(self._bytes(offset, _LOCAL.size))
        if sig != b"PK\x03\x04":
            raise ValueError(f"{name}: damaged zip member")
        start = offset + _LOCAL.size + name_len + extra_len
        head = self._bytes(start, min(size, 256))
        m = None
        if head[:8] == b"\x93NUMPY\x01\x00":
            header_len = 10 + struct.unpack_from("<H", head, 8)[0]
            m = _NPY_HEADER.fullmatch(head[10:header_len].decode("latin1").rstrip(" \n"))
        if m is None:  # another .npy version or a header this does not parse: numpy's reader
            import io

            return np.lib.format.read_array(io.BytesIO(self._bytes(start, size)), allow_pickle=False)
        dtype = np.dtype(m.group(1))
        shape = tuple(int(d) for d in m.group(3).replace(" ", "").split(",") if d)
        out = np.empty(shape, dtype, order="F" if m.group(2) == "True" else "C")
        if out.nbytes != size - header_len:
            raise ValueError(f"{name}: {size - header_len} bytes for an array of {out.nbytes}")
        if out.nbytes:
            data = memoryview(out.reshape(-1, order="A").view(np.uint8))
            if self._whole is not None:
                data[:] = self._whole[start + header_len:start + size]
            elif os.preadv(self._fd, [data], start + header_len) != out.nbytes:
                raise ValueError(f"{name}: truncated")
        return out

    def __getitem__(self, name: str) -> np.ndarray:
        if name == "_info":
            raise KeyError(name)
        if name not in self._read:
            if self._numpy is None and name not in self._members:
                raise KeyError(f"{name} is not a file in the archive")
            self._read[name] = self._load(name)
        return self._read[name]

    def info_text(self) -> str:
        return (self._numpy["_info"] if self._numpy is not None else self._load("_info")).tobytes().decode()

    def info(self) -> dict:
        return json.loads(self.info_text())

    def _names(self) -> list[str]:
        return self._numpy.files if self._numpy is not None else list(self._members)

    def __iter__(self):
        return (name for name in self._names() if name != "_info")

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1
        if getattr(self, "_numpy", None) is not None:
            self._numpy.close()

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_npz(path: Path | str) -> tuple[dict, dict]:
    """Every array of a step output, and its info record."""
    with NpzArrays(path) as z:
        return {name: z[name] for name in z}, z.info()
