"""`make shards`: corpus -> faces -> region -> faceswap -> pack, each step cached by a hash of its inputs and
options so that a rerun does only what changed."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from preprocess import faceswap as fs
from preprocess.cache import Plan, Stamps, StepCache, digest_items, digest_of
from preprocess.corpus import Clip, find_clips, part_name, select_part
from preprocess.faces import failed_info, faces_job, reject
from preprocess.jobs import Failure, run_jobs
from preprocess.regions import embed_regions
from preprocess.settings import ShardsConfig
from sslfer.config import step_options, to_toml
from sslfer.face_geometry import MOUTH_BINS
from sslfer.files import atomic_write_bytes
from sslfer.progress import progress
from sslfer.shards.schema import CONFIG, SUMMARY

# Bump a step's version when its code changes what it writes: its cache (and everything after) is redone.
STEP_VERSIONS = {"faces": 1, "region": 1, "faceswap": 3}


def step_hash(step: str, opts: dict) -> Callable[..., str]:
    """A step's output hash from its inputs: digest(step, its version, *inputs, its options)."""
    return digest_of(step, STEP_VERSIONS[step], tail=(opts[step],))


def output_dir(shards: Path, part: str) -> Path:
    return shards if part.split("/")[1] == "1" else shards / "parts" / part_name(part)


def _run_jobs(fn, jobs: list, cfg: ShardsConfig, desc: str, unit_counter, log_dir: Path):
    """Run fn over jobs in isolated worker processes (preprocess.jobs), with a progress bar; yields (job,
    result or Failure): a job that raises, dies or times out is a Failure, never the end of the build. The
    workers' native log lines go to log_dir."""
    frames, t0 = 0, time.perf_counter()
    with progress(total=len(jobs), desc=desc, unit="clip", dynamic_ncols=True) as bar:
        for job, r in run_jobs(fn, jobs, cfg.workers, cfg.clip_timeout_s, str(log_dir)):
            frames += 0 if isinstance(r, Failure) else unit_counter(r)
            bar.update(1)
            bar.set_postfix_str(f"{frames / max(time.perf_counter() - t0, 1e-9):.1f} frames/s")
            yield job, r


def _without_output(clips: list[Clip], cache: StepCache, hashes: dict[str, str]) -> list[Clip]:
    """The clips whose output of this step (by their hashes) is not in the cache."""
    missing = cache.missing(hashes)
    return [c for c in clips if c.key in missing]


class LazyJobs(Sequence):
    """jobs[i] = make(items[i]), made when asked for: a list of FaceSwap jobs made up front holds six paths per
    clip (~2.3 KB; 2.6 GB of a first build at VoxCeleb2 size)."""

    def __init__(self, items: list, make: Callable):
        self.items, self.make = items, make

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.make(self.items[i])


@dataclass
class Build:
    """One run of the batch stage, filled step by step: what each step found and made."""
    cfg: ShardsConfig
    out: Path
    cache_root: Path
    caches: dict
    part_clips: list[Clip]
    clips: list[Clip]
    discover_rejects: list
    plan: Plan
    opts: dict
    usable: list[Clip] = field(default_factory=list)
    infos: dict = field(default_factory=dict)       # clip key -> its faces info record
    swap_infos: dict = field(default_factory=dict)  # clip key -> its faceswap info record
    work: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    packed: dict | None = None

    @contextmanager
    def timed(self, step: str):
        """`with b.timed("faces"): ...` records the step's seconds."""
        t = time.perf_counter()
        yield
        self.timings[step] = time.perf_counter() - t


def build(data: str | Path, shards: str | Path, cfg: ShardsConfig) -> dict:
    """Run every step that is not up to date; returns the run summary (also written as summary.json)."""
    t_start = time.perf_counter()
    if cfg.region_descriptor == "resnet18":  # fail now, not after hours of decoding
        from sslfer.device import resolve_device
        from sslfer.imagenet import resnet18_weights

        resolve_device(cfg.device)
        resnet18_weights(cfg.region_weights)
    b = discover(data, Path(shards), cfg)
    with b.timed("faces"):
        faces_step(b)
    with b.timed("region"):
        region_step(b)
    with b.timed("faceswap"):
        faceswap_step(b)
    with b.timed("pack"):
        pack_step(b)
    b.timings["total"] = time.perf_counter() - t_start
    summary = summarize(b.out, b.clips, b.infos, b.swap_infos, b.discover_rejects, b.work, b.timings, b.packed)
    atomic_write_bytes(b.out / SUMMARY, json.dumps(summary, indent=2).encode())
    return summary


