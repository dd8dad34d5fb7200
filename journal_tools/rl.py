"""Offline-RL validation as kernel replays with the policy frozen, and the RL demo.

Every evaluation here is a *kernel replay* of an out-of-sample range through
``run_session`` with the ``dt_policy`` strategy (strategies/dt_policy.py) reading a
registered model version: the same code path as a backtest or live paper trading
(validation-only paper trading). Frozen means: the model is loaded in eval mode and run
under ``torch.inference_mode()`` (no gradient, no optimizer exists), and each replay
checks that the weights file's sha256 is the same after as before and that the session's
``ModelLoaded`` event carries the registered weights hash with ``frozen_verified``.

* :func:`walk_forward_eval`: per fold of rolling windows, the in-sample range is
  exported as trajectories (journal_tools/trajectories.py, behaviour policy), a model is
  trained on them (training/pipeline.py) and the out-of-sample range is replayed frozen,
  once per configuration tried (``trials``: target returns-to-go). Reported per fold and
  trial: Sharpe, max drawdown, win rate, profit factor (training/validation.py
  ``fold_metrics``, over the portfolio snapshots' returns and the round trips' P&Ls),
  and over all folds the probability of backtest overfitting (CSCV over the [periods x
  trials] matrix of out-of-sample returns) and the deflated Sharpe ratio of the chosen
  configuration given every trial's Sharpe.
* :func:`cpcv_eval`: the range cut into N equal time groups; for each of the C(N, k)
  splits a model is trained on the other groups (purged: no training episode within
  ``purge_ns`` before a test group; embargoed: none starting within ``embargo_ns``
  after one) and every test group is replayed frozen; the C(N-1, k-1) backtest paths
  (training/validation.py ``cpcv_paths``) each join one out-of-sample replay per group;
  reported per path and trial: Sharpe and return; PBO over the stacked path returns and
  the deflated Sharpe of the best trial.
* :func:`run_rl_demo` (``tickerml rl-demo``): synthetic data -> import -> export ->
  pre-train -> train -> distil -> walk-forward report, in a few minutes on a laptop CPU.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from adapters.journal.base import Journal
from journal_tools.projections import load_session, trade_history
from journal_tools.session import run_session
from journal_tools.trajectories import ExportSpec, export_trajectories
from kernel.config import AppConfig, StrategyConfig
from kernel.events import ModelLoaded, PortfolioSnapshot
from kernel.metrics import annualisation_periods, returns_from_equity
from training.quarantine import QUARANTINE_DAYS, Clock, ns_to_iso
from training.validation import (
    cpcv_paths,
    cpcv_split_groups,
    deflated_sharpe_from_returns,
    fold_metrics,
    probability_of_backtest_overfitting,
    walk_forward,
)

MINUTE = 60_000_000_000
MONEY = 10**8


class EvaluationError(ValueError):
    """An evaluation that cannot be run as asked (the message says why)."""


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    """What the policy trades and how its data is cut. ``behaviour``: the strategy whose
    replays make the training trajectories; ``trials``: the target returns-to-go tried
    (the configurations PBO and the deflated Sharpe account for); ``primary`` is the one
    reported per fold."""

    behaviour: StrategyConfig
    instrument: str  # EXCHANGE:SYMBOL
    window: int = 8
    step_s: float = 10.0
    episode_minutes: float = 30.0
    trials: tuple[float, ...] = (0.5, 1.0, 2.0)
    primary: float = 1.0
    max_position: str = "0.03"
    quarantine_days: int = QUARANTINE_DAYS

    def __post_init__(self) -> None:
        if ":" not in self.instrument:
            raise EvaluationError(f"instrument must be EXCHANGE:SYMBOL, got {self.instrument!r}")
        if self.primary not in self.trials:
            raise EvaluationError(f"primary {self.primary} is not one of trials {self.trials}")


@dataclass
class Replay:
    """One frozen out-of-sample replay."""

    session_id: str
    start_ns: int
    end_ns: int
    target_return: float
    returns: list[float]
    metrics: dict[str, Any]
    fills: int
    weights_hash: str
    frozen: bool


def _policy(record_path: Path, spec: EvalSpec, target_return: float) -> StrategyConfig:
    return StrategyConfig(
        name="dt_policy",
        params={
            "model_path": str(record_path),
            "instrument": spec.instrument,
            "target_return": float(target_return),
            "step_ms": round(spec.step_s * 1000),
            "episode_minutes": float(spec.episode_minutes),
            "max_position": spec.max_position,
        },
    )


def frozen_replay(
    journal: Journal,
    config: AppConfig,
    record: Any,
    start_ns: int,
    end_ns: int,
    spec: EvalSpec,
    target_return: float,
    session_id: str,
) -> Replay:
    """Replay ``[start_ns, end_ns)`` with the registered model frozen (see the module doc)."""
    from training.registry import sha256_file

    exchange, symbol = spec.instrument.split(":", 1)
    before = sha256_file(record.weights_path)
    run_session(
        journal,
        config,
        start_ns=start_ns,
        end_ns=end_ns,
        exchanges=[exchange],
        symbols=[symbol],
        strategy=_policy(record.path, spec, target_return),
        session_id=session_id,
    )
    after = sha256_file(record.weights_path)
    session = load_session(journal, session_id, config)
    loaded = [ev for _, ev in session.events if isinstance(ev, ModelLoaded)]
    frozen = (
        before == after == record.weights_sha256
        and len(loaded) == 1
        and loaded[0].weights_hash == record.weights_hash
        and loaded[0].frozen_verified
    )
    if not frozen:
        raise EvaluationError(
            f"{session_id}: the policy was not frozen (weights sha256 {before} -> {after}, "
            f"recorded {record.weights_sha256}; ModelLoaded {loaded})"
        )
    equity = [ev.equity / MONEY for _, ev in session.events if isinstance(ev, PortfolioSnapshot)]
    returns = returns_from_equity(equity) if len(equity) >= 2 else []
    rows = trade_history(session)
    pnls = [r.net_pnl / MONEY for r in rows if r.exit_ts]
    periods = annualisation_periods(config.trading.engine.portfolio.snapshot_interval_ms)
    m = fold_metrics(returns, periods, pnls or None) if returns else None
    fills = sum(1 for _, ev in session.events if type(ev).__name__ == "Fill")
    return Replay(
        session_id=session_id,
        start_ns=start_ns,
        end_ns=end_ns,
        target_return=target_return,
        returns=[float(r) for r in returns],
        metrics=_metrics_json(m),
        fills=fills,
        weights_hash=record.weights_hash,
        frozen=frozen,
    )


def _metrics_json(m: Any) -> dict[str, Any]:
    if m is None:
        return {
            "n_periods": 0,
            "total_return": 0.0,
            "sharpe": None,
            "max_drawdown": 0.0,
            "win_rate": None,
            "profit_factor": None,
        }
    out = asdict(m)
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()
    }


def _overfitting(series: dict[float, list[float]], primary: float) -> dict[str, Any]:
    """PBO over the [T, trials] matrix (trimmed to the shortest) and the primary's DSR."""
    out: dict[str, Any] = {"pbo": None, "deflated_sharpe": None, "n_trials": len(series)}
    n = min((len(v) for v in series.values()), default=0)
    if len(series) >= 2 and n >= 4:
        m = np.array([series[t][:n] for t in sorted(series)]).T
        s = min(8, n - n % 2)
        s = s if s >= 2 else 2
        try:
            out["pbo"] = probability_of_backtest_overfitting(m, n_submatrices=s).pbo
        except ValueError as exc:
            out["pbo_error"] = str(exc)
    sharpes = []
    for v in series.values():
        a = np.asarray(v)
        if len(a) > 1 and a.std(ddof=1) > 0:
            sharpes.append(float(a.mean() / a.std(ddof=1)))
    try:
        out["deflated_sharpe"] = deflated_sharpe_from_returns(series[primary], sharpes)
    except (ValueError, KeyError) as exc:
        out["deflated_sharpe_error"] = str(exc)
    return out


