"""How far a prediction is: a progress bar with rate and time left on a terminal, and in a log (stderr not a
terminal) one line every `LOG_EVERY_PERCENT` percent, or every `LOG_EVERY_SECONDS` seconds when the total is
unknown (stdin)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

LOG_EVERY_PERCENT = 5
LOG_EVERY_SECONDS = 60.0


class RowProgress:
    def __init__(self, total: int | None, done: int, say: Callable[[str], None]):
        self.total, self.done, self.say = total, done, say
        self.started, self.start_rows = time.monotonic(), done
        self.next_percent = LOG_EVERY_PERCENT * (1 + int(100 * done / total) // LOG_EVERY_PERCENT) if total else 0
        self.next_time = self.started + LOG_EVERY_SECONDS
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="rows", desc="predict", dynamic_ncols=True,
                            smoothing=0.1)

    def update(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
            return
        now = time.monotonic()
        if self.total:
            percent = 100 * self.done / self.total
            if percent < self.next_percent or self.done >= self.total:
                return
            self.next_percent = LOG_EVERY_PERCENT * (1 + int(percent) // LOG_EVERY_PERCENT)
        elif now < self.next_time:
            return
        self.next_time = now + LOG_EVERY_SECONDS
        self.say(self.line(now))

    def line(self, now: float) -> str:
        rate = (self.done - self.start_rows) / max(now - self.started, 1e-9)
        if not self.total:
            return f"predict: {self.done:,} rows, {rate:,.0f} rows/s"
        left = max(self.total - self.done, 0) / rate if rate > 0 else float("inf")
        return (f"predict: {min(100, int(100 * self.done / self.total))}% ({self.done:,} of ~{self.total:,} rows), "
                f"{rate:,.0f} rows/s, {format_seconds(left)} left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_seconds(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown time"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
