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
                  hue_shift: int = 0):
    """n frames (RGB) of the photo on a canvas of size (w, h), with a slow head sway, zoom and lighting change."""
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
        t = i / max(n - 1, 1)
        angle = 6 * np.sin(2 * np.pi * t + phase[0])
        scale = base * (1 + 0.06 * np.sin(2 * np.pi * 1.5 * t + phase[1]))
        dx = 0.04 * w * np.sin(2 * np.pi * t + phase[2])
        dy = 0.03 * h * np.sin(2 * np.pi * 2 * t + phase[3])
        m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), angle, scale)
        m[:, 2] += (w / 2 - img.shape[1] / 2 + dx, h / 2 - img.shape[0] / 2 + dy)
        frame = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=(40, 60, 90))
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


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Make a small synthetic talking-face corpus (VoxCeleb layout) "
                                            "from the face photos shipped in scikit-image and matplotlib.")
    p.add_argument("out", help="output folder")
    p.add_argument("--speakers", type=int, default=4, help="speakers (photos reused with a hue shift)")
    p.add_argument("--clips", type=int, default=2, help="clips per speaker")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each clip")
    a = p.parse_args()
    made = make_corpus(Path(a.out), a.speakers, a.clips, a.seconds)
    print(f"{len(made)} clips in {a.out}")


EXPRESSIONS = ("neutral", "smile", "surprise")


def _warp_expression(rgb: np.ndarray, landmarks: np.ndarray, expression: str) -> np.ndarray:
    """Move facial landmarks as an expression would (mouth corners out and up; or mouth open, brows and lids
    up) with a smooth displacement field around them."""
    from preprocess.face_geometry import inter_ocular

    if expression == "neutral":
        return rgb
    iod = inter_ocular(landmarks)
    lm = landmarks[:, :2]
    moves = {"smile": {61: (-0.14, -0.10), 291: (0.14, -0.10), 0: (0, -0.03), 17: (0, 0.02)},
             "surprise": {13: (0, -0.10), 0: (0, -0.08), 14: (0, 0.22), 17: (0, 0.25), 105: (0, -0.14),
                          334: (0, -0.14), 159: (0, -0.06), 386: (0, -0.06)}}[expression]
    h, w = rgb.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = np.zeros_like(xs), np.zeros_like(ys)
    sigma2 = (0.22 * iod) ** 2
    for idx, (mx, my) in moves.items():
        cx, cy = lm[idx]
        g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma2))
        dx += g * mx * iod
        dy += g * my * iod
    return cv2.remap(rgb, xs - dx, ys - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def make_expression_sets(root: Path, identities: int = 4, per_class: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """Labelled images for the demo's evaluation: `expressions/<class>/*.jpg` (neutral, smile, surprise made by
    warping the face around its landmarks) and the same images as `identities/<Name>/<Name>_NNNN.jpg` (LFW
    layout, for FR-KNN)."""
    from preprocess.landmarks import FaceTracker

    photos = list(face_photos().values())
    expr_dir, id_dir = root / "expressions", root / "identities"
    with FaceTracker(1, 8, 0.3) as tracker:
        for person in range(identities):
            name = f"person{person}"
            frames = render_frames(photos[person % len(photos)], per_class * len(EXPRESSIONS), (192, 192),
                                   seed + person, 1.0, (person // len(photos)) * 25)
            for i, frame in enumerate(frames):
                tracker.previous = None
                det = tracker.detect(frame)
                if det.landmarks is None:
                    continue
                expression = EXPRESSIONS[i % len(EXPRESSIONS)]
                img = cv2.cvtColor(_warp_expression(frame, det.landmarks, expression), cv2.COLOR_RGB2BGR)
                for path in (expr_dir / expression / f"{name}_{i:04d}.jpg", id_dir / name / f"{name}_{i + 1:04d}.jpg"):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(path), img)
    return expr_dir, id_dir
