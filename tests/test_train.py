"""The trainer: augmentations, streaming batches, DDP equivalence, presets, checkpoints, resume, faults."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sslfer import augment as aug
from sslfer.config import load_config
from sslfer.shards.schema import SchemaError, shard_paths
from tests.conftest import build
from train.settings import TrainConfig, preset_names, preset_path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["arch=resnet18", "proj_hidden=64", "batch_size=4", "image_size=32", "workers=0"]


@pytest.fixture(scope="module")
def train_shards(good_corpus, tmp_path_factory):
    shards = tmp_path_factory.mktemp("train_shards")
    build(good_corpus, shards)
    return shards


def config(preset="sslfer", *overrides):
    return load_config(TrainConfig, [preset_path(preset)], [*TINY, *overrides])


def test_crop_and_flip_move_the_boxes_with_the_image():
    img = torch.zeros(6, 3, 128, 128)
    boxes = torch.tensor([[[30.0, 40.0, 70.0, 60.0], [50.0, 80.0, 90.0, 100.0]]]).repeat(6, 1, 1)
    img[:, :, 40:60, 30:70] = 1.0  # the eye box is white
    gen = torch.Generator().manual_seed(0)
    out, b = aug.resized_crop_flip(img, boxes, 56, gen)
    assert out.shape == (6, 3, 56, 56)
    for x, bb in zip(out, b):
        x0, y0, x1, y1 = bb[0].tolist()
        inside = x[0, int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1]
        assert inside.numel() and inside.min() > 0.9
        around = x[0, max(0, int(y0) - 1):int(y1) + 2, max(0, int(x0) - 1):int(x1) + 2]
        assert float(x[0].sum()) == pytest.approx(float(around.sum()), rel=0.02)  # nothing white outside


def test_landmark_mask_fills_an_ellipse_with_the_mean_colour():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(8, 3, 128, 128, generator=g)
    boxes = torch.tensor([[[40.0, 40.0, 88.0, 60.0], [44.0, 80.0, 84.0, 100.0]]]).repeat(8, 1, 1)
    out = aug.landmark_mask(img, boxes, 1.0, g)
    mean = img.mean(dim=(2, 3))
    for i in range(8):
        at_eyes = torch.allclose(out[i, :, 50, 64], mean[i])
        at_mouth = torch.allclose(out[i, :, 90, 64], mean[i])
        assert at_eyes != at_mouth  # exactly one region, chosen per image
        assert torch.equal(out[i, :, 5, 5], img[i, :, 5, 5])
    assert torch.equal(aug.landmark_mask(img, boxes, 0.0, g), img)


def test_colour_map_equals_the_jitter_steps_done_one_by_one():
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.3 + 0.35
    a, c = aug.colour_matrices(x, torch.Generator().manual_seed(5), 1.0, 0.0)
    g = torch.Generator().manual_seed(5)  # the same draws, in the same order
    n = len(x)
    bright, contrast, sat = (aug._rand(n, g, "cpu", 0.6, 1.4).view(n, 1, 1, 1) for _ in range(3))
    theta = aug._rand(n, g, "cpu", -0.2, 0.2) * 2 * np.pi
    y = x * bright
    m = aug._gray(y).mean(dim=(1, 2, 3), keepdim=True)
    y = (y - m) * contrast + m
    gray = aug._gray(y)
    y = (y - gray) * sat + gray
    yiq = torch.einsum("ij,njhw->nihw", aug._TO_YIQ, y)
    i, q = yiq[:, 1], yiq[:, 2]
    cs, sn = theta.cos().view(n, 1, 1), theta.sin().view(n, 1, 1)
    yiq = torch.stack([yiq[:, 0], cs * i - sn * q, sn * i + cs * q], 1)
    y = torch.einsum("ij,njhw->nihw", torch.linalg.inv(aug._TO_YIQ), yiq)
    want = y.clamp(0, 1)
    torch.testing.assert_close(aug.apply_colour(x, a, c), want, rtol=1e-4, atol=1e-5)
    a, c = aug.colour_matrices(x, torch.Generator().manual_seed(5), 0.0, 1.0)  # grayscale only
    out = aug.apply_colour(x, a, c)
    torch.testing.assert_close(out[:, 0], out[:, 1])
    torch.testing.assert_close(out[:, 0:1], aug._gray(x))


def test_augment_is_per_sample_and_runs_the_whole_chain():
    g = torch.Generator().manual_seed(0)
    faces = torch.full((16, 3, 128, 128), 128, dtype=torch.uint8)
    faces[:, 0] = 200
    boxes = torch.tensor([[[40.0, 40.0, 88.0, 60.0], [44.0, 80.0, 84.0, 100.0]]]).repeat(16, 1, 1)
    x, _ = aug.augment(faces, boxes, 48, g)
    assert x.shape == (16, 3, 48, 48) and torch.isfinite(x).all()
    per_image = x.mean(dim=(1, 2, 3))
    assert per_image.std() > 0.01  # identical inputs, different random parameters per image


def stream(shards, cfg, rank=0, world=1, start=0, end=5, **kw):
    from sslfer.shards.index import ShardIndex
    from train.data import BatchStream, anchors_per_step
    from train.plan import steps_per_epoch

    index = ShardIndex.build(Path(shards))
    spe = steps_per_epoch(len(index), anchors_per_step(cfg), cfg.anchors_per_clip)
    return BatchStream(index, cfg, rank, world, start, end, spe, **kw)


def test_stream_batches_follow_timeaug_and_hardneg(train_shards):
    cfg = config("sslfer", "batch_size=8", "anchors_per_clip=4")
    batches = list(stream(train_shards, cfg))
    assert len(batches) == 5 and [b["step"] for b in batches] == list(range(5))
    b = batches[0]
    m = 8  # batch_size counts instances: 4 anchors + their 4 hard negatives
    assert b["images"].shape == (2 * m, 3, 128, 128) and b["images"].dtype == np.uint8
    assert b["boxes"].shape == (2 * m, 2, 4) and b["region"].shape == (2 * m, 1024) and len(b["speaker"]) == m
    assert b["clip"].shape == b["time"].shape == (2 * m,)
    assert all(x["stats"]["distinct_clips"] == 4 for x in batches)  # the corpus has 4 clips: all distinct
    offsets = np.concatenate([x["offset"] for x in batches])
    assert np.abs(offsets).max() <= 1.0 + 1e-6
    assert (offsets != 0).any()
    augmented = next(iter(stream(train_shards, cfg, end=1, augment_here=True)))
    assert "images" not in augmented and augmented["views"].shape == (2 * m, 3, 32, 32)
    assert augmented["views"].dtype == torch.float32
    for x in batches:  # a hard negative: its anchor's speaker, and >= T2 away when from the same clip
        assert (x["speaker"][:4] == x["speaker"][4:]).sum() + x["stats"]["hardneg_missing"] >= 4
        same_clip = x["clip"][:4] == x["clip"][4:8]
        assert (np.abs(x["time"][:4] - x["time"][4:8])[same_clip] >= cfg.hardneg_gap - 1e-6).all()
        # the group's four negative pairs (anchor or its positive vs hard negative or its positive) are >= T2
        # apart, except in groups counted as hardneg_close (the clip too short for that)
        t = x["time"]
        close = [min(abs(t[i] - t[j]) for i in (g, m + g) for j in (4 + g, m + 4 + g)) < cfg.hardneg_gap - 1e-6
                 for g in range(4) if same_clip[g]]
        assert sum(close) == x["stats"]["hardneg_close"]
    # with T2 = 0.8 s the 3-4 s clips have room: every same-clip group keeps its four negatives >= T2 apart
    short_gap = config("sslfer", "batch_size=8", "anchors_per_clip=4", "hardneg_gap=0.8")
    kept = 0
    for x in stream(train_shards, short_gap):
        t, same_clip = x["time"], x["clip"][:4] == x["clip"][4:8]
        assert x["stats"]["hardneg_close"] == 0
        for g in np.flatnonzero(same_clip):
            assert min(abs(t[i] - t[j]) for i in (g, m + g) for j in (4 + g, m + 4 + g)) >= 0.8 - 1e-6
            kept += 1
    assert kept >= 15


def test_a_step_is_the_same_whatever_the_ranks_and_workers(train_shards):
    """The global batch of a step (its anchors' clips and frames) depends on the seed and the step only; with
    W workers a rank still gets its steps in order."""
    cfg = config("simclr", "batch_size=4")
    one = [b["clip"][:4].tolist() for b in stream(train_shards, cfg, end=7)]
    for world in (2, 4):
        per_rank = []
        for rank in range(world):
            loader = torch.utils.data.DataLoader(stream(train_shards, cfg, rank, world, end=7), batch_size=None,
                                                 num_workers=2)
            got = list(loader)
            assert [b["step"] for b in got] == list(range(7))
            per_rank.append([b["clip"][: 4 // world].tolist() for b in got])
        assert [sum((r[s] for r in per_rank), []) for s in range(7)] == one
    resumed = [b["clip"][:4].tolist() for b in stream(train_shards, cfg, start=3, end=7)]
    assert resumed == one[3:]


def _ddp_worker(rank, world, init_file, queue):
    import torch.distributed as tdist

    from train.methods.simclr import contrastive_step

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cfg = config("sslfer", "temperature=0.2")
    model, x, region, speaker = _ddp_problem()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    inst = x.view(2, -1, *x.shape[1:])  # [views, instances, ...]
    n = inst.shape[1] // world
    mine = torch.cat([inst[0, rank * n:(rank + 1) * n], inst[1, rank * n:(rank + 1) * n]])
    reg = region.view(2, -1, region.shape[1])
    my_reg = torch.cat([reg[0, rank * n:(rank + 1) * n], reg[1, rank * n:(rank + 1) * n]])
    clip, time_ = _clips_and_times()
    ct = clip.view(2, -1)
    tt = time_.view(2, -1)
    my_clip = torch.cat([ct[0, rank * n:(rank + 1) * n], ct[1, rank * n:(rank + 1) * n]])
    my_time = torch.cat([tt[0, rank * n:(rank + 1) * n], tt[1, rank * n:(rank + 1) * n]])
    out = contrastive_step(ddp(mine), my_reg, speaker[rank * n:(rank + 1) * n], my_clip, my_time, cfg)
    out["loss"].backward()
    queue.put((rank, float(out["loss"]), [p.grad.clone() for p in model.parameters()]))
    tdist.destroy_process_group()


def _clips_and_times():
    """Views' clips and times: instances 0 and 4 are one clip 1 s apart (near-duplicates, masked), 1 and 5 one
    clip 5 s apart (a hard negative)."""
    clip = torch.tensor([0, 1, 2, 3, 0, 1, 6, 7]).repeat(2)
    time_ = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 5.0, 0.0, 0.0]).repeat(2)
    return clip, time_


def _ddp_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    x = torch.randn(16, 10)            # 8 instances x 2 views: rows 0-7 view 1, rows 8-15 view 2
    region = torch.randn(16, 6)
    speaker = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    return model, x, region, speaker


def test_ddp_loss_and_gradients_equal_single_process(tmp_path):
    import torch.multiprocessing as mp

    from train.losses import false_negatives, info_nce, near_duplicates
    from train.methods.simclr import view_groups

    cfg = config("sslfer", "temperature=0.2")
    world = 2
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, world, tmp_path / "init", queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in range(world))
    for p in procs:
        p.join(timeout=60)
    # the same global batch in one process, laid out as the ranks' gathered views
    model, x, region, speaker = _ddp_problem()
    n = 4
    order = torch.cat([torch.cat([torch.arange(r * n, (r + 1) * n), 8 + torch.arange(r * n, (r + 1) * n)])
                       for r in range(world)])
    positive = torch.cat([r * 2 * n + (torch.arange(2 * n) + n) % (2 * n) for r in range(world)])
    spk = torch.cat([speaker[r * n:(r + 1) * n].repeat(2) for r in range(world)])
    fn = false_negatives(region[order], positive, spk, cfg.n_fn)
    clip, time_ = _clips_and_times()
    groups = view_groups(world, 2 * n, cfg.hardneg)
    assert groups.tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 8, 9, 8, 9, 8, 9, 8, 9]
    ignore = near_duplicates(clip[order], time_[order], cfg.hardneg_gap, groups)
    # instances 0 and 4 (one clip 1 s apart, other groups, other ranks) and their positives: 4 pairs, both ways;
    # the masked pairs are part of what the ranks must agree on
    assert ignore.sum() == 8
    ref = info_nce(model(x[order]), positive, cfg.temperature, fn, cfg.fn_weight, cfg.positive_in_denominator,
                   ignore)
    ref["loss"].backward()
    for rank, loss, grads in results:
        assert loss == pytest.approx(float(ref["loss"].detach()), rel=1e-5)
        for g, p in zip(grads, model.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_trains_a_few_steps(preset, train_shards, tmp_path):
    from train.pretrain import pretrain

    extra = ["moco_queue=64"] if preset == "mocov2" else []
    s = pretrain(train_shards, tmp_path / "run", config(preset, "max_steps=2", *extra))
    assert s["steps"] == 2 and np.isfinite(s["loss"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    if config(preset).maskfn:
        assert all("l2" in r for r in rows)
    swapping = config(preset).faceswap or config(preset).cutmix
    assert all(("swap_rate" in r) == swapping for r in rows) and ("swap_rate" in s) == swapping
    if swapping:  # the realised share of positives that are composites
        assert all(r["swap_rate"] == r["swaps"] / 4 for r in rows)
        assert s["swap_rate"] == pytest.approx(sum(r["swaps"] for r in rows) / 8, abs=1e-4)


def test_checkpoint_and_exported_backbone_load_safely(train_shards, tmp_path):
    import torchvision

    from train.pretrain import pretrain

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # an earlier attempt's, no checkpoint
    pretrain(train_shards, tmp_path / "run", config("sslfer", "max_steps=2"))
    assert [r["step"] for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())] == [1, 2]
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])["loss"] != 9.0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "epoch", "step", "config"} <= set(state)
    assert state["step"] == 2 and state["config"]["arch"] == "resnet18"
    backbone = torch.load(tmp_path / "run" / "backbone.pt", weights_only=True)
    torchvision.models.resnet18().load_state_dict(backbone)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


def test_lr_schedule_is_constant_then_cosine():
    from train.pretrain import lr_lambda

    f = lr_lambda(10, 30)
    assert [f(s) for s in (0, 5, 9, 10)] == [1, 1, 1, 1]
    assert f(20) == pytest.approx(0.5) and f(30) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(10, 30))


def test_resume_after_kill_continues_from_the_last_checkpoint(train_shards, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", str(train_shards), str(run), "--preset", "timeaug", *TINY,
           "max_steps=60", "ckpt_minutes=0.005"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.1)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < killed_at < 60
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {ckpt} at step {killed_at}" in done.stdout
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 60
    assert torch.load(ckpt, weights_only=True)["step"] == 60


def test_non_finite_losses_stop_the_run_with_a_message(train_shards, tmp_path, monkeypatch):
    from train import pretrain as pt
    from train.methods import simclr

    real = simclr.info_nce
    monkeypatch.setattr(simclr, "info_nce", lambda *a, **k: {**real(*a, **k), "loss": torch.tensor(float("nan"),
                                                                                               requires_grad=True)})
    with pytest.raises(pt.TrainingStopped, match="not finite for 3 steps in a row"):
        pt.pretrain(train_shards, tmp_path / "run", config("simclr", "max_steps=10", "max_bad_steps=3"))


@pytest.mark.parametrize("bad", ["device=gpu", "method=simsiam", "p_swap=1.5", "batch_size=1", "logger=wandb",
                                 "device=cuda"])
def test_bad_option_values_are_one_line_before_any_work(bad, train_shards, tmp_path, capsys):
    from train.__main__ import main

    if bad == "device=cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main([str(train_shards), str(tmp_path / "run"), *TINY, bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}")
    assert not (tmp_path / "run").exists()


def test_bad_shards_folder_gives_one_line_errors(tmp_path, train_shards):
    from train.__main__ import main

    assert main([str(tmp_path / "missing"), str(tmp_path / "r")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "r")]) == 2
    from train.pretrain import pretrain

    copy = tmp_path / "copy"
    shutil.copytree(train_shards, copy, ignore=shutil.ignore_patterns(".cache"))
    import pyarrow.parquet as pq

    t = pq.read_table(copy / "manifest.parquet")
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"schema_version": b"99"}),
                   copy / "manifest.parquet")
    with pytest.raises(SchemaError, match="schema version 99"):
        pretrain(copy, tmp_path / "r", config("simclr", "max_steps=1"))


def test_damaged_shard_is_skipped_with_a_warning(train_shards, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sslfer.shards.index import ShardIndex
    from train.data import BatchStream

    copy = tmp_path / "copy"
    shutil.copytree(train_shards, copy, ignore=shutil.ignore_patterns(".cache"))
    good = shard_paths(copy)[0]
    (copy / "shard-000001.tar").write_bytes(good.read_bytes()[:5000])  # a truncated copy under new keys' shard
    t = pq.read_table(copy / "manifest.parquet")
    moved = t.set_column(t.schema.get_field_index("key"), "key",
                         pa.array([k + "-b" for k in t.column("key").to_pylist()]))
    moved = moved.set_column(moved.schema.get_field_index("shard"), "shard",
                             pa.array(["shard-000001.tar"] * moved.num_rows))
    pq.write_table(pa.concat_tables([t, moved]).replace_schema_metadata(t.schema.metadata),
                   copy / "manifest.parquet")
    index = ShardIndex.build(copy)
    assert len(index) == 4 and any("shard-000001.tar" in p for p in index.problems)
    assert any("4 clip(s) of the manifest are in no readable shard" in p for p in index.problems)
    assert len(list(BatchStream(index, config("simclr"), 0, 1, 0, 3, 1))) == 3
    # a sample that is not where the index says (the shard changed after indexing) is replaced, and counted
    index.start[0] += 512
    with pytest.warns(UserWarning, match="skipping unreadable clip"):
        batches = list(BatchStream(index, config("simclr", "batch_size=4"), 0, 1, 0, 2, 1))
    assert sum(b["stats"]["unreadable"] for b in batches) >= 1
    index.start[:] += 1  # nothing readable: a clear error
    with pytest.raises(RuntimeError, match="no readable clip sample"):
        list(BatchStream(index, config("simclr", "batch_size=4"), 0, 1, 0, 1, 1))


def test_tar_reader_matches_tarfile_with_long_names(tmp_path):
    import tarfile

    import webdataset as wds

    from sslfer.shards.tar import iter_tar_samples

    path = tmp_path / "t.tar"
    long_key = "speaker-" + "v" * 120 + "-clip-0123abcd"  # > 100 characters: a pax header carries the name
    with open(path, "wb") as f, wds.TarWriter(f, encoder=False) as w:
        for key in ("short-1", long_key, "dir/sub-2"):
            w.write({"__key__": key, "meta.json": b"{}", "faces.jpgs": key.encode() * 3, "eyes.jpgs": b"xyz"})
    got = list(iter_tar_samples(path, frozenset({"eyes.jpgs"})))
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers()]
    assert [g["__key__"] for g in got] == ["short-1", long_key, "dir/sub-2"]
    assert f"{long_key}.faces.jpgs" in names
    assert got[1]["faces.jpgs"] == long_key.encode() * 3 and got[1]["eyes.jpgs"] == b""
    data = path.read_bytes()
    path.write_bytes(data[:700])
    with pytest.raises(EOFError):
        list(iter_tar_samples(path))
    corrupt = bytearray(data)
    corrupt[10] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="checksum"):
        list(iter_tar_samples(path))


def test_official_preset_has_the_authors_values():
    cfg = load_config(TrainConfig, [preset_path("official")])
    assert (cfg.timeaug_frames, cfg.timeaug_frame_weights) == ("2,3,4,5,6", "5,4,3,2,1")
    assert (cfg.hardneg_gap, cfg.p_swap, cfg.fn_weight, cfg.positive_in_denominator) == (2.88, 0.8, 0.8, True)
    assert (cfg.blur_kernel, cfg.p_colour_first, cfg.p_colour, cfg.batch_size) == (3, 1.0, 0.8, 256)
    from train.data import anchors_per_step

    assert anchors_per_step(cfg) == 128  # + 128 hard negatives = 256 instances
    paper = load_config(TrainConfig, [preset_path("sslfer")])
    assert anchors_per_step(paper) == 128 and anchors_per_step(load_config(TrainConfig,
                                                                            [preset_path("simclr")])) == 256


def _log(run):
    return {r["step"]: r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())}


def test_resume_after_kill_or_sigterm_equals_an_uninterrupted_run(train_shards, tmp_path):
    """20 steps in one go; 10 + kill -9 + 10 resumed; and SIGTERM mid-run (exit 143 after a checkpoint of the
    step it was in) + resumed: the logged losses of the later steps are equal. The progress of a run whose
    output is not a terminal is plain lines, no bar redraws."""
    args = ["--preset", "sslfer", *TINY, "workers=2", "batch_size=8", "max_steps=20",
            "warm_epochs=1", "seed=3"]
    whole = tmp_path / "whole"
    done = subprocess.run([sys.executable, "-m", "train", str(train_shards), str(whole), *args], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("pretrain: device cpu, world 1 = 1 node(s) x 1 rank(s) (single process)")
    run = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "train", str(train_shards), str(run), *args, "ckpt_every=10", "ckpt_minutes=1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not ckpt.exists() and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(ckpt, weights_only=True)["step"] == 10
    state = torch.load(ckpt, weights_only=True)
    assert state["data"]["step"] == 10
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout and "at step 10" in done.stdout
    a, b = _log(whole), _log(run)
    assert sorted(b) == list(range(1, 21))
    for s in range(11, 21):
        assert b[s]["loss"] == a[s]["loss"] and b[s]["top1"] == a[s]["top1"], s

    termed = tmp_path / "termed"
    cmd = [sys.executable, "-m", "train", str(train_shards), str(termed), *args, "ckpt_minutes=1000"]
    with open(tmp_path / "termed.err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "SSLFER_PROGRESS_S": "0.5"})
        log = termed / "log.jsonl"
        while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 3):
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    stopped = torch.load(termed / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 3 <= stopped < 20 and f"stopped by SIGTERM after step {stopped}" in out
    assert sorted(_log(termed)) == list(range(1, stopped + 1))
    progress = (tmp_path / "termed.err").read_text()
    assert "\r" not in progress and "pretrain: " in progress and " step/s" in progress
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    c = _log(termed)
    assert sorted(c) == list(range(1, 21)) and all(c[s]["loss"] == a[s]["loss"] for s in range(1, 21))
    launches = [json.loads(line) for line in (termed / "launches.jsonl").read_text().splitlines()]
    assert [x.get("stopped") for x in launches] == [None, "SIGTERM", None]
    assert launches[2]["resumed_step"] == stopped and launches[0]["git_commit"] != ""
    assert launches[0]["command"][-len(args) - 1:] == [*args, "ckpt_minutes=1000"]
    assert {"torch", "numpy", "pyarrow"} <= set(launches[0]["packages"])


def test_resume_refuses_other_settings_unless_forced(train_shards, tmp_path):
    run = tmp_path / "run"
    base = [sys.executable, "-m", "train", str(train_shards), str(run), *TINY, "max_steps=2"]
    assert subprocess.run([*base, "--preset", "sslfer"], cwd=ROOT, capture_output=True).returncode == 0
    config_before = (run / "config.toml").read_text()
    other = subprocess.run([*base, "--preset", "simclr", "batch_size=8"], cwd=ROOT, capture_output=True, text=True)
    assert other.returncode == 2
    error = other.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {run}/checkpoints/last.pt was made with other settings: preset 'sslfer' -> "
                            f"'simclr'; timeaug True -> False")
    assert "batch_size 4 -> 8" in error and "resume=force" in error
    assert (run / "config.toml").read_text() == config_before
    # options that change only how it runs (workers, logging, checkpoints) may change
    same = subprocess.run([*base, "--preset", "sslfer", "workers=1", "log_every=5"], cwd=ROOT, capture_output=True,
                          text=True)
    assert same.returncode == 0, same.stderr[-2000:]
    forced = subprocess.run([*base, "--preset", "simclr", "resume=force"], cwd=ROOT, capture_output=True, text=True)
    assert forced.returncode == 0 and "with other settings (resume=force): preset 'sslfer' -> 'simclr'" in forced.stdout
    changed = [json.loads(x)["settings_changed"] for x in (run / "launches.jsonl").read_text().splitlines()]
    assert changed[0] == changed[1] == [] and "preset 'sslfer' -> 'simclr'" in changed[2]


def test_tensorboard_logger_writes_the_log_as_scalars(train_shards, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train.pretrain import TrainingStopped, pretrain

    pretrain(train_shards, tmp_path / "run", config("simclr", "max_steps=3", "logger=tensorboard"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = _log(tmp_path / "run")
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([logged[s]["loss"] for s in (1, 2, 3)])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(TrainingStopped, match=r"logger=tensorboard needs the tensorboard package: .*\[tensorboard\]"):
        pretrain(train_shards, tmp_path / "run2", config("simclr", "max_steps=1", "logger=tensorboard"))
    assert not (tmp_path / "run2").exists()


def test_maskfn_on_landmark_descriptor_shards_says_so(good_corpus, tmp_path):
    shards = tmp_path / "shards"
    build(good_corpus, shards, "region_descriptor=landmarks", "faceswap=false")
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "train", str(shards), str(run), "--preset", "sslfer", *TINY,
                           "faceswap=false", "max_steps=2"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("warning: MaskFN runs on the shards' region descriptor 'landmarks' (144-d)") == 1
    assert "MaskFN        on the shards' 'landmarks' region descriptor (not the paper's" in done.stdout
    assert json.loads((run / "summary.json").read_text())["maskfn_descriptor"] == "landmarks"
    assert json.loads((run / "launches.jsonl").read_text())["region_descriptor"] == "landmarks"
    simclr = subprocess.run([sys.executable, "-m", "train", str(shards), str(tmp_path / "s"), "--preset", "simclr",
                             *TINY, "max_steps=1"], cwd=ROOT, capture_output=True, text=True)
    assert simclr.returncode == 0 and "MaskFN" not in simclr.stdout  # no MaskFN, nothing to say


def test_settings_diff_compares_what_changes_the_result():
    from train.checkpoint import settings_diff

    saved = {"preset": "sslfer", "lr": 3e-4, "workers": 4, "shards": "aa", "seed": 0, "monitor": ""}
    now = {"preset": "sslfer", "lr": 1e-3, "workers": 8, "shards": "bb", "seed": 0, "monitor": "/x",
           "logger": "tensorboard"}
    assert settings_diff(saved, now) == ["lr 0.0003 -> 0.001", "shards 'aa' -> 'bb'"]


def test_launch_env_from_torchrun_srun_or_none():
    from train.distributed import launch_env

    assert launch_env({}) is None
    assert launch_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == {
        "launcher": "torchrun", "rank": 2, "world": 4, "local_rank": 0}
    step = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "9", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1",
            "SLURM_NTASKS": "16"}
    assert launch_env(step) == {"launcher": "srun", "rank": 9, "world": 16, "local_rank": 1}
    batch_script = {k: v for k, v in step.items() if k != "SLURM_STEP_ID"}  # python run by the batch script
    assert launch_env(batch_script) is None
    assert launch_env({**step, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"}) is None


def test_hardware_checks_stop_a_cpu_fallback_and_warn_of_idle_gpus():
    from train.runinfo import LaunchError, check_hardware

    cpu = {"host": "n1", "device": "cpu", "cuda_visible": 0, "nvidia_smi": 8}
    with pytest.raises(LaunchError, match="nvidia-smi shows 8 GPU.* cannot use them.*device=cpu"):
        check_hardware([cpu], "auto")
    assert "cannot use them" in check_hardware([cpu], "cpu")[0]
    assert check_hardware([{**cpu, "cuda_visible_devices": ""}], "auto") == []  # CUDA_VISIBLE_DEVICES= hides them
    one = [{"host": "n1", "device": "cuda:0", "cuda_visible": 8, "nvidia_smi": 8}]
    assert check_hardware(one, "auto") == ["n1: 8 GPUs visible, 1 used (1 rank(s)): 7 sit idle; start one rank per "
                                           "GPU (make pretrain GPUS=8, or make pretrain-slurm GPUS_PER_NODE=8)"]
    full = [{"host": h, "device": f"cuda:{i}", "cuda_visible": 8} for h in ("n1", "n2") for i in range(8)]
    assert check_hardware(full, "auto") == []
    assert check_hardware([{"host": "n1", "device": "cpu", "cuda_visible": 0, "nvidia_smi": None}], "auto") == []


def test_gpus_that_torch_cannot_use_stop_a_device_auto_run_before_any_work(train_shards, tmp_path):
    """A CPU-only torch on a GPU node (nvidia-smi answers, torch sees no CUDA): one line, exit 2, no run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"  # the driver's tool as this machine would answer with two GPUs
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-1)'\n")
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    from train.runinfo import nvidia_smi_gpus

    os.environ["PATH"], path = env["PATH"], os.environ["PATH"]
    try:
        assert nvidia_smi_gpus() == 2
    finally:
        os.environ["PATH"] = path
    done = subprocess.run([sys.executable, "-m", "train", str(train_shards), str(tmp_path / "run"), *TINY,
                           "max_steps=1"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "nvidia-smi shows 2 GPU(s)" in done.stderr
    assert not (tmp_path / "run").exists()


def _fault_worker(rank, port, shards, run, preset, fault, queue):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank),
                       "LOCAL_RANK": str(rank)})
    from train import data, pretrain as pt
    from train.methods import byol, mocov2, simclr

    if rank == 1 and fault == "nan":
        def nan(out):
            return {**out, "loss": out["loss"] * float("nan")}
        real_nce, real_moco, real_byol = simclr.info_nce, mocov2.moco_loss, byol.byol_loss
        simclr.info_nce = lambda *a, **k: nan(real_nce(*a, **k))
        mocov2.moco_loss = lambda *a, **k: nan(real_moco(*a, **k))
        byol.byol_loss = lambda *a, **k: real_byol(*a, **k) * float("nan")
    if rank == 1 and fault == "data":
        def broken(self, step):
            raise RuntimeError("every shard of this rank is damaged")
        data.BatchStream.batch = broken
    extra = ["moco_queue=64"] if preset == "mocov2" else []
    try:
        pt.pretrain(shards, run, config(preset, "max_steps=6", "max_bad_steps=2", "dist_timeout_min=1", *extra))
        queue.put((rank, "finished"))
    except Exception as e:  # noqa: BLE001
        queue.put((rank, f"{type(e).__name__}: {e}"))


