"""Stopping for the scheduler: SIGUSR1 (SLURM's `--signal=USR1@120` before the time limit, or
`scancel --signal=USR1`) and SIGTERM (preemption, scancel) only raise a flag; the loop asks every rank once a
step, so all ranks finish the same step, rank 0 writes checkpoints/last.pt and all of them exit. The exit status
tells the job script what to do: REQUEUE (75) after SIGUSR1, 143 (128 + SIGTERM) after SIGTERM, whose job SLURM
requeues itself when preempted with --requeue, and which a user's scancel must not undo."""
from __future__ import annotations

import signal

REQUEUE = 75  # EX_TEMPFAIL: stopped early on purpose; run the same command again to continue
EXIT_STATUS = {signal.SIGUSR1: REQUEUE, signal.SIGTERM: 128 + signal.SIGTERM}


class Stopped(Exception):
    """The run stopped on a signal after checkpointing; `status` is the process's exit status."""

    def __init__(self, signum: int, step: int, rank: int = 0):
        self.signum, self.step, self.rank = signum, step, rank
        self.status = EXIT_STATUS[signum]
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}: checkpoints/last.pt holds "
                         f"it; the same command continues the run")


class StopSignals:
    """Catches SIGUSR1 and SIGTERM (main thread) until `restore()`; `received` is the first one caught."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._catch) for s in EXIT_STATUS}

    def _catch(self, signum, frame):
        if self.received is None:
            self.received = signum

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def ignore_in_worker(_worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: SLURM signals every process of a job step; a worker killed by it would make
    the main process fail mid-step (torch raises when a worker dies). The main process decides, and ends its
    workers itself with `close_loader`."""
    for s in EXIT_STATUS:
        signal.signal(s, signal.SIG_IGN)


def close_loader(iterator) -> None:
    """End a DataLoader iterator's workers now: they ignore SIGTERM, so the terminate() that multiprocessing
    sends at interpreter exit would not end them and the exit would wait for them forever."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in getattr(iterator, "_workers", []):
        if worker.is_alive():
            worker.kill()
            worker.join(5)