# -- walk-forward ------------------------------------------------------------------------------


def windows_ns(
    start_ns: int, end_ns: int, is_ns: int, oos_ns: int, step_ns: int
) -> list[tuple[int, int, int, int]]:
    """Rolling (is_start, is_end, oos_start, oos_end) windows of fixed lengths in ns
    (the calendar-month form is training.validation.walk_forward)."""
    if min(is_ns, oos_ns, step_ns) <= 0:
        raise EvaluationError("in-sample, out-of-sample and step lengths must be > 0")
    out = []
    i = 0
    while start_ns + i * step_ns + is_ns + oos_ns <= end_ns:
        lo = start_ns + i * step_ns
        out.append((lo, lo + is_ns, lo + is_ns, lo + is_ns + oos_ns))
        i += 1
    if not out:
        raise EvaluationError(
            "the range is shorter than one in-sample + out-of-sample window: "
            f"{(end_ns - start_ns) / 3.6e12:.2f} h < {(is_ns + oos_ns) / 3.6e12:.2f} h"
        )
    return out


def month_windows(
    start_ns: int, end_ns: int, is_m: int, oos_m: int, step_m: int
) -> list[tuple[int, int, int, int]]:
    from datetime import UTC

    lo = datetime.fromtimestamp(start_ns / 1e9, UTC)
    hi = datetime.fromtimestamp(end_ns / 1e9, UTC)
    return [w.ns() for w in walk_forward(lo, hi, is_m, oos_m, step_m)]


