"""The pretraining loop: shards -> batches -> augment -> model -> loss -> step, with logging, checkpoints and
resume. Read it top to bottom."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from sslfer.augment import augment
from sslfer.config import to_toml
from sslfer.device import resolve_device
from sslfer.progress import progress
from sslfer.shards.index import ShardIndex
from sslfer.shards.schema import manifest_file, shard_paths
from sslfer.shards.tar import warm_tar_index
from train import distributed as dist, runinfo
from train.checkpoint import (export_backbone, load_checkpoint, save_checkpoint, set_rng_state, settings_diff,
                              unwrap)
from train.data import BatchStream, anchors_per_step, augment_options, step_seed
from train.losses import false_negatives, info_nce, near_duplicates
from train.models import build_model
from train.plan import steps_per_epoch as plan_steps
from train.preemption import Stopped, StopSignals, close_loader, ignore_in_worker
from train.settings import TrainConfig


class TrainingStopped(RuntimeError):
    """The run cannot go on (diverged, bad input); the message says why in one line."""


def contrastive_step(z_local: torch.Tensor, region_local: torch.Tensor, speaker_local: torch.Tensor,
                     clip_local: torch.Tensor, time_local: torch.Tensor, cfg: TrainConfig) -> dict:
    """InfoNCE (+ MaskFN) over the views of all ranks. Locally views are [instances; their positives]; two
    views of one clip closer than T2 (hardneg_gap) from different groups are neither positive nor negative."""
    z = dist.all_gather_grad(z_local)
    v = len(z_local)
    positive = (torch.arange(dist.world(), device=z.device)[:, None] * v
                + (torch.arange(v, device=z.device) + v // 2) % v).reshape(-1)
    ignore = near_duplicates(dist.all_gather_nograd(clip_local), dist.all_gather_nograd(time_local),
                             cfg.hardneg_gap, view_groups(dist.world(), v, cfg.hardneg, z.device))
    false_neg = None
    if cfg.maskfn:
        region = dist.all_gather_nograd(region_local)
        speaker = dist.all_gather_nograd(speaker_local.repeat(2))
        false_neg = false_negatives(region, positive, speaker, cfg.n_fn)
    return info_nce(z, positive, cfg.temperature, false_neg, cfg.fn_weight, cfg.positive_in_denominator, ignore)


def view_groups(world: int, views_per_rank: int, hardneg: bool, device=None) -> torch.Tensor:
    """Group of each gathered view: a rank's views are [anchors, hard negatives; their positives], and anchor i,
    its hard negative (instance anchors + i) and both positives form one group."""
    local = torch.arange(views_per_rank, device=device) % (views_per_rank // 2)
    if hardneg:
        local = local % (views_per_rank // 4)
    return (torch.arange(world, device=device)[:, None] * views_per_rank + local[None]).reshape(-1)


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

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] \
        if log_path.is_file() else []
    if not rows:
        return
    keys = [k for k in ("loss", "l1", "l2", "top1", "lr", "monitor_expr_knn", "monitor_id_knn")
            if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r], lw=1,
                marker="o" if k.startswith("monitor") else None, ms=3)
        ax.set_title({"monitor_expr_knn": "expression kNN acc", "monitor_id_knn": "FR-KNN acc (identity)"}.get(k, k))
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def shows(path: Path, text: str, wait_s: float = 60.0) -> bool:
    """Whether the file holds text, waiting up to wait_s for it: another node's write may reach a network
    file system's client cache seconds later."""
    deadline = time.time() + wait_s
    while True:
        if path.is_file() and text in path.read_text():
            return True
        if time.time() > deadline:
            return False
        time.sleep(1.0)


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


def shard_index(shards: Path, rank: int, world: int) -> ShardIndex:
    """The shards' index on every rank: each rank first caches its share of the tar indexes, then rank 0 builds the
    index from the cache and sends it to the others, so that all of them plan alike."""
    if world > 1:  # the shard list from rank 0 (the others need not read the manifest)
        warm_tar_index(shards, dist.broadcast_object(shard_paths(shards) if rank == 0 else None), rank, world)
        dist.gather_objects(None)  # every share cached before rank 0 reads them all
    return dist.broadcast_object(ShardIndex.build(shards) if rank == 0 else None)


