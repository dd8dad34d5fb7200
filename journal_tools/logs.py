"""structlog set-up: JSON lines when not on a terminal, pretty output on one.

Bind context instead of formatting it into messages::

    log = get_logger().bind(session=session_id, exchange="BINANCE", symbol="BTC-USDT")
    log.info("replay.done", events=n)
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(fmt: str = "auto", level: str = "INFO") -> None:
    """``fmt``: ``auto`` (pretty on a TTY, JSON otherwise), ``json`` or ``console``."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        # resolve sys.stderr when a logger is made, not now: tests and embedding code
        # swap it, and a logger bound to a closed stream fails every later call
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)


def get_logger(**context: Any) -> Any:
    return structlog.get_logger().bind(**context)
