"""Typed, frozen configuration. Every struct rejects unknown keys.

Loading YAML and reading environment variables happens at the edge
(:mod:`adapters.config_loader`); here are only the types and their hash.
"""

from __future__ import annotations

import hashlib

import msgspec

from kernel.instruments import Instrument
from kernel.sync import SyncConfig


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class EngineConfig(_Config, frozen=True):
    """The kernel fold. ``reject_invalid_book`` refuses crossed/negative book messages
    (journaled as DataQuality); ``max_decisions_per_event`` bounds a strategy's output."""

    sync: SyncConfig = msgspec.field(default_factory=SyncConfig)
    reject_invalid_book: bool = True
    max_decisions_per_event: int = 16


ParamValue = bool | int | float | str


class StrategyConfig(_Config, frozen=True):
    """Which strategy to run and its parameters (names are the strategy's own)."""

    name: str = "none"
    params: dict[str, ParamValue] = msgspec.field(default_factory=dict)


class TradingConfig(_Config, frozen=True):
    """config/trading.yaml: the session seed, engine and strategy."""

    seed: int = 42
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    strategy: StrategyConfig = msgspec.field(default_factory=StrategyConfig)


class JournalConfig(_Config, frozen=True):
    """config/timescale.yaml: where the journal lives (env TICKERML_JOURNAL_DSN wins)."""

    dsn: str = "sqlite:///tickerml.db"
    batch_size: int = 5_000


class KafkaConfig(_Config, frozen=True):
    """config/kafka.yaml: bus settings (env TICKERML_KAFKA_BOOTSTRAP wins)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    compression: str = "zstd"
    linger_ms: int = 10
    partitions: int = 6
    retention_hours: int = 168
    topics: tuple[str, ...] = (
        "orderbooks",
        "trades",
        "funding",
        "news",
        "features",
        "signals",
        "orders",
        "fills",
        "risk",
        "system",
    )


class LatencyProfile(_Config, frozen=True):
    """Per-exchange latency: log-normal with mean/std in ms, spikes, entry/response."""

    entry_mean_ms: float = 150.0
    entry_std_ms: float = 30.0
    response_mean_ms: float = 150.0
    response_std_ms: float = 30.0
    spike_probability: float = 0.01
    spike_multiplier: float = 5.0


class ExchangeConfig(_Config, frozen=True):
    enabled: bool = True
    latency: LatencyProfile = msgspec.field(default_factory=LatencyProfile)
    rest_weight_per_minute: int = 1200


class ExchangesConfig(_Config, frozen=True):
    """config/exchanges.yaml: per-exchange settings keyed by upper-case exchange name."""

    exchanges: dict[str, ExchangeConfig] = msgspec.field(default_factory=dict)


class InstrumentsConfig(_Config, frozen=True):
    """config/instruments.yaml: every instrument the kernel may see."""

    instruments: tuple[Instrument, ...] = ()


class RiskLimitsConfig(_Config, frozen=True):
    """config/risk_limits.yaml (enforced by the risk layer)."""

    kelly_fraction: float = 0.25
    base_size_pct: float = 2.0
    max_position_pct: float = 25.0
    max_positions: int = 5
    min_order_usd: float = 10.0
    drawdown_half_size_pct: float = 15.0
    drawdown_reduce_only_pct: float = 20.0
    drawdown_halt_pct: float = 25.0
    max_correlation: float = 0.7


class ModelConfig(_Config, frozen=True):
    """config/model.yaml: Decision Transformer shape (validated ranges later)."""

    n_layers: int = 6
    n_heads: int = 8
    d_model: int = 256
    context_len: int = 64
    quarantine_days: int = 30


class MonitoringConfig(_Config, frozen=True):
    """config/monitoring.yaml: alert thresholds."""

    log_format: str = "auto"
    spread_zscore_alert: float = 4.0
    consumer_lag_alert_s: float = 5.0


class AppConfig(_Config, frozen=True):
    """Every config file, decoded. Field name = file stem."""

    trading: TradingConfig = msgspec.field(default_factory=TradingConfig)
    instruments: InstrumentsConfig = msgspec.field(default_factory=InstrumentsConfig)
    timescale: JournalConfig = msgspec.field(default_factory=JournalConfig)
    kafka: KafkaConfig = msgspec.field(default_factory=KafkaConfig)
    exchanges: ExchangesConfig = msgspec.field(default_factory=ExchangesConfig)
    risk_limits: RiskLimitsConfig = msgspec.field(default_factory=RiskLimitsConfig)
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    monitoring: MonitoringConfig = msgspec.field(default_factory=MonitoringConfig)


def canonical_json(config: msgspec.Struct) -> bytes:
    """Canonical JSON of a config (sorted keys): what gets hashed and journaled."""
    return msgspec.json.encode(msgspec.to_builtins(config, order="sorted"), order="sorted")


def config_hash(config: msgspec.Struct) -> str:
    """Hex blake2b-256 of :func:`canonical_json`; goes into SessionStarted."""
    return hashlib.blake2b(canonical_json(config), digest_size=32).hexdigest()
