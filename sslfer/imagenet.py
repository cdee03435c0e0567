"""ImageNet's normalisation constants and the ImageNet ResNet18 weights (MaskFN's region features, the
`imagenet` rows of the evaluation): found in torchvision's cache, downloaded there when missing, or named."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sslfer.device import resolve_device


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)


IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class WeightsMissing(RuntimeError):
    pass


def weights_url() -> str:
    import torchvision

    return torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url


def resnet18_weights(weights: str = "") -> Path | None:
    """The ImageNet ResNet18 weights file to load (None for 'random'); WeightsMissing when absent.
    weights: '' = torchvision's cache, downloaded there (hash-checked) when missing; a file path; or 'random'
    (tests only)."""
    import torch

    if weights == "random":
        return None
    url = weights_url()
    path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file() and not weights:
        _download(url, path)
    if not path.is_file():
        raise WeightsMissing(
            f"ImageNet ResNet18 weights not found at {path}. Download {url} on a machine with internet "
            f"and put it there (or pass region_weights=<file>), or use region_descriptor=landmarks, "
            f"which needs no weights.")
    return path


def _download(url: str, path: Path, timeout_s: float = 30.0) -> None:
    """Fetch torchvision's weights into its cache, checking the SHA-256 prefix in the file name; on failure
    (offline, a proxy) the caller's message says where to put the file by hand."""
    import re
    import socket

    import torch

    prefix = re.search(r"-([0-9a-f]{8,})\.", path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # an unreachable host fails in seconds, not minutes
    try:
        print(f"downloading the ImageNet ResNet18 weights from {url} ...")
        torch.hub.download_url_to_file(url, str(path), prefix.group(1) if prefix else None, progress=True)
    except Exception as e:  # noqa: BLE001 - URLError, timeouts, a hash mismatch: all mean "not here"
        print(f"download failed ({type(e).__name__}: {e})")
        Path(path).unlink(missing_ok=True)
    finally:
        socket.setdefaulttimeout(saved)


def imagenet_resnet18(weights: str = ""):
    """torchvision ResNet18 without its classifier (512-d pooled features), frozen, in eval mode."""
    import torch
    import torchvision

    with torch.random.fork_rng(devices=[]):  # weights=random: the same "random" network in every build
        torch.manual_seed(0)
        model = torchvision.models.resnet18()
    path = resnet18_weights(weights)
    if path is not None:
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # torch raises several types for a file that is not a state dict
            raise WeightsMissing(f"{path}: not a ResNet18 state dict ({str(e).splitlines()[0]})") from None
    model.fc = torch.nn.Identity()
    return model.eval().requires_grad_(False)


class ResNet18Regions:
    dim = 1024

    def __init__(self, weights: str, device: str):
        import torch

        self.torch = torch
        self.device = resolve_device(device)
        self.model = imagenet_resnet18(weights).to(self.device)
        if self.device.startswith("cuda"):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255

    def __call__(self, eyes: np.ndarray, mouths: np.ndarray) -> np.ndarray:
        """uint8 [n, s, s, 3] eye and mouth crops -> float16 [n, 1024]."""
        torch = self.torch
        x = torch.from_numpy(np.concatenate([eyes, mouths])).to(self.device).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        with torch.inference_mode(), torch.autocast(self.device.split(":")[0], torch.bfloat16,
                                                    enabled=self.device.startswith("cuda")):
            f = self.model(x.contiguous(memory_format=torch.channels_last)).float()
        n = len(eyes)
        return torch.cat([f[:n], f[n:]], 1).cpu().numpy().astype(np.float16)
