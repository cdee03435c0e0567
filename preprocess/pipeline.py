"""`make shards`: corpus -> faces -> region -> faceswap -> pack, each step cached by a hash of its inputs and
options so that a rerun does only what changed."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preprocess import faceswap as fs
from preprocess.cache import Stamps, StepCache, digest_items, digest_of
from preprocess.corpus import Clip, find_clips, part_name, select_part
from preprocess.faces import reject, run_faces
from preprocess.jobs import Failure, run_jobs
from preprocess.settings import ShardsConfig
from sslfer.config import step_options, to_toml
from sslfer.face_geometry import MOUTH_BINS, mouth_bin, mouth_opening
from sslfer.files import atomic_write_bytes
from sslfer.npz import NpzArrays
from sslfer.progress import progress
from sslfer.shards.schema import CONFIG, SUMMARY, decode_jpeg, encode_jpeg, jpeg_at, join_jpegs

# Bump a step's version when its code changes what it writes: its cache (and everything after) is redone.
STEP_VERSIONS = {"faces": 1, "region": 1, "faceswap": 3}


@dataclass
class Plan:
    """Per clip: the hash keying each step's output."""
    clips: list[Clip]
    faces: dict = field(default_factory=dict)
    region: dict = field(default_factory=dict)
    faceswap: dict = field(default_factory=dict)


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


SWAP_SHEET = "faceswap-sheet.png"
DONOR_TABLE = "faceswap-donors.parquet"  # each clip's donor clips, kept from run to run (sticky_donors)


def write_contact_sheet(path: Path, usable: list[Clip], plan: Plan, caches: dict, swap_infos: dict, seed: int,
                        rows: int = 8) -> None:
    """faceswap-sheet.png: face, composite and donor frame for a few seeded frames of different clips (those
    with composites, known from their info records: no output is opened but the ones shown)."""
    rng = np.random.default_rng(seed)
    with_swaps = [c for c in usable if swap_infos[c.key]["made"]]
    picked = []
    for i in rng.permutation(len(with_swaps))[:rows]:
        clip = with_swaps[i]
        swaps, info = caches["faceswap"].load(clip.key, plan.faceswap[clip.key])
        made = [j for j, d in enumerate(info["donors"]) if d]
        j = made[rng.integers(len(made))]
        donor_key, donor_frame = info["donors"][j].split(";")[0].rsplit("/", 1)
        with caches["faces"].open(clip.key, plan.faces[clip.key]) as faces, \
                caches["faces"].open(donor_key, plan.faces[donor_key]) as donor:
            picked.append((decode_jpeg(jpeg_at(faces["faces_blob"], faces["faces_idx"], j)),
                           decode_jpeg(jpeg_at(swaps["swaps_blob"], swaps["swaps_idx"],
                                               j * info["swaps_per_frame"])),
                           decode_jpeg(jpeg_at(donor["faces_blob"], donor["faces_idx"], int(donor_frame)))))
    if picked:
        fs.contact_sheet(picked, path)


def _made_composites(out: Path) -> bool:
    """Whether the last run's summary counts composites (or there is none to tell): with no FaceSwap work to
    do, a corpus without composites has no sheet to make, and finding that out means parsing every clip's
    FaceSwap record (~10 s a rerun at VoxCeleb2 size)."""
    try:
        return json.loads((out / SUMMARY).read_bytes()).get("composites", 1) > 0
    except (OSError, ValueError, AttributeError):
        return True


def failed_info(clip: Clip, reason: str) -> dict:
    """The faces info of a clip whose job failed outright (not cached: the next run tries it again)."""
    return {"sampled": 0, "kept": 0, "drops": {}, "failed": True, "rejects": [reject(clip, "faces", reason)]}


def _faces_job(args):
    clip, cfg, cache_root, h = args
    arrays, info = run_faces(clip, cfg)
    StepCache(cache_root, "faces").save(clip.key, h, arrays, info)
    return info


def _swap_job(args):
    key, h, cfg, cache_root, face_path, donor_paths = args
    with ExitStack() as files:
        arrays = files.enter_context(NpzArrays(face_path))
        donors = {d: files.enter_context(NpzArrays(p)) for d, p in donor_paths.items()}
        out, info = make_swaps(key, arrays, donors, cfg)
    StepCache(cache_root, "faceswap").save(key, h, out, info)
    return info


def _images(arrays: dict, name: str) -> list[np.ndarray]:
    blob, idx = arrays[f"{name}_blob"], arrays[f"{name}_idx"]
    return [decode_jpeg(jpeg_at(blob, idx, i)) for i in range(len(idx) - 1)]


