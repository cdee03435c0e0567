"""Face geometry shared by alignment, FaceSwap and evaluation: mediapipe landmark groups, the canonical
template, similarity transforms, eye and mouth boxes. Pure numpy/OpenCV (no mediapipe import), so the
trainer and evaluation can use it on machines without mediapipe."""
from __future__ import annotations

import cv2
import numpy as np

N_LANDMARKS = 478  # mediapipe face mesh with refine_landmarks=True
# Index groups of mediapipe's face mesh (mediapipe.solutions.face_mesh_connections; checked in tests).
# "RIGHT" is the subject's right eye, which appears on the image's left.
RIGHT_EYE = [7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246]
LEFT_EYE = [249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466]
RIGHT_BROW = [46, 52, 53, 55, 63, 65, 66, 70, 105, 107]
LEFT_BROW = [276, 282, 283, 285, 293, 295, 296, 300, 334, 336]
LIPS = [0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269,
        270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415]
NOSE = [1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294, 326, 327, 344, 440]
MOUTH_CORNERS = [61, 291]
NOSE_TIP = 1
EYES_AND_BROWS = RIGHT_EYE + LEFT_EYE + RIGHT_BROW + LEFT_BROW
NOSE_AND_MOUTH = NOSE + LIPS
INNER_FACE = EYES_AND_BROWS + NOSE_AND_MOUTH
# what a FaceSwap donor must fit: the face's frame, not its expression (lips move with speech and expression, so
# an open mouth would fail the fit against most donors and expressive frames would lack composites)
SWAP_FIT = EYES_AND_BROWS + NOSE
INNER_LIPS = (13, 14)  # upper and lower inner lip, on the midline
# mouth opening bins (inner-lip gap in inter-ocular distances) for FaceSwap coverage
MOUTH_BINS = (("closed", 0.0), ("open", 0.05), ("wide", 0.3))

# ArcFace's 5-point template (112 px), shrunk by 0.8 about the centre and moved up 4 px in a 128 canvas: a loose
# crop with forehead and chin, like VoxCeleb's face frames, so a random 112 crop keeps the whole inner face.
_ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]])
TEMPLATE_UNIT = (_ARCFACE_112 / 112 - 0.5) * 0.8 + 0.5 - np.array([0, 4 / 128])


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """Image-left eye centre, image-right eye centre, nose tip, mouth corners (image-left first)."""
    lm = landmarks[:, :2]
    return np.stack([lm[RIGHT_EYE].mean(0), lm[LEFT_EYE].mean(0), lm[NOSE_TIP],
                     lm[MOUTH_CORNERS[0]], lm[MOUTH_CORNERS[1]]])


def five_points_68(landmarks68: np.ndarray) -> np.ndarray:
    """The same five points from the 68-point (iBUG/dlib) layout that AffectNet gives: eye centres (points 36-41
    appear image-left, 42-47 image-right), the nose tip (30) and the mouth corners (48, 54)."""
    lm = np.asarray(landmarks68, float)[:, :2]
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def inter_ocular(landmarks: np.ndarray) -> float:
    p = five_points(landmarks)
    return float(np.linalg.norm(p[1] - p[0]))


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap in inter-ocular distances, per frame of [n, 478, 2+] landmarks."""
    lm = landmarks[..., :2].astype(np.float64)
    gap = np.linalg.norm(lm[:, INNER_LIPS[0]] - lm[:, INNER_LIPS[1]], axis=1)
    iod = np.linalg.norm(lm[:, RIGHT_EYE].mean(1) - lm[:, LEFT_EYE].mean(1), axis=1)
    return gap / np.maximum(iod, 1e-6)


def mouth_bin(opening: np.ndarray) -> np.ndarray:
    """Index into MOUTH_BINS of each opening."""
    return np.searchsorted([lo for _, lo in MOUTH_BINS[1:]], opening, side="right")


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama) taking points src to dst, as a 2x3 matrix."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    var = (s ** 2).sum() / len(src)
    scale = (sig * np.diag(sign)).sum() / var if var > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts[:, :2] @ m[:, :2].T + m[:, 2]


def alignment_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Similarity taking image coordinates to the canonical size x size face crop."""
    return similarity(five_points(landmarks), TEMPLATE_UNIT * size)


def region_boxes(landmarks: np.ndarray) -> np.ndarray:
    """[[eyes x0 y0 x1 y1], [mouth x0 y0 x1 y1]] in the landmarks' coordinates. The eye box covers both eyes
    (padded a quarter inter-ocular distance vertically), the mouth box the lips."""
    lm = landmarks[:, :2]
    iod = inter_ocular(landmarks)
    eyes = lm[RIGHT_EYE + LEFT_EYE]
    lips = lm[LIPS]
    pad_eye = np.array([0.15, 0.25]) * iod
    pad_mouth = np.array([0.15, 0.15]) * iod
    return np.array([[*(eyes.min(0) - pad_eye), *(eyes.max(0) + pad_eye)],
                     [*(lips.min(0) - pad_mouth), *(lips.max(0) + pad_mouth)]])


def box_crop_matrix(box: np.ndarray, size: int) -> np.ndarray:
    """Similarity mapping a box into the centre of a size x size square, longer side filling it (the rest is
    the zero padding that makes the crop square)."""
    x0, y0, x1, y1 = box
    s = size / max(x1 - x0, y1 - y0, 1e-6)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]])


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer ∘ inner for 2x3 affine matrices."""
    a = np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]])
    return a[:2]


def crop_region(image: np.ndarray, to_image_box: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Crop `box` (given in some frame that `to_image_box` maps image coordinates into) from `image` as a
    size x size square, zero-padded outside the box."""
    m = compose(box_crop_matrix(box, size), to_image_box)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA if m[0, 0] < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    w, h = (box[2] - box[0]), (box[3] - box[1])
    s = size / max(w, h, 1e-6)
    pad_x = int(round((size - w * s) / 2))
    pad_y = int(round((size - h * s) / 2))
    crop[:pad_y] = 0
    crop[size - pad_y:] = 0
    crop[:, :pad_x] = 0
    crop[:, size - pad_x:] = 0
    return crop


def align_face(rgb: np.ndarray, landmarks: np.ndarray, face_size: int, region_size: int):
    """Aligned face, landmarks and [eyes, mouth] boxes in crop pixels, and the eye and mouth crops (taken
    from the full-resolution frame)."""
    m = alignment_matrix(landmarks, face_size)
    interp = cv2.INTER_AREA if np.hypot(*m[0, :2]) < 1 else cv2.INTER_LINEAR
    face = cv2.warpAffine(rgb, m, (face_size, face_size), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    lm = apply(m, landmarks)
    boxes = region_boxes(lm)
    eyes = crop_region(rgb, m, boxes[0], region_size)
    mouth = crop_region(rgb, m, boxes[1], region_size)
    return face, lm, boxes, eyes, mouth
