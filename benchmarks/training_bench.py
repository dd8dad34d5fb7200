#!/usr/bin/env python3
"""Decision Transformer cost at the config/model.yaml size, as JSON on stdout.

    .venv/bin/python benchmarks/training_bench.py [--decisions 200] [--train-steps 10]
        [--threads 1] [--features 16] [--window 16] [--device cpu]

Synthetic trajectories (training.dataset.synthetic_trajectories), the default model
(6 blocks, 8 heads, 256 dims, 64-step context, 2-block 64-dim encoder). Reported:

* ``decision_ms_p50`` / ``_p99``: one decision as the strategy makes it, under
  ``torch.inference_mode``: encode the newest feature window with the frozen encoder
  (earlier steps' embeddings are cached) and run the transformer over the full 64-step
  context (192 tokens);
* ``decision_full_ms_p50`` / ``_p99``: the same re-encoding all 64 windows (no cache);
* ``train_samples_per_s``: training throughput (samples = context windows of 64 steps,
  batch 32, AdamW, forward + backward), after one warm-up step.

Wall clock on this machine, ``--threads`` torch threads (single-threaded by default,
like the kernel).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from training.config import ModelSettings
from training.dataset import synthetic_trajectories
from training.trainer import ReplayBuffer, TrainConfig, build_model, train_decision_transformer


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1e3, q)), 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=200)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = ModelSettings()
    k = settings.context_len
    ds = synthetic_trajectories(4, k + 64, args.window, args.features, seed=0)
    model = build_model(settings, args.features, args.window).eval()
    buf = ReplayBuffer(ds, k)
    dev = torch.device(args.device)
    model.to(dev)
    batch = buf.batch(buf.ends[:1], dev)
    cached = model.embed_states(batch["states"])
    lat, full = [], []
    with torch.inference_mode():
        for i in range(args.decisions + 10):
            t0 = time.perf_counter()
            newest = model.embed_states(batch["states"][:, -1:])
            emb = torch.cat([cached[:, :-1], newest], dim=1)
            out = model({**batch, "state_emb": emb})
            int(out["side_logits"][0, -1].argmax())
            t1 = time.perf_counter()
            out = model(batch)
            int(out["side_logits"][0, -1].argmax())
            t2 = time.perf_counter()
            if i >= 10:
                lat.append(t1 - t0)
                full.append(t2 - t1)
    model.cpu()
    train_decision_transformer(model, ds, TrainConfig(steps=1, batch_size=32, device=args.device))
    res = train_decision_transformer(
        model, ds, TrainConfig(steps=args.train_steps, batch_size=32, device=args.device)
    )
    print(
        json.dumps(
            {
                "benchmark": "training_bench",
                "device": args.device,
                "threads": args.threads,
                "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "model": {
                    "n_layers": settings.n_layers,
                    "n_heads": settings.n_heads,
                    "d_model": settings.d_model,
                    "context_len": k,
                    "encoder_d_model": settings.encoder_d_model,
                    "features": args.features,
                    "window": args.window,
                    "parameters": sum(p.numel() for p in model.parameters()),
                },
                "decision_ms_p50": _pct(lat, 50),
                "decision_ms_p99": _pct(lat, 99),
                "decision_full_ms_p50": _pct(full, 50),
                "decision_full_ms_p99": _pct(full, 99),
                "train_samples_per_s": round(res.samples_per_s, 1),
                "train_steps": args.train_steps,
                "batch_size": 32,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
