"""A loaded DT as a policy: keeps its own context window and return-to-go across steps.

    >>> agent = Agent(model, config, target_return=-150)        # one env
    >>> obs, _ = env.reset(seed=0)
    >>> while True:
    ...     obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
    ...     agent.observe(reward)
    ...     if terminated or truncated: break

With `num_envs=N`, `act` takes (N, state_dim) observations and returns N actions: one batched
forward per step for N episodes run in lockstep (as in a gymnasium vector env).

For image models (config.architecture["state_encoder"] == "nature_cnn") `act` takes (N, H, W)
uint8 frames (as dtzoo.observations.make_env emits them) and stacks the last `frame_stack`
frames itself, repeating the first frame of an episode as the sampler does in training.
"""

from __future__ import annotations

import numpy as np
import torch

from dtzoo.checkpoint import ModelConfig
from dtzoo.data import ActionSpace


class Agent:
    def __init__(self, model, config: ModelConfig, target_return=None, num_envs: int = 1):
        """`target_return`: a number, one number per env, or None for the config's first."""
        self.model, self.config, self.n = model, config, num_envs
        self.device = next(model.parameters()).device
        self.space = ActionSpace(**config.action_space)
        self.K = config.architecture["context_len"]
        self.max_t = config.architecture["max_ep_len"] - 1
        self.mean = np.asarray(config.state_mean, dtype=np.float32)
        self.std = np.asarray(config.state_std, dtype=np.float32)
        obs_shape = config.architecture.get("obs_shape")
        self.image = config.architecture.get("state_encoder", "linear") == "nature_cnn"
        self.state_shape = tuple(obs_shape) if self.image else (config.state_dim,)
        self.target = config.target_returns[0] if target_return is None else target_return
        self.reset()

    def reset(self, target_return=None) -> None:
        """Start new episodes (optionally at a new target return)."""
        if target_return is not None:
            self.target = target_return
        n, K, c = self.n, self.K, self.config
        # the context window, newest step last; `filled` real steps from the right
        self.states = np.zeros((n, K, *self.state_shape), np.uint8 if self.image else np.float32)
        self.actions = np.zeros((n, K, c.act_dim), np.float32)
        self.rtg = np.zeros((n, K), np.float32)
        self.timesteps = np.zeros((n, K), np.int64)
        self.filled, self.t = 0, 0
        self.frames: np.ndarray | None = None  # image models: the current frame stack
        target = np.broadcast_to(np.asarray(self.target, np.float64), (n,))
        self.next_rtg = (target / c.reward_scale).astype(np.float32)

    def _push(self) -> None:
        for a in (self.states, self.actions, self.rtg, self.timesteps):
            a[:, :-1] = a[:, 1:].copy()
        self.filled = min(self.filled + 1, self.K)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Add s_t (and R_t) to the context, predict a_t, remember it, return it for the env."""
        if self.image:
            single = np.ndim(obs) == len(self.state_shape) - 1
            self._push()
            self.states[:, -1] = self._stack(np.asarray(obs, np.uint8).reshape(self.n, *self.state_shape[1:]))
        else:
            single = np.ndim(obs) == 1
            obs = np.asarray(obs, np.float32).reshape(self.n, -1)
            self._push()
            self.states[:, -1] = (obs - self.mean) / self.std
        self.actions[:, -1] = 0.0  # a_t is not known yet; the model reads it from s_t
        self.rtg[:, -1] = self.next_rtg
        self.timesteps[:, -1] = min(self.t, self.max_t)
        mask = np.zeros((self.n, self.K), bool)
        mask[:, self.K - self.filled:] = True
        dev = self.device
        pred = self.model(
            torch.from_numpy(self.states).to(dev), torch.from_numpy(self.actions).to(dev),
            torch.from_numpy(self.rtg).to(dev)[..., None], torch.from_numpy(self.timesteps).to(dev),
            torch.from_numpy(mask).to(dev),
        )[:, -1].float().cpu().numpy()
        if self.space.discrete:
            env_action = pred.argmax(-1)
            self.actions[:, -1] = np.eye(self.space.n, dtype=np.float32)[env_action]
        else:
            self.actions[:, -1] = pred
            env_action = self.space.to_env(pred)
        return env_action[0] if single else env_action

    def _stack(self, frame: np.ndarray) -> np.ndarray:
        """(n, H, W) newest frames -> (n, S, H, W): the previous stack shifted, or the first
        frame repeated at an episode's start (as SegmentSampler clamps at the start)."""
        if self.t == 0 or self.frames is None:
            self.frames = np.repeat(frame[:, None], self.state_shape[0], axis=1)
        else:
            self.frames = np.concatenate([self.frames[:, 1:], frame[:, None]], axis=1)
        return self.frames

    def observe(self, reward) -> None:
        """Record r_t: the next return-to-go is R_t - r_t."""
        self.next_rtg = self.rtg[:, -1] - np.asarray(reward, np.float32).reshape(self.n) / self.config.reward_scale
        self.t += 1


class AgentPolicy:
    """An Agent as a batched data-collection policy (see dtzoo.collect): one context per row.

    >>> prepare_dataset("me/pendulum/dt-v0", "Pendulum-v1", policy=AgentPolicy(model, config))
    """

    def __init__(self, model, config: ModelConfig, target_return: float | None = None):
        self.model, self.config, self.target = model, config, target_return
        self.__name__ = f"dtzoo:{config.model_id}"
        self.agent: Agent | None = None

    def reset(self, n: int) -> None:
        self.agent = Agent(self.model, self.config, self.target, num_envs=n)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.agent is None or self.agent.n != len(obs):
            self.reset(len(obs))
        obs = np.asarray(obs)
        return self.agent.act(obs if self.agent.image else obs.reshape(len(obs), -1))

    def observe(self, rewards: np.ndarray, done: np.ndarray) -> None:
        self.agent.observe(rewards)
