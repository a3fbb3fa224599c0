"""Make a Minari dataset from a policy, locally: scripted experts, a noise ladder, seeds.

    >>> ds = prepare_dataset("dtzoo/pendulum/scripted-v0", "Pendulum-v1", policy="scripted",
    ...                      episodes=100, noise=[0.0, 0.25, 0.5, 1.0, 2.0], seed=0)
    >>> ds.total_episodes, ds.total_steps
    (100, 20000)
    >>> eps = collect_episodes("CartPole-v1", scripted_policy("CartPole-v1"), episodes=10)
    >>> float(episode_returns(eps).mean())
    500.0

Policies are batched: a policy maps observations of shape ``(B, *obs_shape)`` to actions of
shape ``(B, *act_shape)`` (``(B,)`` integers for a discrete space). Episodes run in lockstep
waves of up to ``num_envs``; row ``i`` of the batch belongs to the same episode for the whole
wave (a finished episode keeps feeding its last observation and its action is ignored), so a
stateful policy (a Decision Transformer, later) can keep per-row history. Such a policy may also
define ``reset(n)`` (called before each wave of ``n`` episodes) and ``observe(rewards, done)``
(called after each step with ``(n,)`` arrays; finished rows get reward 0). A policy that plans
on the env's state (the BabyAI bot) may define ``bind(envs)`` (called after each wave's resets
with that wave's envs) and ``observe_actions(actions)`` (the actions actually taken, after
noise; finished rows repeat their last one).

``obs`` (an observation kind, see dtzoo.observations) builds envs with ``make_env``: the stored
observations are the preprocessed ones (84x84 greyscale frames, flattened MiniGrid views).

Noise is applied outside the policy, per episode: a continuous action gets Gaussian noise with
std ``level * (high - low) / 2`` and is clipped to the bounds; a discrete action is replaced by
a uniformly random one with probability ``level``. Episodes are split evenly across the levels
in contiguous blocks (the first levels take the remainder).

Everything random derives from ``seed``: episode ``i`` resets its env with a seed drawn from
``SeedSequence(seed, spawn_key=(0, i))`` and draws its noise from a Generator on
``SeedSequence(seed, spawn_key=(1, i))``, so an episode is the same whatever the wave size, and
reset seeds do not coincide with the small integers used for evaluation episodes.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dtzoo.data import dataset_dir, datasets_root
from dtzoo.errors import DatasetError, UsageError
from dtzoo.observations import DEFAULT_KIND, ObservationKind, get_kind

if TYPE_CHECKING:
    import minari
    from minari.data_collector import EpisodeBuffer

__all__ = [
    "SCRIPTED",
    "Policy",
    "cartpole_expert",
    "collect_episodes",
    "episode_noise",
    "episode_returns",
    "measure_reference_scores",
    "pendulum_expert",
    "prepare_dataset",
    "random_policy",
    "returns_by_noise",
    "scripted_policy",
]

Policy = Callable[[np.ndarray], np.ndarray]
"""Batched policy: observations ``(B, *obs_shape)`` -> actions ``(B, *act_shape)``."""

# Version of what this module writes (metadata key "dtzoo_collect"); bump when episodes change.
COLLECT_FORMAT = 1

# Seed streams (SeedSequence spawn keys), kept apart so they never share random numbers.
_STREAM_RESET, _STREAM_NOISE, _STREAM_POLICY = 0, 1, 2


# --------------------------------------------------------------------------- scripted experts


def _pendulum_lqr_gain(
    g: float = 10.0, m: float = 1.0, l: float = 1.0, dt: float = 0.05
) -> np.ndarray:
    """Discrete-time LQR gain for Pendulum-v1 linearised at the top, with the env's own cost.

    Pendulum-v1 integrates thdot' = thdot + (3g/2l sin th + 3/(m l^2) u) dt, th' = th + thdot' dt
    and charges th^2 + 0.1 thdot^2 + 0.001 u^2 per step; this is that system at th = 0.
    """
    a, b = 3.0 * g / (2.0 * l), 3.0 / (m * l * l)
    A = np.array([[1.0 + a * dt * dt, dt], [a * dt, 1.0]])
    B = np.array([[b * dt * dt], [b * dt]])
    Q, R = np.diag([1.0, 0.1]), np.array([[0.001]])
    P = Q.copy()
    for _ in range(1000):  # Riccati iteration; converges to ~1e-12 in a few hundred steps
        K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        P = Q + A.T @ P @ (A - B @ K)
    return K[0]


_PENDULUM_K = _pendulum_lqr_gain()  # about [19.7, 5.26]


def pendulum_expert(obs: np.ndarray) -> np.ndarray:
    """Pendulum-v1 expert: energy-pumping swing-up, LQR balance within 53 degrees of the top.

    ``obs`` is ``(B, 3)`` rows of ``[cos th, sin th, thdot]``; returns ``(B, 1)`` float32 torques
    in [-2, 2]. Noiseless it averages about -150 over 200-step episodes (random: about -1200).

        >>> pendulum_expert(np.array([[-1.0, 0.0, 0.0]]))  # hanging still: start pumping
        array([[0.6]], dtype=float32)
    """
    obs = np.asarray(obs, dtype=np.float64).reshape(-1, 3)
    cos_th, sin_th, thdot = obs[:, 0], obs[:, 1], obs[:, 2]
    th = np.arctan2(sin_th, cos_th)  # 0 is upright, in (-pi, pi]
    # Energy per unit inertia, 0 when resting at the top: 0.5 thdot^2 + (3g/2l)(cos th - 1).
    energy = 0.5 * thdot**2 + 15.0 * (cos_th - 1.0)
    # dE/dt = 3 u thdot, so u ~ -thdot * E pumps energy towards 0; a floor on |thdot| lets it
    # start from rest at the bottom (where thdot = 0 would give no torque at all).
    pump = np.where(np.abs(thdot) < 0.1, np.where(thdot < 0, -0.1, 0.1), thdot)
    swing = 0.2 * pump * (0.0 - energy)
    balance = -(_PENDULUM_K[0] * th + _PENDULUM_K[1] * thdot)
    u = np.where(cos_th > 0.6, balance, swing)
    return np.clip(u, -2.0, 2.0).astype(np.float32)[:, None]


# Cart position x, cart velocity, pole angle, pole angular velocity (CartPole-v1 observation).
_CARTPOLE_W = np.array([0.1, 0.5, 10.0, 1.0])


def cartpole_expert(obs: np.ndarray) -> np.ndarray:
    """CartPole-v1 expert: push right when ``0.1 x + 0.5 xdot + 10 th + thdot > 0``.

    A PD law on the pole angle plus a weak one on the cart (same sign, as in the LQR for this
    system: to bring the cart back the pole must first lean towards the centre). Returns
    ``(B,)`` int64 actions; noiseless it holds the pole for all 500 steps.

        >>> cartpole_expert(np.array([[0.0, 0.0, 0.05, 0.0]]))   # pole leans right: push right
        array([1])
    """
    obs = np.asarray(obs, dtype=np.float64).reshape(-1, 4)
    return (obs @ _CARTPOLE_W > 0.0).astype(np.int64)


class BabyAIBotPolicy:
    """MiniGrid's BabyAI bot (minigrid.utils.baby_ai_bot) as a batched policy.

    It plans on each env's full state, so it is bound to the envs of a wave (``bind``) and told
    the actions actually taken (``observe_actions``), which keeps it on track under noise.
    """

    __name__ = "babyai-bot"

    def __init__(self) -> None:
        self.bots: list = []
        self.taken: list = []

    def bind(self, envs: Sequence[gym.Env]) -> None:
        from minigrid.utils.baby_ai_bot import BabyAIBot

        self.bots = [BabyAIBot(env.unwrapped) for env in envs]
        self.taken = [None] * len(envs)
        self.done = [False] * len(envs)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        out = np.zeros(len(obs), np.int64)
        for j, bot in enumerate(self.bots):
            if not self.done[j]:
                out[j] = int(bot.replan(self.taken[j]))
        return out

    def observe_actions(self, actions: np.ndarray) -> None:
        self.taken = [int(a) for a in actions]

    def observe(self, rewards: np.ndarray, done: np.ndarray) -> None:
        self.done = [bool(d) for d in done]


SCRIPTED: dict[str, Policy] = {
    "Pendulum-v1": pendulum_expert,
    "CartPole-v1": cartpole_expert,
    "BabyAI-GoToRedBallNoDists-v0": BabyAIBotPolicy(),
    "BabyAI-GoToRedBall-v0": BabyAIBotPolicy(),
    "BabyAI-GoToObj-v0": BabyAIBotPolicy(),
}
"""Scripted expert policies by gym id; add an entry to support a new env."""


def scripted_policy(gym_id: str) -> Policy:
    """The scripted expert for a gym id: ``scripted_policy("Pendulum-v1")(obs_batch)``.

    Raises UsageError (naming the available ids) when there is none.
    """
    try:
        return SCRIPTED[gym_id]
    except KeyError:
        raise UsageError(
            f"no scripted policy for gym id {gym_id!r}; available: {', '.join(sorted(SCRIPTED))}"
        ) from None


def random_policy(action_space: gym.Space, rng: np.random.Generator | int | None = None) -> Policy:
    """A uniformly random batched policy: ``random_policy(env.action_space, rng=0)``.

    Box actions are uniform within the bounds, Discrete ones uniform over the actions; other
    spaces fall back to ``action_space.sample()`` (seeded from ``rng``).
    """
    rng = np.random.default_rng(rng)
    if isinstance(action_space, spaces.Box):
        low, high = action_space.low, action_space.high
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise UsageError(
                f"cannot sample uniformly from an unbounded action space {action_space}"
            )

        def policy(obs: np.ndarray) -> np.ndarray:
            n = len(obs)
            return rng.uniform(low, high, size=(n, *action_space.shape)).astype(action_space.dtype)

    elif isinstance(action_space, spaces.Discrete):
        start, n_act = int(action_space.start), int(action_space.n)

        def policy(obs: np.ndarray) -> np.ndarray:
            return rng.integers(start, start + n_act, size=len(obs)).astype(np.int64)

    else:
        action_space.seed(int(rng.integers(2**32)))

        def policy(obs: np.ndarray) -> np.ndarray:
            return np.stack([np.asarray(action_space.sample()) for _ in range(len(obs))])

    policy.__name__ = "random"
    return policy


def _resolve_policy(
    policy: str | Policy, gym_id: str, action_space: gym.Space, seed: int
) -> tuple[Policy, str]:
    """Turn prepare_dataset's ``policy`` argument into a callable and an algorithm name.

    This is the hook for more policy sources (e.g. a zoo model id): add a branch here.
    """
    if callable(policy):
        return policy, getattr(policy, "__name__", type(policy).__name__)
    if policy == "scripted":
        return scripted_policy(gym_id), "dtzoo-scripted"
    if policy == "random":
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM_POLICY,)))
        return random_policy(action_space, rng), "random"
    raise UsageError(f"unknown policy {policy!r}: use 'scripted', 'random' or a callable policy")


# --------------------------------------------------------------------------- collection


def _noise_levels(episodes: int, noise: Sequence[float]) -> np.ndarray:
    """Per-episode noise levels: ``noise`` split evenly in contiguous blocks."""
    levels = [float(x) for x in noise]
    if not levels:
        raise UsageError("noise must list at least one level, e.g. [0.0]")
    if any(not np.isfinite(x) or x < 0 for x in levels):
        raise UsageError(f"noise levels must be finite and >= 0, got {levels}")
    counts = np.full(len(levels), episodes // len(levels))
    counts[: episodes % len(levels)] += 1
    return np.repeat(np.asarray(levels, dtype=np.float64), counts)


def _make_env(gym_id: str, obs: str | ObservationKind = DEFAULT_KIND, **kwargs: Any) -> gym.Env:
    """The kind's env (dtzoo.observations, the one env factory), an unknown id a UsageError."""
    return get_kind(obs).make_env(gym_id, **kwargs)


