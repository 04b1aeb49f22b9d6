"""A stage on several processes: how they are launched (torch's elastic launcher,
``python -m torch.distributed.run``, the module behind ``torchrun``) and what each of them runs.

The executor's process stays the one that tracks: it writes the stage's launch file, starts the
launcher, forwards the events rank 0 appends to a JSON-lines file (progress, a sweep's pruning),
and reads the record rank 0 writes at the end. Every rank trains (``core.train`` under DDP:
rank 0 alone writes checkpoints) or evaluates (each embeds its share of the split); no rank
talks to MLflow, so a distributed stage is one tracking run, as a one-process stage is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["Launch", "RankFailed", "rank_failure", "start_launcher", "stop_launcher", "LAUNCH_FILE", "EVENTS_FILE", "RESULT_FILE", "ERROR_FILE", "LOG_FILE", "DEFAULT_RDZV_PORT"]

LAUNCH_FILE = "launch.json"  # in the stage's folder: what every rank runs
EVENTS_FILE = "events.jsonl"  # rank 0's trainer events, one JSON object per line
RESULT_FILE = "launch-result.json"  # rank 0's StageOutputs
ERROR_FILE = "launch-error.json"  # the first failing rank's exception: its type, message, traceback
LOG_FILE = "launch.log"  # the launcher's and the ranks' output (node 0's, on several nodes)
STOP_TIMEOUT_S = 30.0  # seconds a launcher has to stop its ranks before SIGKILL
DEFAULT_RDZV_PORT = 29400  # torchrun's default port of a rendezvous endpoint


@dataclass(frozen=True)
class Launch:
    """How each stage's processes are started: ``nproc_per_node`` on each of ``nnodes`` machines
    (torchrun's options; one GPU per process on a GPU machine).

    On several machines node 0 is the one that plans, tracks and reads rank 0's files; the others
    follow it (:mod:`harness._nodes`), reaching it at ``rdzv_endpoint`` (``HOST[:PORT]``). Node 0
    runs global ranks ``0 .. nproc_per_node - 1`` (torch's static rendezvous), so rank 0's events,
    record and checkpoints are written on the machine that reads them.
    """

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def address(self) -> tuple[str, int]:
        """Node 0's host and the port its harness listens on (``rdzv_endpoint``)."""
        if not self.rdzv_endpoint:
            raise ValueError("a launch on several nodes needs rdzv_endpoint")
        host, sep, port = self.rdzv_endpoint.rpartition(":")
        if not sep:
            host, port = self.rdzv_endpoint, str(DEFAULT_RDZV_PORT)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("not HOST[:PORT] (a host name or address, and a port from 1 to 65535)")
        return host, int(port)

    def command(self, master_port: int | None = None) -> list[str]:
        """The launcher's argument vector, before the module it runs: on one machine
        ``--standalone`` (a free local port, no rendezvous server); on several, this node's rank
        and node 0's address with the port node 0 chose for this launch."""
        head = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={self.nproc_per_node}"]
        if self.nnodes == 1:
            return [*head, "--standalone"]
        if master_port is None:
            raise ValueError("a launch on several nodes needs node 0's port for it")
        return [*head, f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}",
                f"--master-addr={self.address[0]}", f"--master-port={master_port}"]  # fmt: skip


def start_launcher(launch: Launch, launch_file: Path, log: IO[str], master_port: int | None = None) -> subprocess.Popen:
    """This node's launcher for the stage ``launch_file`` names, its output to ``log``: in a
    session of its own (stopped as a group) and dying with this process."""
    command = [*launch.command(master_port), "-m", "harness._rank", str(launch_file)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)


def stop_launcher(ranks: subprocess.Popen) -> None:
    """SIGTERM to the launcher's process group (the elastic agent stops its ranks), SIGKILL if
    it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(ranks.pid, signal.SIGTERM)
        try:
            ranks.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(ranks.pid, signal.SIGKILL)
            ranks.wait()


def die_with_parent() -> None:
    """In the launcher's child, before it runs: SIGTERM when the harness process dies, however
    it dies (kill -9, the OOM killer), so that no launcher and no rank outlives it and trains on
    beside the resumed stage (Linux; elsewhere a no-op). torch's elastic agent stops its ranks on
    SIGTERM."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class RankFailed(RuntimeError):
    """A launched stage failed on a rank with an exception the executor has no type for (it
    rebuilds ``UserError`` and ``DamagedCheckpoint``). ``error_type`` is the rank's exception's
    class name, so failures with a known remedy (out of memory) are still recognised."""

    def __init__(self, rank: int, error_type: str, message: str):
        self.rank, self.error_type = rank, error_type
        super().__init__(f"rank {rank}: {error_type}: {message}")


def _record_failure(out_dir: Path, rank: int, exc: BaseException) -> None:
    """Write the rank's exception to ``ERROR_FILE`` unless a rank that failed earlier did: the
    first failure is the cause, the others' (a collective whose peer died) follow from it."""
    from core.checkpoint import DamagedCheckpoint
    from core.errors import UserError

    record = {
        "rank": rank, "type": type(exc).__name__, "message": str(exc), "user_error": isinstance(exc, UserError),
        "damaged": [str(exc.path), exc.reason] if isinstance(exc, DamagedCheckpoint) else None,
        "traceback": "".join(traceback.format_exception(exc)),
    }  # fmt: skip
    try:
        fd = os.open(out_dir / ERROR_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(record, file)


def rank_failure(out_dir: Path) -> Exception | None:
    """The exception the first failing rank of the stage in ``out_dir`` raised, rebuilt in the
    executor (its traceback attached as a note), or None when no rank recorded one."""
    from core.checkpoint import DamagedCheckpoint
    from core.errors import UserError

    path = out_dir / ERROR_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record["damaged"]:
        error: Exception = DamagedCheckpoint(Path(record["damaged"][0]), record["damaged"][1])
    elif record["user_error"]:
        error = UserError(record["message"])
    else:
        error = RankFailed(record["rank"], record["type"], record["message"])
    error.add_note(f"raised on rank {record['rank']}:\n{record['traceback']}")
    return error


def main(launch_file: str) -> None:
    """One rank: run the stage the launch file names; rank 0 records its events and result."""
    import torch.distributed as dist

    from core.config import Config
    from core.files import atomic_write_text
    from core.runtime import init_distributed
    from harness._stages import run_here

    spec = json.loads(Path(launch_file).read_text(encoding="utf-8"))
    config = Config.model_validate_json(spec["config"])
    init_distributed(config.runtime.device)
    rank = int(os.environ.get("RANK", "0"))
    out_dir = Path(spec["out_dir"])
    events = open(out_dir / EVENTS_FILE, "a", encoding="utf-8") if rank == 0 else None
    try:

        def record(event) -> None:
            if events is not None:
                events.write(json.dumps(dataclasses.asdict(event)) + "\n")
                events.flush()

        parent = Path(spec["parent_dir"]) if spec["parent_dir"] else None
        outputs = run_here(config, spec["kind"], out_dir, parent, Path(spec["workdir"]), record)
        if rank == 0:
            atomic_write_text(out_dir / RESULT_FILE, outputs.to_json())
    except Exception as exc:
        _record_failure(out_dir, rank, exc)
        raise
    finally:
        if events is not None:
            events.close()
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
