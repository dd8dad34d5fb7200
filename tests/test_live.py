"""End to end: fake exchange -> ``tickerml live`` -> Tansu -> PostgreSQL -> verify.

The fake exchange (127.0.0.1) plays back real Binance spot BTCUSDT frames (hftbacktest
capture, shared/data/market/binance_hftbacktest). ``tickerml live`` runs as a separate
process, exactly as a user starts it. Checks:

* ``tickerml verify SESSION`` re-derives every output of the live session from the
  journal: identical, same state hash;
* the same message produced twice is one journal row and one kernel input;
* ``kill -9`` in the middle of the run, then ``--resume``: every market event of the
  capture is in the journal exactly once (no gap, no duplicate) and the session still
  verifies.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.exchanges.fake import FakeExchange, WsScript
from adapters.journal import open_journal
from adapters.kafka import EventConsumer, EventProducer, create_topics
from journal_tools.live import LiveConfig, LiveKernel
from kernel.config import AppConfig, KafkaConfig
from kernel.events import BookDelta, BookSnapshot, Trade, decode

REPO = Path(__file__).resolve().parents[1]
CAPTURE = (
    REPO.parent / "shared" / "data" / "market" / "binance_hftbacktest" / "spot_btcusdt_20240808.gz"
)
FRAMES = 1200

pytestmark = pytest.mark.slow


def _capture() -> tuple[str, list[tuple[float, str]]]:
    """(REST snapshot body, WebSocket frames (recorded s, text)) of the first FRAMES lines."""
    if not CAPTURE.exists():
        pytest.skip(f"recorded Binance data not present at {CAPTURE} (see shared/data/MANIFEST.md)")
    snapshot = ""
    frames: list[tuple[float, str]] = []
    with gzip.open(CAPTURE, "rt") as fh:
        for line in fh:
            ts, _, body = line.rstrip("\n").partition(" ")
            if body.startswith('{"lastUpdateId"'):
                snapshot = body
                continue
            frames.append((int(ts) / 1e9, body))
            if len(frames) >= FRAMES:
                break
    assert snapshot, "the capture's REST snapshot line was not found"
    return snapshot, frames


EXCHANGE_INFO = json.dumps(
    {
        "timezone": "UTC",
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": 6000,
            }
        ],
        "symbols": [
            {
                "symbol": "BTCUSDT",
                "status": "TRADING",
                "baseAsset": "BTC",
                "quoteAsset": "USDT",
                "filters": [
                    {"filterType": "PRICE_FILTER", "tickSize": "0.01000000"},
                    {"filterType": "LOT_SIZE", "stepSize": "0.00001000"},
                    {"filterType": "NOTIONAL", "minNotional": "5.00000000"},
                ],
            }
        ],
    }
)


class FakeBinance:
    """The fake exchange in a thread of its own (the live process connects over loopback)."""

    def __init__(self, pace: float) -> None:
        snapshot, frames = _capture()
        self.frames = frames
        self.routes = {"/api/v3/exchangeInfo": EXCHANGE_INFO, "/api/v3/depth": snapshot}
        self.script = WsScript(frames, pace=pace)
        self.fx: FakeExchange | None = None
        self._ready = threading.Event()
        self._stop: object = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import asyncio

        async def main() -> None:
            self.fx = FakeExchange(self.routes, [self.script])
            await self.fx.start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._stop = lambda: loop.call_soon_threadsafe(stop.set)
            self._ready.set()
            await stop.wait()
            await self.fx.close()

        asyncio.run(main())

    def __enter__(self) -> FakeBinance:
        self.thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert callable(self._stop)
        self._stop()
        self.thread.join(10)


def _config_dir(tmp: Path, kafka: KafkaConfig) -> Path:
    d = tmp / "config"
    shutil.copytree(REPO / "config", d)
    (d / "kafka.yaml").write_text(
        f"bootstrap_servers: {kafka.bootstrap_servers}\ntopic_prefix: '{kafka.topic_prefix}'\n"
        f"partitions: {kafka.partitions}\nlinger_ms: 5\n"
    )
    return d


def _live_yaml(tmp: Path, fx: FakeExchange, journal: str) -> Path:
    p = tmp / "live.yaml"
    p.write_text(
        "\n".join(
            [
                f"journal: '{journal}'",
                "heartbeat_ms: 200",
                "allowed_lateness_ms: 100",
                "checkpoint_every: 200",
                "poll_timeout_ms: 50",
                "feeds:",
                "  - exchange: BINANCE",
                "    symbols: [BTCUSDT]",
                "    channels: [book, trades]",
                f"    ws_url: '{fx.ws_url}'",
                f"    rest_url: '{fx.rest_url}'",
                "    options: {trade_stream: trade}",
            ]
        )
        + "\n"
    )
    return p


def _start_live(cfg_dir: Path, live_yaml: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "journal_tools.cli",
        "--config-dir",
        str(cfg_dir),
        "--log-format",
        "json",
        "live",
        "--config",
        str(live_yaml),
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TICKERML_KAFKA_BOOTSTRAP", None)
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env
    )


def _market_rows(journal_dsn: str) -> list[bytes]:
    with open_journal(journal_dsn) as j:
        return [r.payload for r in j.read("md.BINANCE.BTC-USDT")]


def _checkpoints(journal_dsn: str, session: str) -> int:
    from journal_tools.live import CHECKPOINT_MODEL

    with open_journal(journal_dsn) as j:
        try:
            return len(j.read_read_model(CHECKPOINT_MODEL, session).rows)
        except Exception:
            return 0


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def kafka_config(kafka_bootstrap: str) -> KafkaConfig:
    import secrets

    config = KafkaConfig(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"live{secrets.token_hex(3)}.",
        partitions=2,
        linger_ms=5,
    )
    create_topics(config)
    return config


@pytest.fixture
def pg_journal(pg_dsn: str, pg_schema: str) -> Iterator[str]:
    sep = "&" if "?" in pg_dsn else "?"
    yield f"{pg_dsn}{sep}schema={pg_schema}"


def _expected_market_events(frames: list[tuple[float, str]]) -> tuple[set[int], set[str]]:
    """Update ids of the depth diffs after the snapshot and the trade ids in the frames."""
    depth_ids: set[int] = set()
    trades: set[str] = set()
    for _, text in frames:
        data = json.loads(text)["data"]
        if data.get("e") == "depthUpdate":
            depth_ids.add(int(data["u"]))
        elif data.get("e") == "trade":
            trades.add(str(data["t"]))
    return depth_ids, trades


def test_live_session_survives_kill_9_and_replays_exactly(
    tmp_path: Path, kafka_config: KafkaConfig, pg_journal: str
) -> None:
    cfg_dir = _config_dir(tmp_path, kafka_config)
    log = tmp_path / "live.log"
    with FakeBinance(pace=0.5) as fake:
        assert fake.fx is not None
        live_yaml = _live_yaml(tmp_path, fake.fx, pg_journal)
        proc = _start_live(cfg_dir, live_yaml, log, "--session", "live-e2e")
        try:
            # mid-run: some market data journaled and a checkpoint past the start
            _wait_for(
                lambda: (
                    _checkpoints(pg_journal, "live-e2e") and len(_market_rows(pg_journal)) > 200
                ),
                60,
                "the live session to journal market data",
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert proc.returncode == -signal.SIGKILL
            before = len(_market_rows(pg_journal))
            proc = _start_live(cfg_dir, live_yaml, log, "--resume", "live-e2e")
            # the fake exchange plays the whole capture again to the new connection:
            # every frame is delivered at least once more
            depth_ids, trade_ids = _expected_market_events(fake.frames)
            last_trade = max(trade_ids, key=int)

            def caught_up() -> bool:
                rows = [decode(p) for p in _market_rows(pg_journal)]
                return any(isinstance(e, Trade) and e.trade_id == last_trade for e in rows)

            _wait_for(caught_up, 90, "the resumed session to journal the whole capture")
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    rows = [decode(p) for p in _market_rows(pg_journal)]
    assert len(rows) > before
    trades = [e.trade_id for e in rows if isinstance(e, Trade)]
    assert sorted(trades, key=int) == sorted(trade_ids, key=int)  # each trade exactly once
    deltas = [e.seq for e in rows if isinstance(e, BookDelta)]
    assert len(deltas) == len(set(deltas))  # no duplicate
    # no gap: the diffs after the first snapshot form the capture's id sequence
    snaps = [e for e in rows if isinstance(e, BookSnapshot)]
    assert snaps and {s.seq for s in snaps} == {50093239218}
    assert set(deltas) == {u for u in depth_ids if u > 50093239218}
    verify = subprocess.run(
        [
            *(sys.executable, "-m", "journal_tools.cli", "--config-dir", str(cfg_dir)),
            *("replay", "--journal", pg_journal, "--verify", "--session", "live-e2e", "--json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    result = json.loads(verify.stdout)
    assert result["ok"] and result["chain_ok"] and result["outputs_checked"] > 0


def test_same_message_twice_is_one_row_and_one_input(
    tmp_path: Path, kafka_config: KafkaConfig, pg_journal: str
) -> None:
    """The journal sink and the live kernel each take a re-produced message once."""
    from adapters.config_loader import load_config
    from adapters.kafka import consume_into_journal
    from journal_tools.live import INPUT_TOPICS, FeedSpec, input_stream

    t0 = 1_723_161_255_208_000_000
    trade = Trade(
        t0, t0 + 5, "BINANCE", "BTC-USDT", 3735683259, "3735683259", 6_183_763, 2000, "sell"
    )
    with EventProducer(kafka_config) as producer:
        producer.produce(trade)
        producer.produce(trade)  # the same message again (e.g. a collector retry)
        assert producer.flush(10) == 0
    live = LiveConfig(
        journal=pg_journal,
        feeds=[FeedSpec(exchange="BINANCE", symbols=["BTCUSDT"])],
    )
    app: AppConfig = load_config(REPO / "config")
    with open_journal(pg_journal) as journal:
        with EventConsumer(kafka_config, "dup-sink", INPUT_TOPICS, assign=True) as sink:
            stats = consume_into_journal(sink, journal, input_stream, timeout=2.0, max_batches=3)
        assert stats.appended == 2  # both deliveries were handed to the journal...
        assert [decode(r.payload) for r in journal.read("md.BINANCE.BTC-USDT")] == [trade]
        kernel = LiveKernel(app, live, journal, None, "dup-session", ["BINANCE"], t0)
        kernel.start()
        with EventConsumer(kafka_config, "dup-kernel", INPUT_TOPICS, assign=True) as kc:
            for _ in range(3):
                kernel.process(kc.poll_batch(100, 2.0))
        assert (kernel.inputs, kernel.duplicates) == (1, 1)
        assert kernel.engine.events_in == 0  # still held by the synchronizer
        kernel.finish()
        assert kernel.engine.events_in == 1


def test_example_config_parses_and_names_real_adapters() -> None:
    from journal_tools.live import LiveError, adapter_class, load_live_config

    live = load_live_config(REPO / "docs" / "live.example.yaml")
    assert [(f.exchange, f.symbols) for f in live.feeds] == [
        ("BINANCE", ["BTCUSDT", "ETHUSDT"]),
        ("KRAKEN", ["BTC/USD"]),
    ]
    assert adapter_class("BINANCE").__name__ == "BinanceSpot"
    assert adapter_class("KRAKEN").__name__ == "KrakenExchange"  # v2, not v1
    assert {adapter_class(x).exchange for x in ("COINBASE", "KUCOIN", "KRAKENF")} == {
        "COINBASE",
        "KUCOIN",
        "KRAKENF",
    }
    with pytest.raises(LiveError, match="no exchange adapter for 'NOPE'"):
        adapter_class("NOPE")
    with pytest.raises(LiveError, match="feeds` is empty"):
        LiveConfig(feeds=[])
