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
from preprocess.schema import read_manifest
from train import distributed as dist
from train.augment import augment
from train.checkpoint import export_backbone, load_checkpoint, save_checkpoint, set_rng_state, unwrap
from train.data import BatchStream, ShardIndex, anchors_per_step, augment_options, step_seed
from train.losses import false_negatives, info_nce, near_duplicates
from train.plan import steps_per_epoch as plan_steps
from train.models import build_model
from train.settings import TrainConfig


class TrainingStopped(RuntimeError):
    """The run cannot go on (diverged, bad input); the message says why in one line."""


def contrastive_step(z_local: torch.Tensor, region_local: torch.Tensor, speaker_local: torch.Tensor,
                     clip_local: torch.Tensor, time_local: torch.Tensor, cfg: TrainConfig) -> dict:
    """InfoNCE (+ MaskFN) over the views of all ranks. Locally views are [instances; their positives]; two
    views of one clip closer than T2 (hardneg_gap) are neither positive nor negative."""
    z = dist.all_gather_grad(z_local)
    v = len(z_local)
    m = v // 2
    local_pos = (torch.arange(v, device=z.device) + m) % v
    positive = (torch.arange(dist.world(), device=z.device)[:, None] * v + local_pos[None]).reshape(-1)
    ignore = near_duplicates(dist.all_gather_nograd(clip_local), dist.all_gather_nograd(time_local),
                             cfg.hardneg_gap)
    false_neg = None
    if cfg.maskfn:
        region = dist.all_gather_nograd(region_local)
        speaker = dist.all_gather_nograd(speaker_local.repeat(2))
        false_neg = false_negatives(region, positive, speaker, cfg.n_fn)
    return info_nce(z, positive, cfg.temperature, false_neg, cfg.fn_weight, cfg.positive_in_denominator, ignore)


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
    keys = [k for k in ("loss", "l1", "l2", "top1", "lr", "monitor_expr_knn", "monitor_id_knn")
            if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8))
    for ax, k in zip(axes, keys):
        ax.plot([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r], lw=1,
                marker="o" if k.startswith("monitor") else None, ms=3)
        ax.set_title({"monitor_expr_knn": "expression kNN acc", "monitor_id_knn": "FR-KNN acc (identity)"}.get(k, k))
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def truncate_log(log_path: Path, step: int) -> None:
    """On resume: drop the log rows of steps after the checkpoint (they will be made again)."""
    if log_path.is_file():
        rows = [line for line in log_path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        if len(kept) != len(rows):
            log_path.write_text("".join(line + "\n" for line in kept))


def check_batch_size(cfg: TrainConfig, world: int) -> int:
    """Anchors per step over all ranks; every rank gets the same number of anchors and instances."""
    anchors = anchors_per_step(cfg)
    if cfg.hardneg and cfg.batch_size % 2:
        raise TrainingStopped(f"batch_size={cfg.batch_size}: with hardneg it counts anchors and their hard "
                              f"negatives, so it must be even")
    if anchors % world or anchors == 0:
        raise TrainingStopped(f"batch_size={cfg.batch_size} gives {anchors} anchors per step, not divisible by the "
                              f"{world} ranks")
    return anchors


def pretrain(shards: str | Path, run: str | Path, cfg: TrainConfig) -> dict:
    run = Path(run)
    device = resolve_device(cfg.device)
    rank, world, device = dist.setup(device, cfg.dist_timeout_min)
    main = rank == 0
    cuda = device.startswith("cuda")

    # data: the manifest says what the shards hold; the index says where each clip sample lies
    manifest = read_manifest(shards)
    anchors = check_batch_size(cfg, world)
    if cfg.faceswap and not any(manifest.column("has_swap").to_pylist()):
        raise TrainingStopped(f"faceswap=true but the shards in {shards} hold no FaceSwap composites "
                              f"(built with faceswap=false?)")
    # built once (rank 0, cached per shard) and sent to the other ranks, so that all of them plan alike
    index = dist.broadcast_object(ShardIndex.build(Path(shards), manifest) if main else None)
    if main:
        for problem in index.problems:
            print(f"warning: {problem}")
    if len(index) == 0:
        raise TrainingStopped(f"no readable clip sample in the shards of {shards}: rebuild them with `make shards`")
    n_clips = len(index)
    steps_per_epoch = plan_steps(n_clips, anchors, cfg.anchors_per_clip)
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
    state: dict = {}
    ckpt_dir = run / "checkpoints"
    log_path = run / "log.jsonl"
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
            truncate_log(log_path, step)
            print(f"resumed from {resume_from} at step {step} (epoch {step // steps_per_epoch})")
    elif cfg.resume not in ("auto", "never"):
        raise TrainingStopped(f"resume={cfg.resume}: no such checkpoint")
    elif main and log_path.is_file():  # a fresh start: the log of an earlier attempt would repeat steps
        log_path.unlink()
    monitor_best = -1.0
    if step:  # best.pt may be newer than the checkpoint resumed from
        best_file = ckpt_dir / "best.pt"
        monitor_best = max(state.get("monitor_best", -1.0),
                           load_checkpoint(best_file).get("monitor_best", -1.0) if best_file.is_file() else -1.0)
    monitor, monitor_error = None, None
    if main and (cfg.monitor or cfg.monitor_identity):
        from train.monitor import Monitor

        try:
            monitor = Monitor(cfg, device)
            print(f"monitor: {monitor.describe()}")
        except (FileNotFoundError, ImportError) as e:
            monitor_error = f"monitor: {e}"
    if not dist.all_true(monitor_error is None, device):
        raise TrainingStopped("; ".join(dist.gather_messages(monitor_error)))
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if cuda else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    if main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.toml").write_text(to_toml(cfg))

    def checkpoint(path: Path, epoch: int) -> None:
        # the data stream's position is the step: every step's batch and augmentation are seeded by it
        save_checkpoint(path, model, optimizer, scheduler, scaler, epoch, step, cfg,
                        {"data": {"step": step, "epoch": step // steps_per_epoch,
                                  "step_in_epoch": step % steps_per_epoch, "clips": n_clips},
                         "monitor_best": monitor_best})

    def watch() -> dict:
        """The monitor's scores now (rank 0), and checkpoints/best.pt when the expression score improved."""
        nonlocal monitor_best
        scores = monitor(unwrap(model).backbone)
        if scores.get("monitor_expr_knn", -1.0) > monitor_best:
            monitor_best = scores["monitor_expr_knn"]
            checkpoint(ckpt_dir / "best.pt", step // steps_per_epoch)
        return scores

    gen = torch.Generator(device=device)
    last_ckpt = time.time()
    bad_steps = 0
    totals = {"hardneg_missing": 0, "hardneg_other_clip": 0, "swaps": 0, "anchors": 0, "skipped_steps": 0,
              "unreadable": 0, "masked_pairs": 0, "distinct_clips": 0}
    history: list[dict] = []
    bar = tqdm(total=total_steps, initial=step, desc="pretrain", unit="step", disable=not main,
               dynamic_ncols=True)
    t_start = time.time()
    # one stream for the rest of the run: epochs only mark where the plan, the schedule and the checkpoint
    # rule turn over
    stream = BatchStream(index, cfg, rank, world, step, total_steps, steps_per_epoch,
                         augment_here=not cuda and cfg.workers > 0)
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers, pin_memory=cuda))
    epoch_top1: list[float] = []
    if monitor and step == 0:  # the starting point of the curves
        run.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as f:
            f.write(json.dumps({"step": 0, **watch()}) + "\n")
    while step < total_steps:
        t_wait = time.perf_counter()
        try:
            batch, error = next(loader), None
        except StopIteration:
            batch, error = None, "the data stream ended early"
        except Exception as e:  # noqa: BLE001 - any data error: every rank must hear of it, not wait forever
            # from a loader worker, the message ends with the original exception's last line
            lines = str(e).strip().splitlines()
            batch, error = None, (lines[-1] if len(lines) > 1 else f"{type(e).__name__}: {e}")
        if error is None and batch["step"] != step:
            error = f"internal: the data stream gave step {batch['step']}'s batch at step {step}"
        if not dist.all_true(error is None, device):
            raise TrainingStopped("data error, every rank stopped: " + "; ".join(dist.gather_messages(error)))
        t_got = time.perf_counter()
        if "views" in batch:  # augmented by the loader workers (CPU training)
            x = batch["views"]
        else:
            gen.manual_seed(step_seed(cfg.seed, step, rank))
            images = batch["images"].to(device, non_blocking=True)
            boxes = batch["boxes"].to(device, non_blocking=True)
            x, _ = augment(images, boxes, cfg.image_size, gen, **augment_options(cfg, len(images)))
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        half = len(x) // 2
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
            if cfg.method == "simclr":
                out = contrastive_step(train_model(x).float(), batch["region"].to(device),
                                       batch["speaker"].to(device), batch["clip"].to(device),
                                       batch["time"].to(device), cfg)
            else:
                if cfg.method == "byol":
                    unwrap(model).progress = step / max(total_steps, 1)
                out = train_model(x[:half], x[half:])
        loss = out["loss"]
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if not dist.all_true(bool(torch.isfinite(loss)), device):  # every rank skips the step together
            bad_steps += 1
            totals["skipped_steps"] += 1
            scheduler.step()
            if bad_steps >= cfg.max_bad_steps:
                raise TrainingStopped(f"loss was not finite for {bad_steps} steps in a row (last at step "
                                      f"{step}, on some rank); lower lr or check the shards")
            record = {"step": step, "epoch": (step - 1) // steps_per_epoch, "skipped": "loss not finite"}
        else:
            bad_steps = 0
            loss.backward()
            optimizer.step()
            scheduler.step()
            if cuda:
                torch.cuda.synchronize()
            t_done = time.perf_counter()
            stats = batch["stats"]
            local = [float(out["top1"].detach()), stats["distinct_clips"], stats["hardneg_missing"],
                     stats["hardneg_other_clip"], stats["swaps"], stats["unreadable"]]
            summed = dist.all_reduce_mean(torch.tensor(local, dtype=torch.float64, device=device)) * world
            top1 = float(summed[0]) / world
            distinct, missing, other, swaps, unreadable = (int(round(float(v))) for v in summed[1:])
            masked = int(float(out.get("masked_pairs", 0)))
            for k, v in (("hardneg_missing", missing), ("hardneg_other_clip", other), ("swaps", swaps),
                         ("unreadable", unreadable), ("masked_pairs", masked), ("distinct_clips", distinct)):
                totals[k] += v
            totals["anchors"] += anchors
            epoch_top1.append(top1)
            record = {"step": step, "epoch": (step - 1) // steps_per_epoch, "loss": float(loss.detach()),
                      "l1": float(out["l1"].detach()), "top1": top1, "lr": scheduler.get_last_lr()[0],
                      "images_per_s": len(x) * world / (t_done - t_wait),
                      "data_wait": (t_got - t_wait) / (t_done - t_wait),
                      "anchors": anchors, "distinct_clips": distinct, "masked_pairs": masked,
                      "hardneg_missing": missing, "hardneg_other_clip": other, "swaps": swaps}
            if "l2" in out:
                record["l2"] = float(out["l2"].detach())
            if unreadable:
                record["unreadable"] = unreadable
            if cuda:
                record["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
        if monitor and (step % cfg.monitor_every == 0 or step == total_steps):
            record.update(watch())
        history.append(record)
        if main and (step % cfg.log_every == 0 or "monitor_seconds" in record or "skipped" in record):
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if "loss" in record:
                bar.set_postfix_str(f"loss {record['loss']:.3f} top1 {record['top1']:.2f} "
                                    f"{record['images_per_s']:.0f} img/s wait {record['data_wait']:.0%}")
        bar.update(1)
        if main and (time.time() - last_ckpt > cfg.ckpt_minutes * 60
                     or (cfg.ckpt_every and step % cfg.ckpt_every == 0)):
            checkpoint(ckpt_dir / "last.pt", step // steps_per_epoch)
            last_ckpt = time.time()
        if step % steps_per_epoch == 0:  # the paper's rule: every 5 epochs once top-1 reaches 60%
            epoch_done = step // steps_per_epoch
            if main and epoch_done % 5 == 0 and epoch_top1 and sum(epoch_top1) / len(epoch_top1) >= 0.6:
                checkpoint(ckpt_dir / f"epoch-{epoch_done:04d}.pt", epoch_done)
            epoch_top1 = []
    bar.close()
    summary = {"run": str(run), "steps": step, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
               "clips": n_clips, "shards": len(index.paths), "world": world, "device": device,
               "batch_size": cfg.batch_size, "seconds": round(time.time() - t_start, 1), **totals}
    if main:
        end_epoch = min(epochs, math.ceil(step / steps_per_epoch))
        checkpoint(ckpt_dir / "last.pt", end_epoch)
        export_backbone(model, run / "backbone.pt")
        if log_path.is_file():
            plot_curves(log_path, run / "curves.png")
        trained = [r for r in history if "loss" in r]
        if trained:
            summary.update({k: trained[-1][k] for k in ("loss", "top1")})
            summary["top1_first"] = trained[0]["top1"]
            watched = [r for r in history if "monitor_seconds" in r]
            if watched:
                summary.update({k: watched[-1][k] for k in ("monitor_expr_knn", "monitor_id_knn")
                                if k in watched[-1]})
                if monitor_best >= 0:
                    summary["monitor_expr_best"] = monitor_best
        (run / "summary.json").write_text(json.dumps(summary, indent=2))
    dist.cleanup()
    return summary
