"""The Decision-Transformer policy as a kernel strategy (strategies/dt_policy.py) and the
distilled student (training/distill.py): determinism, the frozen policy, ModelLoaded,
the ensemble vote worked out by hand, and distillation quality. Tiny models, CPU, one
thread; a market of hand-seeded books and trades."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kernel.config import EngineConfig, LatencyProfile, StrategyConfig
from kernel.engine import Engine
from kernel.events import (
    BookSnapshot,
    Decision,
    Event,
    ModelLoaded,
    OrderSubmitted,
    Trade,
)
from kernel.instruments import Instrument
from strategies import STRATEGIES, build_strategy
from strategies.dt_policy import (
    DTPolicyStrategy,
    MemberOutput,
    PolicyMember,
    anchor_schedule,
    combine,
    feature_window,
)
from training.dataset import synthetic_trajectories
from training.decision_transformer import DecisionTransformer, DTConfig
from training.distill import (
    DistillConfig,
    DistilledPolicy,
    StudentConfig,
    distill,
    teacher_targets,
)
from training.encoder import EncoderConfig, FeatureEncoder, weights_hash
from training.registry import ModelMeta, ModelRegistry
from training.trainer import TrainConfig, train_decision_transformer

torch.set_num_threads(1)

S = 1_000_000_000
F_, W, K = 4, 5, 4
FEATURES = ("imbalance_5", "microprice_offset_bp", "trade_imbalance_10s", "spread_bp")
INST = Instrument(
    exchange="BINANCE",
    symbol="BTC-USDT-PERP",
    kind="perp",
    base="BTC",
    quote="USDT",
    price_decimals=1,
    size_decimals=3,
)
INSTANT = {"BINANCE": LatencyProfile(model="constant", entry_mean_ms=0, response_mean_ms=0)}
CREATED = datetime(2024, 3, 1, tzinfo=UTC)


def encoder(seed: int = 0) -> FeatureEncoder:
    torch.manual_seed(seed)
    return FeatureEncoder(
        EncoderConfig(n_features=F_, window=W, d_model=8, n_heads=2, n_layers=1, dropout=0.0)
    )


def dataset():  # type: ignore[no-untyped-def]
    return synthetic_trajectories(4, 24, W, F_, seed=0)


@pytest.fixture(scope="module")
def teacher() -> DecisionTransformer:
    """A tiny DT trained on the synthetic behaviour policy (buy when f0 > 0.5, ...)."""
    enc = encoder(0)
    cfg = DTConfig(n_layers=2, n_heads=2, d_model=16, context_len=K, max_timestep=64, dropout=0.0)
    model = DecisionTransformer(cfg, enc)
    train_decision_transformer(
        model,
        dataset(),
        TrainConfig(steps=200, batch_size=16, learning_rate=3e-3, weight_decay=0.0),
    )
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, teacher: DecisionTransformer) -> Path:
    """A registry with the teacher as ``dt@v1``."""
    root = tmp_path_factory.mktemp("models")
    ModelRegistry(root, clock=lambda: CREATED).register(
        "dt", teacher, ModelMeta(feature_names=FEATURES, extra={"target_return": 0.5})
    )
    return root


def market(n: int = 240, seed: int = 0) -> list[Event]:
    """60 s of books every 250 ms around a random-walk mid (touch sizes 10..399, so the
    imbalance swings) and a trade every 500 ms."""
    rng = np.random.Generator(np.random.PCG64(seed))
    mid = 600_000
    out: list[Event] = []
    for i in range(n):
        t = S + i * 250_000_000
        mid += int(rng.integers(-5, 6))
        bid, ask = int(rng.integers(10, 400)), int(rng.integers(10, 400))
        out.append(
            BookSnapshot(
                t,
                t,
                "BINANCE",
                "BTC-USDT-PERP",
                0,
                ((mid - 5, bid), (mid - 15, 100)),
                ((mid + 5, ask), (mid + 15, 100)),
            )
        )
        if i % 2:
            side = "buy" if rng.random() < 0.5 else "sell"
            price = mid + 5 if side == "buy" else mid - 5
            size = int(rng.integers(1, 30))
            out.append(
                Trade(t + 1, t + 1, "BINANCE", "BTC-USDT-PERP", 0, str(i), price, size, side)
            )
    return out


def run(strategy: object, events: list[Event]) -> tuple[list[Event], Engine]:
    eng = Engine(EngineConfig(), [INST], strategy, seed=1, latency=INSTANT)  # type: ignore[arg-type]
    out = list(eng.start())
    for ev in events:
        out += eng.apply(ev)
    return out, eng


def params(models: Path, **extra: object) -> StrategyConfig:
    base: dict[str, object] = {
        "registry": str(models),
        "model": "dt@1",
        "step_ms": 1000,
        "episode_minutes": 0.5,
        "max_position": "0.010",
    }
    return StrategyConfig(name="dt_policy", params={**base, **extra})  # type: ignore[arg-type]


# -- the state ---------------------------------------------------------------------------


def test_feature_window_is_the_exports_rule() -> None:
    """Compared with journal_tools/trajectories.py's own ``_RangeRun._state``."""
    from journal_tools.trajectories import _RangeRun

    rows = [np.full(F_, i, dtype=np.float32) for i in range(7)]
    for window in (1, 2, 5):
        for n in range(len(rows)):
            history = rows[max(0, n - (window - 1)) : n] if window > 1 else rows[:0]
            fake = SimpleNamespace(window=history, spec=SimpleNamespace(window=window))
            want = _RangeRun._state(fake, rows[n])  # type: ignore[arg-type]
            got = feature_window(history, rows[n], window)
            assert got.shape == (window, F_) and np.array_equal(got, want)
    # two rows of history, window 5: the oldest repeated three times
    got = feature_window(rows[:2], rows[2], 5)
    assert got[:, 0].tolist() == [0, 0, 0, 1, 2]


