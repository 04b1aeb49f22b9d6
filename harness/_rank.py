"""A stage on several processes: how they are launched (torch's elastic launcher,
``python -m torch.distributed.run``, the module behind ``torchrun``) and what each of them runs.

The executor's process stays the one that tracks: it writes the stage's launch file, starts the
launcher, forwards the events rank 0 appends to a JSON-lines file (progress, a sweep's pruning),
and reads the record rank 0 writes at the end. Every rank trains (``core.train`` under DDP:
rank 0 alone writes checkpoints) or evaluates (each embeds its share of the split); no rank
talks to MLflow, so a distributed stage is one tracking run, as a one-process stage is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Launch", "LAUNCH_FILE", "EVENTS_FILE", "RESULT_FILE", "LOG_FILE"]

LAUNCH_FILE = "launch.json"  # in the stage's folder: what every rank runs
EVENTS_FILE = "events.jsonl"  # rank 0's trainer events, one JSON object per line
RESULT_FILE = "launch-result.json"  # rank 0's StageOutputs
LOG_FILE = "launch.log"  # the launcher's and the ranks' output


@dataclass(frozen=True)
class Launch:
    """How many processes run each stage on this machine (torchrun's ``--nproc-per-node``; one
    GPU each on a GPU machine). Several machines per stage are not supported yet: each node would
    run its own harness, and only one of them may own the stage's tracking run."""

    nproc_per_node: int = 1

    @property
    def world_size(self) -> int:
        return self.nproc_per_node

    def command(self) -> list[str]:
        """The launcher's argument vector, before the module it runs (``--standalone``: a free
        local port, no rendezvous server)."""
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={self.nproc_per_node}", "--standalone"]


def die_with_parent() -> None:
    """In the launcher's child, before it runs: SIGTERM when the harness process dies, however
    it dies (kill -9, the OOM killer), so that no launcher and no rank outlives it and trains on
    beside the resumed stage (Linux; elsewhere a no-op). torch's elastic agent stops its ranks on
    SIGTERM."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


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
    finally:
        if events is not None:
            events.close()
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
