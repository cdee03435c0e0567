"""The pretraining loop, in the order it runs: set up the processes, the data and the method; resume; write the
run record; then every step (batch -> augment -> method -> optimiser step -> log -> checkpoints); finish.
The SSL method (train/methods/) owns its loss, the batch builder (train/data.py) owns what a batch holds and
the statistics it counts; this file only runs them."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sslfer.augment import augment
from sslfer.config import to_toml
from sslfer.device import amp_dtype, resolve_amp, resolve_device
from sslfer.progress import progress
from sslfer.shards.index import ShardIndex
from sslfer.shards.schema import manifest_file, shard_paths
from sslfer.shards.tar import warm_tar_index
from train import distributed as dist, runinfo
from train.checkpoint import (export_backbone, load_checkpoint, save_checkpoint, set_rng_state, settings_diff,
                              unwrap)
from train.data import BATCH_COUNTS, BatchStream, anchors_per_step, augment_options, step_seed
from train.methods import build_method
from train.plan import steps_per_epoch as plan_steps
from train.preemption import Stopped, StopSignals, close_loader, ignore_in_worker
from train.settings import TrainConfig

# what a launch adds up over its steps: the batch builder's counts, and the loop's own
STEP_TOTALS = BATCH_COUNTS + ("masked_pairs", "anchors", "skipped_steps")
CURVES = ("loss", "l1", "l2", "top1", "lr", "monitor_expr_knn", "monitor_id_knn")


class TrainingStopped(RuntimeError):
    """The run cannot go on (diverged, bad input); the message says why in one line."""


@dataclass
class Launch:
    """Everything one launch of a run holds, filled phase by phase."""
    cfg: TrainConfig
    shards: Path
    run: Path
    preset: str | None
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    amp: str = "off"
    launch: dict = field(default_factory=dict)
    logger: object = None
    # data
    index: ShardIndex | None = None
    descriptor: str = "none"
    anchors: int = 0
    steps_per_epoch: int = 1
    total_steps: int = 0
    settings: dict = field(default_factory=dict)
    # method and optimisation
    model: torch.nn.Module | None = None
    train_model: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    scaler: object = None
    # progress
    step: int = 0
    resumed_from: Path | None = None
    settings_changed: list = field(default_factory=list)
    monitor: object = None
    monitor_best: float = -1.0
    token: str = ""
    totals: dict = field(default_factory=lambda: dict.fromkeys(STEP_TOTALS, 0))
    history: list = field(default_factory=list)
    epoch_top1: list = field(default_factory=list)
    bad_steps: int = 0
    last_ckpt: float = field(default_factory=time.time)
    started: float = 0.0
    time_up: bool = False  # max_minutes reached: the run ends as if its steps were done

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def log_path(self) -> Path:
        return self.run / "log.jsonl"

    @property
    def ckpt_dir(self) -> Path:
        return self.run / "checkpoints"


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
    r = Launch(cfg, Path(shards), run, preset)
    start_processes(r, argv)
    open_data(r)
    build_method_and_optimiser(r)
    resume(r)
    open_monitor(r)
    record_launch(r)
    stop_signal = run_steps(r, signals)
    if stop_signal and r.step < r.total_steps:
        stop(r, stop_signal)
    return finish(r)


# ---------------------------------------------------------------- set-up
def start_processes(r: Launch, argv: list[str] | None) -> None:
    """Device and process group; the start-up line; the logger (every rank checks its package)."""
    cfg = r.cfg
    r.rank, r.world, r.device = dist.setup(resolve_device(cfg.device), cfg.dist_timeout_min)
    r.amp = resolve_amp(cfg.amp, r.device)
    r.launch, launch_warnings = runinfo.gather_launch(r.device, cfg.device, (dist.launch_env() or {}).get(
        "launcher", "single process"), list(argv if argv is not None else sys.argv), r.amp)
    if r.main:
        print(runinfo.startup_line(r.launch), flush=True)
        for w in launch_warnings:
            print(f"warning: {w}", flush=True)
    if cfg.logger not in ("jsonl", "tensorboard"):
        raise TrainingStopped(f"logger={cfg.logger!r}: expected jsonl or tensorboard")
    tensorboard = TensorBoard(r.run) if cfg.logger == "tensorboard" else None
    r.logger = tensorboard if r.main else None


def open_data(r: Launch) -> None:
    """The manifest says what the shards hold; the index says where each clip sample lies; the plan's sizes."""
    cfg, shards = r.cfg, r.shards
    meta = manifest_file(shards).schema_arrow.metadata or {}
    r.anchors = check_batch_size(cfg, r.world)
    r.index = index = shard_index(shards, r.rank, r.world)
    if cfg.faceswap and not index.composites:
        raise TrainingStopped(f"faceswap=true but the shards in {shards} hold no FaceSwap composites "
                              f"(built with faceswap=false?)")
    r.descriptor = meta.get(b"region_descriptor", b"").decode() or "none"
    if r.main and cfg.maskfn and r.descriptor != "resnet18":
        print(f"warning: MaskFN runs on the shards' region descriptor {r.descriptor!r} "
              f"({meta.get(b'region_dim', b'0').decode()}-d), not the paper's ImageNet ResNet18 eye+mouth "
              f"features: rebuild the shards with region_descriptor=resnet18 for the paper's method", flush=True)
    if r.main:
        for problem in index.problems:
            print(f"warning: {problem}")
    if len(index) == 0:
        raise TrainingStopped(f"no readable clip sample in the shards of {shards}: rebuild them with `make shards`")
    r.steps_per_epoch = plan_steps(len(index), r.anchors, cfg.anchors_per_clip)
    r.total_steps = cfg.max_steps or cfg.epochs * r.steps_per_epoch
    r.settings = {"preset": r.preset, **dataclasses.asdict(cfg), "shards": index.fingerprint()}


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