# -- the strategy ------------------------------------------------------------------------


def test_registered_and_journals_model_loaded(models: Path, teacher: DecisionTransformer) -> None:
    assert STRATEGIES["dt_policy"] is DTPolicyStrategy
    strat = build_strategy(params(models))
    assert isinstance(strat, DTPolicyStrategy)
    eng = Engine(EngineConfig(), [INST], strat, seed=1, latency=INSTANT)
    rec = ModelRegistry(models).get("dt", 1)
    (loaded,) = eng.start()
    assert loaded == ModelLoaded(
        ts_event=0,
        ts_recv=0,
        model_id="dt@v1",
        weights_hash=weights_hash(teacher),
        frozen_verified=True,
        model_name="dt",
        model_version=1,
        encoder_hash=teacher.encoder_hash,
        weights_sha256=rec.weights_sha256,
    )
    assert strat.target_return == 0.5  # the registry's recorded target
    with pytest.raises(ValueError, match="unknown parameter"):
        build_strategy(params(models, leverage=3))
    with pytest.raises(ValueError, match="exactly one of model, model_path, ensemble"):
        build_strategy(params(models, ensemble="dt@1,dt@1"))


def test_same_events_give_identical_decisions_twice(models: Path) -> None:
    events = market()
    first, eng1 = run(build_strategy(params(models)), events)
    second, eng2 = run(build_strategy(params(models)), events)
    d1 = [e for e in first if isinstance(e, Decision)]
    d2 = [e for e in second if isinstance(e, Decision)]
    assert d1 == d2 and first == second
    assert eng1.state_hash() == eng2.state_hash()
    # one decision per 1 s step from t = 1 s to 60 s (the last book is at 60.75 s)
    assert len(d1) == 60 and [d.ts_event for d in d1] == [S * i for i in range(1, 61)]
    actions = {d.action for d in d1}
    assert actions <= {"buy", "sell", "hold"} and {"buy", "sell"} <= actions
    for d in d1:
        f = dict(d.features)
        probs = (f["p_hold"], f["p_buy"], f["p_sell"])
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-12)
        assert d.confidence == max(probs)  # one model: confidence = max probability
        assert d.action == ("hold", "buy", "sell")[probs.index(max(probs))]
        assert d.model_id == "dt@v1"
        assert f"p(hold) {f['p_hold']:.4f}, p(buy) {f['p_buy']:.4f}" in d.reasoning
        assert f"size {f['size']:.4f} of equity, stop {f['stop']:.4%} from mid" in d.reasoning
        assert "model dt@v1 " in d.reasoning
    # episodes of 30 s: the timestep restarts and the return-to-go is the target again
    steps = [dict(d.features)["timestep"] for d in d1]
    assert steps == [float(i % 30) for i in range(60)]
    assert dict(d1[30].features)["return_to_go"] == 0.5
    # market orders keep the position within +-0.010 (a flip from +10 to -10 lots is 20)
    orders = [e for e in first if isinstance(e, OrderSubmitted)]
    assert orders and all(o.order_type == "market" and o.size <= 20 for o in orders)
    position = 0
    for o in orders:  # instant latency: every market order fills before the next step
        position += o.size if o.side == "buy" else -o.size
        assert -10 <= position <= 10
    assert eng1.ctx.position("BINANCE", "BTC-USDT-PERP") == position


