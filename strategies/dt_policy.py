"""The Decision Transformer (training/decision_transformer.py) as a kernel strategy.

Steps. Every ``step_ms`` of kernel time (timers on the grid of multiples of ``step_ms``,
from the first market event of the instrument on) the strategy takes one step, as the
trajectory export (journal_tools/trajectories.py) takes a hold step:

* row: the instrument's features now (``ctx.features``), in the model's feature order
  (the training dataset's ``feature_names``, recorded in the registry), float32; a
  step is skipped until the instrument has a two-sided book (the export's warm-up);
* state: the feature window ``[window, F]``: the rows of the last ``window - 1`` steps
  and, as the last row, this step's own row; before ``window`` rows exist the oldest row
  is repeated (:func:`feature_window`, the export's rule);
* return-to-go: ``target_return`` at each episode's first step (episodes of
  ``episode_minutes``, as the export's), then minus each step's reward, the export's
  reward: the differential Sharpe ratio of the equity's return since the last step minus
  the drawdown penalty (:class:`kernel.metrics.DifferentialSharpe`, moments over the
  whole run);
* context: the episode's last ``context_len`` steps (state, return-to-go, timestep in
  the episode, the action taken); the current step's action slot holds (hold, 0, 0),
  which its state token cannot see (causal attention).
  ``context: anchored`` (the fast option) reads instead the steps since an anchor: the
  context grows from the episode's first step to ``context_len`` (K) steps, then
  restarts from its last K // 2 steps (:func:`anchor_schedule`), so it holds K // 2 + 1
  to K steps. Every such context is a prefix of a training window (causal attention
  trains every position), and it lets one key/value cache per model
  (``DecisionTransformer.extend``) compute only the new step's tokens: about 4x less
  work per decision at the config/model.yaml size (benchmarks/inference.py). The
  default, ``sliding``, always reads the last K steps, as the training windows do.

The model (eval mode, ``torch.inference_mode()``; ``torch.set_num_threads(threads)``,
default 1, at start: the intra-op thread count changes the order of float reductions,
so it is fixed for reproducible outputs) gives side probabilities (softmax of the side
logits: hold, buy, sell), a size (fraction of equity) and a stop distance (fraction of
price). ``fast``: a distilled student (training/distill.py) reads the step alone.

Ensemble (``ensemble``: several models): each member votes its argmax side; the action
is the majority vote (a tie goes to the tied side of highest mean probability, then to
the lowest side index); ``ensemble_rule: mean`` takes the argmax of the mean
probabilities instead. Probabilities, size and stop are the members' means; the
reasoning names each member's vote and probability.

Every step is a ``Decision`` (``buy``, ``sell`` or ``hold``): its reasoning names the
probabilities, size, stop, return-to-go and the model(s) (``name@vN`` and weights hash);
its ``confidence`` is the probability of the chosen side (for one model: the max
probability); its ``model_id`` the model id(s) joined by ``+``; its ``features`` the
model's outputs (``p_hold``, ``p_buy``, ``p_sell``, ``size``, ``stop``, ``return_to_go``,
``timestep``, ``position``) and, with ``journal_inputs`` (default on), the step's own
feature row by name, the inputs an auditor asks for; with ``journal_attention``, also
``attn.0`` ... ``attn.<k-1>``: how the step's state token attends over the context's k
steps in the last block (heads averaged; one extra attention pass per decision), which
the dashboard draws. A buy / sell sends a
market order of ``size x equity / mid`` (rounded down to lots; the position stays within
``max_position``; on spot a sell only closes what is held), with a reduce-only
``stop_loss`` at ``stop`` from the mid when ``place_stops``; none while an order of its
own (other than its stops) is still open.

At start the strategy journals one ``ModelLoaded`` per model (``ctx.model_loaded``:
right after ``SessionStarted``, kernel time 0 in a replay). torch is imported only when
a model is loaded or run, so the kernel and this module import without it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from kernel import metrics
from kernel.config import ParamValue
from kernel.context import StrategyContext
from kernel.events import MarketEvent, Side
from kernel.instruments import InstrumentError
from strategies.base import BaseStrategy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from training.registry import ModelRecord

MS = 1_000_000
MINUTE_MS = 60_000
SIDES = ("hold", "buy", "sell")
HOLD, BUY, SELL = 0, 1, 2
TIMER = "dt_policy.step"
DEFAULT_TARGET_RETURN = 1.0


def feature_window(history: Sequence[np.ndarray], row: np.ndarray, window: int) -> np.ndarray:
    """The state ``[window, F]``: ``history`` (the last ``window - 1`` rows, oldest
    first) then ``row``; the oldest row repeated while there are fewer than ``window``.
    The rule of journal_tools/trajectories.py (``_RangeRun._state``)."""
    rows = [*history, row] if window > 1 else [row]
    if len(rows) < window:
        rows = [rows[0]] * (window - len(rows)) + rows
    return np.stack(rows)


@dataclass(frozen=True, eq=False)
class PolicyMember:
    """One model of the policy and its identity. ``kind``: ``decision_transformer`` or
    ``distilled``; ``frozen_verified``: loaded through the registry (file sha256, frozen
    encoder hash and weights hash all checked)."""

    model: Any  # torch.nn.Module (torch is imported lazily)
    name: str
    version: int
    kind: str
    weights_hash: str
    encoder_hash: str
    weights_sha256: str = ""
    frozen_verified: bool = False
    feature_names: tuple[str, ...] = ()
    window: int = 0
    target_return: float | None = None

    @property
    def model_id(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def context_len(self) -> int:
        return int(self.model.cfg.context_len) if self.kind == "decision_transformer" else 1

    @classmethod
    def from_record(cls, model: nn.Module, record: ModelRecord) -> PolicyMember:
        target = record.extra.get("target_return")
        return cls(
            model=model,
            name=record.name,
            version=record.version,
            kind=record.kind,
            weights_hash=record.weights_hash,
            encoder_hash=record.encoder_hash,
            weights_sha256=record.weights_sha256,
            frozen_verified=True,
            feature_names=record.feature_names,
            window=record.window,
            target_return=float(target) if target is not None else None,
        )

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        name: str,
        version: int = 0,
        feature_names: Sequence[str] = (),
    ) -> PolicyMember:
        """An in-memory model (not from the registry: ``frozen_verified`` False)."""
        from training.decision_transformer import DecisionTransformer
        from training.encoder import FeatureEncoder, weights_hash

        kind = "decision_transformer" if isinstance(model, DecisionTransformer) else "distilled"
        enc = model.encoder
        assert isinstance(enc, FeatureEncoder)
        return cls(
            model=model.eval(),
            name=name,
            version=version,
            kind=kind,
            weights_hash=weights_hash(model),
            encoder_hash=weights_hash(enc),
            feature_names=tuple(feature_names),
            window=enc.config.window,
        )


class _State(msgspec.Struct, array_like=True):
    """Everything the strategy knows (``snapshot_state``). Windows are float32 bytes."""

    instrument: str = ""
    steps: int = 0  # steps taken (the episode clock)
    history: list[bytes] = msgspec.field(default_factory=list)  # last window-1 rows
    ctx_states: list[bytes] = msgspec.field(default_factory=list)  # context windows
    ctx_rtg: list[float] = msgspec.field(default_factory=list)
    ctx_timestep: list[int] = msgspec.field(default_factory=list)
    ctx_side: list[int] = msgspec.field(default_factory=list)
    ctx_size: list[float] = msgspec.field(default_factory=list)
    ctx_stop: list[float] = msgspec.field(default_factory=list)
    rtg: float = 0.0
    prev_equity: int = 0
    peak: int = 0
    dsr: tuple[float, float] = (0.0, 0.0)
    decisions: int = 0
    orders: int = 0


@dataclass(frozen=True)
class MemberOutput:
    """One member's outputs at a step: side probabilities (hold, buy, sell), size, stop."""

    probs: tuple[float, float, float]
    size: float
    stop: float

    @property
    def vote(self) -> int:
        return max(range(3), key=lambda i: (self.probs[i], -i))