@pytest.mark.parametrize("preset,fault", [("sslfer", "nan"), ("mocov2", "nan"), ("byol", "nan"),
                                          ("sslfer", "data")])
def test_a_fault_on_one_rank_stops_every_rank(preset, fault, train_shards, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fault_worker, args=(r, port, train_shards, tmp_path / "run", preset, fault, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=180) for _ in range(2))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    want = "not finite for 2 steps" if fault == "nan" else "rank 1: RuntimeError: every shard of this rank is damaged"
    assert all(want in results[r] for r in (0, 1)), results


def test_knn_vote_by_hand():
    from sslfer.knn import knn_vote

    f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.8, 0.3], [0.2, 1.0]])
    ids = np.array([0, 0, 1, 1, 1, 0])
    gallery, probe = np.array([0, 1, 2, 3]), np.array([4, 5])
    # probe 4 is nearest 0 and 1 (label 0): right with k=1 and k=2; probe 5 is nearest 3, 2 (label 1): wrong
    assert knn_vote(f, ids, gallery, probe, 1) == pytest.approx(0.0)
    ids2 = np.array([0, 0, 1, 1, 0, 1])
    assert knn_vote(f, ids2, gallery, probe, 2) == pytest.approx(1.0)
    # k=4: two votes each; the tie goes to the nearer neighbours
    assert knn_vote(f, ids2, gallery, probe, 4) == pytest.approx(1.0)


