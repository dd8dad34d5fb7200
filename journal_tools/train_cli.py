"""``tickerml train``, ``tickerml walk-forward``, ``tickerml cpcv``, ``tickerml rl-demo``.

The commands around training/pipeline.py and journal_tools/rl.py (docs/training.md)."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> tuple[int, str]:
    """``6M`` -> (6, "months"); ``90m``, ``2h``, ``1d``, ``1w``, ``30s`` -> (ns, "ns")."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdwM])\s*", text)
    if not m:
        raise ValueError(
            f"duration {text!r}: a number and a unit, s m h d w (time) or M (calendar months)"
        )
    value, unit = float(m.group(1)), m.group(2)
    if unit == "M":
        if value != int(value) or value < 1:
            raise ValueError(f"duration {text!r}: whole months >= 1")
        return int(value), "months"
    return round(value * _UNITS[unit] * 1e9), "ns"


def _shape(args: argparse.Namespace, config: Any) -> Any:
    from training.config import ModelSettings
    from training.pipeline import TINY, Shape

    if args.shape == "tiny":
        return TINY
    return Shape.from_settings(ModelSettings.from_kernel(config.model))


def _run(args: argparse.Namespace, config: Any) -> Any:
    from training.pipeline import RunConfig
    from training.quarantine import QUARANTINE_DAYS

    return RunConfig(
        pretrain_steps=args.pretrain_steps,
        train_steps=args.steps,
        distill_steps=args.distill_steps,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        distill=not args.no_distill,
        quarantine_days=max(QUARANTINE_DAYS, int(config.model.quarantine_days)),
    )


def _common_training(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--registry", type=Path, default=Path("models"), help="model registry root")
    sp.add_argument("--name", default="dt", help="model name in the registry")
    sp.add_argument(
        "--shape",
        choices=["config", "tiny"],
        default="config",
        help="config: config/model.yaml; tiny: 2 blocks x 32 dims (demos, CPU minutes)",
    )
    sp.add_argument("--pretrain-steps", type=int, default=200)
    sp.add_argument("--steps", type=int, default=300, help="Decision Transformer steps")
    sp.add_argument("--distill-steps", type=int, default=300)
    sp.add_argument("--no-distill", action="store_true", help="no fast distilled variant")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default="cpu", help="cpu or cuda")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_train(args: argparse.Namespace) -> int:
    from journal_tools.cli import UsageError, _config, out
    from training.pipeline import CRON, next_run, refresh_weekly, train_new
    from training.registry import ModelRegistry

    if args.schedule:
        rows = {k: {"next": next_run(k).isoformat(), "cron": CRON[k]} for k in CRON}  # type: ignore[arg-type]
        out.print_json(data=rows)
        return 0
    if not args.data:
        raise UsageError("--data DIR (an export-trajectories output) is required")
    config = _config(args)
    registry = ModelRegistry(args.registry)
    run = _run(args, config)
    if args.refresh == "weekly":
        report = refresh_weekly(args.data, registry, args.name, run)
    else:
        kind = "monthly" if args.refresh == "monthly" else "train"
        report = train_new(args.data, registry, args.name, _shape(args, config), run, kind=kind)
    doc = report.summary()
    if args.json:
        out.print_json(data=doc)
    else:
        state = "registered " + ", ".join(doc["models"]) if report.registered else report.reason
        out.print(f"{doc['kind']}: {state}")
        out.print(json.dumps({k: doc[k] for k in ("checks", "train_loss_first_last")}))
        if doc["max_drift_sd"] is not None and doc["max_drift_sd"] > run.drift_alert_sd:
            out.print(
                f"feature drift {doc['max_drift_sd']:.1f} sd > {run.drift_alert_sd:g}: "
                "the monthly refresh (refits the normalisation) is due"
            )
    return 0 if report.registered else 1


