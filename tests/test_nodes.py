"""A stage on several machines: the options that fit together, node 0 announcing its launches to
the nodes that follow it, and what a follower says when something is wrong (the two-node run
itself is in test_scale.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.errors import UserError
from harness import _nodes
from harness._nodes import Followed, announce, check_followers, follow, lead, slurm_node
from harness._rank import Launch
from harness.preflight import check_nodes


@pytest.fixture
def endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture(autouse=True)
def short_waits(monkeypatch):
    # long enough for a follower that tried before node 0 listened to retry (torch backs off ~1.3 s)
    monkeypatch.setattr(_nodes, "CONNECT_TIMEOUT_S", 10.0)
    monkeypatch.setattr(_nodes, "POLL_S", 0.2)
    monkeypatch.setattr(_nodes, "ACK_TIMEOUT_S", 10.0)


@pytest.mark.parametrize(
    ("launch", "executor", "workers", "message"),
    [
        (Launch(1, nnodes=2), "local", 1, "--nnodes: give --rdzv-endpoint HOST[:PORT]"),
        (Launch(1, nnodes=2, node_rank=2, rdzv_endpoint="a:1"), "local", 1, "--node-rank 2 with --nnodes 2: the ranks are 0 to 1"),
        (Launch(1, nnodes=2, rdzv_endpoint="a:99999"), "local", 1, "--rdzv-endpoint 'a:99999': not HOST[:PORT]"),
        (Launch(1, nnodes=2, rdzv_endpoint=":29400"), "local", 1, "not HOST[:PORT]"),
        (Launch(1, nnodes=2, rdzv_endpoint="a"), "local", 2, "one stage at a time; --workers runs stages side by side"),
        (Launch(1, node_rank=1), "local", 1, "--node-rank and --rdzv-endpoint are for a stage on several machines"),
        (Launch(1, nnodes=2, rdzv_endpoint="a"), "slurm", 1, "--executor slurm places the nodes itself"),
        (Launch(1, nnodes=2), "submitit-local", 1, "submitit's local executor runs on this machine alone"),
    ],
)
def test_options_of_a_launch_on_several_nodes_that_do_not_fit_are_refused(launch, executor, workers, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        check_nodes(launch, executor, workers)


def test_options_that_fit_pass_and_the_port_defaults_to_torchruns():
    for launch, executor in [(Launch(4, nnodes=2, node_rank=1, rdzv_endpoint="gpu-a"), "local"), (Launch(4, nnodes=8), "slurm"), (Launch(4), "slurm")]:
        check_nodes(launch, executor)
    assert Launch(4, nnodes=2, rdzv_endpoint="gpu-a").address == ("gpu-a", 29400)
    assert Launch(4, nnodes=2, rdzv_endpoint="10.0.0.7:29500").world_size == 8


def test_a_slurm_task_knows_its_node_rank_and_node_0s_address_from_the_job():
    env = SimpleNamespace(global_rank=1, hostnames=["gpu-a", "gpu-b"], raw_job_id="1234567")
    launch = slurm_node(Launch(4, nnodes=2), env)
    assert (launch.node_rank, launch.rdzv_endpoint) == (1, "gpu-a:19567")  # the same on every task of the job


def write_launch_file(folder: Path) -> Path:
    folder.mkdir(parents=True)
    path = folder / "launch.json"
    path.write_text(json.dumps({"kind": "finetune"}))
    return path


def follow_in_thread(launch: Launch, delay_s: float = 0.0) -> dict:
    """Run follow() beside the test's node 0 (after ``delay_s``); what it returned or raised, once it ends."""
    outcome: dict = {}

    def target() -> None:
        time.sleep(delay_s)
        try:
            outcome["followed"] = follow(launch)
        except UserError as err:
            outcome["error"] = str(err)

    thread = threading.Thread(target=target)
    thread.start()
    outcome["thread"] = thread
    return outcome


def test_a_follower_learns_how_node_0_ended(endpoint):
    follower = follow_in_thread(Launch(1, nnodes=2, node_rank=1, rdzv_endpoint=endpoint))
    with pytest.raises(KeyboardInterrupt), lead(Launch(1, nnodes=2, rdzv_endpoint=endpoint)):
        raise KeyboardInterrupt  # Ctrl-C on node 0 before it launched anything
    follower["thread"].join(10)
    assert follower["followed"] == Followed("interrupted")


def test_a_follower_started_as_node_0_ends_still_learns_how_it_ended(endpoint):
    with lead(Launch(1, nnodes=2, rdzv_endpoint=endpoint)):  # all cached: node 0 ends at once
        follower = follow_in_thread(Launch(1, nnodes=2, node_rank=1, rdzv_endpoint=endpoint), delay_s=1.0)
    follower["thread"].join(10)  # node 0 waited for it rather than leave it to wait 10 minutes
    assert follower["followed"] == Followed("done")


def test_a_follower_started_with_other_processes_per_node_than_node_0_stops_with_the_reason(tmp_path, endpoint):
    follower = follow_in_thread(Launch(2, nnodes=2, node_rank=1, rdzv_endpoint=endpoint))
    leading = Launch(4, nnodes=2, rdzv_endpoint=endpoint)
    with lead(leading):
        announce(leading, write_launch_file(tmp_path / "stage"))
        follower["thread"].join(10)
        with pytest.raises(RuntimeError, match="a node stopped following node 0: node 1 was started with"):
            check_followers(leading)  # node 0's launch fails at once, not after the rendezvous' timeout
    assert "started with --nproc-per-node 2, node 0 with 4: start every node with the same" in follower["error"]


def test_a_follower_that_cannot_read_node_0s_launch_file_names_the_shared_workdir(tmp_path, endpoint):
    follower = follow_in_thread(Launch(1, nnodes=2, node_rank=1, rdzv_endpoint=endpoint))
    leading = Launch(1, nnodes=2, rdzv_endpoint=endpoint)
    with lead(leading):
        announce(leading, tmp_path / "only-on-node-0" / "launch.json")
        follower["thread"].join(10)
    assert "the workdir must be on a file system every node shares" in follower["error"]


def test_a_follower_without_node_0_says_where_it_looked(endpoint, monkeypatch):
    monkeypatch.setattr(_nodes, "CONNECT_TIMEOUT_S", 1.0)
    with pytest.raises(UserError, match=f"node 1: node 0 at {endpoint} did not answer within 1 s"):
        follow(Launch(1, nnodes=2, node_rank=1, rdzv_endpoint=endpoint))


def test_node_0_cannot_lead_on_a_port_another_process_holds(endpoint):
    host, port = endpoint.split(":")
    with socket.socket() as holder:
        holder.bind((host, int(port)))
        holder.listen()
        with pytest.raises(UserError, match=f"node 0 cannot listen on port {port}"), lead(Launch(1, nnodes=2, rdzv_endpoint=endpoint)):
            pass
