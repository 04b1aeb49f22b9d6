"""SIGTERM handled like Ctrl-C: a scheduler's ``kill``, SLURM's time limit or preemption, and a
closed terminal (SIGHUP) then end a process through the same cleanup as a KeyboardInterrupt (runs
marked KILLED, the UI server stopped) instead of killing it mid-way."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["terminate_as_interrupt"]

_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread (outside
    the main thread, where signals cannot be handled, the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
