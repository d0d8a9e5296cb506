"""Every dashboard page in headless Chromium (Debian's ``chromium``) against a running
dashboard and the real local store with data: the rendered DOM must show each page's content,
and a screenshot of each page is saved under ``build/screenshots/``. Fails (never skips) without
chromium: ``scripts/bootstrap.sh`` installs it."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from dashboards.app import page_specs
from relmon import db
from relmon.alerts.lifecycle import Alert, AlertEvent
from relmon.alerts.sinks import ClickHouseSink
from relmon.demo import dashboard_process
from relmon.runtime import free_port
from relmon.stats import RateEstimate
from tests.integration.test_dashboard_pages import seed

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "screenshots"  # with the other build artefacts (gitignored)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,1600",
]
# Still busy: the script is running, placeholders are shown, or a dataframe has no canvas yet.
BUSY = (
    "!!document.querySelector('[data-testid=stStatusWidget]') || "
    "!!document.querySelector('[data-testid=stSkeleton]') || "
    "Array.from(document.querySelectorAll('[data-testid=stDataFrame]'))"
    ".some(e => e.offsetParent !== null && !e.closest('details:not([open])') && "
    "(!e.querySelector('canvas') || e.getBoundingClientRect().width < 50))"
)
EXPECT = {
    "overview": ["relmon: search relevance, live", "sampled impressions", "By query tier"],
    "segments": ["Segments", "Bad-case rate by category and tier"],
    "drilldown": ["Drill-down", "Worst queries"],
    "alerts": ["Alerts", "FIRING: category = Area Rugs", "open alerts"],
    "review": ["Review queue"],
    "agreement": ["Agreement"],
    "health": ["Pipeline health", "impressions/s", "total lag (records)", "ListOffsets"],
}


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not installed: run scripts/bootstrap.sh (apt-get install chromium)"
        )
    return path


def _alert() -> Alert:
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    return Alert(
        alert_id="a-browser",
        status="firing",
        dimension="category",
        value="Area Rugs",
        started_at=start,
        last_window=start,
        window_s=300,
        observed=RateEstimate(60, 30, 0.5, 60.0, 0.38, 0.62),
        baseline=RateEstimate(2000, 400, 0.2, 1800.0, 0.18, 0.22),
        peak_rate=0.5,
        z=6.0,
        p_value=1e-9,
        detectors=("z-test",),
        top_queries=({"query": "wool rug", "sampled": 60, "bad": 30, "rate": 0.5},),
    )


@pytest.fixture
def live_dashboard(settings):
    db.migrate(settings)
    seed(settings)
    client = db.connect(settings)
    ClickHouseSink(lambda: client).send(AlertEvent("fired", _alert()))
    client.close()
    run = settings.home / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "worker-browser-1.json").write_text(
        json.dumps({"consumed": 100, "impressions": 90, "uptime_s": 10.0, "model_version": "m"})
    )
    port = free_port()
    with dashboard_process(settings, port):
        yield f"http://127.0.0.1:{port}"


class Browser:
    """Headless Chromium driven over the DevTools protocol (aiohttp websocket client)."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "DevTools listening on " in line:
                self.browser_ws = line.split("DevTools listening on ", 1)[1].strip()
                break
        else:
            raise AssertionError("chromium exited before opening its DevTools port")
        self._id = 0

    async def _call(self, ws, method: str, **params):
        self._id += 1
        await ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            msg = await ws.receive_json()
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg["result"]

    async def _page_ws(self, session):
        base = self.browser_ws.split("/devtools/")[0].replace("ws://", "http://")
        async with session.get(f"{base}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        return await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    def visit(self, url: str, expect: list[str], shot: Path, timeout: float = 60.0) -> str:
        """Open ``url``, wait until every ``expect`` text is visible, screenshot, return text."""
        return asyncio.run(self._visit(url, expect, shot, timeout))

    async def _visit(self, url: str, expect: list[str], shot: Path, timeout: float) -> str:
        async with aiohttp.ClientSession() as session:
            ws = await self._page_ws(session)
            try:
                await self._call(ws, "Page.enable")
                await self._call(ws, "Page.navigate", url=url)
                deadline = time.monotonic() + timeout
                text = ""
                while time.monotonic() < deadline:
                    result = await self._call(
                        ws,
                        "Runtime.evaluate",
                        expression="document.body ? document.body.innerText : ''",
                        returnByValue=True,
                    )
                    text = result["result"].get("value", "")
                    running = await self._call(
                        ws,
                        "Runtime.evaluate",
                        expression=BUSY,
                        returnByValue=True,
                    )
                    if all(t in text for t in expect) and not running["result"]["value"]:
                        break
                    await asyncio.sleep(0.25)  # polling the page's own state
                shot_data = await self._call(ws, "Page.captureScreenshot", format="png")
                shot.write_bytes(base64.b64decode(shot_data["data"]))
                return text
            finally:
                await ws.close()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def test_every_page_renders_in_chromium(live_dashboard, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser = Browser(chromium(), tmp_path / "profile")
    try:
        for i, (_title, path, _render) in enumerate(page_specs()):
            shot = SHOTS / f"{path}.png"
            shot.unlink(missing_ok=True)
            url = f"{live_dashboard}/{path if i else ''}"  # the default page lives at /
            text = browser.visit(url, EXPECT[path], shot)
            assert "Page not found" not in text
            for expected in EXPECT[path]:
                assert expected in text, f"page {path}: {expected!r} not visible"
            assert "Traceback" not in text and "cannot read ClickHouse" not in text
            assert shot.stat().st_size > 10_000, f"screenshot of {path} looks empty"
    finally:
        browser.close()