def test_snapshot_restore_continues_identically(models: Path) -> None:
    events = market()
    whole, _ = run(build_strategy(params(models)), events)
    eng = Engine(EngineConfig(), [INST], build_strategy(params(models)), seed=1, latency=INSTANT)
    out = list(eng.start())
    for ev in events[:170]:
        out += eng.apply(ev)
    snap = eng.snapshot()
    eng2 = Engine(EngineConfig(), [INST], build_strategy(params(models)), seed=1, latency=INSTANT)
    eng2.restore(snap)
    for ev in events[170:]:
        out += eng2.apply(ev)
    assert out == whole


def test_frozen_policy_weights_unchanged_by_running(models: Path) -> None:
    strat = build_strategy(params(models))
    assert isinstance(strat, DTPolicyStrategy)
    (member,) = strat.members
    before = weights_hash(member.model)
    assert before == member.weights_hash
    run(strat, market())
    assert weights_hash(member.model) == before
    assert not member.model.training
    assert not any(p.requires_grad for p in member.model.encoder.parameters())


# -- ensemble ----------------------------------------------------------------------------


def constant_student(logits: tuple[float, ...]) -> DistilledPolicy:
    """A real DistilledPolicy whose output layer has zero weights and bias ``logits``
    (side logits, size logit, stop pre-softplus, risk): its outputs ignore the input."""
    model = DistilledPolicy(StudentConfig(hidden=4, n_layers=1), encoder(1))
    last = model.mlp[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(logits))
    return model.eval()


STOP_1PCT = math.log(math.e - 1)  # softplus = 1 -> stop 1 / 100


def test_combine_by_hand() -> None:
    a = MemberOutput((0.25, 0.5, 0.25), 0.5, 0.01)
    b = MemberOutput((0.2, 0.6, 0.2), 0.75, 0.02)
    c = MemberOutput((0.8, 0.1, 0.1), 0.25, 0.03)
    side, mean = combine([a, b, c])
    # votes buy, buy, hold -> buy; mean p = (1.25, 1.2, 0.55) / 3
    assert side == 1
    assert mean.probs == pytest.approx((1.25 / 3, 1.2 / 3, 0.55 / 3), abs=1e-15)
    assert (mean.size, mean.stop) == pytest.approx((0.5, 0.02), abs=1e-15)
    # the mean rule takes p(hold) 0.41667 over p(buy) 0.4
    assert combine([a, b, c], "mean")[0] == 0
    # a 1-1 tie (buy vs sell) goes to the higher mean: p(sell) (0.25 + 0.6) / 2 = 0.425
    # over p(buy) (0.5 + 0.2) / 2 = 0.35
    assert combine([a, MemberOutput((0.2, 0.2, 0.6), 0.5, 0.0)])[0] == 2


