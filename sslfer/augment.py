"""Batched augmentations with per-sample random parameters, on whatever device the batch is on (the GPU in
training; the same code is the CPU path). The paper's chain: landmark mask, resize 128 -> random crop, flip,
colour jitter, Gaussian blur, grayscale; then ImageNet normalisation. Colour jitter and grayscale are one
affine colour map per image (see colour_matrices); the blur, linear and per channel, commutes with it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sslfer.imagenet import IMAGENET_MEAN, IMAGENET_STD

FACE_SIZE = 128  # side of the stored aligned faces
MASK_PAD = 10    # pixels (at 128) around the eye or mouth box, as the official code


def _rand(n, gen, device, lo=0.0, hi=1.0):
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def landmark_mask(x: torch.Tensor, boxes: torch.Tensor, p: float, gen, mean: torch.Tensor | None = None,
                  pad: float | None = None) -> torch.Tensor:
    """With probability p per image, fill an ellipse around its eye box or its mouth box (chosen per image)
    with the image's mean colour. x float [N,3,H,W] in [0,1]; boxes [N,2,4] in x's pixels; `mean` [N,3,1,1]
    and `pad` (pixels around the box) default to x's mean and 10 px at 128."""
    n, _, h, w = x.shape
    dev = x.device
    apply = _rand(n, gen, dev) < p
    region = (torch.rand(n, generator=gen, device=dev) < 0.5).long()
    box = boxes[torch.arange(n, device=dev), region]
    pad = MASK_PAD * h / FACE_SIZE if pad is None else pad
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    ax = ((box[:, 2] - box[:, 0]) / 2 + pad).clamp(min=1)
    ay = ((box[:, 3] - box[:, 1]) / 2 + pad).clamp(min=1)
    ys = torch.arange(h, device=dev, dtype=x.dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=dev, dtype=x.dtype).view(1, 1, w) + 0.5
    inside = ((xs - cx.view(n, 1, 1)) / ax.view(n, 1, 1)) ** 2 + ((ys - cy.view(n, 1, 1)) / ay.view(n, 1, 1)) ** 2 <= 1
    inside &= apply.view(n, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True) if mean is None else mean
    return torch.where(inside.unsqueeze(1), mean, x, out=torch.empty_like(x))