def make_swaps(key: str, arrays: dict, donors: dict[str, dict], cfg: ShardsConfig) -> tuple[dict, dict]:
    """Composites for every frame of one clip, given its faces output and its donor clips' outputs."""
    faces = _images(arrays, "faces")
    lms = arrays["landmarks"].astype(np.float32)
    donor_faces: dict[tuple, np.ndarray] = {}
    k = max(1, cfg.swaps_per_frame)
    jpegs, donor_names, misfits, rejects = [], [], [], []
    made = 0
    for i, (face, lm) in enumerate(zip(faces, lms)):
        tried = []
        for d, darr in donors.items():
            j = fs.donor_frame(cfg.swap_seed, key, i, d, len(darr["time"]))
            err, m = fs.misfit(lm, darr["landmarks"][j].astype(np.float32))
            tried.append((err, m, d, j))
        tried.sort(key=lambda t: t[0])
        fitting = [t for t in tried if t[0] <= cfg.swap_max_misfit][:k]
        misfits.append(tried[0][0] if tried else np.nan)
        if not fitting:
            reason = "no donor of another speaker" if not tried else \
                f"landmark geometry too different from every donor tried (misfit {tried[0][0]:.3f} > " \
                f"{cfg.swap_max_misfit:g})"
            rejects.append({"source": "", "key": key, "frame": i, "timestamp": float(arrays["time"][i]),
                            "step": "faceswap", "reason": reason})
        names = []
        for err, m, d, j in fitting:  # the best-fitting donors, one composite each
            if (d, j) not in donor_faces:
                blob, idx = donors[d]["faces_blob"], donors[d]["faces_idx"]
                donor_faces[(d, j)] = decode_jpeg(jpeg_at(blob, idx, j))
            img = fs.composite(face, lm, donor_faces[(d, j)], donors[d]["landmarks"][j].astype(np.float32), m,
                               cfg.swap_feather, cfg.swap_colour_blur, cfg.swap_dilate)
            jpegs.append(encode_jpeg(img, cfg.jpeg_quality))
            names.append(f"{d}/{j}")
        jpegs += [b""] * (k - len(fitting))
        donor_names.append(";".join(names))
        made += bool(fitting)
    blob, idx = join_jpegs(jpegs)
    bins = mouth_bin(mouth_opening(lms)) if len(lms) else np.zeros(0, int)
    covered = np.array([bool(n) for n in donor_names], bool)
    coverage = {name: [int((bins == b).sum()), int((covered & (bins == b)).sum())]
                for b, (name, _) in enumerate(MOUTH_BINS)}
    info = {"donors": donor_names, "made": made, "composites": sum(1 for j in jpegs if j),
            "swaps_per_frame": k, "rejects": rejects, "coverage": coverage}
    return {"swaps_blob": blob, "swaps_idx": idx, "misfit": np.array(misfits, np.float32)}, info


