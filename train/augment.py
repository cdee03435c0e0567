"""Batched augmentations with per-sample random parameters, on whatever device the batch is on (the GPU in
training; the same code is the CPU path). In the paper's order: landmark mask, resize 128 -> random crop,
flip, colour jitter, Gaussian blur, grayscale; then ImageNet normalisation."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from preprocess.regions import IMAGENET_MEAN, IMAGENET_STD

FACE_SIZE = 128  # side of the stored aligned faces
MASK_PAD = 10    # pixels (at 128) around the eye or mouth box, as the official code


def _rand(n, gen, device, lo=0.0, hi=1.0):
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def landmark_mask(x: torch.Tensor, boxes: torch.Tensor, p: float, gen) -> torch.Tensor:
    """With probability p per image, fill an ellipse around its eye box or its mouth box (chosen per image)
    with the image's mean colour. x float [N,3,H,W] in [0,1]; boxes [N,2,4] in x's pixels."""
    n, _, h, w = x.shape
    dev = x.device
    apply = _rand(n, gen, dev) < p
    region = (torch.rand(n, generator=gen, device=dev) < 0.5).long()
    box = boxes[torch.arange(n, device=dev), region]
    pad = MASK_PAD * h / FACE_SIZE
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    ax = ((box[:, 2] - box[:, 0]) / 2 + pad).clamp(min=1)
    ay = ((box[:, 3] - box[:, 1]) / 2 + pad).clamp(min=1)
    ys = torch.arange(h, device=dev, dtype=x.dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=dev, dtype=x.dtype).view(1, 1, w) + 0.5
    inside = ((xs - cx.view(n, 1, 1)) / ax.view(n, 1, 1)) ** 2 + ((ys - cy.view(n, 1, 1)) / ay.view(n, 1, 1)) ** 2 <= 1
    inside &= apply.view(n, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return torch.where(inside.unsqueeze(1), mean, x)


def resized_crop_flip(x: torch.Tensor, boxes: torch.Tensor, size: int, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize to round(size * 128/112), take a random size x size crop per image, flip half; boxes follow."""
    n = len(x)
    dev = x.device
    r = round(size * FACE_SIZE / 112)
    x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
    oy = torch.randint(0, r - size + 1, (n,), generator=gen, device=dev)
    ox = torch.randint(0, r - size + 1, (n,), generator=gen, device=dev)
    c = x.shape[1]
    rows = (oy[:, None] + torch.arange(size, device=dev)).view(n, 1, size, 1).expand(n, c, size, r)
    cols = (ox[:, None] + torch.arange(size, device=dev)).view(n, 1, 1, size).expand(n, c, size, size)
    x = x.gather(2, rows).gather(3, cols)
    flip = _rand(n, gen, dev) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    b = boxes * (r / boxes.new_tensor(FACE_SIZE))
    b = b - torch.stack([ox, oy, ox, oy], 1).view(n, 1, 4).to(b.dtype)
    flipped = torch.stack([size - b[..., 2], b[..., 1], size - b[..., 0], b[..., 3]], -1)
    return x, torch.where(flip.view(n, 1, 1), flipped, b)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def colour_jitter(x: torch.Tensor, p: float, gen, strength=(0.4, 0.4, 0.4, 0.2)) -> torch.Tensor:
    """Brightness, contrast, saturation in [1-s, 1+s] and hue in [-h, h] turns, per image, with probability p.
    The hue turn is a rotation of the chroma plane in YIQ space (a close, batched stand-in for HSV)."""
    n = len(x)
    dev = x.device
    apply = (_rand(n, gen, dev) < p).view(n, 1, 1, 1)
    b_, c_, s_, h_ = strength
    out = x * _rand(n, gen, dev, 1 - b_, 1 + b_).view(n, 1, 1, 1)
    out = out.clamp(0, 1)
    m = _gray(out).mean(dim=(2, 3), keepdim=True)
    out = ((out - m) * _rand(n, gen, dev, 1 - c_, 1 + c_).view(n, 1, 1, 1) + m).clamp(0, 1)
    g = _gray(out)
    out = ((out - g) * _rand(n, gen, dev, 1 - s_, 1 + s_).view(n, 1, 1, 1) + g).clamp(0, 1)
    theta = _rand(n, gen, dev, -h_, h_) * 2 * math.pi
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, out)
    cos, sin = theta.cos().view(n, 1, 1), theta.sin().view(n, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    out = torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)
    return torch.where(apply, out, x)


def gaussian_blur(x: torch.Tensor, p: float, gen, sigma=(0.1, 2.0)) -> torch.Tensor:
    """Separable Gaussian blur, sigma uniform per image, kernel ~10% of the side (odd), with probability p."""
    n, c, h, w = x.shape
    dev = x.device
    k = max(3, int(0.1 * h) // 2 * 2 + 1)
    s = _rand(n, gen, dev, *sigma)
    t = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
    kern = torch.exp(-(t.view(1, k) ** 2) / (2 * s.view(n, 1) ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, k]
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), kern.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), kern.view(n * c, 1, k, 1), groups=n * c)
    apply = (_rand(n, gen, dev) < p).view(n, 1, 1, 1)
    return torch.where(apply, y.view(n, c, h, w), x)


def grayscale(x: torch.Tensor, p: float, gen) -> torch.Tensor:
    apply = (_rand(len(x), gen, x.device) < p).view(-1, 1, 1, 1)
    return torch.where(apply, _gray(x).expand_as(x), x)


def augment(images: torch.Tensor, boxes: torch.Tensor, size: int, gen: torch.Generator | None,
            p_mask=0.8, p_colour=0.8, p_blur=0.5, p_gray=0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N,3,128,128] faces and their [N,2,4] eye/mouth boxes -> normalised float [N,3,size,size] views
    and the boxes in view pixels."""
    x = images.float() / 255
    x = landmark_mask(x, boxes, p_mask, gen)
    x, boxes = resized_crop_flip(x, boxes, size, gen)
    x = colour_jitter(x, p_colour, gen)
    x = gaussian_blur(x, p_blur, gen)
    x = grayscale(x, p_gray, gen)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std, boxes


def eval_transform(images: torch.Tensor, size: int) -> torch.Tensor:
    """Deterministic counterpart: resize to round(size*128/112), centre crop, normalise."""
    x = images.float() / 255
    r = round(size * FACE_SIZE / 112)
    x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
    o = (r - size) // 2
    x = x[:, :, o:o + size, o:o + size]
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std
