"""No file stops a build: every per-clip failure becomes a reject with its reason and the run goes on.
Each test makes its own odd files."""
import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from preprocess import synthetic
from preprocess.jobs import Failure, run_jobs
from tests.conftest import build


def _job(x):
    """A job for run_jobs: 'kill' dies by SIGKILL (as the OOM killer does), 'sleep' hangs, 'raise' raises,
    'exit_soon' returns and then its worker dies while idle, ('child', file) starts a process and hangs."""
    if isinstance(x, tuple):
        child = subprocess.Popen(["sleep", "120"])
        with open(x[1], "w") as f:
            f.write(str(child.pid))
        time.sleep(120)
    if x == "exit_soon":
        import threading

        threading.Timer(0.1, os._exit, [0]).start()
        return "ok"
    if x == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if x == "sleep":
        time.sleep(60)
    if x == "raise":
        raise ValueError("bad clip")
    return x * 2


def test_a_killed_hung_or_failing_job_is_a_failure_and_the_others_finish():
    jobs = [1, "kill", 2, "sleep", 3, "raise", 4]
    t = time.monotonic()
    results = dict(run_jobs(_job, jobs, workers=2, timeout_s=8))
    assert time.monotonic() - t < 50  # the hung job was stopped at its timeout, not waited for
    assert [results[i] for i in (1, 2, 3, 4)] == [2, 4, 6, 8]
    assert isinstance(results["kill"], Failure) and "killed by SIGKILL" in results["kill"].reason
    assert isinstance(results["sleep"], Failure) and "timed out after 8 s" in results["sleep"].reason
    assert isinstance(results["raise"], Failure) and results["raise"].reason == "ValueError: bad clip"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_timed_out_job_takes_what_it_started_with_it(tmp_path):
    (result,) = run_jobs(_job, [("child", str(tmp_path / "pid"))], workers=1, timeout_s=3)
    assert isinstance(result[1], Failure) and "timed out" in result[1].reason
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def test_a_worker_that_dies_while_idle_is_replaced_and_loses_no_job():
    results = []
    for job, r in run_jobs(_job, ["exit_soon", 1, 2], workers=1, timeout_s=30):
        results.append((job, r))
        time.sleep(0.5)  # a slow consumer: the idle worker is dead before it gets the next job
    assert sorted(map(str, results)) == sorted(map(str, [("exit_soon", "ok"), (1, 2), (2, 4)]))


@pytest.mark.parametrize("in_worker,reason", [("raise ImportError('not in a worker')", "exit code 1"),
                                               ("time.sleep(60)", "not started after 2 s")])