def _monitor_sets(tmp_path):
    from preprocess.synthetic import make_expression_sets

    return make_expression_sets(tmp_path / "sets", identities=2, per_class=4)


@pytest.mark.parametrize("source", ["synthetic", "shared"])
def test_monitor_logs_expression_and_identity_and_keeps_the_best(source, train_shards, tmp_path):
    from train.pretrain import pretrain

    if source == "shared":
        from tests.conftest import SHARED

        if not (SHARED / "fer2013" / "train").is_dir() or not (SHARED / "lfw-20").is_dir():
            pytest.skip("../shared/data/fer2013 or lfw-20 not present")
        expr, ident = SHARED / "fer2013" / "train", SHARED / "lfw-20"
    else:
        expr, ident = _monitor_sets(tmp_path)
    run = tmp_path / "run"
    s = pretrain(train_shards, run, config("simclr", "max_steps=4", f"monitor={expr}", f"monitor_identity={ident}",
                                           "monitor_every=2", "monitor_max_images=140",
                                           f"monitor_cache={tmp_path / 'cache'}"))
    rows = _log(run)
    watched = [k for k, r in sorted(rows.items()) if "monitor_expr_knn" in r]
    assert watched == [0, 2, 4]
    for k in watched:
        assert 0 <= rows[k]["monitor_expr_knn"] <= 1 and 0 <= rows[k]["monitor_id_knn"] <= 1
    best = max(rows[k]["monitor_expr_knn"] for k in watched if k > 0)  # trained steps only
    assert s["monitor_expr_best"] == best
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert state["step"] == max(k for k in watched if k > 0 and rows[k]["monitor_expr_knn"] == best)  # the later
    assert rows[state["step"]]["monitor_expr_knn"] == best and state["monitor_best"] == best
    assert (run / "curves.png").stat().st_size > 1000
    cached = list((tmp_path / "cache").glob("faces-*.npy"))
    assert len(cached) == 2  # aligned once per set; a second run reads them
    pretrain(train_shards, tmp_path / "run2", config("simclr", "max_steps=1", f"monitor={expr}",
                                                     f"monitor_cache={tmp_path / 'cache'}", "monitor_max_images=140"))
    assert sorted((tmp_path / "cache").glob("faces-*.npy")) == sorted(cached)


