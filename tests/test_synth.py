"""Tests for journal_tools.synth: determinism, Tardis layout, book/trade invariants."""

from __future__ import annotations

import gzip
import hashlib
import itertools
from collections import Counter, defaultdict
from pathlib import Path

import msgspec
import pytest
import yaml

from journal_tools.synth import (
    BOOK_HEADER,
    FUNDING_PERIOD_US,
    HEADERS,
    SynthFile,
    SynthManifest,
    SynthSpec,
    check_invariants,
    check_ticker,
    generate,
    instruments_for,
)
from kernel.instruments import Instrument, InstrumentRegistry

ROOT = Path(__file__).resolve().parents[1]
SMALL = 0.05  # hours: 3 minutes of market


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> SynthManifest:
    out = tmp_path_factory.mktemp("synth")
    return generate(SynthSpec(out_dir=str(out), hours=SMALL))


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _by_name(manifest: SynthManifest) -> dict[str, SynthFile]:
    return {Path(f.path).name: f for f in manifest.files}


def _pairs(manifest: SynthManifest) -> dict[tuple[str, str], dict[str, SynthFile]]:
    out: dict[tuple[str, str], dict[str, SynthFile]] = defaultdict(dict)
    for f in manifest.files:
        out[(f.feed, f.wire_symbol)][f.kind] = f
    return out


# -- determinism -------------------------------------------------------------------------


def test_same_spec_same_bytes_other_seed_other_bytes(market: SynthManifest, tmp_path: Path) -> None:
    again = generate(msgspec.structs.replace(market.spec, out_dir=str(tmp_path / "b")))
    other = generate(msgspec.structs.replace(market.spec, out_dir=str(tmp_path / "c"), seed=8))
    first, second, third = _by_name(market), _by_name(again), _by_name(other)
    assert first.keys() == second.keys() == third.keys()
    for name, f in first.items():
        assert f.sha256 == _sha(f.path) == second[name].sha256, name
        assert f.rows == second[name].rows
        assert f.sha256 != third[name].sha256, name
    assert (market.first_ts, market.last_ts) == (again.first_ts, again.last_ts)


def test_adding_an_exchange_or_symbol_changes_no_other_file(tmp_path: Path) -> None:
    base = SynthSpec(
        out_dir=str(tmp_path / "a"), hours=0.01, exchanges=("binance",), symbols=("BTC-USDT",)
    )
    more = msgspec.structs.replace(
        base,
        out_dir=str(tmp_path / "b"),
        exchanges=("kraken", "binance"),
        symbols=("ETH-USDT", "BTC-USDT"),
    )
    small, big = _by_name(generate(base)), _by_name(generate(more))
    assert len(small) == 5 and len(big) == 14  # + derivative_ticker of the perp
    for name, f in small.items():
        assert big[name].sha256 == f.sha256, name


def test_manifest_json_round_trips(market: SynthManifest) -> None:
    path = Path(market.spec.out_dir) / "manifest.json"
    assert msgspec.json.decode(path.read_bytes(), type=SynthManifest) == market
    assert market.first_ts == min(f.first_ts for f in market.files)
    assert market.last_ts == max(f.last_ts for f in market.files)
    start = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
    assert start <= market.first_ts < start + 10_000_000
    assert market.last_ts <= start + int(SMALL * 3600e6) + 1_000_000


# -- layout ------------------------------------------------------------------------------


def test_file_names_and_exact_headers(market: SynthManifest) -> None:
    wires = {
        "binance": ("BTCUSDT", "ETHUSDT"),
        "coinbase": ("BTC-USDT", "ETH-USDT"),
        "kraken": ("XBTUSDT", "ETHUSDT"),
        "kucoin": ("BTC-USDT", "ETH-USDT"),
        "binance-futures": ("BTCUSDT", "ETHUSDT"),
        "kucoin-futures": ("XBTUSDTM", "ETHUSDTM"),
    }
    expected = set()
    for feed, ws in wires.items():
        kinds = ["incremental_book_L2", "trades"]
        if feed.endswith("-futures"):
            kinds.append("derivative_ticker")
        for wire, kind in itertools.product(ws, kinds):
            expected.add(f"{feed}_{kind}_2025-01-01_{wire}.csv.gz")
    files = _by_name(market)
    assert set(files) == expected
    for name, f in files.items():
        with gzip.open(f.path, "rt", encoding="utf-8", newline="") as fh:
            assert fh.readline() == HEADERS[f.kind] + "\n", name
            first = fh.readline().split(",")
        assert first[:2] == [f.feed, f.wire_symbol]
        assert f.instrument_kind == ("perp" if f.feed.endswith("-futures") else "spot")
        assert f.symbol.endswith("-PERP") == (f.instrument_kind == "perp")
        assert f.rows > 0
    assert {f.exchange for f in market.files} == {"BINANCE", "COINBASE", "KRAKEN", "KUCOIN"}