def discover(data: str | Path, shards: Path, cfg: ShardsConfig) -> Build:
    """The corpus's clips (this part's), the step caches, and each clip's faces hash from its content stamp."""
    t = time.perf_counter()
    all_clips, discover_rejects = find_clips(data, cfg.layout, cfg.meta_csv)
    out = output_dir(shards, cfg.part)
    out.mkdir(parents=True, exist_ok=True)
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else shards / ".cache"
    caches = {s: StepCache(cache_root, s, cfg.part) for s in ("faces", "region", "faceswap")}
    part_clips = select_part(all_clips, cfg.part)
    clips = part_clips[:cfg.max_clips] if cfg.max_clips else part_clips
    opts = {s: step_options(cfg, s) for s in ("faces", "region", "faceswap", "pack")}
    b = Build(cfg, out, cache_root, caches, part_clips, clips, discover_rejects, Plan(clips), opts)
    stamps = Stamps(cache_root / f"stamps-{part_name(cfg.part)}.parquet")
    faces_hash = step_hash("faces", opts)
    for c, fp in zip(clips, stamps.fingerprints(clips)):
        b.plan.faces[c.key] = faces_hash(fp)
    stamps.save()
    b.work["content_read"] = stamps.read
    atomic_write_bytes(out / CONFIG, to_toml(cfg).encode())
    b.timings["discover"] = time.perf_counter() - t
    return b


def faces_step(b: Build) -> None:
    """Decode, landmarks, alignment, crops, in worker processes; a clip whose job fails is left out this run."""
    cfg, plan = b.cfg, b.plan
    todo = _without_output(b.clips, b.caches["faces"], plan.faces)
    jobs = [(c, cfg, b.cache_root, plan.faces[c.key]) for c in todo]
    crashed, written = {}, {}  # written: the info records of this run's outputs, not read back from them
    for job, r in _run_jobs(faces_job, jobs, cfg, "faces", lambda info: info["sampled"], b.cache_root / "logs"):
        if isinstance(r, Failure):
            crashed[job[0].key] = failed_info(job[0], r.reason)
        else:
            written[job[0].key] = json.dumps(r)
    b.work["faces"] = len(todo)
    if todo:
        b.caches["faces"].prune(plan.faces)
    b.infos = b.caches["faces"].infos({c.key: plan.faces[c.key] for c in b.clips if c.key not in crashed}, written)
    b.infos.update(crashed)
    b.usable = [c for c in b.clips if not b.infos[c.key]["failed"]]


def region_step(b: Build) -> None:
    """MaskFN descriptors of the usable clips."""
    region_hash = step_hash("region", b.opts)
    for c in b.usable:
        b.plan.region[c.key] = region_hash(b.plan.faces[c.key])
    todo = _without_output(b.usable, b.caches["region"], b.plan.region)
    b.work["region"] = embed_regions(todo, b.plan, b.cfg, b.caches) if todo else 0
    if todo:
        b.caches["region"].prune(b.plan.region)


def faceswap_step(b: Build) -> None:
    """Composites with donors of other speakers (donor clips kept from run to run), in worker processes."""
    cfg, plan, usable = b.cfg, b.plan, b.usable
    if not cfg.faceswap:
        plan.faceswap = {c.key: "" for c in usable}  # no composites: every frame's swap is empty
        b.work["faceswap"] = 0
        return
    previous = fs.read_donor_table(b.out / fs.DONOR_TABLE, cfg.swap_seed, cfg.swap_tries)
    donors, remembered = fs.sticky_donor_clips([(c.key, c.speaker) for c in usable],
                                               previous if cfg.sticky_donors else {}, cfg.swap_seed,
                                               cfg.swap_tries, corpus={c.key for c in b.part_clips})
    if remembered != previous:
        fs.write_donor_table(b.out / fs.DONOR_TABLE, remembered, cfg.swap_seed, cfg.swap_tries)
    faceswap_hash = step_hash("faceswap", b.opts)
    for c in usable:
        plan.faceswap[c.key] = faceswap_hash(plan.faces[c.key], [plan.faces[d] for d in donors[c.key]])
    todo = _without_output(usable, b.caches["faceswap"], plan.faceswap)
    faces = b.caches["faces"]
    jobs = LazyJobs(todo, lambda c: (c.key, plan.faceswap[c.key], cfg, b.cache_root,
                                     faces.path(c.key, plan.faces[c.key]),
                                     {d: faces.path(d, plan.faces[d]) for d in donors[c.key]}))
    by_key = {c.key: c for c in todo}
    swap_failed, written = set(), {}
    for job, r in _run_jobs(fs.swap_job, jobs, cfg, "faceswap", lambda info: len(info["donors"]),
                           b.cache_root / "logs"):
        if isinstance(r, Failure):  # the clip sits out this run (its faces info kept); tried again next time
            info = b.infos[job[0]]
            b.infos[job[0]] = {**info, "failed": True,
                               "rejects": info["rejects"] + [reject(by_key[job[0]], "faceswap", r.reason)]}
            swap_failed.add(job[0])
        else:
            written[job[0]] = json.dumps(r)
    b.usable = usable = [c for c in usable if c.key not in swap_failed]
    b.work["faceswap"] = len(todo)
    if todo:
        b.caches["faceswap"].prune(plan.faceswap)
    b.swap_infos = b.caches["faceswap"].infos({c.key: plan.faceswap[c.key] for c in usable}, written)
    if todo or not (b.out / fs.SWAP_SHEET).is_file() and fs.made_composites(b.out):
        fs.write_contact_sheet(b.out / fs.SWAP_SHEET, usable, plan, b.caches, b.swap_infos, cfg.swap_seed)