def _reset_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence(seed, spawn_key=(_STREAM_RESET, i)).generate_state(1)[0])


class _Noise:
    """Applies one episode's noise level to the policy's action, with its own Generator."""

    def __init__(self, space: gym.Space, level: float, rng: np.random.Generator):
        self.space, self.level, self.rng = space, level, rng
        if isinstance(space, spaces.Box):
            self.std = level * (space.high.astype(np.float64) - space.low.astype(np.float64)) / 2.0
            if level > 0 and not np.isfinite(self.std).all():
                raise UsageError(f"action noise needs finite action bounds, not {space}")
        elif not isinstance(space, spaces.Discrete) and level > 0:
            raise UsageError(
                f"action noise is only defined for Box and Discrete spaces, not {space}"
            )

    def __call__(self, action: np.ndarray) -> Any:
        space = self.space
        if isinstance(space, spaces.Box):
            a = np.asarray(action, dtype=np.float64).reshape(space.shape)
            if self.level > 0:
                a = a + self.std * self.rng.standard_normal(space.shape)
            return np.clip(a, space.low, space.high).astype(space.dtype)
        if isinstance(space, spaces.Discrete):
            a = int(np.asarray(action).reshape(()))
            if self.level > 0 and self.rng.random() < self.level:
                a = int(space.start) + int(self.rng.integers(space.n))
            return np.int64(a)
        return action


