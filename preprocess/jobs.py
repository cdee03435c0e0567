"""Per-clip jobs that cannot stop a batch. Each job runs in a worker process; a job that raises, whose process
dies (killed for memory, a crash in native code) or that runs past its timeout becomes a `Failure` with its
reason, the worker is replaced when needed, and the other jobs go on. workers=0 runs the jobs in this process
(for debugging: no timeout, no isolation)."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Callable, Iterator

# one thread per worker: the workers are the parallelism, threads inside them would oversubscribe the CPUs
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                     "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass
class Failure:
    reason: str


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask (cgroups, taskset), capped by SLURM's allocation."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return max(1, min(n, int(slurm))) if slurm.isdigit() and int(slurm) > 0 else max(1, n)


def pin_threads() -> None:
    import cv2

    cv2.setNumThreads(1)
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"exit code {code}"


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when the parent dies (even by SIGKILL), so no job outlives a run."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _worker(fn, conn, log_dir, parent) -> None:
    os.setsid()  # its own process group: stopping the worker stops the ffmpeg it started too
    _die_with_parent(parent)
    if log_dir:  # native libraries' log lines (mediapipe's, ffmpeg's) go to a file, not over the progress bars
        os.makedirs(log_dir, exist_ok=True)
        fd = os.open(os.path.join(log_dir, f"worker-{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 2)
        os.close(fd)
    pin_threads()
    conn.send(_READY)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        i, job = msg
        try:
            result = (i, True, fn(job))
        except Exception as e:  # noqa: BLE001 - any failure of one job is that job's reject reason
            result = (i, False, f"{type(e).__name__}: {e}")
        conn.send(result)


_READY = (-1, True, None)  # a worker's first message: it started (a death before it is not the job's fault)
_START_FAILURES = 3  # workers in a row that die while starting: the environment is broken, not a clip
_START_TIMEOUT_S = 300.0  # a worker not started by then counts as dead while starting (a clip's time starts after)


class _Slot:
    def __init__(self, ctx, fn, log_dir):
        self.conn, child = ctx.Pipe()
        saved = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
        os.environ.update(SINGLE_THREAD_ENV)  # inherited by the spawned worker before it imports anything
        try:
            self.proc = ctx.Process(target=_worker, args=(fn, child, log_dir, os.getpid()), daemon=True)
            self.proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self.job: int | None = None
        self.started = 0.0
        self.ready = False

    def give(self, i: int, job) -> bool:
        """False when the worker died while idle (the job was not handed over)."""
        self.job, self.started = i, time.monotonic()
        try:
            self.conn.send((i, job))
            return True
        except (BrokenPipeError, OSError):
            self.job = None
            return False

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and whatever it started
        except (ProcessLookupError, PermissionError):
            if self.proc.is_alive():
                self.proc.kill()

    def stop(self) -> None:
        self.kill()
        self.proc.join(5)
        self.conn.close()


def run_jobs(fn: Callable, jobs: list, workers: int, timeout_s: float = 0.0,
             log_dir: str = "") -> Iterator[tuple[object, object]]:
    """Yields (job, result or Failure) for every job, in the order they finish. timeout_s = 0: no limit.
    log_dir: where the workers' stderr goes (one file per worker process; default: this process's stderr)."""
    if workers <= 0 or not jobs:
        for job in jobs:
            try:
                yield job, fn(job)
            except Exception as e:  # noqa: BLE001
                yield job, Failure(f"{type(e).__name__}: {e}")
        return
    ctx = mp.get_context("spawn")
    pending = deque(range(len(jobs)))
    slots = [_Slot(ctx, fn, log_dir) for _ in range(min(workers, len(jobs)))]
    handover_failures = start_failures = 0
    try:
        while pending or any(s.job is not None for s in slots):
            for k, s in enumerate(slots):
                while slots[k].job is None and pending:
                    i = pending.popleft()
                    if slots[k].give(i, jobs[i]):
                        handover_failures = 0
                        continue
                    slots[k].stop()  # died while idle: a new worker, and the job goes back in line
                    slots[k] = _Slot(ctx, fn, log_dir)
                    handover_failures += 1
                    if handover_failures > 3:
                        raise RuntimeError("worker processes die before taking a job: see the log folder")
                    pending.appendleft(i)
            busy = [s for s in slots if s.job is not None]
            limit = _time_left(busy, timeout_s)
            ready = wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout=limit)
            finished = []  # yielded after the scan: time the caller holds a result never counts against a job
            for k, s in enumerate(slots):
                if s.job is None:
                    continue
                failure = None
                try:
                    while s.job is not None and s.conn.poll():
                        i, ok, value = s.conn.recv()
                        if i == _READY[0]:
                            s.ready, s.started, start_failures = True, time.monotonic(), 0
                            continue
                        s.job = None
                        finished.append((jobs[i], value if ok else Failure(value)))
                except (EOFError, OSError):
                    failure = f"worker process died ({_describe_exit(_exit_code(s))})"
                if s.job is None:
                    continue
                if not failure and (s.proc.sentinel in ready or not s.proc.is_alive()):
                    failure = f"worker process died ({_describe_exit(_exit_code(s))})"
                elif not failure and _time_left([s], timeout_s) == 0:
                    failure = f"timed out after {timeout_s:g} s" if s.ready else \
                        f"worker process died (not started after {_START_TIMEOUT_S:g} s)"
                if failure:
                    i = s.job
                    s.stop()
                    if not s.ready:  # died while starting: the job goes back in line
                        start_failures += 1
                        if start_failures >= _START_FAILURES:
                            last = failure.removeprefix("worker process died (").removesuffix(")")
                            raise RuntimeError(f"{start_failures} worker processes in a row died while starting "
                                               f"(the last: {last}): see the messages above"
                                               f"{' and ' + log_dir if log_dir else ''}")
                        pending.appendleft(i)
                    else:
                        finished.append((jobs[i], Failure(failure)))
                    slots[k] = _Slot(ctx, fn, log_dir)
            yield from finished
    finally:
        for s in slots:
            try:
                s.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 2
        for s in slots:
            s.proc.join(max(0.0, deadline - time.monotonic()))
        for s in slots:
            s.stop()


def _time_left(busy: list[_Slot], timeout_s: float) -> float | None:
    """Seconds until the first of these workers runs out of time (its start-up, then its job); None: no limit."""
    deadlines = [s.started + (timeout_s if s.ready else _START_TIMEOUT_S) for s in busy
                 if timeout_s > 0 or not s.ready]
    return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None


def _exit_code(slot: _Slot) -> int | None:
    slot.proc.join(1)
    return slot.proc.exitcode
