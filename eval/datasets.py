"""Labelled datasets as lists of items split into train / val / test (val never the test set)."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sslfer.folders import images_in

AFFECTNET_CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"]
FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # fer2013.csv order
# RAF-DB basic: labels 1-7 of list_patition_label.txt, in that order
RAFDB_CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]


class DatasetError(ValueError):
    """A dataset that cannot be used as given; reported as one line."""


@dataclass
class Item:
    source: str                     # file path, or "<csv>:<row>" for images stored in a CSV
    label: int = -1
    valence: float = math.nan
    arousal: float = math.nan
    identity: str = ""
    box: tuple | None = None        # x, y, w, h of the face when the dataset gives it
    pixels: str = ""                # FER2013 CSV: 48x48 grey values
    points: tuple | None = None     # five alignment points from the dataset's landmarks (AffectNet)


@dataclass
class Dataset:
    name: str
    classes: list[str]
    splits: dict[str, list[Item]]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    notes: list[str] = field(default_factory=list)


def _count(skipped: dict, reason: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1


def carve(items: list[Item], fraction: float, seed: int, salt: str) -> tuple[list[Item], list[Item]]:
    """(rest, carved): a seeded, class-stratified share of items."""
    rng = np.random.default_rng([seed, sum(map(ord, salt))])
    by_class: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_class.setdefault(it.label, []).append(i)
    carved = set()
    for idx in by_class.values():
        k = int(round(len(idx) * fraction))
        carved.update(rng.permutation(idx)[:k].tolist())
    return [it for i, it in enumerate(items) if i not in carved], [it for i, it in enumerate(items) if i in carved]


def limit(items: list[Item], n: int, seed: int) -> list[Item]:
    if not n or len(items) <= n:
        return items
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:n])
    return [items[i] for i in keep]


def image_folder(root: Path, name: str, val_fraction: float, test_fraction: float, seed: int,
                 classes: list[str] | None = None) -> Dataset:
    """`<class>/*` (or `train|test/<class>/*`) folders; classes are the sorted folder names."""
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    train_dir = root / "train" if (root / "train").is_dir() else root
    names = classes or sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not names:
        raise DatasetError(f"{train_dir}: no class folders")

    def read(folder: Path) -> list[Item]:
        items = []
        for label, c in enumerate(names):
            if (folder / c).is_dir():
                items += [Item(str(p), label) for p in images_in(folder / c)]
        return items

    train = read(train_dir)
    if not train:
        raise DatasetError(f"{train_dir}: no images in the class folders")
    notes = []
    if (root / "test").is_dir():
        test = read(root / "test")
        notes.append(f"test split: {root / 'test'} ({len(test)} images)")
    else:
        train, test = carve(train, test_fraction, seed, "test")
        notes.append(f"no test split given: {len(test)} images carved from train as the test set")
    val_dir = next((root / d for d in ("val", "valid", "validation") if (root / d).is_dir()), None)
    if val_dir is not None:
        val = read(val_dir)
        notes.append(f"validation split: {val_dir} ({len(val)} images)")
    else:
        train, val = carve(train, val_fraction, seed, "val")
        notes.append(f"validation: {len(val)} images carved from train")
    empty = [c for i, c in enumerate(names) if not any(it.label == i for it in train)]
    if empty:
        notes.append(f"classes with no training image: {', '.join(empty)}")
    return Dataset(name, names, {"train": train, "val": val, "test": test}, notes=notes)


def fer2013(root: Path, val_fraction: float, test_fraction: float, seed: int) -> Dataset:
    """fer2013.csv or Kaggle's icml_face_data.csv (Training / PrivateTest for selection / PublicTest for test, as
    usef-kh/fer and the paper), or folders (Kaggle's test/ holds PublicTest and PrivateTest together)."""
    csv_path = root if root.suffix == ".csv" else next(
        (root / n for n in ("fer2013.csv", "icml_face_data.csv") if (root / n).is_file()), root / "fer2013.csv")
    if csv_path.is_file():
        splits = {"train": [], "val": [], "test": []}
        usage = {"Training": "train", "PrivateTest": "val", "PublicTest": "test"}
        skipped: dict[str, int] = {}
        with open(csv_path, newline="") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                row = {(k or "").strip(): v for k, v in row.items()}  # icml_face_data.csv: ' Usage', ' pixels'
                try:
                    label = int(row["emotion"])
                    assert 0 <= label < len(FER2013_CLASSES) and len(row["pixels"].split()) == 48 * 48
                except (KeyError, ValueError, AssertionError):
                    _count(skipped, "bad row (label or pixels)")
                    continue
                split = usage.get(row.get("Usage", ""))
                if split is None:
                    _count(skipped, "unknown Usage")
                    continue
                splits[split].append(Item(f"{csv_path.name}:{n}", label, pixels=row["pixels"]))
        return Dataset("fer2013", FER2013_CLASSES, splits, skipped,
                       [f"{csv_path.name}: Training for training, PrivateTest for model selection, PublicTest "
                        f"as the test set (the paper's protocol)"])
    ds = image_folder(root, "fer2013", val_fraction, test_fraction, seed)
    if (root / "test").is_dir():
        ds.notes.append("Kaggle folders: test/ holds PublicTest and PrivateTest together, so scores are not those "
                        "of the CSV's PublicTest")
    return ds


def _affectnet_csv(path: Path, images: Path, n_classes: int, skipped: dict) -> list[Item]:
    items = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                rel = row["subDirectory_filePath"]
                label = int(float(row["expression"]))
                valence, arousal = float(row["valence"]), float(row["arousal"])
                box = tuple(int(float(row[k])) for k in ("face_x", "face_y", "face_width", "face_height"))
            except (KeyError, ValueError):
                _count(skipped, "unreadable CSV row")
                continue
            if not 0 <= label < 11:
                _count(skipped, "label out of range")
                continue
            if label >= n_classes:  # 8-10 (none, uncertain, non-face), and contempt for 7 classes
                _count(skipped, f"class {label} not used")
                continue
            p = images / rel
            if not p.is_file():
                _count(skipped, "image listed but missing")
                continue
            va_ok = valence != -2 and arousal != -2
            items.append(Item(str(p), label, valence if va_ok else math.nan, arousal if va_ok else math.nan,
                              box=box, points=affectnet_points(row.get("facial_landmarks", ""))))
    return items


def affectnet_points(text: str) -> tuple | None:
    """AffectNet's 68 landmarks ('x;y;x;y;...') as the five alignment points, or None when absent or malformed."""
    from sslfer.face_geometry import five_points_68

    try:
        values = [float(v) for v in text.split(";") if v.strip()]
    except ValueError:
        return None
    if len(values) != 136:
        return None
    return tuple(five_points_68(np.array(values).reshape(68, 2)).ravel().round(2).tolist())


def affectnet(root: Path, n_classes: int, val_fraction: float, seed: int) -> Dataset:
    """AffectNet as distributed: Manually_Annotated_Images/ and training.csv / validation.csv (the official
    validation set is the test set; model selection uses a split carved from training)."""
    if n_classes not in (7, 8):
        raise DatasetError(f"classes={n_classes}: AffectNet has 7 or 8")
    images = root / "Manually_Annotated_Images"
    if not images.is_dir():
        raise DatasetError(f"{root}: no Manually_Annotated_Images/ folder")
    lists = [root, root / "Manually_Annotated_file_lists"]
    found = {n: next((d / f"{n}.csv" for d in lists if (d / f"{n}.csv").is_file()), None)
             for n in ("training", "validation")}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise DatasetError(f"{root}: no {' or '.join(m + '.csv' for m in missing)}")
    skipped: dict[str, int] = {}
    train = _affectnet_csv(found["training"], images, n_classes, skipped)
    test = _affectnet_csv(found["validation"], images, n_classes, skipped)
    if not train or not test:
        raise DatasetError(f"{root}: no usable rows in {'training' if not train else 'validation'}.csv")
    train, val = carve(train, val_fraction, seed, "val")
    return Dataset("affectnet", AFFECTNET_CLASSES[:n_classes], {"train": train, "val": val, "test": test}, skipped)


def rafdb(root: Path, val_fraction: float, seed: int) -> Dataset:
    """RAF-DB (basic) as distributed: EmoLabel/list_patition_label.txt ('train_00001.jpg 5', labels 1-7) and
    Image/aligned/<name>_aligned.jpg (else Image/original/<name>); train vs test as the file names say,
    validation carved from train."""
    labels = root / "EmoLabel" / "list_patition_label.txt"
    if not labels.is_file():
        raise DatasetError(f"{root}: no EmoLabel/list_patition_label.txt (RAF-DB basic layout)")
    aligned, original = root / "Image" / "aligned", root / "Image" / "original"
    splits: dict[str, list[Item]] = {"train": [], "test": []}
    skipped: dict[str, int] = {}
    for line in labels.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            name, label = parts[0], int(parts[1]) - 1
            assert 0 <= label < 7 and name.split("_")[0] in splits
        except (IndexError, ValueError, AssertionError):
            _count(skipped, "bad label line")
            continue
        stem, ext = name.rsplit(".", 1)
        path = aligned / f"{stem}_aligned.{ext}"
        if not path.is_file():
            path = original / name
        if not path.is_file():
            _count(skipped, "image listed but missing")
            continue
        splits[name.split("_")[0]].append(Item(str(path), label))
    if not splits["train"] or not splits["test"]:
        raise DatasetError(f"{root}: no usable {'train' if not splits['train'] else 'test'} images")
    train, val = carve(splits["train"], val_fraction, seed, "val")
    which = "aligned" if str(aligned) in splits["test"][0].source else "original"
    return Dataset("rafdb", RAFDB_CLASSES, {"train": train, "val": val, "test": splits["test"]}, skipped,
                   [f"RAF-DB basic, {which} images; test = the distributed test split; validation carved from "
                    f"train ({len(val)} images)"])


def lfw(root: Path) -> Dataset:
    """LFW `<Name>/<Name>_NNNN.jpg`: every image with its identity (FR-KNN splits are made later)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    items = [Item(str(p), identity=d.name) for d in sorted(root.iterdir()) if d.is_dir() for p in images_in(d)]
    if not items:
        raise DatasetError(f"{root}: no <Name>/*.jpg images")
    return Dataset("lfw", [], {"all": items})
