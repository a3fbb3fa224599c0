"""Faithful re-statements of the Decision Transformer paper's reference code, for comparison.

Source: kzl/decision-transformer, gym/experiment.py (`get_batch`, `discount_cumsum`) and
gym/decision_transformer/evaluation/evaluate_episodes.py (`evaluate_episode_rtg`) and
models/decision_transformer.py (`get_action`). Only the I/O around them is adapted (they take
our flattened Trajectories and our model); the per-sample / per-step Python loops are kept.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def discount_cumsum(x: np.ndarray, gamma: float) -> np.ndarray:
    out = np.zeros_like(x)
    out[-1] = x[-1]
    for t in reversed(range(x.shape[0] - 1)):
        out[t] = x[t] + gamma * out[t + 1]
    return out


def split_trajectories(data) -> list[dict]:
    """The DT paper keeps a list of per-episode dicts."""
    return [
        {
            "observations": data.observations[s : s + n],
            "actions": data.actions[s : s + n],
            "rewards": data.rewards[s : s + n],
        }
        for s, n in zip(data.starts, data.lengths)
    ]


def get_batch(
    trajectories: list[dict],
    batch_size: int,
    max_len: int,
    max_ep_len: int,
    state_mean: np.ndarray,
    state_std: np.ndarray,
    scale: float,
) -> tuple:
    """`get_batch` from gym/experiment.py (pct_traj = 1: every trajectory, length-weighted)."""
    state_dim = trajectories[0]["observations"].shape[1]
    act_dim = trajectories[0]["actions"].shape[1]
    traj_lens = np.array([len(t["observations"]) for t in trajectories])
    p_sample = traj_lens / traj_lens.sum()
    batch_inds = np.random.choice(
        np.arange(len(trajectories)), size=batch_size, replace=True, p=p_sample
    )
    s, a, r, rtg, timesteps, mask = [], [], [], [], [], []
    for i in range(batch_size):
        traj = trajectories[int(batch_inds[i])]
        si = random.randint(0, traj["rewards"].shape[0] - 1)
        s.append(traj["observations"][si : si + max_len].reshape(1, -1, state_dim))
        a.append(traj["actions"][si : si + max_len].reshape(1, -1, act_dim))
        r.append(traj["rewards"][si : si + max_len].reshape(1, -1, 1))
        timesteps.append(np.arange(si, si + s[-1].shape[1]).reshape(1, -1))
        timesteps[-1][timesteps[-1] >= max_ep_len] = max_ep_len - 1
        rtg.append(
            discount_cumsum(traj["rewards"][si:], gamma=1.0)[: s[-1].shape[1] + 1].reshape(1, -1, 1)
        )
        if rtg[-1].shape[1] <= s[-1].shape[1]:
            rtg[-1] = np.concatenate([rtg[-1], np.zeros((1, 1, 1))], axis=1)
        tlen = s[-1].shape[1]
        s[-1] = np.concatenate([np.zeros((1, max_len - tlen, state_dim)), s[-1]], axis=1)
        s[-1] = (s[-1] - state_mean) / state_std
        a[-1] = np.concatenate([np.ones((1, max_len - tlen, act_dim)) * -10.0, a[-1]], axis=1)
        r[-1] = np.concatenate([np.zeros((1, max_len - tlen, 1)), r[-1]], axis=1)
        rtg[-1] = np.concatenate([np.zeros((1, max_len - tlen, 1)), rtg[-1]], axis=1) / scale
        timesteps[-1] = np.concatenate([np.zeros((1, max_len - tlen)), timesteps[-1]], axis=1)
        mask.append(np.concatenate([np.zeros((1, max_len - tlen)), np.ones((1, tlen))], axis=1))
    s = torch.from_numpy(np.concatenate(s, axis=0)).to(dtype=torch.float32)
    a = torch.from_numpy(np.concatenate(a, axis=0)).to(dtype=torch.float32)
    r = torch.from_numpy(np.concatenate(r, axis=0)).to(dtype=torch.float32)
    rtg = torch.from_numpy(np.concatenate(rtg, axis=0)).to(dtype=torch.float32)
    timesteps = torch.from_numpy(np.concatenate(timesteps, axis=0)).to(dtype=torch.long)
    mask = torch.from_numpy(np.concatenate(mask, axis=0))
    return s, a, r, rtg, timesteps, mask


@torch.no_grad()
def get_action(model, states, actions, returns_to_go, timesteps, max_length: int) -> torch.Tensor:
    """models/decision_transformer.py `get_action`: left-pad the last K steps, one forward."""
    state_dim, act_dim = states.shape[-1], actions.shape[-1]
    states = states.reshape(1, -1, state_dim)[:, -max_length:]
    actions = actions.reshape(1, -1, act_dim)[:, -max_length:]
    returns_to_go = returns_to_go.reshape(1, -1, 1)[:, -max_length:]
    timesteps = timesteps.reshape(1, -1)[:, -max_length:]
    pad = max_length - states.shape[1]
    attention_mask = (
        torch.cat([torch.zeros(pad), torch.ones(states.shape[1])]).to(torch.long).reshape(1, -1)
    )
    states = torch.cat([torch.zeros((1, pad, state_dim)), states], dim=1).float()
    actions = torch.cat([torch.zeros((1, pad, act_dim)), actions], dim=1).float()
    returns_to_go = torch.cat([torch.zeros((1, pad, 1)), returns_to_go], dim=1).float()
    timesteps = torch.cat([torch.zeros((1, pad), dtype=torch.long), timesteps], dim=1)
    preds = model(states, actions, returns_to_go, timesteps, attention_mask.bool())
    return preds[0, -1]


def evaluate_episode_rtg(
    env,
    model,
    max_ep_len: int,
    scale: float,
    state_mean,
    state_std,
    target_return: float,
    seed: int,
    context_len: int,
) -> tuple[float, int]:
    """evaluation/evaluate_episodes.py `evaluate_episode_rtg`: one episode, one forward per step."""
    state_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    state_mean = torch.from_numpy(state_mean)
    state_std = torch.from_numpy(state_std)
    state, _ = env.reset(seed=seed)
    states = torch.from_numpy(state).reshape(1, state_dim).float()
    actions = torch.zeros((0, act_dim), dtype=torch.float32)
    rewards = torch.zeros(0, dtype=torch.float32)
    target_return = torch.tensor(target_return / scale, dtype=torch.float32).reshape(1, 1)
    timesteps = torch.tensor(0, dtype=torch.long).reshape(1, 1)
    episode_return, episode_length = 0.0, 0
    for t in range(max_ep_len):
        actions = torch.cat([actions, torch.zeros((1, act_dim))], dim=0)
        rewards = torch.cat([rewards, torch.zeros(1)])
        action = get_action(
            model, (states - state_mean) / state_std, actions, target_return, timesteps, context_len
        )
        actions[-1] = action
        action = action.numpy()
        state, reward, terminated, truncated, _ = env.step(action)
        cur_state = torch.from_numpy(state).reshape(1, state_dim).float()
        states = torch.cat([states, cur_state], dim=0)
        rewards[-1] = reward
        pred_return = target_return[0, -1] - (reward / scale)
        target_return = torch.cat([target_return, pred_return.reshape(1, 1)], dim=1)
        timesteps = torch.cat([timesteps, torch.ones((1, 1), dtype=torch.long) * (t + 1)], dim=1)
        episode_return += reward
        episode_length += 1
        if terminated or truncated:
            break
    return episode_return, episode_length
