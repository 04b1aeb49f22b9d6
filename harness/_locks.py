"""File locks that die with their process (``flock``): the workdir's study, task and stage locks,
and a sweep trial's liveness lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["flock", "is_held"]


@contextlib.contextmanager
def flock(path: Path, blocking: bool = True) -> Iterator[None]:
    """An exclusive lock on ``path``, which then holds this process's pid. The kernel drops it
    when the process dies, so a killed holder never leaves a stale lock.

    Args:
        path: the lock file (created with its folder).
        blocking: wait for the lock; else raise BlockingIOError when another holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock on ``path`` (False when the file does not exist).

    Args:
        path: the lock file.
    """
    if not path.exists():
        return False
    try:
        with flock(path, blocking=False):
            return False
    except BlockingIOError:
        return True
