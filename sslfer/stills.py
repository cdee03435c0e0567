"""Still images (evaluation sets, the trainer's monitor sets) aligned exactly as the pretraining frames (mediapipe
landmarks in static-image mode, the same template, 128 px), cached once per image list so repeated runs do not
redo detection. Where no face is found the image falls back to the dataset's face box (AffectNet) or the whole
image (already-cropped sets), and is counted."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sslfer.face_geometry import TEMPLATE_UNIT, alignment_matrix, box_crop_matrix, five_points, similarity
from sslfer.files import ArrayWriter, NpyArray, atomic_write_bytes
from sslfer.progress import progress

FACE_SIZE = 128
ALIGN_VERSION = 3
_mesh = None


@dataclass(frozen=True)
class Still:
    """One image to align (evaluation's Item has the same fields and is used alike)."""
    source: str                     # file path, or "<csv>:<row>" for images stored in a CSV
    box: tuple | None = None        # x, y, w, h of the face when the dataset gives it
    pixels: str = ""                # FER2013 CSV: 48x48 grey values
    points: tuple | None = None     # the five alignment points (x0, y0, ..., x4, y4) when the dataset gives them


def read_image(item: Still) -> np.ndarray | None:
    """RGB uint8, or None when unreadable."""
    if item.pixels:
        grey = np.array(item.pixels.split(), np.uint8).reshape(48, 48)
        return np.repeat(grey[..., None], 3, axis=2)
    try:
        bgr = cv2.imdecode(np.fromfile(item.source, np.uint8), cv2.IMREAD_COLOR)
    except OSError:
        return None
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _landmarks(rgb: np.ndarray) -> np.ndarray | None:
    """Face-mesh landmarks in the image's pixels, or None. Tightly cropped faces (FER2013) are often missed
    by the detector, so a second try pads the image with grey; small images are enlarged first."""
    global _mesh
    from sslfer.landmarks import quiet_stderr

    if _mesh is None:
        with quiet_stderr():
            import mediapipe as mp_

            _mesh = mp_.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                     refine_landmarks=True, min_detection_confidence=0.3)
    h, w = rgb.shape[:2]
    for pad_share in (0.0, 0.25):
        pad = int(round(max(h, w) * pad_share))
        img = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128)) \
            if pad else rgb
        ph, pw = img.shape[:2]
        scale = max(1.0, 192 / min(ph, pw))
        if scale > 1:
            img = cv2.resize(img, (round(pw * scale), round(ph * scale)), interpolation=cv2.INTER_CUBIC)
        with quiet_stderr():  # the graph logs its set-up on first use
            res = _mesh.process(np.ascontiguousarray(img))
        if res.multi_face_landmarks:
            return np.array([(p.x * pw - pad, p.y * ph - pad) for p in res.multi_face_landmarks[0].landmark],
                            np.float32)
    return None


def _warp(rgb: np.ndarray, m: np.ndarray) -> np.ndarray:
    return cv2.warpAffine(rgb, m, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_AREA if np.hypot(*m[0, :2]) < 1
                          else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _box_square(box: tuple) -> np.ndarray:
    """The square (x0, y0, x1, y1) centred on a face box, its side the box's longer one."""
    x, y, w, h = box
    side = max(w, h, 1)
    cx, cy = x + w / 2, y + h / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], float)


def _inside(points: np.ndarray, box: tuple, margin: float = 0.25) -> bool:
    """Whether the points' centre lies in the face box (grown by margin on every side)."""
    x, y, w, h = box
    cx, cy = points.mean(0)
    return x - margin * w <= cx <= x + (1 + margin) * w and y - margin * h <= cy <= y + (1 + margin) * h


def align_one(item: Still) -> tuple[np.ndarray | None, str, np.ndarray | None]:
    """(128x128 RGB face or None, how, the five alignment points in unit coordinates of the item's fallback
    frame: its box's square when it has a box, else the whole image). how: 'given landmarks' (the dataset's
    points, no detector), 'landmarks' (detected; with a box, only a face inside it), 'box' or 'box (detected face
    outside it)' (the box's square, to be placed by the mean geometry), 'full', 'unreadable'."""
    rgb = read_image(item)
    if rgb is None:
        return None, "unreadable", None
    face, how, pts, _ = align_rgb(rgb, item.box, item.points)
    return face, how, pts