def embed_regions(todo: list[Clip], plan: Plan, cfg: ShardsConfig, caches: dict) -> int:
    """Region descriptors for the clips in todo, batched across clips. Returns frames embedded."""
    encoder = None
    if cfg.region_descriptor == "resnet18":
        from sslfer.imagenet import ResNet18Regions

        encoder = ResNet18Regions(cfg.region_weights, cfg.device)
    from preprocess.regions import landmark_descriptor

    done = 0
    t0 = time.perf_counter()
    with progress(total=len(todo), desc="region", unit="clip", dynamic_ncols=True) as bar:
        for clip in todo:
            with caches["faces"].open(clip.key, plan.faces[clip.key]) as arrays:
                if encoder is None:
                    region = landmark_descriptor(arrays["landmarks"])
                else:
                    eyes, mouths = np.stack(_images(arrays, "eyes")), np.stack(_images(arrays, "mouth"))
                    bs = max(1, cfg.region_batch_size // 2)
                    region = np.concatenate([encoder(eyes[i:i + bs], mouths[i:i + bs])
                                             for i in range(0, len(eyes), bs)])
            caches["region"].save(clip.key, plan.region[clip.key], {"region": region},
                                  {"descriptor": cfg.region_descriptor, "dim": int(region.shape[1])})
            done += len(region)
            bar.update(1)
            bar.set_postfix_str(f"{done / max(time.perf_counter() - t0, 1e-9):.1f} frames/s")
    return done


def build(data: str | Path, shards: str | Path, cfg: ShardsConfig) -> dict:
    """Run every step that is not up to date; returns the run summary (also written as summary.json)."""
    from preprocess.pack import fields_version, pack, pack_is_current

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    work: dict[str, int] = {}
    if cfg.region_descriptor == "resnet18":  # fail now, not after hours of decoding
        from sslfer.device import resolve_device
        from sslfer.imagenet import resnet18_weights

        resolve_device(cfg.device)
        resnet18_weights(cfg.region_weights)
    t = time.perf_counter()
    all_clips, discover_rejects = find_clips(data, cfg.layout, cfg.meta_csv)
    shards = Path(shards)
    out = output_dir(shards, cfg.part)
    out.mkdir(parents=True, exist_ok=True)
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else shards / ".cache"
    caches = {s: StepCache(cache_root, s, cfg.part) for s in ("faces", "region", "faceswap")}
    part_clips = select_part(all_clips, cfg.part)
    clips = part_clips[:cfg.max_clips] if cfg.max_clips else part_clips
    plan = Plan(clips)
    opts = {s: step_options(cfg, s) for s in ("faces", "region", "faceswap", "pack")}
    stamps = Stamps(cache_root / f"stamps-{part_name(cfg.part)}.parquet")
    faces_hash = step_hash("faces", opts)
    for c, fp in zip(clips, stamps.fingerprints(clips)):
        plan.faces[c.key] = faces_hash(fp)
    stamps.save()
    work["content_read"] = stamps.read
    timings["discover"] = time.perf_counter() - t
    atomic_write_bytes(out / CONFIG, to_toml(cfg).encode())

    # faces: decode, landmarks, alignment, crops
    t = time.perf_counter()
    todo = _without_output(clips, caches["faces"], plan.faces)
    jobs = [(c, cfg, cache_root, plan.faces[c.key]) for c in todo]
    crashed, written = {}, {}  # written: the info records of this run's outputs, not read back from them
    for job, r in _run_jobs(_faces_job, jobs, cfg, "faces", lambda info: info["sampled"], cache_root / "logs"):
        if isinstance(r, Failure):
            crashed[job[0].key] = failed_info(job[0], r.reason)
        else:
            written[job[0].key] = json.dumps(r)
    work["faces"] = len(todo)
    if todo:
        caches["faces"].prune(plan.faces)
    infos = caches["faces"].infos({c.key: plan.faces[c.key] for c in clips if c.key not in crashed}, written)
    infos.update(crashed)
    usable = [c for c in clips if not infos[c.key]["failed"]]
    timings["faces"] = time.perf_counter() - t

    # region: MaskFN descriptors
    t = time.perf_counter()
    region_hash = step_hash("region", opts)
    for c in usable:
        plan.region[c.key] = region_hash(plan.faces[c.key])
    todo = _without_output(usable, caches["region"], plan.region)
    work["region"] = embed_regions(todo, plan, cfg, caches) if todo else 0
    if todo:
        caches["region"].prune(plan.region)
    timings["region"] = time.perf_counter() - t

    # faceswap: composites with donors of other speakers
    t = time.perf_counter()
    if cfg.faceswap:
        previous = fs.read_donor_table(out / DONOR_TABLE, cfg.swap_seed, cfg.swap_tries)
        donors, remembered = fs.sticky_donor_clips([(c.key, c.speaker) for c in usable],
                                                   previous if cfg.sticky_donors else {}, cfg.swap_seed,
                                                   cfg.swap_tries, corpus={c.key for c in part_clips})
        if remembered != previous:
            fs.write_donor_table(out / DONOR_TABLE, remembered, cfg.swap_seed, cfg.swap_tries)
        faceswap_hash = step_hash("faceswap", opts)
        for c in usable:
            plan.faceswap[c.key] = faceswap_hash(plan.faces[c.key], [plan.faces[d] for d in donors[c.key]])
        todo = _without_output(usable, caches["faceswap"], plan.faceswap)
        jobs = LazyJobs(todo, lambda c: (c.key, plan.faceswap[c.key], cfg, cache_root,
                                         caches["faces"].path(c.key, plan.faces[c.key]),
                                         {d: caches["faces"].path(d, plan.faces[d]) for d in donors[c.key]}))
        by_key = {c.key: c for c in todo}
        swap_failed, written = set(), {}
        for job, r in _run_jobs(_swap_job, jobs, cfg, "faceswap", lambda info: len(info["donors"]),
                               cache_root / "logs"):
            if isinstance(r, Failure):  # the clip sits out this run (its faces info kept); tried again next time
                infos[job[0]] = {**infos[job[0]], "failed": True,
                                 "rejects": infos[job[0]]["rejects"] + [reject(by_key[job[0]], "faceswap", r.reason)]}
                swap_failed.add(job[0])
            else:
                written[job[0]] = json.dumps(r)
        usable = [c for c in usable if c.key not in swap_failed]
        work["faceswap"] = len(todo)
        if todo:
            caches["faceswap"].prune(plan.faceswap)
        swap_infos = caches["faceswap"].infos({c.key: plan.faceswap[c.key] for c in usable}, written)
        if todo or not (out / SWAP_SHEET).is_file() and _made_composites(out):
            write_contact_sheet(out / SWAP_SHEET, usable, plan, caches, swap_infos, cfg.swap_seed)
    else:
        plan.faceswap = {c.key: "" for c in usable}  # no composites: every frame's swap is empty
        work["faceswap"] = 0
        swap_infos = {}
    timings["faceswap"] = time.perf_counter() - t

    # pack: shards + manifest
    t = time.perf_counter()
    pack_hash = digest_items(("pack",), ((c.key, plan.faces[c.key], plan.region[c.key], plan.faceswap[c.key])
                                         for c in usable), (opts["pack"], fields_version()))
    if pack_is_current(out, pack_hash):
        packed = None
        work["pack"] = 0
    else:
        packed = pack(out, usable, plan, caches, cfg, pack_hash, discover_rejects, infos, swap_infos)
        work["pack"] = 1
    timings["pack"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    summary = summarize(out, clips, infos, swap_infos, discover_rejects, work, timings, packed)
    atomic_write_bytes(out / SUMMARY, json.dumps(summary, indent=2).encode())
    return summary


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
