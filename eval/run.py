"""One evaluation: dataset -> aligned faces (cached) -> per checkpoint: features (cached), protocols, Grad-CAM
-> report."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path

import numpy as np

from eval import report as R
from eval.backbones import checkpoint_meta, is_eyemouth, row_names
from eval.datasets import Dataset, limit
from eval.gradcam import map_side, pick_layer
from eval.metrics import confusion
from eval.probe import extract_features, fine_tune, linear_probe, over_seeds
from eval.rows import KeptRows, row_key
from sslfer.backbone import load_backbone
from sslfer.device import resolve_device
from sslfer.face_geometry import TEMPLATE_UNIT, crop_region
from sslfer.files import ArrayWriter, NpyArray
from sslfer.knn import knn_accuracy, knn_split, read_pairs, verification_accuracy
from sslfer.stills import aligned_faces, alignment_counts, cache_key


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)  # one hash of a checkpoint file per run, not one per split
def _spec_key(spec: str, arch: str, seed: int) -> str:
    """Everything about a backbone that changes its features: a file's content; for 'random' the architecture
    and the seed; for 'imagenet' the architecture and the weights file's content."""
    p = Path(spec.partition("=")[2]) if is_eyemouth(spec) else Path(spec)
    if p.is_file():
        return f"{'eyemouth' if is_eyemouth(spec) else 'backbone'}:file:{file_digest(p)}"
    if spec == "random":
        return f"random:{arch}:{seed}"
    if spec == "imagenet":
        from sslfer.backbone import imagenet_weights_path

        w = imagenet_weights_path(arch)
        return f"imagenet:{arch}:{file_digest(w) if w.is_file() else 'missing'}"
    return spec


def eye_mouth_crops(faces: np.ndarray, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Eye and mouth crops at the template's positions of aligned faces (Table 5's descriptor input)."""
    t = TEMPLATE_UNIT * faces.shape[1]
    iod = t[1, 0] - t[0, 0]
    eyes_box = np.array([t[0, 0] - 0.45 * iod, t[:2, 1].mean() - 0.3 * iod, t[1, 0] + 0.45 * iod,
                         t[:2, 1].mean() + 0.3 * iod])
    mouth_box = np.array([t[3, 0] - 0.25 * iod, t[3:, 1].mean() - 0.35 * iod, t[4, 0] + 0.25 * iod,
                          t[3:, 1].mean() + 0.35 * iod])
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    eyes = np.stack([crop_region(f, ident, eyes_box, size) for f in faces])
    mouth = np.stack([crop_region(f, ident, mouth_box, size) for f in faces])
    return eyes, mouth


class Rows:
    """Some rows of a (memory-mapped) array, indexed without copying the array: rows[idx] reads those rows."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, np.asarray(rows, np.int64)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, idx) -> np.ndarray:
        return np.asarray(self.array[self.rows[idx]])

    def subset(self, keep) -> "Rows":
        return Rows(self.array, self.rows[keep])


