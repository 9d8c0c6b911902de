"""Progress of long commands: log lines with done/total, elapsed time and an ETA where stderr is not
a terminal (cropstar.cli.common.ProgressLog, behind stage_progress)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cropstar.cli import common
from cropstar.cli.common import ProgressLog, format_duration, stage_progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def log_and_lines(**options: object) -> tuple[ProgressLog, Clock, io.StringIO]:
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, width=300, force_terminal=False)
    return ProgressLog(console, clock=clock, **options), clock, out  # type: ignore[arg-type]


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_durations_read_as_seconds_minutes_hours() -> None:
    assert [format_duration(s) for s in (0, 45.4, 125, 3720, -1)] == ["0s", "45s", "2m05s", "1h02m", "0s"]


def test_a_line_per_tenth_with_done_total_elapsed_and_eta() -> None:
    log, clock, out = log_and_lines(unit="runs")
    for done in range(1, 21):  # 20 units, 10 s each
        clock.now += 10
        log.report("star (final)", done, 20)
    assert len(lines(out)) == 10
    assert lines(out)[0] == "star (final): 2/20 runs (10%), elapsed 20s, ETA 3m00s"
    assert lines(out)[4] == "star (final): 10/20 runs (50%), elapsed 1m40s, ETA 1m40s"
    assert lines(out)[-1] == "star (final): 20/20 runs (100%), elapsed 3m20s, done"


def test_a_line_every_so_often_between_tenths_and_quick_tenths_held_back() -> None:
    log, clock, out = log_and_lines(every=30.0, min_gap=5.0)
    for done in range(1, 1001):  # 1000 units, 0.1 s each: a tenth every 10 s
        clock.now += 0.1
        log.report("pixels", done, 1000, info=f"chunk {done // 100}")
    assert len(lines(out)) == 10 and "ETA 1m30s, chunk 1" in lines(out)[0]
    log, clock, out = log_and_lines(every=30.0, min_gap=5.0)
    for done in range(1, 11):  # tenths 0.4 s apart: only the end
        clock.now += 0.4
        log.report("quick", done, 10)
    assert lines(out) == ["quick: 10/10 (100%), elapsed 4s, done"]
    clock.now += 3
    log.report("next", 1, 1)  # a stage after another: its time counts from the end of that one
    assert lines(out)[-1] == "next: 1/1 (100%), elapsed 3s, done"
    log, clock, out = log_and_lines(every=30.0)
    for done in range(1, 101):  # 1 % every 10 s: a tenth every 100 s, a line every 30 s as well
        clock.now += 10
        log.report("slow", done, 100)
    assert len(lines(out)) == 10 + 30 and lines(out)[0] == "slow: 3/100 (3%), elapsed 30s, ETA 16m10s"


def test_inner_stages_only_get_the_periodic_line_and_restart_their_clock() -> None:
    log, clock, out = log_and_lines(every=35.0, inner={"batches"})
    for epoch in range(1, 4):
        for batch in range(1, 11):  # an epoch: 10 batches of 4 s
            clock.now += 4
            log.report("batches", batch, 10, info=f"loss {1 / epoch:.2f}")
        log.report("epochs", epoch, 3, info=f"val {1 / epoch:.2f}")
    assert lines(out) == [
        "batches: 9/10 (90%), elapsed 36s, ETA 4s, loss 1.00",  # 36 s after the start
        "epochs: 1/3 (33%), elapsed 40s, ETA 1m20s, val 1.00",
        "batches: 9/10 (90%), elapsed 36s, ETA 4s, loss 0.50",  # the epoch's batches, from its start
        "epochs: 2/3 (67%), elapsed 1m20s, ETA 40s, val 0.50",
        "batches: 9/10 (90%), elapsed 36s, ETA 4s, loss 0.33",
        "epochs: 3/3 (100%), elapsed 2m00s, done, val 0.33",
    ]


def test_without_a_total_only_counts() -> None:
    log, clock, out = log_and_lines(every=10.0)
    clock.now += 12
    log.report("reading", 7, None)
    assert lines(out) == ["reading: 7, elapsed 12s"]


def test_stage_progress_logs_lines_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=out, width=300, force_terminal=False))
    with stage_progress("shards") as report:
        report("writing shards", 3, 3)
    assert out.getvalue().startswith("writing shards: 3/3 shards (100%), elapsed ")
    assert "━" not in out.getvalue()  # no bar


def test_stage_progress_draws_bars_in_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, force_interactive=True)
    monkeypatch.setattr(common, "err_console", console)
    with stage_progress("shards") as report:
        report("writing shards", 3, 3, info="last one")
    assert "━" in out.getvalue() and "3/3" in out.getvalue() and "last one" in out.getvalue()
