"""Which torch device a command runs on."""
from __future__ import annotations


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from sslfer.config import ConfigError

        raise ConfigError(f"device={device}: torch sees no CUDA device here (use device=cpu or auto)")
    return device
