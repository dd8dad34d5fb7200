"""The 30-day quarantine: no training data from the last 30 days.

Trajectories may only come from market data that ended at least ``days`` (default and
minimum :data:`QUARANTINE_DAYS`) before now, so that the most recent month stays unseen
for out-of-sample checks and paper trading. The rule is enforced three times, each with
the same functions: at export (the range end, before any work), at dataset load (the
manifest's and the data's own newest timestamp) and at training start.

``now`` comes from an injectable clock (:data:`Clock`, default :func:`utc_now`), so tests
freeze it (freezegun). Times are ns since the epoch, UTC. The boundary passes: a range
ending exactly at ``now - days`` is allowed, one nanosecond later is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

QUARANTINE_DAYS = 30
"""The quarantine's length and its minimum: a shorter one is refused."""

NS_PER_DAY = 86_400 * 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Clock = Callable[[], datetime]
"""Returns now; a naive datetime is taken as UTC."""


class QuarantineError(ValueError):
    """Data (or a range) is newer than the quarantine allows."""


def utc_now() -> datetime:
    """The default clock: ``datetime.now(UTC)`` (patched by freezegun in tests)."""
    return datetime.now(UTC)


def datetime_to_ns(dt: datetime) -> int:
    """ns since the epoch, exact to the microsecond (naive = UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def ns_to_iso(ns: int) -> str:
    """``2025-01-01T00:00:00.000000000Z`` (exact to the ns)."""
    secs, rem = divmod(ns, 1_000_000_000)
    dt = _EPOCH + timedelta(seconds=secs)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{rem:09d}Z"


def _days(days: int) -> int:
    if days < QUARANTINE_DAYS:
        raise QuarantineError(
            f"the quarantine cannot be shorter than {QUARANTINE_DAYS} days (asked {days})"
        )
    return days


def now_ns(clock: Clock | None = None) -> int:
    """The clock's now in ns since the epoch."""
    return datetime_to_ns((clock or utc_now)())


def quarantine_cutoff_ns(days: int = QUARANTINE_DAYS, clock: Clock | None = None) -> int:
    """``now - days`` in ns: the latest time training data may reach (inclusive)."""
    return now_ns(clock) - _days(days) * NS_PER_DAY


def _check(what: str, ts_ns: int, days: int, clock: Clock | None) -> int:
    cutoff = quarantine_cutoff_ns(days, clock)
    if ts_ns > cutoff:
        too_recent = (ts_ns - cutoff) / NS_PER_DAY
        raise QuarantineError(
            f"{what} {ns_to_iso(ts_ns)} is {too_recent:.3f} days too recent: the "
            f"{days}-day quarantine allows data up to {ns_to_iso(cutoff)} "
            f"(now {ns_to_iso(cutoff + days * NS_PER_DAY)} - {days} days)"
        )
    return cutoff


def check_range_end(end_ns: int, days: int = QUARANTINE_DAYS, clock: Clock | None = None) -> int:
    """Refuse (QuarantineError) a range ending after ``now - days``; returns the cutoff."""
    return _check("range end", end_ns, days, clock)


def check_data_max(max_ts_ns: int, days: int = QUARANTINE_DAYS, clock: Clock | None = None) -> int:
    """Refuse (QuarantineError) data whose newest timestamp is after ``now - days``;
    returns the cutoff. Called at dataset load and at training start."""
    return _check("newest data timestamp", max_ts_ns, days, clock)


__all__ = [
    "NS_PER_DAY",
    "QUARANTINE_DAYS",
    "Clock",
    "QuarantineError",
    "check_data_max",
    "check_range_end",
    "datetime_to_ns",
    "now_ns",
    "ns_to_iso",
    "quarantine_cutoff_ns",
    "utc_now",
]
