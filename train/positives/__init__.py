"""Positive-pair pieces, one module each, in one registry: TimeAug (another frame of the clip), FaceSwap (a stored
composite of the frame on another person's head), CutMix (Table 1 row c), and yours. A piece is on when the
TrainConfig option of its name is true (timeaug=true) or its name is listed in `positives=a,b`. HardNeg is not a
positive: it adds instances (train/positives/hardneg.py).

Add one: subclass PositivePair in a module of yours, decorate it with `@register_positive("name")`, name the
module in SSLFER_PLUGINS and train with `positives=name`. docs/architecture.md has the recipe."""
from __future__ import annotations

from sslfer.registry import Registry
from train.positives.base import PositivePair, View

POSITIVES = Registry("positive-pair piece")
register_positive = POSITIVES.register  # class decorator: `positives=<name>` (and `<name>=true` in TrainConfig)


def listed(cfg) -> list[str]:
    return [x.strip() for x in cfg.positives.split(",") if x.strip()]


def active_pieces(cfg, builder) -> list[PositivePair]:
    """The pieces this config turns on, built for the batch builder, in registry order."""
    unknown = [n for n in listed(cfg) if n not in POSITIVES]
    if unknown:
        raise ValueError(f"positives={cfg.positives!r}: no piece named {', '.join(unknown)} "
                         f"(registered: {', '.join(POSITIVES)})")
    return [cls(cfg, builder) for name, cls in POSITIVES.items()
            if getattr(cfg, name, False) is True or name in listed(cfg)]


__all__ = ["POSITIVES", "PositivePair", "View", "active_pieces", "register_positive"]

from train.positives import timeaug, faceswap, cutmix  # noqa: E402,F401  built-ins, in the order they apply