def test_ensemble_vote_in_the_kernel_by_hand() -> None:
    """Members' logits: A (0, ln 2, 0) -> p (1/4, 1/2, 1/4), buy; B (0, ln 3, 0) -> p
    (1/5, 3/5, 1/5), buy; C (ln 8, 0, 0) -> p (8/10, 1/10, 1/10), hold. Vote: buy, 2 to 1,
    although the mean p(hold) 0.41667 > p(buy) 0.4. Size logits 0, ln 3, -ln 3 -> 0.5,
    0.75, 0.25, mean 0.5; stop 1% each. Equity 10000 USDT, mid 60000.0: 0.5 x 10000 /
    60000 = 0.083 BTC, capped at max_position 0.010 -> a market buy of 10 lots."""
    ln2, ln3, ln8 = math.log(2), math.log(3), math.log(8)
    logits = [(0, ln2, 0, 0, STOP_1PCT, 0), (0, ln3, 0, ln3, STOP_1PCT, 0)]
    logits.append((ln8, 0, 0, -ln3, STOP_1PCT, 0))
    members = [
        PolicyMember.from_model(constant_student(lg), f"m{i}", 1, FEATURES)
        for i, lg in enumerate(logits, 1)
    ]
    strat = DTPolicyStrategy(members, step_ms=1000, max_position="0.010", target_return=0.0)
    book = BookSnapshot(
        S // 2, S // 2, "BINANCE", "BTC-USDT-PERP", 0, ((599_995, 100),), ((600_005, 100),)
    )
    out, _ = run(strat, [book, Trade(S, S, "BINANCE", "BTC-USDT-PERP", 0, "1", 600_005, 1, "buy")])
    assert [e.model_id for e in out if isinstance(e, ModelLoaded)] == ["m1@v1", "m2@v1", "m3@v1"]
    (d,) = [e for e in out if isinstance(e, Decision)]
    assert d.action == "buy" and d.model_id == "m1@v1+m2@v1+m3@v1"
    assert d.confidence == pytest.approx(0.4, abs=1e-7)  # the mean p of the voted side
    f = dict(d.features)
    assert (f["p_hold"], f["p_buy"], f["p_sell"]) == pytest.approx(
        (1.25 / 3, 0.4, 0.55 / 3), abs=1e-7
    )
    assert (f["size"], f["stop"]) == pytest.approx((0.5, 0.01), abs=1e-7)
    assert (f["vote_0"], f["vote_1"], f["vote_2"]) == (1.0, 1.0, 0.0)
    assert "ensemble (vote): m1@v1 buy (0.5000), m2@v1 buy (0.6000), m3@v1 hold (0.8000)" in (
        d.reasoning
    )
    assert d.reasoning.startswith(
        "buy 0.010: p(hold) 0.4167, p(buy) 0.4000, p(sell) 0.1833; size 0.5000 of equity, "
        "stop 1.0000% from mid"
    )
    (o,) = [e for e in out if isinstance(e, OrderSubmitted)]
    assert (o.side, o.order_type, o.size, o.decision_id) == ("buy", "market", 10, d.decision_id)
    # the mean rule holds instead (no order)
    strat = DTPolicyStrategy(
        members, step_ms=1000, max_position="0.010", target_return=0.0, ensemble_rule="mean"
    )
    out, _ = run(strat, [book, Trade(S, S, "BINANCE", "BTC-USDT-PERP", 0, "1", 600_005, 1, "buy")])
    (d,) = [e for e in out if isinstance(e, Decision)]
    assert d.action == "hold" and d.confidence == pytest.approx(1.25 / 3, abs=1e-7)
    assert not [e for e in out if isinstance(e, OrderSubmitted)]


# -- distillation ------------------------------------------------------------------------

DISTILL = DistillConfig(
    student=StudentConfig(hidden=128, n_layers=2), steps=800, batch_size=64, seed=0
)


def test_distilled_student_matches_the_teacher(
    teacher: DecisionTransformer, models: Path, tmp_path: Path
) -> None:
    ds = dataset()
    before = weights_hash(teacher)
    student, res = distill(teacher, ds, DISTILL)
    assert weights_hash(teacher) == before  # the teacher is not trained
    assert student.encoder_hash == teacher.encoder_hash  # the same frozen encoder
    # measured: 95 of the 96 steps (0.98958) with these seeds; the teacher itself
    # matches the behaviour policy on 93 (0.96875)
    assert res.agreement >= 0.97
    targets = teacher_targets(teacher, ds)
    assert (targets["side_logits"].argmax(1).numpy() == ds.actions_side).mean() >= 0.95
    assert res.losses[-1] < res.losses[0] / 5
    again, res2 = distill(teacher, ds, DISTILL)
    assert res2.weights_hash == res.weights_hash == weights_hash(again)
    # registered next to its teacher as <name>-fast, it is what fast: true runs
    reg = ModelRegistry(models, clock=lambda: CREATED)
    reg.register("dt-fast", student, ModelMeta(feature_names=FEATURES, extra={"teacher": "dt@v1"}))
    fast = build_strategy(params(models, fast=True))
    assert isinstance(fast, DTPolicyStrategy)
    (member,) = fast.members
    assert (member.kind, member.model_id) == ("distilled", "dt-fast@v1")
    out1, _ = run(fast, market())
    out2, _ = run(build_strategy(params(models, fast=True)), market())
    d1 = [e for e in out1 if isinstance(e, Decision)]
    assert len(d1) == 60 and d1 == [e for e in out2 if isinstance(e, Decision)]
    assert weights_hash(member.model) == member.weights_hash