@dataclass
class _Episode:
    index: int
    reset_seed: int
    level: float
    noise: _Noise
    observations: list
    actions: list
    rewards: list
    terminations: list
    truncations: list


def collect_episodes(
    gym_id: str,
    policy: str | Policy,
    episodes: int,
    noise: Sequence[float] = (0.0,),
    seed: int = 0,
    max_episode_steps: int | None = None,
    *,
    num_envs: int = 64,
    obs: str | ObservationKind = DEFAULT_KIND,
) -> list[EpisodeBuffer]:
    """Roll out ``episodes`` episodes of ``policy`` in ``gym_id`` with a noise ladder.

        >>> eps = collect_episodes("Pendulum-v1", scripted_policy("Pendulum-v1"), episodes=10,
        ...                        noise=[0.0, 1.0], seed=0)
        >>> len(eps), len(eps[0]), eps[0].observations.shape, episode_noise(eps)[[0, 9]]
        (10, 200, (201, 3), array([0., 1.]))

    ``policy`` is a batched callable (see the module docstring) or "scripted" / "random".
    Returns Minari ``EpisodeBuffer`` objects (observations ``(T+1, ...)``, actions ``(T, ...)``
    in the action space's dtype, float64 rewards, bool terminations/truncations, the reset
    seed in ``seed`` and the noise level of every step in ``infos["noise"]``), ready for
    ``minari.create_dataset_from_buffers``. The same arguments give byte-identical arrays.
    """
    from minari.data_collector import EpisodeBuffer

    if episodes < 0:
        raise UsageError(f"episodes must be >= 0, got {episodes}")
    if num_envs < 1:
        raise UsageError(f"num_envs must be >= 1, got {num_envs}")
    levels = _noise_levels(episodes, noise)
    make_kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    envs = [_make_env(gym_id, obs, **make_kwargs) for _ in range(max(1, min(num_envs, episodes)))]
    space = envs[0].action_space
    if isinstance(policy, str):
        policy, _ = _resolve_policy(policy, gym_id, space, seed)

    out: list = []
    try:
        for start in range(0, episodes, num_envs):
            wave = [
                _Episode(
                    index=i,
                    reset_seed=_reset_seed(seed, i),
                    level=float(levels[i]),
                    noise=_Noise(
                        space,
                        float(levels[i]),
                        np.random.default_rng(
                            np.random.SeedSequence(seed, spawn_key=(_STREAM_NOISE, i))
                        ),
                    ),
                    observations=[],
                    actions=[],
                    rewards=[],
                    terminations=[],
                    truncations=[],
                )
                for i in range(start, min(start + num_envs, episodes))
            ]
            _run_wave(envs, wave, policy)
            for ep in wave:
                T = len(ep.rewards)
                out.append(
                    EpisodeBuffer(
                        id=None,
                        seed=ep.reset_seed,
                        observations=np.stack(ep.observations),
                        actions=(
                            np.stack(ep.actions)
                            if T
                            else np.zeros((0, *space.shape), dtype=space.dtype)
                        ),
                        rewards=np.asarray(ep.rewards, dtype=np.float64),
                        terminations=np.asarray(ep.terminations, dtype=bool),
                        truncations=np.asarray(ep.truncations, dtype=bool),
                        infos={"noise": [ep.level] * (T + 1)},
                    )
                )
    finally:
        for env in envs:
            env.close()
    return out


