"""A loaded DT as a policy: keeps its own context window and return-to-go across steps.

    >>> agent = Agent(model, target_return=-150)        # one env; config from model.config
    >>> obs, _ = env.reset(seed=0)
    >>> while True:
    ...     obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
    ...     agent.observe(reward)
    ...     if terminated or truncated: break

With `num_envs=N`, `act` takes (N, state_dim) observations and returns N actions: one batched
forward per step for N episodes run in lockstep (as in a gymnasium vector env); `keep(rows)`
drops episodes that ended.

Each step runs the exact incremental path (`dtzoo.model.InferenceCache`: cached layer-0
keys/values, the newest state's query only in the last layer). With a hook attached, the model
in training mode, or `fast=False`, it runs the reference full-window forward instead, so hooks
see every token of the window. The cache is rebuilt from the window whenever it may be stale
(a new episode, a step on the reference path, a weight edited in place).

For image models (an encoder with config.architecture["obs_shape"]) `act` takes (N, H, W)
uint8 frames (as dtzoo.observations.make_env emits them) and stacks the last `frame_stack`
frames itself, repeating the first frame of an episode as the sampler does in training.
"""

from __future__ import annotations

import numpy as np
import torch

from dtzoo.checkpoint import ModelConfig
from dtzoo.data import ActionSpace
from dtzoo.families import TT
from dtzoo.model import InferenceCache, fast_path_ok

WINDOW_FIELDS = ("states", "actions", "rtg", "timesteps")


