"""Alert delivery: the sinks behind the kernel's alerts, and the runner's system alerts.

The kernel (kernel/alerts.py) decides *which* alerts there are and journals them with
the session's outputs: the journal is the first sink and the record. After a batch of
outputs is journaled, the runner hands it to an :class:`AlertDispatcher`, which delivers
each ``Alert`` to the configured sinks:

* :class:`LogSink`: one structured log line per alert (``alert`` at the alert's level);
* :class:`WebhookSink`: a JSON ``POST`` per alert (``{"severity", "rule", "message",
  "ts_event", "session_id"}``) from a background thread, so a slow or dead endpoint
  never stalls the kernel loop; each alert is tried ``1 + retries`` times with the
  configured timeout, and failures are counted and logged, never raised.

:class:`SystemAlerts` raises the alerts the kernel cannot see because they are about the
process, not the market: consumer lag over ``consumer_lag_alert_s`` and journal write
errors. They go through the same deduplication and rate limits
(:class:`kernel.alerts.AlertGate`) on the wall clock, into the ``sys.ALERTS`` stream.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

import httpx
import structlog

from kernel.alerts import AlertGate
from kernel.config import AlertsConfig, MonitoringConfig
from kernel.events import Alert, Event

log = structlog.get_logger(__name__)

ALERTS_STREAM = "sys.ALERTS"


class AlertSink(Protocol):
    def deliver(self, alert: Alert, session_id: str) -> None: ...

    def close(self) -> None: ...


class LogSink:
    """Logs each alert: ``critical`` at error level, ``warning`` at warning, else info."""

    def __init__(self) -> None:
        self.delivered = 0

    def deliver(self, alert: Alert, session_id: str) -> None:
        level = {"critical": "error", "warning": "warning"}.get(alert.severity, "info")
        getattr(log, level)(
            "alert",
            rule=alert.rule,
            severity=alert.severity,
            message=alert.message,
            ts_event=alert.ts_event,
            session=session_id,
        )
        self.delivered += 1

    def close(self) -> None:
        return None


def alert_json(alert: Alert, session_id: str) -> dict[str, object]:
    return {
        "severity": alert.severity,
        "rule": alert.rule,
        "message": alert.message,
        "ts_event": alert.ts_event,
        "session_id": session_id,
    }


class WebhookSink:
    """POSTs each alert as JSON to ``url`` from one background thread, in order."""

    def __init__(self, url: str, timeout_s: float = 2.0, retries: int = 2) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue[dict[str, object] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def deliver(self, alert: Alert, session_id: str) -> None:
        self._queue.put(alert_json(alert, session_id))

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while (body := self._queue.get()) is not None:
                for attempt in range(self.retries + 1):
                    try:
                        resp = client.post(self.url, json=body)
                        if resp.status_code < 300:
                            self.delivered += 1
                            break
                        error = f"HTTP {resp.status_code}"
                    except httpx.HTTPError as exc:
                        error = f"{type(exc).__name__}: {exc}"
                    if attempt == self.retries:
                        self.failed += 1
                        log.warning(
                            "alert.webhook_failed",
                            url=self.url,
                            rule=body["rule"],
                            attempts=attempt + 1,
                            error=error,
                        )

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (each alert's tries), then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)


class AlertDispatcher:
    """Hands every ``Alert`` in a batch of journaled outputs to each sink."""

    def __init__(self, sinks: Iterable[AlertSink], session_id: str = "") -> None:
        self.sinks = list(sinks)
        self.session_id = session_id
        self.dispatched = 0

    def __call__(self, events: Iterable[Event]) -> int:
        n = 0
        if not self.sinks:
            return 0
        for ev in events:
            if type(ev) is Alert:
                for sink in self.sinks:
                    sink.deliver(ev, self.session_id)
                n += 1
        self.dispatched += n
        return n

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def build_dispatcher(
    config: AlertsConfig, session_id: str, *, webhook: bool = True
) -> AlertDispatcher:
    """The sinks ``config`` asks for. ``webhook=False`` is a backtest: no log and no
    webhook unless asked for with ``log_in_replay`` / ``webhook_in_replay`` (the alerts are
    in the journal either way)."""
    sinks: list[AlertSink] = []
    if config.enabled and config.log and (webhook or config.log_in_replay):
        sinks.append(LogSink())
    if config.enabled and config.webhook_url and (webhook or config.webhook_in_replay):
        sinks.append(
            WebhookSink(config.webhook_url, config.webhook_timeout_s, config.webhook_retries)
        )
    return AlertDispatcher(sinks, session_id)


class SystemAlerts:
    """Alerts about the process: consumer lag and journal errors, on the wall clock.

    ``append(alerts)`` writes them (the runner passes a function that journals into
    ``sys.ALERTS``); ``now_ns`` is the clock (injectable for tests)."""

    def __init__(
        self,
        monitoring: MonitoringConfig,
        append: Callable[[list[Alert]], object],
        now_ns: Callable[[], int],
    ) -> None:
        self.enabled = monitoring.alerts.enabled
        self.lag_threshold_s = monitoring.consumer_lag_alert_s
        self.gate = AlertGate(monitoring.alerts.cooldown_s, monitoring.alerts.max_per_minute)
        self.append = append
        self.now_ns = now_ns
        self.raised: list[Alert] = []

    def _raise(self, key: str, severity: str, rule: str, message: str) -> Alert | None:
        if not self.enabled:
            return None
        now = self.now_ns()
        fire, repeats = self.gate.fire(key, now)
        if not fire:
            return None
        if repeats:
            message += f" ({repeats} repeat{'s' if repeats != 1 else ''} suppressed)"
        alert = Alert(
            ts_event=now,
            ts_recv=now,
            severity=severity,  # type: ignore[arg-type]
            rule=rule,
            message=message,
        )
        self.raised.append(alert)
        try:
            self.append([alert])
        except Exception as exc:  # the alert about a broken journal must not break more
            log.error("alert.append_failed", rule=rule, error=str(exc))
        return alert

    def lag(self, lag_s: float, detail: str = "") -> Alert | None:
        """Consumer lag now; an alert when over the threshold, re-armed under half."""
        if lag_s > self.lag_threshold_s:
            where = f" ({detail})" if detail else ""
            return self._raise(
                "consumer_lag",
                "warning",
                "consumer_lag",
                f"consumer lag {lag_s:.1f} s > {self.lag_threshold_s:g} s{where}",
            )
        if lag_s < self.lag_threshold_s / 2:
            self.gate.clear("consumer_lag")
        return None

    def journal_error(self, exc: BaseException) -> Alert | None:
        """A journal write failed (critical); one alert per error kind until cleared."""
        kind = type(exc).__name__
        return self._raise(
            f"journal_error:{kind}",
            "critical",
            "journal_error",
            f"journal write failed: {kind}: {exc}",
        )

    def journal_ok(self) -> None:
        for key in [k for k in self.gate.active if k.startswith("journal_error:")]:
            self.gate.clear(key)
