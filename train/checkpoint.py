"""Checkpoints (atomic, loadable with weights_only=True) and the plain torchvision backbone export."""
from __future__ import annotations

import dataclasses
import io
import random
from pathlib import Path

import numpy as np
import torch

from preprocess.cache import atomic_write_bytes


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


def export_backbone(model, path: Path) -> None:
    atomic_save(backbone_state(model), path)


# options that only change how a run is carried out, not what it computes: a resume may change them
OPERATIONAL_OPTIONS = frozenset({"device", "workers", "log_every", "ckpt_minutes", "ckpt_every", "dist_timeout_min",
                                 "resume", "max_bad_steps", "monitor", "monitor_identity", "monitor_every",
                                 "monitor_max_images", "monitor_cache", "compile", "logger"})


def settings_diff(saved: dict, now: dict) -> list[str]:
    """What differs between a checkpoint's settings and this launch's, in every option that changes the result
    (and the preset and the shards, saved under 'preset' and 'shards'), as 'key old -> new'."""
    return [f"{k} {saved[k]!r} -> {now[k]!r}" for k in now
            if k not in OPERATIONAL_OPTIONS and k in saved and saved[k] != now[k]]