def _run_wave(envs: list, wave: list[_Episode], policy: Policy) -> None:
    """Step the episodes of one wave in lockstep until all have terminated or truncated."""
    n = len(wave)
    first = []
    for env, ep in zip(envs, wave):
        obs, _ = env.reset(seed=ep.reset_seed)
        ep.observations.append(obs)
        first.append(obs)
    batch = np.stack(first)
    active = np.ones(n, dtype=bool)
    if hasattr(policy, "reset"):
        policy.reset(n)
    if hasattr(policy, "bind"):
        policy.bind(envs[:n])
    while active.any():
        actions = np.asarray(policy(batch))
        if actions.shape[:1] != (n,):
            raise UsageError(
                f"policy returned actions of shape {actions.shape} for a batch of {n} observations"
            )
        rewards = np.zeros(n)
        taken = actions.copy()
        for j in np.flatnonzero(active):
            ep = wave[j]
            a = ep.noise(actions[j])
            taken[j] = a
            obs, reward, terminated, truncated, _ = envs[j].step(a)
            ep.observations.append(obs)
            ep.actions.append(a)
            ep.rewards.append(float(reward))
            ep.terminations.append(bool(terminated))
            ep.truncations.append(bool(truncated))
            batch[j] = obs
            rewards[j] = reward
            if terminated or truncated:
                active[j] = False
        if hasattr(policy, "observe_actions"):
            policy.observe_actions(taken)
        if hasattr(policy, "observe"):
            policy.observe(rewards, ~active)


