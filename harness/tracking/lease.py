"""Leases on stage runs: which process owns a RUNNING run, whether it is alive, what to do with a
run key's runs (docs/reliability.md, "Who owns a stage").

A RUNNING stage run belongs to the process that opened or resumed it. Its ``harness.owner`` tag
names that process (host, pid, pid namespace, a token unique to the process) and a heartbeat
thread in it refreshes ``harness.heartbeat`` every :data:`HEARTBEAT_S`. Another process treats the
owner as dead, and only then takes the run over, when the heartbeat is older than
:data:`LEASE_S` (any host; clocks are assumed within a few tens of seconds of each other) or when
the owner shares this machine's pid namespace and its pid is gone (at once: a ``kill -9`` is
seen by the next ``harness run`` without waiting for the lease to run out).

This module is pure rules plus the heartbeat thread; :mod:`harness.tracking.store` talks to MLflow.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from harness.tracking import names

__all__ = [
    "HEARTBEAT_S", "LEASE_S", "SETTLE_S", "Owner", "RunView", "Decision", "this_process", "parse_owner",
    "owner_alive", "decide", "Heartbeat",
]

HEARTBEAT_S = 10.0  # how often an owner refreshes its runs' heartbeat
LEASE_S = 60.0  # a heartbeat older than this: the owner is dead (six missed beats)
SETTLE_S = 1.0  # resuming a run: wait this long after writing the owner tag, then read it back
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """A process that can own runs."""

    host: str
    pid: int
    pidns: str  # boot id + pid namespace: pids are comparable only within one
    token: str  # unique to this process (pids are reused)

    def tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


@functools.cache
def _this_process(pid: int) -> Owner:
    return Owner(socket.gethostname(), pid, _pid_namespace(), uuid.uuid4().hex)


def this_process() -> Owner:
    """The calling process as an owner (a new one after a fork)."""
    return _this_process(os.getpid())


def _pid_namespace() -> str:
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        return f"{boot}:{os.readlink('/proc/self/ns/pid')}"
    except OSError:  # not Linux: only the heartbeat tells liveness across processes
        return ""


def parse_owner(tag: str | None) -> Owner | None:
    """The owner a ``harness.owner`` tag names (None: no tag, or not one of ours).

    Args:
        tag: the tag's value.
    """
    try:
        return Owner(**json.loads(tag)) if tag else None
    except (TypeError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:  # a zombie (dead, not yet reaped by its parent) is no owner
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_alive(tags: Mapping[str, str], now: float, here: Owner) -> bool:
    """Whether the process that owns a RUNNING run is still alive.

    Args:
        tags: the run's tags.
        now: the current unix time.
        here: this process (its host and pid namespace decide whether the pid can be checked).
    """
    owner = parse_owner(tags.get(names.TAG_OWNER))
    if owner is None:
        return False  # opened by a harness without leases: only the study lock protected it
    try:
        beat = float(tags.get(names.TAG_HEARTBEAT, "0"))
    except ValueError:
        beat = 0.0
    if now - beat > LEASE_S:
        return False
    if owner.token == here.token:
        return True
    if owner.pidns and owner.pidns == here.pidns:
        return _pid_alive(owner.pid)
    return True


@dataclass(frozen=True)
class RunView:
    """What the rules need of one run of a key: its id, status, tags, start time."""

    run_id: str
    status: str
    tags: Mapping[str, str]
    start_time: int


@dataclass(frozen=True)
class Decision:
    """What to do with a run key: ``finished`` (the work is done), ``failed`` (its last attempt
    failed, no retry asked), ``busy`` (a live process runs it), ``resume`` (a KILLED run, or a
    RUNNING one whose owner died), or ``create``."""

    kind: Literal["finished", "failed", "busy", "resume", "create"]
    run: RunView | None = None

    @property
    def owner(self) -> Owner | None:
        return parse_owner(self.run.tags.get(names.TAG_OWNER)) if self.run is not None else None


def decide(runs: Sequence[RunView], now: float, here: Owner, retry_failed: bool) -> Decision:
    """The rule for a run key's runs (newest first): a FINISHED run is the result; a live RUNNING
    one is busy; a FAILED one stays failed unless retried (a retry opens a new run); a KILLED run,
    or a RUNNING one whose owner is dead, is resumed; else a run is created.

    Args:
        runs: the key's runs, newest first.
        now: the current unix time.
        here: this process.
        retry_failed: FAILED runs are retried (``--retry-failed``).
    """
    finished = next((r for r in runs if r.status == "FINISHED"), None)
    if finished is not None:
        return Decision("finished", finished)
    live = next((r for r in runs if r.status == "RUNNING" and owner_alive(r.tags, now, here)), None)
    if live is not None:
        return Decision("busy", live)
    failed = next((r for r in runs if r.status == "FAILED"), None)
    if failed is not None and not retry_failed:
        return Decision("failed", failed)
    resumable = next((r for r in runs if r.status in ("KILLED", "RUNNING")), None)
    if resumable is not None:
        return Decision("resume", resumable)
    return Decision("create")


class Heartbeat:
    """Refreshes the heartbeat of the runs this process owns, from a daemon thread.

    Args:
        beat: writes a run's heartbeat and returns its owner tag as the store has it now (None
            when the store could not be reached: the beat is tried again next period).
        period: seconds between beats.
    """

    def __init__(self, beat: Callable[[str], str | None], period: float = HEARTBEAT_S):
        self._beat = beat
        self._period = period
        self._runs: dict[str, str] = {}  # run id -> our owner token
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, run_id: str, token: str) -> None:
        """Keep ``run_id`` alive from now on."""
        with self._lock:
            self._runs[run_id] = token
            self._lost.discard(run_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="harness-heartbeat", daemon=True)
                self._thread.start()

    def remove(self, run_id: str) -> None:
        """Stop beating for ``run_id`` (it ended)."""
        with self._lock:
            self._runs.pop(run_id, None)

    def owned(self) -> list[str]:
        """The runs being kept alive."""
        with self._lock:
            return list(self._runs)

    def lost(self, run_id: str) -> bool:
        """Whether another process took ``run_id`` over (our heartbeat lapsed, say in a network
        partition longer than the lease)."""
        with self._lock:
            return run_id in self._lost

    def _loop(self) -> None:
        while True:
            time.sleep(self._period)
            with self._lock:
                runs = dict(self._runs)
            for run_id, token in runs.items():
                try:
                    owner = parse_owner(self._beat(run_id))
                except Exception as err:  # the store is away: keep the process going, beat again later
                    log.warning("heartbeat of run %s failed: %s", run_id, err)
                    continue
                if owner is not None and owner.token != token:
                    with self._lock:
                        self._lost.add(run_id)
                        self._runs.pop(run_id, None)