def pack_step(b: Build) -> None:
    """Shards and manifest, unless the last pack was of exactly these outputs and options."""
    from preprocess.pack import fields_version, pack, pack_is_current

    plan = b.plan
    pack_hash = digest_items(("pack",), ((c.key, plan.faces[c.key], plan.region[c.key], plan.faceswap[c.key])
                                         for c in b.usable), (b.opts["pack"], fields_version()))
    if pack_is_current(b.out, pack_hash):
        b.work["pack"] = 0
        return
    b.packed = pack(b.out, b.usable, plan, b.caches, b.cfg, pack_hash, b.discover_rejects, b.infos, b.swap_infos)
    b.work["pack"] = 1


def summarize(out, clips, infos, swap_infos, discover_rejects, work, timings, packed) -> dict:
    from sslfer.shards.schema import MANIFEST

    drops: dict[str, int] = {}
    failed, sampled, kept = [], 0, 0
    for c in clips:  # one pass: each record is parsed on access
        info = infos[c.key]
        for reason, n in info["drops"].items():
            drops[reason] = drops.get(reason, 0) + n
        sampled, kept = sampled + info["sampled"], kept + info["kept"]
        if info["failed"]:
            failed.append((c.rel, next((r["reason"] for r in info["rejects"] if r["frame"] == -1), "?")))
    swap_made = swap_skipped = 0
    coverage = {name: {"frames": 0, "with_composite": 0} for name, _ in MOUTH_BINS}
    for info in swap_infos.values():
        swap_made += info["composites"]
        swap_skipped += info["frames"] - info["made"]  # frames without any composite
        for name, (frames, covered) in info.get("coverage", {}).items():
            coverage[name]["frames"] += frames
            coverage[name]["with_composite"] += covered
    import pyarrow.parquet as pq

    meta = pq.read_schema(out / MANIFEST).metadata if (out / MANIFEST).is_file() else {}
    return {
        "output": str(out),
        "clips": len(clips), "clips_usable": len(clips) - len(failed), "clips_failed": len(failed),
        "failed": [{"source": s, "reason": r} for s, r in failed],
        "unplaced_files": len(discover_rejects),
        "frames_sampled": sampled, "frames_kept": kept,
        "frames_dropped": drops,
        "composites": swap_made, "composites_skipped": swap_skipped,
        "composite_coverage": {"by_mouth_opening": coverage, "bins": {n: lo for n, lo in MOUTH_BINS},
                               "unit": "inner-lip gap in inter-ocular distances, bin = [lower bound, next)"},
        "shards": int(meta.get(b"shards", b"0")) if meta else 0,
        "bytes": int(meta.get(b"bytes", b"0")) if meta else 0,
        "work_done": work, "seconds": {k: round(v, 2) for k, v in timings.items()},
        "repacked": packed is not None,
        "pack": packed or {},
    }


def print_summary(s: dict) -> None:
    print("\n== make shards ==")
    print(f"output        {s['output']}")
    print(f"clips         {s['clips']} ({s['clips_usable']} usable, {s['clips_failed']} failed"
          f"{', %d files outside the layout' % s['unplaced_files'] if s['unplaced_files'] else ''})")
    for f in s["failed"][:10]:
        print(f"  failed      {f['source']}: {f['reason']}")
    if len(s["failed"]) > 10:
        print(f"  ... {len(s['failed']) - 10} more in rejects.parquet")
    dropped = sum(s["frames_dropped"].values())
    print(f"frames        {s['frames_kept']} kept of {s['frames_sampled']} sampled, {dropped} dropped"
          + "".join(f"\n  dropped     {n} {r}" for r, n in sorted(s["frames_dropped"].items())))
    print(f"composites    {s['composites']} made, {s['composites_skipped']} frames without one")
    cov = s["composite_coverage"]["by_mouth_opening"]
    if any(c["frames"] for c in cov.values()):
        print("  coverage    frames with a composite, by mouth opening: " + ", ".join(
            f"{name} {c['with_composite'] / c['frames']:.0%} of {c['frames']}" for name, c in cov.items()
            if c["frames"]))
    written = (f"; this run wrote {s['pack']['shards_written']} for {s['pack']['clips_written']} clips and kept "
               f"{s['pack']['shards_kept']}") if s["pack"] else ""
    print(f"shards        {s['shards']} ({s['bytes'] / 1e6:.1f} MB{written})")
    w = s["work_done"]
    print(f"this run      read {w['content_read']} changed files, faces {w['faces']} clips, region {w['region']} "
          f"frames, faceswap {w['faceswap']} clips, pack {'yes' if w['pack'] else 'no (up to date)'}")
    print("seconds       " + ", ".join(f"{k} {v:.1f}" for k, v in s["seconds"].items()))
