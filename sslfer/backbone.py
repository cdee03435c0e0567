"""The networks every stage shares: a torchvision ResNet backbone (built from scratch, or loaded from whatever the
user has: this project's checkpoints and exported backbones, any torchvision ResNet state dict, the official
code's checkpoints, `imagenet`, `random`) and the projection MLP."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchvision


def resnet_backbone(arch: str) -> tuple[nn.Module, int]:
    """torchvision ResNet from scratch without its classifier, and its feature width."""
    if arch not in ("resnet18", "resnet34", "resnet50", "resnet101"):
        raise ValueError(f"arch={arch!r}: expected resnet18, resnet34, resnet50 or resnet101")
    net = getattr(torchvision.models, arch)()
    width = net.fc.in_features
    net.fc = nn.Identity()
    return net, width


def mlp(inp: int, hidden: int, out: int, bn: bool = False) -> nn.Sequential:
    layers = [nn.Linear(inp, hidden)] + ([nn.BatchNorm1d(hidden)] if bn else []) + [nn.ReLU(inplace=True),
                                                                                    nn.Linear(hidden, out)]
    return nn.Sequential(*layers)


PREFIXES = ("module.", "backbone.", "encoder.", "query.", "online.", "model.")


BLOCKS = {(2, 2, 2, 2, False): "resnet18", (3, 4, 6, 3, False): "resnet34", (3, 4, 6, 3, True): "resnet50",
          (3, 4, 23, 3, True): "resnet101"}


class CheckpointError(ValueError):
    """Not a usable checkpoint; reported as one line."""


def _strip(state: dict) -> dict:
    """Backbone keys in torchvision's names: leading wrapper prefixes removed, heads dropped."""
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        while k.startswith(PREFIXES):
            k = k.split(".", 1)[1]
        if k.startswith(("fc.", "projector", "predictor", "head", "target.", "key.")) or "." not in k:
            continue
        out[k] = v
    return out


def detect_arch(state: dict) -> str:
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    arch = BLOCKS.get((*blocks, "layer1.0.conv3.weight" in state))
    if arch is None:
        raise CheckpointError(f"not a torchvision ResNet backbone (blocks per stage {blocks})")
    return arch


def imagenet_weights_path(arch: str) -> Path:
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]


def load_backbone(spec: str, arch: str = "resnet50", seed: int = 0) -> tuple[str, torch.nn.Module, int]:
    """(display name, backbone in eval mode without classifier, feature width)."""
    if spec == "random":
        torch.manual_seed(seed)
        net, width = resnet_backbone(arch)
        return f"random ({arch})", net.eval(), width
    if spec == "imagenet":
        path = imagenet_weights_path(arch)
        if not path.is_file():
            url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
            raise CheckpointError(f"ImageNet {arch} weights not found at {path}: download {url} there")
        state = torch.load(path, map_location="cpu", weights_only=True)
        name = f"imagenet ({arch})"
    else:
        path = Path(spec)
        if not path.is_file():
            raise CheckpointError(f"{spec}: no such file (CKPT takes a checkpoint, a backbone, imagenet or random)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for files that are not checkpoints
            raise CheckpointError(f"{spec}: not a checkpoint ({str(e).splitlines()[0][:120]})") from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{spec}: not a state dict")
        name = path.parent.name + "/" + path.name if path.name in ("backbone.pt", "last.pt") else path.name
    backbone_state = _strip(state)
    if not backbone_state:
        raise CheckpointError(f"{spec}: holds no ResNet backbone weights")
    arch = detect_arch(backbone_state)
    net, width = resnet_backbone(arch)
    missing, unexpected = net.load_state_dict(backbone_state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{spec}: does not fit {arch} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return f"{name} ({arch})", net.eval(), width
