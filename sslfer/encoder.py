"""A pretrained backbone as a user calls it:

    import torch
    from sslfer import FacePreprocess, load_encoder

    net = load_encoder("runs/sslfer/backbone.pt")  # a torchvision ResNet whose forward is the pooled embedding
    prep = FacePreprocess()                         # RGB uint8 image -> [3, 112, 112], aligned as in pretraining
    with torch.no_grad():
        emb = net(torch.stack([prep(image) for image in images]))

Images are aligned exactly as the evaluation aligns them (mediapipe face mesh on the still, the pretraining
template, 128 px, resize and centre crop to 112, ImageNet normalisation), so their embeddings equal the
evaluation's features."""
from __future__ import annotations

import numpy as np
import torch

from sslfer.augment import eval_transform


FACE_SIZE = 128


class NoFace(ValueError):
    """The image shows no face the detector finds."""


def load_encoder(spec: str, arch: str = "resnet50", seed: int = 0) -> torch.nn.Module:
    """Any checkpoint or backbone.pt of this project (or a torchvision ResNet state dict, 'imagenet', 'random')
    as a torchvision ResNet in eval mode whose fc is the identity: net(x) is the pooled embedding."""
    from sslfer.backbone import load_backbone

    return load_backbone(spec, arch, seed)[1]


def load_projector(spec: str) -> torch.nn.Module:
    """The projection head of a training checkpoint (simclr family: TimeAug, HardNeg, FaceSwap, MaskFN)."""
    from sslfer.backbone import CheckpointError, mlp

    state = torch.load(spec, map_location="cpu", weights_only=True)
    weights = {k.split("projector.", 1)[1]: v for k, v in (state.get("model") or {}).items()
               if k.startswith("projector.")}
    if not weights:
        raise CheckpointError(f"{spec}: holds no projector (projection=true needs a training checkpoint of the "
                              f"simclr family: RUN/checkpoints/last.pt, best.pt or epoch-*.pt)")
    head = mlp(weights["0.weight"].shape[1], weights["0.weight"].shape[0], weights["2.weight"].shape[0])
    head.load_state_dict(weights)
    return head.eval()


def face_box(landmarks: np.ndarray, scale: float = 1.0) -> list[float]:
    """x, y, w, h of the landmarks' bounding box, times scale."""
    lo, hi = landmarks[:, :2].min(0), landmarks[:, :2].max(0)
    return [float(v) * scale for v in (lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1])]


class FacePreprocess:
    """Image in (RGB uint8, any size: a photo or a video frame), model input out ([3, S, S] float): the face
    aligned to the pretraining template at 128 px, resized and centre-cropped to S = image_size, normalised.
    `aligned=True` takes the image as an already aligned 128 px face (this project's shards and caches).
    Raises NoFace when the detector finds none."""

    def __init__(self, image_size: int = 112, aligned: bool = False):
        self.image_size, self.aligned = image_size, aligned

    def align(self, rgb: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """(the 128 px aligned face, its box x, y, w, h in the image's pixels)."""
        from sslfer.stills import align_rgb

        if self.aligned:
            return np.ascontiguousarray(rgb[:, :, :3]), [0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0])]
        face, how, _, landmarks = align_rgb(rgb)
        if how != "landmarks":
            raise NoFace("no face found")
        return face, face_box(landmarks)

    def tensor(self, faces: np.ndarray) -> torch.Tensor:
        """Aligned uint8 faces [N, 128, 128, 3] -> model input [N, 3, S, S]."""
        return eval_transform(torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2), self.image_size)

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        return self.tensor(self.align(rgb)[0][None])[0]