class Agent:
    def __init__(
        self,
        model,
        config: ModelConfig | None = None,
        target_return=None,
        num_envs: int = 1,
        fast: bool = True,
    ):
        """`config`: the model's ModelConfig (default `model.config`, which `dtzoo.load` sets);
        `target_return`: a number, one number per env, or None for the config's first;
        `fast=False` always runs the reference forward (for comparisons)."""
        config = config if config is not None else model.config
        self.model, self.config, self.n, self.fast = model, config, num_envs, fast
        self.device = next(model.parameters()).device
        self.space = ActionSpace(**config.action_space)
        self.K = config.architecture["context_len"]
        self.max_t = config.architecture["max_ep_len"] - 1
        self.mean = np.asarray(config.state_mean, dtype=np.float32)
        self.std = np.asarray(config.state_std, dtype=np.float32)
        # An encoder of frames records its input shape (frame_stack, H, W): whichever encoder
        # and observation kind, the agent then stacks frames; a linear embedding takes rows.
        obs_shape = config.architecture.get("obs_shape")
        self.image = obs_shape is not None
        self.state_shape = tuple(obs_shape) if self.image else (config.state_dim,)
        self.target = config.target_returns[0] if target_return is None else target_return
        self.reset()

    def reset(self, target_return=None) -> None:
        """Start new episodes (optionally at a new target return)."""
        if target_return is not None:
            self.target = target_return
        n, K, c = self.n, self.K, self.config
        # The window is the last K steps of 2K-step buffers, newest last; it slides by moving
        # `end` and is copied back to the front once every K steps (not every step).
        self._buf = {
            "states": np.zeros(
                (n, 2 * K, *self.state_shape), np.uint8 if self.image else np.float32
            ),
            "actions": np.zeros((n, 2 * K, c.act_dim), np.float32),
            "rtg": np.zeros((n, 2 * K), np.float32),
            "timesteps": np.zeros((n, 2 * K), np.int64),
        }
        self._end = K
        self.filled, self.t = 0, 0  # `filled` real steps from the right of the window
        self.frames: np.ndarray | None = None  # image models: the current frame stack
        self.cache: InferenceCache | None = None
        self._modules = list(self.model.modules())  # where hooks would be (checked each step)
        self._params = list(self.model.parameters())
        self._weights_seen: tuple[int, ...] = ()  # parameter versions the cache was built with
        self.output: np.ndarray | None = None  # the model's last prediction, (n, act_dim)
        target = np.broadcast_to(np.asarray(self.target, np.float64), (n,))
        self.next_rtg = (target / c.reward_scale).astype(np.float32)

    # the context window, (n, K, ...) views, newest step last
    states = property(lambda self: self._window("states"))
    actions = property(lambda self: self._window("actions"))
    rtg = property(lambda self: self._window("rtg"))
    timesteps = property(lambda self: self._window("timesteps"))

    def _window(self, name: str) -> np.ndarray:
        return self._buf[name][:, self._end - self.K : self._end]

    def _push(self) -> None:
        if self._end == 2 * self.K:
            for buf in self._buf.values():
                buf[:, : self.K] = buf[:, self.K :]
            self._end = self.K
        self._end += 1
        self.filled = min(self.filled + 1, self.K)

    def keep(self, rows) -> None:
        """Go on with these episodes only (indices into the current rows), e.g. those still
        running: later `act` calls take and return len(rows) rows."""
        rows = np.asarray(rows, np.int64)
        self._buf = {k: v[rows] for k, v in self._buf.items()}
        self.next_rtg = self.next_rtg[rows]
        if np.ndim(self.target):  # one target per row: a later reset() keeps the pairing
            self.target = np.asarray(self.target)[rows]
        if self.frames is not None:
            self.frames = self.frames[rows]
        if self.cache is not None:
            self.cache.keep(torch.from_numpy(rows).to(self.device))
        self.n = len(rows)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Add s_t (and R_t) to the context, predict a_t, remember it, return it for the env."""
        if self.image:
            single = np.ndim(obs) == len(self.state_shape) - 1
            frame = np.asarray(obs, np.uint8).reshape(self.n, *self.state_shape[1:])
            self._push()
            self.states[:, -1] = self._stack(frame)
        else:
            single = np.ndim(obs) == 1
            obs = np.asarray(obs, np.float32).reshape(self.n, -1)
            self._push()
            self.states[:, -1] = (obs - self.mean) / self.std
        self.actions[:, -1] = 0.0  # a_t is not known yet; the model reads it from s_t
        self.rtg[:, -1] = self.next_rtg
        self.timesteps[:, -1] = min(self.t, self.max_t)
        if self.fast and not self.model.training and fast_path_ok(self.model, self._modules):
            pred = self._predict_fast()
        else:
            self.cache = None  # stale once the reference path has run
            pred = self._predict_reference()
        pred = self.output = pred.float().cpu().numpy()  # tanh actions, or logits
        if self.space.discrete:
            env_action = pred.argmax(-1)
            self.actions[:, -1] = np.eye(self.space.n, dtype=np.float32)[env_action]
        else:
            self.actions[:, -1] = pred
            env_action = self.space.to_env(pred)
        return env_action[0] if single else env_action

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device)

    def _predict_reference(self) -> torch.Tensor:
        """The full-window forward (left padding masked out), as in the DT paper's get_action."""
        mask = np.zeros((self.n, self.K), bool)
        mask[:, self.K - self.filled :] = True
        s, a, r, t = (self._tensor(self._window(k)) for k in WINDOW_FIELDS)
        return self.model(s, a, r[..., None], t, self._tensor(mask))[:, -1]

    def _predict_fast(self) -> torch.Tensor:
        """The same prediction from the cache: a_{t-1}, R_t, s_t are the only new tokens."""
        versions = tuple(p._version for p in self._params)  # bumped by in-place weight edits
        if self.cache is None or versions != self._weights_seen:
            # a new episode, the reference path ran last step, or weights were edited
            self._weights_seen = versions
            self.cache = InferenceCache(self.model, self.n)
            f = self.filled
            window = (self._tensor(self._window(k)[:, -f:]) for k in WINDOW_FIELDS)
            return self.cache.prefill(*window)
        return self.cache.step(
            self._tensor(self.actions[:, -2]),
            self._tensor(self.timesteps[:, -2]),
            self._tensor(self.states[:, -1]),
            self._tensor(self.rtg[:, -1]),
            self._tensor(self.timesteps[:, -1]),
        )

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
        reward = np.asarray(reward, np.float32).reshape(self.n)
        self.next_rtg = self.rtg[:, -1] - reward / self.config.reward_scale
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


def make_agent(model, config: ModelConfig | None = None, target_return: float | None = None):
    """A one-env policy for any family: a DT's `Agent` at `target_return` (default: the
    config's first), a Trajectory Transformer's planner (dtzoo.tt.cell.tt_agent). Both have
    `.act(obs)` and `.observe(reward)`. `config` defaults to `model.config` (dtzoo.load).

    >>> agent = make_agent(dtzoo.load("pendulum-tt-1L-seed0"))
    """
    config = config or model.config
    if config.family == TT:
        from dtzoo.tt.cell import tt_agent

        return tt_agent(model, config)
    target = config.target_returns[0] if target_return is None else target_return
    return Agent(model, config, target_return=target)