class Evaluator:
    """Holds the dataset's aligned faces (memory-mapped from the cache) and computes features per checkpoint
    (cached on disk, memory-mapped too): at AffectNet's size neither is ever whole in RAM."""

    def __init__(self, ds: Dataset, cfg):
        self.ds, self.cfg = ds, cfg
        self.device = resolve_device(cfg.device)
        self.cache = Path(cfg.cache_dir)
        self.items = {k: limit(v, cfg.max_images, cfg.seed) for k, v in ds.splits.items()}
        self.faces, self.how, self.item_keys = {}, {}, {}
        for split, items in self.items.items():
            if not items:
                raise ValueError(f"{ds.name}: the {split} split is empty")
            faces, how = aligned_faces(items, self.cache, cfg.workers, f"{ds.name}/{split}", cfg.align)
            readable = np.array([h != "unreadable" for h in how])
            if not readable.all():  # left out and counted, never scored as black images
                ds.skipped[f"unreadable image ({split})"] = int((~readable).sum())
                items = [it for it, ok in zip(items, readable) if ok]
                how = [h for h in how if h != "unreadable"]
                if not items:
                    raise ValueError(f"{ds.name}: no readable image in the {split} split")
            self.items[split], self.how[split] = items, how
            self.item_keys[split] = cache_key(items, cfg.align)
            self.faces[split] = Rows(faces, np.flatnonzero(readable))

    def backbone(self, spec: str, name: str):
        """(row name, backbone or None for the eye-mouth descriptor, feature width)."""
        if is_eyemouth(spec):
            return name, None, 1024
        _, net, width = load_backbone(spec, self.cfg.arch, self.cfg.seed)
        return name, net, width

    def features(self, spec: str, backbone, split: str) -> np.ndarray:
        key = hashlib.sha1(f"{_spec_key(spec, self.cfg.arch, self.cfg.seed)}|{self.item_keys[split]}|"
                           f"{self.cfg.image_size}".encode()).hexdigest()[:16]
        path = self.cache / f"features-{key}.npy"
        if path.is_file():
            return NpyArray(path)
        faces = self.faces[split]
        if backbone is None:  # the eye-mouth descriptor, in batches
            from sslfer.imagenet import ResNet18Regions

            enc = ResNet18Regions(spec.partition("=")[2], self.device)
            out = ArrayWriter(path, (len(faces), 1024), np.float32)
            try:
                for i in range(0, len(faces), 256):
                    eyes, mouth = eye_mouth_crops(faces[np.arange(i, min(i + 256, len(faces)))])
                    out.array.write(i, enc(eyes, mouth))
            except BaseException:
                out.discard()
                raise
            return out.finish()
        return extract_features(backbone, faces, self.cfg.image_size, self.device, desc=f"features {split}",
                                out_path=path)


def check_backbones(specs: list[str], cfg) -> None:
    """Load every checkpoint once (then let it go) and resolve the device, so that a typo in the last --ckpt
    or a missing CUDA is reported before hours of alignment and of evaluating the others."""
    resolve_device(cfg.device)
    for spec in specs:
        if is_eyemouth(spec):
            from sslfer.imagenet import resnet18_weights

            resnet18_weights(spec.partition("=")[2])
        else:
            load_backbone(spec, cfg.arch, cfg.seed)


def evaluate_expressions(ds: Dataset, specs: list[str], cfg, report_dir: Path) -> dict:
    """Linear probe and/or fine-tuning for classes (and valence/arousal when the dataset has them). The report
    and metrics.json are rewritten after each checkpoint: a later failure keeps the rows done. A row evaluated
    before with the same checkpoint content and settings is kept (eval/rows.py), and said so."""
    tasks = ["expr", "va"] if cfg.task == "both" else [cfg.task]
    if "va" in tasks and not any(not math.isnan(it.valence) for it in ds.splits["train"]):
        raise ValueError(f"task={cfg.task}: {ds.name} has no valence/arousal labels")
    check_backbones(specs, cfg)
    ev = Evaluator(ds, cfg)
    labels = {k: np.array([it.label for it in v], np.int64) for k, v in ev.items.items()}
    report_dir.mkdir(parents=True, exist_ok=True)
    gradcam_idx = _gradcam_images(labels["test"], len(ds.classes), cfg)
    kept = KeptRows(cfg.cache_dir)
    results, curves, grids, provenance = {}, {}, {}, {}
    for spec, name in row_names(specs, cfg.arch).items():
        provenance[name] = checkpoint_meta(spec)
        key = row_key(_spec_key(spec, cfg.arch, cfg.seed), ds.name, ev.item_keys, cfg)
        done = kept.load(key)
        if done is None:
            row, row_curves, grid = _expression_row(ev, spec, name, tasks, labels, gradcam_idx, report_dir)
            kept.save(key, row, {k.removeprefix(f"{name} "): v for k, v in row_curves.items()}, grid)
        else:  # kept under another row name maybe: the curves are named here
            row, grid = done["row"], done["grid"]
            row_curves = {f"{name} {k}": v for k, v in done["curves"].items()}
            _redraw_confusions(row, name, ds.classes, report_dir)
            print(f"kept          {name}: evaluated before with the same checkpoint content and settings", flush=True)
        results[name] = row
        curves.update(row_curves)
        if grid is not None:
            grids[name] = grid
        metrics = _finish(ds, ev, cfg, results, report_dir, _figures(ds, cfg, labels, gradcam_idx, curves, grids,
                                                                     report_dir), provenance)
    return metrics