def test_instruments_match_files_and_config(market: SynthManifest) -> None:
    dicts = instruments_for(market.spec)
    assert len(dicts) == 12
    registry = InstrumentRegistry([msgspec.convert(d, Instrument) for d in dicts])
    for f in market.files:
        inst = registry.by_wire(f.feed, f.wire_symbol)
        assert (inst.exchange, inst.symbol, inst.kind) == (f.exchange, f.symbol, f.instrument_kind)
    btc = registry.get("BINANCE", "BTC-USDT")
    assert (btc.price_decimals, btc.size_decimals, btc.tick_size, btc.lot_size) == (2, 5, 1, 1)
    eth = registry.get("KRAKEN", "ETH-USDT")
    assert (eth.price_decimals, eth.size_decimals) == (2, 4)
    config = yaml.safe_load((ROOT / "config" / "instruments.yaml").read_text())["instruments"]
    configured = {(c["exchange"], c["symbol"]): c for c in config}
    for d in dicts:
        c = configured[(d["exchange"], d["symbol"])]
        for key, value in c.items():
            assert d[key] == value, (d["exchange"], d["symbol"], key)


# -- invariants --------------------------------------------------------------------------


def test_books_and_trades_keep_every_invariant(market: SynthManifest) -> None:
    precision = {(d["venue"], d["wire_symbol"]): d for d in instruments_for(market.spec)}
    for key, files in _pairs(market).items():
        book, trades = files["incremental_book_L2"], files["trades"]
        inst = precision[key]
        errs = check_invariants(
            book.path,
            trades.path,
            price_decimals=int(str(inst["price_decimals"])),
            size_decimals=int(str(inst["size_decimals"])),
        )
        assert errs == [], (key, errs[:5])
        assert book.messages > 500 and trades.rows > 100
        with gzip.open(book.path, "rt") as fh:
            next(fh)
            sizes = Counter(tuple(line.split(",", 5)[2:5]) for line in fh)
        assert sum(1 for k in sizes if k[2] == "true") == 1  # one snapshot block
        assert max(n for k, n in sizes.items() if k[2] == "false") <= 6  # rows per message
        assert len(sizes) - 1 == book.messages
        assert 1.5 < (book.rows - 2 * market.spec.levels) / book.messages < 3.0


def test_ticker_funding_on_8h_boundaries(market: SynthManifest) -> None:
    tickers = [f for f in market.files if f.kind == "derivative_ticker"]
    assert len(tickers) == 4
    for f in tickers:
        assert check_ticker(f.path) == []
        with gzip.open(f.path, "rt") as fh:
            next(fh)
            rows = [line.rstrip("\n").split(",") for line in fh]
        assert len(rows) >= SMALL * 3600 / 5 - 2
        for r in rows:
            assert int(r[4]) % FUNDING_PERIOD_US == 0  # 00:00 / 08:00 / 16:00 UTC
            assert -0.0005 < float(r[5]) < 0.0005
            assert abs(float(r[10]) / float(r[9]) - 1) < 0.002  # mark near index


def _mids(path: str) -> list[tuple[int, float]]:
    """(timestamp µs, mid) after each book message."""
    bids: dict[float, str] = {}
    asks: dict[float, str] = {}
    out: list[tuple[int, float]] = []
    with gzip.open(path, "rt") as fh:
        next(fh)
        cur = ""
        for line in fh:
            r = line.rstrip("\n").split(",")
            if r[2] != cur and bids and asks:
                out.append((int(cur), (max(bids) + min(asks)) / 2))
            cur = r[2]
            book = bids if r[5] == "bid" else asks
            if r[7] == "0":
                del book[float(r[6])]
            else:
                book[float(r[6])] = r[7]
    return out


