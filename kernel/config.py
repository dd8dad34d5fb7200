"""Typed, frozen configuration. Every struct rejects unknown keys.

Loading YAML and reading environment variables happens at the edge
(:mod:`adapters.config_loader`); here are only the types and their hash.
"""

from __future__ import annotations

import hashlib
from itertools import pairwise
from typing import Literal

import msgspec

from kernel.features.featureset import FeatureConfig
from kernel.fixedpoint import MONEY_DECIMALS, RATE_DECIMALS, FixedPointError, parse_fixed
from kernel.instruments import Instrument
from kernel.sync import SyncConfig


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class LatencyProfile(_Config, frozen=True):
    """Per-exchange order latency (config/exchanges.yaml).

    ``model: lognormal`` draws each delay from a log-normal distribution with the given
    mean and standard deviation (in ms, of the delay itself), then multiplies it by
    ``spike_multiplier`` with probability ``spike_probability``; draws come from the
    session's seeded venue generator. ``model: constant`` uses the means exactly (tests,
    scenarios). ``entry`` is strategy -> venue, ``response`` venue -> strategy."""

    model: Literal["lognormal", "constant"] = "lognormal"
    entry_mean_ms: float = 150.0
    entry_std_ms: float = 30.0
    response_mean_ms: float = 150.0
    response_std_ms: float = 30.0
    spike_probability: float = 0.01
    spike_multiplier: float = 5.0

    def __post_init__(self) -> None:
        if self.entry_mean_ms < 0 or self.response_mean_ms < 0:
            raise ValueError("latency means must be >= 0")
        if self.entry_std_ms < 0 or self.response_std_ms < 0:
            raise ValueError("latency standard deviations must be >= 0")
        if not 0 <= self.spike_probability <= 1 or self.spike_multiplier < 1:
            raise ValueError("need 0 <= spike_probability <= 1 and spike_multiplier >= 1")


class ImpactParams(_Config, frozen=True):
    """Square-root impact inputs of one instrument: daily volatility (0.03 = 3%) and
    average daily volume in base units."""

    sigma_daily: float = 0.03
    adv: float = 10_000.0

    def __post_init__(self) -> None:
        if self.sigma_daily < 0 or self.adv <= 0:
            raise ValueError("impact needs sigma_daily >= 0 and adv > 0")


class ExecutionConfig(_Config, frozen=True):
    """The simulated venue (see kernel/execution.py for the rules).

    * ``queue_model``: how a size decrease at our level moves us up the queue:
      ``risk_averse`` (ahead = min(ahead, level size): cancels are always behind us),
      ``power`` (a cancel was ahead of us with probability front^n/(front^n+back^n),
      n = ``queue_power``) or ``log`` (log(1+front)/(log(1+front)+log(1+back))).
    * ``trigger_source``: stop-loss / take-profit trigger on the last ``trade`` price or
      on the ``mid``.
    * toxic fills: queue ahead at placement above ``toxic_queue_ratio`` times the order
      size, or the mid moving ``toxic_adverse_bp`` against the fill within
      ``toxic_window_ms``.
    * impact: ``impact_y * sigma_daily * sqrt(Q / ADV)`` for a taker order of Q base
      units; ``impact_permanent_fraction`` of it stays, the rest decays with
      ``impact_half_life_ms``. ``impact`` overrides per ``EXCHANGE:SYMBOL``.
    """

    queue_model: Literal["risk_averse", "power", "log"] = "risk_averse"
    queue_power: float = 2.0
    trigger_source: Literal["trade", "mid"] = "trade"
    toxic_queue_ratio: float = 10.0
    toxic_window_ms: int = 1_000
    toxic_adverse_bp: float = 5.0
    impact_y: float = 0.7
    impact_permanent_fraction: float = 0.3
    impact_half_life_ms: int = 30_000
    impact_default: ImpactParams = msgspec.field(default_factory=ImpactParams)
    impact: dict[str, ImpactParams] = msgspec.field(default_factory=dict)
    book_through_fills: bool = True

    def __post_init__(self) -> None:
        if self.queue_power <= 0:
            raise ValueError("queue_power must be > 0")
        if not 0 <= self.impact_permanent_fraction <= 1:
            raise ValueError("impact_permanent_fraction must be within 0..1")
        if self.impact_half_life_ms <= 0 or self.toxic_window_ms < 0:
            raise ValueError("impact_half_life_ms must be > 0 and toxic_window_ms >= 0")

    def impact_for(self, key: str) -> ImpactParams:
        return self.impact.get(key, self.impact_default)


