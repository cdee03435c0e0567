"""Benchmarks of the trainer (`make bench-train`).

data   (CPU) batches/s of this project's data path (shard read -> JPEG decode of the drawn frames -> batch
       assembly in DataLoader workers -> batched augmentation) against the official-style per-sample path
       (every sample: read the frames' JPEG files, re-run landmarks (mediapipe, as the authors re-run dlib),
       paste a FaceSwap with landmarks found again, PIL transforms, in DataLoader workers). Same batch: B anchors,
       each with a positive, a hard negative and its positive (4B images). Target >= 10x.
step   (GPU) images/s of the whole trainer (real shards, loader, augmentation, model, loss, optimiser) against
       the model-only ceiling (the same model and batch on synthetic tensors already on the device), ResNet-50
       at 112 px. Target >= 0.9. On a CPU it runs too (tiny settings), as a smoke test of the script.

Prints Markdown rows for docs/performance.md."""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sslfer.config import load_config  # noqa: E402
from sslfer.shards.schema import ClipSample, shard_paths  # noqa: E402
from train.settings import TrainConfig, preset_path  # noqa: E402


# ---------------------------------------------------------------- official-style per-sample baseline
class OfficialStyleDataset(torch.utils.data.Dataset):
    """Per-sample work as the authors' loader does it: files on disk, landmarks every time, PIL transforms."""

    def __init__(self, clips: list[list[Path]], size: int):
        self.clips, self.size = clips, size
        self.mesh = None
        self.donors = [f for c in clips for f in c]

    def _landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        if self.mesh is None:
            import mediapipe as mp

            self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True)
        res = self.mesh.process(rgb)
        if not res.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        return np.array([(p.x * w, p.y * h) for p in res.multi_face_landmarks[0].landmark], np.float32)

    def _load(self, path: Path) -> np.ndarray:
        import cv2

        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)

    def _transform(self, rgb: np.ndarray, lm):
        from PIL import Image, ImageDraw
        from torchvision import transforms as T

        from sslfer.face_geometry import region_boxes

        img = Image.fromarray(rgb)
        if lm is not None and random.random() < 0.8:
            box = region_boxes(lm)[random.randint(0, 1)]
            mean = tuple(int(c) for c in rgb.reshape(-1, 3).mean(0))
            ImageDraw.Draw(img).ellipse([box[0] - 10, box[1] - 10, box[2] + 10, box[3] + 10], fill=mean)
        t = T.Compose([T.Resize(128), T.RandomCrop(self.size), T.RandomHorizontalFlip(),
                       T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.2)], p=0.8),
                       T.RandomApply([T.GaussianBlur(3)], p=0.5), T.RandomGrayscale(0.2), T.ToTensor(),
                       T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        return t(img)

    def _view(self, path: Path, swap: bool):
        from preprocess import faceswap as fs

        rgb = self._load(path)
        lm = self._landmarks(rgb)
        if swap and lm is not None:
            donor = self._load(random.choice(self.donors))
            dlm = self._landmarks(donor)
            if dlm is not None:
                _, m = fs.misfit(lm, dlm)
                rgb = fs.composite(rgb, lm, donor, dlm, m, 0.12, 0.6)
                lm = dlm
        return self._transform(rgb, lm)

    def __len__(self):
        return 10 ** 6

    def __getitem__(self, i):
        clip = self.clips[i % len(self.clips)]
        a = random.randrange(len(clip))
        p = min(len(clip) - 1, a + random.randint(1, 4))
        h = (a + len(clip) // 2) % len(clip)
        hp = min(len(clip) - 1, h + 1)
        return torch.stack([self._view(clip[a], False), self._view(clip[h], False),
                            self._view(clip[p], random.random() < 0.5), self._view(clip[hp], random.random() < 0.5)])


def export_frames(shards: Path, out: Path, side: int = 224) -> list[list[Path]]:
    """The shards' aligned faces as side x side JPEG files, one folder per clip: the layout and size of the
    VoxCeleb1 face frames the official code reads (224 x 224)."""
    import cv2

    from sslfer.shards.schema import decode_jpeg, encode_jpeg
    from sslfer.shards.tar import iter_tar_samples

    clips = []
    for shard in shard_paths(shards):
        for raw in iter_tar_samples(shard):
            s = ClipSample.from_wds(raw)
            d = out / s.key
            d.mkdir(parents=True, exist_ok=True)
            blob, idx = s.jpegs["faces"]
            files = []
            for i in range(len(s)):
                f = d / f"{i:05d}.jpg"
                face = cv2.resize(decode_jpeg(bytes(blob[idx[i]:idx[i + 1]])), (side, side))
                f.write_bytes(encode_jpeg(face, 95))
                files.append(f)
            clips.append(files)
    return clips


def time_batches(loader, n: int, warmup: int, per_batch=None) -> float:
    it = iter(loader)
    for _ in range(warmup):
        b = next(it)
        if per_batch:
            per_batch(b)
    t0 = time.perf_counter()
    for _ in range(n):
        b = next(it)
        if per_batch:
            per_batch(b)
    return n / (time.perf_counter() - t0)


def bench_data(shards: Path, anchors: int, workers: int, size: int, n_ours: int, n_base: int) -> dict:
    from sslfer.augment import augment
    from sslfer.shards.index import ShardIndex
    from train.data import BatchStream

    # batch_size counts instances: `anchors` anchors and their hard negatives
    cfg = load_config(TrainConfig, [preset_path("sslfer")], [f"batch_size={2 * anchors}", f"workers={workers}",
                                                               "anchors_per_clip=1000"])
    from train.plan import steps_per_epoch

    index = ShardIndex.build(shards)
    steps, per_epoch = 10 ** 6, steps_per_epoch(len(index), anchors, cfg.anchors_per_clip)
    # as the trainer on a CPU: batch assembly and augmentation in the loader workers
    stream = BatchStream(index, cfg, 0, 1, 0, steps, per_epoch, augment_here=True)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    ours = time_batches(loader, n_ours, 2)
    # the GPU trainer's order, augmenting in the main process (here on the CPU): the figure before the change
    stream = BatchStream(index, cfg, 0, 1, 0, steps, per_epoch)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    gen = torch.Generator().manual_seed(0)
    main_process = time_batches(loader, n_ours, 2, lambda b: augment(b["images"], b["boxes"], size, gen))
    with tempfile.TemporaryDirectory() as tmp:
        clips = export_frames(shards, Path(tmp))
        base_loader = torch.utils.data.DataLoader(OfficialStyleDataset(clips, size),
                                                  batch_size=anchors, num_workers=workers, shuffle=True)
        base = time_batches(base_loader, n_base, 1)
    return {"ours": ours, "main_process": main_process, "baseline": base, "images": 4 * anchors}


def bench_step(shards: Path, arch: str, size: int, anchors: int, steps: int, workers: int, device: str,
               amp: str = "auto") -> dict:
    """The whole trainer's `sslfer` step (2 x anchors instances: anchors and their hard negatives, 4 x anchors
    views) against the model-only ceiling, under one AMP mode (auto: the trainer's choice for the device)."""
    from sslfer.device import amp_dtype, resolve_amp
    from train.losses import info_nce
    from train.methods import build_method
    from train.pretrain import make_optimizer, pretrain

    amp = resolve_amp(amp, device)
    overrides = [f"arch={arch}", f"image_size={size}", f"batch_size={2 * anchors}", f"workers={workers}",
                 f"max_steps={steps}", f"device={device}", "resume=never", "anchors_per_clip=1000", f"amp={amp}",
                 "keep_every=0"]
    cfg = load_config(TrainConfig, [preset_path("sslfer")], overrides)
    with tempfile.TemporaryDirectory() as run:
        pretrain(shards, run, cfg)
        rows = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]
    skip = max(1, len(rows) // 4)
    trainer = float(np.median([r["images_per_s"] for r in rows[skip:]]))
    wait = float(np.median([r["data_wait"] for r in rows[skip:]]))
    # model-only ceiling: the same model and batch (4 x anchors images with HardNeg) already on the device
    torch.manual_seed(0)
    model = build_method(cfg).to(device)
    cuda = device.startswith("cuda")
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=amp == "fp16")
    n = 4 * anchors
    x = torch.randn(n, 3, size, size, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    pos = (torch.arange(n, device=device) + n // 2) % n
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=amp_dtype(amp), enabled=amp != "off"):
            loss = info_nce(model.project(x), pos, 0.07)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ceiling = n / float(np.median(times[max(1, steps // 4):]))
    return {"trainer": trainer, "ceiling": ceiling, "wait": wait, "images": n, "amp": amp,
            "seconds_per_step": n / trainer}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="shards to read (make shards output)")
    p.add_argument("--what", default="data,step", help="data, step or both")
    p.add_argument("--anchors", type=int, default=32, help="anchors per batch for the data benchmark")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--size", type=int, default=112, help="input side")
    p.add_argument("--batches", type=int, default=20, help="batches timed on our path (baseline: a quarter)")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--step-anchors", type=int, default=128,
                   help="anchors per step for the step benchmark (128: the paper's sslfer step, 256 instances = "
                        "512 views)")
    p.add_argument("--amp", default="auto", help="AMP mode of the step benchmark: auto | bf16 | fp16 | off")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    from sslfer.device import resolve_device

    device = resolve_device(a.device)
    shards = Path(a.shards)
    print(f"machine: {platform.node()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if device.startswith('cuda') else 'CPU'}")
    if "data" in a.what:
        d = bench_data(shards, a.anchors, a.workers, a.size, a.batches, max(2, a.batches // 4))
        print(f"\n| data path ({d['images']} images/batch, {a.workers} workers, {a.size} px) | batches/s | ratio |")
        print("|---|---:|---:|")
        print(f"| official-style per-sample (baseline) | {d['baseline']:.3f} | 1.0 |")
        print(f"| this project, augmentation in the main process | {d['main_process']:.3f} | "
              f"{d['main_process'] / d['baseline']:.1f}x |")
        print(f"| this project, augmentation in the workers (CPU training) | {d['ours']:.3f} | "
              f"{d['ours'] / d['baseline']:.1f}x |")
    if "step" in a.what:
        s = bench_step(shards, a.arch, a.size, a.step_anchors, a.steps, a.workers, device, a.amp)
        print(f"\n| step ({a.arch}, {a.size} px, {s['images']} images/step, {device}, AMP {s['amp']}) | images/s | "
              f"ratio |")
        print("|---|---:|---:|")
        print(f"| model-only ceiling (synthetic tensors on the device) | {s['ceiling']:.1f} | 1.00 |")
        print(f"| whole trainer (data wait {s['wait']:.0%}) | {s['trainer']:.1f} | {s['trainer'] / s['ceiling']:.2f} |")
        print(f"\n{s['seconds_per_step']:.3f} s per step: GPU-hours of a run = steps x {s['seconds_per_step']:.3f} "
              f"/ 3600 on one GPU; on N GPUs the wall-clock is about 1/N of it (docs/guide.md)")


if __name__ == "__main__":
    main()