def test_a_monitored_run_keeps_a_trained_step_in_best_pt(train_shards, tmp_path):
    from train.pretrain import pretrain

    expr, _ = _monitor_sets(tmp_path)
    run = tmp_path / "run"
    pretrain(train_shards, run, config("simclr", "max_steps=6", f"monitor={expr}", "monitor_every=2",
                                       "monitor_max_images=60", f"monitor_cache={tmp_path / 'cache'}"))
    rows = _log(run)
    assert [k for k in sorted(rows) if "monitor_expr_knn" in rows[k]] == [0, 2, 4, 6]
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["step"] in (2, 4, 6)


def test_monitor_folder_errors_are_one_line(train_shards, tmp_path):
    from train.pretrain import TrainingStopped, pretrain

    with pytest.raises(TrainingStopped, match="monitor set .*missing: no such folder"):
        pretrain(train_shards, tmp_path / "run", config("simclr", "max_steps=1", f"monitor={tmp_path / 'missing'}"))


def test_shard_index_is_cached_per_shard_and_rescanned_when_a_shard_changes(train_shards, tmp_path, monkeypatch):
    from sslfer.shards import tar
    from sslfer.shards.index import ShardIndex

    copy = tmp_path / "copy"
    shutil.copytree(train_shards, copy, ignore=shutil.ignore_patterns(".cache"))
    first = ShardIndex.build(copy)
    assert list((copy / ".cache" / "tar-index").glob("*.npz"))
    scans = []
    real = tar.index_tar
    monkeypatch.setattr(tar, "index_tar", lambda p: scans.append(p) or real(p))
    again = ShardIndex.build(copy)
    assert scans == [] and again.keys == first.keys and (again.start == first.start).all()
    shard = shard_paths(copy)[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10 ** 9))
    ShardIndex.build(copy)
    assert scans == [shard]


