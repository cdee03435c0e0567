"""Figures of embeddings: the paper's thesis as a picture (does a backbone group faces by expression or by
person?) and a video's expression over time."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SILHOUETTE_MAX = 2000  # points the silhouette is computed on (a seeded sample beyond that: it is O(n^2))


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def silhouette(x: np.ndarray, labels: list[str], seed: int = 0) -> float:
    """Mean silhouette of the labelling under cosine distance on the full embeddings: +1 = tight, separate
    groups, 0 = overlapping, < 0 = closer to another group than to its own. Points whose label is the only one
    of its kind are left out."""
    labels = np.asarray(labels)
    keep = np.flatnonzero(np.isin(labels, [v for v in set(labels.tolist()) if (labels == v).sum() > 1]))
    if len(keep) > SILHOUETTE_MAX:
        keep = np.sort(np.random.default_rng(seed).choice(keep, SILHOUETTE_MAX, replace=False))
    y = labels[keep]
    groups = sorted(set(y.tolist()))
    if len(groups) < 2:
        return float("nan")
    u = unit_rows(x[keep])
    dist = np.clip(1 - u @ u.T, 0, 2)
    member = np.stack([y == g for g in groups], 1).astype(np.float64)   # [n, groups]
    sums = dist @ member                                                # distance sums to each group
    sizes = member.sum(0)
    own = member.argmax(1)
    a = sums[np.arange(len(y)), own] / np.maximum(sizes[own] - 1, 1)
    other = sums / sizes
    other[np.arange(len(y)), own] = np.inf
    b = other.min(1)
    return float(np.mean((b - a) / np.maximum(np.maximum(a, b), 1e-12)))


def pca_2d(x: np.ndarray) -> np.ndarray:
    u = unit_rows(x)
    u = u - u.mean(0)
    _, _, vt = np.linalg.svd(u, full_matrices=False)
    return u @ vt[:2].T


def map_png(vectors: dict[str, np.ndarray], labels: list[str], identities: list[str], out: Path) -> dict:
    """One row per checkpoint: its embeddings' first two principal components coloured by label (the class
    folder: the expression of an expression set) and, when the file names give other groups (people), by
    person; each panel states the silhouette of its colouring. Returns {checkpoint: {"class": s, "person": s}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_person = len(set(identities) - {""}) >= 2 and list(identities) != list(labels)  # a <Name>/ folder: one
    cols = 2 if by_person else 1
    fig, axes = plt.subplots(len(vectors), cols, figsize=(4.2 * cols, 3.6 * len(vectors)), squeeze=False)
    scores = {}
    for r, (name, x) in enumerate(vectors.items()):
        xy = pca_2d(x)
        scores[name] = {}
        for c, (what, values) in enumerate([("class", labels), ("person", identities)][:cols]):
            s = silhouette(x, values)
            scores[name][what] = round(s, 4)
            ax = axes[r][c]
            kinds = sorted(set(values))
            cmap = plt.get_cmap("tab10" if len(kinds) <= 10 else "tab20")
            for k, kind in enumerate(kinds):
                m = np.array([v == kind for v in values])
                ax.scatter(xy[m, 0], xy[m, 1], s=9, color=cmap(k % cmap.N), label=kind if len(kinds) <= 12 else None)
            ax.set_title(f"{name}\nby {what}: silhouette {s:+.3f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and len(kinds) <= 12:
                ax.legend(fontsize=6, markerscale=1.5, loc="best")
    fig.suptitle("Embeddings (PCA of the unit vectors); silhouette: cosine, on the full embeddings\n"
                 "expression-aware = high by expression class, low by person", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return scores


def time_curves(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first two principal components of a video's frames, cosine distance of each frame to the first)."""
    u = unit_rows(x)
    return pca_2d(x), 1 - u @ u[0]


def time_png(vectors: dict[str, np.ndarray], times: np.ndarray, title: str, out: Path) -> None:
    """Per checkpoint: the frames' first two principal components and their distance to the first frame, over
    the video's time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(vectors), 1, figsize=(8, 2.4 * len(vectors)), squeeze=False, sharex=True)
    for ax, (name, x) in zip(axes[:, 0], vectors.items()):
        pcs, dist = time_curves(x)
        ax.plot(times, pcs[:, 0], label="PC 1", lw=1)
        ax.plot(times, pcs[:, 1], label="PC 2", lw=1)
        ax.plot(times, dist, label="distance to the first frame", lw=1.5, color="black")
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=6, loc="upper right")
    axes[-1][0].set_xlabel("time (s)")
    fig.suptitle(f"{title}: embedding over time", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
