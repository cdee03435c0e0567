"""Progress of long loops, for every stage: a tqdm bar on a terminal; elsewhere (a SLURM log, a file, a pipe)
one plain line every SSLFER_PROGRESS_S seconds (default 30) with the count, rate, ETA and the loop's own
numbers, because a bar's redraws fill a log with carriage returns (3,740 redraws for the demo's 3,000 steps).

`progress(...)` takes tqdm's arguments; SSLFER_PROGRESS=bar|lines forces one form."""
from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

DEFAULT_EVERY_S = 30.0


def every_s() -> float:
    try:
        return max(0.0, float(os.environ.get("SSLFER_PROGRESS_S", DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


def _is_terminal(file) -> bool:
    forced = os.environ.get("SSLFER_PROGRESS", "").lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressLines:
    """tqdm's interface (update, set_postfix_str, iteration, close, `with`), printed as a plain line at most
    every `every` seconds. Loops too short for one line print nothing; a loop that printed gets a last line
    when it closes."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, file=None, every: float | None = None, clock=time.monotonic, **_tqdm_only):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.disable = disable
        self.file = file
        self.every = every_s() if every is None else every
        self.clock = clock
        self.t0 = self.last = clock()
        self.postfix = ""
        self.printed = 0
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._print(now)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def line(self, now: float, final: bool = False) -> str:
        elapsed = now - self.t0
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}" + (f" ({self.n / self.total:.0%})" if self.total else "")]
        if rate >= 1 or rate == 0:
            parts.append(f"{rate:.1f} {self.unit}/s")
        else:
            parts.append(f"{1 / rate:.1f} s/{self.unit}")
        parts.append(f"elapsed {tqdm.format_interval(elapsed)}")
        if self.total and rate > 0 and not final:
            parts.append(f"ETA {tqdm.format_interval((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _print(self, now: float, final: bool = False) -> None:
        print(self.line(now, final), file=self.file or sys.stderr, flush=True)
        self.printed += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.printed:
            self._print(self.clock(), final=True)


def progress(iterable=None, **kwargs):
    """A tqdm bar when the output is a terminal, else ProgressLines (same arguments)."""
    if _is_terminal(kwargs.get("file") or sys.stderr):
        kwargs.pop("every", None)
        return tqdm(iterable, **kwargs)
    return ProgressLines(iterable, **kwargs)
