#!/usr/bin/env python3
"""Per-decision inference latency of the dt_policy strategy on CPU, as JSON on stdout.

    .venv/bin/python benchmarks/inference.py [--decisions 200] [--threads 1]
        [--features 29] [--window 32] [--distill-steps 100]

Three policies, each timed through :meth:`DTPolicyStrategy.infer_step`, the model work
of one decision exactly as the strategy does it (append the step, embed the newest
window with the frozen encoder, run the model(s) under ``torch.inference_mode``):

* ``default``: the Decision Transformer of config/model.yaml (6 blocks, 8 heads, 256
  dims, 64-step context = 192 tokens, 2-block 64-dim encoder), context full;
* ``distilled``: a student distilled from it (training/distill.py, 2 x 128 MLP over the
  encoder embedding and the return-to-go; a short distillation: latency does not depend
  on how well it learned);
* ``ensemble_3``: three default-size Decision Transformers (seeds 0, 1, 2), vote;
* ``*_anchored``: the same with ``context: anchored`` (key/value caches: each decision
  computes the new step's tokens only, over a context of K/2+1 to K steps; the p99
  includes the steps where a cache restarts).

States are synthetic (training.dataset.synthetic_trajectories) with ``--features``
features (29 = the kernel's FeatureSet) and ``--window`` rows (32 = the export's
default). The first ``context_len`` decisions fill the context and are not timed.
Percentiles in ms of wall clock (``time.perf_counter``), ``--threads`` torch threads
(1 = the strategy's default). Goal: < 5 ms p50 for the distilled and the default-size model.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from strategies.dt_policy import DTPolicyStrategy, PolicyMember
from training.config import load_model_settings
from training.dataset import synthetic_trajectories
from training.distill import DistillConfig, StudentConfig, distill
from training.trainer import build_model

GOAL_MS = 5.0


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1e3, q)), 3)


def _time(strategy: DTPolicyStrategy, states: np.ndarray, warm: int, n: int) -> list[float]:
    lat = []
    for i in range(warm + n):
        state = states[i % len(states)]
        t0 = time.perf_counter()
        strategy.infer_step(state, 0.5, min(i, 4095))
        if i >= warm:
            lat.append(time.perf_counter() - t0)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--features", type=int, default=29)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--distill-steps", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    settings = load_model_settings(root / "config" / "model.yaml")
    k = settings.context_len
    names = tuple(f"f{i}" for i in range(args.features))
    ds = synthetic_trajectories(2, k + 32, args.window, args.features, seed=0)
    dts = [build_model(settings, args.features, args.window, seed=s).eval() for s in range(3)]
    t0 = time.perf_counter()
    student, res = distill(
        dts[0],
        ds,
        DistillConfig(student=StudentConfig(), steps=args.distill_steps, batch_size=64),
    )
    distill_s = time.perf_counter() - t0
    members = [PolicyMember.from_model(m, "dt", i + 1, names) for i, m in enumerate(dts)]
    fast = PolicyMember.from_model(student, "dt-fast", 1, names)
    policies = {
        "default": ([members[0]], "sliding"),
        "default_anchored": ([members[0]], "anchored"),
        "distilled": ([fast], "sliding"),
        "ensemble_3": (members, "sliding"),
        "ensemble_3_anchored": (members, "anchored"),
    }
    out: dict[str, object] = {
        "benchmark": "dt_policy_inference",
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "features": args.features,
        "window": args.window,
        "context_len": k,
        "model": {
            "n_layers": settings.n_layers,
            "n_heads": settings.n_heads,
            "d_model": settings.d_model,
            "encoder_layers": settings.encoder_layers,
            "encoder_d_model": settings.encoder_d_model,
        },
        "params": {
            "default": sum(p.numel() for p in dts[0].parameters()),
            "distilled": sum(p.numel() for p in student.parameters()),
        },
        "distill_seconds": round(distill_s, 2),
        "distill_agreement": round(res.agreement, 4),
        "decisions": args.decisions,
        "goal_ms": GOAL_MS,
    }
    for name, (group, context) in policies.items():
        strategy = DTPolicyStrategy(group, target_return=0.5, context=context)
        lat = _time(strategy, ds.states, k, args.decisions)
        p50, p99 = _pct(lat, 50), _pct(lat, 99)
        out[name] = {"p50_ms": p50, "p99_ms": p99, "mean_ms": round(float(np.mean(lat)) * 1e3, 3)}
        if not name.startswith("ensemble_3"):
            out[name]["meets_goal_p50"] = p50 < GOAL_MS  # type: ignore[index]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
