"""Step `region`: the MaskFN region descriptor of every kept frame.

resnet18: a frozen ImageNet ResNet18, global-average-pooled, on the eye crop and the mouth crop, concatenated
(eyes || mouth = 1024-d), as the paper. landmarks: the eye and mouth landmark geometry, centred and scaled
by the inter-ocular distance (no weights needed)."""
from __future__ import annotations

import time

import numpy as np

from preprocess.cache import Plan
from preprocess.corpus import Clip
from preprocess.faces import output_images
from preprocess.settings import ShardsConfig
from sslfer.face_geometry import LEFT_EYE, LIPS, RIGHT_EYE, inter_ocular
from sslfer.progress import progress


def landmark_descriptor(landmarks: np.ndarray) -> np.ndarray:
    """float16 [n, 2*(32+40)]: eye and lip landmarks relative to the eyes' centre, in inter-ocular units."""
    out = []
    for lm in landmarks.astype(np.float32):
        pts = lm[RIGHT_EYE + LEFT_EYE + LIPS]
        centre = lm[RIGHT_EYE + LEFT_EYE].mean(0)
        out.append(((pts - centre) / max(inter_ocular(lm), 1e-6)).ravel())
    return np.array(out, np.float16).reshape(len(landmarks), 2 * len(RIGHT_EYE + LEFT_EYE + LIPS))


def embed_regions(todo: list[Clip], plan: Plan, cfg: ShardsConfig, caches: dict) -> int:
    """Region descriptors for the clips in todo, batched across clips. Returns frames embedded."""
    encoder = None
    if cfg.region_descriptor == "resnet18":
        from sslfer.imagenet import ResNet18Regions

        encoder = ResNet18Regions(cfg.region_weights, cfg.device)
    done = 0
    t0 = time.perf_counter()
    with progress(total=len(todo), desc="region", unit="clip", dynamic_ncols=True) as bar:
        for clip in todo:
            with caches["faces"].open(clip.key, plan.faces[clip.key]) as arrays:
                if encoder is None:
                    region = landmark_descriptor(arrays["landmarks"])
                else:
                    eyes, mouths = np.stack(output_images(arrays, "eyes")), np.stack(output_images(arrays, "mouth"))
                    bs = max(1, cfg.region_batch_size // 2)
                    region = np.concatenate([encoder(eyes[i:i + bs], mouths[i:i + bs])
                                             for i in range(0, len(eyes), bs)])
            caches["region"].save(clip.key, plan.region[clip.key], {"region": region},
                                  {"descriptor": cfg.region_descriptor, "dim": int(region.shape[1])})
            done += len(region)
            bar.update(1)
            bar.set_postfix_str(f"{done / max(time.perf_counter() - t0, 1e-9):.1f} frames/s")
    return done
