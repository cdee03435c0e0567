"""Benchmark of the evaluation (`make bench-eval`): backbone feature extraction images/s (the cost the linear
protocol pays once per checkpoint) and the linear probe's time on cached features (what each further run of
the head costs), against fine-tuning one epoch on the same images (what the features cache saves).
Inputs: random aligned-face-sized images (the cost does not depend on content)."""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from eval.probe import extract_features, fine_tune, linear_probe  # noqa: E402
from eval.settings import EvalConfig  # noqa: E402
from sslfer.backbone import load_backbone  # noqa: E402
from sslfer.config import load_config  # noqa: E402
from sslfer.device import resolve_device  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--images", type=int, default=1024, help="images for feature extraction")
    p.add_argument("--train", type=int, default=20000, help="training-set size for the linear probe")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    device = resolve_device(a.device)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 255, (a.images, 128, 128, 3), np.uint8)
    _, net, width = load_backbone("random", a.arch)
    extract_features(net, faces[:64], a.size, device)  # warm-up
    t0 = time.perf_counter()
    extract_features(net, faces, a.size, device)
    extract_rate = a.images / (time.perf_counter() - t0)
    cfg = load_config(EvalConfig, None, [f"epochs={a.epochs}", f"image_size={a.size}", f"device={device}"])
    feats = {k: rng.standard_normal((n, width)).astype(np.float32)
             for k, n in (("train", a.train), ("val", a.train // 10), ("test", a.train // 10))}
    labels = {k: rng.integers(0, 7, len(v)) for k, v in feats.items()}
    t0 = time.perf_counter()
    linear_probe("expr", feats, labels, 7, cfg, device)
    probe_s = time.perf_counter() - t0
    n_ft = 256
    ft_cfg = load_config(EvalConfig, None, ["epochs=1", f"image_size={a.size}", f"device={device}"])
    small = {k: faces[:n_ft] for k in ("train", "val", "test")}
    t0 = time.perf_counter()
    fine_tune("expr", net, width, small, {k: rng.integers(0, 7, n_ft) for k in small}, 7, ft_cfg, device)
    ft_rate = n_ft / (time.perf_counter() - t0)  # one epoch of training plus val and test passes
    print(f"\nmachine: {platform.node()}, {torch.get_num_threads()} threads, {device}, torch {torch.__version__}")
    print(f"\n| measure ({a.arch}, {a.size} px) | value |")
    print("|---|---:|")
    print(f"| feature extraction | {extract_rate:.1f} images/s |")
    print(f"| linear probe, {a.epochs} epochs on {a.train} cached features (+10% val, 10% test) | {probe_s:.1f} s |")
    print(f"| fine-tuning, 1 epoch + val + test on {n_ft} images | {ft_rate:.1f} images/s |")
    print(f"| linear probe vs one fine-tuning epoch of the same {a.train} images | "
          f"{a.train / ft_rate / probe_s:.1f}x faster for {a.epochs} epochs |")


if __name__ == "__main__":
    main()