def align_rgb(rgb: np.ndarray, box: tuple | None = None, points: tuple | None = None
              ) -> tuple[np.ndarray, str, np.ndarray | None, np.ndarray | None]:
    """align_one on a decoded RGB image: (face, how, unit points, the landmarks in image pixels or None)."""
    h, w = rgb.shape[:2]
    square = _box_square(box) if box is not None else np.array([0, 0, w, h], float)

    def unit(pts):
        return (pts - square[:2]) / (square[2:] - square[:2])

    if points is not None:
        pts = np.asarray(points, float).reshape(5, 2)
        return _warp(rgb, similarity(pts, TEMPLATE_UNIT * FACE_SIZE)), "given landmarks", unit(pts), None
    lm = _landmarks(rgb)
    outside = lm is not None and box is not None and not _inside(five_points(lm), box)
    if lm is not None and not outside:
        return _warp(rgb, alignment_matrix(lm, FACE_SIZE)), "landmarks", unit(five_points(lm)), lm
    if box is not None:
        m = box_crop_matrix(square, FACE_SIZE)
        return _warp(rgb, m), "box (detected face outside it)" if outside else "box", None, None
    return cv2.resize(rgb, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA), "full", None, None


def place_by_mean_geometry(full: np.ndarray, mean_points: np.ndarray) -> np.ndarray:
    """A whole (already cropped) image or a face box's square, resized to 128, moved onto the template as if
    its face sat where the dataset's aligned faces sit on average in that frame: fallbacks then match the
    aligned faces' scale and position."""
    m = similarity(mean_points * FACE_SIZE, TEMPLATE_UNIT * FACE_SIZE)
    return cv2.warpAffine(full, m, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def whole_image(item: Still) -> tuple[np.ndarray | None, str, None]:
    """align=none: the whole image resized to 128 (no detector), as is usual for pre-cropped sets like FER2013."""
    rgb = read_image(item)
    if rgb is None:
        return None, "unreadable", None
    return cv2.resize(rgb, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA), "whole image", None


def _align_chunk(task: tuple[list[Still], str]):
    items, mode = task
    return [align_one(it) if mode == "landmarks" else whole_image(it) for it in items]


def cache_key(items: list[Still], mode: str = "landmarks") -> str:
    h = hashlib.sha1(f"align-v{ALIGN_VERSION}".encode() + (b"" if mode == "landmarks" else f"|{mode}".encode()))
    for it in items:
        h.update(it.source.encode())
        if it.pixels:
            h.update(hashlib.sha1(it.pixels.encode()).digest())
        elif Path(it.source).is_file():
            st = Path(it.source).stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(repr(it.box).encode())
        h.update(repr(getattr(it, "points", None)).encode())
    return h.hexdigest()[:16]


def aligned_faces(items: list[Still], cache_dir: Path, workers: int, desc: str,
                  mode: str = "landmarks") -> tuple[np.ndarray, list[str]]:
    """uint8 [N, 128, 128, 3] (zeros where unreadable), memory-mapped from the cache, and how each was aligned.
    Written chunk by chunk into the cached .npy (never held whole in RAM: AffectNet's ~287k training faces are
    ~14 GB); the .json beside it, written last, marks the cache complete. mode: 'landmarks' (the pretraining
    alignment, with fallbacks) or 'none' (whole images)."""
    if mode not in ("landmarks", "none"):
        raise ValueError(f"align={mode!r}: expected landmarks or none")
    key = cache_key(items, mode)
    path, info_path = Path(cache_dir) / f"faces-{key}.npy", Path(cache_dir) / f"faces-{key}.json"
    if path.is_file() and info_path.is_file():
        return NpyArray(path), json.loads(info_path.read_text())["how"]
    out = ArrayWriter(path, (len(items), FACE_SIZE, FACE_SIZE, 3), np.uint8)
    faces = out.array
    how: list[str] = [""] * len(items)
    points: dict[bool, list[np.ndarray]] = {True: [], False: []}  # by whether the item has a face box
    chunk = 64
    chunks = [(items[i:i + chunk], mode) for i in range(0, len(items), chunk)]
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 and len(chunks) > 1 else None
    results = pool.imap(_align_chunk, chunks) if pool else map(_align_chunk, chunks)
    try:
        with progress(total=len(items), desc=f"align {desc}", unit="img", dynamic_ncols=True) as bar:
            for c, result in enumerate(results):
                for j, (face, h, pts) in enumerate(result):
                    if face is not None:
                        faces[c * chunk + j] = face
                    how[c * chunk + j] = h
                    if pts is not None:
                        points[items[c * chunk + j].box is not None].append(pts)
                bar.update(len(result))
        # fallbacks placed by the mean geometry of the faces that were aligned, in the same frame (box or image)
        means = {k: np.mean(v, axis=0) for k, v in points.items() if v}
        for i, h in enumerate(how):
            frame = h.startswith("box")
            if (h == "full" or frame) and frame in means:
                faces[i] = place_by_mean_geometry(np.asarray(faces[i]), means[frame])
                how[i] = f"{h} (placed by mean landmarks)"
    except BaseException:
        out.discard()
        raise
    finally:
        if pool:
            pool.terminate()
    faces = out.finish()
    atomic_write_bytes(info_path, json.dumps({"how": how, "version": ALIGN_VERSION}).encode())
    return faces, how


def alignment_counts(how: list[str]) -> dict:
    return {k: how.count(k) for k in dict.fromkeys(how)}
