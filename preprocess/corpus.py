"""Finding the clips of a corpus in one of three layouts, each with its speaker (the identity)."""
from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from sslfer.decode import FRAME_EXTENSIONS, VIDEO_EXTENSIONS


@dataclass(frozen=True, slots=True)
class Clip:
    """One clip of the corpus. Slotted, its path kept as text: a million of them are held at once."""
    kind: str      # "video" (one file) or "frames" (a folder of numbered images)
    file: str      # absolute path
    rel: str       # relative to the corpus root, for reports
    speaker: str
    video: str
    clip: str
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        # unique, stable, WebDataset-safe sample key (no dots): readable part + hash of the path
        readable = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{self.speaker}-{self.video}-{self.clip}")[:80]
        object.__setattr__(self, "key", f"{readable}-{hashlib.sha1(self.rel.encode()).hexdigest()[:8]}")

    @property
    def path(self) -> Path:
        return Path(self.file)


class CorpusError(ValueError):
    """DATA missing, empty, or in no known layout; reported as one line."""


LAYOUT_SHAPES = {
    "videos": f"looked for <speaker>/<video>/<clip> with {', '.join(sorted(VIDEO_EXTENSIONS))} (layout=frames "
              "for VoxCeleb1's face frames, layout=csv for a list)",
    "frames": "looked for VoxCeleb1 face frames [unzippedIntervalFaces/data/]<Name>/1.6/<ytid>/<clip>/*.jpg",
    "csv": "looked for rows path,speaker[,video] naming readable files",
}


def detect_layout(data: Path) -> str:
    if data.is_file() and data.suffix.lower() == ".csv":
        return "csv"
    if not data.is_dir():
        raise CorpusError(f"{data}: no such folder or CSV file")
    if (data / "unzippedIntervalFaces").is_dir() or any(data.glob("*/1.6")) or any(data.glob("data/*/1.6")):
        return "frames"
    return "videos"


def find_clips(data: str | Path, layout: str = "auto", meta_csv: str = "") -> tuple[list[Clip], list[dict]]:
    """All clips of the corpus, sorted by key, and the rejects (paths that fit no layout)."""
    data = Path(data).resolve()
    layout = detect_layout(data) if layout == "auto" else layout
    if layout == "videos":
        clips, rejects = _videos_tree(data)
    elif layout == "frames":
        clips, rejects = _frames_tree(data, meta_csv)
    elif layout == "csv":
        clips, rejects = _csv_list(data)
    else:
        raise CorpusError(f"layout={layout!r}: expected auto, videos, frames or csv")
    if not clips:
        raise CorpusError(f"no clips in {printable(str(data))} ({len(rejects)} files outside the layout) for "
                          f"layout {layout}: {LAYOUT_SHAPES[layout]}")
    return sorted(clips, key=lambda c: c.key), rejects


def _reject(rel: str, reason: str) -> dict:
    return {"source": rel, "key": "", "frame": -1, "timestamp": -1.0, "step": "discover", "reason": reason}


