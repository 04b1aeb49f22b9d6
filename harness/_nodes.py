"""A stage on several machines: node 0 leads, every other node follows it.

Node 0's harness plans, tracks and decides what runs, exactly as on one machine. Before each
stage it launches, it announces the stage on a key-value store it hosts at the rendezvous
endpoint (torch.distributed's ``TCPStore``): the stage's launch file on the shared workdir and the
port node 0 chose for that launch. Each other node's harness waits for the announcements and
starts torch's launcher for each with its own node rank, so every stage runs on all nodes at once
and no node runs a stage node 0 did not start (a cached stage is never announced). When node 0
ends (done, failed, interrupted) it announces the end and gives the followers a moment to read it.

Hand-started nodes (``harness run ... --nnodes N --node-rank K --rdzv-endpoint HOST:PORT``) and a
SLURM job of several nodes (:func:`slurm_node`) use the same two roles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from core.errors import UserError
from harness import _rank
from harness._rank import Launch

__all__ = ["lead", "announce", "check_followers", "follow", "Followed", "slurm_node"]

ANNOUNCEMENT = "harness/launch/{}"  # the n-th launch node 0 started, then its end
ACK = "harness/ack/{}"  # node k has read the end
LEFT = "harness/left/{}"  # node k stopped following, and why
CONNECT_TIMEOUT_S = 600.0  # a follower waits this long for node 0 to listen (it may still be planning)
POLL_S = 60.0  # a follower's wait for the next announcement, repeated while node 0 is there
ACK_TIMEOUT_S = 30.0  # node 0 waits this long at its end for the followers to read it (or to come)

_leader: _Leader | None = None  # node 0's store while it leads (one study at a time per process)


class _Leader:
    def __init__(self, launch: Launch):
        from torch.distributed import TCPStore

        host, port = launch.address
        try:
            self.store = TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=CONNECT_TIMEOUT_S))
        except RuntimeError as err:
            raise UserError(
                f"--rdzv-endpoint {launch.rdzv_endpoint}: node 0 cannot listen on port {port} ({str(err).splitlines()[0]});"
                " another harness or torchrun may hold it"
            ) from None
        self.launch = launch
        self.count = 0

    def announce(self, launch_file: Path) -> int:
        master_port = _free_port()
        message = {"launch_file": str(launch_file), "master_port": master_port, "nproc_per_node": self.launch.nproc_per_node}
        self.store.set(ANNOUNCEMENT.format(self.count), json.dumps(message))
        self.count += 1
        return master_port

    def left(self) -> str | None:
        """Why a follower stopped, if one did (node 0's launch would wait for it in vain)."""
        for k in range(1, self.launch.nnodes):
            if self.store.check([LEFT.format(k)]):
                return self.store.get(LEFT.format(k)).decode()
        return None

    def close(self, end: str) -> None:
        from torch.distributed import DistError

        self.store.set(ANNOUNCEMENT.format(self.count), json.dumps({"end": end}))
        # every follower that has not left, joined or not yet: one still connecting (node 0
        # ended quickly, all cached) would otherwise wait for a node 0 that is gone
        following = [k for k in range(1, self.launch.nnodes) if not self.store.check([LEFT.format(k)])]
        with contextlib.suppress(DistError):  # a follower that died or never came cannot read it: end anyway
            self.store.wait([ACK.format(k) for k in following], timedelta(seconds=ACK_TIMEOUT_S))


@contextlib.contextmanager
def lead(launch: Launch) -> Iterator[None]:
    """Node 0 for the duration of the block: hosts the store the followers read; at the end
    announces ``done``, ``failed`` (an exception) or ``interrupted`` (Ctrl-C, SIGTERM). A
    one-node launch does nothing."""
    global _leader
    if launch.nnodes == 1:
        yield
        return
    _leader = _Leader(launch)
    end = "failed"
    try:
        yield
        end = "done"
    except KeyboardInterrupt:
        end = "interrupted"
        raise
    finally:
        leader, _leader = _leader, None
        leader.close(end)


def announce(launch: Launch, launch_file: Path) -> int | None:
    """On node 0, before its launcher starts: tell the followers to start theirs for
    ``launch_file``; returns the launch's master port (None on one node)."""
    if launch.nnodes == 1:
        return None
    if _leader is None:
        raise RuntimeError("a launch on several nodes outside harness._nodes.lead()")
    return _leader.announce(launch_file)


def check_followers(launch: Launch) -> None:
    """On node 0 while a launch runs: raises RuntimeError with the reason a follower gave for
    stopping (its ranks will never join this launch)."""
    reason = _leader.left() if launch.nnodes > 1 and _leader is not None else None
    if reason is not None:
        raise RuntimeError(f"a node stopped following node 0: {reason}")


@dataclasses.dataclass(frozen=True)
class Followed:
    """What a follower did: how node 0 ended, the stages it launched here and which failed."""

    end: str
    stages: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


def follow(launch: Launch, say: Callable[[str], None] = lambda line: None) -> Followed:
    """On node ``launch.node_rank`` > 0: run each stage node 0 announces, until node 0 ends.

    Raises:
        UserError: node 0 not listening within ``CONNECT_TIMEOUT_S``, gone before its end, a
            launch file this node cannot read (the workdir must be shared), or another
            ``--nproc-per-node`` than node 0's.
    """
    from torch.distributed import TCPStore

    where = f"node 0 at {launch.rdzv_endpoint}"
    host, port = launch.address
    try:
        store = TCPStore(host, port, is_master=False, timeout=timedelta(seconds=CONNECT_TIMEOUT_S))
    except RuntimeError:
        raise UserError(f"node {launch.node_rank}: {where} did not answer within {CONNECT_TIMEOUT_S:.0f} s (start harness run with --node-rank 0 there)") from None
    say(f"node {launch.node_rank} of {launch.nnodes}: following {where}")
    try:
        return _follow(launch, store, where, say)
    except (UserError, KeyboardInterrupt) as err:
        reason = str(err) if isinstance(err, UserError) else f"node {launch.node_rank} was interrupted"
        with contextlib.suppress(RuntimeError):  # node 0 fails its launch with the reason
            store.set(LEFT.format(launch.node_rank), reason)
        raise


def _follow(launch: Launch, store: Any, where: str, say: Callable[[str], None]) -> Followed:
    from torch.distributed import DistNetworkError, DistStoreError

    stages: list[str] = []
    failed: list[str] = []
    while True:
        key = ANNOUNCEMENT.format(len(stages))
        try:
            store.wait([key], timedelta(seconds=POLL_S))
        except DistStoreError:  # no launch yet; node 0 is still there
            continue
        except DistNetworkError:
            raise UserError(f"node {launch.node_rank}: {where} went away before it ended; start every node again to resume") from None
        message = json.loads(store.get(key))
        if "end" in message:
            store.set(ACK.format(launch.node_rank), "1")
            return Followed(message["end"], tuple(stages), tuple(failed))
        launch_file = Path(message["launch_file"])
        _check_announced(launch, message, launch_file)
        kind = json.loads(launch_file.read_text(encoding="utf-8"))["kind"]
        say(f"{kind} stage {launch_file.parent.name} on {launch.world_size} processes")
        code = _run_launcher(launch, message["master_port"], launch_file)
        stages.append(launch_file.parent.name)
        if code != 0:
            failed.append(launch_file.parent.name)
            say(f"{kind} stage {launch_file.parent.name}: the launcher exited with {code} (its output: {_log_file(launch, launch_file)})")


def _check_announced(launch: Launch, message: dict[str, Any], launch_file: Path) -> None:
    if message["nproc_per_node"] != launch.nproc_per_node:
        raise UserError(
            f"node {launch.node_rank} was started with --nproc-per-node {launch.nproc_per_node}, node 0 with"
            f" {message['nproc_per_node']}: start every node with the same"
        )
    if not launch_file.is_file():
        raise UserError(f"node {launch.node_rank} cannot read {launch_file}: the workdir must be on a file system every node shares")


def _run_launcher(launch: Launch, master_port: int, launch_file: Path) -> int:
    with open(_log_file(launch, launch_file), "a", encoding="utf-8") as log:
        ranks = _rank.start_launcher(launch, launch_file, log, master_port)
        try:
            return ranks.wait()
        except BaseException:  # Ctrl-C: the ranks must not outlive this node's harness
            _rank.stop_launcher(ranks)
            raise


def _log_file(launch: Launch, launch_file: Path) -> Path:
    return launch_file.parent / f"launch-node{launch.node_rank}.log"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def slurm_node(launch: Launch, env: Any) -> Launch:
    """A SLURM job's task in a launch on several nodes (one task per node): its node rank is
    the task's rank, node 0 is the job's first host, and the port comes from the job id (as
    PyTorch Lightning derives it), so every task computes the same endpoint without talking.

    Args:
        launch: the submitted launch (``nnodes`` > 1, no rank or endpoint yet).
        env: submitit's ``JobEnvironment`` (``global_rank``, ``hostnames``, ``raw_job_id``).
    """
    port = 15000 + int(str(env.raw_job_id)[-4:])
    return dataclasses.replace(launch, node_rank=env.global_rank, rdzv_endpoint=f"{env.hostnames[0]}:{port}")