def build_method_and_optimiser(r: Launch) -> None:
    cfg = r.cfg
    torch.manual_seed(cfg.seed)
    model = build_method(cfg).to(r.device)
    if cfg.sync_bn and r.world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if r.cuda:
        model = model.to(memory_format=torch.channels_last)
    r.model = model
    r.optimizer = make_optimizer(model, cfg)
    r.scheduler = torch.optim.lr_scheduler.LambdaLR(
        r.optimizer, lr_lambda(round(cfg.warm_epochs * r.steps_per_epoch), r.total_steps))
    r.scaler = torch.amp.GradScaler(r.device.split(":")[0], enabled=r.amp == "fp16")  # bf16 needs no scaling
    if r.amp == "fp16":  # the scaler skips the steps whose gradients overflow (the first few, while it finds its
        # scale); the schedule goes on, as torch's AMP recipe does: not a mistake to warn about
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer={cfg.optimizer!r}: expected adam or sgd")


def lr_lambda(warm_steps: int, total_steps: int):
    """Constant for warm_steps, then cosine annealing to 0 at total_steps (per iteration)."""
    def f(step: int) -> float:
        if step < warm_steps or total_steps <= warm_steps:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm_steps) / (total_steps - warm_steps))))
    return f


# ---------------------------------------------------------------- resume
def resume(r: Launch) -> None:
    """Continue from the checkpoint rank 0 chose (every rank must see the same file: a run folder on storage all
    nodes share), or start fresh."""
    try:
        chosen, error = (resume_point(r.run, r.cfg) if r.main else None), None
    except TrainingStopped as e:
        chosen, error = None, str(e)
    chosen, error = dist.broadcast_object((chosen, error))
    if error:
        raise TrainingStopped(error)
    if not dist.all_true(chosen is None or chosen.is_file(), r.device):
        raise TrainingStopped(f"some rank cannot see {chosen}: with several nodes the run folder must be on "
                              f"storage every node shares")
    if chosen is None:
        if r.main and r.log_path.is_file():  # a fresh start: the log of an earlier attempt would repeat steps
            r.log_path.unlink()
        return
    state = load_checkpoint(chosen)
    r.settings_changed = refuse_other_settings(state, chosen, r.settings, r.cfg)
    unwrap(r.model).load_state_dict(state["model"])
    r.optimizer.load_state_dict(state["optimizer"])
    r.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):  # empty when saved by a run without fp16
        r.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    r.step, r.resumed_from = state["step"], chosen
    best_file = r.ckpt_dir / "best.pt"  # best.pt may be newer than the checkpoint resumed from
    r.monitor_best = max(state.get("monitor_best", -1.0),
                         load_checkpoint(best_file).get("monitor_best", -1.0) if best_file.is_file() else -1.0)
    if r.main:
        truncate_log(r.log_path, r.step)
        diff = r.settings_changed
        print(f"resumed from {chosen} at step {r.step} (epoch {r.step // r.steps_per_epoch})"
              + (f"; with other settings (resume=force): {'; '.join(diff)}" if diff else ""), flush=True)


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