def _spec(args: argparse.Namespace, config: Any) -> Any:
    from journal_tools.cli import _strategy_override
    from journal_tools.rl import EvalSpec
    from training.quarantine import QUARANTINE_DAYS

    args.strategy = args.behaviour
    behaviour = _strategy_override(args, config)
    assert behaviour is not None
    trials = tuple(float(x) for x in args.trials.split(","))
    return EvalSpec(
        behaviour=behaviour,
        instrument=args.instrument,
        window=args.window,
        step_s=args.step_seconds,
        episode_minutes=args.episode_minutes,
        trials=trials,
        primary=float(args.primary) if args.primary is not None else trials[len(trials) // 2],
        quarantine_days=max(QUARANTINE_DAYS, int(config.model.quarantine_days)),
    )


def _eval_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--from", dest="start", required=True, help="start (ISO-8601 UTC or ns)")
    sp.add_argument("--to", dest="end", required=True, help="end, exclusive")
    sp.add_argument("--instrument", required=True, help="EXCHANGE:SYMBOL the policy trades")
    sp.add_argument("--behaviour", default="momentum", help="strategy making the trajectories")
    sp.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="behaviour parameter"
    )
    sp.add_argument("--trials", default="0.5,1,2", help="target returns-to-go compared")
    sp.add_argument("--primary", help="the target return reported per fold (default: middle)")
    sp.add_argument("--window", type=int, default=8, help="feature rows per state")
    sp.add_argument("--step-seconds", type=float, default=10.0)
    sp.add_argument("--episode-minutes", type=float, default=30.0)
    sp.add_argument("--work", type=Path, default=Path("out/eval"), help="trajectories go here")
    sp.add_argument("--out", type=Path, help="also write the report JSON here")
    sp.add_argument("--journal", help="journal DSN")


def _setup(args: argparse.Namespace, config: Any) -> Any:
    from journal_tools.cli import console
    from journal_tools.rl import Setup

    return Setup(
        registry_root=args.registry,
        work_dir=args.work,
        name=args.name,
        shape=_shape(args, config),
        run=_run(args, config),
        say=(lambda m: None) if args.quiet else (lambda m: console.print(f">> {m}")),
    )


def _finish(args: argparse.Namespace, report: Any) -> int:
    from journal_tools.cli import console, out
    from journal_tools.rl import _print_folds

    doc = report.to_json()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if args.json:
        out.print_json(data=json.loads(json.dumps(doc, default=str)))
    else:
        _print_folds(console, report)
    return 0


def cmd_walk_forward(args: argparse.Namespace) -> int:
    from journal_tools.cli import UsageError, _config, _journal, parse_time
    from journal_tools.rl import month_windows, walk_forward_eval, windows_ns

    lo, hi = parse_time(args.start), parse_time(args.end)
    parts = [parse_duration(x) for x in (args.is_, args.oos, args.step)]
    units = {u for _v, u in parts}
    if len(units) != 1:
        raise UsageError("--is, --oos and --step must all be months (M) or all times")
    if units == {"months"}:
        windows = month_windows(lo, hi, parts[0][0], parts[1][0], parts[2][0])
    else:
        windows = windows_ns(lo, hi, parts[0][0], parts[1][0], parts[2][0])
    config = _config(args)
    with _journal(args, config) as journal:
        report = walk_forward_eval(
            journal,
            config,
            _spec(args, config),
            windows,
            _setup(args, config),
        )
    return _finish(args, report)


def cmd_cpcv(args: argparse.Namespace) -> int:
    from journal_tools.cli import _config, _journal, parse_time
    from journal_tools.rl import cpcv_eval

    lo, hi = parse_time(args.start), parse_time(args.end)
    purge, _ = parse_duration(args.purge)
    embargo, _ = parse_duration(args.embargo)
    config = _config(args)
    with _journal(args, config) as journal:
        report = cpcv_eval(
            journal,
            config,
            _spec(args, config),
            lo,
            hi,
            args.groups,
            args.test_groups,
            purge,
            embargo,
            _setup(args, config),
        )
    return _finish(args, report)


