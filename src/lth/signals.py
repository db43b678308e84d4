"""Stopping on request: SIGTERM (what Slurm sends before it preempts or times a job out) and
SIGINT save the position at the next iteration and stop; a second signal exits at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequest:
    """Asked after every iteration; `signum` is the signal that asked, once one has."""

    signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Handlers for the enclosed block (only the main thread can install them; elsewhere the
    request never fires). The first signal restores the defaults, so a second one acts at once."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    saved = {s: signal.getsignal(s) for s in defaults}

    def handler(signum: int, frame: object) -> None:
        request.signum = signum
        for s, default in defaults.items():
            signal.signal(s, default)

    for s in defaults:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, previous in saved.items():
            signal.signal(s, previous)