def truncate_log(log_path: Path, step: int) -> None:
    """On resume: drop the log rows of steps after the checkpoint (they will be made again)."""
    if log_path.is_file():
        rows = [line for line in log_path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        if len(kept) != len(rows):
            log_path.write_text("".join(line + "\n" for line in kept))


def open_monitor(r: Launch) -> None:
    """The expression/identity monitor on rank 0 (monitor=...); every rank stops if it cannot be opened. DDP and
    torch.compile wrap the method after it, so the monitor reads the plain backbone."""
    error = None
    if r.main and (r.cfg.monitor or r.cfg.monitor_identity):
        from train.monitor import Monitor

        try:
            r.monitor = Monitor(r.cfg, r.device)
            print(f"monitor: {r.monitor.describe()}")
        except (FileNotFoundError, ImportError) as e:
            error = f"monitor: {e}"
    if not dist.all_true(error is None, r.device):
        raise TrainingStopped("; ".join(dist.gather_messages(error)))
    r.train_model = r.model
    if r.world > 1:
        r.train_model = torch.nn.parallel.DistributedDataParallel(r.model, device_ids=[r.device] if r.cuda else None)
    if r.cfg.compile:
        r.train_model = torch.compile(r.train_model)


# ---------------------------------------------------------------- the run record
def record_launch(r: Launch) -> None:
    """One line per launch in RUN/launches.jsonl (and the resolved config); every rank checks it can read it."""
    r.token = dist.broadcast_object(f"{time.time_ns()}-{os.getpid()}" if r.main else None)
    if r.main:
        r.run.mkdir(parents=True, exist_ok=True)
        (r.run / "config.toml").write_text(to_toml(r.cfg))
        append_jsonl(r.run / "launches.jsonl", {
            "token": r.token, **r.launch, "preset": r.preset, "shards": str(r.shards),
            "shards_fingerprint": r.settings["shards"], "region_descriptor": r.descriptor,
            "resumed_from": str(r.resumed_from) if r.resumed_from else None, "resumed_step": r.step,
            "settings_changed": r.settings_changed})
    dist.all_true(True, r.device)  # rank 0 has written it
    launches = r.run / "launches.jsonl"
    if not dist.all_true(shows(launches, r.token), r.device):
        raise TrainingStopped(f"some rank cannot read {launches}, which rank 0 has just written: with several "
                              f"nodes the run folder must be on storage every node shares")


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


def append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------- the steps
def run_steps(r: Launch, signals: StopSignals | None) -> int:
    """Steps until the end or a stop signal (returned: 0 for none). One stream for the rest of the run: epochs
    only mark where the plan, the schedule and the checkpoint rule turn over."""
    cfg = r.cfg
    r.started = time.time()
    bar = progress(total=r.total_steps, initial=r.step, desc="pretrain", unit="step", disable=not r.main,
                   dynamic_ncols=True)
    stream = BatchStream(r.index, cfg, r.rank, r.world, r.step, r.total_steps, r.steps_per_epoch,
                         augment_here=not r.cuda and cfg.workers > 0)
    if r.monitor and r.step == 0:  # the starting point of the curves
        write_log(r, {"step": 0, **watch(r)})
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers, pin_memory=r.cuda,
                                              worker_init_fn=ignore_in_worker))
    gen = torch.Generator(device=r.device)
    stop_signal = 0
    try:
        while r.step < r.total_steps and not stop_signal and not r.time_up:
            t_wait = time.perf_counter()
            batch = next_batch(r, loader)
            t_got = time.perf_counter()
            record, stop_signal = train_step(r, batch, gen, signals, t_wait, t_got)
            after_step(r, record, bar)
    finally:
        close_loader(loader)
        bar.close()
    if r.logger:
        r.logger.close()
    return stop_signal


