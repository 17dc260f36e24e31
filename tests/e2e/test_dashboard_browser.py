"""A real browser (headless Debian chromium) renders the dashboard with live data.

Drives chromium through the Chrome DevTools protocol over trio-websocket: loads the page
served by :func:`tunnel.dashboard.serve_dashboard` over a synthetic stats feed that changes
all the time, waits (bounded) until every chart has drawn non-zero data and the node table has
its rows, checks that the page raised no error (CSP violations included), and saves a
screenshot to ``artifacts/dashboard.png``. Chromium is missing: skip locally, fail under CI.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio_websocket
from servers import skip_or_fail

from tunnel.dashboard import serve_dashboard
from tunnel.stats import ConnectionCounters, TunnelStats

__all__: list[str] = []

ARTIFACT = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard.png"
MASTERS = [
    ("10.20.0.1:6379", (0, 5460)),
    ("10.20.0.2:6379", (5461, 10922)),
    ("10.20.0.3:6379", (10923, 16383)),
]
REPLICAS = ["10.20.0.4:6379", "10.20.0.5:6379", "10.20.0.6:6379"]
START_TIMEOUT = 30.0
RENDER_TIMEOUT = 30.0
CHARTS = ("ops", "bytes", "latency", "clients", "redirects", "reconnects")


@pytest.fixture
def chromium() -> str:
    """Path of chromium (sync fixture, so a skip is reported with its reason)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    skip_or_fail("chromium not found (Debian: apt-get install chromium)")


def synthetic_stats() -> TunnelStats:
    stats = TunnelStats("pinned")
    nodes: list[Any] = [
        {
            "address": address,
            "role": "master",
            "slots": [slots],
            "listener": f"127.0.0.1:{7100 + i}",
        }
        for i, (address, slots) in enumerate(MASTERS)
    ]
    nodes += [
        {"address": address, "role": "replica", "listener": f"127.0.0.1:{7103 + i}"}
        for i, address in enumerate(REPLICAS)
    ]
    stats.set_topology(nodes)
    return stats


