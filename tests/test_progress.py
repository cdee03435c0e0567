"""Progress off a terminal: plain lines at most every SSLFER_PROGRESS_S seconds, never bar redraws."""
import io

from sslfer.progress import ProgressLines, progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_long_loop_prints_a_line_every_30_s_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    bar = ProgressLines(total=1500, desc="pretrain", unit="step", file=out, every=30, clock=clock)
    for _ in range(1500):  # 1,500 steps of 0.125 s: 187.5 s
        clock.t += 0.125
        bar.update(1)
        bar.set_postfix_str("loss 1.234 top1 0.50")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 7 and "\r" not in out.getvalue()  # 6 periodic lines (30 s apart) + the last
    assert len(out.getvalue().encode()) < 2000  # the budget for 1,500 steps: 20 KB
    first = lines[0]
    assert first == "pretrain: 240/1500 step (16%), 8.0 step/s, elapsed 00:30, ETA 02:37, loss 1.234 top1 0.50"
    assert lines[-1] == "pretrain: 1500/1500 step (100%), 8.0 step/s, elapsed 03:07, loss 1.234 top1 0.50"
    assert "ETA" not in lines[-1]


def test_a_short_loop_prints_nothing_and_iteration_counts():
    clock, out = Clock(), io.StringIO()
    items = []
    for i in ProgressLines(range(5), desc="x", file=out, every=30, clock=clock):
        clock.t += 1
        items.append(i)
    assert items == [0, 1, 2, 3, 4] and out.getvalue() == ""
    slow = ProgressLines(total=None, desc="align", unit="img", file=out, every=1, clock=clock, initial=10)
    clock.t += 4
    slow.update(2)
    assert out.getvalue() == "align: 12 img, 2.0 s/img, elapsed 00:04\n"  # no total: no ETA


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(monkeypatch):
    from tqdm import tqdm

    assert isinstance(progress(total=3, file=io.StringIO()), ProgressLines)
    monkeypatch.setenv("SSLFER_PROGRESS", "bar")
    bar = progress(total=3, file=io.StringIO(), every=5)
    assert isinstance(bar, tqdm)
    bar.close()