def _expression_row(ev: "Evaluator", spec: str, name: str, tasks: list[str], labels: dict, gradcam_idx: np.ndarray,
                    report_dir: Path) -> tuple[dict, dict, list | None]:
    """One checkpoint's row: every protocol and task asked for, over the probe seeds; its head curves and its
    Grad-CAM images (None when not drawn)."""
    ds, cfg = ev.ds, ev.cfg
    _, backbone, width = ev.backbone(spec, name)
    protocols = ["linear", "finetune"] if cfg.protocol == "both" else [cfg.protocol]
    va = {k: np.array([[it.valence, it.arousal] for it in v], np.float32) for k, v in ev.items.items()}
    va_ok = {k: ~np.isnan(v).any(1) for k, v in va.items()}
    seeds = [cfg.seed + i for i in range(max(1, cfg.probe_seeds))]
    row, curves, grid = {}, {}, None
    feats = ({s: Rows(ev.features(spec, backbone, s), np.arange(len(ev.items[s]))) for s in ev.items}
             if "linear" in protocols else None)
    for task in tasks:
        if task == "expr":
            targets, sel = labels, {k: np.arange(len(v)) for k, v in labels.items()}
        else:
            targets, sel = {k: va[k][va_ok[k]] for k in va}, {k: np.flatnonzero(v) for k, v in va_ok.items()}
        if "linear" in protocols:
            r = over_seeds(lambda s: linear_probe(task, {k: feats[k].subset(sel[k]) for k in feats}, targets,
                                                  len(ds.classes), cfg, ev.device, s), seeds)
            row[f"linear_{task}"] = r.metrics
            curves[f"{name} linear {task}"] = r.curves
            if task == "expr":
                _confusion(r, targets["test"], ds.classes, f"{name} linear", report_dir, row["linear_expr"])
                if backbone is not None and cfg.gradcam_per_class:
                    grid = _gradcam(backbone, r.model, ev.faces["test"][gradcam_idx], cfg, ev.device)
        if "finetune" in protocols and backbone is not None:
            faces = {k: ev.faces[k].subset(sel[k]) for k in ev.faces}
            r = over_seeds(lambda s: fine_tune(task, backbone, width, faces, targets, len(ds.classes), cfg,
                                               ev.device, s), seeds)
            row[f"finetune_{task}"] = r.metrics
            curves[f"{name} fine-tune {task}"] = r.curves
            if task == "expr":
                _confusion(r, targets["test"], ds.classes, f"{name} fine-tune", report_dir, row["finetune_expr"])
                if cfg.gradcam_per_class and grid is None:
                    grid = _gradcam(r.model[0], r.model[1], ev.faces["test"][gradcam_idx], cfg, ev.device)
    return row, curves, grid


def _figures(ds: Dataset, cfg, labels: dict, gradcam_idx: np.ndarray, curves: dict, grids: dict,
             report_dir: Path) -> str:
    """The report's head curves, Grad-CAM grid and confusion matrices (PNGs), as Markdown."""
    extra = []
    if curves:
        R.curves_png(curves, report_dir / "curves.png")
        extra.append("![head training curves](curves.png)")
    if grids:
        grid_labels = [ds.classes[labels["test"][i]] for i in gradcam_idx]
        layer = pick_layer(cfg.gradcam_layer, cfg.image_size)
        where = f"Grad-CAM at {layer} ({map_side(layer, cfg.image_size)}x{map_side(layer, cfg.image_size)} " \
                f"at {cfg.image_size} px)"
        R.grid_png(grids, grid_labels, report_dir / "gradcam.png", f"{where}, for the predicted class")
        if where not in ds.notes:
            ds.notes.append(where)
        extra.append("![Grad-CAM](gradcam.png)")
    extra += [f"![confusion {n}]({p.name})" for n, p in sorted((p.stem, p) for p in report_dir.glob("confusion-*.png"))]
    return "\n\n".join(extra)


def _redraw_confusions(row: dict, name: str, classes: list[str], report_dir: Path) -> None:
    """A kept row's confusion matrices as PNGs in this report (from the matrices its metrics hold)."""
    for section, protocol in (("linear_expr", "linear"), ("finetune_expr", "fine-tune")):
        matrix = row.get(section, {}).get("test", {}).get("confusion")
        if matrix is not None:
            title = f"{name} {protocol}"
            R.confusion_png(np.array(matrix), classes, title, report_dir / f"confusion-{R.slug(title)}.png")


