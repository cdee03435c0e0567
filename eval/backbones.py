"""Loading a backbone to evaluate from whatever the user has: this project's checkpoints and exported backbones,
any torchvision ResNet state dict, the official code's checkpoints (`backbone.` prefixes), `imagenet`, `random`."""
from __future__ import annotations

import json
from pathlib import Path

import torch



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