async def synthetic_traffic(stats: TunnelStats) -> None:
    """Publish varying traffic every 0.25 s (bounded: at most 2 minutes)."""
    rng = random.Random(7)
    counters = ConnectionCounters()
    for tick in range(480):
        target_clients = 4 + (tick // 4) % 5
        while stats.clients_connected < target_clients:
            stats.client_opened()
        while stats.clients_connected > target_clients:
            stats.client_closed()
        for index, (address, _) in enumerate(MASTERS):
            ops = 200 * (index + 1) + rng.randrange(150)
            base = 80_000 * (index + 1)
            for _ in range(ops // 10):
                counters.record(base + rng.randrange(base), ops=10)
            counters.bytes_in += ops * 40
            counters.bytes_out += ops * 12
            counters.moved += rng.randrange(3)
            counters.ask += rng.randrange(2)
            counters.retries += rng.randrange(4)
            counters.errors += rng.randrange(2)
            stats.publish(address, counters)
        if tick % 6 == 3:
            stats.upstream_reconnect(MASTERS[tick % 3][0])
        await trio.sleep(0.25)


async def http_get_json(port: int, path: str) -> Any:
    """GET http://127.0.0.1:port/path with h11; the JSON body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target=path, headers=[("Host", f"127.0.0.1:{port}")])
        await stream.send_all((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200, f"{path}: HTTP {event.status_code}"
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return json.loads(body)


class DevTools:
    """A minimal Chrome DevTools protocol client over one trio-websocket connection."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        await self.ws.send_message(
            json.dumps({"id": self.last_id, "method": method, "params": params})
        )
        while True:
            message = json.loads(await self.ws.get_message())
            if message.get("id") == self.last_id:
                assert "error" not in message, f"{method}: {message['error']}"
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def problems(self) -> list[str]:
        found = []
        for event in self.events:
            if event["method"] == "Runtime.exceptionThrown":
                found.append(json.dumps(event["params"]["exceptionDetails"])[:500])
            elif (
                event["method"] == "Log.entryAdded" and event["params"]["entry"]["level"] == "error"
            ):
                found.append(event["params"]["entry"]["text"][:500])
            elif (
                event["method"] == "Runtime.consoleAPICalled" and event["params"]["type"] == "error"
            ):
                found.append(json.dumps(event["params"]["args"])[:500])
        return found


PAGE_STATE = """(() => {
  const s = window.__dashboardState;
  if (!s) return null;
  const rows = [...document.querySelectorAll('#nodes tbody tr')].map(
    (row) => [...row.cells].map((c) => c.textContent));
  return {points: s.points, snapshots: s.snapshots, connected: s.connected, charts: s.charts,
          errors: s.errors, rows: rows, mode: document.getElementById('mode').textContent,
          canvases: [...document.querySelectorAll('canvas')].map((c) => [c.width, c.height])};
})()"""


def rendered(state: Any) -> bool:
    return (
        isinstance(state, dict)
        and state["points"] >= 6
        and len(state["rows"]) == 6
        and all(
            state["charts"].get(name, {}).get("lines", 0) >= 1 and state["charts"][name]["max"] > 0
            for name in CHARTS
        )
    )


async def wait_devtools_port(profile: Path, process: trio.Process) -> int:
    marker = trio.Path(profile / "DevToolsActivePort")
    while not await marker.exists() or not (await marker.read_text()).strip():
        assert process.returncode is None, f"chromium exited with {process.returncode}"
        await trio.sleep(0.1)
    return int((await marker.read_text()).split()[0])


async def test_browser_renders_the_live_dashboard(
    nursery: trio.Nursery, tmp_path: Path, chromium: str
) -> None:
    stats = synthetic_stats()
    nursery.start_soon(synthetic_traffic, stats)
    listeners = await nursery.start(partial(serve_dashboard, interval=0.5), stats, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log_path = tmp_path / "chromium.log"
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--mute-audio",
                "--hide-scrollbars",
                "--window-size=1400,1000",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        with trio.fail_after(START_TIMEOUT):
            devtools_port = await wait_devtools_port(profile, process)
            targets = await http_get_json(devtools_port, "/json/list")
            pages = [t for t in targets if t.get("type") == "page"]
            assert pages, f"no page target in {targets}"
            page_url = pages[0]["webSocketDebuggerUrl"]
        async with trio_websocket.open_websocket_url(
            page_url,
            max_message_size=64 * 1024 * 1024,
            connect_timeout=START_TIMEOUT,
            disconnect_timeout=5,
        ) as ws:
            devtools = DevTools(ws)
            with trio.fail_after(RENDER_TIMEOUT):
                for domain in ("Page", "Runtime", "Log"):
                    await devtools.call(f"{domain}.enable")
                await devtools.call("Page.navigate", url=url)
                state = None
                while not rendered(state):
                    await trio.sleep(0.25)
                    state = await devtools.evaluate(PAGE_STATE)
                metrics = await devtools.call("Page.getLayoutMetrics")
                size = metrics["cssContentSize"]
                shot = await devtools.call(
                    "Page.captureScreenshot",
                    format="png",
                    captureBeyondViewport=True,
                    clip={
                        "x": 0,
                        "y": 0,
                        "width": size["width"],
                        "height": size["height"],
                        "scale": 1,
                    },
                )
            ARTIFACT.parent.mkdir(exist_ok=True)
            png = base64.b64decode(shot["data"])
            ARTIFACT.write_bytes(png)
            assert png.startswith(b"\x89PNG\r\n\x1a\n")
            assert state is not None
            assert state["connected"] is True
            assert state["mode"] == "pinned"
            assert state["errors"] == []
            assert devtools.problems() == []
            table = {row[0]: row for row in state["rows"]}
            assert set(table) == {address for address, _ in MASTERS} | set(REPLICAS)
            first = table[MASTERS[0][0]]
            assert first[1] == "master"
            assert first[2] == "0-5460"
            assert first[3] == "127.0.0.1:7100"
            assert int(first[4]) > 0  # commands
            assert table[REPLICAS[0]][1] == "replica"
            assert all(width > 0 and height > 0 for width, height in state["canvases"])
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)  # chromium and its helpers, by our PID
        with trio.move_on_after(10, shield=True):
            await process.wait()
