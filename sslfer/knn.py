"""k-nearest neighbours on frozen features: FR-KNN identification (paper Table 2), LFW pair verification, and
the monitor's k-NN vote."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_split(identities: list[str], min_images: int, train_fraction: float, seed: int):
    """Gallery and probe indices: people with >= min_images images, a seeded split of each person's images."""
    rng = np.random.default_rng(seed)
    by_person: dict[str, list[int]] = {}
    for i, who in enumerate(identities):
        by_person.setdefault(who, []).append(i)
    gallery, probe = [], []
    people = sorted(p for p, idx in by_person.items() if len(idx) >= min_images)
    for p in people:
        idx = rng.permutation(by_person[p])
        k = int(round(len(idx) * train_fraction))
        gallery += idx[:k].tolist()
        probe += idx[k:].tolist()
    return np.array(gallery, int), np.array(probe, int), people


def knn_accuracy(features: np.ndarray, identities: list[str], gallery: np.ndarray, probe: np.ndarray) -> float:
    """1-NN on cosine similarity: share of probe images whose nearest gallery image is the same person."""
    f = _unit(np.asarray(features, np.float32))
    ids = np.array(identities)
    nearest = (f[probe] @ f[gallery].T).argmax(1)
    return float((ids[gallery][nearest] == ids[probe]).mean())


def read_pairs(path: Path, root: Path, folds: int = 10) -> list[tuple[Path, Path, bool, int]]:
    """LFW pairs.txt: 'name i j' (same person) or 'name1 i name2 j' (different), after a header line; with the
    fold of each pair: pairs.txt holds its folds as contiguous blocks (fold k = the k-th tenth of the lines)."""
    pairs = []
    for line in Path(path).read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3:
            a, b, same = (parts[0], int(parts[1])), (parts[0], int(parts[2])), True
        elif len(parts) == 4:
            a, b, same = (parts[0], int(parts[1])), (parts[2], int(parts[3])), False
        else:
            continue
        pairs.append((root / a[0] / f"{a[0]}_{a[1]:04d}.jpg", root / b[0] / f"{b[0]}_{b[1]:04d}.jpg", same))
    return [(a, b, same, i * folds // len(pairs)) for i, (a, b, same) in enumerate(pairs)]


def verification_accuracy(sim: np.ndarray, same: np.ndarray, fold: np.ndarray) -> float:
    """Verification over the given folds: the threshold that is best on the other folds, scored on each fold;
    mean over folds."""
    accs = []
    for k in np.unique(fold):
        test = fold == k
        train = ~test
        candidates = np.unique(sim[train])
        best = max(candidates, key=lambda t: ((sim[train] >= t) == same[train]).mean())
        accs.append(((sim[test] >= best) == same[test]).mean())
    return float(np.mean(accs))


def split_per_label(ids: np.ndarray, gallery_share: float, rng) -> tuple[np.ndarray, np.ndarray]:
    gallery, probe = [], []
    for label in np.unique(ids):
        idx = rng.permutation(np.flatnonzero(ids == label))
        k = min(len(idx) - 1, max(1, int(round(len(idx) * gallery_share))))
        gallery += idx[:k].tolist()
        probe += idx[k:].tolist()
    return np.array(gallery, int), np.array(probe, int)


def knn_vote(features: torch.Tensor, ids: np.ndarray, gallery: np.ndarray, probe: np.ndarray, k: int,
             balanced: bool = False) -> float:
    """Share of probes whose k nearest gallery images (cosine) vote for their label (ties: the nearest wins);
    balanced: the mean over labels of that share among the label's probes."""
    f = torch.nn.functional.normalize(features.float(), dim=1)
    sim = f[probe] @ f[gallery].T
    k = min(k, len(gallery))
    top_sim, top = sim.topk(k, dim=1)
    votes = torch.zeros(len(probe), int(ids.max()) + 1)
    labels = torch.from_numpy(ids[gallery])[top]
    # each neighbour votes 1, plus a tiny share of its similarity so that ties go to the nearer neighbours
    votes.scatter_add_(1, labels, 1 + 1e-3 * top_sim.cpu())
    right = votes.argmax(1).numpy() == ids[probe]
    if balanced:
        return float(np.mean([right[ids[probe] == label].mean() for label in np.unique(ids[probe])]))
    return float(right.mean())


def cross_group_retrieval(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Identity retrieval across recordings: each item of a label seen in several groups (a speaker's clips) is a
    query whose gallery is every item of the other groups (all labels); (accuracy, chance), both the mean over
    those labels of their queries' share whose nearest gallery item (cosine) has their label, chance being the
    share of the gallery that has it. Nothing of the query's own group can answer, so what is shared within a
    recording (background, light, the moment) does not count; the person does."""
    f = _unit(np.asarray(features, np.float32))
    labels, groups = np.asarray(labels), np.asarray(groups)
    accs, chances = [], []
    for label in np.unique(labels):
        if len(np.unique(groups[labels == label])) < 2:
            continue
        right, chance = [], []
        for g in np.unique(groups[labels == label]):
            query, gallery = (labels == label) & (groups == g), groups != g
            nearest = np.flatnonzero(gallery)[(f[query] @ f[gallery].T).argmax(1)]
            right.append(labels[nearest] == label)
            chance.append(np.full(query.sum(), (labels[gallery] == label).mean()))
        accs.append(np.concatenate(right).mean())
        chances.append(np.concatenate(chance).mean())
    if not accs:
        raise ValueError("no label is in two groups: nothing to retrieve across groups")
    return float(np.mean(accs)), float(np.mean(chances))
