"""The batch stage's bookkeeping at VoxCeleb scale, with simulated clips (`make bench-scale`).

    python bench/bench_scale.py --what donors [--clips 5000 20000 153516] [--speakers 1251]
    python bench/bench_scale.py --what rerun [--clips 153516] [--work /tmp/scale]
    python bench/bench_scale.py --what pipeline [--clips 500 4000] [--work /tmp/scale]
    python bench/bench_scale.py --what trainer [--clips 153516 1128246] [--ranks 8] [--before DIR]
    python bench/bench_scale.py --what voxceleb2 [--clips 153516 1128246] [--parts 64] [--work /tmp/scale]

donors: FaceSwap donor choice for every clip, as a rerun does it: the hash ring at each size, alone
(sticky_donors=false) and keeping remembered donors (the default), against the previous ranking of every other
clip per clip (the baseline, timed at small sizes only: it grows with the square of the corpus); per clip in
microseconds, and the share of existing clips whose donors change when 1% of clips are added. Keys and speakers
follow VoxCeleb1's layout (idNNNNN speakers, ~123 clips each).

rerun: the real `build()` on a VoxCeleb-layout tree of N small files with simulated step outputs (the face,
region and FaceSwap work replaced by stand-ins of 2 frames per clip with 4-byte JPEGs; everything else real:
discovery, stamps, hashing, step caches and their indexes, donor choice, packing, summary): the first build, a
rerun with nothing changed, and a rerun after adding 1% of clips, then the same addition with
sticky_donors=false (on a copy of the state before it: the baseline); each in its own process, wall time and
peak RSS. With --parts N, then the SLURM route: parts part=i/N built as separate processes (--jobs at once)
sharing the whole build's step cache (as the parts of one SHARDS folder do: faces and region outputs are found
there, FaceSwap with donors from the part's own clips and packing are done anew), and `make shards-merge`.

trainer: the trainer's start-up at each size (default VoxCeleb1's 153,516 and VoxCeleb2's 1,128,246 clips of
6,112 speakers) on simulated shards: the whole manifest (a row per frame, ~33 frames per clip, every column as
`make shards` writes it) and ~450 clip samples per tar with the real 14 member names and empty contents (the
index reads only headers). In processes of their own, the real code: the shard index built from the tars, then
from its cache, the epoch plan (µs per clip), and 8 gloo ranks starting as a node's ranks do (rank 0 builds the
index from the cache, the others receive it; each rank plans the epoch): wall time and peak RSS per rank. With
--before DIR (a checkout of an earlier commit) the same single-rank start-up of that code, as the baseline.

voxceleb2: issue 20's table in one run: at VoxCeleb1's and VoxCeleb2's sizes (1,251 and 6,112 speakers, 7 clips
to a video) the rerun runs without the baseline, the 64-part route and its merge, then the trainer's start-up;
then the two sizes side by side (wall and peak-RSS ratios).

pipeline: the real `make shards` (decode, mediapipe, alignment, landmark region descriptor, FaceSwap, packing;
all CPUs) on N clips of 1 s (20 synthetic clips hard-linked under N paths of 250 speakers): time per clip at
each size and its ratio to the smallest (flat = no step grows faster than the corpus)."""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("BENCH_SCALE_CODE", str(ROOT)))  # --before: that checkout's code

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


CLIPS_PER_VIDEO = 7  # VoxCeleb1: 153,516 clips of 22,496 videos; VoxCeleb2: 1,128,246 of 150,480


def corpus(n: int, speakers: int, offset: int = 0) -> list[tuple[str, str]]:
    """(id-ytid-n-hash, speaker) of clips i = offset.., speakers in turn, 7 clips to a video as in VoxCeleb."""
    return [(f"id{1 + i % speakers:05d}-yt{i // speakers // CLIPS_PER_VIDEO:06d}-"
             f"{1 + i // speakers % CLIPS_PER_VIDEO:05d}-{hashlib.sha1(str(i).encode()).hexdigest()[:8]}",
             f"id{1 + i % speakers:05d}") for i in range(offset, offset + n)]


