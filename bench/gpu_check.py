"""`make gpu-check SHARDS=<dir> OUT=<dir>`: what a short slot on a GPU node should answer, in one command of at
most ~8 minutes with the defaults, leaving a few small files (such a node may have no internet and no mediapipe:
the shards already hold the aligned faces and crops).

(a) step     the trainer's real `sslfer` step (ResNet-50, 112 px, 256 instances = 512 views) against the
             model-only ceiling, per AMP mode (bf16, fp16, off): images/s, the ratio, data wait, seconds per step;
(b) regions  the batch stage's ImageNet ResNet18 eye+mouth embedding, frames/s on the device, on the shards'
             crops (random weights: the speed is the same);
(c) equal    `simclr` and `sslfer` (ResNet-18, 112 px) each pretrained for --minutes of steps on the shards;
    time     their backbones as fp16 safetensors in parts of at most 15 MiB (`python bench/gpu_check.py --join
             OUT` writes them back as OUT/<preset>-backbone.pt for `python -m eval`), their summaries in the JSON.

Writes OUT/gpu-check.json and OUT/gpu-check.md (runs and checkpoints go to --work, not OUT). `make
gpu-check-shards` builds shards of a subset of ../shared/data's clips under 40 MB to carry to the node. On a CPU
it runs too, with tiny settings (the tests' smoke test)."""
from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PART_BYTES = 15 * 2 ** 20


def step_table(a, device: str) -> list[dict]:
    """(a): the step per AMP mode."""
    from bench.bench_train import bench_step

    rows = []
    for amp in a.amp.split(","):
        t = time.time()
        s = bench_step(Path(a.shards), a.step_arch, a.step_size, a.step_anchors, a.steps, a.workers, device, amp)
        rows.append({**s, "ratio": s["trainer"] / s["ceiling"], "seconds": round(time.time() - t, 1)})
        print(f"step {s['amp']}: trainer {s['trainer']:.0f} images/s, ceiling {s['ceiling']:.0f}, ratio "
              f"{rows[-1]['ratio']:.2f}, data wait {s['wait']:.0%}", flush=True)
    return rows


def region_speed(a, device: str) -> dict:
    """(b): frames/s of the eye+mouth embedding on decoded crops (one frame = its eye crop and its mouth crop)."""
    import numpy as np
    import torch

    from sslfer.imagenet import ResNet18Regions
    from sslfer.shards.schema import ClipSample, shard_paths
    from sslfer.shards.tar import iter_tar_samples

    eyes, mouths = [], []
    for path in shard_paths(Path(a.shards)):
        for sample in iter_tar_samples(path, skip=frozenset({"swaps.jpgs", "faces.jpgs"})):
            clip = ClipSample.from_wds(sample)
            for i in range(len(clip)):
                eye, mouth = clip.image("eyes", i), clip.image("mouth", i)
                if eye is not None and mouth is not None:
                    eyes.append(eye)
                    mouths.append(mouth)
            if len(eyes) >= a.region_frames:
                break
    eyes, mouths = np.stack(eyes[:a.region_frames]), np.stack(mouths[:a.region_frames])
    encoder = ResNet18Regions("random", device)
    encoder(eyes[:a.region_batch], mouths[:a.region_batch])  # warm-up (cuDNN autotuning)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, len(eyes), a.region_batch):
        encoder(eyes[i:i + a.region_batch], mouths[i:i + a.region_batch])  # returns on the host: synchronised
    seconds = time.perf_counter() - t
    out = {"frames": len(eyes), "batch": a.region_batch, "crop_px": int(eyes.shape[1]),
           "frames_per_s": len(eyes) / seconds}
    print(f"regions: {out['frames_per_s']:.0f} frames/s ({len(eyes)} frames)", flush=True)
    return out