def test_faceswap_positives_use_every_stored_composite(train_shards):
    """With two composites per frame (two donors), a FaceSwap positive picks either, about evenly."""
    from train.positives import View

    s = stream(train_shards, config("sslfer", "p_swap=1.0", "timeaug=false"))  # the positive is the anchor's frame
    clips = [s.load(i, np.random.default_rng(0), {"unreadable": 0})[1] for i in range(len(s.index))]
    cid = next(i for i, c in enumerate(clips) if c.swap_slots().all(1).any())
    clip = clips[cid]
    frame = int(np.flatnonzero(clip.swap_slots().all(1))[0])
    rng, stats = np.random.default_rng(0), {"swaps": 0}
    picks = [s.positive(View(cid, clip, frame), rng, stats).swap for _ in range(400)]
    assert set(picks) == {0, 1} and 150 < picks.count(1) < 250 and stats["swaps"] == 400
    images = {j: s.image(View(cid, clip, frame, j)) for j in (0, 1)}
    assert not np.array_equal(images[0], images[1])  # two donors, two different composites


def test_manifest_clips_and_shard_index_equal_a_plain_fold_of_every_row(train_shards, tmp_path):
    """The columnar start-up (record batches, clips cut by batch boundaries, sorted codes) gives what a plain
    Python fold over every manifest row gives, and the shard index built from it numbers speakers and source
    clips as sorted names."""
    import pyarrow.parquet as pq

    from sslfer.shards.index import ShardIndex
    from sslfer.shards.schema import manifest_clips

    rows = pq.read_table(Path(train_shards) / "manifest.parquet").to_pylist()
    fold: dict = {}
    for r in rows:
        c = fold.setdefault(r["key"], {"speaker": r["speaker"], "source": r["source"], "shard": r["shard"], "n": 0})
        c["n"] += bool(r["has_swap"])
    assert len(rows) > len(fold) > 3
    for batch_rows in (1, 3, 7, 1 << 20):  # 3 and 7 cut clips across batches
        clips = manifest_clips(train_shards, batch_rows)
        assert clips["key"].to_pylist() == list(fold)
        for column in ("speaker", "source", "shard"):
            assert clips[column].to_pylist() == [c[column] for c in fold.values()]
        assert clips["composites"].tolist() == [c["n"] for c in fold.values()]
    index = ShardIndex.build(Path(train_shards))
    speakers, sources = sorted({c["speaker"] for c in fold.values()}), sorted({c["source"] for c in fold.values()})
    assert index.speaker.tolist() == [speakers.index(fold[k]["speaker"]) for k in index.keys]
    assert index.origin.tolist() == [sources.index(fold[k]["source"]) for k in index.keys]
    assert sorted(index.keys) == sorted(fold) and index.composites == sum(c["n"] for c in fold.values())