def test_workers_that_cannot_start_stop_the_run_instead_of_failing_every_job(tmp_path, monkeypatch, in_worker,
                                                                             reason):
    """A broken environment (the job's module fails to import in a worker, or hangs there) is one clear error,
    not a reject for every clip; a slow start does not count against a job's timeout."""
    (tmp_path / "parent_only.py").write_text(
        f"import os, time\nif os.getpid() != {os.getpid()}:\n    {in_worker}\n"
        "def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "parent_only", raising=False)
    monkeypatch.setattr("preprocess.jobs._START_TIMEOUT_S", 2.0)
    import parent_only

    with pytest.raises(RuntimeError, match=f"3 worker processes in a row died while starting \\(the last: "
                                           f"{reason}\\)"):
        list(run_jobs(parent_only.double, list(range(20)), workers=2, timeout_s=30))


def test_in_process_jobs_turn_exceptions_into_failures():
    results = dict(run_jobs(_job, [1, "raise"], workers=0))
    assert results[1] == 2 and results["raise"].reason == "ValueError: bad clip"


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def odd_corpus(tmp_path_factory, photos):
    """A good clip, a podcast (audio + cover art, named .mp4), a clip whose first video stream is cover art, a
    file name that is not UTF-8, a folder named like a video and a folder link that loops."""
    root = tmp_path_factory.mktemp("odd")
    good = synthetic.make_clip(root / "id1" / "v" / "good.mp4", photos["astronaut"], seconds=2.0)
    cover = root / "cover.jpg"
    _ffmpeg("-i", good, "-frames:v", "1", cover)
    (root / "id2" / "v").mkdir(parents=True)
    _ffmpeg("-f", "lavfi", "-i", "sine=duration=2", "-i", cover, "-map", "0", "-map", "1", "-c:a", "aac",
            "-c:v", "mjpeg", "-disposition:v", "attached_pic", root / "id2" / "v" / "podcast.mp4")
    (root / "id3" / "v").mkdir(parents=True)
    _ffmpeg("-i", cover, "-i", good, "-map", "0:v", "-map", "1:v", "-c:v:0", "mjpeg", "-c:v:1", "copy",
            "-disposition:v:0", "attached_pic", root / "id3" / "v" / "cover_first.mp4")
    latin1 = os.fsencode(root / "id4" / "v") + b"/caf\xe9.mp4"  # Latin-1, not UTF-8
    os.makedirs(os.path.dirname(latin1))
    os.link(good, latin1)
    (root / "id5" / "v" / "folder.mp4").mkdir(parents=True)
    os.symlink(root / "id5", root / "id5" / "v" / "loop")
    os.remove(cover)
    return root


def test_odd_files_are_kept_or_rejected_with_reasons(odd_corpus, tmp_path):
    import pyarrow.parquet as pq

    from preprocess.__main__ import main
    from sslfer.shards.schema import REJECTS

    shards = tmp_path / "s"
    code = main(["build", str(odd_corpus), str(shards), "workers=1", "region_weights=random"])
    assert code == 3  # some clips failed, the build finished
    rejects = pq.read_table(shards / REJECTS).to_pylist()
    reasons = {r["source"]: r["reason"] for r in rejects}
    assert "only an attached picture" in reasons["id2/v/podcast.mp4"]
    assert any(s.endswith("folder.mp4") and "folder named like a video" in r for s, r in reasons.items())
    assert any(s.endswith("loop") and "already scanned" in r for s, r in reasons.items())
    sources = set(pq.read_table(shards / "manifest.parquet", columns=["source"]).column("source").to_pylist())
    assert {"id1/v/good.mp4", "id3/v/cover_first.mp4", "id4/v/caf\\xe9.mp4"} <= sources


def test_zero_frame_rate_falls_back():
    from sslfer.decode import frame_rate

    assert frame_rate({"avg_frame_rate": "0/0", "r_frame_rate": "30000/1001"}) == pytest.approx(29.97, abs=0.01)
    assert frame_rate({"avg_frame_rate": "0/0", "r_frame_rate": "0/0"}) == 25.0
    assert frame_rate({}) == 25.0


class _FakeFfmpeg:
    """Stands in for ffmpeg-python's chain: run_async gives a process printing showinfo lines with NOPTS."""

    def __init__(self, frames, stderr_lines):
        self.frames, self.stderr_lines = frames, stderr_lines

    def input(self, *a, **k):
        return self

    def __getitem__(self, _):
        return self

    def filter(self, *a, **k):
        return self

    output = global_args = filter

    def run_async(self, **k):
        class Proc:
            stdout = io.BytesIO(b"".join(f.tobytes() for f in self.frames))
            stderr = io.BytesIO("\n".join(self.stderr_lines).encode())

            def wait(self):
                return 0
        return Proc()


def test_frames_without_timestamps_are_placed_not_waited_for(monkeypatch):
    from sslfer import decode

    frames = [np.full((4, 6, 3), i, np.uint8) for i in range(14)]
    lines = [f"[Parsed_showinfo_2 @ 0x1] n:   {i} pts:  {p} pts_time:{p} duration: 1 s:6x4 fmt:rgb24"
             for i, p in enumerate(["0"] + ["NOPTS"] * 13)]
    monkeypatch.setattr(decode, "ffmpeg", _FakeFfmpeg(frames, lines))
    monkeypatch.setattr(decode, "probe", lambda path: {"index": 0, "avg_frame_rate": "25/1"})
    report = decode.DecodeReport()
    got = list(decode.read_video("x.mp4", 4.0, 640, report))  # 25 fps source, sampled at 4 fps
    assert [f.timestamp for f in got] == pytest.approx([0.0, 0.28, 0.52])
    assert [f.source_frame for f in got] == [0, 7, 13] and [int(f.rgb[0, 0, 0]) for f in got] == [0, 7, 13]
    assert "13 decoded frames had no timestamp" in report.warning


def test_a_clip_whose_job_fails_is_rejected_and_the_build_goes_on(good_corpus, tmp_path, monkeypatch):
    from preprocess import faces

    real = faces.run_faces

    def flaky(clip, cfg):
        if clip.speaker == "id00002":
            raise MemoryError("simulated")
        return real(clip, cfg)

    monkeypatch.setattr(faces, "run_faces", flaky)
    summary = build(good_corpus, tmp_path / "s", workers=0)
    assert summary["clips_failed"] == 1 and "MemoryError: simulated" in summary["failed"][0]["reason"]
    assert summary["clips_usable"] == summary["clips"] - 1
    monkeypatch.setattr(faces, "run_faces", real)
    again = build(good_corpus, tmp_path / "s", workers=0)  # not cached as failed: tried again
    assert again["work_done"]["faces"] == 1 and again["clips_failed"] == 0


def test_faceswap_false_skips_the_step(good_corpus, tmp_path):
    from tests.test_shards import read_samples

    summary = build(good_corpus, tmp_path / "s", "faceswap=false", workers=0)
    assert summary["work_done"]["faceswap"] == 0 and summary["composites"] == 0
    assert not list((tmp_path / "s" / ".cache" / "faceswap").glob("*.npz"))
    samples = read_samples(tmp_path / "s")
    assert samples and not any(s.has_swap().any() for s in samples)


@pytest.mark.parametrize("contents", [[], ["id1/v/talk.wav"], ["notes.txt", "id1/readme.md"]])
def test_a_corpus_with_no_clips_is_a_usage_error(contents, tmp_path, capsys):
    """Exit 2 with one line saying where it looked and for which layout; no shards folder is made."""
    from preprocess.__main__ import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for rel in contents:
        (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
        (corpus / rel).write_bytes(b"RIFF....")
    assert main(["build", str(corpus), str(tmp_path / "shards"), "region_descriptor=landmarks"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no clips in {corpus}") and "layout videos" in err[0]
    assert "<speaker>/<video>/<clip>" in err[0] and ".mp4" in err[0]
    assert not (tmp_path / "shards").exists()
    assert main(["build", str(corpus), str(tmp_path / "shards"), "layout=frames", "region_descriptor=landmarks"]) == 2
    assert "layout frames" in capsys.readouterr().err


def test_a_part_where_every_clip_fails_fails_its_slurm_task(tmp_path, photos):
    """Exit 4 when no clip is usable (e.g. no ffmpeg on a compute node); the array task turns exit 3 (some
    clips failed) into 0 but not 4. The sbatch script runs here under plain bash as one array task."""
    bad = tmp_path / "bad"
    for i in range(2):
        (bad / f"id{i}" / "v").mkdir(parents=True)
        (bad / f"id{i}" / "v" / "x.mp4").write_text("not a video")
    mixed = tmp_path / "mixed"
    synthetic.make_clip(mixed / "id0" / "v" / "good.mp4", photos["astronaut"], seconds=2.0)
    (mixed / "id1" / "v").mkdir(parents=True)
    (mixed / "id1" / "v" / "x.mp4").write_text("not a video")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    codes = {}
    for name in ("bad", "mixed"):
        env = {**os.environ, "DATA": str(tmp_path / name), "SHARDS": str(tmp_path / f"s-{name}"), "N": "1",
               "SLURM_ARRAY_TASK_ID": "0", "SLURM_SUBMIT_DIR": root, "PYTHON": sys.executable,
               "ARGS": "region_descriptor=landmarks workers=0"}
        r = subprocess.run(["bash", os.path.join(root, "configs/slurm/shards.sbatch")], env=env,
                           capture_output=True, text=True, timeout=600)
        codes[name] = r.returncode
        if name == "bad":
            assert "error: every clip failed (2)" in r.stderr
    assert codes == {"bad": 4, "mixed": 0}


@pytest.mark.parametrize("bad", ["device=cuda", "device=gpu", "layout=tree", "jpeg_quality=0"])
def test_bad_shards_options_are_one_line_before_any_decoding(bad, good_corpus, tmp_path, capsys):
    import torch

    from preprocess.__main__ import main

    if bad == "device=cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["build", str(good_corpus), str(tmp_path / "shards"), "region_weights=random", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}")
    assert not (tmp_path / "shards").exists()
