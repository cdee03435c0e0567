"""Benchmark of the batch stage (`make bench-shards`).

On a corpus (default ../shared/data/talking-faces), in one run:
  1. decode-only: ffmpeg decoding at the sampling rate, frames read and dropped (the limit), 1 process;
  2. the stage end to end excluding embeddings (faces + faceswap + pack, region_descriptor=landmarks),
     1 worker, from an empty cache: sampled frames/s per core, and its ratio to decode-only (target >= 0.4);
     then the same with all cores (workers = cpu count);
  3. region embeddings: ResNet18 on eye+mouth crops (random weights: the speed is the same), frames/s on the
     CPU, and on the GPU when there is one.
Prints a Markdown table for docs/performance.md."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from preprocess.corpus import find_clips  # noqa: E402
from preprocess.faces import read_clip  # noqa: E402
from preprocess.pipeline import build  # noqa: E402
from preprocess.settings import ShardsConfig  # noqa: E402
from sslfer.config import load_config  # noqa: E402
from sslfer.decode import DecodeReport  # noqa: E402


def decode_only(clips, cfg) -> tuple[int, float]:
    t0, frames = time.perf_counter(), 0
    for c in clips:
        for _ in read_clip(c, cfg.sample_fps, cfg.frames_fps, cfg.max_side, DecodeReport()):
            frames += 1
    return frames, time.perf_counter() - t0


def stage(data, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ShardsConfig, None, [f"workers={workers}", "region_descriptor=landmarks"])
        s = build(data, tmp, cfg)
    sec = s["seconds"]
    return {"frames": s["frames_sampled"], "seconds": sec["faces"] + sec["faceswap"] + sec["pack"]}


def embeddings(device: str, n: int = 2048, batch: int = 256) -> float:
    import numpy as np
    import torch

    from sslfer.imagenet import ResNet18Regions

    enc = ResNet18Regions("random", device)
    crops = np.random.default_rng(0).integers(0, 255, (batch // 2, 64, 64, 3), np.uint8)
    enc(crops, crops)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n // (batch // 2)):
        enc(crops, crops)
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "talking-faces"))
    p.add_argument("--max-clips", type=int, default=0, help="use only the first N clips (0 = all)")
    args = p.parse_args()
    import torch

    clips, _ = find_clips(args.data)
    if args.max_clips:
        clips = clips[:args.max_clips]
    data = args.data
    if args.max_clips:  # a CSV of the chosen clips keeps the stage on the same subset
        tmp = Path(tempfile.mkdtemp()) / "subset.csv"
        tmp.write_text("path,speaker,video\n" + "".join(f"{c.path},{c.speaker},{c.video}\n" for c in clips))
        data = str(tmp)
    cfg = ShardsConfig()
    frames, dec_s = decode_only(clips, cfg)
    one = stage(data, 1)
    cores = os.cpu_count() or 1
    many = stage(data, cores)
    cpu_emb = embeddings("cpu")
    gpu_emb = embeddings("cuda") if torch.cuda.is_available() else None
    dec_rate = frames / dec_s
    one_rate = one["frames"] / one["seconds"]
    print(f"\nmachine: {platform.node()} {platform.processor() or platform.machine()}, {cores} cores, "
          f"torch {torch.__version__}{', ' + torch.cuda.get_device_name() if gpu_emb else ''}")
    print(f"corpus: {args.data} ({len(clips)} clips, {frames} sampled frames at {cfg.sample_fps:.3f} fps)\n")
    print("| measure | frames/s | ratio |")
    print("|---|---:|---:|")
    print(f"| decode-only (ffmpeg, select + scale, 1 process) | {dec_rate:.1f} | 1.00 (baseline) |")
    print(f"| stage excl. embeddings, 1 worker (per core) | {one_rate:.1f} | {one_rate / dec_rate:.2f} |")
    print(f"| stage excl. embeddings, {cores} workers | {many['frames'] / many['seconds']:.1f} | "
          f"{many['frames'] / many['seconds'] / dec_rate:.2f} |")
    print(f"| region embeddings, CPU (ResNet18, 2 crops/frame, batch 256) | {cpu_emb:.1f} | |")
    if gpu_emb:
        print(f"| region embeddings, GPU | {gpu_emb:.1f} | |")


if __name__ == "__main__":
    main()
