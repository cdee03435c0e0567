"""`python -m eval embed INPUT... --ckpt CKPT [--ckpt ...] --out FILE.parquet [key=value ...]` (`make embed`):
expression embeddings of any face image or video with pretrained backbones, a parquet table, and figures. The
Python side of the same thing is `from sslfer import load_encoder, FacePreprocess` (sslfer/encoder.py).

Images are aligned exactly as the evaluation aligns them, so their embeddings equal the evaluation's features;
video frames are sampled and aligned as `make shards` does it (the same timestamps, the face tracked through the
clip). An input that cannot be read or shows no face is listed with its reason."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sslfer.decode import VIDEO_EXTENSIONS
from sslfer.encoder import FACE_SIZE, FacePreprocess, NoFace, face_box, load_encoder, load_projector
from sslfer.folders import IMAGE_EXTENSIONS
from sslfer.progress import progress


@dataclass
class Faces:
    """Aligned faces and what each row is (one chunk of the inputs), and the inputs rejected."""
    faces: list[np.ndarray] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    def add(self, face: np.ndarray, **row) -> None:
        self.faces.append(face)
        self.rows.append(row)

    def reject(self, source: str, reason: str, frame: int = -1, timestamp: float = float("nan")) -> None:
        self.rejects.append({"source": source, "frame": frame, "timestamp": timestamp, "reason": reason})


def find_inputs(inputs: list[str]) -> tuple[list[tuple[Path, str]], list[Path], list[dict]]:
    """(images with their label, videos, rejects). A folder is searched recursively; an image's label is the
    folder under the given one that holds it (the class of a <class>/*.jpg set), '' for a file given alone."""
    images, videos, rejects = [], [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            pairs = [(p, p.relative_to(path).parts[0] if len(p.relative_to(path).parts) > 1 else "") for p in files]
        elif path.exists():
            pairs = [(path, "")]
        else:
            rejects.append({"source": text, "frame": -1, "timestamp": float("nan"), "reason": "no such file"})
            continue
        for p, label in pairs:
            ext = p.suffix.lower()
            if ext in IMAGE_EXTENSIONS:
                images.append((p, label))
            elif ext in VIDEO_EXTENSIONS:
                videos.append(p)
            elif path.is_file():  # a file named on its own is reported; other files in folders are not inputs
                rejects.append({"source": str(p), "frame": -1, "timestamp": float("nan"),
                                "reason": f"not an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) or video "
                                          f"({', '.join(sorted(VIDEO_EXTENSIONS))})"})
    return images, videos, rejects


def identity_of(path: Path) -> str:
    """The person of an LFW-style file name <Name>_NNNN.jpg, '' otherwise."""
    m = re.fullmatch(r"(.+)_\d+", path.stem)
    return m.group(1) if m else ""


def _align_paths(task: tuple[list[str], int, bool]) -> list[tuple[np.ndarray | None, list[float] | None, str]]:
    """(face, box, reason) per image file: a worker's share of a chunk."""
    from sslfer.stills import Still, read_image

    paths, image_size, aligned = task
    prep, out = FacePreprocess(image_size, aligned), []
    for path in paths:
        rgb = read_image(Still(path))
        if rgb is None:
            out.append((None, None, "unreadable image"))
            continue
        try:
            out.append((*prep.align(rgb), ""))
        except NoFace as e:
            out.append((None, None, str(e)))
    return out


def align_images(images: list[tuple[Path, str]], cfg, pool, bar, first: int = 0) -> Faces:
    """One chunk of images (the first being input number `first`) aligned as the evaluation aligns them, over
    the worker pool when there is one."""
    found = Faces()
    parts = [[str(p) for p, _ in images[i:i + 32]] for i in range(0, len(images), 32)]
    tasks = [(part, cfg.image_size, cfg.aligned) for part in parts]
    results = pool.imap(_align_paths, tasks) if pool else map(_align_paths, tasks)
    for k, ((path, label), (face, box, reason)) in enumerate(zip(images, (r for part in results for r in part))):
        if reason:
            found.reject(str(path), reason)
        else:
            found.add(face, index=first + k, source=str(path), label=label, identity=identity_of(path), frame=0,
                      timestamp=float("nan"), box=box)
        bar.update(1)
    return found


def align_video(path: Path, cfg) -> Faces:
    """Frames sampled and aligned as make shards does it."""
    from sslfer.decode import DecodeError, DecodeReport, probe, read_video
    from sslfer.face_geometry import align_face
    from sslfer.landmarks import FaceTracker

    found, report = Faces(), DecodeReport()
    try:
        width = float(probe(path).get("width") or 0)
        with FaceTracker(4, cfg.min_face_px, 0.5) as tracker:
            for i, frame in enumerate(read_video(path, cfg.sample_fps, cfg.max_side, report)):
                det = tracker.detect(frame.rgb) if frame.rgb is not None else None
                reason = "unreadable frame" if det is None else det.reason
                if reason:
                    found.reject(str(path), reason, i, frame.timestamp)
                    continue
                face = align_face(frame.rgb, det.landmarks, FACE_SIZE, 64)[0]
                scale = width / frame.rgb.shape[1] if width else 1.0  # the box in the video's own pixels
                found.add(face, source=str(path), label="", identity="", frame=i, timestamp=frame.timestamp,
                          box=face_box(det.landmarks, scale))
    except DecodeError as e:
        found.reject(str(path), str(e))
    if report.warning:
        found.reject(str(path), report.warning)
    if not found.faces and not any(r["frame"] == -1 for r in found.rejects):
        found.reject(str(path), "no usable face in any sampled frame")
    return found


class TableWriter:
    """The parquet table, written chunk by chunk (row groups) into a temporary file renamed at the end."""

    def __init__(self, path: Path):
        self.path, self.tmp, self.writer, self.rows = path, path.with_name(path.name + ".tmp"), None, 0

    def write(self, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        columns = {k: [r[k] for r in rows] for k in rows[0]}
        table = pa.table({k: (pa.array(v, pa.list_(pa.float32(), len(v[0])))
                              if k in ("embedding", "projection", "box") else pa.array(v))
                          for k, v in columns.items()})
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        self.writer.write_table(table)
        self.rows += len(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.tmp.replace(self.path)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


MAP_POINTS = 3000  # images drawn (seeded) for the map: its PCA and silhouettes need them all in memory


class Embedder:
    """Every checkpoint's embeddings of one chunk of faces at a time, written to the table as they come; the faces
    drawn for the map kept aside (their embeddings, labels and people)."""

    def __init__(self, specs: list[str], cfg, table: "TableWriter", on_map: set):
        from eval.backbones import row_names
        from sslfer.device import resolve_device

        self.cfg, self.table, self.on_map = cfg, table, on_map
        self.device = resolve_device(cfg.device)  # the device and every --ckpt before any face is aligned
        self.names = row_names(specs, cfg.arch)
        self.nets = {spec: load_encoder(spec, cfg.arch, cfg.seed) for spec in self.names}
        self.heads = {spec: load_projector(spec) for spec in self.names} if cfg.projection else {}
        self.mapped: dict[str, list[np.ndarray]] = {name: [] for name in self.names.values()}
        self.map_labels, self.map_people, self.dim, self.faces = [], [], 0, 0

    def __call__(self, found: Faces, images_chunk: bool) -> dict[str, np.ndarray]:
        """Write the chunk's rows for every checkpoint; returns its embeddings."""
        from eval.probe import extract_features

        cfg, faces, got = self.cfg, np.stack(found.faces), {}
        for spec, name in self.names.items():
            emb = np.asarray(extract_features(self.nets[spec], faces, cfg.image_size, self.device,
                                              batch=cfg.batch_size, desc="embed"), np.float32)
            proj = None
            if spec in self.heads:
                with torch.no_grad():
                    proj = self.heads[spec](torch.from_numpy(emb)).numpy()
            got[name], self.dim = emb, emb.shape[1]
            self.table.write([{"checkpoint": name, **{k: v for k, v in row.items() if k != "index"},
                               "embedding": emb[i].tolist(),
                               **({"projection": proj[i].tolist()} if proj is not None else {})}
                              for i, row in enumerate(found.rows)])
            if images_chunk:
                self.mapped[name].append(emb[[i for i, row in enumerate(found.rows) if row["index"] in self.on_map]])
        if images_chunk:
            keep = [row for row in found.rows if row["index"] in self.on_map]
            self.map_labels.extend(row["label"] for row in keep)
            self.map_people.extend(row["identity"] for row in keep)
        self.faces += len(found.faces)
        return got


def embed(inputs: list[str], specs: list[str], cfg, out: Path) -> dict:
    """Embed every face of the inputs with every checkpoint; writes OUT (parquet), OUT's .rejects.csv, the
    figures, and OUT's .json summary; returns the summary. Inputs go through in chunks (cfg.chunk images, or one
    video): memory does not grow with the number of inputs."""
    t0 = time.time()
    images, videos, rejects = find_inputs(inputs)
    on_map = set(np.random.default_rng(cfg.seed).permutation(len(images))[:MAP_POINTS].tolist())
    out.parent.mkdir(parents=True, exist_ok=True)
    table = TableWriter(out)
    try:
        embedder = Embedder(specs, cfg, table, on_map)
        if not images and not videos:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or videos "
                             f"({', '.join(sorted(VIDEO_EXTENSIONS))}) in {' '.join(inputs)}")
        rejects += embed_images(images, cfg, embedder)
        video_rejects, figures = embed_videos(videos, cfg, embedder, out)
        rejects += video_rejects
        if not embedder.faces:
            raise ValueError(f"no face in any input ({len(rejects)} listed: first {rejects[0]['source']}: "
                             f"{rejects[0]['reason']})")
    except BaseException:
        table.discard()
        raise
    table.close()
    rejects_path = write_rejects(out.with_suffix(".rejects.csv"), rejects)
    summary = {"out": str(out), "rejects": str(rejects_path), "checkpoints": list(embedder.names.values()),
               "images": len(images), "videos": len(videos), "faces": embedder.faces, "rejected": len(rejects),
               "dim": embedder.dim, "figures": figures}
    if cfg.plots and len(set(embedder.map_labels) - {""}) >= 2:
        from eval import embed_plots

        png = out.with_name(out.stem + "-map.png")
        summary["silhouette"] = embed_plots.map_png({n: np.concatenate(v) for n, v in embedder.mapped.items()},
                                                    embedder.map_labels, embedder.map_people, png)
        summary["map_points"] = len(embedder.map_labels)
        figures.insert(0, str(png))
    summary["seconds"] = round(time.time() - t0, 1)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary


def embed_images(images: list[tuple[Path, str]], cfg, embedder: Embedder) -> list[dict]:
    """The images, aligned (in worker processes) and embedded chunk by chunk; returns their rejects."""
    import multiprocessing as mp

    rejects = []
    pool = mp.get_context("spawn").Pool(cfg.workers) if cfg.workers > 1 and len(images) > 32 else None
    try:
        with progress(total=len(images), desc="embed images", unit="img", dynamic_ncols=True,
                      disable=not images) as bar:
            for first in range(0, len(images), cfg.chunk):
                found = align_images(images[first:first + cfg.chunk], cfg, pool, bar, first)
                rejects += found.rejects
                if found.faces:
                    embedder(found, True)
    finally:
        if pool:
            pool.terminate()
    return rejects


def embed_videos(videos: list[Path], cfg, embedder: Embedder, out: Path) -> tuple[list[dict], list[str]]:
    """Each video's sampled frames, aligned and embedded, and its embedding-over-time figure; returns (rejects,
    figures)."""
    from eval import embed_plots

    rejects, figures = [], []
    for video in progress(videos, desc="videos", unit="video", dynamic_ncols=True, disable=len(videos) < 2):
        found = align_video(video, cfg)
        rejects += found.rejects
        if not found.faces:
            continue
        got = embedder(found, False)
        if cfg.plots and len(found.rows) >= 3:
            png = out.with_name(f"{out.stem}-{video.stem}-time.png")
            embed_plots.time_png(got, np.array([r["timestamp"] for r in found.rows]), video.name, png)
            figures.append(str(png))
    return rejects, figures


def write_rejects(path: Path, rejects: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["source", "frame", "timestamp", "reason"])
        w.writeheader()
        w.writerows(rejects)
    return path


def print_summary(s: dict) -> None:
    print("\n== make embed ==")
    print(f"inputs        {s['images']} images, {s['videos']} videos")
    print(f"embedded      {s['faces']} faces x {len(s['checkpoints'])} checkpoint(s), {s['dim']}-d: "
          + ", ".join(s["checkpoints"]))
    print(f"rejected      {s['rejected']} (reasons in {s['rejects']})")
    for name, scores in s.get("silhouette", {}).items():
        print(f"  silhouette  {name}: " + ", ".join(f"by {k} {v:+.3f}" for k, v in scores.items()))
    print(f"table         {s['out']}")
    for png in s["figures"]:
        print(f"figure        {png}")
    print(f"time          {s['seconds']:.0f} s")


def main(argv=None) -> int:
    from eval.settings import EmbedConfig
    from sslfer.backbone import CheckpointError
    from sslfer.config import ConfigError, load_config, options_help
    from sslfer.imagenet import WeightsMissing

    p = argparse.ArgumentParser(
        prog="python -m eval embed", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Embeddings of face images, folders of images and videos with pretrained backbones: one row "
                    "per image or sampled video frame (source, label, identity, frame, timestamp, face box, "
                    "embedding) in a parquet table, the inputs without a face listed with their reason.",
        epilog="CKPT: as for the evaluation (checkpoints/*.pt, backbone.pt, a torchvision ResNet state dict, "
               "imagenet, random).\n\noptions (key=value):\n" + options_help(EmbedConfig))
    p.add_argument("inputs", nargs="+", help="images, folders (searched recursively; <class>/*.jpg gives labels) "
                                             "and videos")
    p.add_argument("--ckpt", action="append", default=[], help="backbone (repeatable)")
    p.add_argument("--out", default="embeddings.parquet", help="the table (default embeddings.parquet)")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        p.error(f"unrecognised arguments: {' '.join(bad)}")
    try:
        cfg = load_config(EmbedConfig, None, overrides)
        if not args.ckpt:
            raise ConfigError("give at least one --ckpt (CKPT=...)")
        if Path(args.out).suffix != ".parquet":
            raise ConfigError(f"--out {args.out}: expected a .parquet file")
        summary = embed(args.inputs, args.ckpt, cfg, Path(args.out))
    except (ConfigError, CheckpointError, WeightsMissing, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
