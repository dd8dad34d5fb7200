"""``tickerml export-trajectories``: offline-RL trajectories from a kernel replay.

The journal range ``[from, to)`` of one instrument is replayed through the kernel (the
same engine as ``tickerml replay``: config, latency, risk layer, seed) with the named
strategy as the behaviour policy, while a :class:`kernel.features.FeatureSet` folds the
same market events. Nothing is written to the journal. The range end must lie outside
the 30-day quarantine (:mod:`training.quarantine`); that is checked before any work.

Steps, on one time axis, the kernel clock (``ts_recv``):

* a *hold* step at every multiple of ``step_ns`` from each episode's start, after the
  kernel has done everything due by then and before any input at that time;
* a *decision* step at each ``Decision`` of the policy (the kernel's own ``risk``
  decisions are not the policy's and make no step), right after the input or timer that
  caused it, so the state holds exactly what the policy had seen.

Steps before the instrument has a two-sided book are skipped (warm-up).

State: the feature window ending at the step, ``[window, F]`` float32: the features at
the last ``window - 1`` hold steps and, as the last row, the features at the step itself
(a hold step's own features are its row). Before ``window`` rows exist the oldest row is
repeated.

Action: ``side`` from the decision's word (``buy`` 1, ``sell`` 2; any other word takes
the sign of the net size of the orders it sent, 0 when they cancel out or there are none;
hold steps 0). ``size``: the net signed notional of the decision's accepted non-stop
orders (each at its limit price, a market order at the mid), in absolute value over the
equity, clipped to 0..1: 0 for a signal without an order, and when the net size is 0 (a
two-sided quote of equal sizes: the action space has no quoting). ``stop``:
|mid - trigger| / mid of a ``stop_loss`` order the decision sent, else 0.

Reward (risk-adjusted, :class:`kernel.metrics.DifferentialSharpe`): for step k, with
``e`` the engine's equity (cash plus positions at mid, MONEY units) at step k and at the
next step (or at the episode's end for its last step), ``R = e_next / e_k - 1`` and
``reward_k = D(R) - dd_penalty x max(0, drawdown - dd_free)``, the drawdown measured from
the running peak of the equity since the range start (at least the initial cash). The
moving moments run on over the whole range. ``returns_to_go`` is the reverse cumulative
sum per episode.

Episodes: fixed-length windows ``[from + i x episode_ns, from + (i + 1) x episode_ns)``;
the last of a range ends with its data (it may be shorter); episodes without a step are
left out and the rest numbered 0.. in time order.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from adapters.config_loader import redacted
from adapters.journal.base import Journal
from kernel import metrics
from kernel.config import AppConfig, StrategyConfig, canonical_json, config_hash
from kernel.engine import Engine
from kernel.events import Decision, Event, Fill, OrderRejected, OrderSubmitted, decoder
from kernel.features import FeatureConfig, FeatureSet
from kernel.instruments import Instrument, InstrumentError, InstrumentRegistry
from strategies import build_strategy

if TYPE_CHECKING:  # training/ is imported when an export runs, not when the CLI starts
    from training.quarantine import Clock

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
END = 2**63 - 1
QUARANTINE_DAYS = 30
"""The default quarantine (training.quarantine.QUARANTINE_DAYS, its minimum too)."""
HOLD, BUY, SELL = 0, 1, 2
"""``actions_side`` values of the dataset format (training.dataset)."""


class ExportError(ValueError):
    """The export cannot run (no data, unknown instrument, bad parameters)."""


class ExportSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What to export. Times in ns; ``instrument`` is ``EXCHANGE:SYMBOL`` ("" = the
    first market stream, by name, with data in the first range)."""

    ranges: tuple[tuple[int, int], ...]
    policy: StrategyConfig
    instrument: str = ""
    window: int = 32
    episode_ns: int = 60 * MINUTE
    step_ns: int = 10 * SECOND
    eta: float = metrics.DSR_ETA
    dd_penalty: float = metrics.DSR_DD_PENALTY
    dd_free: float = metrics.DSR_DD_FREE
    quarantine_days: int = QUARANTINE_DAYS

    def __post_init__(self) -> None:
        if not self.ranges:
            raise ExportError("no range to export")
        for lo, hi in self.ranges:
            if hi <= lo:
                raise ExportError(f"empty range [{lo}, {hi})")
        if any(b[0] < a[1] for a, b in zip(self.ranges, self.ranges[1:], strict=False)):
            raise ExportError("ranges must be in time order and must not overlap")
        if self.window < 1:
            raise ExportError(f"window must be >= 1, got {self.window}")
        if self.step_ns <= 0 or self.episode_ns < self.step_ns:
            raise ExportError(
                f"need 0 < step ({self.step_ns} ns) <= episode length ({self.episode_ns} ns)"
            )


