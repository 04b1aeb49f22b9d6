"""``harness ui``: the MLflow UI on the project's tracking store, bound to 127.0.0.1.

The UI is MLflow's own server (``python -m mlflow ui``) in a child process of its own session,
so that stopping it stops its workers too. It is stopped however ``harness ui`` ends: Ctrl-C,
SIGTERM or SIGHUP (a closed terminal) alike, never left listening as an orphan. Studies show as experiments, each (arm, seed) run
nested under the study's parent run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from harness._signals import terminate_as_interrupt

__all__ = ["UiServer", "ui_command", "start_ui", "serve_ui"]

DEFAULT_HOST = "127.0.0.1"  # local only: the store holds unpublished results and code diffs
DEFAULT_PORT = 5000
READY_TIMEOUT_S = 120.0  # the first start of a fresh environment imports a lot
_POLL_S = 0.5
_STOP_TIMEOUT_S = 10.0
_LOG_TAIL = 2000  # characters of the server's log shown when it fails to start


@dataclass
class UiServer:
    """A running MLflow UI.

    Attributes:
        url: where it answers.
        process: the server process (the leader of its own process group).
        log_path: the server's combined stdout and stderr.
    """

    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        """Stop the server and its workers (SIGTERM to its process group, SIGKILL if it lingers)."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> UiServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def ui_command(tracking_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, workers: int = 1) -> list[str]:
    """The command line of the MLflow UI on ``tracking_uri``.

    Args:
        tracking_uri: the store ``harness run`` writes to (``--backend-store-uri``).
        host: the address to bind.
        port: the port.
        workers: server worker processes (one serves a researcher's browser well).
    """
    return [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", tracking_uri,
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip


def start_ui(
    tracking_uri: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    timeout: float = READY_TIMEOUT_S,
) -> UiServer:
    """Start the MLflow UI and wait until it answers.

    Args:
        tracking_uri: the tracking store (created first when it does not exist yet).
        host: the address to bind.
        port: the port.
        timeout: seconds to wait for the server to answer.

    Raises:
        UserError: the port is taken, or the server exited or did not answer in time (with the
            end of its log).
    """
    from harness.tracking import init_store  # mlflow is slow to import: only here

    _check_port_free(host, port)
    init_store(tracking_uri)  # schema created here, not by the server's workers racing
    log_path = Path(tempfile.mkdtemp(prefix="harness-ui-")) / "mlflow-ui.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ui_command(tracking_uri, host, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = UiServer(f"http://{_url_host(host)}:{port}", process, log_path)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def serve_ui(
    tracking_uri: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    on_ready: Callable[[str], None] = print,
) -> None:
    """Run the MLflow UI until interrupted (Ctrl-C, SIGTERM, SIGHUP: the server is stopped) or
    until the server exits.

    Args:
        tracking_uri: the tracking store.
        host: the address to bind.
        port: the port.
        on_ready: receives the URL once the UI answers (the CLI prints it).

    Raises:
        UserError: as :func:`start_ui`, or the server stopped by itself.
    """
    with terminate_as_interrupt(), start_ui(tracking_uri, host, port) as server:
        on_ready(server.url)
        try:
            code = server.process.wait()
        except KeyboardInterrupt:
            return
    raise UserError(f"the MLflow UI exited with code {code}:\n{_log_tail(server)}")


# ---------------------------------------------------------------------------------- internals
def _check_port_free(host: str, port: int) -> None:
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(f"cannot listen on {host}:{port} ({err.strerror}); pick another port with --port") from None


def _wait_ready(server: UiServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise UserError(f"the MLflow UI exited with code {server.process.returncode}:\n{_log_tail(server)}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=_POLL_S * 4) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        time.sleep(_POLL_S)
    raise UserError(f"the MLflow UI did not answer at {server.url} within {timeout:.0f} s:\n{_log_tail(server)}")


def _log_tail(server: UiServer) -> str:
    return server.log_path.read_text(errors="replace")[-_LOG_TAIL:]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
