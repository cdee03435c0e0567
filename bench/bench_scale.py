"""The batch stage's bookkeeping at VoxCeleb scale, with simulated clips (`make bench-scale`).

    python bench/bench_scale.py [--clips 5000 20000 153516] [--speakers 1251]

FaceSwap donor choice for every clip, as a rerun does it: the hash ring (this code) at each size, against the
previous ranking of every other clip per clip (the baseline, timed at small sizes only: it grows with the
square of the corpus); per clip in microseconds, and the share of clips whose donors change when 1% of clips
are added. Keys and speakers follow VoxCeleb1's layout (idNNNNN speakers, ~123 clips each)."""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from preprocess.faceswap import _score, choose_donor_clips  # noqa: E402


def previous_choice(clips: list[tuple[str, str]], seed: int, k: int) -> dict[str, list[str]]:
    """The code before the hash ring: every clip ranks every clip of another speaker by a seeded hash."""
    speakers = dict(clips)
    out = {}
    for key, speaker in clips:
        others = [c for c, s in speakers.items() if s != speaker]
        out[key] = sorted(others, key=lambda c: _score(seed, key, c), reverse=True)[:k]
    return out


def corpus(n: int, speakers: int, offset: int = 0) -> list[tuple[str, str]]:
    return [(f"id{1 + i % speakers:05d}-yt{i // speakers:06d}-00001-"
             f"{hashlib.sha1(str(i).encode()).hexdigest()[:8]}", f"id{1 + i % speakers:05d}")
            for i in range(offset, offset + n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, nargs="+", default=[5000, 20000, 153516], help="corpus sizes")
    ap.add_argument("--speakers", type=int, default=1251, help="speakers (VoxCeleb1: 1,251)")
    ap.add_argument("--baseline-clips", type=int, nargs="+", default=[1000, 2000],
                    help="sizes at which to time the previous quadratic choice")
    ap.add_argument("--k", type=int, default=5, help="donors per clip (swap_tries)")
    a = ap.parse_args()
    print("| donor choice | clips | seconds | µs per clip | clips whose donors change when 1% are added |")
    print("|---|---:|---:|---:|---:|")
    for label, fn, sizes in (("previous: rank every other clip (baseline)", previous_choice, a.baseline_clips),
                             ("hash ring (this code)", choose_donor_clips, a.clips)):
        for n in sizes:
            clips = corpus(n, a.speakers)
            t = time.perf_counter()
            before = fn(clips, 0, a.k)
            secs = time.perf_counter() - t
            after = fn(clips + corpus(max(1, n // 100), a.speakers, offset=n), 0, a.k)
            changed = sum(before[k] != after[k] for k in before) / n
            print(f"| {label} | {n:,} | {secs:.2f} | {1e6 * secs / n:.1f} | {100 * changed:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