def episode_returns(episodes: Sequence) -> np.ndarray:
    """Undiscounted return of each episode: ``episode_returns(collect_episodes(...))``."""
    return np.array([float(np.sum(ep.rewards)) for ep in episodes])


def episode_noise(episodes: Sequence) -> np.ndarray:
    """Noise level of each episode (from ``infos["noise"]``; NaN where not recorded)."""
    out = []
    for ep in episodes:
        infos = ep.infos or {}
        vals = infos.get("noise") if isinstance(infos, dict) else None
        out.append(
            float(np.asarray(vals).reshape(-1)[0]) if vals is not None and len(vals) else np.nan
        )
    return np.array(out)


def returns_by_noise(episodes: Sequence) -> dict[float, float]:
    """Mean return per noise level, in ladder order: ``{0.0: -151.2, 0.25: -160.3, ...}``."""
    rets, lv = episode_returns(episodes), episode_noise(episodes)
    order = list(dict.fromkeys(lv.tolist()))
    return {float(x): float(rets[lv == x].mean()) for x in order}


def measure_reference_scores(
    gym_id: str,
    episodes: int = 20,
    seed: int = 0,
    obs: str | ObservationKind = DEFAULT_KIND,
    max_episode_steps: int | None = None,
) -> dict[str, float]:
    """Mean return of a uniform random policy and of the noiseless scripted expert.

        >>> measure_reference_scores("CartPole-v1", episodes=20)
        {'random': 19.65, 'expert': 500.0}

    Raises UsageError when ``gym_id`` has no scripted expert.
    """
    expert = scripted_policy(gym_id)
    kw = {"obs": obs, "max_episode_steps": max_episode_steps}
    random_eps = collect_episodes(gym_id, "random", episodes, seed=seed, **kw)
    expert_eps = collect_episodes(gym_id, expert, episodes, seed=seed, **kw)
    return {
        "random": float(episode_returns(random_eps).mean()),
        "expert": float(episode_returns(expert_eps).mean()),
    }


# --------------------------------------------------------------------------- datasets

_REF_EPISODES = 100  # episodes per reference score in prepare_dataset (Minari's default too)
_WRITE_LOCK = threading.Lock()  # we repoint MINARI_DATASETS_PATH while writing (see below)


