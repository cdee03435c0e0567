"""The pretraining loop: shards -> batches -> augment -> model -> loss -> step, with logging, checkpoints and
resume. Read it top to bottom."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from preprocess.config import to_toml
from preprocess.regions import resolve_device
from preprocess.schema import read_manifest, shard_paths
from train import distributed as dist
from train.augment import augment
from train.checkpoint import export_backbone, load_checkpoint, save_checkpoint, set_rng_state, unwrap
from train.data import ShardStream, epoch_batches
from train.losses import false_negatives, info_nce
from train.models import build_model
from train.settings import TrainConfig


class TrainingStopped(RuntimeError):
    """The run cannot go on (diverged, bad input); the message says why in one line."""


def contrastive_step(z_local: torch.Tensor, region_local: torch.Tensor, speaker_local: torch.Tensor,
                     cfg: TrainConfig) -> dict:
    """InfoNCE (+ MaskFN) over the views of all ranks. Locally views are [instances; their positives]."""
    z = dist.all_gather_grad(z_local)
    v = len(z_local)
    m = v // 2
    local_pos = (torch.arange(v, device=z.device) + m) % v
    positive = (torch.arange(dist.world(), device=z.device)[:, None] * v + local_pos[None]).reshape(-1)
    false_neg = None
    if cfg.maskfn:
        region = dist.all_gather_nograd(region_local)
        speaker = dist.all_gather_nograd(speaker_local.repeat(2))
        false_neg = false_negatives(region, positive, speaker, cfg.n_fn)
    return info_nce(z, positive, cfg.temperature, false_neg, cfg.fn_weight, cfg.positive_in_denominator)


def lr_lambda(warm_steps: int, total_steps: int):
    """Constant for warm_steps, then cosine annealing to 0 at total_steps (per iteration)."""
    def f(step: int) -> float:
        if step < warm_steps or total_steps <= warm_steps:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm_steps) / (total_steps - warm_steps))))
    return f


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer={cfg.optimizer!r}: expected adam or sgd")


def plot_curves(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    keys = [k for k in ("loss", "l1", "l2", "top1", "lr") if k in rows[-1]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8))
    for ax, k in zip(axes, keys):
        ax.plot([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r], lw=1)
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def pretrain(shards: str | Path, run: str | Path, cfg: TrainConfig) -> dict:
    run = Path(run)
    device = resolve_device(cfg.device)
    rank, world, device = dist.setup(device)
    main = rank == 0
    cuda = device.startswith("cuda")

    # data: the manifest says how many clips there are and what the shards hold
    manifest = read_manifest(shards)
    files = shard_paths(shards, manifest)
    n_clips = len(set(manifest.column("key").to_pylist()))
    if cfg.batch_size % world:
        raise TrainingStopped(f"batch_size={cfg.batch_size} is not divisible by the {world} ranks")
    if cfg.faceswap and not any(manifest.column("has_swap").to_pylist()):
        raise TrainingStopped(f"faceswap=true but the shards in {shards} hold no FaceSwap composites "
                              f"(built with faceswap=false?)")
    steps_per_epoch = epoch_batches(n_clips, cfg)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)

    # model, optimiser, schedule
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    if cfg.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(round(cfg.warm_epochs * steps_per_epoch), total_steps))
    scaler = torch.amp.GradScaler(enabled=False)  # bf16 autocast needs no loss scaling; kept for checkpoints
    step = 0
    ckpt_dir = run / "checkpoints"
    resume_from = ckpt_dir / "last.pt" if cfg.resume == "auto" else (None if cfg.resume == "never"
                                                                       else Path(cfg.resume))
    if resume_from is not None and resume_from.is_file():
        state = load_checkpoint(resume_from)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = state["step"]
        if main:
            print(f"resumed from {resume_from} at step {step} (epoch {step // steps_per_epoch})")
    elif cfg.resume not in ("auto", "never"):
        raise TrainingStopped(f"resume={cfg.resume}: no such checkpoint")
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if cuda else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    if main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.toml").write_text(to_toml(cfg))
    log_path = run / "log.jsonl"
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 1000 + rank + step)
    local_anchors = cfg.batch_size // world
    last_ckpt = time.time()
    bad_steps = 0
    totals = {"hardneg_missing": 0, "swaps": 0, "anchors": 0, "skipped_steps": 0}
    history: list[dict] = []
    bar = tqdm(total=total_steps, initial=step, desc="pretrain", unit="step", disable=not main,
               dynamic_ncols=True)
    t_start = time.time()
    # one stream for the rest of the run: epochs only mark where the schedule and the checkpoint rule look
    stream = ShardStream(files, cfg, rank, world, total_steps - step, step, local_anchors, n_clips,
                         augment_here=not cuda and cfg.workers > 0)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers, pin_memory=cuda)
    epoch_top1: list[float] = []
    t_wait = time.perf_counter()
    for batch in loader:
        t_got = time.perf_counter()
        if "views" in batch:  # augmented by the loader workers (CPU training)
            x = batch["views"]
        else:
            images = batch["images"].to(device, non_blocking=True)
            boxes = batch["boxes"].to(device, non_blocking=True)
            x, _ = augment(images, boxes, cfg.image_size, gen, cfg.p_landmark_mask, cfg.p_colour, cfg.p_blur,
                           cfg.p_gray)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        half = len(x) // 2
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
            if cfg.method == "simclr":
                out = contrastive_step(train_model(x), batch["region"].to(device),
                                       batch["speaker"].to(device), cfg)
            else:
                if cfg.method == "byol":
                    unwrap(model).progress = step / max(total_steps, 1)
                out = train_model(x[:half], x[half:])
        loss = out["loss"]
        if not torch.isfinite(loss):
            bad_steps += 1
            totals["skipped_steps"] += 1
            optimizer.zero_grad(set_to_none=True)
            if bad_steps >= cfg.max_bad_steps:
                raise TrainingStopped(f"loss was not finite for {bad_steps} steps in a row (last at step "
                                      f"{step}); lower lr or check the shards")
            continue
        bad_steps = 0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        if cuda:
            torch.cuda.synchronize()
        t_done = time.perf_counter()
        stats = batch["stats"]
        totals["hardneg_missing"] += int(stats["hardneg_missing"])
        totals["swaps"] += int(stats["swaps"])
        totals["anchors"] += local_anchors
        top1 = float(dist.all_reduce_mean(out["top1"].detach()))
        epoch_top1.append(top1)
        record = {"step": step, "epoch": (step - 1) // steps_per_epoch, "loss": float(loss.detach()),
                  "l1": float(out["l1"].detach()), "top1": top1, "lr": scheduler.get_last_lr()[0],
                  "images_per_s": len(x) * world / (t_done - t_wait),
                  "data_wait": (t_got - t_wait) / (t_done - t_wait),
                  "hardneg_missing": int(stats["hardneg_missing"]), "swaps": int(stats["swaps"])}
        if "l2" in out:
            record["l2"] = float(out["l2"].detach())
        if cuda:
            record["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
        history.append(record)
        if main and step % cfg.log_every == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix_str(f"loss {record['loss']:.3f} top1 {top1:.2f} {record['images_per_s']:.0f} img/s "
                                f"wait {record['data_wait']:.0%}")
        bar.update(1)
        if main and time.time() - last_ckpt > cfg.ckpt_minutes * 60:
            save_checkpoint(ckpt_dir / "last.pt", model, optimizer, scheduler, scaler, step // steps_per_epoch,
                            step, cfg)
            last_ckpt = time.time()
        if step % steps_per_epoch == 0:  # the paper's rule: every 5 epochs once top-1 reaches 60%
            epoch_done = step // steps_per_epoch
            if main and epoch_done % 5 == 0 and sum(epoch_top1) / len(epoch_top1) >= 0.6:
                save_checkpoint(ckpt_dir / f"epoch-{epoch_done:04d}.pt", model, optimizer, scheduler, scaler,
                                epoch_done, step, cfg)
            epoch_top1 = []
        t_wait = time.perf_counter()
    bar.close()
    summary = {"run": str(run), "steps": step, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
               "clips": n_clips, "shards": len(files), "world": world, "device": device,
               "seconds": round(time.time() - t_start, 1), **totals}
    if main:
        end_epoch = min(epochs, math.ceil(step / steps_per_epoch))
        save_checkpoint(ckpt_dir / "last.pt", model, optimizer, scheduler, scaler, end_epoch, step, cfg)
        export_backbone(model, run / "backbone.pt")
        if log_path.is_file():
            plot_curves(log_path, run / "curves.png")
        if history:
            summary.update({k: history[-1][k] for k in ("loss", "top1")})
            summary["top1_first"] = history[0]["top1"]
        (run / "summary.json").write_text(json.dumps(summary, indent=2))
    dist.cleanup()
    return summary
