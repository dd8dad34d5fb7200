"""A local fake exchange: WebSocket + HTTP on 127.0.0.1 that plays back recorded frames.

Used by the adapter tests, the ``tickerml live`` end-to-end test and the adapter
benchmarks. It binds loopback only and never forwards anything anywhere.

* HTTP: ``routes`` maps a path (``/api/v3/depth``) plus, optionally, its query
  (``symbol=BTCUSDT``) to a response body. :meth:`FakeExchange.fail_next` queues error
  responses (``429`` with ``Retry-After``, ``500``, ...) that are served first.
* WebSocket: each new connection gets the next :class:`WsScript` (the last one repeats):
  it waits for ``wait_for`` client frames (subscribes), then sends its frames, as fast as
  possible or paced by ``pace`` x the recorded gaps, and then either closes
  (``close_after``) or stays open answering nothing until the client leaves.

:func:`load_capture` reads the cryptofeed "format 2" captures listed in
``shared/data/MANIFEST.md`` (``{"t": "header"|"http"|"connect"|"send"|"recv", ...}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# ---------------------------------------------------------------------------------------
# Captures
# ---------------------------------------------------------------------------------------


@dataclass
class Capture:
    """One cryptofeed capture: REST responses and WebSocket connections, in order."""

    exchange: str
    header: dict[str, Any]
    http: list[tuple[float, str, str]] = field(default_factory=list)
    """(ts, url, body)."""
    connections: dict[str, str] = field(default_factory=dict)
    """conn id -> the address it connected to."""
    sent: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    recv: dict[str, list[tuple[float, str]]] = field(default_factory=dict)

    def frames(self, conns: Iterable[str] | None = None) -> list[tuple[float, str]]:
        """Received frames of the given connections (all by default) merged by time."""
        names = list(conns) if conns is not None else list(self.recv)
        merged = [f for c in names for f in self.recv.get(c, [])]
        merged.sort(key=lambda f: f[0])
        return merged

    def routes(self) -> dict[str, str]:
        """``path?query`` -> body for every recorded REST call (last one wins)."""
        out: dict[str, str] = {}
        for _, url, body in self.http:
            parts = urlsplit(url)
            out[route_key(parts.path, parts.query)] = body
        return out


def load_capture(path: str | Path) -> Capture:
    """Read a ``.jsonl`` or ``.jsonl.gz`` cryptofeed capture."""
    p = Path(path)
    opener: Callable[..., Any] = gzip.open if p.suffix == ".gz" else open
    cap: Capture | None = None
    with opener(p, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            t = row["t"]
            if t == "header":
                cap = Capture(exchange=row.get("exchange", ""), header=row)
                continue
            if cap is None:
                raise ValueError(f"{p}: the first line must be the header")
            if t == "http":
                cap.http.append((float(row["ts"]), row["url"], row["data"]))
            elif t == "connect":
                cap.connections[row["conn"]] = row["addr"]
            elif t == "send":
                cap.sent.setdefault(row["conn"], []).append((float(row["ts"]), row["data"]))
            elif t == "recv":
                cap.recv.setdefault(row["conn"], []).append((float(row["ts"]), row["data"]))
    if cap is None:
        raise ValueError(f"{p}: empty capture")
    return cap


def route_key(path: str, query: str = "") -> str:
    """Routes match on path and the *set* of query parameters (order-insensitive)."""
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    q = "&".join(f"{k}={v}" for k, v in pairs)
    return f"{path}?{q}" if q else path


# ---------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------


@dataclass
class WsScript:
    """What one WebSocket connection plays: ``frames`` as (recorded ts, text)."""

    frames: Sequence[tuple[float, str]]
    wait_for: int = 0
    pace: float = 0.0
    close_after: int | None = None
    """Close the socket after sending this many frames (a disconnect mid-stream)."""
    linger: bool = True
    """After the last frame keep the socket open (until the client closes)."""
    reply: Callable[[str], Sequence[str]] | None = None
    """Called with each client frame after the first ``wait_for``; the frames it returns
    are sent at once (a venue answering a resubscribe with a fresh snapshot)."""


@dataclass
class HttpResponse:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class FakeExchange:
    """``async with FakeExchange(routes, scripts) as fx:`` then point an adapter at
    ``fx.ws_url`` / ``fx.rest_url``."""

    def __init__(
        self,
        routes: dict[str, str] | None = None,
        scripts: Sequence[WsScript] = (),
        ws_path: str = "/",
    ) -> None:
        self.routes = dict(routes or {})
        self.scripts = list(scripts)
        self.ws_path = ws_path
        self.requests: list[tuple[str, str]] = []
        """(method, path?query) of every HTTP request, in order."""
        self.client_frames: list[list[str]] = []
        """Frames each WebSocket client sent, per connection."""
        self.ws_paths: list[str] = []
        """The request path (with its query) of each WebSocket connection."""
        self.sent_ns: list[int] = []
        """``time.perf_counter_ns()`` just before each frame was sent (all connections, in
        order): the start of a frame-to-event latency measurement."""
        self.ws_connects = 0
        self._fail: dict[str, deque[HttpResponse]] = {}
        self._ws_server: Any = None
        self._http_server: asyncio.AbstractServer | None = None
        self.ws_port = 0
        self.http_port = 0
        self._conn_tasks: set[asyncio.Task[Any]] = set()

    # -- control ---------------------------------------------------------------------

    def fail_next(self, path: str, *responses: HttpResponse) -> None:
        """Serve these responses (in order) to the next requests for ``path`` (any query)."""
        self._fail.setdefault(path, deque()).extend(responses)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}{self.ws_path}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def __aenter__(self) -> FakeExchange:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        import websockets

        self._ws_server = await websockets.serve(
            self._ws_handler, "127.0.0.1", 0, max_size=None, compression=None
        )
        self.ws_port = self._ws_server.sockets[0].getsockname()[1]
        self._http_server = await asyncio.start_server(self._http_handler, "127.0.0.1", 0)
        self.http_port = self._http_server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws_server.wait_closed(), 2.0)
        if self._http_server is not None:
            self._http_server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_server.wait_closed(), 2.0)

    # -- WebSocket -------------------------------------------------------------------

    async def _ws_handler(self, ws: Any) -> None:
        import websockets

        index = self.ws_connects
        self.ws_connects += 1
        received: list[str] = []
        self.client_frames.append(received)
        self.ws_paths.append(str(getattr(getattr(ws, "request", None), "path", "")))
        if not self.scripts:
            await ws.close()
            return
        script = self.scripts[min(index, len(self.scripts) - 1)]

        async def reader() -> None:
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                async for msg in ws:
                    text = msg if isinstance(msg, str) else msg.decode()
                    received.append(text)
                    if script.reply is not None and len(received) > script.wait_for:
                        for out in script.reply(text):
                            await ws.send(out)

        read_task = asyncio.ensure_future(reader())
        try:
            while len(received) < script.wait_for:
                if read_task.done():
                    return
                await asyncio.sleep(0.005)
            prev_ts: float | None = None
            for n, (ts, text) in enumerate(script.frames):
                if script.close_after is not None and n >= script.close_after:
                    await ws.close()
                    return
                if script.pace > 0 and prev_ts is not None and ts > prev_ts:
                    await asyncio.sleep((ts - prev_ts) * script.pace)
                prev_ts = ts
                self.sent_ns.append(time.perf_counter_ns())
                await ws.send(text)
            if script.linger:
                await read_task
            else:
                await ws.close()
        except websockets.exceptions.ConnectionClosed:
            return
        finally:
            read_task.cancel()

    # -- HTTP ------------------------------------------------------------------------

    async def _http_handler(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                length = 0
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                parts = urlsplit(target)
                key = route_key(parts.path, parts.query)
                self.requests.append((method, key))
                resp = self._respond(parts.path, key)
                body = resp.body.encode()
                head = [f"HTTP/1.1 {resp.status} {'OK' if resp.status < 400 else 'Error'}"]
                headers = {"Content-Type": "application/json", **resp.headers}
                headers["Content-Length"] = str(len(body))
                head += [f"{k}: {v}" for k, v in headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    def _respond(self, path: str, key: str) -> HttpResponse:
        queue = self._fail.get(path)
        if queue:
            return queue.popleft()
        body = self.routes.get(key)
        if body is None:
            body = self.routes.get(path)
        if body is None:
            return HttpResponse(404, json.dumps({"error": f"no route {key}"}))
        return HttpResponse(200, body)