def prepare_dataset(
    dataset_id: str,
    gym_id: str,
    policy: str | Policy = "scripted",
    episodes: int = 100,
    noise: Sequence[float] = (0.0,),
    seed: int = 0,
    overwrite: bool = False,
    description: str | None = None,
    obs: str | ObservationKind = DEFAULT_KIND,
    max_episode_steps: int | None = None,
    ref_episodes: int | None = None,
) -> minari.MinariDataset:
    """Collect episodes and write them as a local Minari dataset (arrow format).

        >>> ds = prepare_dataset("dtzoo/cartpole/scripted-v0", "CartPole-v1", episodes=100,
        ...                      noise=[0.0, 0.1, 0.25, 0.5, 1.0], seed=0)
        >>> minari.load_dataset("dtzoo/cartpole/scripted-v0").total_episodes
        100

    If the dataset already exists it is returned as is (a warning says so when it was made
    with other arguments) unless ``overwrite=True``. ``obs`` picks the observation kind (the
    env comes from dtzoo.observations.make_env and the dataset stores its preprocessed
    observations; the recorded env spec is the unwrapped one). ``policy`` is "scripted",
    "random" or a
    batched callable. Reference scores (random and noiseless-expert mean returns over 100
    episodes) are stored as ``ref_min_score`` / ``ref_max_score`` when the env has a scripted
    expert; the collection arguments are stored under the metadata key ``dtzoo_collect``.

    Writing is atomic: the dataset is built under a hidden staging folder in the datasets
    root (with its real id, so its metadata is final) and renamed into place; a failure
    leaves no half-written dataset behind, and an overwritten dataset is replaced only once
    the new one is complete.
    """
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        namespace, _, _ = parse_dataset_id(dataset_id)
    except ValueError as e:
        raise UsageError(str(e)) from None
    params = {
        "format": COLLECT_FORMAT,
        "gym_id": gym_id,
        "policy": policy if isinstance(policy, str) else getattr(policy, "__name__", "callable"),
        "episodes": int(episodes),
        "noise": [float(x) for x in noise],
        "seed": int(seed),
    }
    kind = get_kind(obs)
    if not kind.implicit:  # vector datasets keep their metadata exactly as before
        params["obs"] = kind.name
    if max_episode_steps is not None:
        params["max_episode_steps"] = int(max_episode_steps)
    target = dataset_dir(dataset_id)
    remove_stale_staging(datasets_root())  # what killed writes left (and put back what they moved)
    if target.exists() and not overwrite:
        try:
            ds = minari.load_dataset(dataset_id)
        except Exception as e:  # noqa: BLE001 - minari raises many types for broken data
            raise DatasetError(
                f"{target} exists but is not a readable Minari dataset ({e}); "
                "pass overwrite=True to replace it"
            ) from None
        _warn_if_different(ds, dataset_id, params)
        return ds

    env = _make_env(gym_id, kind)
    env_spec = kind.recorded_spec(env)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    pol, algorithm_name = _resolve_policy(policy, gym_id, act_space, seed)
    kw = {"obs": kind, "max_episode_steps": max_episode_steps}
    buffers = collect_episodes(gym_id, pol, episodes, noise=noise, seed=seed, **kw)
    refs = (
        measure_reference_scores(gym_id, episodes=ref_episodes or _REF_EPISODES, seed=seed, **kw)
        if gym_id in SCRIPTED
        else None
    )
    if description is None:
        description = (
            f"{episodes} {gym_id} episodes from the {algorithm_name} policy with an action-noise "
            f"ladder {params['noise']} (episodes split evenly across levels; per-step level in "
            f"infos['noise']), seed {seed}. Made by dtzoo.collect.prepare_dataset."
        )
    params["returns_by_noise"] = {str(k): v for k, v in returns_by_noise(buffers).items()}
    params["gymnasium_version"] = gym.__version__
    params["numpy_version"] = np.__version__

    root = datasets_root()
    staging, lock_fd = _locked_staging(root)
    trash = staging / ".old"  # the dataset being replaced: inside staging, so it is found again
    with _WRITE_LOCK:
        try:
            # Minari records the dataset id inside metadata.json and resolves every path from
            # $MINARI_DATASETS_PATH at call time; pointing it at a hidden staging root (which
            # Minari's listings skip) writes a complete dataset under its real id there.
            staging.mkdir(parents=True, exist_ok=True)
            with _datasets_path_env(staging), warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message=r"`(code_permalink|author|author_email)` is set to None"
                )
                ds = minari.create_dataset_from_buffers(
                    dataset_id=dataset_id,
                    buffer=buffers,
                    env=env_spec,
                    eval_env=env_spec,
                    algorithm_name=algorithm_name,
                    observation_space=obs_space,
                    action_space=act_space,
                    ref_min_score=None if refs is None else refs["random"],
                    ref_max_score=None if refs is None else refs["expert"],
                    num_episodes_average_score=_REF_EPISODES,
                    description=description,
                    data_format="arrow",
                )
                ds.storage.update_metadata({"dtzoo_collect": params})
            if namespace is not None:
                _ensure_namespace(namespace)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # overwrite: swap the old one out only now
                os.rename(target, trash)
            try:
                os.rename(staging / dataset_id, target)
            except OSError:
                if trash.exists() and not target.exists():
                    os.rename(trash, target)
                elif target.exists() and not overwrite:
                    # another process finished the same dataset first: keep theirs
                    return minari.load_dataset(dataset_id)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            os.close(lock_fd)
    return minari.load_dataset(dataset_id)