def resume_point(run: Path, cfg: TrainConfig) -> Path | None:
    """The checkpoint this launch continues (decided on rank 0), None for a fresh start."""
    if cfg.resume in ("auto", "force"):
        last = run / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    if cfg.resume == "never":
        return None
    if not Path(cfg.resume).is_file():
        raise TrainingStopped(f"resume={cfg.resume}: no such checkpoint")
    return Path(cfg.resume)


def refuse_other_settings(state: dict, resume_from: Path, now: dict, cfg: TrainConfig) -> list[str]:
    """resume=auto continues a run only with the settings it was started with; returns the differences
    (allowed with resume=force)."""
    saved = {**state.get("config", {}), **state.get("run", {})}
    diff = settings_diff(saved, now)
    if diff and cfg.resume == "auto":
        raise TrainingStopped(f"{resume_from} was made with other settings: {'; '.join(diff)}. resume=force "
                              f"continues it anyway, resume=never starts the run over, or choose another run folder")
    return diff


class TensorBoard:
    """logger=tensorboard: every numeric field of the log rows as a scalar in RUN/tensorboard/."""

    def __init__(self, run: Path):
        try:  # at start, so that a missing package stops the run before any work
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainingStopped("logger=tensorboard needs the tensorboard package: "
                                  ".venv/bin/pip install -e '.[tensorboard]' (or logger=jsonl)") from None
        self.folder, self.make_writer, self.writer = run / "tensorboard", SummaryWriter, None

    def write(self, record: dict) -> None:
        if self.writer is None:
            self.writer = self.make_writer(str(self.folder))
        for k, v in record.items():
            if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def pretrain(shards: str | Path, run: str | Path, cfg: TrainConfig, preset: str | None = None,
             argv: list[str] | None = None) -> dict:
    """Train, resuming RUN when it holds a checkpoint. Raises Stopped after checkpointing when SIGUSR1 or
    SIGTERM arrives (the scheduler's), TrainingStopped when the run cannot go on."""
    signals = StopSignals() if threading.current_thread() is threading.main_thread() else None
    try:
        return train_run(shards, Path(run), cfg, preset, argv, signals)
    finally:
        if signals:
            signals.restore()


