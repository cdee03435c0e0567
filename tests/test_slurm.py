"""The project's SLURM scripts submitted to a real scheduler: munged, slurmctld and slurmd on localhost (installed
from Debian's packages when missing and running as root; skipped with the reason otherwise). The batch stage as
a 3-task array + merge equals a single run; a 2-rank CPU pretraining through configs/slurm/pretrain.sbatch,
stopped with `scancel --signal=USR1` and requeued, or preempted by a higher-priority partition's job and requeued
by SLURM, equals an uninterrupted one; `make table1 SLURM=1`'s
evaluation and table jobs run on the finished run."""
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sslfer.shards.schema import read_manifest
from tests.conftest import build
from tests.slurm_cluster import LocalSlurm, install_if_root

ROOT = Path(__file__).resolve().parents[1]
TINY = "arch=resnet18 proj_hidden=64 image_size=32"


@pytest.fixture(scope="module")
def slurm():
    why = install_if_root()
    if why:
        pytest.skip(why)
    # a short path without spaces: SLURM's --output and the munge socket take it
    cluster = LocalSlurm(Path(tempfile.mkdtemp(prefix="sslfer-slurm-", dir="/tmp")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def make(slurm, target: str, **variables) -> str:
    done = subprocess.run(["make", "-s", target, *(f"{k}={v}" for k, v in variables.items())], cwd=ROOT,
                          env={**slurm.env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def job_output(folder: Path, pattern: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob(pattern)))


def test_shards_array_and_merge_equal_a_single_run(slurm, good_corpus, tmp_path):
    single = tmp_path / "single"
    build(good_corpus, single, "faceswap=false")
    shards = tmp_path / "parts"
    out = make(slurm, "shards-slurm", DATA=good_corpus, SHARDS=shards, PARTS=3,
               ARGS="region_weights=random workers=1 faceswap=false",
               SBATCH_ARGS=f"--cpus-per-task=1 --mem=1000 --chdir={tmp_path}")
    array = re.search(r"array job (\d+)", out).group(1)
    merge = re.search(r"Submitted batch job (\d+)", out).group(1)
    assert slurm.wait(array, 600) == "COMPLETED,COMPLETED,COMPLETED", job_output(tmp_path, "*.out")
    assert slurm.wait(merge, 300) == "COMPLETED", job_output(tmp_path, "*.out")
    key = lambda rows: sorted((r["key"], r["frame"], r["timestamp"], r["sample_hash"]) for r in rows)
    assert key(read_manifest(shards).to_pylist()) == key(read_manifest(single).to_pylist())
    assert len(list(tmp_path.glob("sslfer-shards-*_*.out"))) == 3  # one log per array task


def _log(run: Path) -> dict:
    return {r["step"]: r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def train_shards(good_corpus, tmp_path_factory):
    shards = tmp_path_factory.mktemp("slurm_train_shards")
    build(good_corpus, shards)
    return shards


@pytest.fixture(scope="module")
def pretrained(slurm, train_shards, tmp_path_factory):
    """Three 2-rank CPU pretrainings (gloo) of the same settings through `make pretrain-slurm`: RUNS/whole runs
    through; RUNS/sslfer is sent SIGUSR1 mid-run; RUNS/preempted is preempted by a job of the `urgent` partition.
    Returns (RUNS, steps, job id of the SIGUSR1 one, job id of the preempted one)."""
    runs = tmp_path_factory.mktemp("slurm_runs")
    steps = 60
    common = dict(SHARDS=train_shards, PRESET="sslfer", NODES=1, GPUS_PER_NODE=0, TASKS_PER_NODE=2,
                  CPUS_PER_TASK=1, SBATCH_ARGS=f"--chdir={runs}",
                  ARGS=f"{TINY} batch_size=8 workers=1 max_steps={steps} warm_epochs=1 seed=3 ckpt_minutes=1000 "
                       "timeaug_frames=2,3,4,5,6 timeaug_frame_weights=5,4,3,2,1")  # commas: the official preset's
    submit = lambda run: re.search(r"Submitted batch job (\d+)", make(slurm, "pretrain-slurm", RUN=runs / run,
                                                                       **common))[1]
    whole, cut = submit("whole"), submit("sslfer")
    assert slurm.wait(whole, 600) == "COMPLETED", job_output(runs, f"*-{whole}.out")
    _wait_for_steps(runs / "sslfer", 5)
    slurm.run("scancel", "--signal=USR1", cut)
    assert slurm.wait(cut, 600) == "COMPLETED", job_output(runs, f"*-{cut}.out")
    # the scheduler's own preemption: a job of the higher-priority partition needs every CPU of the node
    preempted = submit("preempted")
    _wait_for_steps(runs / "preempted", 3)
    urgent = slurm.run("sbatch", "--parsable", "-p", "urgent", f"--cpus-per-task={slurm.cpus}", f"--chdir={runs}",
                       "--wrap", "sleep 2").stdout.strip()
    assert slurm.wait(urgent, 300) == "COMPLETED"
    assert slurm.wait(preempted, 600, requeued=True) == "COMPLETED", job_output(runs, f"*-{preempted}.out")
    return runs, steps, cut, preempted


def _wait_for_steps(run: Path, n: int) -> None:
    log = run / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < n):
        time.sleep(0.2)


def _stopped_once_and_resumed_equal(runs: Path, run: str, signal: str, steps: int, output: str) -> dict:
    """The run stopped once on `signal` after step k (3 <= k < steps), its second start resumed at k on 2 srun
    ranks, and every step's loss and top-1 equal the uninterrupted run's; returns the second start."""
    launches = [json.loads(line) for line in (runs / run / "launches.jsonl").read_text().splitlines()]
    stops = [x for x in launches if "stopped" in x]
    starts = [x for x in launches if "launcher" in x]
    assert [x["stopped"] for x in stops] == [signal] and 3 <= stops[0]["step"] < steps, output
    assert len(starts) == 2 and starts[1]["resumed_step"] == stops[0]["step"]
    assert all(x["launcher"] == "srun" and x["world"] == 2 for x in starts)
    assert f"stopped by {signal} after step {stops[0]['step']}" in output
    a, b = _log(runs / "whole"), _log(runs / run)
    assert sorted(b) == list(range(1, steps + 1))
    for s in range(1, steps + 1):
        assert b[s]["loss"] == a[s]["loss"] and b[s]["top1"] == a[s]["top1"], s
    assert (runs / run / "backbone.pt").is_file()
    return starts[1]


def test_pretraining_stopped_at_the_time_limit_and_requeued_equals_an_uninterrupted_run(pretrained):
    """Every rank stops after the same step, rank 0 checkpoints, the job script requeues the job and its second
    start resumes there: the losses of every step equal the uninterrupted run's."""
    runs, steps, cut, _ = pretrained
    output = job_output(runs, f"*-{cut}.out")
    restart = _stopped_once_and_resumed_equal(runs, "sslfer", "SIGUSR1", steps, output)
    assert restart["slurm"]["SLURM_RESTART_COUNT"] == "1" and "requeueing job" in output
    assert "\r" not in output  # plain progress lines in a log, no bar redraws


def test_pretraining_preempted_by_the_scheduler_equals_an_uninterrupted_run(pretrained):
    """PreemptMode=REQUEUE: SLURM sends SIGTERM, every rank finishes its step, rank 0 checkpoints within the
    GraceTime and the job script requeues the job (SLURM itself would call the early exit a failure), which
    resumes there (SLURM_RESTART_COUNT 1): every step's loss equals the uninterrupted run's."""
    runs, steps, _, preempted = pretrained
    output = job_output(runs, f"*-{preempted}.out")
    restart = _stopped_once_and_resumed_equal(runs, "preempted", "SIGTERM", steps, output)
    assert restart["slurm"]["SLURM_RESTART_COUNT"] == "1" and "preempted, with a checkpoint: requeueing" in output


def test_options_with_commas_reach_the_job_intact(pretrained):
    """sbatch --export=VAR=value cuts values at commas; make pretrain-slurm hands the job its options in a file."""
    runs = pretrained[0]
    for run in ("whole", "sslfer", "preempted"):
        config = (runs / run / "config.toml").read_text()
        assert 'timeaug_frames = "2,3,4,5,6"' in config and 'timeaug_frame_weights = "5,4,3,2,1"' in config


def test_table1_evaluation_jobs_run_on_the_scheduler(slurm, pretrained, tmp_path):
    """`make table1 SLURM=1`'s scripts on a finished run: no pretraining job, one evaluation job (FR-KNN on
    LFW-style people) and the table job after it."""
    from eval.table1 import main
    from preprocess.synthetic import make_expression_sets

    runs = pretrained[0]
    _, people = make_expression_sets(tmp_path / "sets", identities=2, per_class=3)
    out = tmp_path / "rep"
    assert main(["--shards", str(tmp_path / "unused"), "--lfw", str(people), "--presets", "sslfer", "--runs",
                 str(runs), "--out", str(out), "--eval", "arch=resnet18 image_size=32 batch_size=8 knn_min_images=4",
                 "--slurm", "--gpus-per-node", "0", "--cpus-per-task", "1"]) == 0
    assert not list((out / "slurm").glob("pretrain-*.sbatch"))
    submitted = slurm.run("bash", str(out / "slurm" / "submit.sh"), cwd=ROOT)
    table_job = submitted.stdout.split()[-1]
    assert slurm.wait(table_job, 600) == "COMPLETED", job_output(out / "slurm", "*.log")
    assert "| sslfer/backbone.pt |" in (out / "table1.md").read_text()
    knn = json.loads((out / "lfw" / "metrics.json").read_text())["checkpoints"]["sslfer/backbone.pt"]["fr_knn"]
    assert 0 <= knn["acc"] <= 1