def resized_crop_flip(x: torch.Tensor, boxes: torch.Tensor, size: int, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize to round(size * 128/112), take a random size x size crop per image, flip half; boxes follow.
    Works on uint8 too when no resize is needed (then it stays uint8)."""
    n = len(x)
    dev = x.device
    r = round(size * FACE_SIZE / 112)
    if r != x.shape[-1]:
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
    oy = torch.randint(0, r - size + 1, (n,), generator=gen, device=dev)
    ox = torch.randint(0, r - size + 1, (n,), generator=gen, device=dev)
    windows = x.unfold(2, size, 1).unfold(3, size, 1)  # a view [n, c, r-size+1, r-size+1, size, size]
    x = windows[torch.arange(n, device=dev), :, oy, ox]
    flip = _rand(n, gen, dev) < 0.5
    flipped_rows = flip.nonzero().flatten()
    x[flipped_rows] = x[flipped_rows].flip(-1)
    b = boxes * (r / boxes.new_tensor(FACE_SIZE))
    b = b - torch.stack([ox, oy, ox, oy], 1).view(n, 1, 4).to(b.dtype)
    flipped = torch.stack([size - b[..., 2], b[..., 1], size - b[..., 0], b[..., 3]], -1)
    return x, torch.where(flip.view(n, 1, 1), flipped, b)


GRAY = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return GRAY[0] * x[:, 0:1] + GRAY[1] * x[:, 1:2] + GRAY[2] * x[:, 2:3]


_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def colour_matrices(x: torch.Tensor, gen, p_colour: float, p_gray: float, strength=(0.4, 0.4, 0.4, 0.2)):
    """Per image, colour jitter (with probability p_colour) then grayscale (p_gray) as one affine colour map
    y = A x + c. Brightness, contrast and saturation factors in [1-s, 1+s] and a hue turn in [-h, h] are all
    linear in the pixel values (contrast about the image's mean gray, hue as a rotation of the chroma plane in
    YIQ space), so they compose exactly; unlike torchvision, values are clipped once, at the end."""
    n, dev = len(x), x.device
    eye = torch.eye(3, device=dev).expand(n, 3, 3)
    w = x.new_tensor(GRAY).view(1, 1, 3).expand(n, 3, 3)  # rows: gray weights
    b_, c_, s_, h_ = strength
    bright = _rand(n, gen, dev, 1 - b_, 1 + b_).view(n, 1, 1)
    contrast = _rand(n, gen, dev, 1 - c_, 1 + c_).view(n, 1, 1)
    sat = _rand(n, gen, dev, 1 - s_, 1 + s_).view(n, 1, 1)
    theta = _rand(n, gen, dev, -h_, h_) * 2 * math.pi
    mean_gray = (x.mean(dim=(2, 3)) @ x.new_tensor(GRAY)).view(n, 1)
    a = bright * eye                                        # brightness
    c = (1 - contrast.view(n, 1)) * bright.view(n, 1) * mean_gray  # contrast about the mean gray
    a = contrast * a
    a = (sat * eye + (1 - sat) * w) @ a                     # saturation
    yiq = _TO_YIQ.to(dev)
    cos, sin = theta.cos(), theta.sin()
    rot = torch.zeros(n, 3, 3, device=dev)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    hue = torch.linalg.inv(yiq) @ rot @ yiq
    a, c = hue @ a, (hue @ c.view(n, 1, 1).expand(n, 3, 1)).view(n, 3)
    p_colour = p_colour.to(dev) if torch.is_tensor(p_colour) else p_colour  # a probability, or one per image
    jitter = (_rand(n, gen, dev) < p_colour).view(n, 1, 1)
    a = torch.where(jitter, a, eye)
    c = torch.where(jitter.view(n, 1), c, torch.zeros_like(c))
    gray = (_rand(n, gen, dev) < p_gray).view(n, 1, 1)
    a = torch.where(gray, w @ a, a)
    c = torch.where(gray.view(n, 1), (w @ c.view(n, 3, 1)).view(n, 3), c)
    return a, c


def apply_colour(x: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    n, ch, h, w = x.shape
    return torch.baddbmm(c.view(n, 3, 1), a, x.reshape(n, ch, h * w)).clamp_(0, 1).view(n, ch, h, w)


def gaussian_blur(x: torch.Tensor, p: float, gen, sigma=(0.1, 2.0), kernel: int = 0) -> torch.Tensor:
    """Separable Gaussian blur, sigma uniform per image, with probability p (computed only for the images
    drawn); kernel side `kernel` (odd), or 0 for ~10% of the image side."""
    n, c, h, w = x.shape
    dev = x.device
    k = kernel if kernel > 0 else max(3, int(0.1 * h) // 2 * 2 + 1)
    s = _rand(n, gen, dev, *sigma)
    chosen = torch.nonzero(_rand(n, gen, dev) < p).flatten()
    if len(chosen) == 0:
        return x
    m = len(chosen)
    t = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
    kern = torch.exp(-(t.view(1, k) ** 2) / (2 * s[chosen].view(m, 1) ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [m*c, k]
    y = x[chosen].reshape(1, m * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), kern.view(m * c, 1, 1, k), groups=m * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), kern.view(m * c, 1, k, 1), groups=m * c)
    x = x.clone()
    x[chosen] = y.view(m, c, h, w)
    return x


def augment(images: torch.Tensor, boxes: torch.Tensor, size: int, gen: torch.Generator | None,
            p_mask=0.8, p_colour=0.8, p_blur=0.5, p_gray=0.2, blur_kernel=0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N,3,128,128] faces and their [N,2,4] eye/mouth boxes -> normalised float [N,3,size,size] views
    and the boxes in view pixels. p_colour: one probability, or a tensor of one per image."""
    n, _, h, w = images.shape
    # the mask is drawn after the crop, with the boxes moved and the whole image's mean: the same pixels as
    # masking first, with the crop done on uint8 and less to convert to float
    mean = images.sum(dim=(2, 3), keepdim=True, dtype=torch.float32) / (255.0 * h * w)
    r = round(size * FACE_SIZE / 112)
    x, boxes = resized_crop_flip(images, boxes, size, gen)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x
    x = landmark_mask(x, boxes, p_mask, gen, mean, MASK_PAD * r / FACE_SIZE)
    x = apply_colour(x, *colour_matrices(x, gen, p_colour, p_gray))
    x = gaussian_blur(x, p_blur, gen, kernel=blur_kernel)  # linear and per channel: commutes with the colour map
    x.sub_(x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).div_(x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1))
    return x, boxes


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> ImageNet-normalised."""
    return (x - x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)


def eval_transform(images: torch.Tensor, size: int) -> torch.Tensor:
    """Deterministic counterpart: resize to round(size*128/112), centre crop, normalise."""
    x = images.float() / 255
    r = round(size * FACE_SIZE / 112)
    x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
    o = (r - size) // 2
    return normalize(x[:, :, o:o + size, o:o + size])
