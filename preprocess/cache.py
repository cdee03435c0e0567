"""Step caches: content fingerprints, hash keys, atomic writes.

A step's output file is named `<clip key>-<hash>.npz`, the hash covering the step's inputs (the source's
fingerprint or the upstream outputs' hashes) and its options. Present means done: files appear only by
rename once complete, so a killed run leaves no half-written output."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from preprocess.corpus import Clip

_SAMPLE = 1 << 16
_UMASK = os.umask(0)
os.umask(_UMASK)


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


def digest(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npz(path: Path, arrays: dict, info: dict) -> None:
    """Arrays plus a JSON-able `info` dict, written atomically (no pickle)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, _info=np.frombuffer(json.dumps(info).encode(), np.uint8), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ArrayWriter:
    """A large .npy array filled in place through a memory map (never whole in RAM), under a temporary name
    until `finish()` renames it: readers see a complete file or none."""

    def __init__(self, path: Path, shape: tuple, dtype):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # left by a killed writer
            pid = stale.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _alive(int(pid)):
                stale.unlink(missing_ok=True)
        self.tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.tmp"
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=shape)

    def finish(self) -> np.ndarray:
        self.array.flush()
        del self.array
        os.replace(self.tmp, self.path)
        return np.load(self.path, mmap_mode="r")

    def discard(self) -> None:
        if hasattr(self, "array"):
            del self.array
        self.tmp.unlink(missing_ok=True)


def load_npz(path: Path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "_info"}
        info = json.loads(z["_info"].tobytes())
    return arrays, info


class StepCache:
    """One folder per step; one file per clip and input hash."""

    def __init__(self, root: Path, step: str):
        self.dir = root / step
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str, h: str) -> Path:
        return self.dir / f"{key}-{h}.npz"

    def has(self, key: str, h: str) -> bool:
        return self.path(key, h).is_file()

    def save(self, key: str, h: str, arrays: dict, info: dict) -> None:
        save_npz(self.path(key, h), arrays, info)
        for old in self.dir.glob(f"{key}-*.npz"):  # older versions of this clip's output
            if old.name != f"{key}-{h}.npz" and old.stem.rsplit("-", 1)[0] == key:
                old.unlink(missing_ok=True)

    def load(self, key: str, h: str) -> tuple[dict, dict]:
        return load_npz(self.path(key, h))
