"""Small talking-face-like clips made from face photos that ship inside installed packages (scikit-image's
astronaut, matplotlib's Grace Hopper), with head motion and changing colour, so the real mediapipe path runs.
Used by the tests and the demo; never a substitute for real data in results."""
from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np


def face_photos() -> dict[str, np.ndarray]:
    """name -> RGB uint8 photo with one frontal face."""
    import matplotlib.cbook
    import skimage.data

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = cv2.cvtColor(cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    astronaut = skimage.data.astronaut()
    return {"astronaut": astronaut[20:330, 90:330], "hopper": hopper[:420, 60:460]}


def render_frames(photo: np.ndarray, n: int, size: tuple[int, int], seed: int, face_scale: float = 1.0,
                  hue_shift: int = 0, photo_at=None, background=(40, 60, 90)):
    """n frames (RGB) of the photo on a canvas of size (w, h), with a slow head sway, zoom and lighting change.
    photo_at(i), when given, is frame i's photo (same size as `photo`): a face whose expression changes."""
    rng = np.random.default_rng(seed)
    w, h = size
    phase = rng.uniform(0, 2 * np.pi, 4)
    base = min(w / photo.shape[1], h / photo.shape[0]) * 0.9 * face_scale
    img = photo
    if hue_shift:
        hsv = cv2.cvtColor(photo, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + hue_shift) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    for i in range(n):
        if photo_at is not None:
            img = photo_at(i)
        t = i / max(n - 1, 1)
        angle = 6 * np.sin(2 * np.pi * t + phase[0])
        scale = base * (1 + 0.06 * np.sin(2 * np.pi * 1.5 * t + phase[1]))
        dx = 0.04 * w * np.sin(2 * np.pi * t + phase[2])
        dy = 0.03 * h * np.sin(2 * np.pi * 2 * t + phase[3])
        m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), angle, scale)
        m[:, 2] += (w / 2 - img.shape[1] / 2 + dx, h / 2 - img.shape[0] / 2 + dy)
        frame = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_CONSTANT,
                               borderValue=tuple(int(c) for c in background))
        gain = 1 + 0.15 * np.sin(2 * np.pi * t * 2 + phase[1])
        yield np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def encode(frames, path: Path, fps: float, size: tuple[int, int], extra: tuple = ()) -> Path:
    """Encode RGB frames to H.264 with ffmpeg (yuv420p)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:", "-c:v", "libx264", "-preset", "veryfast",
           "-pix_fmt", "yuv420p", *extra, str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for f in frames:
        proc.stdin.write(np.ascontiguousarray(f).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed to encode {path}")
    return path


def make_clip(path: Path, photo: np.ndarray, seconds: float = 3.0, fps: float = 25, size=(320, 320),
              seed: int = 0, face_scale: float = 1.0, hue_shift: int = 0, extra: tuple = ()) -> Path:
    n = int(round(seconds * fps))
    return encode(render_frames(photo, n, size, seed, face_scale, hue_shift), path, fps, size, extra)


def make_corpus(root: Path, speakers: int = 2, clips_per_speaker: int = 1, seconds: float = 3.0,
                fps: float = 25, size=(320, 320), seed: int = 0) -> list[Path]:
    """A VoxCeleb-layout corpus <speaker>/<video>/00001.mp4 cycling through the photos (a hue shift tells
    apart speakers that reuse a photo)."""
    photos = list(face_photos().values())
    paths = []
    for s in range(speakers):
        for c in range(clips_per_speaker):
            photo = photos[s % len(photos)]
            paths.append(make_clip(root / f"id{s:05d}" / f"video{c}" / "00001.mp4", photo, seconds, fps, size,
                                   seed=seed + 100 * s + c, hue_shift=(s // len(photos)) * 25))
    return paths



# --- people whose expression changes: the demo's controlled version of the paper's claim -----------------------

EXPRESSIONS = ("neutral", "smile", "surprise")
# landmark -> displacement in inter-ocular distances, at full intensity
EXPRESSION_MOVES = {
    "neutral": {},
    "smile": {61: (-0.16, -0.12), 291: (0.16, -0.12), 0: (0, -0.03), 17: (0, 0.03), 205: (0, -0.06),
              425: (0, -0.06), 145: (0, -0.04), 374: (0, -0.04)},
    "surprise": {13: (0, -0.10), 0: (0, -0.08), 14: (0, 0.24), 17: (0, 0.26), 152: (0, 0.10), 105: (0, -0.16),
                 334: (0, -0.16), 159: (0, -0.07), 386: (0, -0.07)},
}


def _displacement(shape: tuple[int, int], points: np.ndarray, moves: dict, iod: float, sigma: float):
    """A smooth field (dx, dy) on an image grid moving each listed landmark by its (dx, dy) · iod."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    for idx, (mx, my) in moves.items():
        cx, cy = points[idx]
        g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * (sigma * iod) ** 2))
        dx += g * mx * iod
        dy += g * my * iod
    return dx, dy


