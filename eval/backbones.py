"""Loading a backbone to evaluate from whatever the user has: this project's checkpoints and exported backbones,
any torchvision ResNet state dict, the official code's checkpoints (`backbone.` prefixes), `imagenet`, `random`."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torchvision

from train.models import resnet_backbone

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


def is_eyemouth(spec: str) -> bool:
    """CKPT=eyemouth or eyemouth=<weights>: Table 5's descriptor, not a backbone."""
    return spec == "eyemouth" or spec.startswith("eyemouth=")


def row_names(specs: list[str], arch: str) -> dict[str, str]:
    """A unique, readable row name per distinct checkpoint: `<run folder>/<file>` (the `checkpoints/` folder
    skipped), more parent folders where two files would share a name (a number when even the whole path
    does); the same file given twice is one row. 'random' and 'imagenet' are named with the architecture."""
    files: dict[tuple, str] = {}  # (kind, resolved path) -> spec
    names: dict[str, str] = {}
    for spec in specs:
        p = Path(spec.partition("=")[2]) if is_eyemouth(spec) else Path(spec)
        if spec in ("random", "imagenet"):
            names.setdefault(spec, f"{spec} ({arch})")
        elif is_eyemouth(spec) and not p.is_file():
            names.setdefault(spec, "eye-mouth descriptor (imagenet)")
        elif p.is_file():
            files.setdefault((is_eyemouth(spec), p.resolve()), spec)
        else:
            names.setdefault(spec, spec)  # load_backbone reports it as missing
    parts = {k: [x for x in k[1].parts[1:] if x != "checkpoints"] for k in files}
    depth = {k: min(2, len(parts[k])) for k in files}

    def label(k):
        return ("eye-mouth descriptor " if k[0] else "") + "/".join(parts[k][-depth[k]:])

    while True:
        labels = {k: label(k) for k in files}
        clash = {k for k in files if list(labels.values()).count(labels[k]) > 1 and depth[k] < len(parts[k])}
        if not clash:
            break
        for k in clash:
            depth[k] += 1
    taken: dict[str, int] = {}
    for k, spec in files.items():
        n = taken[labels[k]] = taken.get(labels[k], 0) + 1
        names[spec] = labels[k] if n == 1 else f"{labels[k]} ({n})"
    return {spec: names[spec] for spec in dict.fromkeys(specs) if spec in names}


def checkpoint_meta(spec: str) -> dict:
    """What a checkpoint of this project says of itself: step, epoch, preset and the monitor's best score (an
    exported backbone.pt: from the backbone.json beside it); {} for anything else. Tensors are memory-mapped,
    not read."""
    path = Path(spec)
    if not path.is_file():
        return {}
    card = path.with_suffix(".json")
    if card.is_file():
        try:
            trained = json.loads(card.read_text()).get("trained_with") or {}
        except (OSError, ValueError):
            trained = {}
        if "steps" in trained:
            return {"file": str(path), "step": int(trained["steps"]), "epoch": int(trained.get("epochs", -1)),
                    "preset": trained.get("preset")}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint (mmap needs one), or not a checkpoint: no metadata to show
        return {}
    if not isinstance(state, dict) or "step" not in state:
        return {}
    meta = {"file": str(path), "step": int(state["step"]), "epoch": int(state.get("epoch", -1)),
            "preset": (state.get("run") or {}).get("preset")}
    if isinstance(state.get("monitor_best"), float) and state["monitor_best"] >= 0:
        meta["monitor_expr_knn"] = state["monitor_best"]
    return meta


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