class ExportReport(msgspec.Struct):
    """What an export wrote and read."""

    out_dir: str
    instrument: str
    n_episodes: int
    n_steps: int
    decision_steps: int
    hold_steps: int
    events: int
    fills: int
    max_data_ts_ns: int
    manifest: dict[str, Any]


class _Steps:
    """The steps recorded so far, over every range."""

    def __init__(self) -> None:
        self.states: list[np.ndarray] = []
        self.side: list[int] = []
        self.size: list[float] = []
        self.stop: list[float] = []
        self.rewards: list[float] = []
        self.episode: list[int] = []
        self.ts: list[int] = []
        self.decisions = 0
        self.holds = 0


class _RangeRun:
    """One range: the engine, the features, the step grid and the rewards."""

    def __init__(
        self,
        config: AppConfig,
        spec: ExportSpec,
        inst: Instrument,
        lo: int,
        hi: int,
        steps: _Steps,
        first_episode: int,
    ) -> None:
        from journal_tools.session import build_engine

        self.spec = spec
        self.inst = inst
        self.lo, self.hi = lo, hi
        self.steps = steps
        strategy = build_strategy(spec.policy)
        self.policy_name = strategy.name if strategy is not None else "none"
        self.engine: Engine = build_engine(
            config, strategy, config.trading.seed, f"export-{inst.key}-{lo}"
        )
        self.features = FeatureSet(FeatureConfig(sample_interval_ns=0))
        self.window: deque[np.ndarray] = deque(maxlen=max(1, spec.window - 1))
        self.dsr = metrics.DifferentialSharpe(spec.eta, spec.dd_penalty, spec.dd_free)
        self.peak = self.engine.portfolio.initial_cash
        self.episode = first_episode  # global id of the current episode (before renumbering)
        self.ep_end = min(lo + spec.episode_ns, hi)
        self.next_hold = lo
        self.pending: int | None = None  # index of the step awaiting its reward
        self.pending_equity = 0
        self.max_ts = 0
        self.events = 0
        self.fills = 0

    # -- time ------------------------------------------------------------------------

    def until(self, t: int) -> None:
        """Everything due by time ``t``, before an input at ``t``: hold steps and episode
        ends, in time order (an episode end before a hold at the same time)."""
        while True:
            b = min(self.next_hold, self.ep_end)
            if b > t:
                return
            if b == self.ep_end:  # episode [start, b) closes: work at b is the next one's
                self._scan(self.engine.advance(b - 1))
                self._settle(self.engine.equity())
                self.pending = None
                if b >= self.hi:  # the range is over
                    self.next_hold = self.ep_end = END
                    return
                self.episode += 1
                self.ep_end = min(b + self.spec.episode_ns, self.hi)
                self.next_hold = b
            else:
                self._scan(self.engine.advance(b))
                self._hold(b)
                self.next_hold = b + self.spec.step_ns

    def apply(self, ev: Event) -> None:
        t = ev.ts_recv
        self.until(t)
        self.events += 1
        self.max_ts = max(self.max_ts, t, ev.ts_event)
        self._scan(self.engine.advance(t))  # timers due by t: before the input is seen
        self.features.apply(ev)
        self._scan(self.engine.apply(ev))

    def finish(self, last_ts: int) -> None:
        """The range's data ended at ``last_ts`` (< hi): the range, and its last
        episode, end just after it (or at ``hi``), with no hold steps past the data."""
        end = min(self.hi, max(last_ts, self.lo) + 1)
        self.hi = end
        self.ep_end = min(self.ep_end, end)
        self.until(end)

    # -- steps -----------------------------------------------------------------------

    def _ready(self) -> bool:
        book = self.features.book(self.inst.exchange, self.inst.symbol)
        return book is not None and book.mid_x2() is not None

    def _vector(self, at: int) -> np.ndarray:
        values = self.features.features(self.inst.exchange, self.inst.symbol, at).values()
        return np.fromiter(values, dtype=np.float32, count=len(self.features.names))

    def _state(self, row: np.ndarray) -> np.ndarray:
        rows = [*self.window, row] if self.spec.window > 1 else [row]
        if len(rows) < self.spec.window:
            rows = [rows[0]] * (self.spec.window - len(rows)) + rows
        return np.stack(rows)

    def _settle(self, equity: int) -> None:
        """The reward of the pending step, from the equity now."""
        self.peak = max(self.peak, equity)
        if self.pending is None:
            return
        prev = self.pending_equity
        ret = equity / prev - 1.0 if prev > 0 else 0.0
        drawdown = (self.peak - equity) / self.peak if self.peak > 0 else 0.0
        self.steps.rewards[self.pending] = self.dsr.step(ret, max(0.0, drawdown))

    def _record(self, ts: int, state: np.ndarray, side: int, size: float, stop: float) -> None:
        equity = self.engine.equity()
        self._settle(equity)
        st = self.steps
        st.states.append(state)
        st.side.append(side)
        st.size.append(size)
        st.stop.append(stop)
        st.rewards.append(0.0)
        st.episode.append(self.episode)
        st.ts.append(ts)
        self.pending = len(st.ts) - 1
        self.pending_equity = equity

    def _hold(self, b: int) -> None:
        if not self._ready():
            return
        row = self._vector(b)
        state = self._state(row)
        self.window.append(row)
        self.steps.holds += 1
        self._record(b, state, HOLD, 0.0, 0.0)

    def _scan(self, outs: Sequence[Event]) -> None:
        """Record a step per policy decision among the kernel's outputs."""
        if not outs:
            return
        for i, ev in enumerate(outs):
            if isinstance(ev, Fill):
                self.fills += 1
            if isinstance(ev, Decision) and ev.strategy == self.policy_name:
                self._decision(ev, outs[i + 1 :])

    def _decision(self, d: Decision, after: Sequence[Event]) -> None:
        if not self._ready():
            return
        rejected = {ev.order_id for ev in after if isinstance(ev, OrderRejected)}
        orders = [
            ev for ev in after if isinstance(ev, OrderSubmitted) and ev.decision_id == d.decision_id
        ]
        book = self.engine.book(self.inst.exchange, self.inst.symbol)
        mid_x2 = book.mid_x2() if book is not None else None
        mid = mid_x2 // 2 if mid_x2 else 0
        net = 0
        notional = 0
        stop = 0.0
        for o in orders:
            if o.order_type == "stop_loss":
                if mid > 0 and o.trigger_price > 0:
                    stop = max(stop, abs(mid - o.trigger_price) / mid)
                continue
            if o.order_id in rejected or o.size <= 0:
                continue
            sign = 1 if o.side == "buy" else -1
            net += sign * o.size
            price = o.price or mid
            if price > 0:
                notional += sign * self.inst.notional(price, o.size)
        if d.action == "buy":
            side = BUY
        elif d.action == "sell":
            side = SELL
        else:
            side = BUY if net > 0 else SELL if net < 0 else HOLD
        equity = self.engine.equity()
        size = min(1.0, abs(notional) / equity) if equity > 0 and net else 0.0
        ts = d.ts_event
        state = self._state(self._vector(ts))
        self.steps.decisions += 1
        self._record(ts, state, side, size, stop)


