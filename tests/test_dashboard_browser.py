"""``tickerml dashboard`` in a real headless Chromium (Debian's /usr/bin/chromium driven
by Playwright; no browser download): the page loads against a replayed session, the
charts render with the last values of the journal, a newly committed event updates the
page through server-sent events without a reload, and a screenshot of each is saved
in test-artifacts/.

The dashboard runs as its own process (``python -m journal_tools.cli dashboard``) on a
free loopback port, reading the SQLite journal this test writes to, as an operator would
run it beside a live kernel."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dashboard_data import copy_as_live, expected_last, make_journal, session_events

from adapters.journal.base import session_stream
from kernel.events import Alert, Decision, PortfolioSnapshot

CHROMIUM = Path(os.environ.get("TICKERML_CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium package when it "
        "can (root and apt-get); set TICKERML_CHROMIUM to another Chromium binary",
        allow_module_level=True,
    )
playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (make venv)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("browser") / "journal.db"
    make_journal(path).close()
    yield path


def start_dashboard(db: Path, session: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "journal_tools.cli", "--log-format", "json",
         "dashboard", "--journal", f"sqlite:///{db}", "--session", session,
         "--port", str(port), "--poll", "0.2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"dashboard exited with {proc.returncode}: {out}")
        try:
            if httpx.get(f"{url}/api/state", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("dashboard did not start within 30 s")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_page_loads_a_replayed_session_with_the_journal_values(db: Path, browser) -> None:  # type: ignore[no-untyped-def]
    from adapters.journal.sqlite import SqliteJournal

    with SqliteJournal(str(db)) as j:
        exp = expected_last(session_events(j, "dash"))
    proc, url = start_dashboard(db, "dash")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#conn.on", timeout=15_000)  # the SSE stream is up
        assert page.text_content("#session-id") == "dash"
        assert page.text_content("#session-live") == "replayed (ended)"
        equity = page.get_attribute("#chart-equity", "data-last")
        assert equity == f"{exp['equity']:.2f}"
        assert page.get_attribute("#chart-equity", "data-points") == str(exp["snapshots"])
        assert page.get_attribute("#chart-drawdown", "data-last") == f"{exp['drawdown']:.2f}"
        assert page.text_content("#last-equity") == f"{exp['equity']:.2f}"
        assert page.text_content("#m-equity") == f"{exp['equity']:,.2f}"
        assert page.text_content("#m-winrate") != "n/a"
        # the chart really drew: pixels other than the background in the equity canvas
        drawn = page.evaluate(
            """() => { const c = document.getElementById('chart-equity');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0) n++;
                return n; }"""
        )
        assert drawn > 500
        assert page.locator("#positions tbody tr").count() == 1
        assert page.text_content("#connectivity tbody tr td:nth-child(2)") == "up"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard_replay.png"), full_page=True)
        assert (ARTIFACTS / "dashboard_replay.png").stat().st_size > 10_000
        assert errors == []
    finally:
        stop(proc)


def test_a_new_event_updates_the_page_without_a_reload(db: Path, browser) -> None:  # type: ignore[no-untyped-def]
    from adapters.journal.sqlite import SqliteJournal

    with SqliteJournal(str(db)) as j:
        written, rest = copy_as_live(j, "dash", "live-b", 200)
    before = [e for e in written if isinstance(e, PortfolioSnapshot)][-1].equity / 10**8
    after = [e for e in rest if isinstance(e, PortfolioSnapshot)][-1].equity / 10**8
    assert f"{before:.2f}" != f"{after:.2f}"
    proc, url = start_dashboard(db, "live-b")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(url)
        page.wait_for_selector("#conn.on", timeout=15_000)
        assert page.get_attribute("#chart-equity", "data-last") == f"{before:.2f}"
        assert page.text_content("#session-live") == "live"
        assert page.locator("#alerts li").count() == 0
        version = page.evaluate("() => document.body.dataset.version")
        marker = page.evaluate("() => { window.__same_page = 1; return 1; }")
        # the live kernel commits its next batch: the rest of the session and an alert
        last = rest[-1]
        t = last.ts_event
        alert = Alert(t, t, "warning", "drawdown", "drawdown 5.00% >= threshold 5%")
        with SqliteJournal(str(db)) as j:
            j.append(session_stream("live-b"), [*rest, alert])
        page.wait_for_function(
            f"() => document.getElementById('chart-equity').dataset.last === '{after:.2f}'",
            timeout=15_000,
        )
        assert page.evaluate("() => window.__same_page") == marker  # no reload
        assert page.evaluate("() => document.body.dataset.version") != version
        page.wait_for_selector("#alerts li.sev-warning", timeout=5_000)
        assert "drawdown 5.00% >= threshold 5%" in (page.text_content("#alerts li") or "")
        n_decisions = sum(isinstance(e, Decision) for e in [*written, *rest])
        assert page.get_attribute("#chart-model", "data-points") == str(n_decisions)
        page.screenshot(path=str(ARTIFACTS / "dashboard_live_update.png"), full_page=True)
    finally:
        stop(proc)