def test_ranks_warm_their_share_of_the_tar_index_cache(train_shards, tmp_path):
    """Before rank 0 builds the index, rank r caches the tar indexes of shards r, r + world, ...; the index built
    from that cache is the one built from the tars."""
    import shutil

    from sslfer.shards.index import ShardIndex
    from sslfer.shards.schema import shard_paths
    from sslfer.shards.tar import index_tar, warm_tar_index

    copy = tmp_path / "shards"
    shutil.copytree(train_shards, copy, ignore=shutil.ignore_patterns(".cache"))
    paths, cache = shard_paths(copy), copy / ".cache" / "tar-index"
    world = len(paths) + 1
    warm_tar_index(copy, paths, world - 1, world)  # the last rank has no shard of its own
    assert not cache.exists()
    for rank in range(world - 1):
        warm_tar_index(copy, paths, rank, world)
        assert sorted(p.name for p in cache.iterdir()) == sorted(f"{p.name}.npz" for p in paths[:rank + 1])
    cached = ShardIndex.build(copy)
    fresh = ShardIndex.build(train_shards)
    assert cached.keys == fresh.keys and cached.start.tolist() == fresh.start.tolist()
    assert cached.start.tolist()[:3] == index_tar(paths[0])[1][:3]


def test_amp_fp16_scales_the_loss_keeps_the_scaler_in_the_checkpoint_and_says_so(train_shards, tmp_path, capsys):
    from train.__main__ import main
    from train.pretrain import pretrain

    assert "amp (default 'auto')" in subprocess.run([sys.executable, "-m", "train", "--help"], cwd=ROOT,
                                                     capture_output=True, text=True).stdout
    run = tmp_path / "run"
    pretrain(train_shards, run, config("simclr", "max_steps=2", "amp=fp16"))  # fp16 autocast on the CPU: a test
    assert "AMP fp16 (loss scaling)" in capsys.readouterr().out
    assert json.loads((run / "launches.jsonl").read_text().splitlines()[0])["amp"] == "fp16 (loss scaling)"
    scaler = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler
    s = pretrain(train_shards, run, config("simclr", "max_steps=3", "amp=fp16", "resume=force"))
    assert s["steps"] == 3 and all(np.isfinite(r["loss"]) for r in _log(run).values() if "loss" in r)
    assert main([str(train_shards), str(tmp_path / "r2"), *TINY, "amp=fp8"]) == 2
    assert "amp=fp8: expected one of auto | bf16 | fp16 | off" in capsys.readouterr().err


