"""`harness ui`: the MLflow UI on the project's store, bound to 127.0.0.1."""

from __future__ import annotations

import re
import socket
import sys

import pytest
from report_fixtures import DEPTH_STUDY, report_store  # noqa: F401  (a fixture)

from core.errors import UserError
from harness.ui import start_ui, ui_command

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright drives it by path
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# The UI's first page load, and its runs table ("Loading..." until the store answers), are slow on
# a busy 2-core machine. Every wait names this timeout: Playwright's assertions otherwise wait 5 s
# whatever page.set_default_timeout says, and failed whenever the table was still loading.
LOAD_TIMEOUT_MS = 120_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ui_command_serves_the_store_on_localhost():
    command = ui_command("sqlite:////w/mlflow.db", port=5123)
    assert command[:4] == [sys.executable, "-m", "mlflow", "ui"]
    flags = dict(zip(command[4::2], command[5::2]))
    assert flags == {"--backend-store-uri": "sqlite:////w/mlflow.db", "--host": "127.0.0.1", "--port": "5123", "--workers": "1"}


def test_a_taken_port_is_refused_before_starting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=rf"cannot listen on 127.0.0.1:{port}.*--port"):
            start_ui(f"sqlite:///{tmp_path / 'mlflow.db'}", port=port)


@pytest.mark.slow
def test_browser_finds_the_study_and_its_nested_runs(report_store, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    parent = report_store.parents[DEPTH_STUDY]
    child = "depth=2 seed=1 finetune"
    with start_ui(report_store.uri, port=free_port()) as server, sync_playwright() as playwright:
        assert server.url.startswith("http://127.0.0.1:")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(LOAD_TIMEOUT_MS)
            page.goto(server.url)
            # The study is an experiment on the home page; open it.
            page.get_by_role("link", name=DEPTH_STUDY, exact=True).first.click()
            page.wait_for_url(re.compile(r".*/experiments/\d+.*"))
            experiment = re.search(r"/experiments/(\d+)", page.url).group(1)
            page.goto(f"{server.url}/#/experiments/{experiment}/runs")
            # The table is ready when it counts the runs; top level: the parent run only (its 15
            # stage runs are nested under it).
            expect(page.get_by_text("16 matching runs")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            row = page.get_by_role("row").filter(has=page.locator(f'a[href$="/runs/{parent}"]'))
            expect(row).to_have_count(1, timeout=LOAD_TIMEOUT_MS)
            expect(page.get_by_text(child, exact=True)).to_have_count(0, timeout=LOAD_TIMEOUT_MS)
            row.locator('[col-id="attributes.`Run Name`"] button').first.click()  # expand the parent
            expect(page.get_by_text(child, exact=True)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            expect(page.get_by_text("pretrain seed=0", exact=True)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            page.screenshot(path=str(tmp_path / "ui.png"))
        finally:
            browser.close()
    assert (tmp_path / "ui.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'ui.png'}")
