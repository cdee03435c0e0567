"""Labelled image folders (`<label>/<image>`), as the evaluation, the monitor and `make embed` read them."""
from __future__ import annotations

from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def images_in(folder: Path) -> list[Path]:
    """The folder's image files (not its subfolders'), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def labelled_images(folder: Path) -> dict[str, list[Path]]:
    """<label>/<image> files, sorted, by label in name order (folders without images are left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected <label>/*.jpg)")
    out = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = images_in(d)
        if files:
            out[d.name] = files
    return out
