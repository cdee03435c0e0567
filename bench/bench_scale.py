"""The batch stage's bookkeeping at VoxCeleb scale, with simulated clips (`make bench-scale`).

    python bench/bench_scale.py --what donors [--clips 5000 20000 153516] [--speakers 1251]
    python bench/bench_scale.py --what rerun [--clips 153516] [--work /tmp/scale]
    python bench/bench_scale.py --what pipeline [--clips 500 4000] [--work /tmp/scale]

donors: FaceSwap donor choice for every clip, as a rerun does it: the hash ring at each size, alone
(sticky_donors=false) and keeping remembered donors (the default), against the previous ranking of every other
clip per clip (the baseline, timed at small sizes only: it grows with the square of the corpus); per clip in
microseconds, and the share of existing clips whose donors change when 1% of clips are added. Keys and speakers follow VoxCeleb1's layout (idNNNNN speakers, ~123 clips each).

rerun: the real `build()` on a VoxCeleb-layout tree of N small files with simulated step outputs (the face,
region and FaceSwap work replaced by stand-ins of 2 frames per clip; everything else real: discovery, stamps,
hashing, step caches and their indexes, donor choice, packing, summary): the first build, a rerun with nothing
changed, and a rerun after adding 1% of clips, then the same addition with sticky_donors=false (on a copy of the
state before it: the baseline); each in its own process, wall time and peak RSS.

pipeline: the real `make shards` (decode, mediapipe, alignment, landmark region descriptor, FaceSwap, packing;
all CPUs) on N clips of 1 s (20 synthetic clips hard-linked under N paths of 250 speakers): time per clip at
each size and its ratio to the smallest (flat = no step grows faster than the corpus)."""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from preprocess.faceswap import _score, choose_donor_clips, sticky_donor_clips  # noqa: E402


def previous_choice(clips: list[tuple[str, str]], seed: int, k: int) -> dict[str, list[str]]:
    """The code before the hash ring: every clip ranks every clip of another speaker by a seeded hash."""
    speakers = dict(clips)
    out = {}
    for key, speaker in clips:
        others = [c for c, s in speakers.items() if s != speaker]
        out[key] = sorted(others, key=lambda c: _score(seed, key, c), reverse=True)[:k]
    return out


def sticky(clips: list[tuple[str, str]], seed: int, k: int, previous: dict) -> dict[str, list[str]]:
    """This code's default: a rerun's choice given the donors remembered from the last run."""
    return sticky_donor_clips(clips, previous, seed, k, corpus={key for key, _ in clips})[0]


def corpus(n: int, speakers: int, offset: int = 0) -> list[tuple[str, str]]:
    return [(f"id{1 + i % speakers:05d}-yt{i // speakers:06d}-00001-"
             f"{hashlib.sha1(str(i).encode()).hexdigest()[:8]}", f"id{1 + i % speakers:05d}")
            for i in range(offset, offset + n)]