def test_gpu_check_runs_its_three_parts_and_returns_few_small_files(train_shards, tmp_path):
    """A smoke test of `make gpu-check` on the CPU with tiny settings (its figures mean nothing here): the step
    table, the region speed, both presets pretrained for the same minutes and their backbones in fp16 parts that
    join back into a loadable state dict."""
    from sslfer.backbone import load_backbone

    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--shards", str(train_shards), "--out", str(out),
           "--work", str(tmp_path / "work"), "--step-arch", "resnet18", "--step-size", "32", "--step-anchors", "2",
           "--steps", "3", "--workers", "0", "--region-frames", "6", "--region-batch", "4", "--minutes", "0.0002",
           "--curve-size", "32", "--curve-batch", "8", "--train", "proj_hidden=64"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    result = json.loads((out / "gpu-check.json").read_text())
    assert [r["amp"] for r in result["step"]] == ["off"] and result["step"][0]["images"] == 8
    assert result["step"][0]["ceiling"] > 0 and result["regions"]["frames"] == 6
    for preset in ("simclr", "sslfer"):  # 12 ms: each run ends after a step or two of its 250 epochs
        r = result["equal_time"][preset]
        assert 1 <= r["steps"] <= 3 and r["ended"] == "max_minutes=0.0002"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size <= 15 * 2 ** 20 for f in files)
    assert "## (c) Equal time" in (out / "gpu-check.md").read_text()
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--join", str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    assert load_backbone(str(out / "sslfer-backbone.pt"), "resnet18")[2] == 512
    original = torch.load(tmp_path / "work" / "sslfer" / "backbone.pt", weights_only=True)
    back = torch.load(out / "sslfer-backbone.pt", weights_only=True)
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k].half().float()) for k in original if original[k].is_floating_point())