def printable(text: str) -> str:
    """A path's text as valid UTF-8: bytes that are not UTF-8 (a name from another system's encoding) become
    \\xNN escapes. Names, keys and reports use it; the file itself is still opened by its real path."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def walk_files(root: Path, rejects: list) -> list[str]:
    """Every file under root, as its path relative to root (text: no Path object per file), following folder
    links but reporting (not following) one that leads to a folder already scanned (a loop, or the same clips
    twice)."""
    files, seen = [], set()
    top = os.fspath(root)
    cut = len(top.rstrip(os.sep)) + 1
    for folder, dirs, names in os.walk(top, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            rejects.append(_reject(printable(os.path.relpath(folder, root)),
                                   "folder link to a folder already scanned (a loop, or a second path to the "
                                   "same clips): not followed"))
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        prefix = folder[cut:] + os.sep if len(folder) >= cut else ""
        for d in dirs:
            if os.path.splitext(d)[1].lower() in VIDEO_EXTENSIONS:
                rejects.append(_reject(printable(prefix + d), "a folder named like a video (its contents are "
                                                              "still scanned)"))
        names.sort()
        files += [prefix + n for n in names]
    return files


def _videos_tree(root: Path):
    clips, rejects = [], []
    top = os.fspath(root)
    shared: dict[str, str] = {}  # one string per speaker and per video, not one per clip
    for relpath in walk_files(root, rejects):
        stem, ext = os.path.splitext(relpath)
        if ext.lower() not in VIDEO_EXTENSIONS:
            continue
        rel = printable(relpath)
        parts = rel.split("/")
        if len(parts) < 3:
            rejects.append(_reject(rel, "not in the <speaker>/<video>/<clip> layout"))
            continue
        speaker, video = shared.setdefault(parts[0], parts[0]), shared.setdefault(parts[-2], parts[-2])
        clips.append(Clip("video", os.path.join(top, relpath), rel, speaker, video,
                          printable(os.path.basename(stem))))
    return clips, rejects


def _speaker_names(root: Path, meta_csv: str) -> dict[str, str]:
    """VGGFace1 name -> VoxCeleb1 id, from vox1_meta.csv (tab-separated), when available."""
    candidates = [Path(meta_csv)] if meta_csv else [d / "vox1_meta.csv" for d in [root, *root.parents][:4]]
    for path in candidates:
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
            rows = list(csv.reader(text.splitlines(), dialect=dialect))
            return {r[1].strip(): r[0].strip() for r in rows[1:] if len(r) >= 2}
        if meta_csv:
            raise CorpusError(f"meta_csv={meta_csv}: no such file")
    return {}


def _frames_tree(root: Path, meta_csv: str):
    names = _speaker_names(root, meta_csv)
    clips, rejects = [], []
    folders = sorted({os.path.dirname(p) for p in walk_files(root, rejects)
                      if os.path.splitext(p)[1].lower() in FRAME_EXTENSIONS})
    for folder in folders:
        rel = printable(folder)
        parts = tuple(rel.split("/")) if rel else ()
        if "1.6" in parts and parts.index("1.6") >= 1 and len(parts) >= parts.index("1.6") + 3:
            i = parts.index("1.6")
            name, video, clip = parts[i - 1], parts[i + 1], "_".join(parts[i + 2:])
        elif len(parts) >= 3:
            name, video, clip = parts[-3], parts[-2], parts[-1]
        else:
            rejects.append(_reject(rel, "frame folder not in the <Name>/1.6/<ytid>/<clip> layout"))
            continue
        clips.append(Clip("frames", os.path.join(root, folder), rel, names.get(name, name), video, clip))
    return clips, rejects


def _csv_list(path: Path):
    clips, rejects = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "speaker"} <= set(reader.fieldnames):
            raise CorpusError(f"{path}: needs a header with columns path,speaker[,video]")
        for n, row in enumerate(reader, start=2):
            raw = (row.get("path") or "").strip()
            speaker = (row.get("speaker") or "").strip()
            if not raw or not speaker:
                rejects.append(_reject(f"{path.name}:{n}", "row without path or speaker"))
                continue
            p = Path(raw) if Path(raw).is_absolute() else (path.parent / raw)
            kind = "frames" if p.is_dir() else "video"
            video = (row.get("video") or "").strip() or p.parent.name
            clips.append(Clip(kind, str(p.resolve()), raw, speaker, video, p.stem if kind == "video" else p.name))
    return clips, rejects


def part_name(part: str) -> str:
    """'i/n' as it names files and folders: 'i-of-n'."""
    return part.replace("/", "-of-")


def select_part(clips: list[Clip], part: str) -> list[Clip]:
    """The deterministic part i of n (by a hash of each clip's key), for job arrays."""
    try:
        i, n = (int(x) for x in part.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise CorpusError(f"part={part!r}: expected i/n with 0 <= i < n") from None
    return [c for c in clips if int(hashlib.sha1(c.key.encode()).hexdigest(), 16) % n == i]
