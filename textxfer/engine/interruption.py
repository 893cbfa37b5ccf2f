"""Stopping a run cleanly: SIGINT/SIGTERM become a request to save a checkpoint at the end of the current step and
exit, agreed on by every process.

A run killed mid-step would lose the work since its last checkpoint, and on several processes one that stops alone
would leave the others waiting forever in a collective; so a signal only sets a flag, and the loop acts on it
between steps.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import torch

from textxfer.engine import checkpoint
from textxfer.engine.tracking import end_tracking

log = logging.getLogger("textxfer")


class StopSignals:
    """Turn SIGINT/SIGTERM into a request to save a checkpoint and stop at the end of the current step.

    Under a launcher one Ctrl-C arrives twice (from the terminal, then passed on by torchrun's agent), so repeats
    within `grace` seconds count as the same request. A signal after that means "now": Ctrl-C raises
    KeyboardInterrupt, SIGTERM exits, without saving.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, grace: float = 3.0):
        self.received: int | None = None
        self.grace = grace
        self._first = 0.0
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.received is None:
            self.received, self._first = signum, time.monotonic()
            log.info(f"{signal.Signals(signum).name} received: saving a checkpoint at the end of this step, then "
                        "stopping (send it again to quit at once, without saving)")
            return
        if time.monotonic() - self._first < self.grace:
            return
        self._restore()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


def signal_received(loop, signals: StopSignals) -> int:
    """The signal number if any process got SIGINT/SIGTERM (agreed by all processes), else 0."""
    signum = signals.received or 0
    if loop.acc.num_processes > 1:
        flags = loop.acc.gather(torch.tensor([signum], device=loop.acc.device))
        signum = int(flags.max().item())
    return signum


def interrupt(loop, signum: int, saved: Path | None = None) -> None:
    """Save a checkpoint (unless one was just saved at this step), say how to resume, exit with 128 + signum."""
    if saved is None and checkpoint.checkpoints_supported(loop):
        saved = checkpoint.save(loop, reason=signal.Signals(signum).name)
    end_tracking(loop)
    if saved is not None:
        again = (loop.command or "textxfer train RECIPE").replace(" --overwrite", "")
        again += "" if "--resume" in again else " --resume"
        log.info(f"stopped at step {loop.state.progress.step} of {loop.total_steps}; checkpoint {saved}. Continue "
                 f"with: {again}")
    raise SystemExit(128 + signum)