def simulated_build(data: str, shards: str, overrides: list[str]) -> None:
    """One build with the per-clip work replaced by stand-ins (in this process: workers=0); prints a JSON line
    with the summary's work and seconds and this process's peak RSS."""
    import json
    import resource

    import numpy as np

    from preprocess import pipeline
    from preprocess.config import load_config
    from preprocess.face_geometry import N_LANDMARKS
    from preprocess.schema import encode_jpeg, join_jpegs
    from preprocess.settings import ShardsConfig

    jpeg = encode_jpeg(np.zeros((8, 8, 3), np.uint8), 90)

    def faces(clip, cfg):
        rng = np.random.default_rng(abs(hash(clip.key)) % (1 << 32))
        n = 2
        arrays = {"time": np.arange(n) * 0.24, "source_frame": np.arange(n, dtype=np.int32) * 6,
                  "n_faces": np.ones(n, np.int8),
                  "landmarks": rng.uniform(20, 100, (n, N_LANDMARKS, 2)).astype(np.float16),
                  "boxes": np.zeros((n, 2, 4), np.float16)}
        for name in ("faces", "eyes", "mouth"):
            arrays[f"{name}_blob"], arrays[f"{name}_idx"] = join_jpegs([jpeg] * n)
        return arrays, {"sampled": n, "kept": n, "drops": {}, "rejects": [], "failed": False, "seconds": 0.0}

    def swaps(key, arrays, donors, cfg):
        n = len(arrays["time"])
        blob, idx = join_jpegs([b""] * n)
        return ({"swaps_blob": blob, "swaps_idx": idx, "misfit": np.full(n, np.nan, np.float32)},
                {"donors": [""] * n, "made": 0, "composites": 0, "swaps_per_frame": 1, "rejects": []})

    pipeline.run_faces, pipeline.make_swaps = faces, swaps
    # ~430 clips per shard, as VoxCeleb1's ~600 KB clip samples in 256 MB shards (a simulated sample is ~21 KB)
    cfg = load_config(ShardsConfig, None, ["workers=0", "region_descriptor=landmarks", "shard_max_mb=9",
                                           *overrides])
    t = time.perf_counter()
    summary = pipeline.build(data, shards, cfg)
    print(json.dumps({"seconds": time.perf_counter() - t, "work": summary["work_done"], "pack": summary["pack"],
                      "steps": summary["seconds"], "clips": summary["clips"],
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def make_tree(root: Path, clips: list[tuple[str, str]]) -> None:
    for key, speaker in clips:
        path = root / speaker / key.split("-")[1] / f"{key.split('-')[-1]}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.encode())


def bench_rerun(n: int, speakers: int, work: Path) -> None:
    import json
    import shutil
    import subprocess

    shutil.rmtree(work, ignore_errors=True)
    data, shards = work / "corpus", work / "shards"
    t = time.perf_counter()
    make_tree(data, corpus(n, speakers))
    print(f"<!-- made {n:,} files in {time.perf_counter() - t:.0f} s -->", flush=True)
    print("| run | clips | wall (s) | peak RSS (GB) | work done | shards written / kept | slowest steps (s) |")
    print("|---|---:|---:|---:|---|---:|---|")
    history_free = work / "shards-history-free"
    runs = (("first build", shards, []), ("rerun, nothing changed", shards, []),
            ("rerun, 1% of clips added", shards, []),
            ("the same, sticky_donors=false (history-free donors; baseline)", history_free, ["sticky_donors=false"]))
    for label, out_dir, overrides in runs:
        if label == "rerun, 1% of clips added":
            # the state before the addition, for the baseline: hard links are safe, every write is a rename
            subprocess.run(["cp", "-al", str(shards), str(history_free)], check=True)
            make_tree(data, corpus(max(1, n // 100), speakers, offset=n))
        out = subprocess.run([sys.executable, __file__, "--child", str(data), str(out_dir), *overrides],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        slowest = sorted(((k, v) for k, v in r["steps"].items() if k != "total"), key=lambda kv: -kv[1])[:3]
        steps = ", ".join(f"{k} {v:.1f}" for k, v in slowest)
        work_done = ", ".join(f"{k} {v}" for k, v in r["work"].items())
        written = f"{r['pack']['shards_written']} / {r['pack']['shards_kept']}" if r["pack"] else "— (up to date)"
        print(f"| {label} | {r['clips']:,} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | {work_done} | {written} | "
              f"{steps} |", flush=True)


def bench_pipeline(sizes: list[int], work: Path) -> None:
    import os
    import shutil
    import subprocess

    from preprocess.synthetic import face_photos, make_clip

    shutil.rmtree(work, ignore_errors=True)
    photos = list(face_photos().values())
    sources = [make_clip(work / "sources" / f"{i}.mp4", photos[i % 2], seconds=1.0, size=(224, 224), seed=i,
                         hue_shift=(i // 2) * 9) for i in range(20)]
    print("| clips | seconds | ms per clip | ratio to the smallest |")
    print("|---:|---:|---:|---:|")
    first = None
    for n in sizes:
        data, shards = work / f"corpus-{n}", work / f"shards-{n}"
        for i in range(n):
            path = data / f"id{i % 250:05d}" / f"v{i // 250:04d}" / "00001.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(sources[i % len(sources)], path)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "preprocess", "build", str(data), str(shards),
                        "region_descriptor=landmarks"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        per = (time.perf_counter() - t) / n
        first = first or per
        print(f"| {n:,} | {per * n:.0f} | {1e3 * per:.1f} | {per / first:.2f} |", flush=True)


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        simulated_build(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", choices=["donors", "rerun", "pipeline"], default="donors", help="what to measure")
    ap.add_argument("--work", default="/tmp/bench-scale", help="rerun: where the simulated corpus and shards go")
    ap.add_argument("--clips", type=int, nargs="+", default=None,
                    help="corpus sizes (donors: 5000 20000 153516; rerun: 153516; pipeline: 500 4000)")
    ap.add_argument("--speakers", type=int, default=1251, help="speakers (VoxCeleb1: 1,251)")
    ap.add_argument("--baseline-clips", type=int, nargs="+", default=[1000, 2000],
                    help="sizes at which to time the previous quadratic choice")
    ap.add_argument("--k", type=int, default=5, help="donors per clip (swap_tries)")
    a = ap.parse_args()
    if a.what == "pipeline":
        bench_pipeline(a.clips or [500, 4000], Path(a.work))
        return
    if a.what == "rerun":
        for n in a.clips or [153516]:
            bench_rerun(n, a.speakers, Path(a.work))
        return
    a.clips = a.clips or [5000, 20000, 153516]
    print("| donor choice | clips | seconds | µs per clip | clips whose donors change when 1% are added |")
    print("|---|---:|---:|---:|---:|")
    for label, fn, sizes in (("previous: rank every other clip (baseline)", previous_choice, a.baseline_clips),
                             ("hash ring (sticky_donors=false)", choose_donor_clips, a.clips),
                             ("sticky hash ring (this code's default)", sticky, a.clips)):
        for n in sizes:
            clips = corpus(n, a.speakers)
            remembered = choose_donor_clips(clips, 0, a.k) if fn is sticky else None
            t = time.perf_counter()
            before = fn(clips, 0, a.k) if fn is not sticky else sticky(clips, 0, a.k, remembered)
            secs = time.perf_counter() - t
            grown = clips + corpus(max(1, n // 100), a.speakers, offset=n)
            after = fn(grown, 0, a.k) if fn is not sticky else sticky(grown, 0, a.k, before)
            changed = sum(before[k] != after[k] for k in before) / n
            print(f"| {label} | {n:,} | {secs:.2f} | {1e6 * secs / n:.1f} | {100 * changed:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