def fp16_parts(state: dict, prefix: Path) -> list[str]:
    """The state dict in fp16 as safetensors files of at most PART_BYTES each: prefix.part-i-of-n.safetensors."""
    from safetensors.torch import save_file

    groups, size = [[]], 0
    for k, v in state.items():
        n = v.numel() * (2 if v.is_floating_point() else v.element_size())
        if groups[-1] and size + n > PART_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += n
    names = []
    for i, keys in enumerate(groups, 1):
        path = prefix.with_name(f"{prefix.name}.part-{i}-of-{len(groups)}.safetensors")
        save_file({k: (state[k].half() if state[k].is_floating_point() else state[k]).contiguous() for k in keys},
                  str(path))
        names.append(path.name)
    return names


def equal_time(a, device: str) -> dict:
    """(c): each preset pretrained for --minutes of steps; backbones in fp16 parts under OUT."""
    import torch

    out, got = Path(a.out), {}
    for preset in ("simclr", "sslfer"):
        run = Path(a.work) / preset
        subprocess.run([sys.executable, "-m", "train", a.shards, str(run), "--preset", preset,
                        f"arch={a.curve_arch}", f"image_size={a.curve_size}", f"batch_size={a.curve_batch}",
                        f"max_minutes={a.minutes}", f"workers={a.workers}", f"device={device}", "resume=never",
                        "keep_every=0", "log_every=10", *a.train.split()], cwd=ROOT, check=True)
        summary = json.loads((run / "summary.json").read_text())
        state = torch.load(run / "backbone.pt", map_location="cpu", weights_only=True)
        got[preset] = {"parts": fp16_parts(state, out / f"{preset}-backbone"),
                       **{k: summary.get(k) for k in ("steps", "seconds", "epochs", "steps_per_epoch", "top1",
                                                      "top1_first", "loss", "distinct_clips", "anchors",
                                                      "hardneg_missing", "swap_rate", "ended")}}
        print(f"{preset}: {summary['steps']} steps in {summary['seconds']:.0f} s, top-1 {summary.get('top1')}",
              flush=True)
    return got


def join(out: Path) -> list[Path]:
    """OUT/<preset>-backbone.part-*.safetensors -> OUT/<preset>-backbone.pt (fp32 state dicts `python -m eval`
    loads as any torchvision ResNet's)."""
    import torch
    from safetensors.torch import load_file

    written = []
    for first in sorted(out.glob("*-backbone.part-1-of-*.safetensors")):
        stem = first.name.split(".part-")[0]
        state = {}
        for part in sorted(out.glob(f"{stem}.part-*-of-*.safetensors")):
            state.update(load_file(str(part)))
        path = out / f"{stem}.pt"
        torch.save({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, path)
        written.append(path)
    return written


def make_shards(a) -> int:
    """`make gpu-check-shards`: every --every-th clip of --corpus (a CSV of path,speaker[,video]) into shards."""
    rows = list(csv.DictReader(open(a.corpus)))[::a.every]
    base = Path(a.corpus).resolve().parent
    out = Path(a.make_shards)
    out.mkdir(parents=True, exist_ok=True)
    subset = out.parent / f"{out.name}-clips.csv"
    with open(subset, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "path": str(base / r["path"])} for r in rows)
    code = subprocess.run([sys.executable, "-m", "preprocess", "build", str(subset), str(out),
                           "region_descriptor=landmarks"], cwd=ROOT).returncode
    # what the node needs: the shards and the manifest; the step caches under .cache/ stay here
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and ".cache" not in p.relative_to(out).parts)
    print(f"gpu-check shards: {len(rows)} clips, {size / 1e6:.1f} MB to carry in {out} (without its .cache/)"
          + (" (over 40 MB: raise --every)" if size > 40e6 else ""))
    return code