class PortfolioConfig(_Config, frozen=True):
    """The paper trader's account. ``initial_cash`` is a decimal string in the quote
    currency; every quote currency (USDT, USD, USDC) counts at par. A
    ``PortfolioSnapshot`` is journaled every ``snapshot_interval_ms`` of kernel time
    once the strategy has sent its first order (0: never)."""

    initial_cash: str = "10000"
    snapshot_interval_ms: int = 60_000


class EngineConfig(_Config, frozen=True):
    """The kernel fold. ``reject_invalid_book`` refuses crossed/negative book messages
    (journaled as DataQuality); ``max_decisions_per_event`` bounds a strategy's actions
    (decisions, orders, cancels, amends) per input: more are refused and counted in one
    DataQuality ``output_limit`` event. Venue responses are never limited."""

    sync: SyncConfig = msgspec.field(default_factory=SyncConfig)
    reject_invalid_book: bool = True
    max_decisions_per_event: int = 16
    execution: ExecutionConfig = msgspec.field(default_factory=ExecutionConfig)
    portfolio: PortfolioConfig = msgspec.field(default_factory=PortfolioConfig)


ParamValue = bool | int | float | str


class StrategyConfig(_Config, frozen=True):
    """Which strategy to run and its parameters (names are the strategy's own)."""

    name: str = "none"
    params: dict[str, ParamValue] = msgspec.field(default_factory=dict)


class FeaturesConfig(_Config, frozen=True):
    """config/trading.yaml ``features``: the kernel's microstructure features
    (kernel/features). ``enabled``: compute them for every instrument and journal a
    ``Features`` event per instrument every ``params.sample_interval_ns`` of exchange
    time (``emit``; also published to the Kafka topic ``features`` by a live session).
    A strategy that reads features (``ctx.features``) switches them on whatever this
    says (without emitting). ``params``: :class:`kernel.features.FeatureConfig`."""

    enabled: bool = False
    emit: bool = True
    params: FeatureConfig = msgspec.field(default_factory=FeatureConfig)


class TradingConfig(_Config, frozen=True):
    """config/trading.yaml: the session seed, engine and strategy."""

    seed: int = 42
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    strategy: StrategyConfig = msgspec.field(default_factory=StrategyConfig)
    features: FeaturesConfig = msgspec.field(default_factory=FeaturesConfig)


class JournalConfig(_Config, frozen=True):
    """config/timescale.yaml: where the journal lives (env TICKERML_JOURNAL_DSN wins).

    For PostgreSQL, how a journal created there is laid out (docs/storage.md):
    ``layout`` ``auto`` (TimescaleDB where the extension can be used, else native day
    partitions), ``timescaledb``, ``partitioned`` or ``plain``; with TimescaleDB, chunks
    older than ``hot_days`` are compressed and, when ``retention_days`` > 0, dropped once
    older than that. A DSN's own ``layout``, ``hot_days``, ``retention_days`` win."""

    dsn: str = "sqlite:///tickerml.db"
    batch_size: int = 5_000
    layout: Literal["auto", "timescaledb", "partitioned", "plain"] = "auto"
    hot_days: int = 7
    retention_days: int = 0


class KafkaConfig(_Config, frozen=True):
    """config/kafka.yaml: bus settings (env TICKERML_KAFKA_BOOTSTRAP wins).

    ``topics`` are logical names; the topic on the cluster is ``topic_prefix + name``
    (a prefix keeps environments apart on a shared cluster). Messages that cannot be
    encoded, delivered or decoded go to ``dead_letter_topic``. ``replication_factor``
    -1 takes the broker's default. ``client`` passes librdkafka settings through to every
    client (``security.protocol``, ``sasl.mechanism``, ``ssl.ca.location``, ...); secrets
    never live here: they come from environment variables (see adapters/kafka.py).
    """

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
    dead_letter_topic: str = "dead_letter"
    topic_prefix: str = ""
    replication_factor: int = -1
    client: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.replication_factor == 0 or self.replication_factor < -1:
            raise ValueError("replication_factor must be >= 1, or -1 for the broker default")
        for key in self.client:
            if any(word in key.lower() for word in ("password", "secret", "jaas")):
                raise ValueError(
                    f"kafka.client.{key}: secrets do not belong in config files; set "
                    "TICKERML_KAFKA_SASL_PASSWORD (see adapters/kafka.py)"
                )


