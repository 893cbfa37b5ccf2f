"""How far a long piece of work is, the one way every step shows it (training, the frozen-prefix cache pass, the
contrastive stage, evaluation, prediction, the out-of-fold heads of `data issues`).

On a terminal (the stream, stderr by default, is a TTY) a tqdm bar with the rate and the time left. Otherwise one
plain line every `LOG_EVERY_PERCENT` percent, and never within `LOG_MIN_SECONDS` of the start or of the line
before (a pass of a few seconds stays silent; a pass of hours writes about 20 lines): by default through the
`textxfer` logger, so the lines land in the run's train.log. With a bar on the terminal the lines still go to the
logger's handlers that do not write to a terminal (train.log). A total that is not known (a stream read from
stdin) gives a line every `LOG_EVERY_SECONDS_UNKNOWN` seconds. The line at 100% is left out: each step says
itself when it is done and how long it took.

Under several processes only the main one (rank 0) shows progress: the others would repeat it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

LOG_EVERY_PERCENT = 5
LOG_MIN_SECONDS = 5.0
"""No line sooner than this after the start or the line before: short work stays quiet."""
LOG_EVERY_SECONDS_UNKNOWN = 60.0

log = logging.getLogger("textxfer")
T = TypeVar("T")


def is_main_process() -> bool:
    """Whether this is process 0 of the run: torch.distributed's rank once it is set up, else the launcher's RANK
    (accelerate launch and torchrun set it), else a single process."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0").strip() in ("", "0")


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressReport:
    """The progress of one piece of work of `total` `unit`s (None: not known), from `initial` (a resumed run).

    `update(n)` after each n units are done (or `track(items)`), `note(loss=...)` for figures shown beside the bar and at the end of
    the lines, `close()` (or a `with` block) at the end. `say` receives the plain lines (default: the `textxfer`
    logger); `show` False (default: only the main process) makes it silent; `approximate` writes the total as
    ~N (an estimate, such as the newline count of a CSV file)."""

    def __init__(self, desc: str, total: int | None, unit: str, *, initial: int = 0, approximate: bool = False,
                 say: Callable[[str], None] | None = None, show: bool | None = None, stream: IO | None = None,
                 leave: bool = False, clock: Callable[[], float] = time.monotonic):
        self.desc, self.total, self.unit, self.approximate = desc, total or None, unit, approximate
        self.done = self.start_done = initial
        self.say, self.clock = say, clock
        self.notes: dict[str, str] = {}
        self.show = is_main_process() if show is None else show
        self.started = self.last_line = clock()
        self.next_percent = self._next_percent(initial)
        self.bar = None
        stream = sys.stderr if stream is None else stream
        if self.show and is_terminal(stream):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=initial, unit=unit, desc=desc, file=stream, leave=leave,
                            dynamic_ncols=True, smoothing=0.1)

    def _next_percent(self, done: int) -> int:
        if not self.total:
            return 0
        return LOG_EVERY_PERCENT * (1 + int(100 * done / self.total) // LOG_EVERY_PERCENT)

    def update(self, n: int = 1) -> None:
        if not self.show:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        now = self.clock()
        if now - self.last_line < (LOG_MIN_SECONDS if self.total else LOG_EVERY_SECONDS_UNKNOWN):
            return
        if self.total:
            if self.done >= self.total or 100 * self.done / self.total < self.next_percent:
                return
            self.next_percent = self._next_percent(self.done)
        self.last_line = now
        self.write(self.line(now))

    def track(self, items: Iterable[T], size: Callable[[T], int] = lambda item: 1) -> Iterator[T]:
        """The items, each counted (`size` units) once the loop body is done with it."""
        for item in items:
            yield item
            self.update(size(item))

    def note(self, **values: object) -> None:
        """Figures to show beside the bar and at the end of the lines (e.g. the running loss)."""
        self.notes.update({k: str(v) for k, v in values.items()})
        if self.bar is not None:
            self.bar.set_postfix(self.notes, refresh=False)

    def line(self, now: float) -> str:
        """The plain line: where the work stands, its rate and (with a total) the time left."""
        rate = (self.done - self.start_done) / max(now - self.started, 1e-9)
        notes = "".join(f", {k} {v}" for k, v in self.notes.items())
        if not self.total:
            return f"{self.desc}: {self.done:,} {self.unit}, {format_rate(rate)} {self.unit}/s{notes}"
        left = max(self.total - self.done, 0) / rate if rate > 0 else float("inf")
        about = "~" if self.approximate else ""
        return (f"{self.desc}: {min(100, int(100 * self.done / self.total))}% ({self.done:,} of {about}{self.total:,} "
                f"{self.unit}), {format_rate(rate)} {self.unit}/s, {format_duration(left)} left{notes}")

    def write(self, line: str) -> None:
        """A line to `say`; by default to the `textxfer` logger, whose terminal handlers are skipped while the bar
        shows there (train.log gets the line, the terminal has the bar)."""
        if self.say is not None:
            if self.bar is None:
                self.say(line)
            return
        if self.bar is None:
            log.info(line)
        elif log.isEnabledFor(logging.INFO):
            record = log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None)
            for handler in log.handlers:
                if not is_terminal(getattr(handler, "stream", None)) and record.levelno >= handler.level:
                    handler.handle(record)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressReport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_rate(rate: float) -> str:
    """1,234 from 100 a second, 12.3 below, 0.12 below 1 (a slow step still reads as more than 0)."""
    if rate >= 99.95:
        return f"{rate:,.0f}"
    return f"{rate:.1f}" if rate >= 0.995 else f"{rate:.2g}"


def format_duration(seconds: float) -> str:
    """45s, 3m07s, 2h05m; `unknown time` before any work is done."""
    if seconds == float("inf") or seconds != seconds:
        return "unknown time"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