def next_batch(r: Launch, loader) -> dict:
    """The step's batch on every rank, or every rank stops with the reasons of those that have none."""
    try:
        batch, error = next(loader), None
    except StopIteration:
        batch, error = None, "the data stream ended early"
    except Exception as e:  # noqa: BLE001 - any data error: every rank must hear of it, not wait forever
        # from a loader worker, the message ends with the original exception's last line
        lines = str(e).strip().splitlines()
        batch, error = None, (lines[-1] if len(lines) > 1 else f"{type(e).__name__}: {e}")
    if error is None and batch["step"] != r.step:
        error = f"internal: the data stream gave step {batch['step']}'s batch at step {r.step}"
    if not dist.all_true(error is None, r.device):
        raise TrainingStopped("data error, every rank stopped: " + "; ".join(dist.gather_messages(error)))
    return batch


def views_of(r: Launch, batch: dict, gen: torch.Generator) -> torch.Tensor:
    """The augmented views: made by the loader workers on a CPU run, here (on the GPU) otherwise."""
    if "views" in batch:
        x = batch["views"]
    else:
        gen.manual_seed(step_seed(r.cfg.seed, r.step, r.rank))
        images = batch["images"].to(r.device, non_blocking=True)
        boxes = batch["boxes"].to(r.device, non_blocking=True)
        x, _ = augment(images, boxes, r.cfg.image_size, gen, **augment_options(r.cfg, len(images)))
    return x.contiguous(memory_format=torch.channels_last) if r.cuda else x


def train_step(r: Launch, batch: dict, gen: torch.Generator, signals: StopSignals | None, t_wait: float,
               t_got: float) -> tuple[dict, int]:
    """One optimiser step (or a skipped one, on every rank, when some rank's loss is not finite); its log record
    and the stop signal any rank caught."""
    cfg = r.cfg
    x = views_of(r, batch, gen)
    inputs = {k: batch[k].to(r.device) for k in ("region", "speaker", "clip", "time")}
    unwrap(r.model).begin_step(r.step, r.total_steps)
    with torch.autocast(r.device.split(":")[0], dtype=amp_dtype(r.amp), enabled=r.amp != "off"):
        out = r.train_model(x, inputs)
    loss = out["loss"]
    r.optimizer.zero_grad(set_to_none=True)
    r.step += 1
    # one collective for three decisions: skip the step (a rank's loss is not finite), stop after it (a rank caught
    # SIGUSR1/SIGTERM; the highest signal number wins, so SIGTERM over SIGUSR1), end after it (rank 0's clock says
    # max_minutes have passed)
    time_up = r.main and cfg.max_minutes > 0 and time.time() - r.started >= 60 * cfg.max_minutes
    not_finite, stop_signal, r.time_up = dist.reduce_max([0 if bool(torch.isfinite(loss)) else 1,
                                                          signals.received or 0 if signals else 0, int(time_up)],
                                                         r.device)
    if not_finite:
        return skip_step(r), stop_signal
    r.bad_steps = 0
    r.scaler.scale(loss).backward()  # the loss as it is unless amp=fp16
    r.scaler.step(r.optimizer)
    r.scaler.update()
    r.scheduler.step()
    if r.cuda:
        torch.cuda.synchronize()
    t_done = time.perf_counter()
    record = step_record(r, batch, out, len(x))
    record.update(images_per_s=len(x) * r.world / (t_done - t_wait), data_wait=(t_got - t_wait) / (t_done - t_wait))
    return record, stop_signal