class NewsFeed(_Config, frozen=True):
    """One polled news feed. ``format`` ``auto`` tells RSS (2.0 and 1.0), Atom and JSON
    feeds apart by their content; ``symbols`` tag every item of the feed (a feed about
    one asset), on top of the keyword tags of :class:`NewsConfig`."""

    name: str
    url: str
    format: Literal["auto", "rss", "atom", "json"] = "auto"
    symbols: tuple[str, ...] = ()


class NewsConfig(_Config, frozen=True):
    """config/news.yaml: the news producer (adapters/news.py, ``tickerml news``).

    ``keywords`` maps a normalised symbol to words that, found in a headline or summary
    (whole words, any case), tag the item with that symbol. ``seen_capacity`` bounds the
    deduplication memory (normalised URLs and headline hashes, oldest forgotten first).
    """

    feeds: tuple[NewsFeed, ...] = ()
    poll_interval_s: float = 60.0
    timeout_s: float = 10.0
    max_bytes: int = 5_000_000
    max_body_chars: int = 2_000
    seen_capacity: int = 100_000
    user_agent: str = "tickerml-news/0.1"
    keywords: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)


def _check_quote_amount(value: str | int, where: str) -> None:
    """A money amount in quote currency (decimal text or integer), >= 0, exact at
    MONEY precision (1e-8)."""
    try:
        units = parse_fixed(str(value), MONEY_DECIMALS)
    except FixedPointError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if units < 0:
        raise ValueError(f"{where}: must be >= 0, got {value}")


class ExchangeConfig(_Config, frozen=True):
    """One exchange. ``large_trade_notional``: a trade whose notional (price x size, in
    the instrument's quote currency) is at least this is flagged large
    (kernel/trades.py); ``None``: never. ``large_trade_notional_by_symbol`` overrides it
    per normalised symbol (``BTC-USDT-PERP``). Decimal text (``"250000"``) or an
    integer; floats are refused so that no threshold is rounded. ``rest_weights``: REST
    endpoint -> request weight for the exchange adapters' rate limiter, overriding the
    adapter's own table (names as the adapter uses them, e.g. Binance
    ``/api/v3/depth?limit=1000``)."""

    enabled: bool = True
    latency: LatencyProfile = msgspec.field(default_factory=LatencyProfile)
    rest_weight_per_minute: int = 1200
    rest_weights: dict[str, float] = msgspec.field(default_factory=dict)
    large_trade_notional: str | int | None = None
    large_trade_notional_by_symbol: dict[str, str | int] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.large_trade_notional is not None:
            _check_quote_amount(self.large_trade_notional, "large_trade_notional")
        for symbol, value in self.large_trade_notional_by_symbol.items():
            _check_quote_amount(value, f"large_trade_notional_by_symbol.{symbol}")


class ExchangesConfig(_Config, frozen=True):
    """config/exchanges.yaml: per-exchange settings keyed by upper-case exchange name.

    ``trade_windows_ms``: the rolling trade-aggregation windows (kernel/trades.py), in
    ms of exchange time, strictly increasing."""

    exchanges: dict[str, ExchangeConfig] = msgspec.field(default_factory=dict)
    trade_windows_ms: tuple[int, ...] = (1_000, 10_000, 60_000)

    def __post_init__(self) -> None:
        w = self.trade_windows_ms
        if not w or w[0] <= 0 or any(a >= b for a, b in pairwise(w)):
            raise ValueError(f"trade_windows_ms must be positive and increasing, got {list(w)}")


class InstrumentsConfig(_Config, frozen=True):
    """config/instruments.yaml: every instrument the kernel may see."""

    instruments: tuple[Instrument, ...] = ()