def markdown(result: dict) -> str:
    lines = [f"# gpu-check ({result['device_name']}, torch {result['torch']}, commit {result['commit'][:10]})", "",
             f"Shards: {result['shards']}. Took {result['seconds']:.0f} s.", "",
             f"## (a) The trainer's step against the model-only ceiling ({result['step_arch']}, "
             f"{result['step_size']} px, {4 * result['step_anchors']} views per step)", "",
             "| AMP | trainer images/s | ceiling images/s | ratio | data wait | s per step |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['amp']} | {r['trainer']:.0f} | {r['ceiling']:.0f} | {r['ratio']:.2f} | {r['wait']:.0%} | "
              f"{r['seconds_per_step']:.3f} |" for r in result["step"]]
    reg = result["regions"]
    lines += ["", "GPU-hours of a run ≈ steps × s per step / 3600 (one GPU's time for the whole batch; on N GPUs "
              "the wall-clock is about 1/N of it: docs/guide.md).", "",
              f"## (b) Region embedding (ImageNet ResNet18, eye + mouth crops of {reg['crop_px']} px)", "",
              f"{reg['frames_per_s']:.0f} frames/s ({reg['frames']} frames, batch {reg['batch']}).", "",
              f"## (c) Equal time: {result['minutes']} min of steps each (ResNet-18, {result['curve_size']} px)", "",
              "| preset | steps | s | epochs done | instance top-1 first → last | backbone files |",
              "|---|---:|---:|---:|---|---|"]
    for preset, r in result["equal_time"].items():
        done = r["steps"] / max(1, r["steps_per_epoch"] or 1)
        lines.append(f"| {preset} | {r['steps']} | {r['seconds']:.0f} | {done:.1f} | {r['top1_first']:.2f} → "
                     f"{r['top1']:.2f} | {', '.join(r['parts'])} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="shards to read (make gpu-check-shards)")
    p.add_argument("--out", default="gpu-check", help="where the JSON, the Markdown and the backbones go")
    p.add_argument("--work", default="build/gpu-check-runs", help="run folders (not returned)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="", help="AMP modes of (a) (default: bf16,fp16,off on a GPU, off on a CPU)")
    p.add_argument("--step-arch", default="resnet50")
    p.add_argument("--step-size", type=int, default=112)
    p.add_argument("--step-anchors", type=int, default=128, help="128 anchors = 256 instances = 512 views")
    p.add_argument("--steps", type=int, default=30, help="timed steps per AMP mode")
    p.add_argument("--workers", type=int, default=8, help="data loader processes")
    p.add_argument("--region-frames", type=int, default=4096)
    p.add_argument("--region-batch", type=int, default=256)
    p.add_argument("--minutes", type=float, default=2.0, help="(c): minutes of steps per preset")
    p.add_argument("--curve-arch", default="resnet18")
    p.add_argument("--curve-size", type=int, default=112)
    p.add_argument("--curve-batch", type=int, default=256)
    p.add_argument("--train", default="", help="more key=value options for (c)'s pretraining")
    p.add_argument("--join", metavar="OUT", help="only write OUT's fp16 backbone parts back as <preset>-backbone.pt")
    p.add_argument("--make-shards", metavar="SHARDS", help="only build gpu-check shards into SHARDS")
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "talking-faces-all.csv"))
    p.add_argument("--every", type=int, default=5, help="--make-shards: every n-th clip of --corpus")
    a = p.parse_args()
    if a.join:
        for path in join(Path(a.join)):
            print(path)
        return 0
    if a.make_shards:
        return make_shards(a)
    if not a.shards:
        p.error("--shards is required (make gpu-check-shards builds some)")
    import torch

    from sslfer.device import resolve_device
    from train.runinfo import git_commit

    device = resolve_device(a.device)
    a.amp = a.amp or ("bf16,fp16,off" if device.startswith("cuda") else "off")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    t = time.time()
    result = {"device": device, "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else
              platform.processor() or "CPU", "torch": torch.__version__, "cuda": torch.version.cuda,
              "commit": git_commit() or "unknown", "shards": a.shards, "step_arch": a.step_arch,
              "step_size": a.step_size, "step_anchors": a.step_anchors, "minutes": a.minutes,
              "curve_size": a.curve_size, "step": step_table(a, device), "regions": region_speed(a, device),
              "equal_time": equal_time(a, device)}
    result["seconds"] = time.time() - t
    (Path(a.out) / "gpu-check.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (Path(a.out) / "gpu-check.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