def skip_step(r: Launch) -> dict:
    r.bad_steps += 1
    r.totals["skipped_steps"] += 1
    r.scheduler.step()
    if r.bad_steps >= r.cfg.max_bad_steps:
        raise TrainingStopped(f"loss was not finite for {r.bad_steps} steps in a row (last at step {r.step}, on some "
                              f"rank); lower lr or check the shards")
    return {"step": r.step, "epoch": (r.step - 1) // r.steps_per_epoch, "skipped": "loss not finite"}


def step_record(r: Launch, batch: dict, out: dict, n_views: int) -> dict:
    """The step's log row: the method's outputs, and the batch's counts summed over the ranks."""
    local = [float(out["top1"].detach())] + [batch["stats"][k] for k in BATCH_COUNTS]
    summed = dist.all_reduce_mean(torch.tensor(local, dtype=torch.float64, device=r.device)) * r.world
    top1 = float(summed[0]) / r.world
    counts = {k: int(round(float(v))) for k, v in zip(BATCH_COUNTS, summed[1:])}
    counts["masked_pairs"] = int(float(out.get("masked_pairs", 0)))
    for k, v in counts.items():
        r.totals[k] += v
    r.totals["anchors"] += r.anchors
    r.epoch_top1.append(top1)
    record = {"step": r.step, "epoch": (r.step - 1) // r.steps_per_epoch, "loss": float(out["loss"].detach()),
              "l1": float(out["l1"].detach()), "top1": top1, "lr": r.scheduler.get_last_lr()[0], "images_per_s": 0.0,
              "data_wait": 0.0, "anchors": r.anchors, **{k: v for k, v in counts.items() if v or k != "unreadable"}}
    if r.cfg.faceswap or r.cfg.cutmix:  # realised: a positive without a composite stays the face itself
        record["swap_rate"] = counts["swaps"] / r.cfg.batch_size
    if "l2" in out:
        record["l2"] = float(out["l2"].detach())
    if r.cuda:
        record["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return record


def after_step(r: Launch, record: dict, bar) -> None:
    """The monitor, the log and the progress bar; checkpoints on their schedule."""
    cfg, step = r.cfg, r.step
    watched = r.monitor and (step % cfg.monitor_every == 0 or step == r.total_steps)
    if watched:
        record.update(watch(r))
    r.history.append(record)
    if r.main and (step % cfg.log_every == 0 or watched or "skipped" in record):
        write_log(r, record, plot=bool(watched))
        if "loss" in record:
            bar.set_postfix_str(f"loss {record['loss']:.3f} top1 {record['top1']:.2f} "
                                f"{record['images_per_s']:.0f} img/s wait {record['data_wait']:.0%}")
    bar.update(1)
    if r.main and (time.time() - r.last_ckpt > cfg.ckpt_minutes * 60
                   or (cfg.ckpt_every and step % cfg.ckpt_every == 0)):
        checkpoint(r, r.ckpt_dir / "last.pt", step // r.steps_per_epoch)
        plot_curves(r.log_path, r.run / "curves.png")
        r.last_ckpt = time.time()
    if step % r.steps_per_epoch == 0:  # the paper's rule: every 5 epochs once top-1 reaches 60%
        epoch_done = step // r.steps_per_epoch
        top1 = sum(r.epoch_top1) / len(r.epoch_top1) if r.epoch_top1 else 0.0
        if r.main and cfg.keep_every and epoch_done % cfg.keep_every == 0 and top1 >= cfg.keep_top1:
            checkpoint(r, r.ckpt_dir / f"epoch-{epoch_done:04d}.pt", epoch_done)
        r.epoch_top1 = []


def write_log(r: Launch, record: dict, plot: bool = True) -> None:
    append_jsonl(r.log_path, record)
    if r.logger:
        r.logger.write(record)
    if plot:
        plot_curves(r.log_path, r.run / "curves.png")


def watch(r: Launch) -> dict:
    """The monitor's scores now (rank 0), and checkpoints/best.pt when the expression score is at least the best
    so far: among trained steps only (step 0 is the untrained network), a tie going to the later step."""
    scores = r.monitor(unwrap(r.model).backbone)
    if r.step > 0 and scores.get("monitor_expr_knn", -1.0) >= r.monitor_best:
        r.monitor_best = scores["monitor_expr_knn"]
        checkpoint(r, r.ckpt_dir / "best.pt", r.step // r.steps_per_epoch)
    return scores


def checkpoint(r: Launch, path: Path, epoch: int) -> None:
    # the data stream's position is the step: every step's batch and augmentation are seeded by it
    save_checkpoint(path, r.model, r.optimizer, r.scheduler, r.scaler, epoch, r.step, r.cfg,
                    {"data": {"step": r.step, "epoch": r.step // r.steps_per_epoch,
                              "step_in_epoch": r.step % r.steps_per_epoch, "clips": len(r.index)},
                     "monitor_best": r.monitor_best, "run": {"preset": r.preset, "shards": r.settings["shards"]}})


# ---------------------------------------------------------------- the end
def stop(r: Launch, stop_signal: int) -> None:
    """After SIGUSR1/SIGTERM: rank 0 checkpoints, every rank waits for it, then Stopped."""
    if r.main:
        checkpoint(r, r.ckpt_dir / "last.pt", r.step // r.steps_per_epoch)
        plot_curves(r.log_path, r.run / "curves.png")
        append_jsonl(r.run / "launches.jsonl", {"token": r.token, "stopped": signal.Signals(stop_signal).name,
                                                "step": r.step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    dist.all_true(True, r.device)  # the checkpoint is written before any rank exits
    dist.cleanup()
    raise Stopped(stop_signal, r.step, r.rank)


def finish(r: Launch) -> dict:
    """The last checkpoint, the exported backbone, the curves and summary.json (rank 0); the summary."""
    cfg = r.cfg
    summary = {"run": str(r.run), "steps": r.step, "epochs": r.epochs, "steps_per_epoch": r.steps_per_epoch,
               "clips": len(r.index), "shards": len(r.index.paths), "world": r.world, "device": r.device,
               "batch_size": cfg.batch_size, "seconds": round(time.time() - r.started, 1),
               "maskfn_descriptor": r.descriptor if cfg.maskfn else None, **r.totals,
               **({"ended": f"max_minutes={cfg.max_minutes:g}"} if r.time_up else {})}
    if cfg.faceswap or cfg.cutmix:
        positives = r.totals["anchors"] // r.anchors * cfg.batch_size  # of the steps trained in this launch
        summary["swap_rate"] = round(r.totals["swaps"] / max(1, positives), 4)
    if r.main:
        end_epoch = min(r.epochs, math.ceil(r.step / r.steps_per_epoch))
        checkpoint(r, r.ckpt_dir / "last.pt", end_epoch)
        export_backbone(r.model, r.run / "backbone.pt", cfg.arch, cfg.image_size,
                        {"trained_with": {"preset": r.preset, "steps": r.step, "epochs": end_epoch,
                                          "git_commit": runinfo.git_commit(), "shards": str(r.shards),
                                          "maskfn_descriptor": r.descriptor if cfg.maskfn else None,
                                          "settings": dataclasses.asdict(cfg)}})
        plot_curves(r.log_path, r.run / "curves.png")
        summary.update(last_values(r))
        (r.run / "summary.json").write_text(json.dumps(summary, indent=2))
    dist.all_true(True, r.device)  # no rank ends before rank 0 has written the run's files
    dist.cleanup()
    return summary


def last_values(r: Launch) -> dict:
    """The summary's loss and top-1 (last and first trained step) and monitor scores."""
    trained = [x for x in r.history if "loss" in x]
    if not trained:
        return {}
    out = {"loss": trained[-1]["loss"], "top1": trained[-1]["top1"], "top1_first": trained[0]["top1"]}
    watched = [x for x in r.history if "monitor_seconds" in x]
    if watched:
        out.update({k: watched[-1][k] for k in ("monitor_expr_knn", "monitor_id_knn") if k in watched[-1]})
        if r.monitor_best >= 0:
            out["monitor_expr_best"] = r.monitor_best
    return out


# ---------------------------------------------------------------- outputs
def plot_curves(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] \
        if log_path.is_file() else []
    if not rows:
        return
    keys = [k for k in CURVES if any(k in row for row in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot([row["step"] for row in rows if k in row], [row[k] for row in rows if k in row], lw=1,
                marker="o" if k.startswith("monitor") else None, ms=3)
        ax.set_title({"monitor_expr_knn": "expression kNN acc", "monitor_id_knn": "FR-KNN acc (identity)"}.get(k, k))
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


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
