"""Portfolio-aware features of one instrument, from the paper trader's books.

Pure: read from the engine's portfolio, marks and risk state. Values, in
:data:`PORTFOLIO_NAMES` order (0.0 where undefined):

* ``position``: signed open size (base units, float);
* ``position_pnl``: unrealised P&L of the open size at its mark (quote units):
  ``value_at_mark - cost`` (``cost`` is the signed basis), 0 when unmarked;
* ``time_in_position_s``: seconds since the position was opened (``now - opened_ts``);
* ``portfolio_heat``: gross exposure over the whole position budget,
  ``sum |value| / (equity x max_position_pct / 100 x max_positions)`` (1.0: every
  slot full at its cap);
* ``position_correlation``: the largest correlation of this asset's log returns with
  an open position in another asset, signed by that position's direction
  (``rho x sign(qty)``; the risk layer's samples), 0 without enough samples.
"""

from __future__ import annotations

PORTFOLIO_NAMES: tuple[str, ...] = (
    "position",
    "position_pnl",
    "time_in_position_s",
    "portfolio_heat",
    "position_correlation",
)

MONEY = 1e8  # MONEY units per quote unit (kernel.fixedpoint.MONEY_DECIMALS = 8)


def heat(gross_money: int, equity_money: int, max_position_pct: float, max_positions: int) -> float:
    budget = equity_money * max_position_pct / 100 * max_positions
    return gross_money / budget if budget > 0 else 0.0


def portfolio_features(
    qty: float,
    value_money: int | None,
    cost_money: int,
    opened_ts: int,
    now: int,
    heat_value: float,
    correlation: float,
) -> tuple[float, ...]:
    """The :data:`PORTFOLIO_NAMES` values: ``qty`` in base units; ``value_money`` the
    position's signed value at its mark (None: unmarked); ``cost_money`` its signed
    basis (MONEY units)."""
    if not qty:
        return (0.0, 0.0, 0.0, heat_value, correlation)
    pnl = (value_money - cost_money) / MONEY if value_money is not None else 0.0
    held = (now - opened_ts) / 1e9 if opened_ts else 0.0
    return (qty, pnl, held, heat_value, correlation)
