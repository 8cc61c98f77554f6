"""runtime.progress: listings done/total as INFO lines off a TTY (at most one per interval, one
at the end) and as one bar on a TTY. Time comes from an injected clock, never the wall."""

from __future__ import annotations

import io
import logging

import pytest

from fashion_batch.runtime.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="fashion_batch.runtime.progress")

    def progress_lines() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.name == "fashion_batch.runtime.progress"
        ]

    return progress_lines


def test_off_a_tty_logs_done_total_rate_and_eta_once_per_interval(lines):
    clock = Clock()
    progress = Progress(
        1000, title="embed: 1,000 listings, model m", interval=30, tty=False, clock=clock
    )
    assert lines() == ["embed: 1,000 listings, model m"]

    clock.now = 10
    progress.advance(100)  # before the interval: nothing
    assert len(lines()) == 1
    clock.now = 40
    progress.advance(300)
    assert lines()[-1] == "embed: 400/1,000 listings (40%), 10.0 listings/s, ETA 0:01:00"
    clock.now = 50
    progress.advance(100)  # 10 s after the last line: nothing
    assert len(lines()) == 2
    clock.now = 100
    progress.advance(500)
    assert lines()[-1] == "embed: 1,000/1,000 listings (100%), 10.0 listings/s, ETA 0:00:00"

    clock.now = 101
    progress.close()
    assert lines()[-1] == "embed: 1,000/1,000 listings in 0:01:41, 9.9 listings/s"
    assert len(lines()) == 4


def test_the_rate_is_the_pace_since_the_last_line_so_start_up_and_stalls_show(lines):
    clock = Clock()
    progress = Progress(1000, interval=30, tty=False, clock=clock)
    clock.now = 30
    progress.advance(100)  # the actors were starting: no pace to give an ETA from yet
    assert lines()[-1] == "embed: 100/1,000 listings (10%), 3.3 listings/s, ETA ?"
    clock.now = 60
    progress.advance(600)
    assert lines()[-1] == "embed: 700/1,000 listings (70%), 20.0 listings/s, ETA 0:00:15"
    clock.now = 90
    progress.advance(0)  # nothing done since the last line: the ETA keeps the run's pace
    assert lines()[-1] == "embed: 700/1,000 listings (70%), 0.0 listings/s, ETA 0:00:30"


def test_the_eta_leaves_out_the_start_up(lines):
    """Actors that take 60 s to start, then 100 listings/s: the first line's pace is diluted by
    the start-up, its ETA is not given (from that pace it would say 0:14:00 for 14 s of work),
    and the next ETA comes from the pace since the first unit."""
    clock = Clock()
    progress = Progress(1500, interval=5, tty=False, clock=clock)
    clock.now = 60
    progress.advance(100)  # the first unit, after the start-up
    assert lines()[-1] == "embed: 100/1,500 listings (7%), 1.7 listings/s, ETA ?"
    clock.now = 63
    progress.advance(300)
    clock.now = 66
    progress.advance(300)
    assert lines()[-1] == "embed: 700/1,500 listings (47%), 100.0 listings/s, ETA 0:00:08"


def test_a_resumed_run_counts_the_skipped_listings_as_done_but_not_in_its_rate(lines):
    clock = Clock()
    with Progress(1000, done=600, interval=5, tty=False, clock=clock) as progress:
        clock.now = 20
        progress.advance(200)
        assert lines() == ["embed: 800/1,000 listings (80%), 10.0 listings/s, ETA ?"]
        clock.now = 40
        progress.advance(200)
    assert lines()[-1] == "embed: 1,000/1,000 listings in 0:00:40, 10.0 listings/s"


def test_no_rate_before_time_passes_and_an_empty_total(lines):
    clock = Clock()
    with Progress(0, interval=0, tty=False, clock=clock) as progress:
        progress.advance(0)
    assert lines() == [
        "embed: 0/0 listings (-), - listings/s, ETA ?",
        "embed: 0/0 listings in 0:00:00, - listings/s",
    ]


def test_on_a_tty_one_bar_and_no_log_lines_but_the_title(lines):
    stream = io.StringIO()
    clock = Clock()
    with Progress(200, title="embed: 200 listings", stream=stream, tty=True, clock=clock) as p:
        for _ in range(4):
            clock.now += 100
            p.advance(50)
    assert lines() == ["embed: 200 listings"]
    bar = stream.getvalue()
    assert "200/200" in bar and "listings/s" in bar


def test_the_tty_check_is_the_streams():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    with Progress(1, stream=Terminal()) as on_a_terminal:
        assert on_a_terminal._bar is not None
    with Progress(1, stream=io.StringIO()) as elsewhere:
        assert elsewhere._bar is None


def test_a_pseudo_terminal_of_no_width_gets_log_lines_and_a_sized_one_the_bar():
    import fcntl
    import os
    import struct
    import termios

    leader, follower = os.openpty()  # a new pty is 0 x 0, as under `script` without a terminal
    with os.fdopen(follower, "w") as stream:
        try:
            with Progress(1, stream=stream) as unsized:
                assert unsized._bar is None
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            with Progress(1, stream=stream) as sized:
                assert sized._bar is not None
        finally:
            os.close(leader)
