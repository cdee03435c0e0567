"""Grad-CAM saliency (paper Figure 6): where a backbone + head looks for its predicted class."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslfer.augment import eval_transform


STAGES = ("layer1", "layer2", "layer3", "layer4")


def map_side(layer: str, image_size: int) -> int:
    """Side of a torchvision ResNet stage's output map for a square input."""
    side = image_size
    for _ in range({"layer1": 2, "layer2": 3, "layer3": 4, "layer4": 5}[layer]):
        side = (side + 1) // 2  # each stride-2 convolution (and the stem's max-pool) rounds up
    return side


def pick_layer(choice: str, image_size: int, min_side: int = 7) -> str:
    """The ResNet stage Grad-CAM is taken at: `choice` itself, or for auto the deepest stage whose map is at
    least min_side x min_side at image_size (layer4 at 224 px, layer3 at 112, layer1 at the demo's 32): at
    layer4 a 112 px input gives 4x4 and a 32 px one 1x1, a uniform map."""
    if choice != "auto":
        return choice
    return next((s for s in reversed(STAGES) if map_side(s, image_size) >= min_side), "layer1")


def grad_cam(backbone: nn.Module, classifier: nn.Module, faces: np.ndarray, image_size: int,
             device: str, layer_name: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(saliency maps in [0, 1] at image_size, predicted classes) for uint8 faces [N,128,128,3], taken at
    the stage pick_layer chooses."""
    backbone, classifier = backbone.to(device).eval(), classifier.to(device).eval()
    acts = {}
    layer = getattr(backbone, pick_layer(layer_name, image_size))
    hook = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    try:
        x = eval_transform(torch.from_numpy(faces).to(device).permute(0, 3, 1, 2), image_size)
        logits = classifier(backbone(x))
        pred = logits.argmax(1)
        a = acts["a"]
        grads = torch.autograd.grad(logits.gather(1, pred[:, None]).sum(), a)[0]
        cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=(image_size, image_size), mode="bilinear", align_corners=False)[:, 0]
        cam = cam / cam.flatten(1).max(1).values.clamp(min=1e-8).view(-1, 1, 1)
    finally:
        hook.remove()
    return cam.detach().cpu().numpy(), pred.cpu().numpy()


def overlay(face: np.ndarray, cam: np.ndarray, image_size: int) -> np.ndarray:
    """The centre-cropped face with the saliency map as a jet-coloured overlay (RGB uint8)."""
    import cv2

    r = round(image_size * 128 / 112)
    img = cv2.resize(face, (r, r), interpolation=cv2.INTER_AREA)
    o = (r - image_size) // 2
    img = img[o:o + image_size, o:o + image_size]
    heat = cv2.cvtColor(cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (0.65 * img + 0.35 * heat).astype(np.uint8)
