"""Fixed-point arithmetic for prices, sizes and money.

Prices and sizes are integers in units of ``10**-decimals`` of the instrument's quote
(price) or base (size) currency. Money is an integer in units of ``10**-MONEY_DECIMALS``
of the quote currency. Text and :class:`~decimal.Decimal` exist only at the edges:
parse once on the way in, format once on the way out. No float is ever involved.
"""

from __future__ import annotations

from decimal import Decimal

MONEY_DECIMALS = 8
"""Money (cash, fees, P&L) is kept in units of 1e-8 of the quote currency."""

MONEY_SCALE = 10**MONEY_DECIMALS

RATE_DECIMALS = 10
"""Funding rates are kept in units of 1e-10 (a rate of 0.0001 is 1_000_000)."""

RATE_SCALE = 10**RATE_DECIMALS

POW10: tuple[int, ...] = tuple(10**k for k in range(40))
"""Powers of ten as ints (``10**k`` with a variable ``k`` is typed Any by mypy)."""


class FixedPointError(ValueError):
    """A decimal text could not be represented exactly at the requested precision."""


def parse_fixed(text: str, decimals: int) -> int:
    """Parse a decimal string exactly into an integer of ``10**-decimals`` units.

    Accepts an optional sign, digits, an optional fraction and an optional exponent
    (``"1e-5"``). Extra fractional digits are allowed only when they are zeros
    (``"0.10"`` at 1 decimal is 1); anything else raises :class:`FixedPointError`
    instead of rounding silently.
    """
    s = text.strip()
    if not s:
        raise FixedPointError("empty number")
    if "e" in s or "E" in s:
        return from_decimal(_decimal(s), decimals)
    neg = s[0] == "-"
    if neg or s[0] == "+":
        s = s[1:]
    whole, dot, frac = s.partition(".")
    if not (whole or frac) or not (whole.isdigit() or whole == "") or (frac and not frac.isdigit()):
        raise FixedPointError(f"not a decimal number: {text!r}")
    if dot and not frac and not whole:
        raise FixedPointError(f"not a decimal number: {text!r}")
    if len(frac) > decimals:
        extra = frac[decimals:]
        if extra.strip("0"):
            raise FixedPointError(f"{text!r} has more than {decimals} decimals")
        frac = frac[:decimals]
    value = int((whole or "0") + frac.ljust(decimals, "0"))
    return -value if neg else value


def _decimal(text: str) -> Decimal:
    try:
        d = Decimal(text)
    except ArithmeticError as exc:  # decimal.InvalidOperation
        raise FixedPointError(f"not a decimal number: {text!r}") from exc
    if not d.is_finite():
        raise FixedPointError(f"not a finite number: {text!r}")
    return d


def from_decimal(value: Decimal, decimals: int) -> int:
    """Convert a Decimal exactly; raise :class:`FixedPointError` if it would round."""
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise FixedPointError(f"{value} has more than {decimals} decimals")
    return int(scaled)


def to_decimal(units: int, decimals: int) -> Decimal:
    """The exact Decimal value of ``units * 10**-decimals``."""
    return Decimal(units).scaleb(-decimals)


def format_fixed(units: int, decimals: int) -> str:
    """Render with exactly ``decimals`` fractional digits (``format_fixed(5, 3) == "0.005"``)."""
    sign = "-" if units < 0 else ""
    digits = str(abs(units)).rjust(decimals + 1, "0")
    if decimals == 0:
        return sign + digits
    return f"{sign}{digits[:-decimals]}.{digits[-decimals:]}"


def notional(price: int, price_decimals: int, size: int, size_decimals: int) -> int:
    """Money value of ``size`` at ``price`` in MONEY units, rounded toward zero.

    Exact whenever ``price_decimals + size_decimals <= MONEY_DECIMALS`` (all
    instruments configured here); otherwise truncated toward zero.
    """
    shift = MONEY_DECIMALS - price_decimals - size_decimals
    raw = price * size
    if shift >= 0:
        return raw * POW10[shift]
    q = abs(raw) // POW10[-shift]
    return q if raw >= 0 else -q


def apply_rate_ppm(money: int, ppm: int) -> int:
    """``money * ppm / 1e6`` rounded half away from zero (fees: 2 bp = 200 ppm)."""
    num = money * ppm
    q, r = divmod(abs(num), 1_000_000)
    if 2 * r >= 1_000_000:
        q += 1
    return q if num >= 0 else -q