@dataclass(frozen=True, kw_only=True)
class Setup:
    """Where and how each fold's model is trained: registry root, a work directory for
    the trajectories, the model name prefix, shape and run (training/pipeline.py)."""

    registry_root: Path
    work_dir: Path
    name: str
    shape: Any
    run: Any
    clock: Clock | None = None
    say: Callable[[str], None] = lambda _m: None

    def train(
        self,
        journal: Journal,
        config: AppConfig,
        spec: EvalSpec,
        ranges: Sequence[tuple[int, int]],
        tag: str,
    ) -> Any:
        """Export ``ranges`` with the behaviour policy and train ``<name>-<tag>`` on them."""
        from training.pipeline import train_new
        from training.registry import ModelRegistry

        data = _export(journal, config, spec, ranges, self.work_dir / tag, self.clock)
        registry = ModelRegistry(self.registry_root, self.clock)
        run = replace(self.run, distill=False)
        trained = train_new(data, registry, f"{self.name}-{tag}", self.shape, run, self.clock)
        return trained


@dataclass
class EvalReport:
    kind: str
    folds: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "folds": self.folds, "summary": self.summary}


def _export(
    journal: Journal,
    config: AppConfig,
    spec: EvalSpec,
    ranges: Sequence[tuple[int, int]],
    out: Path,
    clock: Clock | None,
) -> Path:
    if out.exists():
        shutil.rmtree(out)
    export_trajectories(
        journal,
        config,
        ExportSpec(
            ranges=tuple((int(a), int(b)) for a, b in ranges),
            policy=spec.behaviour,
            instrument=spec.instrument,
            window=spec.window,
            episode_ns=round(spec.episode_minutes * MINUTE),
            step_ns=round(spec.step_s * 1e9),
            quarantine_days=spec.quarantine_days,
        ),
        out,
        clock=clock,
    )
    return out


def walk_forward_eval(
    journal: Journal,
    config: AppConfig,
    spec: EvalSpec,
    windows: Sequence[tuple[int, int, int, int]],
    setup: Setup,
) -> EvalReport:
    """Train on each in-sample window, replay its out-of-sample window frozen."""
    say = setup.say
    report = EvalReport(kind="walk_forward")
    oos: dict[float, list[float]] = {t: [] for t in spec.trials}
    tag = f"{int(time.time() * 1000) % 10**9}"
    for i, (is_lo, is_hi, oos_lo, oos_hi) in enumerate(windows):
        say(f"fold {i}: train on {ns_to_iso(is_lo)} .. {ns_to_iso(is_hi)}")
        trained = setup.train(journal, config, spec, [(is_lo, is_hi)], f"wf{i}")
        record = trained.records[0]
        fold: dict[str, Any] = {
            "fold": i,
            "in_sample": [ns_to_iso(is_lo), ns_to_iso(is_hi)],
            "out_of_sample": [ns_to_iso(oos_lo), ns_to_iso(oos_hi)],
            "model": record.model_id,
            "weights_hash": record.weights_hash,
            "train_loss_first_last": trained.summary()["train_loss_first_last"],
            "trials": {},
        }
        for t in spec.trials:
            say(
                f"fold {i}: frozen replay of {ns_to_iso(oos_lo)} .. {ns_to_iso(oos_hi)}, target {t}"
            )
            rep = frozen_replay(
                journal, config, record, oos_lo, oos_hi, spec, t, f"wf-{tag}-{i}-{t:g}"
            )
            fold["trials"][f"{t:g}"] = {
                "session": rep.session_id,
                "fills": rep.fills,
                "frozen": rep.frozen,
                **rep.metrics,
            }
            oos[t].extend(rep.returns)
        fold |= fold["trials"][f"{spec.primary:g}"]
        report.folds.append(fold)
    report.summary = {
        "folds": len(report.folds),
        "primary_target_return": spec.primary,
        "oos_periods": len(oos[spec.primary]),
        **_overfitting(oos, spec.primary),
    }
    return report


