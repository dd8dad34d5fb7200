#!/usr/bin/env python3
"""Throughput of import, raw journal append and replay, as JSON on stdout.

    .venv/bin/python benchmarks/replay_throughput.py [--deltas 1000000] [--trades 100000]
        [--data DIR] [--work DIR] [--keep]

* data: a synthetic single-instrument market (BINANCE BTC-USDT) of about ``--deltas``
  book-delta rows and ``--trades`` trades in Tardis CSV (``tickerml synth`` machinery),
  or any directory of Tardis files given with ``--data`` (e.g. the peers' data set).
* import: ``tickerml import tardis`` in a fresh process: rows/s, peak RSS.
* append: raw ``SqliteJournal.append_prepared`` of the imported events (already
  encoded) into a new file in batches of 10,000: events/s. This is the journal's own
  write speed, without CSV parsing.
* replay: ``tickerml replay --stats-json`` in a fresh process (so peak RSS is the
  replay's own), with no strategy, with the example signal strategy (decisions, no
  orders) and with the market maker re-quoting both sides every 100 book events
  through the execution simulator (orders, queue positions, fills): rows/s
  (``events_per_s``, the unit the peers use), journal events/s, fills, peak RSS.
* ``--variants``: each replay under config variants made from ./config:
  ``plain`` (market-data validation and features off), ``validated`` (validation on)
  and ``shipped`` (config/ as it is: validation and every feature on, a ``Features``
  event per second); ``cost`` reports the share of replay time each layer takes
  (``features_share`` = 1 - shipped events/s / validated events/s).

Each replay process runs on one core (the kernel is single-threaded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.journal.base import PreparedEvent  # noqa: E402
from adapters.journal.sqlite import SqliteJournal  # noqa: E402


def tickerml() -> list[str]:
    exe = Path(sys.executable).with_name("tickerml")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "journal_tools.cli"]


def run_timed(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) of the child, stdout."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "MAXRSS %M", *cmd] if Path("/usr/bin/time").exists() else cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    rss = 0.0
    for line in proc.stderr.splitlines():
        if line.startswith("MAXRSS "):
            rss = int(line.split()[1]) / 1024
    return wall, rss, proc.stdout


def make_data(out: Path, deltas: int, trades: int, seed: int) -> None:
    from journal_tools.synth import SynthSpec, generate

    # about 1.9 book rows per message, as in the peers' data
    spec = SynthSpec(
        out_dir=str(out),
        hours=0.35,
        seed=seed,
        exchanges=("binance",),
        symbols=("BTC-USDT",),
        perps=False,
        book_msgs=int(deltas / 1.9),
        trades=trades,
    )
    generate(spec)


def config_variant(work: Path, variant: str) -> Path:
    """A copy of ./config with validation / features switched as ``variant`` says."""
    import yaml

    out = work / f"config-{variant}"
    shutil.copytree(ROOT / "config", out, dirs_exist_ok=True)
    if variant == "shipped":
        return out
    mon = yaml.safe_load((out / "monitoring.yaml").read_text())
    mon.setdefault("validation", {})["enabled"] = variant == "validated"
    (out / "monitoring.yaml").write_text(yaml.safe_dump(mon))
    trading = yaml.safe_load((out / "trading.yaml").read_text())
    trading.setdefault("features", {})["enabled"] = False
    (out / "trading.yaml").write_text(yaml.safe_dump(trading))
    return out


def raw_append_rate(src_db: Path, work: Path) -> dict[str, float]:
    src = SqliteJournal(src_db)
    rows = []
    for info in src.streams():
        if info.stream.startswith("md."):
            for r in src.read(info.stream):
                rows.append(PreparedEvent.of_record(r))
    src.close()
    dst_path = work / "append.db"
    dst = SqliteJournal(dst_path)
    t0 = time.perf_counter()
    for i in range(0, len(rows), 10_000):
        dst.append_prepared("md.BENCH.APPEND", rows[i : i + 10_000])
    seconds = time.perf_counter() - t0
    dst.close()
    return {
        "events": len(rows),
        "seconds": round(seconds, 3),
        "events_per_s": round(len(rows) / seconds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--deltas", type=int, default=1_000_000)
    ap.add_argument("--trades", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--data", type=Path, help="use these Tardis files instead of synthesising")
    ap.add_argument("--work", type=Path, help="working directory (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument(
        "--strategies",
        default="none,imbalance,market_maker",
        help="comma list of strategies to replay (default none,imbalance,market_maker)",
    )
    ap.add_argument(
        "--variants",
        default="shipped",
        help="comma list of config variants: plain, validated, shipped (default shipped)",
    )
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="tickerml-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {
        "benchmark": "replay_throughput",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    try:
        data = args.data
        if data is None:
            data = work / "data"
            t0 = time.perf_counter()
            make_data(data, args.deltas, args.trades, args.seed)
            result["synth_s"] = round(time.perf_counter() - t0, 2)
        db = work / "journal.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        wall, rss, stdout = run_timed(
            [
                *tickerml(),
                "import",
                "tardis",
                "--dir",
                str(data),
                "--journal",
                f"sqlite:///{db}",
                "--json",
                "-q",
            ]
        )
        report = json.loads(stdout)
        result["import"] = {
            "rows": report["rows"],
            "events": report["events"],
            "seconds": round(wall, 2),
            "rows_per_s": round(report["rows"] / wall),
            "events_per_s": round(report["events"] / wall),
            "peak_rss_mb": round(rss, 1),
            "journal_mb": round(db.stat().st_size / 2**20, 1),
        }
        result["append"] = raw_append_rate(db, work)
        variants = args.variants.split(",")
        for variant in variants:
            cfg = config_variant(work, variant)
            for strategy in args.strategies.split(","):
                name = (
                    f"replay_{strategy}" if variant == "shipped" else f"replay_{strategy}_{variant}"
                )
                stats_file = work / f"stats-{strategy}-{variant}.json"
                cmd = [
                    *tickerml(),
                    "--config-dir",
                    str(cfg),
                    "replay",
                    "--journal",
                    f"sqlite:///{db}",
                    "--strategy",
                    strategy,
                    "--stats-json",
                    str(stats_file),
                    "-q",
                ]
                if shutil.which("taskset"):
                    cmd = ["taskset", "-c", "0", *cmd]
                wall, rss, _ = run_timed(cmd)
                stats = json.loads(stats_file.read_text())
                result[name] = {
                    k: stats[k]
                    for k in (
                        "events",
                        "messages",
                        "seconds",
                        "events_per_s",
                        "messages_per_s",
                        "decisions",
                        "fills",
                        "outputs",
                        "state_hash",
                    )
                } | {"peak_rss_mb": round(rss, 1), "process_wall_s": round(wall, 2)}
        if {"plain", "validated", "shipped"} <= set(variants):
            cost: dict[str, dict[str, float]] = {}
            for strategy in args.strategies.split(","):
                p = result[f"replay_{strategy}_plain"]["events_per_s"]  # type: ignore[index]
                v = result[f"replay_{strategy}_validated"]["events_per_s"]  # type: ignore[index]
                f = result[f"replay_{strategy}"]["events_per_s"]  # type: ignore[index]
                cost[strategy] = {
                    "validation_share": round(1 - v / p, 3),
                    "features_share": round(1 - f / v, 3),
                    "validation_us_per_event": round(1e6 / v - 1e6 / p, 2),
                    "features_us_per_event": round(1e6 / f - 1e6 / v, 2),
                }
            result["cost"] = cost
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