def cmd_rl_demo(args: argparse.Namespace) -> int:
    from journal_tools.rl import run_rl_demo

    run_rl_demo(args.out, hours=args.hours, seed=args.seed, quiet=args.quiet)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from journal_tools.cli import out
    from training.quarantine import ns_to_iso
    from training.registry import ModelRegistry, RegistryError

    reg = ModelRegistry(args.registry)
    if args.action == "list":
        rows = []
        for name in reg.names():
            for v in reg.versions(name):
                r = reg.get(name, v)
                rows.append(
                    {
                        "model": r.model_id,
                        "kind": r.kind,
                        "created_at": r.created_at,
                        "weights_hash": r.weights_hash[:16],
                        "data_to": ns_to_iso(r.data_to_ns) if r.data_to_ns else None,
                    }
                )
        out.print_json(data=rows)
        return 0
    if not args.model:
        raise ValueError(f"models {args.action} needs NAME or NAME@N")
    record = reg.resolve(args.model)
    if args.action == "show":
        out.print_json(data=json.loads(json.dumps(record.to_json(), default=str)))
        return 0
    try:
        reg.load_record(record)
    except RegistryError as exc:
        out.print(f"FAIL {record.model_id}: {exc}")
        return 1
    out.print(
        f"ok {record.model_id}: sha256 {record.weights_sha256}, encoder {record.encoder_hash}"
    )
    return 0


def add_training_commands(add: Add) -> None:
    sp = add("models", cmd_models, "the model registry: list, show NAME[@N], verify NAME[@N]")
    sp.add_argument("action", choices=["list", "show", "verify"])
    sp.add_argument("model", nargs="?", help="NAME (latest) or NAME@N")
    sp.add_argument("--registry", type=Path, default=Path("models"), help="registry root")

    sp = add(
        "train",
        cmd_train,
        "pre-train + train (+ distil) a Decision Transformer from exported trajectories, "
        "or --refresh weekly|monthly, into the model registry",
    )
    sp.add_argument("--data", type=Path, help="trajectory dataset directory")
    sp.add_argument(
        "--refresh",
        choices=["weekly", "monthly"],
        help="weekly: fine-tune the outer 2 blocks + heads, validated; monthly: full retrain",
    )
    sp.add_argument("--schedule", action="store_true", help="print the next runs and cron lines")
    _common_training(sp)

    sp = add(
        "walk-forward",
        cmd_walk_forward,
        "rolling walk-forward: train per in-sample window, kernel-replay out-of-sample frozen",
    )
    sp.add_argument("--is", dest="is_", default="6M", help="in-sample length (6M, 2h, ...)")
    sp.add_argument("--oos", default="1M", help="out-of-sample length")
    sp.add_argument("--step", default="1M", help="step between folds")
    _eval_args(sp)
    _common_training(sp)

    sp = add(
        "cpcv",
        cmd_cpcv,
        "combinatorial purged cross-validation with frozen-policy kernel replays, PBO, DSR",
    )
    sp.add_argument("--groups", type=int, default=6, help="N time groups")
    sp.add_argument("--test-groups", type=int, default=2, help="k test groups per split")
    sp.add_argument("--purge", default="30m", help="no training data this long before a test")
    sp.add_argument("--embargo", default="30m", help="nor this long after one")
    _eval_args(sp)
    _common_training(sp)

    sp = add(
        "rl-demo",
        cmd_rl_demo,
        "offline RL end to end on synthetic data: export -> pre-train -> train -> distil -> "
        "walk-forward report",
    )
    sp.add_argument("--out", type=Path, default=Path("out/rl-demo"))
    sp.add_argument("--hours", type=float, default=4.0, help="synthetic market hours")
    sp.add_argument("--seed", type=int, default=7)
