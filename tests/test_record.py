"""``tickerml record``: collectors into the journal, with a raw capture that plays back.

Real Binance spot BTCUSDT frames (hftbacktest capture) are served by the local fake
exchange; the recorder journals the normalised events and writes a raw capture; the
capture, played back by the fake exchange and recorded again, gives the same events.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from test_live import EXCHANGE_INFO, _capture

from adapters.exchanges.fake import FakeExchange, WsScript, load_capture
from adapters.exchanges.registry import adapter_class
from adapters.journal.sqlite import SqliteJournal
from journal_tools.record import build_adapters, record
from kernel.events import BookDelta, BookSnapshot, Event, Trade, decode

SNAPSHOT_ID = 50093239218
FRAMES = 600


def _record(
    routes: dict[str, str], frames: list[tuple[float, str]], db: Path, raw: Path | None
) -> Any:
    async def main() -> Any:
        async with FakeExchange(routes, [WsScript(frames)]) as fx:
            adapters = build_adapters(
                ["binance"],
                ["BTC-USDT"],
                ["book", "trades"],
                50,
                ws_url=fx.ws_url,
                rest_url=fx.rest_url,
                options={"trade_stream": "trade"},
            )
            stop = asyncio.Event()

            async def until_done() -> None:
                # every frame handled (the fake has sent them all and the adapter read them)
                while adapters[0].stats.frames < len(frames):
                    await asyncio.sleep(0.02)
                stop.set()

            waiter = asyncio.ensure_future(until_done())
            with SqliteJournal(db) as journal:
                result = await record(
                    adapters, journal=journal, raw_dir=raw, duration_s=30, stop=stop
                )
            waiter.cancel()
            return result

    return asyncio.run(main())


def _market(db: Path) -> list[Event]:
    with SqliteJournal(db) as j:
        return [decode(r.payload) for r in j.read("md.BINANCE.BTC-USDT")]


def _identity(ev: Event) -> tuple[object, ...]:
    """An event without its local receive time (which differs between two recordings)."""
    if isinstance(ev, BookDelta | BookSnapshot):
        return (type(ev).__name__, ev.seq, ev.bids, ev.asks)
    assert isinstance(ev, Trade)
    return ("Trade", ev.seq, ev.ts_event, ev.trade_id, ev.price, ev.size, ev.side)


def test_record_journals_events_and_its_raw_capture_plays_back(tmp_path: Path) -> None:
    snapshot, frames = _capture()
    frames = frames[:FRAMES]
    routes = {"/api/v3/exchangeInfo": EXCHANGE_INFO, "/api/v3/depth": snapshot}
    result = _record(routes, frames, tmp_path / "a.db", tmp_path / "raw")

    depth_ids = []
    trade_ids = []
    for _, text in frames:
        data = json.loads(text)["data"]
        if data.get("e") == "depthUpdate" and int(data["u"]) > SNAPSHOT_ID:
            depth_ids.append(int(data["u"]))
        elif data.get("e") == "trade":
            trade_ids.append(str(data["t"]))
    events = _market(tmp_path / "a.db")
    assert [e.seq for e in events if isinstance(e, BookSnapshot)] == [SNAPSHOT_ID]
    assert [e.seq for e in events if isinstance(e, BookDelta)] == depth_ids
    assert [e.trade_id for e in events if isinstance(e, Trade)] == trade_ids
    assert result.feeds["BINANCE"]["frames"] == FRAMES
    assert result.feeds["BINANCE"]["gaps"] == 0
    assert result.journaled == len(events) + 2  # + Connectivity up and down

    # The raw capture: every frame, the subscribe URL and both REST calls
    (path,) = result.captures
    cap = load_capture(path)
    assert cap.exchange == "BINANCE"
    assert [text for _, text in cap.frames()] == [text for _, text in frames]
    urls = [url for _, url, _ in cap.http]
    assert any("/api/v3/exchangeInfo" in u for u in urls)
    assert any("/api/v3/depth" in u and "BTCUSDT" in u for u in urls)
    (addr,) = cap.connections.values()
    assert "btcusdt@depth" in addr and "btcusdt@trade" in addr

    # ... and it plays back: recording it again gives the same events
    again = _record(cap.routes(), cap.frames(), tmp_path / "b.db", None)
    assert again.captures == []
    assert [_identity(e) for e in _market(tmp_path / "b.db")] == [_identity(e) for e in events]


def test_record_names_unknown_exchanges_clearly() -> None:
    import pytest

    from adapters.exchanges.registry import AdapterNotFound
    from journal_tools.record import RecordError

    with pytest.raises(AdapterNotFound, match="no exchange adapter for 'BITNOPE'"):
        build_adapters(["bitnope"], ["BTC-USDT"], ["book"], 50)
    with pytest.raises(RecordError, match="at least one symbol"):
        build_adapters(["binance"], [], ["book"], 50)
    assert adapter_class("binance").__name__ == "BinanceSpot"


def test_funding_above_the_threshold_raises_one_alert_per_cycle_at_collection() -> None:
    from adapters.config_loader import load_config
    from journal_tools.live import input_stream
    from journal_tools.record import funding_alerts, system_stream
    from kernel.events import Alert, Connectivity, FundingRate
    from kernel.funding import FundingMonitor

    app = load_config(Path(__file__).resolve().parents[1] / "config")
    monitor = FundingMonitor(list(app.instruments.instruments), 10_000_000)  # 0.1 %
    t0 = 1_735_689_600_000_000_000  # 2025-01-01 00:00 UTC
    rate = FundingRate(t0, t0, "BINANCE", "BTC-USDT-PERP", 0, 10_000_001)  # 0.1000001 %
    alerts = funding_alerts(monitor, [rate])
    assert len(alerts) == 1 and alerts[0].rule == "funding_rate_high"
    again = FundingRate(t0 + 10**9, t0 + 10**9, "BINANCE", "BTC-USDT-PERP", 0, 20_000_000)
    assert funding_alerts(monitor, [again]) == []  # same cycle: once
    unknown = FundingRate(t0, t0, "BINANCE", "NOPE-USDT-PERP", 0, 50_000_000)
    (other,) = funding_alerts(monitor, [unknown])  # its own cycle (default 8 h grid)
    assert "NOPE-USDT-PERP funding rate +0.5000%" in other.message
    assert system_stream(alerts[0]) == input_stream(alerts[0]) == "sys.ALERTS"
    link = Connectivity(t0, t0, "BINANCE", "BTC-USDT", "up", "connected")
    assert input_stream(link) == "sys.CONNECTIVITY"
    assert isinstance(alerts[0], Alert)