def test_strategies_and_the_registry_import_without_torch() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import kernel.engine, strategies, strategies.dt_policy, training.registry\n"
        "assert 'torch' not in sys.modules\n"
        "print(training.registry.ModelRegistry('does-not-exist').names())\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_decisions_journal_their_inputs_and_optionally_the_attention(models: Path) -> None:
    events = market()
    plain, _ = run(build_strategy(params(models)), events)
    with_attn, _ = run(build_strategy(params(models, journal_attention=True)), events)
    d_plain = [e for e in plain if isinstance(e, Decision)]
    d_attn = [e for e in with_attn if isinstance(e, Decision)]
    # the attention pass changes no decision
    assert [(d.action, d.confidence) for d in d_attn] == [(d.action, d.confidence) for d in d_plain]
    strategy = build_strategy(params(models))
    names = strategy.feature_names  # type: ignore[union-attr]
    for i, d in enumerate(d_attn):
        f = dict(d.features)
        assert all(n in f for n in names)  # the step's own feature row, by name
        attn = [v for k, v in d.features if k.startswith("attn.")]
        steps_in_context = min(i % 30 + 1, strategy.context_len)  # type: ignore[union-attr]
        assert len(attn) == steps_in_context
        assert math.isclose(sum(attn), 1.0, abs_tol=1e-5)
    assert not any(k.startswith("attn.") for d in d_plain for k, _ in d.features)


def test_anchored_context_matches_a_full_pass_over_its_window(models: Path) -> None:
    """context: anchored reads, at episode step tau, the steps from its anchor: growing
    to K steps, then restarting from the last K // 2; its key/value cache gives what a
    full forward over exactly that window gives."""
    events = market()
    strat = build_strategy(params(models, context="anchored"))
    assert isinstance(strat, DTPolicyStrategy)
    (member,) = strat.members
    k_len, half = member.context_len, member.context_len // 2
    checked = []
    original = strat._anchored

    def check(i_member, m, emb):  # type: ignore[no-untyped-def]
        h = original(i_member, m, emb)
        st = strat._st
        tau = st.ctx_timestep[-1]
        a, restart = anchor_schedule(tau, k_len)
        n = tau - a + 1
        assert 1 <= n <= k_len and (restart is None or n > half)
        batch = {
            "state_emb": torch.stack(list(emb)[-n:])[None],
            "returns_to_go": torch.tensor([st.ctx_rtg[-n:]], dtype=torch.float32),
            "timesteps": torch.tensor([st.ctx_timestep[-n:]], dtype=torch.int64),
            "actions_side": torch.tensor([st.ctx_side[-n:]], dtype=torch.int64),
            "actions_size": torch.tensor([st.ctx_size[-n:]], dtype=torch.float32),
            "actions_stop": torch.tensor([st.ctx_stop[-n:]], dtype=torch.float32),
        }
        full = m.model(batch)["side_logits"][0, -1]
        assert torch.allclose(m.model.heads(h)["side_logits"], full, atol=1e-5)
        checked.append(n)
        return h

    strat._anchored = check  # type: ignore[method-assign]
    out, _ = run(strat, events)
    assert len(checked) == 60
    # episodes of 30 steps: lengths 1..K, then K/2+1..K again and again; by hand
    cycle = list(range(half + 1, k_len + 1))
    episode = (list(range(1, k_len + 1)) + cycle * 30)[:30]
    assert checked == episode * 2
    assert anchor_schedule(k_len, k_len) == (k_len - half, k_len)
    decisions = [e for e in out if isinstance(e, Decision)]
    assert len(decisions) == 60


def test_anchored_context_is_deterministic_through_snapshot_restore(models: Path) -> None:
    events = market()
    p = params(models, context="anchored")
    whole, _ = run(build_strategy(p), events)
    again, _ = run(build_strategy(p), events)
    assert whole == again
    eng = Engine(EngineConfig(), [INST], build_strategy(p), seed=1, latency=INSTANT)
    out = list(eng.start())
    for ev in events[:170]:
        out += eng.apply(ev)
    snap = eng.snapshot()
    eng2 = Engine(EngineConfig(), [INST], build_strategy(p), seed=1, latency=INSTANT)
    eng2.restore(snap)
    for ev in events[170:]:
        out += eng2.apply(ev)
    assert out == whole  # the caches are rebuilt by replaying their steps: bit-identical