def test_cross_exchange_dislocations_exceed_10bp(market: SynthManifest) -> None:
    for symbol in ("BTC-USDT", "ETH-USDT"):
        books = [f for f in market.files if f.kind == "incremental_book_L2" and f.symbol == symbol]
        assert len(books) == 4
        grid = range(market.first_ts + 1_000_000, market.last_ts, 1_000_000)
        sampled = []
        for f in books:
            mids, i, vals = _mids(f.path), 0, []
            for g in grid:
                while i + 1 < len(mids) and mids[i + 1][0] <= g:
                    i += 1
                vals.append(mids[i][1])
            sampled.append(vals)
        worst = max(
            abs(x - y) / x * 1e4
            for a, b in itertools.combinations(sampled, 2)
            for x, y in zip(a, b, strict=True)
        )
        assert 10 < worst < 120, (symbol, worst)
        # ...while the venues otherwise agree: the median divergence is a few bp.
        typical = sorted(abs(x - y) / x * 1e4 for x, y in zip(sampled[0], sampled[1], strict=True))
        assert typical[len(typical) // 2] < 10


def _write(path: Path, header: str, rows: list[str]) -> str:
    with gzip.open(path, "wt") as fh:
        fh.write(header + "\n" + "".join(r + "\n" for r in rows))
    return str(path)


def test_checker_reports_violations(tmp_path: Path) -> None:
    p = "binance,BTCUSDT,"
    book = _write(
        tmp_path / "b.csv.gz",
        BOOK_HEADER,
        [
            f"{p}100,1100,true,bid,100.00,1.00000",
            f"{p}100,1100,true,ask,100.02,1.00000",
            f"{p}200,1200,false,bid,100.02,1.00000",  # locked
            f"{p}300,1300,false,bid,100.02,0",
            f"{p}400,1400,false,ask,100.05,0",  # delete of a missing level
            f"{p}500,1500,false,ask,100.03,2.00000",  # the touch is 100.02: wrong delta
            f"{p}600,1600,false,bid,100.01,1.5",  # amount not at 5 decimals
        ],
    )
    trades = _write(
        tmp_path / "t.csv.gz",
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount",
        [
            f"{p}450,1450,1,buy,100.02,0.40000",
            f"{p}550,1550,3,sell,100.01,0.10000",  # id skips; not at the touch
        ],
    )
    errs = check_invariants(book, trades)
    for needle in (
        "crossed or locked",
        "delete of missing level",
        "trade id 3",
        "not at the touch",
        "not followed by its own delta",
        "bad side/price/amount",
    ):
        assert any(needle in e for e in errs), (needle, errs)


# -- modes -------------------------------------------------------------------------------


def test_exact_counts_for_benchmarks(tmp_path: Path) -> None:
    spec = SynthSpec(
        out_dir=str(tmp_path),
        hours=0.05,
        exchanges=("binance",),
        symbols=("BTC-USDT",),
        perps=False,
        book_msgs=8192,
        trades=1000,
    )
    calls: list[tuple[int, int]] = []
    manifest = generate(spec, progress=lambda done, total: calls.append((done, total)))
    book, trades = sorted(manifest.files, key=lambda f: f.kind)
    assert (book.kind, trades.kind) == ("incremental_book_L2", "trades")
    assert book.messages == 8192
    assert trades.rows == 1000
    assert 1.6 < (book.rows - 50) / book.messages < 2.3
    assert check_invariants(book.path, trades.path) == []
    span = manifest.last_ts - manifest.first_ts
    assert 0.8 * 180e6 < span < 1.2 * 180e6
    assert calls[0] == (0, 8192) and calls[-1] == (8192, 8192)
    assert all(d <= t for d, t in calls)


def test_progress_and_validation(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    generate(
        SynthSpec(out_dir=str(tmp_path), hours=0.01, perps=False, exchanges=("kucoin",)),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1][0] == calls[-1][1] > 0
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    with pytest.raises(ValueError):
        generate(SynthSpec(out_dir=str(tmp_path), hours=0))
    with pytest.raises(ValueError):
        generate(SynthSpec(out_dir=str(tmp_path), symbols=("BTC-USDT-PERP",)))