def simulated_build(data: str, shards: str, overrides: list[str]) -> None:
    """One build with the per-clip work replaced by stand-ins (in this process: workers=0); prints a JSON line
    with the summary's work and seconds and this process's peak RSS."""
    import json
    import resource

    import numpy as np

    from preprocess import faces as faces_step, faceswap, pipeline
    from preprocess.settings import ShardsConfig
    from sslfer.config import load_config
    from sslfer.face_geometry import N_LANDMARKS
    from sslfer.shards.schema import join_jpegs

    # a 4-byte stand-in JPEG (start and end markers; nothing here decodes it): a simulated faces output stays
    # within two 4 KB blocks (~6.5 KB), so the 1.13 M outputs (~9 GB) fit this VM's page cache while FaceSwap
    # reads 5 random donors' outputs per clip (an 8x8 JPEG made them ~11 KB, 3 blocks: 14 GB, I/O-bound)
    jpeg = b"\xff\xd8\xff\xd9"

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

    faces_step.run_faces, faceswap.make_swaps = faces, swaps
    # ~430 clips per shard, as VoxCeleb1's ~600 KB clip samples in 256 MB shards (a simulated sample is ~18 KB)
    cfg = load_config(ShardsConfig, None, ["workers=0", "region_descriptor=landmarks", "shard_max_mb=7.7",
                                           *overrides])
    t = time.perf_counter()
    summary = pipeline.build(data, shards, cfg)
    print(json.dumps({"seconds": time.perf_counter() - t, "work": summary["work_done"], "pack": summary["pack"],
                      "steps": summary["seconds"], "clips": summary["clips"],
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


MEMBERS = ("meta.json", "time.npy", "frame.npy", "landmarks.npy", "boxes.npy", "region.npy", "faces.jpgs",
           "faces.idx.npy", "swaps.jpgs", "swaps.idx.npy", "eyes.jpgs", "eyes.idx.npy", "mouth.jpgs", "mouth.idx.npy")


def tar_headers(names: list[str]) -> bytes:
    """ustar headers of empty regular files, made in one numpy pass (tarfile costs ~10 µs per member: 15.8 M
    members at VoxCeleb2 size), then the end-of-archive marker."""
    import tarfile

    import numpy as np

    template = np.frombuffer(tarfile.TarInfo("x").tobuf(tarfile.USTAR_FORMAT), np.uint8).copy()
    template[148:156] = ord(" ")
    headers = np.tile(template, (len(names), 1))
    headers[:, :100] = np.frombuffer(np.array(names, "S100").tobytes(), np.uint8).reshape(-1, 100)
    checksum = headers.sum(1, dtype=np.int64)
    octal = np.array([b"%06o\0" % c for c in checksum], "S7")
    headers[:, 148:155] = np.frombuffer(octal.tobytes(), np.uint8).reshape(-1, 7)
    return headers.tobytes() + bytes(1024)


def simulated_trainer_shards(root: Path, n: int, speakers: int, per_shard: int = 450) -> dict:
    """A shard folder of n clips as the trainer sees it (see --what trainer); returns its sizes."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import numpy as np

    from sslfer.shards.schema import MANIFEST, MANIFEST_COLUMNS, SCHEMA_VERSION, SHARD_NAME, arrow_schema

    root.mkdir(parents=True, exist_ok=True)
    schema = arrow_schema(MANIFEST_COLUMNS).with_metadata(
        {"schema_version": str(SCHEMA_VERSION), "region_descriptor": "resnet18", "region_dim": "1024"})
    rows = 0
    with pq.ParquetWriter(root / MANIFEST, schema) as writer:
        for lo in range(0, n, 20_000):
            clips = corpus(min(20_000, n - lo), speakers, offset=lo)
            keys = [k for k, _ in clips]
            ids = np.arange(lo, lo + len(clips))
            shard = [SHARD_NAME.format(i // per_shard) for i in ids]
            with open(root / "tar-list.txt", "a") as f:  # the tars are written below, shard by shard
                f.writelines(f"{s} {k}\n" for s, k in zip(shard, keys))
            frames = 17 + (ids * 7) % 33  # 17..49, mean 33: VoxCeleb2's ~7.8 s at 25/6 fps
            per_clip = pa.table({"key": keys, "speaker": [s for _, s in clips],
                                 "video": [k.split("-")[1] for k in keys], "clip": ["00001"] * len(keys),
                                 "source": [f"{s}/{k.split('-')[1]}/{k.split('-')[2]}.mp4" for k, s in clips],
                                 "shard": shard, "sample_hash": [k[-8:] * 2 for k in keys],
                                 "donor": [k for k, _ in corpus(len(clips), speakers, offset=lo + 1)]})
            row_clip = np.repeat(np.arange(len(clips)), frames)
            frame = np.arange(len(row_clip)) - np.repeat(np.cumsum(frames) - frames, frames)
            t = per_clip.take(row_clip)
            frame_s = pc.cast(pa.array(frame), pa.string())
            donor = pc.binary_join_element_wise(t.column("donor"), frame_s, "/")
            has_swap = frame % 10 != 9
            cols = {"frame": pa.array(frame), "source_frame": pa.array(frame * 6),
                    "timestamp": pa.array(frame * 0.24), "n_faces": pa.array(np.ones(len(frame), np.int64)),
                    "has_region": pa.array(np.ones(len(frame), bool)), "has_swap": pa.array(has_swap),
                    "swap_donor": pc.if_else(pa.array(has_swap), pc.binary_join_element_wise(donor, donor, ";"),
                                             "")}
            writer.write_table(pa.table([cols[c] if c in cols else t.column(c) for c in MANIFEST_COLUMNS],
                                        schema=schema))
            rows += len(frame)
    shards: dict[str, list[str]] = {}
    for line in (root / "tar-list.txt").read_text().splitlines():
        name, key = line.split(" ")
        shards.setdefault(name, []).append(key)
    (root / "tar-list.txt").unlink()
    for name, keys in shards.items():
        (root / name).write_bytes(tar_headers([f"{k}.{m}" for k in keys for m in MEMBERS]))
    return {"clips": n, "frames": rows, "shards": len(shards),
            "manifest_mb": (root / MANIFEST).stat().st_size / 2 ** 20}


def trainer_startup(shards: str, cached: bool, ranks: bool) -> None:
    """One start-up as the trainer does it (this process is one rank; with `ranks`, of a gloo group started by
    torchrun); prints a JSON line: seconds to the index, to the epoch plan, peak RSS."""
    import inspect
    import json
    import resource
    import shutil

    import numpy as np

    from sslfer.shards.index import ShardIndex
    from train import distributed as dist
    from train.data import BatchStream
    from train.plan import steps_per_epoch
    from train.settings import TrainConfig

    rank = 0
    if ranks:
        rank, world, _ = dist.setup("cpu")
    if not cached and rank == 0:
        shutil.rmtree(Path(shards) / ".cache", ignore_errors=True)
    dist.gather_objects(None)  # no rank starts before the cache is gone
    t = time.perf_counter()
    if "manifest" in inspect.signature(ShardIndex.build).parameters:  # the code before this benchmark (--before)
        from sslfer.shards.schema import read_manifest

        manifest = read_manifest(shards)
        any(manifest.column("has_swap").to_pylist())
        index = dist.broadcast_object(ShardIndex.build(Path(shards), manifest) if rank == 0 else None)
    else:
        from train.pretrain import shard_index

        index = shard_index(Path(shards), rank, dist.world())
    index.fingerprint()
    t_index = time.perf_counter() - t
    cfg = TrainConfig()
    n = len(index)
    t = time.perf_counter()
    stream = BatchStream(index, cfg, rank, dist.world(), 0, 1, steps_per_epoch(n, cfg.batch_size, 1))
    plan = stream.plan(0)
    t_plan = time.perf_counter() - t
    out = {"rank": rank, "clips": n, "index_s": t_index, "plan_s": t_plan, "plan_us_per_clip": 1e6 * t_plan / n,
           "planned": int(np.size(plan)), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
    if ranks:
        got = [None] * dist.world()
        import torch.distributed as tdist

        tdist.all_gather_object(got, out)
        if rank == 0:  # before the teardown: gloo's sometimes aborts a rank as the group closes (~1 in 3 here)
            print(json.dumps(got), flush=True)
        dist.cleanup()
        return
    print(json.dumps(out))


def bench_trainer(sizes: list[int], speakers: int, work: Path, before: str | None, ranks: int,
                  keep: bool = False, make_only: bool = False, runs: str = "uncached,cached,ranks",
                  speakers_of=None) -> dict:
    """Prints each start-up's row; returns {(clips, run): (wall s, peak RSS GB)}."""
    import json
    import shutil
    import subprocess

    def child(shards: Path, *flags: str, code: Path = ROOT, launcher: list[str] = ()) -> dict | list:
        env = {**os.environ, "BENCH_SCALE_CODE": str(code), "OMP_NUM_THREADS": "1"}
        out = subprocess.run([*(launcher or [sys.executable]), str(Path(__file__)), "--child-trainer", str(shards),
                              *flags], capture_output=True, text=True, env=env, cwd=code)
        if out.returncode != 0 and out.stdout.strip().startswith("[{"):  # the ranks ran; one died closing the group
            return [{**r, "teardown_failed": True} for r in json.loads(out.stdout.strip().splitlines()[-1])]
        if out.returncode != 0:  # the first line that names an error (torchrun's last lines are a banner)
            lines = [line.strip() for line in out.stderr.splitlines() if line.strip()]
            return {"error": next((line for line in lines if "Error" in line), lines[-1] if lines else
                                  f"exit {out.returncode}")}
        return json.loads(out.stdout.strip().splitlines()[-1])

    def free_port() -> int:  # a fixed port can still be held (TIME_WAIT) from the launch just before
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    print("| clips | run | wall (s) | peak RSS (GB) | notes |")
    print("|---:|---|---:|---:|---|")
    got = {}
    for n in sizes:
        speakers = speakers_of(n) if speakers_of else speakers
        shards = work / f"shards-{n}-{speakers}"
        made = shards / "simulated.json"  # kept with --keep: the next run measures the same files again
        t = time.perf_counter()
        if made.is_file():
            sizes_ = json.loads(made.read_text())
        else:
            shutil.rmtree(shards, ignore_errors=True)
            sizes_ = simulated_trainer_shards(shards, n, speakers)
            made.write_text(json.dumps(sizes_))
        if make_only:
            continue
        print(f"| {n:,} | simulated shards made (not the trainer) | {time.perf_counter() - t:.0f} | — | "
              f"{sizes_['frames']:,} manifest rows ({sizes_['manifest_mb']:.0f} MB), {sizes_['shards']:,} tars |",
              flush=True)
        chosen = [("index from the tars (no cache), 1 rank", ["--uncached"], ROOT, "uncached"),
                  ("index from its cache + epoch plan, 1 rank", [], ROOT, "cached"),
                  ("the same, code before this change (baseline)", [], before and Path(before), "cached")]
        for label, flags, code, name in chosen:
            if not code or name not in runs.split(","):
                continue
            r = child(shards, *flags, code=code)
            if "error" in r:
                print(f"| {n:,} | {label} | — | — | failed: {r['error']} |", flush=True)
                continue
            print(f"| {n:,} | {label} | {r['index_s']:.1f} | {r['peak_rss_gb']:.2f} | epoch plan "
                  f"{r['plan_s']:.1f} s = {r['plan_us_per_clip']:.2f} µs per clip |", flush=True)
            got[n, name] = (r["index_s"], r["peak_rss_gb"])
            if name == "cached" and code == ROOT:
                got[n, "plan"] = (r["plan_s"], r["plan_us_per_clip"])
        for label, flags in (("no cache: each rank indexes 1/N of the tars", ["--uncached"]),
                             ("from the cache", [])) if ranks > 1 and "ranks" in runs.split(",") else ():
            per_rank = child(shards, "--ranks", *flags, launcher=[sys.executable, "-m", "torch.distributed.run",
                                                                  f"--nproc_per_node={ranks}",
                                                                  f"--master_port={free_port()}"])
            if isinstance(per_rank, dict):
                print(f"| {n:,} | {ranks} ranks, {label} | — | — | failed: {per_rank['error']} |", flush=True)
                continue
            rss = [g["peak_rss_gb"] for g in per_rank]
            print(f"| {n:,} | {ranks} ranks, {label} (torchrun, gloo) | "
                  f"{max(g['index_s'] + g['plan_s'] for g in per_rank):.1f} | {max(rss):.2f} | rank 0 "
                  f"{rss[0]:.2f} GB, other ranks {min(rss[1:]):.2f}-{max(rss[1:]):.2f} GB, node "
                  f"{sum(rss):.1f} GB" + ("; a rank aborted in gloo's teardown, after the start-up" if
                                             per_rank[0].get("teardown_failed") else "") + " |", flush=True)
            got[n, "ranks" + ("-uncached" if flags else "")] = (max(g["index_s"] + g["plan_s"] for g in per_rank),
                                                                max(rss))
        if not keep:
            shutil.rmtree(shards, ignore_errors=True)
    return got


def make_tree(root: Path, clips: list[tuple[str, str]]) -> None:
    for key, speaker in clips:
        path = root / speaker / key.split("-")[1] / f"{key.split('-')[2]}.mp4"  # <id>/<ytid>/<n>.mp4
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.encode())


def _child(*args: str) -> dict:
    """Run this script's child mode in a process of its own; its last stdout line is JSON."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def merge_child(shards: str) -> None:
    """`make shards-merge` in this process; prints a JSON line with its seconds and peak RSS."""
    import json
    import resource

    from preprocess.pack import merge_parts

    t = time.perf_counter()
    merged = merge_parts(Path(shards))
    print(json.dumps({"seconds": time.perf_counter() - t, "merged": merged,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def build_parts(data: Path, shards: Path, cache: Path, parts: int, jobs: int) -> list[dict]:
    """The SLURM route's array: parts 0..n-1 (part=i/n), each a process of its own, `jobs` at once."""
    import json
    import subprocess

    pending, running, done = list(range(parts)), [], []
    while pending or running:
        while pending and len(running) < jobs:
            i = pending.pop(0)
            running.append(subprocess.Popen([sys.executable, __file__, "--child", str(data), str(shards),
                                             f"part={i}/{parts}", f"cache_dir={cache}"],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        proc = running.pop(0)
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(stderr[-3000:])
        done.append(json.loads(stdout.strip().splitlines()[-1]))
    return done


RERUN_HEADER = ("| run | clips | wall (s) | peak RSS (GB) | work done | shards written / kept | slowest steps (s) |\n"
                "|---|---:|---:|---:|---|---:|---|")


def bench_rerun(n: int, speakers: int, work: Path, parts: int = 0, jobs: int = 2, baseline: bool = True) -> dict:
    """Each run's row (printed as it ends); returns {run: (wall s, peak RSS GB)}."""
    import shutil
    import subprocess

    shutil.rmtree(work, ignore_errors=True)
    data, shards = work / "corpus", work / "shards"
    t = time.perf_counter()
    make_tree(data, corpus(n, speakers))
    print(f"<!-- {n:,} clips of {speakers:,} speakers: files made in {time.perf_counter() - t:.0f} s -->", flush=True)
    print(RERUN_HEADER, flush=True)
    history_free = work / "shards-history-free"
    runs = [("first build", shards, []), ("rerun, nothing changed", shards, []),
            ("rerun, 1% of clips added", shards, [])]
    if baseline:
        runs.append(("the same, sticky_donors=false (history-free donors; baseline)", history_free,
                     ["sticky_donors=false"]))
    got = {}
    for label, out_dir, overrides in runs:
        if label == "rerun, 1% of clips added":
            if baseline:  # the state before the addition: hard links are safe, every write is a rename
                subprocess.run(["cp", "-al", str(shards), str(history_free)], check=True)
            make_tree(data, corpus(max(1, n // 100), speakers, offset=n))
        r = _child("--child", str(data), str(out_dir), *overrides)
        slowest = sorted(((k, v) for k, v in r["steps"].items() if k != "total"), key=lambda kv: -kv[1])[:3]
        steps = ", ".join(f"{k} {v:.1f}" for k, v in slowest)
        work_done = ", ".join(f"{k} {v}" for k, v in r["work"].items())
        written = f"{r['pack']['shards_written']} / {r['pack']['shards_kept']}" if r["pack"] else "— (up to date)"
        print(f"| {label} | {r['clips']:,} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | {work_done} | {written} | "
              f"{steps} |", flush=True)
        got[label] = (r["seconds"], r["peak_rss_gb"])
    shutil.rmtree(history_free, ignore_errors=True)
    if parts:
        # the job array's parts share the whole build's step cache (SHARDS/.cache, as parts of one SHARDS do):
        # faces and region outputs are found there; FaceSwap (donors from the part's own clips) and packing
        # are done anew
        routed = work / "shards-parts"
        t = time.perf_counter()
        part_runs = build_parts(data, routed, shards / ".cache", parts, jobs)
        wall = time.perf_counter() - t
        slowest = max(part_runs, key=lambda r: r["seconds"])
        rss = max(r["peak_rss_gb"] for r in part_runs)
        print(f"| {parts} parts (part=i/{parts}), {jobs} at a time | {sum(r['clips'] for r in part_runs):,} | "
              f"{wall:.1f} | {rss:.2f} | per part: median {sorted(r['seconds'] for r in part_runs)[parts // 2]:.1f} s, "
              f"slowest {slowest['seconds']:.1f} s; each part discovers the whole corpus | "
              f"{sum(r['pack']['shards_written'] for r in part_runs)} / 0 | slowest part: "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(((k, v) for k, v in slowest["steps"].items()
                                                              if k != "total"), key=lambda kv: -kv[1])[:3])
              + " |", flush=True)
        got[f"{parts} parts, slowest"] = (slowest["seconds"], rss)
        r = _child("--child-merge", str(routed))
        print(f"| make shards-merge ({parts} parts) | {n + max(1, n // 100):,} | {r['seconds']:.1f} | "
              f"{r['peak_rss_gb']:.2f} | {r['merged']['frames']:,} manifest rows | {r['merged']['shards']} shards "
              f"named | — |", flush=True)
        got[f"merge of {parts} parts"] = (r["seconds"], r["peak_rss_gb"])
        shutil.rmtree(routed, ignore_errors=True)
    return got


def speakers_of(n: int) -> int:
    """VoxCeleb1's 1,251 speakers up to its 153,516 clips, VoxCeleb2's 6,112 beyond."""
    return 1251 if n <= 153516 else 6112


def bench_voxceleb2(sizes: list[int], work: Path, parts: int, jobs: int, ranks: int) -> None:
    """Issue 20's table in one run: at each size the batch stage's runs (first build, no-op rerun, +1% clips,
    the SLURM route of `parts` parts and its merge) and the trainer's start-up, then the sizes side by side."""
    got = {}
    for n in sizes:
        print(f"\n### {n:,} clips: the batch stage\n", flush=True)
        got[n] = bench_rerun(n, speakers_of(n), work / "rerun", parts, jobs, baseline=False)
    import shutil

    shutil.rmtree(work / "rerun", ignore_errors=True)
    print("\n### The trainer's start-up\n", flush=True)
    trainer = bench_trainer(sizes, 0, work / "trainer", None, ranks, speakers_of=speakers_of)
    rows = [(label, {n: got[n].get(label) for n in sizes}) for label in got[sizes[0]]]
    rows += [(label, {n: trainer.get((n, key)) for n in sizes}) for label, key in (
        ("trainer: index from the tars (no cache), 1 rank", "uncached"),
        ("trainer: start-up from the cached index, 1 rank", "cached"),
        (f"trainer: {ranks} ranks, from the cache (max over ranks)", "ranks"),
        (f"trainer: {ranks} ranks, no cache (max over ranks)", "ranks-uncached"))]
    small, large = sizes[0], sizes[-1]
    print(f"\n### {small:,} vs {large:,} clips\n")
    print(f"| run | {small:,}: wall (s) | peak RSS (GB) | {large:,}: wall (s) | peak RSS (GB) | wall ratio | "
          "RSS ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, by_size in rows:
        a, b = by_size.get(small), by_size.get(large)
        if not a or not b:
            continue
        print(f"| {label} | {a[0]:.1f} | {a[1]:.2f} | {b[0]:.1f} | {b[1]:.2f} | {b[0] / a[0]:.1f}× | "
              f"{b[1] / a[1]:.2f}× |")
    plans = [trainer.get((n, "plan")) for n in sizes]
    if all(plans):
        print(f"| trainer: epoch plan, µs per clip | {plans[0][1]:.2f} | — | {plans[-1][1]:.2f} | — | "
              f"{plans[-1][1] / plans[0][1]:.2f}× per clip | — |")


def bench_pipeline(sizes: list[int], work: Path) -> None:
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
    if len(sys.argv) >= 3 and sys.argv[1] == "--child-trainer":
        trainer_startup(sys.argv[2], "--uncached" not in sys.argv, "--ranks" in sys.argv)
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--child-merge":
        merge_child(sys.argv[2])
        return
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        simulated_build(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", choices=["donors", "rerun", "pipeline", "trainer", "voxceleb2"], default="donors",
                    help="what to measure")
    ap.add_argument("--parts", type=int, default=0,
                    help="rerun: then the SLURM route, this many parts and make shards-merge (voxceleb2: 64)")
    ap.add_argument("--jobs", type=int, default=2, help="rerun: parts built at once")
    ap.add_argument("--no-baseline", action="store_true",
                    help="rerun: skip the history-free donor baseline (voxceleb2 skips it)")
    ap.add_argument("--before", default=None, help="trainer: a checkout of earlier code, timed as the baseline")
    ap.add_argument("--ranks", type=int, default=8, help="trainer: ranks of the one-node start-up")
    ap.add_argument("--keep", action="store_true", help="trainer: keep the simulated shards for the next run")
    ap.add_argument("--make-only", action="store_true", help="trainer: only make (and keep) the simulated shards")
    ap.add_argument("--runs", default="uncached,cached,ranks",
                    help="trainer: which start-ups (uncached: 1 rank from the tars; cached: 1 rank from the tar-index "
                         "cache, and --before's code; ranks: --ranks ranks without and with the cache)")
    ap.add_argument("--work", default="/tmp/bench-scale", help="rerun: where the simulated corpus and shards go")
    ap.add_argument("--clips", type=int, nargs="+", default=None,
                    help="corpus sizes (donors: 5000 20000 153516; rerun: 153516; pipeline: 500 4000; "
                         "trainer: 153516 1128246)")
    ap.add_argument("--speakers", type=int, default=1251, help="speakers (VoxCeleb1: 1,251)")
    ap.add_argument("--baseline-clips", type=int, nargs="+", default=[1000, 2000],
                    help="sizes at which to time the previous quadratic choice")
    ap.add_argument("--k", type=int, default=5, help="donors per clip (swap_tries)")
    a = ap.parse_args()
    if a.what == "trainer":
        bench_trainer(a.clips or [153516, 1128246], 6112 if a.speakers == 1251 else a.speakers, Path(a.work),
                      a.before, a.ranks, a.keep or a.make_only, a.make_only, a.runs)
        return
    if a.what == "pipeline":
        bench_pipeline(a.clips or [500, 4000], Path(a.work))
        return
    if a.what == "rerun":
        for n in a.clips or [153516]:
            bench_rerun(n, a.speakers, Path(a.work), a.parts, a.jobs, not a.no_baseline)
        return
    if a.what == "voxceleb2":
        bench_voxceleb2(a.clips or [153516, 1128246], Path(a.work), a.parts or 64, a.jobs, a.ranks)
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
