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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger().bind(**context)
