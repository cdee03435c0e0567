"""Decoding a clip into sampled RGB frames with their true timestamps.

Videos: ffmpeg keeps the first frame at or after each point of the sampling grid k / sample_fps (the `select`
filter), so every frame is a real source frame with its stream timestamp, whatever the source rate; ffmpeg
applies the rotation metadata; `showinfo` reports each kept frame's timestamp and size.
Frame folders: files ordered by the number in their name (never by listing order), timestamp = number /
frames_fps, the same grid selection."""
from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import ffmpeg
import numpy as np

VIDEO_EXTENSIONS = {".mp4", ".mov", ".avi", ".mkv"}


FRAME_EXTENSIONS = {".jpg", ".jpeg", ".png"}




class DecodeError(RuntimeError):
    """The clip cannot be decoded at all; the message is the reason stored in the rejects table."""


@dataclass
class Frame:
    timestamp: float
    source_frame: int
    rgb: np.ndarray | None  # None: the image could not be read


@dataclass
class DecodeReport:
    """Filled while frames are yielded: problems that did not stop decoding."""
    warning: str = ""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DecodeError("file not found (a broken link?)" if path.is_symlink() else "file not found")
    if not os.access(path, os.R_OK):
        raise DecodeError("unreadable file (permission denied)")
    if path.is_file() and path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")


def probe(path: Path) -> dict:
    """ffprobe's view of the clip's video stream: a real video, not an attached picture (cover art), the longest
    when there are several; DecodeError when there is none."""
    _check_file(path)
    try:
        info = ffmpeg.probe(str(path))
    except ffmpeg.Error as e:
        lines = [ln.replace(f"{path}: ", "").strip() for ln in e.stderr.decode(errors="replace").splitlines()]
        lines = list(dict.fromkeys(re.sub(r"^\[.*?\] ", "", ln) for ln in lines if ln))
        raise DecodeError(f"not a readable video ({'; '.join(lines[-2:]) or 'ffprobe failed'})") from None
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "video"]
    moving = [s for s in streams if not (s.get("disposition") or {}).get("attached_pic")]
    if not moving:
        raise DecodeError("no video stream (only an attached picture)" if streams else "no video stream")
    return max(moving, key=_stream_length)


def _stream_length(stream: dict) -> float:
    """Seconds: the stream's duration, else its DURATION tag (HH:MM:SS.fff, MKV), else frames / rate."""
    try:
        return float(stream["duration"])
    except (KeyError, ValueError, TypeError):
        pass
    tag = str((stream.get("tags") or {}).get("DURATION", ""))
    m = re.fullmatch(r"(\d+):(\d+):([\d.]+)", tag)
    if m:
        return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    try:
        return float(stream.get("nb_frames") or 0) / frame_rate(stream)
    except ValueError:
        return 0.0


def frame_rate(stream: dict) -> float:
    """The stream's frame rate; 0/0 or missing rates (stills, some MKVs) fall back to r_frame_rate, then 25."""
    for key in ("avg_frame_rate", "r_frame_rate"):
        try:
            rate = float(Fraction(stream.get(key) or "0/1"))
        except (ValueError, ZeroDivisionError):
            continue
        if math.isfinite(rate) and rate > 0:
            return rate
    return 25.0


_SHOWINFO = re.compile(r"Parsed_showinfo.*\bn:\s*(\d+).*\bpts_time:\s*(\S+).*\bs:(\d+)x(\d+)")


def grid_cell(t: float, sample_fps: float) -> int:
    """The sampling interval [k, k+1) / sample_fps holding time t (the select filter's floor(t*r+1e-9))."""
    return math.floor(t * sample_fps + 1e-9)


def grid_select(timestamps: list[float], sample_fps: float) -> list[int]:
    """Indices of the first timestamp at or after each grid point k / sample_fps (what the ffmpeg filter does)."""
    chosen, last_cell = [], None
    for i, t in enumerate(timestamps):
        cell = grid_cell(t, sample_fps)
        if last_cell is None or cell > last_cell:
            chosen.append(i)
            last_cell = cell
    return chosen


