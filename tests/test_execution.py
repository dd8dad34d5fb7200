"""The simulated venue, pinned with exact numbers worked out by hand.

Every test runs a scenario (the same machinery as ``tickerml scenario``) or drives the
engine directly. Instrument: BTC-USDT, prices with 1 decimal (tick 0.1), sizes with 3
decimals (lot 0.001), so ``"100.1"`` is 1001 price units and ``"0.001"`` 1 size unit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from journal_tools.scenario import parse_scenario, run_scenario
from kernel.execution import ALLOWED_TRANSITIONS, SimOrder, Venue, sqrt_impact_bp

SCENARIOS = Path(__file__).parent / "scenarios"

INSTRUMENT = {
    "exchange": "BINANCE",
    "symbol": "BTC-USDT",
    "kind": "spot",
    "base": "BTC",
    "quote": "USDT",
    "price_decimals": 1,
    "size_decimals": 3,
    "maker_fee_ppm": 0,
    "taker_fee_ppm": 1000,
}
PERP = {**INSTRUMENT, "symbol": "BTC-USDT-PERP", "kind": "perp"}
BOOK = {"t_ms": 0, "type": "snapshot", "bids": [["100.0", "10"]], "asks": [["100.1", "10"]]}


def run(events: list[dict[str, Any]], **extra: Any) -> list[dict[str, Any]]:
    raw = {
        "instrument": extra.pop("instrument", INSTRUMENT),
        "execution": {"impact_y": 0.0, **extra.pop("execution", {})},
        "latency": extra.pop("latency", {"entry_ms": 0, "response_ms": 0}),
        "portfolio": {"initial_cash": "100000", **extra.pop("portfolio", {})},
        "events": events,
        **extra,
    }
    return list(run_scenario(parse_scenario(raw)))


def of(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] == kind]


def fills(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(f["order_id"], f["price"], f["size"]) for f in of(rows, "Fill")]


# -- must show ------------------------------------------------------------------------


def test_market_buy_walks_the_book_and_depletes_it() -> None:
    rows = list(
        run_scenario(
            parse_scenario(json.loads((SCENARIOS / "market_walk.json").read_text()), "walk")
        )
    )
    assert fills(rows) == [
        ("m1", "100.1", "10.000"),
        ("m1", "100.2", "2.000"),
        # the second buy sees 100.1 gone and 3 left at 100.2 (5 - 2): it cannot take
        # the same liquidity twice, and the unfilled 1.000 expires
        ("m2", "100.2", "3.000"),
    ]
    final = rows[-1]
    # (10 x 100.1 + 2 x 100.2) / 12 = 1201.4 / 12 = 100.116666...
    assert final["orders"]["m1"]["avg_price"] == "100.11666667"
    assert of(rows, "OrderExpired")[0]["remaining"] == "1.000"
    # taker fee 10 bp: 1001.0 x 0.001 = 1.001; 200.4 x 0.001 = 0.2004; 300.6 x 0.001
    assert [f["fee"] for f in of(rows, "Fill")] == ["1.00100000", "0.20040000", "0.30060000"]
    # slippage vs the touch at arrival (100.1): 2 x 0.1 = 0.2 on the second level
    assert [f["slippage"] for f in of(rows, "Fill")] == ["0.00000000", "0.20000000", "0.00000000"]
    # cash: 100000 - 1001 - 200.4 - 300.6 - 1.502 fees = 98496.498
    assert final["cash"] == "98496.49800000"
    assert final["positions"]["BINANCE:BTC-USDT"]["size"] == "15.000"


def test_market_depletion_is_replaced_by_the_markets_own_update() -> None:
    rows = run(
        [
            {**BOOK, "asks": [["100.1", "10"], ["100.2", "5"]]},
            {
                "t_ms": 10,
                "type": "submit",
                "id": "m1",
                "side": "buy",
                "order_type": "market",
                "size": "10",
            },
            # the market re-publishes 100.1 with 7: the overlay there is dropped
            {"t_ms": 20, "type": "delta", "asks": [["100.1", "7"]]},
            {
                "t_ms": 30,
                "type": "submit",
                "id": "m2",
                "side": "buy",
                "order_type": "market",
                "size": "8",
            },
        ]
    )
    assert fills(rows) == [
        ("m1", "100.1", "10.000"),
        ("m2", "100.1", "7.000"),
        ("m2", "100.2", "1.000"),
    ]


def test_risk_averse_queue_trades_then_a_cancel() -> None:
    join = {
        "t_ms": 10,
        "type": "submit",
        "id": "b1",
        "side": "buy",
        "size": "0.001",
        "price": "100.0",
    }
    sell = {"type": "trade", "price": "100.0", "side": "sell"}
    rows = run(
        [
            BOOK,
            join,
            {**sell, "t_ms": 20, "size": "4.000"},
            {**sell, "t_ms": 30, "size": "6.000"},  # 10.000 in all: exactly the queue ahead
        ]
    )
    assert of(rows, "OrderAccepted")[0]["queue_ahead"] == "10.000"
    assert fills(rows) == []
    rows = run(
        [
            BOOK,
            join,
            {**sell, "t_ms": 20, "size": "4.000"},
            {**sell, "t_ms": 30, "size": "6.001"},  # 10.001: 0.001 past the queue
        ]
    )
    assert fills(rows) == [("b1", "100.0", "0.001")]
    assert of(rows, "Fill")[0]["liquidity"] == "maker"
    assert of(rows, "Fill")[0]["queue_ahead"] == "10.000"
    # a level cancel 10 -> 4 moves us to 4 ahead (risk averse: min(ahead, level))
    cancel = {"t_ms": 20, "type": "delta", "bids": [["100.0", "4"]]}
    rows = run([BOOK, join, cancel, {**sell, "t_ms": 30, "size": "4.000"}])
    assert fills(rows) == []
    rows = run([BOOK, join, cancel, {**sell, "t_ms": 30, "size": "4.001"}])
    assert fills(rows) == [("b1", "100.0", "0.001")]


def test_constant_latency_entry_and_response() -> None:
    rows = run(
        [
            BOOK,
            {"t_ms": 10, "type": "submit", "id": "b1", "side": "buy", "size": "1", "price": "99.0"},
            {"t_ms": 200, "type": "trade", "price": "100.0", "size": "1", "side": "sell"},
        ],
        latency={"entry_ms": 50, "response_ms": 30},
    )
    sub = of(rows, "OrderSubmitted")[0]
    ack = of(rows, "OrderAccepted")[0]
    assert (sub["ts_event_ms"], sub["ts_recv_ms"]) == (10, 10)
    assert (ack["ts_event_ms"], ack["ts_recv_ms"]) == (60, 90)  # at the venue 60, seen 90
    # the ack is journaled in local-time order: before the trade at 200
    kinds = [r["kind"] for r in rows]
    assert kinds.index("OrderAccepted") < len(kinds) - 1


def test_partial_then_progressive_fill() -> None:
    rows = run(
        [
            {**BOOK, "bids": [["100.0", "2"]]},
            {
                "t_ms": 10,
                "type": "submit",
                "id": "b1",
                "side": "buy",
                "size": "1.0",
                "price": "100.0",
            },
            {"t_ms": 20, "type": "trade", "price": "100.0", "size": "2.4", "side": "sell"},
            {"t_ms": 30, "type": "trade", "price": "100.0", "size": "0.6", "side": "sell"},
        ]
    )
    assert fills(rows) == [("b1", "100.0", "0.400"), ("b1", "100.0", "0.600")]
    assert rows[-1]["orders"]["b1"] == {
        "filled": "1.000",
        "avg_price": "100.00000000",
        "open": False,
    }


def test_square_root_impact() -> None:
    assert sqrt_impact_bp(100, 10_000, 0.03, 0.7) == pytest.approx(21.0, abs=1e-9)
    assert sqrt_impact_bp(400, 10_000, 0.03, 0.7) == pytest.approx(42.0, abs=1e-9)
    assert sqrt_impact_bp(0, 10_000, 0.03, 0.7) == 0.0
    big_book = {**BOOK, "asks": [["100.1", "1000"]]}
    execution = {"impact_y": 0.7, "impact_default": {"sigma_daily": 0.03, "adv": 10000}}
    for q, bp, cost in (("100", 21.0, "21.02100000"), ("400", 42.0, "168.16800000")):
        rows = run(
            [
                big_book,
                {
                    "t_ms": 10,
                    "type": "submit",
                    "id": "m",
                    "side": "buy",
                    "order_type": "market",
                    "size": q,
                },
            ],
            execution=execution,
        )
        (fill,) = of(rows, "Fill")
        assert fill["impact_bp"] == pytest.approx(bp, abs=1e-6)
        # notional 100 x 100.1 = 10010 -> x 21 bp = 21.021; 400 x 100.1 x 42 bp = 168.168
        assert fill["impact_cost"] == cost


# -- more order types -----------------------------------------------------------------


def test_impact_shift_persists_and_decays() -> None:
    book = {**BOOK, "asks": [["100.1", "1000"]], "bids": [["100.0", "1000"]]}
    execution = {
        "impact_y": 0.7,
        "impact_default": {"sigma_daily": 0.03, "adv": 10000},
        "impact_permanent_fraction": 0.5,
        "impact_half_life_ms": 1000,
    }
    rows = run(
        [
            book,
            {
                "t_ms": 1,
                "type": "submit",
                "id": "a",
                "side": "buy",
                "order_type": "market",
                "size": "100",
            },
            # one half-life later: 10.5 permanent + 10.5 x 0.5 temporary = 15.75 bp shift;
            # a sell benefits from it: 21 - 15.75 = 5.25 bp
            {
                "t_ms": 1001,
                "type": "submit",
                "id": "b",
                "side": "sell",
                "order_type": "market",
                "size": "100",
            },
        ],
        execution=execution,
    )
    a, b = of(rows, "Fill")
    assert a["impact_bp"] == pytest.approx(21.0, abs=1e-6)
    assert b["impact_bp"] == pytest.approx(5.25, abs=1e-6)


def test_limit_order_types() -> None:
    book = {**BOOK, "asks": [["100.1", "1"], ["100.2", "1"]]}
    rows = run(
        [
            book,
            # IOC crossing 2 levels but limited to 100.1: takes 1, the rest expires
            {
                "t_ms": 10,
                "type": "submit",
                "id": "ioc",
                "side": "buy",
                "size": "3",
                "price": "100.1",
                "tif": "IOC",
            },
            # FOK wanting 3 up to 100.2 where only 1 (100.2) is left: expires whole
            {
                "t_ms": 20,
                "type": "submit",
                "id": "fok",
                "side": "buy",
                "size": "3",
                "price": "100.2",
                "tif": "FOK",
            },
            # post-only at 100.2 would take: rejected
            {
                "t_ms": 30,
                "type": "submit",
                "id": "po",
                "side": "buy",
                "size": "1",
                "price": "100.2",
                "tif": "POST_ONLY",
            },
            # GTC at 100.2: takes the 1 left at 100.2, rests 1 at 100.2 behind 0
            {
                "t_ms": 40,
                "type": "submit",
                "id": "gtc",
                "side": "buy",
                "size": "2",
                "price": "100.2",
            },
        ]
    )
    assert fills(rows) == [("ioc", "100.1", "1.000"), ("gtc", "100.2", "1.000")]
    assert [(r["order_id"], r["remaining"]) for r in of(rows, "OrderExpired")] == [
        ("ioc", "2.000"),
        ("fok", "3.000"),
    ]
    (rej,) = of(rows, "OrderRejected")
    assert rej["order_id"] == "po" and rej["reason"].startswith("post_only_would_cross")
    assert rows[-1]["orders"]["gtc"]["open"] is True


def test_stop_loss_and_take_profit_trigger_on_trades() -> None:
    rows = run(
        [
            {**BOOK, "bids": [["100.0", "10"], ["99.0", "10"]]},
            {
                "t_ms": 1,
                "type": "submit",
                "id": "buy",
                "side": "buy",
                "order_type": "market",
                "size": "2",
            },
            {
                "t_ms": 2,
                "type": "submit",
                "id": "sl",
                "side": "sell",
                "order_type": "stop_loss",
                "size": "1",
                "trigger_price": "99.5",
            },
            {
                "t_ms": 3,
                "type": "submit",
                "id": "tp",
                "side": "sell",
                "order_type": "take_profit",
                "size": "1",
                "trigger_price": "101.0",
                "price": "101.0",
            },
            {"t_ms": 10, "type": "trade", "price": "99.6", "size": "1", "side": "sell"},
            {"t_ms": 20, "type": "trade", "price": "99.5", "size": "1", "side": "sell"},
        ]
    )
    (trig,) = of(rows, "OrderTriggered")
    assert (trig["order_id"], trig["reference_price"], trig["ts_event_ms"]) == ("sl", "99.5", 20)
    # the stop becomes a market sell into the bids at 100.0
    assert fills(rows)[-1] == ("sl", "100.0", "1.000")
    assert rows[-1]["orders"]["tp"]["open"] is True


def test_stop_triggers_on_mid_when_configured() -> None:
    rows = run(
        [
            BOOK,
            {
                "t_ms": 1,
                "type": "submit",
                "id": "b",
                "side": "buy",
                "order_type": "market",
                "size": "1",
            },
            {
                "t_ms": 2,
                "type": "submit",
                "id": "sl",
                "side": "sell",
                "order_type": "stop_loss",
                "size": "1",
                "trigger_price": "99.5",
            },
            {"t_ms": 10, "type": "trade", "price": "99.0", "size": "1", "side": "sell"},
            {"t_ms": 20, "type": "snapshot", "bids": [["99.4", "5"]], "asks": [["99.6", "5"]]},
        ],
        execution={"trigger_source": "mid"},
    )
    (trig,) = of(rows, "OrderTriggered")
    assert (trig["reference_price"], trig["source"], trig["ts_event_ms"]) == ("99.5", "mid", 20)
    assert fills(rows)[-1] == ("sl", "99.4", "1.000")


def test_amend_size_down_keeps_priority_price_change_loses_it() -> None:
    base = [
        BOOK,
        {"t_ms": 10, "type": "submit", "id": "b1", "side": "buy", "size": "2", "price": "100.0"},
        {"t_ms": 20, "type": "delta", "bids": [["100.0", "15"]]},  # 5 join behind us
    ]
    rows = run(
        [
            *base,
            {"t_ms": 30, "type": "amend", "id": "b1", "size": "1"},
            {"t_ms": 40, "type": "trade", "price": "100.0", "size": "10.5", "side": "sell"},
        ]
    )
    (am,) = of(rows, "OrderAmended")
    assert (am["priority_kept"], am["size"], am["queue_ahead"]) == (True, "1.000", "10.000")
    assert fills(rows) == [("b1", "100.0", "0.500")]
    rows = run(
        [
            *base,
            {"t_ms": 30, "type": "amend", "id": "b1", "price": "99.9"},
            {"t_ms": 35, "type": "delta", "bids": [["99.9", "3"]]},
            {"t_ms": 40, "type": "amend", "id": "b1", "price": "100.0"},
            {"t_ms": 50, "type": "trade", "price": "100.0", "size": "10.5", "side": "sell"},
        ]
    )
    first, second = of(rows, "OrderAmended")
    assert (first["priority_kept"], first["queue_ahead"]) == (False, "0.000")
    # back at 100.0 it re-joins at the end: 15 ahead now, so 10.5 does not reach it
    assert (second["priority_kept"], second["queue_ahead"]) == (False, "15.000")
    assert fills(rows) == []


def test_cancel_and_illegal_actions_are_error_events() -> None:
    rows = run(
        [
            BOOK,
            {
                "t_ms": 10,
                "type": "submit",
                "id": "b1",
                "side": "buy",
                "size": "1",
                "price": "100.0",
            },
            {"t_ms": 20, "type": "cancel", "id": "b1"},
            {"t_ms": 30, "type": "cancel", "id": "b1"},  # closed: the strategy knows
            {"t_ms": 40, "type": "cancel", "id": "nope"},
        ]
    )
    (c,) = of(rows, "OrderCancelled")
    assert (c["order_id"], c["remaining"]) == ("b1", "1.000")
    errors = of(rows, "OrderError")
    assert [(e["order_id"], e["action"], e["state"]) for e in errors] == [
        ("b1", "cancel", "unknown"),
        ("nope", "cancel", "unknown"),
    ]
    # with latency the second cancel leaves before the first one's answer: the venue
    # answers it with an error naming the order as closed
    rows = run(
        [
            BOOK,
            {
                "t_ms": 10,
                "type": "submit",
                "id": "b1",
                "side": "buy",
                "size": "1",
                "price": "100.0",
            },
            {"t_ms": 200, "type": "cancel", "id": "b1"},
            {"t_ms": 201, "type": "cancel", "id": "b1"},
        ],
        latency={"entry_ms": 50, "response_ms": 30},
    )
    (e,) = of(rows, "OrderError")
    assert (e["state"], e["ts_event_ms"], e["ts_recv_ms"]) == ("closed", 251, 281)


def test_state_machine_refuses_illegal_transitions() -> None:
    assert "filled" not in ALLOWED_TRANSITIONS["cancelled"]
    assert ALLOWED_TRANSITIONS["filled"] == frozenset()
    sent: list[Any] = []
    from kernel.config import ExecutionConfig
    from kernel.instruments import InstrumentRegistry
    from kernel.portfolio import Portfolio

    venue = Venue(ExecutionConfig(), {}, {}, InstrumentRegistry([]), Portfolio(0), sent.append, 1)
    o = SimOrder("x", "BINANCE:BTC-USDT", 1, "limit", "GTC", 1000, 0, 5, 0, state="filled")
    assert venue._transition(o, "cancelled", 5, 6) is False
    assert o.state == "filled"
    (err,) = sent
    assert (err.order_id, err.action, err.state) == ("x", "cancelled", "filled")
    assert err.reason == "illegal transition filled -> cancelled"


def test_spot_cannot_go_short_and_needs_cash() -> None:
    rows = run(
        [
            BOOK,
            {
                "t_ms": 10,
                "type": "submit",
                "id": "s",
                "side": "sell",
                "order_type": "market",
                "size": "1",
            },
            {
                "t_ms": 20,
                "type": "submit",
                "id": "b",
                "side": "buy",
                "size": "10",
                "price": "100.0",
            },
        ],
        portfolio={"initial_cash": "500"},
    )
    reasons = [(r["order_id"], r["reason"].split(":")[0]) for r in of(rows, "OrderRejected")]
    assert reasons == [("s", "insufficient_position"), ("b", "insufficient_balance")]


def test_trade_through_and_book_through_fill_completely() -> None:
    rows = run(
        [
            {**BOOK, "bids": [["100.0", "10"], ["99.9", "5"]]},
            {
                "t_ms": 10,
                "type": "submit",
                "id": "b1",
                "side": "buy",
                "size": "1",
                "price": "100.0",
            },
            {"t_ms": 20, "type": "trade", "price": "99.9", "size": "0.5", "side": "sell"},
        ]
    )
    assert fills(rows) == [("b1", "100.0", "1.000")]
    rows = run(
        [
            BOOK,
            {
                "t_ms": 10,
                "type": "submit",
                "id": "s1",
                "side": "sell",
                "size": "1",
                "price": "100.1",
            },
            {
                "t_ms": 20,
                "type": "delta",
                "asks": [["100.1", "0"], ["100.2", "3"]],
                "bids": [["100.1", "2"]],
            },
        ],
        instrument={**PERP},
    )
    assert fills(rows) == [("s1", "100.1", "1.000")]


def test_probabilistic_queue_models_move_us_up_by_the_expected_share() -> None:
    events = [
        BOOK,
        {"t_ms": 10, "type": "submit", "id": "b1", "side": "buy", "size": "1", "price": "100.0"},
        {"t_ms": 20, "type": "delta", "bids": [["100.0", "16"]]},  # 6 join behind: back = 6
        # 4 cancelled. power n=2: front 10, back 6 -> 100/(100+36) = 0.73529 of 4 = 2.941
        # -> round 2.941 units of 0.001? no: sizes are in units, 4000 x 0.73529 = 2941
        {"t_ms": 30, "type": "delta", "bids": [["100.0", "12"]]},
        {"t_ms": 40, "type": "trade", "price": "100.0", "size": "7.059", "side": "sell"},
        {"t_ms": 50, "type": "trade", "price": "100.0", "size": "0.001", "side": "sell"},
    ]
    rows = run(events, execution={"queue_model": "power", "queue_power": 2.0})
    # ahead 10.000 - 2.941 = 7.059: the 7.059 trade reaches exactly the front, the 0.001
    # after it fills 0.001
    assert fills(rows) == [("b1", "100.0", "0.001")]
    # log model: log(1+10000)/(log(1+10000)+log(1+6000)) = 9.21044/(9.21044+8.69968)
    # = 0.514261 -> 4000 x 0.514261 = 2057.04 -> 2057; ahead 7.943
    rows = run(
        [*events[:3], events[3], {**events[4], "size": "7.943"}, events[5]],
        execution={"queue_model": "log"},
    )
    assert fills(rows) == [("b1", "100.0", "0.001")]
    rows = run(
        [*events[:3], events[3], {**events[4], "size": "7.942"}, events[5]],
        execution={"queue_model": "log"},
    )
    assert fills(rows) == []


def test_own_orders_at_one_level_share_a_trade_once() -> None:
    rows = run(
        [
            {**BOOK, "bids": [["100.0", "3"]]},
            {"t_ms": 10, "type": "submit", "id": "a", "side": "buy", "size": "2", "price": "100.0"},
            {"t_ms": 11, "type": "delta", "bids": [["100.0", "7"]]},  # 4 join behind a
            {"t_ms": 12, "type": "submit", "id": "b", "side": "buy", "size": "5", "price": "100.0"},
            # queue: 3 market, a 2, 4 market, b 5. A trade of 10: 3 + a's 2 + 4 + 1 of b
            {"t_ms": 20, "type": "trade", "price": "100.0", "size": "10", "side": "sell"},
        ]
    )
    assert fills(rows) == [("a", "100.0", "2.000"), ("b", "100.0", "1.000")]


def test_toxic_fill_by_queue_position_and_by_adverse_move() -> None:
    rows = run(
        [
            BOOK,
            {
                "t_ms": 10,
                "type": "submit",
                "id": "b1",
                "side": "buy",
                "size": "0.5",
                "price": "100.0",
            },
            {"t_ms": 20, "type": "trade", "price": "100.0", "size": "10.5", "side": "sell"},
            # the mid falls from 100.05 to 99.95 (-10 bp) within the 1 s window
            {"t_ms": 500, "type": "snapshot", "bids": [["99.9", "5"]], "asks": [["100.0", "5"]]},
        ]
    )
    (fill,) = of(rows, "Fill")
    assert fill["toxic"] is True  # 10 ahead > 10 x 0.5
    reasons = [(t["reason"], t["fill_id"]) for t in of(rows, "FillToxic")]
    assert reasons == [("queue_position", "b1:f1"), ("adverse_move", "b1:f1")]
    assert of(rows, "FillToxic")[1]["adverse_bp"] == pytest.approx(9.995, abs=1e-3)


def test_funding_is_paid_at_the_funding_time() -> None:
    t8h = 8 * 3600 * 1000
    rows = run(
        [
            {**BOOK, "t_ms": t8h - 1000},
            {"t_ms": t8h - 900, "type": "funding", "rate": "0.0001"},
            {
                "t_ms": t8h - 800,
                "type": "submit",
                "id": "b",
                "side": "buy",
                "order_type": "market",
                "size": "2",
            },
            {"t_ms": t8h - 700, "type": "mark", "price": "100.0"},
            {"t_ms": t8h + 10, "type": "trade", "price": "100.0", "size": "1", "side": "sell"},
        ],
        instrument=PERP,
    )
    (pay,) = of(rows, "FundingPayment")
    # long 2 x mark 100.0 = 200 notional x 0.0001 = 0.02 paid
    assert (pay["ts_event_ms"], pay["position"], pay["amount"]) == (t8h, "2.000", "-0.02000000")
    assert rows[-1]["funding"] == "-0.02000000"


def test_halt_cancels_open_orders_and_refuses_new_ones() -> None:
    rows = run(
        [
            BOOK,
            {
                "t_ms": 10,
                "type": "submit",
                "id": "b1",
                "side": "buy",
                "size": "1",
                "price": "100.0",
            },
            {"t_ms": 20, "type": "halt", "reason": "operator test"},
            {
                "t_ms": 30,
                "type": "submit",
                "id": "b2",
                "side": "buy",
                "size": "1",
                "price": "100.0",
            },
        ]
    )
    (c,) = of(rows, "OrderCancelled")
    assert (c["order_id"], c["reason"]) == ("b1", "halt: operator test")
    (r,) = of(rows, "OrderRejected")
    assert (r["order_id"], r["reason"]) == ("b2", "halted: kill switch on")


def test_action_budget_limits_strategy_actions_not_venue_responses() -> None:
    from kernel.config import EngineConfig, LatencyProfile
    from kernel.context import StrategyContext
    from kernel.engine import Engine
    from kernel.events import BookSnapshot, DataQuality, Fill, MarketEvent, OrderSubmitted
    from kernel.instruments import Instrument
    from strategies.base import BaseStrategy

    class Spammer(BaseStrategy):
        name = "spam"

        def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None:
            for _ in range(10):  # 10 orders, each crossing: 10 fills come back at once
                ctx.submit("BINANCE", "BTC-USDT", "buy", 1, order_type="market")

    inst = Instrument(**INSTRUMENT)  # type: ignore[arg-type]
    instant = LatencyProfile(model="constant", entry_mean_ms=0, response_mean_ms=0)
    eng = Engine(
        EngineConfig(max_decisions_per_event=4),
        [inst],
        Spammer(),
        seed=1,
        latency={"BINANCE": instant},
    )
    snap = BookSnapshot(
        ts_event=1,
        ts_recv=1,
        exchange="BINANCE",
        symbol="BTC-USDT",
        seq=1,
        bids=((1000, 10_000),),
        asks=((1001, 10_000),),
    )
    outs = eng.apply(snap)
    assert sum(isinstance(o, OrderSubmitted) for o in outs) == 4
    assert sum(isinstance(o, Fill) for o in outs) == 4  # every response of those 4
    (dq,) = [o for o in outs if isinstance(o, DataQuality)]
    assert dq.rule == "output_limit"
    assert dq.detail == "6 strategy actions refused over max_decisions_per_event=4"