def _remap(rgb: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(rgb, xs - dx, ys - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


_LANDMARKS: dict[str, np.ndarray] = {}


def photo_landmarks(name: str) -> np.ndarray:
    """The face mesh's 478 points (x, y in pixels) on one of the shipped photos (found once per process)."""
    if name not in _LANDMARKS:
        from sslfer.landmarks import FaceTracker

        with FaceTracker(1, 8, 0.3) as tracker:
            det = tracker.detect(face_photos()[name])
        if det.landmarks is None:
            raise RuntimeError(f"no face found on the {name} photo")
        _LANDMARKS[name] = det.landmarks[:, :2].astype(np.float32)
    return _LANDMARKS[name]


class Person:
    """One synthetic identity: a shipped photo with its own face shape (eyes, nose, mouth, jaw and cheeks moved
    around their landmarks) and colouring, and fields that move it into each expression. `face(weights)` is the
    photo with the expressions mixed by weight (neutral = no move; weights may sum to less than 1)."""

    def __init__(self, name: str, seed: int, photo: str):
        from sslfer.face_geometry import inter_ocular

        rng = np.random.default_rng(seed)
        self.name = name
        base, lm = face_photos()[photo], photo_landmarks(photo)
        iod = inter_ocular(lm)
        a = rng.uniform(-1, 1, 8)
        shape_moves = {159: (-0.07 * a[0], 0), 386: (0.07 * a[0], 0), 1: (0, 0.07 * a[1]), 13: (0, 0.07 * a[2]),
                       61: (-0.06 * a[3], 0), 291: (0.06 * a[3], 0), 234: (-0.10 * a[4], 0),
                       454: (0.10 * a[4], 0), 152: (0, 0.10 * a[5]), 105: (0, 0.05 * a[6]), 334: (0, 0.05 * a[6])}
        dx, dy = _displacement(base.shape[:2], lm, shape_moves, iod, 0.3)
        hsv = cv2.cvtColor(_remap(base, dx, dy), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + 6 * a[7]) % 180
        hsv[..., 1:] *= rng.uniform(0.9, 1.1, 2)
        self.photo = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
        pts = lm + np.stack([dx[lm[:, 1].astype(int).clip(0, base.shape[0] - 1),
                                lm[:, 0].astype(int).clip(0, base.shape[1] - 1)],
                             dy[lm[:, 1].astype(int).clip(0, base.shape[0] - 1),
                                lm[:, 0].astype(int).clip(0, base.shape[1] - 1)]], 1)
        self.fields = {e: _displacement(base.shape[:2], pts, m, iod, 0.22) for e, m in EXPRESSION_MOVES.items() if m}

    def face(self, weights: dict[str, float]) -> np.ndarray:
        moving = [(w, self.fields[e]) for e, w in weights.items() if w > 0 and e in self.fields]
        if not moving:
            return self.photo
        dx = sum(w * f[0] for w, f in moving)
        dy = sum(w * f[1] for w, f in moving)
        return _remap(self.photo, dx, dy)


def people(n: int, seed: int = 0) -> list[Person]:
    photos = list(face_photos())
    return [Person(f"person{seed}-{k}", seed * 1000 + k, photos[k % len(photos)]) for k in range(n)]


def expression_schedule(n_frames: int, fps: float, rng: np.random.Generator, hold_s=(1.2, 2.5),
                        blend_s: float = 0.25) -> tuple[list[dict], list[str]]:
    """Per frame: the expression weights and the label (the expression with the largest weight). The face holds
    an expression for hold_s seconds at an intensity in [0.5, 1], then blends into another over blend_s."""
    segments, t = [], 0.0
    total = n_frames / fps
    while t < total:
        choices = [e for e in EXPRESSIONS if not segments or e != segments[-1][1]]
        segments.append((t, str(rng.choice(choices)), float(rng.uniform(0.5, 1.0))))
        t += float(rng.uniform(*hold_s))
    weights, labels = [], []
    for i in range(n_frames):
        t = i / fps
        k = max(j for j, s in enumerate(segments) if s[0] <= t)
        w = {segments[k][1]: segments[k][2]}
        if k + 1 < len(segments) and segments[k + 1][0] - t < blend_s:  # blending into the next one
            f = 1 - (segments[k + 1][0] - t) / blend_s
            w = {segments[k][1]: segments[k][2] * (1 - f)}
            w[segments[k + 1][1]] = w.get(segments[k + 1][1], 0) + segments[k + 1][2] * f
        weights.append(w)
        labels.append(max(w, key=w.get))
    return weights, labels


def make_expression_corpus(root: Path, n_people: int = 8, clips_per_person: int = 3, seconds: float = 10.0,
                           fps: float = 25, size=(224, 224), seed: int = 0) -> list[Path]:
    """A VoxCeleb-layout corpus <person>/<clip>/00001.mp4 in which each clip shows one person moving between
    expressions (expression_schedule) with the head motion and lighting changes of render_frames, on a background
    of the clip's own colour; labels.csv beside it holds each frame's expression."""
    rng = np.random.default_rng(seed)
    paths, rows = [], ["clip,frame,expression"]
    for p, person in enumerate(people(n_people, seed)):
        for c in range(clips_per_person):
            n = int(round(seconds * fps))
            weights, labels = expression_schedule(n, fps, rng)
            rel = f"id{p:05d}/clip{c}/00001.mp4"
            frames = render_frames(person.photo, n, size, int(rng.integers(1 << 31)),
                                   photo_at=lambda i, w=weights, who=person: who.face(w[i]),
                                   background=rng.integers(0, 255, 3))
            paths.append(encode(frames, root / rel, fps, size))
            rows += [f"{rel},{i},{e}" for i, e in enumerate(labels)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return paths


def make_expression_sets(root: Path, identities: int = 4, per_class: int = 12, seed: int = 1) -> tuple[Path, Path]:
    """Labelled stills for evaluation, of people made with another seed than the corpus's (held apart):
    `expressions/<class>/*.jpg` (each expression at an intensity in [0.4, 1], random pose and light) and the same
    images as `identities/<Name>/<Name>_NNNN.jpg` (LFW layout, for FR-KNN)."""
    rng = np.random.default_rng(seed)
    expr_dir, id_dir = root / "expressions", root / "identities"
    for person in people(identities, seed):
        labels = [e for e in EXPRESSIONS for _ in range(per_class)]
        faces = [person.face({e: float(rng.uniform(0.4, 1.0))}) for e in labels]
        order = rng.permutation(len(labels))  # frames of one sway at random phases: varied pose and light
        frames = render_frames(person.photo, len(labels), (192, 192), int(rng.integers(1 << 31)),
                               photo_at=lambda i: faces[order[i]], background=rng.integers(0, 255, 3))
        for i, frame in enumerate(frames):
            expression = labels[order[i]]
            img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            for path in (expr_dir / expression / f"{person.name}_{i:04d}.jpg",
                         id_dir / person.name / f"{person.name}_{i + 1:04d}.jpg"):
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), img)
    return expr_dir, id_dir


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Make a small synthetic talking-face corpus (VoxCeleb layout) from "
                                            "the face photos shipped in scikit-image and matplotlib: people "
                                            "whose expression changes within each clip.")
    p.add_argument("out", help="output folder")
    p.add_argument("--people", type=int, default=8, help="people (the two photos with their own face shape "
                                                         "and colouring)")
    p.add_argument("--clips", type=int, default=3, help="clips per person")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    a = p.parse_args()
    made = make_expression_corpus(Path(a.out), a.people, a.clips, a.seconds)
    print(f"{len(made)} clips in {a.out}")