@contextlib.contextmanager
def utf8_path(path: Path):
    """The path itself, or, when its name is not UTF-8 (ffmpeg-python cannot build a command from it), a
    UTF-8-named link to it in a temporary folder for as long as the context lasts."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        with tempfile.TemporaryDirectory(prefix="sslfer-clip-") as folder:
            link = os.path.join(folder, "clip" + os.fsencode(Path(path).suffix).decode("ascii", "replace"))
            os.symlink(os.path.abspath(path), link)
            yield link
        return
    yield str(path)


def read_video(path: Path, sample_fps: float, max_side: int, report: DecodeReport) -> Iterator[Frame]:
    with utf8_path(path) as name:
        yield from _read_video(Path(name), sample_fps, max_side, report)


def _read_video(path: Path, sample_fps: float, max_side: int, report: DecodeReport) -> Iterator[Frame]:
    stream = probe(path)
    rate = frame_rate(stream)
    try:
        start = float(stream.get("start_time") or 0.0)
    except ValueError:
        start = 0.0
    r = repr(float(sample_fps))
    select = f"isnan(prev_selected_t)+gt(floor(t*{r}+1e-9),floor(prev_selected_t*{r}+1e-9))"
    scale_w = f"if(gt(iw,ih),min(iw,{max_side}),-2)"
    scale_h = f"if(gt(iw,ih),-2,min(ih,{max_side}))"
    proc = (ffmpeg.input(str(path), threads=1)[str(stream["index"])]  # mapped: never an attached picture
            .filter("select", select).filter("scale", w=scale_w, h=scale_h).filter("showinfo")
            .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
            .global_args("-nostdin", "-hide_banner", "-loglevel", "info")
            .run_async(pipe_stdout=True, pipe_stderr=True))
    infos: queue.Queue = queue.Queue()
    errors: list[str] = []

    def read_stderr():
        try:
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                m = _SHOWINFO.search(line)
                if m:
                    pts = _float_or_nan(m.group(2))  # NOPTS: no timestamp, estimated below
                    infos.put((pts, int(m.group(3)), int(m.group(4))))
                elif re.search(r"error|invalid|corrupt|truncat|missing", line, re.I):
                    errors.append(line.split("] ", 1)[-1])
        finally:
            infos.put(None)  # always: the consumer never waits on a dead reader

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    count, last, untimed, last_cell = 0, None, 0, None
    try:
        while True:
            info = infos.get()
            if info is None:
                break
            pts, w, h = info
            if math.isnan(pts):  # ffmpeg's select keeps every such frame: placed one source frame on, kept by grid
                pts = start if last is None else last + 1 / rate
                untimed += 1
            last = pts
            data = proc.stdout.read(w * h * 3)
            if len(data) < w * h * 3:
                break
            cell = grid_cell(pts, sample_fps)
            if last_cell is not None and cell <= last_cell:
                continue
            last_cell = cell
            count += 1
            yield Frame(pts, int(round((pts - start) * rate)), np.frombuffer(data, np.uint8).reshape(h, w, 3))
    finally:
        proc.stdout.close()
        code = proc.wait()
        reader.join()
    if count == 0:
        raise DecodeError(f"no frame could be decoded ({errors[-1] if errors else f'ffmpeg exit {code}'})")
    if code != 0 or errors:
        report.warning = f"decoding stopped or skipped data ({errors[-1] if errors else f'ffmpeg exit {code}'}); " \
                         f"the {count} frames decoded were kept"
    elif untimed:
        report.warning = f"{untimed} decoded frames had no timestamp (NOPTS): each placed one source frame " \
                         f"({1 / rate:.3g} s) after the previous one"


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_frame_folder(folder: Path, sample_fps: float, frames_fps: float, max_side: int) -> Iterator[Frame]:
    _check_file(folder)
    numbered = []
    for p in folder.iterdir():
        m = re.search(r"(\d+)$", p.stem)
        if p.suffix.lower() in FRAME_EXTENSIONS and m:
            numbered.append((int(m.group(1)), p))
    if not numbered:
        raise DecodeError("no numbered frame images in the folder")
    numbered.sort()
    times = [n / frames_fps for n, _ in numbered]
    for i in grid_select(times, sample_fps):
        n, p = numbered[i]
        bgr = cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:  # an unreadable image is a dropped frame (rgb None), not a failed clip
            yield Frame(times[i], n, None)
            continue
        h, w = bgr.shape[:2]
        if max(h, w) > max_side:
            s = max_side / max(h, w)
            bgr = cv2.resize(bgr, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        yield Frame(times[i], n, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