def _gradcam_images(y: np.ndarray, n_classes: int, cfg) -> np.ndarray:
    rng = np.random.default_rng(cfg.seed)
    picked = []
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        picked += rng.permutation(idx)[:cfg.gradcam_per_class].tolist()
    return np.array(picked, int)


def _gradcam(backbone, classifier, faces, cfg, device):
    from eval.gradcam import grad_cam, overlay

    if len(faces) == 0:
        return []
    cams, _ = grad_cam(backbone, classifier, faces, cfg.image_size, device, cfg.gradcam_layer)
    return [overlay(f, c, cfg.image_size) for f, c in zip(faces, cams)]


def _confusion(result, y_true, classes, title, report_dir, metrics):
    m = confusion(y_true, result.predictions, len(classes))
    metrics["test"]["confusion"] = m.tolist()
    R.confusion_png(m, classes, title, report_dir / f"confusion-{R.slug(title)}.png")


def _finish(ds, ev, cfg, results, report_dir, extra_md, provenance: dict[str, dict]) -> dict:
    """metrics.json and the report; `provenance`: row name -> what its checkpoint says of itself (file, step,
    epoch; empty for random, imagenet and foreign files)."""
    metrics = {"dataset": ds.name, "classes": ds.classes, "config": dataclasses.asdict(cfg),
               "images": {k: len(v) for k, v in ev.items.items()},
               "alignment": {k: alignment_counts(v) for k, v in ev.how.items()},
               "skipped": ds.skipped, "notes": ds.notes, "checkpoints": results,
               "provenance": {name: meta for name, meta in provenance.items() if meta}}
    R.write(report_dir, metrics, extra_md)
    return metrics


def evaluate_lfw(ds: Dataset, specs: list[str], cfg, report_dir: Path, pairs: Path | None = None) -> dict:
    """FR-KNN identification (and pair verification when a pairs.txt is given or found in the folder)."""
    check_backbones(specs, cfg)
    ev = Evaluator(ds, cfg)
    items = ev.items["all"]
    identities = [it.identity for it in items]
    gallery, probe, people = knn_split(identities, cfg.knn_min_images, cfg.knn_train_fraction, cfg.seed)
    if len(people) < 2:
        raise ValueError(f"lfw: fewer than 2 people with >= {cfg.knn_min_images} images")
    pair_list = read_pairs(pairs, Path(items[0].source).parents[1]) if pairs else []
    index = {it.source: i for i, it in enumerate(items)}
    pair_list = [(index.get(str(a)), index.get(str(b)), s, k) for a, b, s, k in pair_list]
    pair_list = [p for p in pair_list if p[0] is not None and p[1] is not None]
    ds.notes.append(f"FR-KNN: {len(people)} people with >= {cfg.knn_min_images} images, "
                    f"{len(gallery)} gallery and {len(probe)} probe images (1-NN, cosine)")
    results = {}
    provenance: dict[str, dict] = {}
    kept = KeptRows(cfg.cache_dir)
    dataset = f"{ds.name}|pairs {file_digest(pairs) if pair_list else ''}"
    for spec, row_name in row_names(specs, cfg.arch).items():
        provenance[row_name] = checkpoint_meta(spec)
        key = row_key(_spec_key(spec, cfg.arch, cfg.seed), dataset, ev.item_keys, cfg)
        done = kept.load(key)
        if done is not None:
            results[row_name] = done["row"]
            print(f"kept          {row_name}: evaluated before with the same checkpoint content and settings",
                  flush=True)
            metrics = _finish(ds, ev, cfg, results, report_dir, "", provenance)
            continue
        name, backbone, _ = ev.backbone(spec, row_name)
        f = ev.features(spec, backbone, "all")
        row = {"fr_knn": {"acc": knn_accuracy(f, identities, gallery, probe), "people": len(people),
                          "gallery": int(len(gallery)), "n": int(len(probe))}}
        if pair_list:
            u = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
            sim = np.array([u[a] @ u[b] for a, b, _, _ in pair_list])
            row["verification"] = {"acc": verification_accuracy(sim, np.array([p[2] for p in pair_list]),
                                                                np.array([p[3] for p in pair_list])),
                                   "n": len(pair_list)}
        results[name] = row
        kept.save(key, row, {}, None)
        metrics = _finish(ds, ev, cfg, results, report_dir, "", provenance)
    return metrics
