"""Implicit Q-Learning (IQL): the offline actor-critic baseline next to the Decision
Transformer, with separate policy, value and Q networks (no shared parameters).

Why not on-policy PPO/A2C: their gradient is an expectation over actions drawn from the
CURRENT policy, and each update needs fresh rollouts of it. A fixed journal dataset holds
only the behaviour policy's actions; reusing them for an on-policy objective is biased
(importance ratios explode as the policy moves) and getting new rollouts means trading
(or simulating with the very model being judged). IQL never queries actions outside the
dataset: V is an upper expectile of Q over the dataset's actions (no max over unseen
actions, so no extrapolation error), Q is fit to r + gamma V(s'), and the policy is
advantage-weighted regression onto the dataset's actions.

State: the step's feature window flattened (``[W*F]``). Action for Q: the side (hold,
buy, sell; Q has one output per side); size and stop are regressed by the policy with the
same advantage weights. Rewards are the dataset's; the last step of an episode is
terminal.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.dataset import TrajectoryDataset
from training.quarantine import QUARANTINE_DAYS, Clock
from training.trainer import check_quarantine


def _mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_out),
    )


@dataclass(frozen=True, kw_only=True)
class IQLConfig:
    hidden: int = 64
    gamma: float = 0.99
    expectile: float = 0.7
    beta: float = 3.0
    """Inverse temperature of the advantage weights exp(beta A), clipped at 100."""
    tau: float = 0.005
    lr: float = 3e-4
    steps: int = 500
    batch_size: int = 64
    seed: int = 0
    quarantine_days: int = QUARANTINE_DAYS


class IQLAgent(nn.Module):
    """Twin Q (with Polyak targets), V, and a policy (side logits, size, stop)."""

    def __init__(self, state_dim: int, config: IQLConfig) -> None:
        super().__init__()
        self.config = config
        self.q1 = _mlp(state_dim, 3, config.hidden)
        self.q2 = _mlp(state_dim, 3, config.hidden)
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)
        self.value = _mlp(state_dim, 1, config.hidden)
        self.policy = _mlp(state_dim, 5, config.hidden)

    def act(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        """Policy outputs for flattened states ``[B, W*F]``."""
        out = self.policy(states)
        return {
            "side_logits": out[:, :3],
            "size": torch.sigmoid(out[:, 3]),
            "stop": F.softplus(out[:, 4]) / 100.0,  # learned in percent of price
        }


def train_iql(
    dataset: TrajectoryDataset, config: IQLConfig, clock: Clock | None = None
) -> tuple[IQLAgent, list[float]]:
    """Seeded CPU training; quarantine checked at start. Returns the agent and per-step
    total losses (value + Q + policy)."""
    check_quarantine(dataset, config.quarantine_days, clock)
    torch.manual_seed(config.seed)
    rng = np.random.Generator(np.random.PCG64(config.seed))
    n = len(dataset)
    s = torch.from_numpy(dataset.states.reshape(n, -1))
    nxt = np.minimum(np.arange(n) + 1, n - 1)
    done = np.ones(n, dtype=np.float32)
    done[:-1] = (dataset.episode_ids[1:] != dataset.episode_ids[:-1]).astype(np.float32)
    agent = IQLAgent(s.shape[1], config)
    opt_v = torch.optim.Adam(agent.value.parameters(), lr=config.lr)
    opt_q = torch.optim.Adam([*agent.q1.parameters(), *agent.q2.parameters()], lr=config.lr)
    opt_pi = torch.optim.Adam(agent.policy.parameters(), lr=config.lr)
    side = torch.from_numpy(dataset.actions_side)
    size = torch.from_numpy(dataset.actions_size)
    stop = torch.from_numpy(dataset.actions_stop)
    rew = torch.from_numpy(dataset.rewards)
    done_t = torch.from_numpy(done)
    nxt_t = torch.from_numpy(nxt)
    losses = []
    for _ in range(config.steps):
        i = torch.from_numpy(rng.integers(0, n, size=config.batch_size))
        x, a = s[i], side[i]
        with torch.no_grad():
            q_t = torch.minimum(agent.q1_target(x), agent.q2_target(x)).gather(1, a[:, None])[:, 0]
        # V: expectile regression of Q(s, a) over the dataset's actions
        u = q_t - agent.value(x)[:, 0]
        weight = torch.abs(config.expectile - (u < 0).float())
        loss_v = (weight * u**2).mean()
        opt_v.zero_grad(set_to_none=True)
        loss_v.backward()
        opt_v.step()
        # Q: r + gamma (1 - done) V(s')
        with torch.no_grad():
            target = rew[i] + config.gamma * (1 - done_t[i]) * agent.value(s[nxt_t[i]])[:, 0]
        q1 = agent.q1(x).gather(1, a[:, None])[:, 0]
        q2 = agent.q2(x).gather(1, a[:, None])[:, 0]
        loss_q = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        opt_q.zero_grad(set_to_none=True)
        loss_q.backward()  # type: ignore[no-untyped-call]
        opt_q.step()
        # policy: advantage-weighted regression onto the dataset's actions
        with torch.no_grad():
            adv = q_t - agent.value(x)[:, 0]
            w = torch.exp(config.beta * adv).clamp(max=100.0)
        out = agent.act(x)
        nll = F.cross_entropy(out["side_logits"], a, reduction="none")
        reg = (out["size"] - size[i]) ** 2 + (100.0 * (out["stop"] - stop[i])) ** 2
        loss_pi = (w * (nll + reg)).mean()
        opt_pi.zero_grad(set_to_none=True)
        loss_pi.backward()  # type: ignore[no-untyped-call]
        opt_pi.step()
        with torch.no_grad():
            for net, tgt in ((agent.q1, agent.q1_target), (agent.q2, agent.q2_target)):
                for p, pt in zip(net.parameters(), tgt.parameters(), strict=True):
                    pt.mul_(1 - config.tau).add_(p, alpha=config.tau)
        losses.append(float(loss_v.detach() + loss_q.detach() + loss_pi.detach()))
    agent.eval()
    return agent, losses


__all__ = ["IQLAgent", "IQLConfig", "train_iql"]