# -- CPCV ------------------------------------------------------------------------------------


def cpcv_eval(
    journal: Journal,
    config: AppConfig,
    spec: EvalSpec,
    start_ns: int,
    end_ns: int,
    n_groups: int,
    n_test_groups: int,
    purge_ns: int,
    embargo_ns: int,
    setup: Setup,
) -> EvalReport:
    """Combinatorial purged cross-validation with frozen-policy replays (module doc)."""
    say = setup.say
    if end_ns <= start_ns:
        raise EvaluationError("empty range")
    edges = [start_ns + (end_ns - start_ns) * g // n_groups for g in range(n_groups + 1)]
    groups = [(edges[g], edges[g + 1]) for g in range(n_groups)]
    combos = cpcv_split_groups(n_groups, n_test_groups)
    report = EvalReport(kind="cpcv")
    tag = f"{int(time.time() * 1000) % 10**9}"
    # results[split][group][trial] -> returns
    results: list[dict[int, dict[float, list[float]]]] = []
    for s, combo in enumerate(combos):
        train = []
        for g, (lo, hi) in enumerate(groups):
            if g in combo:
                continue
            for tg in combo:  # purge before, embargo after each test group
                tlo, thi = groups[tg]
                if g == tg - 1:
                    hi = min(hi, tlo - purge_ns)
                if g == tg + 1:
                    lo = max(lo, thi + embargo_ns)
            if hi > lo:
                train.append((lo, hi))
        merged: list[tuple[int, int]] = []
        for lo, hi in train:
            if merged and merged[-1][1] == lo:
                merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        say(f"split {s} (test groups {list(combo)}): train on {len(merged)} range(s)")
        trained = setup.train(journal, config, spec, merged, f"cpcv{s}")
        record = trained.records[0]
        per_group: dict[int, dict[float, list[float]]] = {}
        split_row: dict[str, Any] = {
            "split": s,
            "test_groups": list(combo),
            "train_ranges": [[ns_to_iso(a), ns_to_iso(b)] for a, b in merged],
            "model": record.model_id,
            "groups": {},
        }
        for g in combo:
            per_group[g] = {}
            for t in spec.trials:
                rep = frozen_replay(
                    journal, config, record, *groups[g], spec, t, f"cpcv-{tag}-{s}-{g}-{t:g}"
                )
                per_group[g][t] = rep.returns
                split_row["groups"].setdefault(str(g), {})[f"{t:g}"] = rep.metrics
        results.append(per_group)
        report.folds.append(split_row)
    paths = cpcv_paths(n_groups, n_test_groups)
    stacked: dict[float, list[float]] = {t: [] for t in spec.trials}
    path_rows = []
    periods = annualisation_periods(config.trading.engine.portfolio.snapshot_interval_ms)
    for p, path in enumerate(paths):
        row: dict[str, Any] = {"path": p, "splits": [s for _g, s in path], "trials": {}}
        for t in spec.trials:
            r = [x for g, s in path for x in results[s][g][t]]
            stacked[t].extend(r)
            row["trials"][f"{t:g}"] = _metrics_json(fold_metrics(r, periods) if r else None)
        path_rows.append(row)
    report.summary = {
        "groups": n_groups,
        "test_groups": n_test_groups,
        "splits": len(combos),
        "paths": len(paths),
        "purge_s": purge_ns / 1e9,
        "embargo_s": embargo_ns / 1e9,
        "path_metrics": path_rows,
        **_overfitting(stacked, spec.primary),
    }
    return report


# -- the demo ----------------------------------------------------------------------------------


def run_rl_demo(
    out_dir: Path,
    hours: float = 4.0,
    seed: int = 7,
    quiet: bool = False,
    pretrain_steps: int = 150,
    train_steps: int = 200,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """synth -> import -> export -> pre-train -> train -> distil -> walk-forward report."""
    from rich.console import Console

    from adapters.config_loader import load_config
    from adapters.journal.sqlite import SqliteJournal
    from journal_tools.synth import SynthSpec, generate
    from journal_tools.tardis import import_files
    from kernel.instruments import InstrumentRegistry
    from training.pipeline import TINY, RunConfig, train_new
    from training.registry import ModelRegistry

    console = Console()

    def say(msg: str) -> None:
        if not quiet:
            console.print(f"[bold cyan]>>[/] {msg}")

    config = load_config()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    say(f"synth: {hours} h of BINANCE BTC-USDT (dated 2025, outside the 30-day quarantine)")
    manifest = generate(
        SynthSpec(
            out_dir=str(out_dir / "data"),
            hours=hours,
            seed=seed,
            exchanges=("binance",),
            symbols=("BTC-USDT",),
            perps=False,
        )
    )
    db = out_dir / "journal.db"
    journal = SqliteJournal(db)
    t0 = time.perf_counter()
    try:
        import_files(
            journal,
            InstrumentRegistry(list(config.instruments.instruments)),
            [f.path for f in manifest.files],
        )
        info = [s for s in journal.streams() if s.stream.startswith("md.")]
        lo = min(s.first_ts for s in info)
        hi = max(s.last_ts for s in info) + 1
        spec = EvalSpec(
            behaviour=StrategyConfig(
                name="momentum",
                params={
                    "imbalance_threshold": 0.1,
                    "microprice_threshold_bp": 0.05,
                    "flow_threshold": 0.05,
                    "evaluate_ms": 0,
                },
            ),
            instrument="BINANCE:BTC-USDT",
            window=8,
            step_s=10.0,
            episode_minutes=30.0,
        )
        run = RunConfig(
            pretrain_steps=pretrain_steps, train_steps=train_steps, distill_steps=200, seed=seed
        )
        registry_root = out_dir / "models"
        is_ns = int((hi - lo) // 2)
        oos_ns = int((hi - lo) // 4)
        say("export-trajectories of the first half (behaviour policy: momentum)")
        data = _export(journal, config, spec, [(lo, lo + is_ns)], out_dir / "trajectories", clock)
        say("pre-train the encoder, train the Decision Transformer (frozen encoder), distil")
        trained = train_new(data, ModelRegistry(registry_root, clock), "demo-dt", TINY, run, clock)
        say("walk-forward: 2 folds, in-sample 1/2, out-of-sample 1/4 of the range, frozen replays")
        wf = walk_forward_eval(
            journal,
            config,
            spec,
            windows_ns(lo, hi, is_ns, oos_ns, oos_ns),
            Setup(
                registry_root=registry_root,
                work_dir=out_dir / "wf",
                name="demo-dt",
                shape=TINY,
                run=run,
                clock=clock,
                say=say,
            ),
        )
    finally:
        journal.close()
    doc = {
        "data": {"from": ns_to_iso(lo), "to": ns_to_iso(hi), "journal": str(db)},
        "train": trained.summary(),
        "walk_forward": wf.to_json(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out_dir / "report.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if not quiet:
        _print_folds(console, wf)
        console.print(f"report: {out_dir / 'report.json'} ({doc['seconds']} s)")
    return doc


def _print_folds(console: Any, report: EvalReport) -> None:
    from rich.table import Table

    table = Table(title=f"{report.kind}: out-of-sample, policy frozen")
    for col in (
        "fold",
        "out of sample",
        "model",
        "fills",
        "Sharpe",
        "max DD",
        "win rate",
        "PF",
        "frozen",
    ):
        table.add_column(col)

    def f(v: Any, spec: str = ".3f") -> str:
        return "n/a" if v is None else format(v, spec)

    for fold in report.folds:
        table.add_row(
            str(fold.get("fold", fold.get("split"))),
            " .. ".join(x[:16] for x in fold.get("out_of_sample", [])),
            fold["model"],
            str(fold.get("fills", "")),
            f(fold.get("sharpe")),
            f(fold.get("max_drawdown"), ".4f"),
            f(fold.get("win_rate")),
            f(fold.get("profit_factor")),
            str(fold.get("frozen", "")),
        )
    console.print(table)
    s = report.summary
    console.print(
        f"PBO {f(s.get('pbo'))}, deflated Sharpe {f(s.get('deflated_sharpe'))} over "
        f"{s.get('n_trials')} configurations (target returns)"
    )
