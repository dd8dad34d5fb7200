"""Alerts: rules over what the kernel sees and makes, with deduplication and rate limits.

Pure and deterministic: time is the kernel clock (event time), there is no I/O. The
engine feeds :class:`AlertEngine` its inputs that matter (connectivity, halts) and its
own outputs (portfolio snapshots, features, decisions, toxic fills, risk events); the
alerts it returns are journaled in the session stream with the rest, so a replay makes
exactly the same alerts (``tickerml replay --verify`` checks them) and an auditor finds
them beside the decisions. Delivery to a log or a webhook is the runner's business
(adapters/alerts.py); the journal is the record.

Rules (thresholds from ``config/monitoring.yaml``; each names its subject and values):

* ``drawdown`` (warning): equity from ``PortfolioSnapshot`` at or below
  ``drawdown_pct`` % under its running peak (the peak starts at the initial cash).
  Re-arms once the drawdown is back under ``drawdown_pct - rearm_pct``.
* ``risk_limit_approached`` (warning): the drawdown at or above
  ``risk_limit_fraction`` of the first circuit breaker (``risk_limits.drawdown_half_size_pct``).
* ``circuit_breaker``: a risk-layer drawdown level change (critical when ``halted``,
  info back at ``normal``; a level re-arms when the level changes again); ``halt``
  (critical): a Halt (kill switch), re-armed by a Resume.
* ``spread_zscore`` (warning): a ``Features`` sample with ``|spread_bp_z| >=
  spread_zscore_alert``; re-arms under half of it.
* ``volatility_zscore`` (warning): the absolute log change of ``mid`` between
  consecutive samples, z-scored against its own exponentially weighted mean and
  variance (``volatility_half_life`` samples, after ``volatility_warmup`` samples) at
  or above ``volatility_zscore``; re-arms under half of it. The statistics include the
  sample only after it was scored.
* ``model_confidence_low`` (warning): the exponentially weighted mean confidence of
  the strategy's decisions (kernel ``risk`` decisions excluded; span
  ``confidence_span``, after that many decisions) under ``min_confidence``; re-arms
  at ``min_confidence + 0.05``.
* ``toxic_fills`` (warning): ``toxic_fills`` ``FillToxic`` events within
  ``toxic_window_s``; re-arms when the window holds fewer than half of them.
* ``funding_rate_high`` is raised by the funding tracker (kernel/funding.py: once per
  perp per funding cycle), not here, so that it is never raised twice.
* ``disconnect`` (warning): ``Connectivity`` down for an exchange-symbol; re-arms when
  it is up again.

Deduplication: an alert key (rule and subject) that has fired stays *active* and
fires no more until its condition clears (each rule's re-arm level above), so a
condition that persists is one alert, not a storm. Rate limits: a key fires at most
once per ``cooldown_s``, and all keys together at most ``max_per_minute`` per rolling
minute; what either suppresses is counted, and the key's next alert says how many.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

import msgspec

from kernel.config import AlertsConfig
from kernel.events import (
    Alert,
    Connectivity,
    Decision,
    Event,
    Features,
    FillToxic,
    Halt,
    PortfolioSnapshot,
    Resume,
    RiskEvent,
)
from kernel.fixedpoint import MONEY_DECIMALS

Severity = Literal["info", "warning", "critical"]

_NS = 1_000_000_000
_MINUTE = 60 * _NS


class _Vol(msgspec.Struct, array_like=True):
    last_mid: float = 0.0
    mean: float = 0.0
    var: float = 0.0
    n: int = 0


class AlertState(msgspec.Struct, array_like=True):
    """Everything the alert engine remembers (part of the engine's snapshot)."""

    active: list[str] = msgspec.field(default_factory=list)
    last_fired: list[tuple[str, int]] = msgspec.field(default_factory=list)
    suppressed: list[tuple[str, int]] = msgspec.field(default_factory=list)
    recent: list[int] = msgspec.field(default_factory=list)
    fired: int = 0
    suppressed_total: int = 0
    peak: int = 0
    conf_mean: float = 0.0
    conf_n: int = 0
    toxic: list[int] = msgspec.field(default_factory=list)
    vol: list[tuple[str, _Vol]] = msgspec.field(default_factory=list)


class AlertGate:
    """Deduplication and rate limiting of alert keys, in event time."""

    def __init__(self, cooldown_s: float, max_per_minute: int) -> None:
        self.cooldown_ns = int(cooldown_s * _NS)
        self.max_per_minute = max_per_minute
        self.active: set[str] = set()
        self.last_fired: dict[str, int] = {}
        self.suppressed: dict[str, int] = {}
        self.recent: deque[int] = deque()
        self.fired = 0
        self.suppressed_total = 0

    def fire(self, key: str, now: int) -> tuple[bool, int]:
        """May ``key`` fire now? Returns (fire, repeats suppressed since its last alert).

        A key that is active (fired, not cleared) is a duplicate: not fired, not counted.
        A key within its cooldown or over the per-minute budget is suppressed: counted,
        and it becomes active so that it is not retried on every event."""
        if key in self.active:
            return False, 0
        self.active.add(key)
        recent = self.recent
        while recent and recent[0] <= now - _MINUTE:
            recent.popleft()
        last = self.last_fired.get(key)
        if (last is not None and now - last < self.cooldown_ns) or (
            len(recent) >= self.max_per_minute
        ):
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            self.suppressed_total += 1
            return False, 0
        recent.append(now)
        self.last_fired[key] = now
        self.fired += 1
        return True, self.suppressed.pop(key, 0)

    def clear(self, key: str) -> None:
        """The condition behind ``key`` is over: the next breach may fire again."""
        self.active.discard(key)


class AlertEngine:
    """``AlertEngine(config, initial_cash, breaker_pct, spread_z)``.

    ``initial_cash`` in MONEY units; ``breaker_pct`` the first drawdown breaker (None:
    no risk layer, rule ``risk_limit_approached`` off); ``spread_z`` the spread z-score
    threshold."""

    def __init__(
        self,
        config: AlertsConfig,
        initial_cash: int,
        breaker_pct: float | None,
        spread_z: float,
    ) -> None:
        self.cfg = config
        self.gate = AlertGate(config.cooldown_s, config.max_per_minute)
        self.initial_cash = initial_cash
        self.breaker_pct = breaker_pct
        self.spread_z = spread_z
        self.peak = initial_cash
        self.conf_mean = 0.0
        self.conf_n = 0
        self.toxic: deque[int] = deque()
        self.vol: dict[str, _Vol] = {}
        self._alpha_vol = 1 - 0.5 ** (1 / config.volatility_half_life)
        self._alpha_conf = 2 / (config.confidence_span + 1)
        self._out: list[Alert] = []

    # -- feeding -------------------------------------------------------------------------

    def scan(self, events: list[Event], now: int) -> list[Alert]:
        """The alerts that ``events`` (inputs or kernel outputs, in order) raise."""
        out: list[Alert] = []
        self._out = out
        for ev in events:
            t = type(ev)
            if t is PortfolioSnapshot:
                self._equity(ev.equity, now)  # type: ignore[attr-defined]
            elif t is Features:
                self._features(ev, now)  # type: ignore[arg-type]
            elif t is Decision:
                self._decision(ev, now)  # type: ignore[arg-type]
            elif t is FillToxic:
                self._toxic(ev, now)  # type: ignore[arg-type]
            elif t is RiskEvent:
                self._risk(ev, now)  # type: ignore[arg-type]
            elif t is Halt:
                reason = ev.reason  # type: ignore[attr-defined]
                self._raise("halt", now, "critical", "halt", f"kill switch: {reason}")
            elif t is Resume:
                self.gate.clear("halt")
            elif t is Connectivity:
                self._connectivity(ev, now)  # type: ignore[arg-type]
        if self.toxic:
            self.expire(now)
        return out

    # -- rules ---------------------------------------------------------------------------

    def _raise(self, key: str, now: int, severity: Severity, rule: str, message: str) -> None:
        fire, repeats = self.gate.fire(key, now)
        if not fire:
            return
        if repeats:
            message += f" ({repeats} repeat{'s' if repeats != 1 else ''} suppressed)"
        self._out.append(
            Alert(ts_event=now, ts_recv=now, severity=severity, rule=rule, message=message)
        )

    def _equity(self, equity: int, now: int) -> None:
        if equity > self.peak:
            self.peak = equity
        peak = self.peak
        if peak <= 0:
            return
        dd = (peak - equity) * 100 / peak
        cfg = self.cfg
        scale = 10**MONEY_DECIMALS
        values = f"equity {equity / scale:,.2f}, peak {peak / scale:,.2f}"
        if dd >= cfg.drawdown_pct:
            self._raise(
                "drawdown",
                now,
                "warning",
                "drawdown",
                f"drawdown {dd:.2f}% >= threshold {cfg.drawdown_pct:g}% ({values})",
            )
        elif dd < cfg.drawdown_pct - cfg.rearm_pct:
            self.gate.clear("drawdown")
        if self.breaker_pct is not None:
            level = self.breaker_pct * cfg.risk_limit_fraction
            if dd >= level:
                self._raise(
                    "risk_limit_approached",
                    now,
                    "warning",
                    "risk_limit_approached",
                    f"drawdown {dd:.2f}% >= {cfg.risk_limit_fraction:g} x first breaker "
                    f"{self.breaker_pct:g}% = {level:g}% ({values})",
                )
            elif dd < level - cfg.rearm_pct:
                self.gate.clear("risk_limit_approached")

    def _features(self, ev: Features, now: int) -> None:
        subject = f"{ev.exchange}:{ev.symbol}"
        values = ev.as_dict()
        z = values.get("spread_bp_z")
        if z is not None:
            key = f"spread_zscore:{subject}"
            if abs(z) >= self.spread_z:
                self._raise(
                    key,
                    now,
                    "warning",
                    "spread_zscore",
                    f"{subject} spread z-score {z:.2f} beyond +/-{self.spread_z:g} "
                    f"(spread {values.get('spread_bp', 0.0):.2f} bp, "
                    f"average {values.get('spread_bp_ewma', 0.0):.2f} bp)",
                )
            elif abs(z) < self.spread_z / 2:
                self.gate.clear(key)
        mid = values.get("mid", 0.0)
        if mid > 0:
            self._volatility(subject, mid, now)

    def _volatility(self, subject: str, mid: float, now: int) -> None:
        v = self.vol.get(subject)
        if v is None:
            self.vol[subject] = _Vol(last_mid=mid)
            return
        r = abs(math.log(mid / v.last_mid))
        v.last_mid = mid
        cfg = self.cfg
        key = f"volatility_zscore:{subject}"
        if v.n >= cfg.volatility_warmup and v.var > 0:
            z = (r - v.mean) / math.sqrt(v.var)
            if z >= cfg.volatility_zscore:
                self._raise(
                    key,
                    now,
                    "warning",
                    "volatility_zscore",
                    f"{subject} mid move {r * 1e4:.2f} bp is {z:.2f} sd above its average "
                    f"{v.mean * 1e4:.2f} bp (threshold {cfg.volatility_zscore:g})",
                )
            elif z < cfg.volatility_zscore / 2:
                self.gate.clear(key)
        a = self._alpha_vol
        d = r - v.mean
        v.mean += a * d
        v.var = (1 - a) * (v.var + a * d * d)
        v.n += 1

    def _decision(self, ev: Decision, now: int) -> None:
        if ev.strategy == "risk":
            return
        self.conf_n += 1
        a = self._alpha_conf
        self.conf_mean = (
            ev.confidence
            if self.conf_n == 1
            else self.conf_mean + a * (ev.confidence - self.conf_mean)
        )
        cfg = self.cfg
        if self.conf_n < cfg.confidence_span:
            return
        if self.conf_mean < cfg.min_confidence:
            model = f" model {ev.model_id}" if ev.model_id else ""
            self._raise(
                "model_confidence_low",
                now,
                "warning",
                "model_confidence_low",
                f"{ev.strategy}{model}: mean confidence {self.conf_mean:.3f} over the last "
                f"~{cfg.confidence_span} decisions < {cfg.min_confidence:g}",
            )
        elif self.conf_mean >= cfg.min_confidence + 0.05:
            self.gate.clear("model_confidence_low")

    def _toxic(self, ev: FillToxic, now: int) -> None:
        cfg = self.cfg
        window = int(cfg.toxic_window_s * _NS)
        toxic = self.toxic
        toxic.append(now)
        while toxic and toxic[0] <= now - window:
            toxic.popleft()
        if len(toxic) >= cfg.toxic_fills:
            self._raise(
                "toxic_fills",
                now,
                "warning",
                "toxic_fills",
                f"{len(toxic)} toxic fills within {cfg.toxic_window_s:g} s (threshold "
                f"{cfg.toxic_fills}); last {ev.exchange}:{ev.symbol} {ev.reason}",
            )

    def expire(self, now: int) -> None:
        """Drop toxic fills older than the window; re-arm when under half the count."""
        window = int(self.cfg.toxic_window_s * _NS)
        toxic = self.toxic
        while toxic and toxic[0] <= now - window:
            toxic.popleft()
        if len(toxic) * 2 < self.cfg.toxic_fills:
            self.gate.clear("toxic_fills")

    def _risk(self, ev: RiskEvent, now: int) -> None:
        if ev.rule != "drawdown":
            return
        severity: Severity = (
            "critical" if ev.level == "halted" else "info" if ev.level == "normal" else "warning"
        )
        key = f"circuit_breaker:{ev.level}"
        for other in [k for k in self.gate.active if k.startswith("circuit_breaker:")]:
            if other != key:
                self.gate.clear(other)
        self._raise(
            key,
            now,
            severity,
            "circuit_breaker",
            f"drawdown breaker -> {ev.level}: {ev.detail}",
        )

    def _connectivity(self, ev: Connectivity, now: int) -> None:
        subject = f"{ev.exchange}:{ev.symbol}"
        key = f"disconnect:{subject}"
        if ev.status == "down":
            reason = f": {ev.reason}" if ev.reason else ""
            self._raise(key, now, "warning", "disconnect", f"{subject} disconnected{reason}")
        elif ev.status == "up":
            self.gate.clear(key)

    # -- state ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        g = self.gate
        st = AlertState(
            active=sorted(g.active),
            last_fired=sorted(g.last_fired.items()),
            suppressed=sorted(g.suppressed.items()),
            recent=list(g.recent),
            fired=g.fired,
            suppressed_total=g.suppressed_total,
            peak=self.peak,
            conf_mean=self.conf_mean,
            conf_n=self.conf_n,
            toxic=list(self.toxic),
            vol=sorted(self.vol.items()),
        )
        return msgspec.msgpack.encode(st)

    def restore(self, blob: bytes) -> None:
        st = msgspec.msgpack.decode(blob, type=AlertState)
        g = self.gate
        g.active = set(st.active)
        g.last_fired = dict(st.last_fired)
        g.suppressed = dict(st.suppressed)
        g.recent = deque(st.recent)
        g.fired = st.fired
        g.suppressed_total = st.suppressed_total
        self.peak = st.peak
        self.conf_mean = st.conf_mean
        self.conf_n = st.conf_n
        self.toxic = deque(st.toxic)
        self.vol = dict(st.vol)