def combine(outputs: Sequence[MemberOutput], rule: str = "vote") -> tuple[int, MemberOutput]:
    """The ensemble's side and its mean outputs (see the module docstring)."""
    n = len(outputs)
    mean = tuple(sum(o.probs[i] for o in outputs) / n for i in range(3))
    if rule == "mean":
        side = max(range(3), key=lambda i: (mean[i], -i))
    else:
        votes = [0, 0, 0]
        for o in outputs:
            votes[o.vote] += 1
        side = max(range(3), key=lambda i: (votes[i], mean[i], -i))
    avg = MemberOutput(
        probs=(mean[0], mean[1], mean[2]),
        size=sum(o.size for o in outputs) / n,
        stop=sum(o.stop for o in outputs) / n,
    )
    return side, avg


class DTPolicyStrategy(BaseStrategy):
    """See the module docstring. ``members``: the loaded models (one, or an ensemble)."""

    name = "dt_policy"

    def __init__(
        self,
        members: Sequence[PolicyMember],
        *,
        instrument: str = "",
        target_return: float | None = None,
        step_ms: int = 10_000,
        episode_minutes: float = 60.0,
        max_position: str = "0.03",
        ensemble_rule: str = "vote",
        place_stops: bool = False,
        threads: int = 1,
        journal_inputs: bool = True,
        journal_attention: bool = False,
        context: str = "sliding",
        eta: float = metrics.DSR_ETA,
        dd_penalty: float = metrics.DSR_DD_PENALTY,
        dd_free: float = metrics.DSR_DD_FREE,
    ) -> None:
        if not members:
            raise ValueError("dt_policy: no model")
        names = {m.feature_names for m in members}
        windows = {m.window for m in members}
        if len(names) != 1 or len(windows) != 1:
            raise ValueError(
                "dt_policy: the ensemble's models read different states (feature names "
                f"or windows differ: {sorted(windows)})"
            )
        self.feature_names = members[0].feature_names
        self.window = members[0].window
        if not self.feature_names:
            raise ValueError("dt_policy: the model records no feature names")
        if ensemble_rule not in ("vote", "mean"):
            raise ValueError(f"dt_policy: ensemble_rule must be vote or mean: {ensemble_rule!r}")
        if step_ms <= 0 or episode_minutes * MINUTE_MS < step_ms or threads < 1:
            raise ValueError("dt_policy: need step_ms > 0, an episode >= one step, threads >= 1")
        self.members = tuple(members)
        self.instrument = instrument
        if target_return is None:
            recorded = [m.target_return for m in members if m.target_return is not None]
            target_return = recorded[0] if recorded else DEFAULT_TARGET_RETURN
        self.target_return = float(target_return)
        self.step_ns = int(step_ms) * MS
        self.episode_steps = max(1, int(episode_minutes * MINUTE_MS // step_ms))
        self.max_position_text = str(max_position)
        self.ensemble_rule = ensemble_rule
        self.place_stops = bool(place_stops)
        self.threads = int(threads)
        if context not in ("sliding", "anchored"):
            raise ValueError(f"dt_policy: context must be sliding or anchored: {context!r}")
        self.context = context
        self.journal_inputs = bool(journal_inputs)
        self.journal_attention = bool(journal_attention)
        self._last_row: np.ndarray | None = None
        self._attention: list[float] = []
        self.dsr = metrics.DifferentialSharpe(eta, dd_penalty, dd_free)
        self.context_len = max(m.context_len for m in self.members)
        self.model_id = "+".join(m.model_id for m in self.members)
        self._st = _State()
        self._history: deque[np.ndarray] = deque(maxlen=max(1, self.window - 1))
        self._ctx_states: deque[np.ndarray] = deque(maxlen=self.context_len)
        # per member: the frozen encoder's embeddings of the context windows (a cache:
        # rebuilt from the windows after restore_state)
        self._emb: list[deque[Any]] = [deque(maxlen=self.context_len) for _ in self.members]
        # anchored context: per member, two key/value caches (anchor, last step, cache)
        self._kv: list[dict[str, tuple[int, int, Any]]] = [{} for _ in self.members]

    # -- construction from config --------------------------------------------------------

    PARAMS = frozenset(
        {
            "model",
            "model_path",
            "registry",
            "ensemble",
            "fast",
            "instrument",
            "target_return",
            "step_ms",
            "episode_minutes",
            "max_position",
            "ensemble_rule",
            "place_stops",
            "threads",
            "journal_inputs",
            "journal_attention",
            "context",
        }
    )

    @classmethod
    def from_params(cls, params: dict[str, ParamValue]) -> DTPolicyStrategy:
        """``model`` (``name`` = latest, or ``name@N``) in ``registry`` (default
        ``models``), or ``model_path`` (a registry version directory); ``ensemble``:
        comma-separated model specs; ``fast: true``: the distilled model ``<name>-fast``
        instead of each named Decision Transformer. The rest go to the constructor."""
        unknown = sorted(set(params) - cls.PARAMS)
        if unknown:
            raise ValueError(
                f"dt_policy: unknown parameter(s) {unknown}; known: {sorted(cls.PARAMS)}"
            )
        p = dict(params)
        members = load_members(
            registry=str(p.pop("registry", "models")),
            model=str(p.pop("model", "")),
            model_path=str(p.pop("model_path", "")),
            ensemble=str(p.pop("ensemble", "")),
            fast=bool(p.pop("fast", False)),
        )
        return cls(members, **p)  # type: ignore[arg-type]

    # -- strategy ----------------------------------------------------------------------

    def on_start(self, ctx: StrategyContext) -> None:
        import torch

        torch.set_num_threads(self.threads)
        ctx.use_features()
        for m in self.members:
            ctx.model_loaded(
                m.model_id,
                m.weights_hash,
                frozen_verified=m.frozen_verified,
                model_name=m.name,
                model_version=m.version,
                encoder_hash=m.encoder_hash,
                weights_sha256=m.weights_sha256,
            )

    def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None:
        st = self._st
        if st.instrument:
            return
        key = f"{event.exchange}:{event.symbol}"
        if self.instrument and key != self.instrument:
            return
        try:
            ctx.instrument(event.exchange, event.symbol)
        except InstrumentError:
            return  # not a tradable instrument of this session
        st.instrument = key
        first = -(-ctx.now // self.step_ns) * self.step_ns  # the next grid time
        ctx.set_timer(first, TIMER)

    def on_timer(self, ctx: StrategyContext, name: str) -> None:
        if name != TIMER:
            return
        ctx.set_timer(ctx.now + self.step_ns, TIMER)
        exchange, _, symbol = self._st.instrument.partition(":")
        book = ctx.book(exchange, symbol)
        mid_x2 = book.mid_x2() if book is not None else None
        if not mid_x2:
            return  # warm-up: no two-sided book yet
        self._step(ctx, exchange, symbol, mid_x2 // 2)

    # -- one step ----------------------------------------------------------------------

    def _row(self, ctx: StrategyContext, exchange: str, symbol: str) -> np.ndarray:
        values = ctx.features(exchange, symbol)
        try:
            row = [values[n] for n in self.feature_names]
        except KeyError as exc:
            raise ValueError(
                f"dt_policy: feature {exc.args[0]!r} of the model is not computed by the "
                "kernel (check trading.features.params against the training data)"
            ) from None
        return np.asarray(row, dtype=np.float32)

    def _reward(self, equity: int) -> float:
        """The export's reward of the previous step, from the equity now."""
        st = self._st
        st.peak = max(st.peak, equity)
        prev = st.prev_equity
        ret = equity / prev - 1.0 if prev > 0 else 0.0
        drawdown = (st.peak - equity) / st.peak if st.peak > 0 else 0.0
        return self.dsr.step(ret, max(0.0, drawdown))

    def _step(self, ctx: StrategyContext, exchange: str, symbol: str, mid: int) -> None:
        st = self._st
        row = self._row(ctx, exchange, symbol)
        state = feature_window(self._history, row, self.window)
        self._history.append(row)
        self._last_row = row
        equity = ctx.equity()
        timestep = st.steps % self.episode_steps
        if st.steps == 0:
            st.peak = max(st.peak, equity)
        else:
            reward = self._reward(equity)
            st.rtg -= reward
        if timestep == 0:  # a new episode: the context starts again
            st.rtg = self.target_return
            self._clear_context()
        st.prev_equity = equity
        st.steps += 1
        outputs = self.infer_step(state, st.rtg, timestep)
        if len(outputs) == 1:
            side, out = outputs[0].vote, outputs[0]
        else:
            side, out = combine(outputs, self.ensemble_rule)
        st.ctx_side[-1], st.ctx_size[-1], st.ctx_stop[-1] = side, out.size, out.stop
        self._act(ctx, exchange, symbol, mid, side, out, outputs, timestep, equity)

    def infer_step(self, state: np.ndarray, rtg: float, timestep: int) -> list[MemberOutput]:
        """Append a step (state ``[window, F]`` float32, return-to-go, timestep) to the
        context and run every member on it: one decision's model work (what
        benchmarks/inference.py times). The step's action slot stays (hold, 0, 0)."""
        self._push(state, rtg, timestep)
        return self._infer()

    def _clear_context(self) -> None:
        st = self._st
        self._ctx_states.clear()
        for d in self._emb:
            d.clear()
        for kv in self._kv:
            kv.clear()
        st.ctx_rtg.clear()
        st.ctx_timestep.clear()
        st.ctx_side.clear()
        st.ctx_size.clear()
        st.ctx_stop.clear()

    def _push(self, state: np.ndarray, rtg: float, timestep: int) -> None:
        st = self._st
        self._ctx_states.append(state)
        st.ctx_rtg.append(rtg)
        st.ctx_timestep.append(timestep)
        st.ctx_side.append(HOLD)
        st.ctx_size.append(0.0)
        st.ctx_stop.append(0.0)
        if len(st.ctx_rtg) > self.context_len:
            for lst in (st.ctx_rtg, st.ctx_timestep, st.ctx_side, st.ctx_size, st.ctx_stop):
                del lst[0]
        for m, d in zip(self.members, self._emb, strict=True):
            if m.kind == "decision_transformer":
                d.append(_embed(m.model, state))

    def _rebuild_embeddings(self) -> None:
        for m, d in zip(self.members, self._emb, strict=True):
            d.clear()
            if m.kind == "decision_transformer":
                d.extend(_embed(m.model, s) for s in self._ctx_states)

    def _infer(self) -> list[MemberOutput]:
        import torch

        st = self._st
        outs: list[MemberOutput] = []
        with torch.inference_mode():
            for i_member, (m, emb) in enumerate(zip(self.members, self._emb, strict=True)):
                if m.kind == "decision_transformer" and self.context == "anchored":
                    res = m.model.heads(self._anchored(i_member, m, emb))
                    logits, size, stop = res["side_logits"], res["size"], res["stop"]
                elif m.kind == "decision_transformer":
                    k = min(len(emb), m.context_len)
                    batch = {
                        "state_emb": torch.stack(list(emb)[-k:])[None],
                        "returns_to_go": torch.tensor([st.ctx_rtg[-k:]], dtype=torch.float32),
                        "timesteps": torch.tensor([st.ctx_timestep[-k:]], dtype=torch.int64),
                        "actions_side": torch.tensor([st.ctx_side[-k:]], dtype=torch.int64),
                        "actions_size": torch.tensor([st.ctx_size[-k:]], dtype=torch.float32),
                        "actions_stop": torch.tensor([st.ctx_stop[-k:]], dtype=torch.float32),
                    }
                    res = m.model(batch)
                    if self.journal_attention and not outs:
                        self._attention = _step_attention(m.model, batch)
                    logits, size, stop = (
                        res["side_logits"][0, -1],
                        res["size"][0, -1],
                        res["stop"][0, -1],
                    )
                else:
                    batch = {
                        "states": torch.from_numpy(self._ctx_states[-1])[None],
                        "returns_to_go": torch.tensor([st.ctx_rtg[-1]], dtype=torch.float32),
                    }
                    res = m.model(batch)
                    logits, size, stop = res["side_logits"][0], res["size"][0], res["stop"][0]
                probs = torch.softmax(logits.double(), dim=0).tolist()
                outs.append(
                    MemberOutput(
                        probs=(probs[0], probs[1], probs[2]), size=float(size), stop=float(stop)
                    )
                )
        return outs

    # -- anchored context (key/value caches) ------------------------------------------

    def _step_batch(self, emb: Sequence[Any], j: int, hold: bool) -> dict[str, Any]:
        """One step of the context (list index ``j``) as a model batch of one step; with
        ``hold`` its action slot is (hold, 0, 0), as when it was first appended."""
        import torch

        st = self._st
        side, size, stop = (
            (HOLD, 0.0, 0.0) if hold else (st.ctx_side[j], st.ctx_size[j], st.ctx_stop[j])
        )
        return {
            "state_emb": emb[j][None, None],
            "returns_to_go": torch.tensor([[st.ctx_rtg[j]]], dtype=torch.float32),
            "timesteps": torch.tensor([[st.ctx_timestep[j]]], dtype=torch.int64),
            "actions_side": torch.tensor([[side]], dtype=torch.int64),
            "actions_size": torch.tensor([[size]], dtype=torch.float32),
            "actions_stop": torch.tensor([[stop]], dtype=torch.float32),
        }

    def _advance(self, model: Any, cache: Any, emb: Sequence[Any], j: int) -> Any:
        """Extend ``cache`` (which holds the steps before ``j`` of its anchor) by step j:
        the previous step's action token again (its action is now known), then step j's
        return-to-go, state and (hold) action tokens. Returns step j's state hidden."""
        import torch

        new = model.tokens(self._step_batch(emb, j, hold=True))
        if cache.length:
            cache.truncate(cache.length - 1)
            prev = model.tokens(self._step_batch(emb, j - 1, hold=False))[:, 2:3]
            new = torch.cat([prev, new], dim=1)
        return model.extend(cache, new)[0, -2]

    def _anchored(self, i_member: int, m: PolicyMember, emb: Sequence[Any]) -> Any:
        """The current step's state hidden with the anchored context (one key/value
        cache per member, see :func:`anchor_schedule`): each step adds its tokens only;
        when the context would pass ``K`` steps it restarts from the last ``K // 2``
        steps, computed in one pass. After a restore the cache is rebuilt by the same
        operations in the same order, so its values are bit-identical."""
        import torch

        from training.decision_transformer import KVCache

        st = self._st
        k_len = m.context_len
        tau = st.ctx_timestep[-1]
        last = len(st.ctx_timestep) - 1
        anchor, restart = anchor_schedule(tau, k_len)
        have = self._kv[i_member].get("ctx")
        if have is not None and have[0] == anchor and have[1] == tau - 1:
            cache = have[2]
        else:
            cache = KVCache(len(m.model.blocks))
            first = anchor
            if restart is not None and restart <= tau:  # the restart's one pass
                idx = [last - (tau - step) for step in range(anchor, restart)]
                batch = {
                    name: torch.cat([self._step_batch(emb, j, hold=False)[name] for j in idx], 1)
                    for name in ("state_emb", "returns_to_go", "timesteps", "actions_side",
                                 "actions_size", "actions_stop")
                }  # fmt: skip
                m.model.extend(cache, m.model.tokens(batch))
                first = restart
            for step in range(first, tau):
                self._advance(m.model, cache, emb, last - (tau - step))
        h = self._advance(m.model, cache, emb, last)
        self._kv[i_member]["ctx"] = (anchor, tau, cache)
        return h

    def _act(
        self,
        ctx: StrategyContext,
        exchange: str,
        symbol: str,
        mid: int,
        side: int,
        out: MemberOutput,
        outputs: Sequence[MemberOutput],
        timestep: int,
        equity: int,
    ) -> None:
        st = self._st
        inst = ctx.instrument(exchange, symbol)
        pos = ctx.position(exchange, symbol)
        max_pos = inst.size(self.max_position_text)
        working = [o for o in ctx.open_orders(exchange, symbol) if o.order_type != "stop_loss"]
        qty = 0
        order_side: Side | None = None
        note = ""
        if side != HOLD and working:
            note = "; no order: an order of its own is still working"
        elif side != HOLD:
            lot_value = inst.notional(mid, inst.lot_size)
            lots = math.floor(out.size * equity / lot_value) if lot_value > 0 and equity > 0 else 0
            want = lots * inst.lot_size
            if side == BUY:
                order_side, qty = "buy", min(want, max_pos - pos)
            else:
                room = pos + max_pos if inst.kind == "perp" else pos
                order_side, qty = "sell", min(want, room)
            if qty <= 0:
                note = (
                    f"; no order: size rounds to 0 or position {inst.size_text(pos)} is at "
                    f"its limit (max {self.max_position_text})"
                )
                qty = 0
        p = out.probs
        models = ", ".join(f"{m.model_id} {m.weights_hash[:12]}" for m in self.members)
        reasoning = (
            f"{SIDES[side]}{' ' + inst.size_text(qty) if qty else ''}: "
            f"p(hold) {p[0]:.4f}, p(buy) {p[1]:.4f}, p(sell) {p[2]:.4f}; size {out.size:.4f} "
            f"of equity, stop {out.stop:.4%} from mid; return-to-go {st.rtg:+.6f} "
            f"(target {self.target_return:g}), step {timestep}; model {models}"
        )
        if len(outputs) > 1:
            votes = ", ".join(
                f"{m.model_id} {SIDES[o.vote]} ({o.probs[o.vote]:.4f})"
                for m, o in zip(self.members, outputs, strict=True)
            )
            reasoning += f"; ensemble ({self.ensemble_rule}): {votes}"
        reasoning += note
        features: list[tuple[str, float]] = [
            ("p_hold", p[0]),
            ("p_buy", p[1]),
            ("p_sell", p[2]),
            ("size", out.size),
            ("stop", out.stop),
            ("return_to_go", st.rtg),
            ("timestep", float(timestep)),
            ("position", pos / 10**inst.size_decimals),
        ]
        if len(outputs) > 1:
            features += [(f"vote_{i}", float(o.vote)) for i, o in enumerate(outputs)]
        if self.journal_inputs and self._last_row is not None:
            # the step's own feature row (the newest row of the state), for the audit
            features += [
                (name, float(v))
                for name, v in zip(self.feature_names, self._last_row.tolist(), strict=True)
            ]
        if self.journal_attention and self._attention:
            features += [(f"attn.{i}", w) for i, w in enumerate(self._attention)]
        st.decisions += 1
        did = ctx.decide(
            exchange,
            symbol,
            SIDES[side],
            reasoning,
            features=tuple(features),
            confidence=p[side],
            model_id=self.model_id,
        )
        if not did or order_side is None or qty <= 0:
            return
        ctx.submit(exchange, symbol, order_side, qty, order_type="market", decision_id=did)
        st.orders += 1
        if self.place_stops and out.stop > 0:
            for o in ctx.open_orders(exchange, symbol):
                if o.order_type == "stop_loss":
                    ctx.cancel(o.order_id, "replaced by a new stop")
            sign = -1 if order_side == "buy" else 1
            trigger = round(mid * (1 + sign * out.stop) / inst.tick_size) * inst.tick_size
            if trigger > 0:
                ctx.submit(
                    exchange,
                    symbol,
                    "sell" if order_side == "buy" else "buy",
                    qty,
                    order_type="stop_loss",
                    trigger_price=trigger,
                    reduce_only=True,
                    decision_id=did,
                )

    # -- state -------------------------------------------------------------------------

    def snapshot_state(self) -> bytes:
        st = self._st
        st.history = [r.tobytes() for r in self._history]
        st.ctx_states = [s.tobytes() for s in self._ctx_states]
        st.dsr = self.dsr.snapshot()
        return msgspec.msgpack.encode(st)

    def restore_state(self, state: bytes) -> None:
        st = msgspec.msgpack.decode(state, type=_State) if state else _State()
        f = len(self.feature_names)
        self._history.clear()
        self._history.extend(np.frombuffer(b, dtype=np.float32).copy() for b in st.history)
        self._ctx_states.clear()
        self._ctx_states.extend(
            np.frombuffer(b, dtype=np.float32).reshape(self.window, f).copy() for b in st.ctx_states
        )
        self.dsr.restore(st.dsr)
        st.history, st.ctx_states = [], []
        self._st = st
        self._rebuild_embeddings()  # the embedding cache, from the restored windows
        for kv in self._kv:  # rebuilt at the next step by replaying its steps
            kv.clear()


def anchor_schedule(tau: int, k_len: int) -> tuple[int, int | None]:
    """The anchored context at episode step ``tau`` for a context of ``k_len`` steps:
    (first step of the context, the step at which that context restarted, None for the
    episode's first context). The context grows from step 0 to ``k_len`` steps; at the
    step that would make it ``k_len + 1`` it restarts with the last ``k_len // 2`` steps
    before that step, so it holds ``k_len // 2 + 1`` to ``k_len`` steps from then on."""
    half = max(1, k_len // 2)
    anchor, restart = 0, None
    while tau - anchor + 1 > k_len:
        restart = anchor + k_len
        anchor = restart - half
    return anchor, restart


#: Decision inputs that are the model's own outputs or the strategy's state, not market
#: features (journal_tools/dashboard.py leaves them out of the feature association).
OUTPUT_FEATURES = frozenset(
    {"p_hold", "p_buy", "p_sell", "size", "stop", "return_to_go", "timestep", "position"}
)


def _step_attention(model: Any, batch: dict[str, Any]) -> list[float]:
    """How the current state token attends over the context, per step: the last block's
    attention row of the last state token, averaged over heads, summed over each step's
    three tokens (return-to-go, state, action); oldest step first, sums to 1."""
    probs = model.attention_weights(batch)[-1][0]  # [H, 3K, 3K]
    row = probs[:, -2, :].mean(dim=0)  # the last state token
    k = row.shape[0] // 3
    per_step = row.reshape(k, 3).sum(dim=1)
    return [round(float(x), 6) for x in per_step]


def _embed(model: Any, state: np.ndarray) -> torch.Tensor:
    """The frozen encoder's embedding ``[d_enc]`` of one window (always batch 1, so a
    rebuilt cache is bit-identical to the live one)."""
    import torch

    with torch.inference_mode():
        out: torch.Tensor = model.embed_states(torch.from_numpy(state)[None])[0]
    return out


def load_members(
    *,
    registry: str = "models",
    model: str = "",
    model_path: str = "",
    ensemble: str = "",
    fast: bool = False,
) -> list[PolicyMember]:
    """The models a config names, each loaded and verified through the registry."""
    from training.registry import ModelRegistry, load_path

    specs = [s.strip() for s in ensemble.split(",") if s.strip()] if ensemble else []
    if sum(bool(x) for x in (model, model_path, specs)) != 1:
        raise ValueError("dt_policy: give exactly one of model, model_path, ensemble")
    reg = ModelRegistry(registry)
    if model_path:
        loaded = [load_path(model_path)]
    else:
        loaded = []
        for spec in specs or [model]:
            record = reg.resolve(spec)
            if fast and record.kind != "distilled":
                record = reg.latest(f"{record.name}-fast")
            loaded.append((reg.load_record(record), record))
    return [PolicyMember.from_record(m, r) for m, r in loaded]


__all__ = [
    "DTPolicyStrategy",
    "MemberOutput",
    "PolicyMember",
    "combine",
    "feature_window",
    "load_members",
]