class RiskLimitsConfig(_Config, frozen=True):
    """config/risk_limits.yaml: the risk layer (kernel/risk.py; docs/risk.md).

    Percentages are of equity (cash + positions marked to mid, after every cost).
    ``reentry_stages`` are the size fractions of the gradual re-entry after a breaker,
    each held for ``reentry_calm_ms`` with the drawdown under ``recovery_pct`` before the
    next. ``correlation_action``: ``refuse`` a new position whose returns correlate
    above ``max_correlation`` with an open one in the same direction, or ``resize`` it by
    ``(1 - rho) / (1 - max_correlation)``. ``sectors`` maps base assets to a sector
    (unlisted assets are their own sector). ``rebalance_tolerance_pct``: how far past a
    position or asset limit market moves may push before reduce orders are sent."""

    enabled: bool = True
    kelly_fraction: float = 0.25
    base_size_pct: float = 2.0
    max_position_pct: float = 25.0
    max_positions: int = 5
    min_order_usd: float = 10.0
    drawdown_half_size_pct: float = 15.0
    drawdown_reduce_only_pct: float = 20.0
    drawdown_halt_pct: float = 25.0
    recovery_pct: float = 10.0
    reentry_stages: tuple[float, ...] = (0.25, 0.5, 1.0)
    reentry_calm_ms: int = 3_600_000
    max_correlation: float = 0.7
    correlation_action: Literal["refuse", "resize"] = "refuse"
    correlation_window: int = 60
    correlation_interval_ms: int = 60_000
    max_asset_pct: float = 40.0
    max_exchange_pct: float = 60.0
    max_sector_pct: float = 50.0
    sectors: dict[str, str] = msgspec.field(default_factory=dict)
    rebalance_tolerance_pct: float = 10.0

    def __post_init__(self) -> None:
        if not (
            0
            < self.drawdown_half_size_pct
            < self.drawdown_reduce_only_pct
            < self.drawdown_halt_pct
            < 100
        ):
            raise ValueError("need 0 < drawdown_half_size_pct < reduce_only < halt < 100")
        if not 0 <= self.recovery_pct < self.drawdown_half_size_pct:
            raise ValueError("recovery_pct must be within [0, drawdown_half_size_pct)")
        stages = self.reentry_stages
        if not stages or stages[-1] != 1.0 or any(not 0 < x <= 1 for x in stages):
            raise ValueError("reentry_stages must be fractions in (0, 1] ending with 1.0")
        if list(stages) != sorted(stages):
            raise ValueError("reentry_stages must not decrease")
        if not 0 < self.max_correlation <= 1 or self.correlation_window < 3:
            raise ValueError("need 0 < max_correlation <= 1 and correlation_window >= 3")
        if not 0 < self.kelly_fraction <= 1 or self.max_positions < 1:
            raise ValueError("need 0 < kelly_fraction <= 1 and max_positions >= 1")


class ModelConfig(_Config, frozen=True):
    """config/model.yaml: Decision Transformer shape (validated ranges later)."""

    n_layers: int = 6
    n_heads: int = 8
    d_model: int = 256
    context_len: int = 64
    quarantine_days: int = 30
    # training (issue 9); ranges are validated by training/config.py
    dropout: float = 0.1
    max_timestep: int = 4096
    encoder_layers: int = 2
    encoder_heads: int = 4
    encoder_d_model: int = 64
    mask_ratio: float = 0.15
    gradient_checkpointing: bool = False
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    batch_size: int = 32
    cuda_memory_fraction: float = 0.9


class ValidationConfig(_Config, frozen=True):
    """config/monitoring.yaml ``validation``: the market-data rules of
    kernel/validation.py (each rule's exact semantics are in that module's docstring).

    Bands are integer basis points; times are ms (ns inside the validator).
    ``stale_after_ms_by_stream`` overrides ``stale_after_ms`` per ``EXCHANGE:SYMBOL``
    (0: never stale). ``enabled`` is off by default, the behaviour before the rules
    existed, so that a session journaled then (its config JSON has no ``validation``)
    re-runs unchanged; config/monitoring.yaml switches it on."""

    enabled: bool = False
    price_band_bp: int = 500
    cross_venue_band_bp: int = 200
    reject_cross_venue: bool = False
    duplicate_trade_window: int = 10_000
    out_of_order_tolerance_ms: int = 250
    max_skew_ms: int = 2_000
    max_future_skew_ms: int = 1_000
    stale_after_ms: int = 3_000
    stale_after_ms_by_stream: dict[str, int] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.price_band_bp <= 0 or self.cross_venue_band_bp <= 0:
            raise ValueError("price_band_bp and cross_venue_band_bp must be > 0")
        if self.duplicate_trade_window < 0 or self.out_of_order_tolerance_ms < 0:
            raise ValueError("duplicate_trade_window and out_of_order_tolerance_ms must be >= 0")
        if self.max_skew_ms <= 0 or self.max_future_skew_ms < 0 or self.stale_after_ms < 0:
            raise ValueError("need max_skew_ms > 0, max_future_skew_ms >= 0, stale_after_ms >= 0")
        for key, ms in self.stale_after_ms_by_stream.items():
            if ms < 0 or ":" not in key:
                raise ValueError(f"stale_after_ms_by_stream.{key}: EXCHANGE:SYMBOL -> ms >= 0")


