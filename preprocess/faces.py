"""Step `faces`: decode a clip, find landmarks, align each face to the template, crop eyes and mouth.

Output per clip (cached): aligned face, eye and mouth crops as JPEG blobs, landmarks and region boxes in
aligned-crop pixels, timestamps, and the reason for every dropped frame."""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from preprocess.cache import StepCache
from preprocess.corpus import Clip
from preprocess.settings import ShardsConfig
from sslfer.decode import DecodeError, DecodeReport, Frame, read_frame_folder, read_video
from sslfer.face_geometry import N_LANDMARKS, align_face
from sslfer.shards.schema import decode_jpeg, encode_jpeg, jpeg_at, join_jpegs


def reject(clip: Clip, step: str, reason: str, frame: int = -1, timestamp: float = -1.0) -> dict:
    return {"source": clip.rel, "key": clip.key, "frame": frame, "timestamp": timestamp, "step": step,
            "reason": reason}


def run_faces(clip: Clip, cfg: ShardsConfig) -> tuple[dict, dict]:
    """(arrays, info) for the cache. A clip that cannot be decoded, or has no usable face, yields zero frames
    and its reason in info['rejects']."""
    from sslfer.landmarks import FaceTracker

    t0 = time.perf_counter()
    rejects: list[dict] = []
    kept = {"time": [], "source_frame": [], "n_faces": [], "landmarks": [], "boxes": []}
    jpegs = {"faces": [], "eyes": [], "mouth": []}
    report = DecodeReport()
    sampled = 0
    drops: dict[str, int] = {}
    try:
        with FaceTracker(cfg.max_faces, cfg.min_face_px, cfg.min_detection_confidence) as tracker:
            for i, frame in enumerate(read_clip(clip, cfg.sample_fps, cfg.frames_fps, cfg.max_side, report)):
                sampled += 1
                if frame.rgb is None:
                    reason, det = "unreadable frame image", None
                else:
                    det = tracker.detect(frame.rgb)
                    reason = det.reason
                if reason:
                    drops[reason.split(" (")[0]] = drops.get(reason.split(" (")[0], 0) + 1
                    rejects.append(reject(clip, "faces", reason, i, frame.timestamp))
                    continue
                face, lm, boxes, eyes, mouth = align_face(frame.rgb, det.landmarks, cfg.face_size,
                                                          cfg.region_size)
                kept["time"].append(frame.timestamp)
                kept["source_frame"].append(frame.source_frame)
                kept["n_faces"].append(det.n_faces)
                kept["landmarks"].append(lm)
                kept["boxes"].append(boxes)
                for name, img in (("faces", face), ("eyes", eyes), ("mouth", mouth)):
                    jpegs[name].append(encode_jpeg(img, cfg.jpeg_quality))
    except DecodeError as e:
        rejects.append(reject(clip, "faces", str(e)))
    if report.warning:
        rejects.append(reject(clip, "faces", report.warning))
    n = len(kept["time"])
    if n == 0 and sampled > 0:
        why = ", ".join(f"{r}: {k}" for r, k in sorted(drops.items(), key=lambda x: -x[1]))
        rejects.append(reject(clip, "faces", f"no usable face in any of the {sampled} sampled frames ({why})"))
    arrays = {
        "time": np.array(kept["time"], np.float64),
        "source_frame": np.array(kept["source_frame"], np.int32),
        "n_faces": np.array(kept["n_faces"], np.int8),
        "landmarks": np.array(kept["landmarks"], np.float16).reshape(n, N_LANDMARKS, 2),
        "boxes": np.array(kept["boxes"], np.float16).reshape(n, 2, 4),
    }
    for name, items in jpegs.items():
        arrays[f"{name}_blob"], arrays[f"{name}_idx"] = join_jpegs(items)
    info = {"sampled": sampled, "kept": n, "drops": drops, "rejects": rejects,
            "failed": n == 0, "seconds": time.perf_counter() - t0}
    return arrays, info


def read_clip(clip: Clip, sample_fps: float, frames_fps: float, max_side: int,
              report: DecodeReport) -> Iterator[Frame]:
    if clip.kind == "frames":
        return read_frame_folder(clip.path, sample_fps, frames_fps, max_side)
    return read_video(clip.path, sample_fps, max_side, report)


def output_images(arrays: dict, name: str) -> list[np.ndarray]:
    """The decoded images of blob `name` (faces, eyes, mouth) of a faces output."""
    blob, idx = arrays[f"{name}_blob"], arrays[f"{name}_idx"]
    return [decode_jpeg(jpeg_at(blob, idx, i)) for i in range(len(idx) - 1)]


def failed_info(clip: Clip, reason: str) -> dict:
    """The faces info of a clip whose job failed outright (not cached: the next run tries it again)."""
    return {"sampled": 0, "kept": 0, "drops": {}, "failed": True, "rejects": [reject(clip, "faces", reason)]}


def faces_job(args):
    clip, cfg, cache_root, h = args
    arrays, info = run_faces(clip, cfg)
    StepCache(cache_root, "faces").save(clip.key, h, arrays, info)
    return info
