"""Face landmarks with mediapipe's face mesh (478 points), tracking one face through a clip."""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import numpy as np

from sslfer.face_geometry import five_points, inter_ocular


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (mediapipe's C++ set-up warnings cannot be turned off otherwise)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass
class Detection:
    landmarks: np.ndarray | None  # [478, 2] float32 image pixels of the kept face, None when rejected
    n_faces: int
    reason: str = ""              # why the frame is dropped ("" when kept)


class FaceTracker:
    """Runs the face mesh in video (tracking) mode over one clip's frames. Keeps the face nearest the one
    kept in the previous frame, else the largest; drops frames with no face, a face too small or a face
    whose eyes or mouth fall outside the frame."""

    def __init__(self, max_faces: int, min_face_px: float, min_detection_confidence: float):
        os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging: warnings and up only
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with quiet_stderr():
            import mediapipe as mp

            self.mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=False, max_num_faces=max_faces, refine_landmarks=True,
                min_detection_confidence=min_detection_confidence, min_tracking_confidence=0.5)
        self.min_face_px = min_face_px
        self.previous: np.ndarray | None = None  # five points of the last kept face
        self.seen_face = False  # the graph logs warnings while setting up, until its first face

    def close(self):
        self.mesh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def detect(self, rgb: np.ndarray) -> Detection:
        h, w = rgb.shape[:2]
        if self.seen_face:
            result = self.mesh.process(np.ascontiguousarray(rgb))
        else:
            with quiet_stderr():
                result = self.mesh.process(np.ascontiguousarray(rgb))
        faces = result.multi_face_landmarks or []
        self.seen_face = self.seen_face or bool(faces)
        if not faces:
            self.previous = None
            return Detection(None, 0, "no face found")
        candidates = [np.array([(p.x * w, p.y * h) for p in f.landmark], np.float32) for f in faces]
        points = [five_points(c) for c in candidates]
        if self.previous is not None:
            dist = [np.linalg.norm(p.mean(0) - self.previous.mean(0)) for p in points]
            best = int(np.argmin(dist))
            if dist[best] > inter_ocular(candidates[best]) * 1.5:  # tracked face lost: fall back to largest
                best = int(np.argmax([np.ptp(c[:, 0]) * np.ptp(c[:, 1]) for c in candidates]))
        else:
            best = int(np.argmax([np.ptp(c[:, 0]) * np.ptp(c[:, 1]) for c in candidates]))
        lm, pts = candidates[best], points[best]
        iod = inter_ocular(lm)
        if iod < self.min_face_px:
            return Detection(None, len(faces), f"face too small (inter-ocular {iod:.1f} px < {self.min_face_px:g})")
        if (pts < 0).any() or (pts[:, 0] >= w).any() or (pts[:, 1] >= h).any():
            return Detection(None, len(faces), "eyes or mouth outside the frame")
        self.previous = pts
        return Detection(lm, len(faces))