class AlertsConfig(_Config, frozen=True):
    """config/monitoring.yaml ``alerts``: the kernel's alert rules (kernel/alerts.py
    documents each rule exactly) and where alerts are delivered.

    Alerts are journaled with the session's outputs whenever ``enabled`` (off by default,
    the behaviour before the rules existed, so that a session journaled then re-runs
    unchanged; config/monitoring.yaml switches it on). ``log``: also log each alert (from
    live sessions; from backtests too with ``log_in_replay``);
    ``webhook_url``: also POST each alert as JSON there (adapters/alerts.py), from live
    sessions only unless ``webhook_in_replay``."""

    enabled: bool = False
    cooldown_s: float = 300.0
    max_per_minute: int = 10
    drawdown_pct: float = 5.0
    rearm_pct: float = 1.0
    risk_limit_fraction: float = 0.8
    volatility_zscore: float = 6.0
    volatility_half_life: int = 200
    volatility_warmup: int = 50
    min_confidence: float = 0.3
    confidence_span: int = 20
    toxic_fills: int = 3
    toxic_window_s: float = 60.0
    log: bool = True
    log_in_replay: bool = False
    webhook_url: str = ""
    webhook_in_replay: bool = False
    webhook_timeout_s: float = 2.0
    webhook_retries: int = 2

    def __post_init__(self) -> None:
        if self.cooldown_s < 0 or self.max_per_minute < 1:
            raise ValueError("alerts: need cooldown_s >= 0 and max_per_minute >= 1")
        if not 0 < self.drawdown_pct < 100 or self.rearm_pct < 0:
            raise ValueError("alerts: need 0 < drawdown_pct < 100 and rearm_pct >= 0")
        if not 0 < self.risk_limit_fraction <= 1:
            raise ValueError("alerts.risk_limit_fraction must be in (0, 1]")
        if self.volatility_zscore <= 0 or self.volatility_half_life < 1:
            raise ValueError("alerts: need volatility_zscore > 0, volatility_half_life >= 1")
        if self.volatility_warmup < 2 or self.confidence_span < 1:
            raise ValueError("alerts: need volatility_warmup >= 2 and confidence_span >= 1")
        if not 0 <= self.min_confidence <= 1:
            raise ValueError("alerts.min_confidence must be in [0, 1]")
        if self.toxic_fills < 1 or self.toxic_window_s <= 0:
            raise ValueError("alerts: need toxic_fills >= 1 and toxic_window_s > 0")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError(f"alerts.webhook_url must be http(s)://, got {self.webhook_url!r}")
        if self.webhook_timeout_s <= 0 or self.webhook_retries < 0:
            raise ValueError("alerts: need webhook_timeout_s > 0 and webhook_retries >= 0")


class MonitoringConfig(_Config, frozen=True):
    """config/monitoring.yaml: alert thresholds.

    ``funding_rate_alert``: an ``Alert`` (rule ``funding_rate_high``) when a perp's
    |funding rate| is strictly above it, at most once per instrument per funding cycle
    (kernel/funding.py). A fraction as decimal text: ``"0.001"`` is 0.1 %; exact at RATE
    precision (1e-10). ``validation``: the market-data rules (kernel/validation.py).
    ``alerts``: the alert rules (kernel/alerts.py); ``spread_zscore_alert`` and
    ``funding_rate_alert`` are their spread and funding thresholds."""

    log_format: str = "auto"
    spread_zscore_alert: float = 4.0
    consumer_lag_alert_s: float = 5.0
    funding_rate_alert: str = "0.001"
    validation: ValidationConfig = msgspec.field(default_factory=ValidationConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)

    def __post_init__(self) -> None:
        try:
            rate = parse_fixed(self.funding_rate_alert, RATE_DECIMALS)
        except FixedPointError as exc:
            raise ValueError(f"funding_rate_alert: {exc}") from None
        if rate < 0:
            raise ValueError(f"funding_rate_alert must be >= 0, got {self.funding_rate_alert}")

    @property
    def funding_rate_alert_units(self) -> int:
        """The threshold in RATE units (1e-10): ``"0.001"`` -> 10_000_000."""
        return parse_fixed(self.funding_rate_alert, RATE_DECIMALS)


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
    news: NewsConfig = msgspec.field(default_factory=NewsConfig)


def canonical_json(config: msgspec.Struct) -> bytes:
    """Canonical JSON of a config (sorted keys): what gets hashed and journaled."""
    return msgspec.json.encode(msgspec.to_builtins(config, order="sorted"), order="sorted")


def config_hash(config: msgspec.Struct) -> str:
    """Hex blake2b-256 of :func:`canonical_json`; goes into SessionStarted."""
    return hashlib.blake2b(canonical_json(config), digest_size=32).hexdigest()
