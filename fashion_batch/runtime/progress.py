"""Progress of a job in listings, for whoever watches it: one bar on a terminal, a log line
every `interval` seconds everywhere else.

The embed driver feeds it from the loop that collects each unit's statistics
(fashion_batch.embed.job), so it counts listings done (embedded or quarantined) out of the
input's total, not Ray Data's units or blocks. On a TTY it is one tqdm bar (done/total, listings/s,
ETA); off a TTY (CI, `ray job submit` logs, an Airflow task) a bar's carriage returns would be
noise, so it logs a plain INFO line on this module's logger instead, at most once per `interval`
and once at the end: a long run shows it is moving without a line per unit. Lines are written
when a unit finishes (the driver loop drives them; no timer thread): while none does, the log is
quiet, for at most `--stall-timeout`. Ray Data's own progress is switched off for the job
(runtime.ray.quiet_ray_data) so only this shows.

The CLI shows this logger's INFO lines by default (fashion_batch.cli); a Python caller sees them
where its logging shows INFO for `fashion_batch.runtime.progress`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger(__name__)

# Seconds between two log lines off a TTY: often enough to see a stall in a job's log, rare
# enough that an hours-long run leaves a readable log.
LOG_INTERVAL_S = 30.0


class Progress:
    """Listings done out of a total, shown as a bar on a TTY or logged every `interval` seconds.

    Args:
        total: listings the job covers (the whole input, resumed units included).
        done: listings already done when it starts (units a resumed run skips); the rate and
            ETA count only what this run does.
        title: a line logged once at the start (what runs, on what), before any bar.
        what: the verb the lines and the bar start with.
        interval: seconds between log lines off a TTY.
        stream: where the bar goes; whether it is a TTY picks bar or log lines.
        tty: override the TTY check (tests).
        clock: monotonic seconds (tests inject one).
    """

    def __init__(
        self,
        total: int,
        done: int = 0,
        *,
        title: str | None = None,
        what: str = "embed",
        interval: float = LOG_INTERVAL_S,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.done, self.what = total, done, what
        self.interval, self.clock = interval, clock
        self._first = done
        self._start = clock()
        self._mark = (self._start, done)  # (time, done) at the last line: the rate's window
        self._steady: tuple[float, int] | None = None  # (time, done) at the first unit: the ETA's
        stream = stream if stream is not None else sys.stderr
        if title:
            log.info("%s", title)
        self._bar = None
        if tty if tty is not None else _isatty(stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=done,
                desc=what,
                unit=" listings",
                file=stream,
                dynamic_ncols=True,
                smoothing=0.1,  # a rate over the last units, not since a slow actor start-up
            )

    def advance(self, listings: int) -> None:
        """Count `listings` more done; log a line if `interval` has passed since the last."""
        self.done += listings
        if self._bar is not None:
            self._bar.update(listings)
            return
        now = self.clock()
        if self._steady is None and listings:
            self._steady = (now, self.done)
        if now - self._mark[0] >= self.interval:
            log.info("%s", self.line(now))
            self._mark = (now, self.done)

    def close(self) -> None:
        """End the bar, or log the final line (done/total, time, rate)."""
        if self._bar is not None:
            self._bar.close()
            return
        now = self.clock()
        elapsed = now - self._start
        rate = self._rate(self._start, self._first, now)
        log.info(
            "%s: %s/%s listings in %s, %s listings/s",
            self.what,
            f"{self.done:,}",
            f"{self.total:,}",
            _hms(elapsed),
            f"{rate:,.1f}" if rate is not None else "-",
        )

    def line(self, now: float) -> str:
        """'embed: 900/2,000 listings (45%), 90.0 listings/s, ETA 0:00:12'. The rate is over the
        time since the previous line: the current pace, so the actors' start-up and a stall show.
        The ETA is from the pace since this run's first unit finished, which the start-up does
        not dilute (from the first line's pace, a run that has just started would look hours
        long); '?' until a second unit gives that pace."""
        rate = self._rate(*self._mark, now)
        steady = self._rate(*self._steady, now) if self._steady else None
        left = self.total - self.done
        eta = _hms(left / steady) if steady else "?"
        share = f"{100 * self.done / self.total:.0f}%" if self.total else "-"
        speed = f"{rate:,.1f}" if rate is not None else "-"
        return (
            f"{self.what}: {self.done:,}/{self.total:,} listings ({share}), "
            f"{speed} listings/s, ETA {eta}"
        )

    def _rate(self, since: float, done_then: int, now: float) -> float | None:
        """Listings per second from `since` (when `done_then` were done) to `now`; None when no
        time has passed."""
        elapsed = now - since
        return (self.done - done_then) / elapsed if elapsed > 0 else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    """A terminal a bar can be drawn on. A pseudo-terminal nobody sized (0 columns: `script`
    without a terminal, some CI runners) is not one: tqdm would draw nothing there."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # a TTY without a file descriptor
        return True


def _hms(seconds: float) -> str:
    """0:01:05 for 65.2 seconds."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
