"""The online monitor (paper Table 3: trained too long, a contrastive backbone loses expression and gains
identity). Every `monitor_every` steps the frozen backbone embeds two small labelled sets:

- expression: a folder of `<class>/*.jpg`, class-balanced sample, half of each class as the kNN gallery and
  half as probes; k-nearest-neighbour vote (k = 10, cosine similarity) → accuracy (= balanced accuracy);
- identity: a folder of `<person>/*.jpg` (people with >= 4 images), 70/30 split per person, 1-NN (cosine) →
  FR-KNN accuracy (lower = less identity in the features).

Faces are aligned once with the pretraining template (`sslfer.stills`) and cached; the image lists are a
seeded sample of at most `monitor_max_images` per set."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from sslfer import folders
from sslfer.augment import eval_transform
from sslfer.knn import knn_vote, split_per_label
from sslfer.stills import Still, aligned_faces

KNN_K = 10


def labelled_images(folder: Path) -> dict[str, list[Path]]:
    """The set's <label>/<image> files by label; at least two labels."""
    try:
        out = folders.labelled_images(folder)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"monitor set {e}") from None
    if len(out) < 2:
        raise FileNotFoundError(f"monitor set {folder}: needs at least two <label>/ folders of images")
    return out


def balanced_sample(by_label: dict[str, list[Path]], max_images: int, min_per_label: int,
                    rng: np.random.Generator) -> tuple[list[Path], list[int], list[str]]:
    """Up to max_images files, the same number per label where the labels have them."""
    labels = [k for k, v in by_label.items() if len(v) >= min_per_label]
    per = max(min_per_label, max_images // max(len(labels), 1))
    paths, ids = [], []
    for i, k in enumerate(labels):
        files = by_label[k]
        pick = rng.choice(len(files), min(per, len(files)), replace=False)
        paths += [files[j] for j in sorted(pick)]
        ids += [i] * len(pick)
    return paths, ids, labels


class MonitorSet:
    def __init__(self, folder: Path, max_images: int, min_per_label: int, gallery_share: float, k: int,
                 cache_dir: Path, seed: int, workers: int, desc: str):
        rng = np.random.default_rng(seed)
        paths, ids, self.labels = balanced_sample(labelled_images(folder), max_images, min_per_label, rng)
        if len(self.labels) < 2:
            raise FileNotFoundError(f"monitor set {folder}: fewer than two labels with {min_per_label}+ images")
        faces, how = aligned_faces([Still(str(p)) for p in paths], cache_dir, workers, desc)
        readable = np.array([h != "unreadable" for h in how])
        self.faces = torch.from_numpy(faces[readable]).permute(0, 3, 1, 2).contiguous()
        self.ids = np.array(ids)[readable]
        self.gallery, self.probe = split_per_label(self.ids, gallery_share, rng)
        self.k, self.folder = k, folder

    @torch.no_grad()
    def score(self, backbone: torch.nn.Module, size: int, device: str) -> float:
        feats = []
        for i in range(0, len(self.faces), 256):
            x = eval_transform(self.faces[i:i + 256].to(device), size)
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                feats.append(backbone(x).float().cpu())
        return knn_vote(torch.cat(feats), self.ids, self.gallery, self.probe, self.k, balanced=self.k > 1)


class Monitor:
    """Both sets; `__call__(model)` returns the scores for the log (the backbone is put back in train mode)."""

    def __init__(self, cfg, device: str):
        self.cfg, self.device = cfg, device
        cache, workers = Path(cfg.monitor_cache), max(1, min(4, cfg.workers))
        self.sets = {}
        if cfg.monitor:
            self.sets["monitor_expr_knn"] = MonitorSet(Path(cfg.monitor), cfg.monitor_max_images, 4, 0.5, KNN_K,
                                                       cache, cfg.seed, workers, "monitor expression set")
        if cfg.monitor_identity:
            self.sets["monitor_id_knn"] = MonitorSet(Path(cfg.monitor_identity), cfg.monitor_max_images, 4, 0.7,
                                                     1, cache, cfg.seed, workers, "monitor identity set")

    def __bool__(self):
        return bool(self.sets)

    def describe(self) -> str:
        return "; ".join(f"{k}: {len(s.probe)} probes / {len(s.gallery)} gallery, {len(s.labels)} labels "
                         f"({s.folder})" for k, s in self.sets.items())

    def __call__(self, backbone: torch.nn.Module) -> dict:
        t = time.perf_counter()
        was_training = backbone.training
        backbone.eval()
        try:
            out = {k: s.score(backbone, self.cfg.image_size, self.device) for k, s in self.sets.items()}
        finally:
            backbone.train(was_training)
        out["monitor_seconds"] = time.perf_counter() - t
        return out
