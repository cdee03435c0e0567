"""Peak memory of `make eval-affectnet` on a simulated AffectNet of N training images (`make bench-eval-memory`).

The set is AffectNet's layout and CSV format (Manually_Annotated_Images/<dir>/<file>.jpg, training.csv and
validation.csv with face boxes, 68 landmarks, expression, valence, arousal) made of one face photo hard-linked N
times (so it costs no disk), 8 classes. The evaluation runs as a subprocess (ResNet-18 at 32 px, linear protocol,
1 epoch: the memory does not depend on the model's speed) and its peak resident memory is read from the kernel
(getrusage of the children). Target: < 4 GB at 300k images.

    python bench/bench_eval_memory.py --images 20000 300000 [--repo <another checkout>]

--repo runs another checkout's evaluation on the same sets (the baseline: the code before bounded memory)."""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_set(root: Path, n_train: int, n_test: int = 4000) -> None:
    from preprocess.synthetic import face_photos, render_frames
    from sslfer.stills import _landmarks

    face = next(render_frames(face_photos()["astronaut"], 1, (160, 160), 0))
    lm = _landmarks(face)
    from sslfer.face_geometry import LEFT_EYE, MOUTH_CORNERS, NOSE_TIP, RIGHT_EYE

    p68 = np.zeros((68, 2))
    p68[36:42], p68[42:48] = lm[RIGHT_EYE].mean(0), lm[LEFT_EYE].mean(0)
    p68[30], p68[48], p68[54] = lm[NOSE_TIP], lm[MOUTH_CORNERS[0]], lm[MOUTH_CORNERS[1]]
    landmarks = ";".join(f"{v:.2f}" for v in p68.ravel())
    images = root / "Manually_Annotated_Images"
    images.mkdir(parents=True)
    source = root / "face.jpg"
    cv2.imwrite(str(source), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
              "expression", "valence", "arousal"]
    rng = np.random.default_rng(0)
    for name, n in (("training", n_train), ("validation", n_test)):
        with open(root / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i in range(n):
                rel = f"{i // 1000}/{name}_{i}.jpg"
                path = images / rel
                if i % 1000 == 0:
                    path.parent.mkdir(exist_ok=True)
                if i % 60000 == 0:  # a file system allows ~65,000 links to one file
                    link_source = source.with_name(f"face-{name}-{i // 60000}.jpg")
                    shutil.copyfile(source, link_source)
                os.link(link_source, path)
                w.writerow([rel, 10, 10, 140, 140, landmarks, int(rng.integers(8)),
                            round(float(rng.uniform(-1, 1)), 3), round(float(rng.uniform(-1, 1)), 3)])


def peak_rss_of(cmd: list[str], cwd: Path) -> tuple[float, float, int]:
    """(peak RSS in GB of the command or its largest child, seconds, return code)."""
    script = ("import resource, subprocess, sys, time; t = time.time(); "
              f"rc = subprocess.run({cmd!r}, cwd={str(cwd)!r}, stdout=subprocess.DEVNULL).returncode; "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.time() - t, rc)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]) / 2 ** 20, float(out[1]), int(out[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[20000, 300000], help="training images per run")
    ap.add_argument("--repo", default="", help="another checkout to measure on the same sets (the baseline)")
    ap.add_argument("--work", default="", help="where to make the sets (default: a temporary folder)")
    ap.add_argument("--baseline-max", type=int, default=60000,
                    help="run the baseline only up to this many images (the old code held everything in RAM)")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-eval-memory-"))
    repos = [("this checkout", ROOT)] + ([("baseline", Path(a.repo).resolve())] if a.repo else [])
    print("| code | training images | peak RSS (GB) | seconds | exit |")
    print("|---|---:|---:|---:|---:|")
    try:
        for n in a.images:
            data = work / f"affectnet-{n}"
            if not (data / "validation.csv").is_file():
                shutil.rmtree(data, ignore_errors=True)
                t = time.time()
                make_set(data, n)
                print(f"<!-- made {n} images in {time.time() - t:.0f} s -->", flush=True)
            for label, repo in repos:
                if label == "baseline" and n > a.baseline_max:
                    continue
                cache = work / f"cache-{label.replace(' ', '-')}-{n}"
                shutil.rmtree(cache, ignore_errors=True)
                cmd = [sys.executable, "-m", "eval", "affectnet", str(data), "--ckpt", "random",
                       "--report", str(work / f"report-{n}"), "arch=resnet18", "image_size=32", "epochs=1",
                       "protocol=linear", "task=expr", "workers=2", "gradcam_per_class=0", f"cache_dir={cache}"]
                gb, secs, rc = peak_rss_of(cmd, repo)
                print(f"| {label} | {n:,} | {gb:.2f} | {secs:.0f} | {rc} |", flush=True)
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