def train_run(shards: str | Path, run: Path, cfg: TrainConfig, preset: str | None, argv: list[str] | None,
              signals: StopSignals | None) -> dict:
    device = resolve_device(cfg.device)
    rank, world, device = dist.setup(device, cfg.dist_timeout_min)
    main = rank == 0
    cuda = device.startswith("cuda")
    launch, launch_warnings = runinfo.gather_launch(device, cfg.device, (dist.launch_env() or {}).get(
        "launcher", "single process"), list(argv if argv is not None else sys.argv))
    if main:
        print(runinfo.startup_line(launch), flush=True)
        for w in launch_warnings:
            print(f"warning: {w}", flush=True)
    if cfg.logger not in ("jsonl", "tensorboard"):
        raise TrainingStopped(f"logger={cfg.logger!r}: expected jsonl or tensorboard")
    tensorboard = TensorBoard(run) if cfg.logger == "tensorboard" else None  # every rank checks the package
    logger = tensorboard if main else None

    # data: the manifest says what the shards hold; the index says where each clip sample lies
    meta = manifest_file(shards).schema_arrow.metadata or {}
    anchors = check_batch_size(cfg, world)
    index = shard_index(Path(shards), rank, world)
    if cfg.faceswap and not index.composites:
        raise TrainingStopped(f"faceswap=true but the shards in {shards} hold no FaceSwap composites "
                              f"(built with faceswap=false?)")
    descriptor = meta.get(b"region_descriptor", b"").decode() or "none"
    if main and cfg.maskfn and descriptor != "resnet18":
        print(f"warning: MaskFN runs on the shards' region descriptor {descriptor!r} "
              f"({meta.get(b'region_dim', b'0').decode()}-d), not the paper's ImageNet ResNet18 eye+mouth "
              f"features: rebuild the shards with region_descriptor=resnet18 for the paper's method", flush=True)
    if main:
        for problem in index.problems:
            print(f"warning: {problem}")
    if len(index) == 0:
        raise TrainingStopped(f"no readable clip sample in the shards of {shards}: rebuild them with `make shards`")
    n_clips = len(index)
    steps_per_epoch = plan_steps(n_clips, anchors, cfg.anchors_per_clip)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    settings = {"preset": preset, **dataclasses.asdict(cfg), "shards": index.fingerprint()}

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
    # rank 0 decides; every rank must then see the same file (a run folder on storage all nodes share)
    try:
        resume_from, resume_error = (resume_point(run, cfg) if main else None), None
    except TrainingStopped as e:
        resume_from, resume_error = None, str(e)
    resume_from, resume_error = dist.broadcast_object((resume_from, resume_error))
    if resume_error:
        raise TrainingStopped(resume_error)
    if not dist.all_true(resume_from is None or resume_from.is_file(), device):
        raise TrainingStopped(f"some rank cannot see {resume_from}: with several nodes the run folder must be on "
                              f"storage every node shares")
    diff: list[str] = []
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        diff = refuse_other_settings(state, resume_from, settings, cfg)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = state["step"]
        if main:
            truncate_log(log_path, step)
            print(f"resumed from {resume_from} at step {step} (epoch {step // steps_per_epoch})"
                  + (f"; with other settings (resume=force): {'; '.join(diff)}" if diff else ""), flush=True)
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

    # the run record: one line per launch; every rank checks it can read it (shared storage)
    token = dist.broadcast_object(f"{time.time_ns()}-{os.getpid()}" if main else None)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.toml").write_text(to_toml(cfg))
        append_jsonl(run / "launches.jsonl", {"token": token, **launch, "preset": preset, "shards": str(shards),
                                              "shards_fingerprint": settings["shards"],
                                              "region_descriptor": descriptor,
                                              "resumed_from": str(resume_from) if resume_from else None,
                                              "resumed_step": step, "settings_changed": diff})
    dist.all_true(True, device)  # rank 0 has written it
    launches = run / "launches.jsonl"
    if not dist.all_true(shows(launches, token), device):
        raise TrainingStopped(f"some rank cannot read {launches}, which rank 0 has just written: with several "
                              f"nodes the run folder must be on storage every node shares")

    def checkpoint(path: Path, epoch: int) -> None:
        # the data stream's position is the step: every step's batch and augmentation are seeded by it
        save_checkpoint(path, model, optimizer, scheduler, scaler, epoch, step, cfg,
                        {"data": {"step": step, "epoch": step // steps_per_epoch,
                                  "step_in_epoch": step % steps_per_epoch, "clips": n_clips},
                         "monitor_best": monitor_best, "run": {"preset": preset, "shards": settings["shards"]}})

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
    stop_signal = 0
    counted = ("distinct_clips", "hardneg_missing", "hardneg_other_clip", "hardneg_close", "swaps", "unreadable")
    totals = {k: 0 for k in counted + ("masked_pairs", "anchors", "skipped_steps")}
    history: list[dict] = []
    bar = progress(total=total_steps, initial=step, desc="pretrain", unit="step", disable=not main,
                   dynamic_ncols=True)
    t_start = time.time()
    # one stream for the rest of the run: epochs only mark where the plan, the schedule and the checkpoint
    # rule turn over
    stream = BatchStream(index, cfg, rank, world, step, total_steps, steps_per_epoch,
                         augment_here=not cuda and cfg.workers > 0)
    epoch_top1: list[float] = []
    if monitor and step == 0:  # the starting point of the curves
        first = {"step": 0, **watch()}
        append_jsonl(log_path, first)
        if logger:
            logger.write(first)
        plot_curves(log_path, run / "curves.png")
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers, pin_memory=cuda,
                                              worker_init_fn=ignore_in_worker))
    try:
        while step < total_steps and not stop_signal:
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
            # one collective for two decisions: skip the step (a rank's loss is not finite), stop after it (a
            # rank caught SIGUSR1/SIGTERM; the highest signal number wins, so SIGTERM over SIGUSR1)
            not_finite, stop_signal = dist.reduce_max([0 if bool(torch.isfinite(loss)) else 1,
                                                       signals.received or 0 if signals else 0], device)
            if not_finite:  # every rank skips the step together
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
                local = [float(out["top1"].detach())] + [stats[k] for k in counted]
                summed = dist.all_reduce_mean(torch.tensor(local, dtype=torch.float64, device=device)) * world
                top1 = float(summed[0]) / world
                counts = {k: int(round(float(v))) for k, v in zip(counted, summed[1:])}
                counts["masked_pairs"] = int(float(out.get("masked_pairs", 0)))
                for k, v in counts.items():
                    totals[k] += v
                totals["anchors"] += anchors
                epoch_top1.append(top1)
                record = {"step": step, "epoch": (step - 1) // steps_per_epoch, "loss": float(loss.detach()),
                          "l1": float(out["l1"].detach()), "top1": top1, "lr": scheduler.get_last_lr()[0],
                          "images_per_s": len(x) * world / (t_done - t_wait),
                          "data_wait": (t_got - t_wait) / (t_done - t_wait), "anchors": anchors,
                          **{k: v for k, v in counts.items() if v or k != "unreadable"}}
                if cfg.faceswap or cfg.cutmix:  # realised: a positive without a composite stays the face itself
                    record["swap_rate"] = counts["swaps"] / cfg.batch_size
                if "l2" in out:
                    record["l2"] = float(out["l2"].detach())
                if cuda:
                    record["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
            watched = monitor and (step % cfg.monitor_every == 0 or step == total_steps)
            if watched:
                record.update(watch())
            history.append(record)
            if main and (step % cfg.log_every == 0 or watched or "skipped" in record):
                append_jsonl(log_path, record)
                if logger:
                    logger.write(record)
                if "loss" in record:
                    bar.set_postfix_str(f"loss {record['loss']:.3f} top1 {record['top1']:.2f} "
                                        f"{record['images_per_s']:.0f} img/s wait {record['data_wait']:.0%}")
                if watched:
                    plot_curves(log_path, run / "curves.png")
            bar.update(1)
            if main and (time.time() - last_ckpt > cfg.ckpt_minutes * 60
                         or (cfg.ckpt_every and step % cfg.ckpt_every == 0)):
                checkpoint(ckpt_dir / "last.pt", step // steps_per_epoch)
                plot_curves(log_path, run / "curves.png")
                last_ckpt = time.time()
            if step % steps_per_epoch == 0:  # the paper's rule: every 5 epochs once top-1 reaches 60%
                epoch_done = step // steps_per_epoch
                if main and epoch_done % 5 == 0 and epoch_top1 and sum(epoch_top1) / len(epoch_top1) >= 0.6:
                    checkpoint(ckpt_dir / f"epoch-{epoch_done:04d}.pt", epoch_done)
                epoch_top1 = []
    finally:
        close_loader(loader)
        bar.close()
    if logger:
        logger.close()
    if stop_signal and step < total_steps:
        if main:
            checkpoint(ckpt_dir / "last.pt", step // steps_per_epoch)
            plot_curves(log_path, run / "curves.png")
            append_jsonl(run / "launches.jsonl", {"token": token, "stopped": signal.Signals(stop_signal).name,
                                                  "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        dist.all_true(True, device)  # the checkpoint is written before any rank exits
        dist.cleanup()
        raise Stopped(stop_signal, step, rank)
    summary = {"run": str(run), "steps": step, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
               "clips": n_clips, "shards": len(index.paths), "world": world, "device": device,
               "batch_size": cfg.batch_size, "seconds": round(time.time() - t_start, 1),
               "maskfn_descriptor": descriptor if cfg.maskfn else None, **totals}
    if cfg.faceswap or cfg.cutmix:
        positives = totals["anchors"] // anchors * cfg.batch_size  # of the steps trained in this launch
        summary["swap_rate"] = round(totals["swaps"] / max(1, positives), 4)
    if main:
        end_epoch = min(epochs, math.ceil(step / steps_per_epoch))
        checkpoint(ckpt_dir / "last.pt", end_epoch)
        export_backbone(model, run / "backbone.pt", cfg.arch, cfg.image_size,
                        {"trained_with": {"preset": preset, "steps": step, "epochs": end_epoch,
                                          "git_commit": runinfo.git_commit(), "shards": str(shards),
                                          "maskfn_descriptor": descriptor if cfg.maskfn else None,
                                          "settings": dataclasses.asdict(cfg)}})
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
    dist.all_true(True, device)  # no rank ends before rank 0 has written the run's files
    dist.cleanup()
    return summary
