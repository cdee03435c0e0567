"""Reports: metrics.json, a Table-1-style report.md, confusion matrices, head curves and Grad-CAM grids as PNG;
and `make report`, which joins several reports into one table."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from eval.registry import table1_columns

COLUMNS = [  # (title, section, key, format)
    ("Linear F1", "linear_expr", "f1", "pct"), ("Linear Acc", "linear_expr", "acc", "pct"),
    ("Fine-tune F1", "finetune_expr", "f1", "pct"), ("Fine-tune Acc", "finetune_expr", "acc", "pct"),
    ("V CCC", "finetune_va", "v_ccc", "num"), ("V RMSE", "finetune_va", "v_rmse", "num"),
    ("A CCC", "finetune_va", "a_ccc", "num"), ("A RMSE", "finetune_va", "a_rmse", "num"),
    ("Linear V CCC", "linear_va", "v_ccc", "num"), ("Linear A CCC", "linear_va", "a_ccc", "num"),
    ("FR-KNN", "fr_knn", "acc", "pct"), ("Verification", "verification", "acc", "pct"),
]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:60]


def _value(section: dict, key: str):
    if not section:
        return None
    return section.get("test", section).get(key)


def _std(section: dict, key: str):
    """The standard deviation over probe seeds, when the head was trained with several."""
    return (section or {}).get("test_std", {}).get(key)


def table(results: dict[str, dict], prefix: str = "") -> str:
    """Markdown table: a row per checkpoint, the columns any of them has; numbers of images in brackets."""
    cols = [c for c in COLUMNS if any(_value(r.get(c[1]), c[2]) is not None for r in results.values())]
    if not cols:
        return "(no metrics)\n"
    head = "| checkpoint | " + " | ".join(f"{prefix}{c[0]}" for c in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for name, r in results.items():
        cells = []
        for title, section, key, fmt in cols:
            cells.append(_cell(_value(r.get(section), key), _std(r.get(section), key), fmt))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def confusion_png(matrix: np.ndarray, classes: list[str], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def curves_png(curves: dict[str, list], out: Path) -> None:
    """One panel per checkpoint/protocol: training loss and validation score per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(3.5 * n, 2.8), squeeze=False)
    for ax, (name, rows) in zip(axes[0], curves.items()):
        ep = [r["epoch"] for r in rows]
        ax.plot(ep, [r["train_loss"] for r in rows], label="train loss")
        ax2 = ax.twinx()
        ax2.plot(ep, [r["val_score"] for r in rows], color="tab:orange", label="val score")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def grid_png(rows: dict[str, list[np.ndarray]], labels: list[str], out: Path, title: str = "") -> None:
    """Grad-CAM grid: one row per checkpoint, the same images in the same columns; `title` above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(v) for v in rows.values())
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols, 1.5 * n_rows), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c])
            if r == 0 and c < len(labels):
                ax.set_title(labels[c], fontsize=7)
        axes[r][0].text(-0.1, 0.5, name, transform=axes[r][0].transAxes, rotation=90, va="center",
                        ha="right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def settings(metrics: dict) -> dict:
    """What a report's numbers depend on besides the checkpoints: two reports of one dataset join only when
    these are equal."""
    cfg = metrics.get("config", {})
    keep = ("protocol", "task", "epochs", "batch_size", "lr", "weight_decay", "image_size", "seed", "probe_seeds",
            "max_images", "val_fraction", "test_fraction", "classes", "knn_min_images", "knn_train_fraction",
            "align")
    out = {"dataset": metrics["dataset"], "classes": len(metrics.get("classes", [])),
           "images": metrics.get("images", {})}
    out.update({k: cfg[k] for k in keep if k in cfg and k != "classes"})
    if metrics["dataset"] == "lfw":  # identification only: the head options do not apply
        for k in ("protocol", "task", "epochs", "batch_size", "lr", "weight_decay", "probe_seeds",
                  "val_fraction", "test_fraction"):
            out.pop(k, None)
    return out


def _cell(v, sd, fmt) -> str:
    if v is None:
        return "–"
    if fmt == "pct":
        return f"{100 * v:.1f}%" + (f" ± {100 * sd:.1f}" if sd is not None else "")
    return f"{v:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def write(report_dir: Path, metrics: dict, extra_md: str = "") -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics = {**metrics, "settings": settings(metrics)}
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shown = {k: v for k, v in metrics["settings"].items() if k not in ("dataset", "images")}
    lines = [f"# {metrics['dataset']} evaluation", "",
             "Settings: " + ", ".join(f"{k} {v}" for k, v in shown.items()), "", table(metrics["checkpoints"])]
    lines += ["", "Test-split images per protocol, alignment and skipped inputs are in metrics.json."]
    for split, counts in metrics.get("alignment", {}).items():
        lines.append(f"- {split}: {metrics['images'].get(split, '?')} images, aligned by {counts}")
    for reason, n in metrics.get("skipped", {}).items():
        lines.append(f"- skipped: {n} ({reason})")
    for note in metrics.get("notes", []):
        lines.append(f"- note: {note}")
    lines += ["", extra_md]
    path = report_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


class MixedSettings(ValueError):
    """Reports of one dataset made with different settings; reported as one line."""


EPOCH_ROW = re.compile(r"^(?P<run>.+)/epoch-(?P<epoch>\d+)\.pt$")  # a kept checkpoint's row name (row_names)


def best_epochs(names: list[str], by_dataset: dict, column: tuple | None) -> tuple[list[str], dict[str, str]]:
    """Of each run's epoch checkpoints, the one with the highest value in `column` (an expression column; a tie:
    the later epoch; no column: the last epoch): the row names kept, and their labels in the table."""
    title, dataset, section, key, _ = column or ("", "", "", "", "")
    runs: dict[str, list[str]] = {}
    for n in names:
        if m := EPOCH_ROW.match(n):
            runs.setdefault(m["run"], []).append(n)
    kept, labels = [n for n in names if not EPOCH_ROW.match(n)], {}
    for rows in runs.values():
        scored = [(v, int(EPOCH_ROW.match(n)["epoch"]), n) for n in rows
                  if (v := _value(by_dataset.get(dataset, {}).get(n, {}).get(section), key)) is not None]
        best = max(scored)[2] if scored else max(rows, key=lambda n: int(EPOCH_ROW.match(n)["epoch"]))
        kept.append(best)
        labels[best] = (f"{best} (the best of {len(rows)} kept epochs by {title})" if scored else
                        f"{best} (the last of {len(rows)} kept epochs: no expression column to choose by)")
    return [n for n in names if n in kept], labels


def join(report_dirs: list[Path], allow_mixed: bool = False, notes: list[str] = (), best_epoch: bool = False) -> str:
    """Several reports' metrics.json joined (`make report RUNS=...`): a Table-1-shaped table (a row per
    checkpoint, the columns that were run), then one table per dataset and the settings of each. Reports of one
    dataset whose settings differ (classes, split, protocol, epochs, image size, seeds...) are refused unless
    allow_mixed. best_epoch: the Table-1 table shows, of each run's epoch checkpoints, only the best by its first
    column (the paper's rule, selected on the reported numbers as its Table 3 does); the per-dataset tables keep
    every epoch."""
    by_dataset: dict[str, dict[str, dict]] = {}
    seen: dict[str, tuple[Path, dict]] = {}
    provenance: dict[str, dict] = {}
    for d in report_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{d}: no metrics.json (not an evaluation report)")
        m = json.loads(path.read_text())
        s = m.get("settings") or settings(m)
        # reports of one dataset and protocol fill the same columns: their settings must agree
        group = (m["dataset"], s.get("protocol"), s.get("task"))
        if group in seen and seen[group][1] != s and not allow_mixed:
            first, other = seen[group]
            diff = sorted(k for k in set(s) | set(other) if s.get(k) != other.get(k))
            raise MixedSettings(f"{d} and {first} ({m['dataset']}) differ in {', '.join(diff)}: their numbers "
                                f"are not comparable (ALLOW_MIXED=1 / --allow-mixed joins them anyway)")
        seen.setdefault(group, (Path(d), s))
        seen.setdefault(m["dataset"], (Path(d), s))
        for name, r in m["checkpoints"].items():
            by_dataset.setdefault(m["dataset"], {}).setdefault(name, {}).update(r)
        provenance.update(m.get("provenance", {}))
    names = list(dict.fromkeys(n for rows in by_dataset.values() for n in rows))
    # Table 1's columns of the registered datasets; a joined report shows those that were run
    cols = [c for c in table1_columns()
            if any(_value(by_dataset.get(c[1], {}).get(n, {}).get(c[2]), c[3]) is not None for n in names)]
    out, labels = [], {}
    if cols:
        if best_epoch:
            names, labels = best_epochs(names, by_dataset, next((c for c in cols if c[2].endswith("_expr")), None))
        out += ["## Table 1", "", "| checkpoint | " + " | ".join(c[0] for c in cols) + " |",
                "|---|" + "---:|" * len(cols)]
        for n in names:
            cells = []
            for _, ds, section, key, fmt in cols:
                sec = by_dataset.get(ds, {}).get(n, {}).get(section)
                cells.append(_cell(_value(sec, key), _std(sec, key), fmt))
            out.append(f"| {labels.get(n, n)} | " + " | ".join(cells) + " |")
        out.append("")
    out += list(notes) + ([""] if notes else [])
    if provenance:
        out += ["Checkpoints: " + "; ".join(
            f"{n} = {p['file']} (epoch {p['epoch']}, step {p['step']}"
            + (f", monitor kNN {p['monitor_expr_knn']:.3f}" if "monitor_expr_knn" in p else "") + ")"
            for n, p in provenance.items() if n in names), ""]
    for ds, rows in by_dataset.items():
        shown = {k: v for k, v in seen[ds][1].items() if k != "dataset"}
        out += [f"## {ds}", "", table(rows), "Settings: " + ", ".join(f"{k} {v}" for k, v in shown.items()), ""]
    return "\n".join(out)
