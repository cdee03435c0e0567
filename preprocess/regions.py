"""Step `region`: the MaskFN region descriptor of every kept frame.

resnet18: a frozen ImageNet ResNet18, global-average-pooled, on the eye crop and the mouth crop, concatenated
(eyes || mouth = 1024-d), as the paper. landmarks: the eye and mouth landmark geometry, centred and scaled
by the inter-ocular distance (no weights needed)."""
from __future__ import annotations

import numpy as np

from sslfer.face_geometry import LEFT_EYE, LIPS, RIGHT_EYE, inter_ocular


def landmark_descriptor(landmarks: np.ndarray) -> np.ndarray:
    """float16 [n, 2*(32+40)]: eye and lip landmarks relative to the eyes' centre, in inter-ocular units."""
    out = []
    for lm in landmarks.astype(np.float32):
        pts = lm[RIGHT_EYE + LEFT_EYE + LIPS]
        centre = lm[RIGHT_EYE + LEFT_EYE].mean(0)
        out.append(((pts - centre) / max(inter_ocular(lm), 1e-6)).ravel())
    return np.array(out, np.float16).reshape(len(landmarks), 2 * len(RIGHT_EYE + LEFT_EYE + LIPS))
