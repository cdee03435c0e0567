"""The evaluation datasets, one entry each: how to load it, what it measures (expression classes or identity),
the paper's protocol for it and its columns in Table 1. `python -m eval <name>`, `make eval-<name>`,
`make table1 --<name>` and the report's Table 1 are all made from this list.

Add one: write a loader `(root: Path, cfg: EvalConfig) -> Dataset` (eval/datasets.py has the item and split
types), then `register_dataset(EvalDataset("name", loader, ...))` in a module of yours named in SSLFER_PLUGINS
(or here). docs/architecture.md has the recipe."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from eval import datasets as D
from sslfer.registry import Registry


@dataclass(frozen=True)
class EvalDataset:
    name: str
    load: Callable  # (root: Path, cfg: EvalConfig) -> Dataset
    data: str       # what DATA is, for --help
    task: str = "expression"  # expression: classes (and valence/arousal); identity: FR-KNN and verification
    defaults: tuple[str, ...] = ()     # the paper's settings for it (--paper-settings: make eval-<name>, table1)
    table1_args: tuple[str, ...] = ()  # what `make table1` runs it with, after `defaults`
    columns: tuple[tuple[str, str, str, str], ...] = ()  # Table 1: (title, metrics section, key, pct | num)


DATASETS = Registry("evaluation dataset")


def register_dataset(entry: EvalDataset) -> EvalDataset:
    if entry.name in ("report", "embed"):
        raise ValueError(f"{entry.name!r} is a command of python -m eval, not a dataset name")
    return DATASETS.register(entry.name)(entry)


def table1_columns() -> list[tuple[str, str, str, str, str]]:
    """(title, dataset, section, key, format) of every registered dataset's Table 1 columns, in registry order."""
    return [(title, d.name, section, key, fmt) for d in DATASETS.values() for title, section, key, fmt in d.columns]


register_dataset(EvalDataset(
    "affectnet", lambda root, cfg: D.affectnet(root, cfg.classes, cfg.val_fraction, cfg.seed),
    "AffectNet as distributed (Manually_Annotated_Images/, training.csv, validation.csv)",
    defaults=("task=both",), table1_args=("protocol=both",),
    columns=(("Freeze-AffectNet F1", "linear_expr", "f1", "pct"),
             ("Freeze-AffectNet Acc", "linear_expr", "acc", "pct"),
             ("Finetune-AffectNet F1", "finetune_expr", "f1", "pct"),
             ("Finetune-AffectNet Acc", "finetune_expr", "acc", "pct"),
             ("Valence CCC", "finetune_va", "v_ccc", "num"), ("Valence RMSE", "finetune_va", "v_rmse", "num"),
             ("Arousal CCC", "finetune_va", "a_ccc", "num"), ("Arousal RMSE", "finetune_va", "a_rmse", "num"))))
register_dataset(EvalDataset(
    "fer2013", lambda root, cfg: D.fer2013(root, cfg.val_fraction, cfg.test_fraction, cfg.seed),
    "fer2013.csv (or icml_face_data.csv), or train/ and test/ class folders",
    defaults=("epochs=300",), table1_args=("protocol=finetune",),
    columns=(("Freeze-FER2013 Acc", "linear_expr", "acc", "pct"),
             ("Finetune-FER2013 Acc", "finetune_expr", "acc", "pct"))))
register_dataset(EvalDataset(
    "rafdb", lambda root, cfg: D.rafdb(root, cfg.val_fraction, cfg.seed),
    "RAF-DB basic (EmoLabel/list_patition_label.txt, Image/aligned or Image/original)",
    table1_args=("protocol=both",),
    columns=(("Freeze-RAF-DB Acc", "linear_expr", "acc", "pct"),
             ("Finetune-RAF-DB Acc", "finetune_expr", "acc", "pct"))))
register_dataset(EvalDataset(
    "lfw", lambda root, cfg: D.lfw(root), "LFW <Name>/<Name>_NNNN.jpg (pairs.txt beside it for verification)",
    task="identity", columns=(("FR-KNN ↓", "fr_knn", "acc", "pct"),)))
register_dataset(EvalDataset(
    "folder", lambda root, cfg: D.image_folder(root, Path(root).name, cfg.val_fraction, cfg.test_fraction, cfg.seed),
    "any <class>/* image folders (or train|val|test/<class>/*)"))
