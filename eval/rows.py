"""Evaluations already done: each checkpoint's row of a report (its metrics, head curves and Grad-CAM images), kept
under cache_dir/rows/ by everything it depends on (the checkpoint's content, the dataset's images and splits, every
setting that changes a number), so that a rerun with the same checkpoint and settings (`make table1` again, a
requeued evaluation job) reads the row instead of evaluating again."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np

from sslfer.files import atomic_write_bytes

ROW_VERSION = 1  # bump when the evaluation's code changes what a row holds: every kept row is then redone
OPERATIONAL = frozenset({"workers", "device", "cache_dir"})  # how an evaluation runs, not what it computes


def row_key(backbone_key: str, dataset: str, split_keys: dict, cfg) -> str:
    """backbone_key: the checkpoint's content (eval.run's spec key); split_keys: each split's image-list key."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in OPERATIONAL}
    text = json.dumps([ROW_VERSION, backbone_key, dataset, sorted(split_keys.items()), settings], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


class KeptRows:
    def __init__(self, cache_dir: str | Path):
        self.folder = Path(cache_dir) / "rows"

    def load(self, key: str) -> dict | None:
        """{"row", "curves", "grid" (a list of images, or None)}, or None when this row was not kept."""
        try:
            kept = json.loads((self.folder / f"{key}.json").read_text())
            grid_file = self.folder / f"{key}-gradcam.npy"
            kept["grid"] = list(np.load(grid_file)) if grid_file.is_file() else None
            return kept
        except (OSError, ValueError, KeyError):
            return None

    def save(self, key: str, row: dict, curves: dict, grid: list[np.ndarray] | None) -> None:
        if grid:  # the images in one .npy, written whole or not at all
            out = io.BytesIO()
            np.save(out, np.stack(grid), allow_pickle=False)
            atomic_write_bytes(self.folder / f"{key}-gradcam.npy", out.getvalue())
        text = json.dumps({"row": row, "curves": curves}, default=lambda o: o.tolist())  # numpy values as numbers
        atomic_write_bytes(self.folder / f"{key}.json", text.encode())
