"""Which torch device a command runs on, and in which precision."""
from __future__ import annotations


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from sslfer.config import ConfigError

        raise ConfigError(f"device={device}: torch sees no CUDA device here (use device=cpu or auto)")
    return device


AMP_MODES = ("auto", "bf16", "fp16", "off")


def resolve_amp(requested: str, device: str) -> str:
    """bf16, fp16 or off. auto: bf16 on a GPU that supports it, fp16 on one that does not (V100, T4: with loss
    scaling), off on a CPU; bf16 or fp16 asked for by name is used on a CPU too (slow: for tests)."""
    import torch

    if requested != "auto":
        return requested
    if not device.startswith("cuda"):
        return "off"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def amp_dtype(mode: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
