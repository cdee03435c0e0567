"""Checkpoints (atomic, loadable with weights_only=True) and the plain torchvision backbone export."""
from __future__ import annotations

import dataclasses
import io
import json
import random
from pathlib import Path

import numpy as np
import torch

from sslfer.files import atomic_write_bytes


def atomic_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)      # DDP


def save_checkpoint(path: Path, model, optimizer, scheduler, scaler, epoch: int, step: int, cfg,
                    extra: dict | None = None) -> None:
    atomic_save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                 "epoch": epoch, "step": step, "config": dataclasses.asdict(cfg), **(extra or {})}, path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def backbone_state(model) -> dict:
    """The backbone as a state dict that torchvision.models.<arch>().load_state_dict accepts: the trained
    layers, and a zero fc (the classifier is not part of pretraining)."""
    backbone = unwrap(model).backbone
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    width = _feature_width(state)
    state["fc.weight"] = torch.zeros(1000, width)
    state["fc.bias"] = torch.zeros(1000)
    return state


def _feature_width(state: dict) -> int:
    last = sorted(k for k in state if k.startswith("layer4.") and k.endswith(".weight") and "bn" in k)[-1]
    return state[last].shape[0]


def export_backbone(model, path: Path, arch: str, image_size: int = 112, about: dict | None = None) -> None:
    """backbone.pt (a torch state dict), the same tensors as backbone.safetensors, and backbone.json: what the
    backbone is and how to feed it (architecture, input, normalisation, alignment template), how it was trained
    (`about`: preset, settings, commit) and how to load it without this repository."""
    from safetensors.torch import save as safetensors_bytes

    from sslfer.augment import IMAGENET_MEAN, IMAGENET_STD
    from sslfer.face_geometry import TEMPLATE_UNIT

    state = backbone_state(model)
    atomic_save(state, path)
    tensors = path.with_suffix(".safetensors")
    atomic_write_bytes(tensors, safetensors_bytes({k: v.contiguous() for k, v in state.items()}))
    resize = round(image_size * 128 / 112)
    card = {
        "architecture": arch, "feature_dim": _feature_width(state),
        "fc": "a zero placeholder (1000 classes) so that strict loading works; the embedding is the pooled "
              "feature before it: set fc = Identity (torchvision) or num_classes=0 (timm)",
        "input": {"face": "RGB face aligned to the template below at 128x128 (mediapipe face mesh: eye centres, "
                          "nose tip, mouth corners)",
                  "resize": [resize, resize], "centre_crop": [image_size, image_size], "scale": "x / 255",
                  "mean": [round(float(v), 4) for v in IMAGENET_MEAN],
                  "std": [round(float(v), 4) for v in IMAGENET_STD]},
        "alignment_template_128px": {"points": ["image-left eye centre", "image-right eye centre", "nose tip",
                                                "image-left mouth corner", "image-right mouth corner"],
                                     "xy": (TEMPLATE_UNIT * 128).round(3).tolist()},
        "files": {"torch": path.name, "safetensors": tensors.name},
        "load": {"torchvision": f"m = torchvision.models.{arch}(); m.load_state_dict(safetensors.torch.load_file("
                                f"'{tensors.name}')); m.fc = torch.nn.Identity()",
                 "timm": f"timm.create_model('{arch}', pretrained=True, num_classes=0, "
                         f"pretrained_cfg_overlay=dict(file='{tensors.name}'))",
                 "this project": f"sslfer.load_encoder('{path.name}') and sslfer.FacePreprocess()"},
        **(about or {}),
    }
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(card, indent=2) + "\n").encode())


# options that only change how a run is carried out, not what it computes: a resume may change them
OPERATIONAL_OPTIONS = frozenset({"device", "workers", "log_every", "ckpt_minutes", "ckpt_every", "dist_timeout_min",
                                 "resume", "max_bad_steps", "monitor", "monitor_identity", "monitor_every",
                                 "monitor_max_images", "monitor_cache", "compile", "logger", "keep_every",
                                 "keep_top1", "max_minutes"})


def settings_diff(saved: dict, now: dict) -> list[str]:
    """What differs between a checkpoint's settings and this launch's, in every option that changes the result
    (and the preset and the shards, saved under 'preset' and 'shards'), as 'key old -> new'."""
    return [f"{k} {saved[k]!r} -> {now[k]!r}" for k in now
            if k not in OPERATIONAL_OPTIONS and k in saved and saved[k] != now[k]]