_STAGING, _LEGACY_TRASH = ".dtzoo-staging-", ".dtzoo-trash-"


def _locked_staging(root: Path) -> tuple[Path, int]:
    """A hidden staging folder in `root`, locked for as long as this process writes it:
    made under another name and renamed once locked, so a cleaner never sees it unlocked."""
    from filelock import lock_descriptor

    root.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    new = root / f".dtzoo-new-{name}"
    new.mkdir()
    fd = os.open(new, os.O_RDONLY)
    lock_descriptor(fd)  # a new folder: free at once
    os.rename(new, root / f"{_STAGING}{name}")
    return root / f"{_STAGING}{name}", fd


def remove_stale_staging(root: Path) -> int:
    """Remove the staging folders of killed dataset writes (their lock is free: the writer is
    gone). A dataset that a killed overwrite had moved aside is renamed back first when its
    place is still empty, so a kill never loses the old dataset. Returns how many went.

    >>> remove_stale_staging(Path(os.environ["MINARI_DATASETS_PATH"]))
    0
    """
    from filelock import lock_descriptor

    n = 0
    for p in sorted(root.glob(".dtzoo-*")) if root.is_dir() else []:
        if not p.name.startswith((_STAGING, _LEGACY_TRASH)) or p.is_symlink() or not p.is_dir():
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            if not lock_descriptor(fd, blocking=False):
                continue  # a live writer
            _put_back(p / ".old" if p.name.startswith(_STAGING) else p, root)
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        finally:
            os.close(fd)
    return n


def _put_back(old: Path, root: Path) -> None:
    """Rename a dataset moved aside back to its id's place, if that place is empty."""
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        with open(old / "data" / "metadata.json") as f:
            dataset_id = json.load(f)["dataset_id"]
        parse_dataset_id(dataset_id)  # a well-formed id: no "..", no absolute path
    except (OSError, ValueError, KeyError, TypeError):
        return
    target = root / dataset_id
    if ".." not in Path(dataset_id).parts and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old, target)


class _datasets_path_env:
    """Temporarily set MINARI_DATASETS_PATH (restored, or removed, on exit)."""

    def __init__(self, path: Path):
        self.path, self.old = str(path), None

    def __enter__(self) -> None:
        self.old = os.environ.get("MINARI_DATASETS_PATH")
        os.environ["MINARI_DATASETS_PATH"] = self.path

    def __exit__(self, *exc: object) -> None:
        if self.old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = self.old


def _ensure_namespace(namespace: str) -> None:
    """Create the Minari namespace (and its parents' metadata) in the real root if missing."""
    from minari.namespace import create_namespace, list_local_namespaces

    if namespace not in list_local_namespaces():
        try:
            create_namespace(namespace)
        except ValueError:  # created meanwhile by another process
            if namespace not in list_local_namespaces():
                raise


def _warn_if_different(ds: Any, dataset_id: str, params: dict[str, Any]) -> None:
    """Warn when an existing dataset was collected with other arguments than asked for now."""
    stored = ds.storage.metadata.get("dtzoo_collect")
    if stored is None:
        return
    diff = [k for k in params if k != "format" and stored.get(k) != params[k]]
    if diff:
        was = ", ".join(f"{k}={stored.get(k)!r}" for k in diff)
        asked = ", ".join(f"{k}={params[k]!r}" for k in diff)
        warnings.warn(
            f"dataset {dataset_id!r} already exists with {was} (asked for {asked}); "
            "returning it unchanged: pass overwrite=True to rebuild it",
            UserWarning,
            stacklevel=3,
        )
