"""Observation kinds: how an env is built and how its raw observations become model inputs.

One object per kind decides both, so a dataset (downloaded or collected here) and the eval env
always see the same preprocessing. A registry env picks its kind with `obs:`; the kinds are the
`ObservationKind` objects in `KINDS` (`register` adds one, `get_kind` finds one, `kind_of` reads
a model's from its config):

- ``vector`` (default): flat float observations, z-normalised with dataset statistics.
- ``atari``: ALE v5 with Minari's ``atari/<game>/expert-v0`` convention (frameskip 4,
  ``repeat_action_probability=0``, minimal action set; the dataset stores raw 210x160x3 RGB
  frames), each frame turned into 84x84 greyscale uint8 as gymnasium's ``AtariPreprocessing``
  does (``cv2.cvtColor`` RGB->grey, ``cv2.resize`` with ``INTER_AREA``). The model stacks
  ``frame_stack`` frames on the fly and divides by 255 (Nature-DQN encoder). Episodes start
  with 0-30 no-ops drawn from the reset seed (Mnih et al. 2015's evaluation protocol): without
  sticky actions ALE is deterministic, and every eval episode would otherwise be the same.
  The env applies the dataset transform itself rather than wrapping ``AtariPreprocessing``
  (``frame_skip=1, noop_max=30``): that wrapper returns the previous frame on the step that
  ends an episode (it leaves its frame-skip loop before reading the screen), and draws 1-30
  no-ops (never none, so other episodes for the same seeds).
- ``minigrid-flat``: MiniGrid's 7x7x3 symbolic view flattened, plus the direction (148 uint8).
- ``minigrid-onehot``: each of the 49 cells one-hot over object (11), colour (6) and state (3),
  plus a one-hot direction (4): 984 values in {0, 1}, stored as uint8.

    >>> env = make_env("ALE/Seaquest-v5", "atari")           # observations (84, 84) uint8
    >>> frames = get_kind("atari").transform(raw_rgb_batch)  # (N, 210, 160, 3) -> (N, 84, 84)

A new kind is one subclass, registered once (docs/architecture.md):

    >>> class Clipped(ObservationKind):
    ...     name = "vector-clipped"
    ...     def transform(self, obs): return np.clip(np.asarray(obs, np.float32), -1, 1)
    ...     def observation_space(self, raw): return gym.spaces.Box(-1, 1, raw.shape, np.float32)
    >>> register(Clipped())
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dtzoo.errors import DatasetError, UsageError

DEFAULT_KIND = "vector"  # the kind of a config.json or dataset that records none
ATARI_FRAME = (84, 84)
ATARI_RAW = (210, 160, 3)
# MiniGrid's symbolic encoding (minigrid.core.constants): OBJECT_TO_IDX, COLOR_TO_IDX, STATE_TO_IDX
MINIGRID_VIEW = (7, 7, 3)
MINIGRID_SIZES = (11, 6, 3)
MINIGRID_DIRECTIONS = 4
# What the Atari dataset convention fixes at gym.make (Minari atari/*/expert-v0 env specs).
ATARI_MAKE_KWARGS = {"frameskip": 4, "repeat_action_probability": 0.0, "full_action_space": False}
ATARI_NOOP_MAX = 30  # no-op starts (Mnih et al. 2015)


class ObservationKind:
    """One observation kind: its env, its stored arrays, and what the model is given.

    The base class is a flat-vector kind: observations pass through `transform` (raw batch ->
    stored batch), are stored as `dtype` rows, z-normalised with dataset statistics and fed to
    a linear state embedding. Subclass it, set `name`, override what differs, `register` it.

        >>> kind = get_kind("minigrid-flat")
        >>> kind.transform({"image": views, "direction": dirs}).shape      # (N, 148)
        >>> env = kind.make_env("BabyAI-GoToRedBallNoDists-v0")              # emits (148,) rows
    """

    name: str = ""
    image: bool = False  # uint8 frames, scaled by 1/255 in the model and stacked on the fly
    frame_shape: tuple[int, ...] | None = None  # one stored frame (image kinds)
    default_frame_stack: int = 1  # frames per state when the registry does not say
    dtype: type = np.float32  # of the stored observations
    # The kind assumed where none is recorded: config.json and dataset metadata name no kind.
    implicit: bool = False

    # ------------------------------------------------------------------ data

    def transform(self, obs: Any) -> np.ndarray:
        """A batch of raw observations -> stored observations.

        Must be idempotent: datasets collected through `make_env` hold already transformed
        observations, downloaded ones raw observations, and both load through this."""
        return np.asarray(obs)

    @property
    def ndim(self) -> int:
        """Dimensions of a stored batch: (N, D) rows, or (N, *frame_shape) frames."""
        return 1 + len(self.frame_shape) if self.frame_shape else 2

    @property
    def stored_as(self) -> str:
        """What one stored observation is, for error messages."""
        if self.frame_shape:
            return "x".join(map(str, self.frame_shape)) + " frames"
        return "flat vector observations"

    def state_stats(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std over all observations (std floored at 1e-6, as in the DT code)."""
        obs = observations.astype(np.float64)
        return obs.mean(axis=0).astype(np.float32), (obs.std(axis=0) + 1e-6).astype(np.float32)

    def normalise(self, observations: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """Stored observations -> the per-step model inputs the sampler gathers from."""
        return ((observations - mean) / std).astype(np.float32)

    def segment_states(
        self,
        inputs: np.ndarray,
        idx: np.ndarray,
        ep_start: np.ndarray,
        mask: np.ndarray,
        frame_stack: int = 1,
    ) -> np.ndarray:
        """(B, K, state_dim) float32 states of steps `idx`, zero where `mask` is False."""
        return np.where(mask[..., None], inputs[idx], 0.0).astype(np.float32)

    # ------------------------------------------------------------------ envs

    def gym_kwargs(self) -> dict[str, Any]:
        """What the kind's dataset convention fixes at gym.make."""
        return {}

    def observation_space(self, raw: gym.Space) -> gym.Space | None:
        """The space of transformed observations, or None when the env's own is kept."""
        return None

    def wrap(self, env: gym.Env) -> gym.Env:
        """The env emitting stored-format observations (`transform` on each one)."""
        space = self.observation_space(env.observation_space)
        if space is None:
            return env
        return gym.wrappers.TransformObservation(
            env, lambda o: self.transform(_batch_of_one(o))[0], space
        )

    def make_env(self, gym_id: str, max_episode_steps: int | None = None, **kwargs: Any) -> gym.Env:
        """The env as dtzoo sees it, for collection and evaluation alike."""
        _register_optional(gym_id)
        kwargs = {**self.gym_kwargs(), **kwargs}
        if max_episode_steps is not None:
            kwargs["max_episode_steps"] = int(max_episode_steps)
        try:
            env = gym.make(gym_id, **kwargs)
        except (
            gym.error.NameNotFound,
            gym.error.NamespaceNotFound,
            gym.error.VersionNotFound,
            gym.error.DeprecatedEnv,
        ) as e:
            raise UsageError(f"unknown gym id {gym_id!r}: {e}") from None
        return self.wrap(env)

    def make_vec_env(self, gym_id: str, num_envs: int, max_episode_steps: int | None = None):
        """`num_envs` copies of `make_env` in a synchronous vector env."""
        return gym.vector.SyncVectorEnv(
            [lambda: self.make_env(gym_id, max_episode_steps) for _ in range(num_envs)]
        )

    def recorded_spec(self, env: gym.Env):
        """The env spec a dataset records: the bare env's (a wrapper holding a function, as
        `wrap` adds, has no serialisable spec)."""
        return env.unwrapped.spec

    # ------------------------------------------------------------------ config.json

    def describe(self, frame_stack: int = 1) -> dict[str, Any]:
        """The kind's own entries in config.json's `observation` block."""
        return {}

    def preprocessing(self, frame_stack: int = 1) -> dict[str, Any]:
        """What config.json records under `observation`: enough to rebuild the inputs at eval.

        >>> get_kind("minigrid-flat").preprocessing()
        {'kind': 'minigrid-flat', 'view': [7, 7, 3], 'direction': True, 'encoding': 'flat'}
        """
        return {"kind": self.name, **self.describe(frame_stack)}

    def observation_block(self, frame_stack: int = 1) -> dict[str, Any] | None:
        """config.json's `observation` block, or None for the implicit kind (its configs
        predate kinds and stay byte-for-byte as they were)."""
        return None if self.implicit else self.preprocessing(frame_stack)

    def state_encoder(self, frame_stack: int = 1) -> dict[str, Any]:
        """The architecture entries of the state encoder the model needs ({}: linear)."""
        return {}

    def memory_per_1k_frames(self, frame_stack: int = 1) -> dict[str, float]:
        """Bytes per 1000 stored frames, and what on-the-fly stacking saves over storing stacks."""
        raise UsageError(f"{self.name!r} is not an image kind")

    def __repr__(self) -> str:
        return f"<observation kind {self.name!r}>"


def _batch_of_one(obs: Any) -> Any:
    """One env observation as a batch of one (dicts key by key)."""
    if isinstance(obs, dict):
        return {k: np.asarray(v)[None] for k, v in obs.items()}
    return np.asarray(obs)[None]


class VectorKind(ObservationKind):
    """Flat float observations from a plain `gym.make` env."""

    name = DEFAULT_KIND
    implicit = True

    def make_vec_env(self, gym_id: str, num_envs: int, max_episode_steps: int | None = None):
        if max_episode_steps is None:  # the env's own vector entry point where it has one
            return gym.make_vec(gym_id, num_envs=num_envs, vectorization_mode="sync")
        return super().make_vec_env(gym_id, num_envs, max_episode_steps)

    def recorded_spec(self, env: gym.Env):
        return env.spec  # gym.make's spec (time limit included), as vector datasets record it


class ImageKind(ObservationKind):
    """uint8 frames: no statistics, /255 in the Nature-DQN encoder, `frame_stack` frames per
    state gathered on the fly (memory stays one frame per stored step)."""

    image = True
    dtype = np.uint8
    default_frame_stack = 4

    def state_stats(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)  # scaled by 1/255 instead

    def normalise(self, observations: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return observations  # never copied: frames are stacked per batch

    def segment_states(
        self,
        inputs: np.ndarray,
        idx: np.ndarray,
        ep_start: np.ndarray,
        mask: np.ndarray,
        frame_stack: int = 1,
    ) -> np.ndarray:
        """(B, K, S, H, W) uint8: each step's `frame_stack` latest frames, oldest first, indices
        clamped at its episode's start (as the Agent repeats an episode's first frame)."""
        back = np.arange(frame_stack - 1, -1, -1)
        frames = np.maximum(idx[..., None] - back, ep_start[:, None, None])  # (B, K, S)
        out = inputs[frames]
        out[~mask] = 0
        return out

    def state_encoder(self, frame_stack: int = 1) -> dict[str, Any]:
        return {"state_encoder": "nature_cnn", "obs_shape": [int(frame_stack), *self.frame_shape]}

    def memory_per_1k_frames(self, frame_stack: int = 1) -> dict[str, float]:
        per = int(np.prod(self.frame_shape))
        return {
            "stored_MB": per * 1000 / 1e6,
            "if_stacked_float32_MB": per * 4 * frame_stack * 1000 / 1e6,
        }


class AtariKind(ImageKind):
    """ALE with Minari's atari convention, 84x84 greyscale frames (see the module docstring)."""

    name = "atari"
    frame_shape = ATARI_FRAME

    def transform(self, obs: Any) -> np.ndarray:
        obs = np.asarray(obs)
        if obs.shape[1:] == ATARI_FRAME:  # already preprocessed (locally collected data)
            return obs.astype(np.uint8, copy=False)
        if obs.shape[1:] != ATARI_RAW:
            raise DatasetError(
                f"atari observations have shape {obs.shape[1:]}; expected raw "
                f"{ATARI_RAW} RGB or preprocessed {ATARI_FRAME} frames"
            )
        cv2 = _cv2()
        out = np.empty((len(obs), *ATARI_FRAME), np.uint8)
        for i, f in enumerate(obs):
            grey = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
            out[i] = cv2.resize(grey, ATARI_FRAME[::-1], interpolation=cv2.INTER_AREA)
        return out

    def gym_kwargs(self) -> dict[str, Any]:
        return dict(ATARI_MAKE_KWARGS)

    def observation_space(self, raw: gym.Space) -> gym.Space:
        return spaces.Box(0, 255, ATARI_FRAME, np.uint8)

    def wrap(self, env: gym.Env) -> gym.Env:
        return super().wrap(NoopStart(env, ATARI_NOOP_MAX))

    def describe(self, frame_stack: int = 1) -> dict[str, Any]:
        return {
            "frame_shape": list(ATARI_FRAME),
            "frame_stack": int(frame_stack),
            "scale": 1 / 255,
            "steps": [
                "rgb->grey (cv2.COLOR_RGB2GRAY)",
                "resize 84x84 (cv2.INTER_AREA)",
                "uint8",
                f"stack {frame_stack} frames (clamped at episode start)",
                "/255 in the state encoder",
            ],
        }


class MinigridKind(ObservationKind):
    """MiniGrid's symbolic 7x7x3 view plus the direction, flat or one-hot, as uint8 rows."""

    dtype = np.uint8

    def __init__(self, onehot: bool):
        self.onehot = onehot
        self.name = "minigrid-onehot" if onehot else "minigrid-flat"
        self.width = 49 * sum(MINIGRID_SIZES) + MINIGRID_DIRECTIONS if onehot else 49 * 3 + 1

    def transform(self, obs: Any) -> np.ndarray:
        if not isinstance(obs, dict):  # already flattened (locally collected data)
            arr = np.asarray(obs)
            if arr.ndim != 2 or arr.shape[1] != self.width:
                raise DatasetError(
                    f"minigrid observations have shape {arr.shape}; expected a dict "
                    f"(image, direction) or flat rows of {self.width}"
                )
            return arr.astype(np.uint8, copy=False)
        image = np.asarray(obs["image"]).astype(np.int64)
        direction = np.asarray(obs["direction"]).astype(np.int64).reshape(-1)
        n = len(image)
        if image.shape[1:] != MINIGRID_VIEW:
            raise DatasetError(
                f"minigrid image has shape {image.shape[1:]}, expected {MINIGRID_VIEW}"
            )
        if not self.onehot:
            return np.concatenate([image.reshape(n, -1), direction[:, None]], axis=1).astype(
                np.uint8
            )
        parts = [
            np.eye(size, dtype=np.uint8)[np.clip(image[..., c], 0, size - 1)].reshape(n, -1)
            for c, size in enumerate(MINIGRID_SIZES)
        ]
        parts.append(np.eye(MINIGRID_DIRECTIONS, dtype=np.uint8)[direction % MINIGRID_DIRECTIONS])
        return np.concatenate(parts, axis=1)

    def observation_space(self, raw: gym.Space) -> gym.Space:
        return spaces.Box(0, 255, (self.width,), np.uint8)

    def describe(self, frame_stack: int = 1) -> dict[str, Any]:
        return {
            "view": list(MINIGRID_VIEW),
            "direction": True,
            "encoding": "one-hot" if self.onehot else "flat",
        }


# ----------------------------------------------------------------------------- the registry

KINDS: dict[str, ObservationKind] = {}


def register(kind: ObservationKind) -> ObservationKind:
    """Make `kind` available by name (registry `obs:`, config.json, datasets); returns it.

    >>> register(Clipped())          # see the module docstring
    """
    if not kind.name:
        raise UsageError(f"{type(kind).__name__} has no name")
    KINDS[kind.name] = kind
    return kind


def get_kind(kind: str | ObservationKind) -> ObservationKind:
    """The registered kind of that name (a kind object passes through).

    >>> get_kind("atari").image
    True
    """
    if isinstance(kind, ObservationKind):
        return kind
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise UsageError(
            f"unknown observation kind {kind!r}: use one of {', '.join(KINDS)}"
        ) from None


def kind_of(config: Any) -> ObservationKind:
    """The observation kind of a model, from its config.json (`env.observation.kind`; none
    recorded means the default kind).

    >>> kind_of(load_model(run)[1]).name
    'vector'
    """
    env = config.env if hasattr(config, "env") else config["env"]
    return get_kind((env.get("observation") or {}).get("kind", DEFAULT_KIND))


for _kind in (VectorKind(), AtariKind(), MinigridKind(onehot=False), MinigridKind(onehot=True)):
    register(_kind)


# ----------------------------------------------------------------------------- envs


def _cv2():
    try:
        import cv2
    except ImportError:
        raise UsageError("Atari preprocessing needs OpenCV: pip install 'dtzoo[atari]'") from None
    return cv2


def _register_optional(gym_id: str) -> None:
    """Import the package that registers `gym_id` (ale-py for ALE/, minigrid for
    MiniGrid/BabyAI)."""
    if gym_id.startswith("ALE/"):
        try:
            import ale_py
        except ImportError:
            raise UsageError(f"{gym_id} needs ale-py: pip install 'dtzoo[atari]'") from None
        gym.register_envs(ale_py)
    elif gym_id.startswith(("MiniGrid-", "BabyAI-")):
        try:
            import minigrid
        except ImportError:
            raise UsageError(f"{gym_id} needs minigrid: pip install 'dtzoo[minigrid]'") from None
        gym.register_envs(minigrid)


def make_env(
    gym_id: str,
    kind: str | ObservationKind = DEFAULT_KIND,
    max_episode_steps: int | None = None,
    **kwargs: Any,
) -> gym.Env:
    """`get_kind(kind).make_env(...)`: the one env factory, for collection and evaluation."""
    return get_kind(kind).make_env(gym_id, max_episode_steps, **kwargs)


def make_vec_env(
    gym_id: str,
    kind: str | ObservationKind,
    num_envs: int,
    max_episode_steps: int | None = None,
):
    """`num_envs` copies of `make_env` in a synchronous vector env."""
    return get_kind(kind).make_vec_env(gym_id, num_envs, max_episode_steps)


class NoopStart(gym.Wrapper):
    """After reset, take U{0..noop_max} no-op actions (action 0) drawn from the env's seeded RNG,
    so seeded episodes differ (AtariPreprocessing's noop_max draws U{1..noop_max} instead)."""

    def __init__(self, env: gym.Env, noop_max: int):
        super().__init__(env)
        self.noop_max = noop_max

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        for _ in range(int(self.env.unwrapped.np_random.integers(0, self.noop_max + 1))):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info