def resolve_instrument(journal: Journal, config: AppConfig, spec: ExportSpec) -> Instrument:
    """The instrument to export: ``spec.instrument`` or the first market stream (by
    name) with data inside the first range."""
    registry = InstrumentRegistry(list(config.instruments.instruments))
    key = spec.instrument
    if not key:
        lo, hi = spec.ranges[0]
        for info in journal.streams():
            parts = info.stream.split(".")
            if len(parts) == 3 and parts[0] == "md" and info.first_ts < hi and info.last_ts >= lo:
                candidate = f"{parts[1]}:{parts[2]}"
                if candidate in registry:
                    key = candidate
                    break
        if not key:
            raise ExportError("no market data of a known instrument in the first range")
    exchange, sep, symbol = key.partition(":")
    if not sep:
        raise ExportError(f"instrument must be EXCHANGE:SYMBOL, got {key!r}")
    try:
        return registry.get(exchange.upper(), symbol)
    except InstrumentError:
        known = ", ".join(registry.keys())
        raise ExportError(f"unknown instrument {key!r}; known: {known}") from None


def export_trajectories(
    journal: Journal,
    config: AppConfig,
    spec: ExportSpec,
    out_dir: str | Path,
    fmt: str = "npz",
    clock: Clock | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """Replay ``spec.ranges`` with ``spec.policy`` and write the dataset to ``out_dir``.

    Refuses (QuarantineError) a range ending inside the quarantine before reading
    anything."""
    from training.dataset import build_dataset, save_trajectories
    from training.quarantine import check_range_end

    for _, hi in spec.ranges:
        check_range_end(hi, spec.quarantine_days, clock)
    if fmt not in ("npz", "parquet"):
        raise ExportError(f"format must be npz or parquet, got {fmt!r}")
    build_strategy(spec.policy)  # an unknown policy or parameter fails before the replay
    inst = resolve_instrument(journal, config, spec)
    config = msgspec.structs.replace(
        config, trading=msgspec.structs.replace(config.trading, strategy=spec.policy)
    )
    steps = _Steps()
    decode = decoder().decode
    events = fills = 0
    max_ts = 0
    episode = 0
    n_features = 0
    names: tuple[str, ...] = ()
    for lo, hi in spec.ranges:
        run = _RangeRun(config, spec, inst, lo, hi, steps, episode)
        names = run.features.names
        n_features = len(names)
        last_ts = lo
        for block in journal.iter_payload_blocks(lo, hi, [inst.exchange], [inst.symbol]):
            for (payload,) in block:
                ev = decode(payload)
                run.apply(ev)
                last_ts = max(last_ts, ev.ts_recv)
            if progress is not None:
                progress(events + run.events)
        run.finish(last_ts)
        events += run.events
        fills += run.fills
        max_ts = max(max_ts, run.max_ts)
        episode = run.episode + 1
    if not steps.ts:
        raise ExportError(
            f"no steps: {inst.key} has no two-sided book in the range(s) "
            f"{[list(r) for r in spec.ranges]}"
        )
    ids = np.asarray(steps.episode, dtype=np.int64)
    _, ids = np.unique(ids, return_inverse=True)  # drop empty episodes, keep order
    states = np.stack(steps.states).astype(np.float32).reshape(-1, spec.window, n_features)
    if not np.all(np.isfinite(states)):
        raise ExportError("a feature is not finite; refusing to write the dataset")
    dataset = build_dataset(
        states=states,
        actions_side=np.asarray(steps.side, dtype=np.int64),
        actions_size=np.asarray(steps.size, dtype=np.float32),
        actions_stop=np.asarray(steps.stop, dtype=np.float32),
        rewards=np.asarray(steps.rewards, dtype=np.float32),
        episode_ids=ids.astype(np.int64),
        ts_ns=np.asarray(steps.ts, dtype=np.int64),
        feature_names=names,
    )
    from journal_tools.session import code_version

    public = redacted(config)
    spec_json = canonical_json(spec)
    manifest = save_trajectories(
        dataset,
        out_dir,
        ranges=list(spec.ranges),
        policy=spec.policy.name,
        config_hash=config_hash(public),
        code_version=code_version(),
        max_data_ts_ns=max_ts,
        fmt=fmt,
        quarantine_days=spec.quarantine_days,
        clock=clock,
        extra={
            "instrument": inst.key,
            "policy_params": dict(spec.policy.params),
            "seed": config.trading.seed,
            "step_ns": spec.step_ns,
            "episode_ns": spec.episode_ns,
            "reward": {
                "kind": "differential_sharpe",
                "eta": spec.eta,
                "dd_penalty": spec.dd_penalty,
                "dd_free": spec.dd_free,
            },
            "export_hash": hashlib.blake2b(spec_json, digest_size=32).hexdigest(),
            "events": events,
            "fills": fills,
            "decision_steps": steps.decisions,
            "hold_steps": steps.holds,
        },
    )
    return ExportReport(
        out_dir=str(out_dir),
        instrument=inst.key,
        n_episodes=dataset.n_episodes,
        n_steps=len(dataset),
        decision_steps=steps.decisions,
        hold_steps=steps.holds,
        events=events,
        fills=fills,
        max_data_ts_ns=max_ts,
        manifest=manifest,
    )


# -- CLI -----------------------------------------------------------------------------------


def add_trajectories_command(
    add: Callable[[str, Callable[[argparse.Namespace], int], str], Any],
) -> None:
    """Register ``tickerml export-trajectories`` through the CLI's ``add(name, fn, help)``."""
    sp = add(
        "export-trajectories",
        cmd_export_trajectories,
        "replay a journal range with a strategy as behaviour policy and write offline-RL "
        "trajectories (refused inside the 30-day quarantine)",
    )
    sp.add_argument("--from", dest="start", required=True, help="start (ISO-8601 UTC or ns)")
    sp.add_argument("--to", dest="end", required=True, help="end, exclusive (ISO-8601 or ns)")
    sp.add_argument("--policy", required=True, help="strategy name (strategies/ registry)")
    sp.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="policy parameter"
    )
    sp.add_argument("--out", required=True, type=Path, help="output directory")
    sp.add_argument("--format", choices=["npz", "parquet"], default="npz")
    sp.add_argument("--instrument", default="", help="EXCHANGE:SYMBOL (default: first stream)")
    sp.add_argument("--window", type=int, default=32, help="feature rows per state")
    sp.add_argument("--episode-minutes", type=float, default=60.0, help="episode length")
    sp.add_argument("--step-seconds", type=float, default=10.0, help="hold-step interval")
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--archive", metavar="DIR", help="the Parquet archive, if it moved")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_export_trajectories(args: argparse.Namespace) -> int:
    from journal_tools.cli import (
        _config,
        _journal,
        _strategy_override,
        console,
        out,
        parse_time,
        progress_bar,
    )
    from training.quarantine import check_range_end

    lo, hi = parse_time(args.start), parse_time(args.end)
    config = _config(args)
    days = max(QUARANTINE_DAYS, int(getattr(config.model, "quarantine_days", QUARANTINE_DAYS)))
    check_range_end(hi, days)  # before the journal is even opened
    args.strategy = args.policy
    policy = _strategy_override(args, config)
    assert policy is not None  # --policy is required
    spec = ExportSpec(
        ranges=((lo, hi),),
        policy=policy,
        instrument=args.instrument,
        window=args.window,
        episode_ns=round(args.episode_minutes * MINUTE),
        step_ns=round(args.step_seconds * SECOND),
        quarantine_days=days,
    )
    with _journal(args, config) as journal, progress_bar("export", None, not args.quiet) as up:
        report = export_trajectories(
            journal, config, spec, args.out, fmt=args.format, progress=lambda n: up(n)
        )
    if args.json:
        out.print_json(data=msgspec.to_builtins(report))
    else:
        out.print(
            f"exported {report.n_steps:,} steps in {report.n_episodes} episode(s) of "
            f"{report.instrument} ({report.decision_steps:,} decisions, {report.hold_steps:,} "
            f"holds, {report.fills:,} fills, {report.events:,} events) to {report.out_dir}"
        )
        console.print(f"manifest: {Path(report.out_dir) / 'manifest.json'}")
    return 0


__all__ = [
    "ExportError",
    "ExportReport",
    "ExportSpec",
    "add_trajectories_command",
    "cmd_export_trajectories",
    "export_trajectories",
    "resolve_instrument",
]
