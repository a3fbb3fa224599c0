"""Observation kinds: how an env is built and how its raw observations become model inputs.

One place decides both, so a dataset (downloaded or collected here) and the eval env always see
the same preprocessing. A registry env picks its kind with `obs:`:

- ``vector`` (default): flat float observations, z-normalised with dataset statistics.
- ``atari``: ALE v5 with Minari's ``atari/<game>/expert-v0`` convention (frameskip 4,
  ``repeat_action_probability=0``, minimal action set; the dataset stores raw 210x160x3 RGB
  frames), each frame turned into 84x84 greyscale uint8 as gymnasium's ``AtariPreprocessing``
  does (``cv2.cvtColor`` RGB->grey, ``cv2.resize`` with ``INTER_AREA``). The model stacks
  ``frame_stack`` frames on the fly and divides by 255 (Nature-DQN encoder). Episodes start
  with 0-30 no-ops drawn from the reset seed (Mnih et al. 2015's evaluation protocol): without
  sticky actions ALE is deterministic, and every eval episode would otherwise be the same.
- ``minigrid-flat``: MiniGrid's 7x7x3 symbolic view flattened, plus the direction (148 uint8).
- ``minigrid-onehot``: each of the 49 cells one-hot over object (11), colour (6) and state (3),
  plus a one-hot direction (4): 984 values in {0, 1}, stored as uint8.

    >>> env = make_env("ALE/Seaquest-v5", "atari")           # observations (84, 84) uint8
    >>> frames = transform("atari", raw_rgb_batch)           # (N, 210, 160, 3) -> (N, 84, 84)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from dtzoo.errors import DatasetError, UsageError

OBS_KINDS = ("vector", "atari", "minigrid-flat", "minigrid-onehot")
ATARI_FRAME = (84, 84)
ATARI_RAW = (210, 160, 3)
# MiniGrid's symbolic encoding (minigrid.core.constants): OBJECT_TO_IDX, COLOR_TO_IDX, STATE_TO_IDX
MINIGRID_VIEW = (7, 7, 3)
MINIGRID_SIZES = (11, 6, 3)
MINIGRID_DIRECTIONS = 4
# What the Atari dataset convention fixes at gym.make (Minari atari/*/expert-v0 env specs).
ATARI_MAKE_KWARGS = {"frameskip": 4, "repeat_action_probability": 0.0, "full_action_space": False}
ATARI_NOOP_MAX = 30  # no-op starts (Mnih et al. 2015)


def check_kind(kind: str) -> str:
    """Validate an observation kind name; returns it."""
    if kind not in OBS_KINDS:
        raise UsageError(f"unknown observation kind {kind!r}: use one of {', '.join(OBS_KINDS)}")
    return kind


def is_image(kind: str) -> bool:
    """Image kinds are stored as uint8 frames, scaled by 1/255 and stacked on the fly."""
    return kind == "atari"


def frame_shape(kind: str) -> tuple[int, ...] | None:
    """Shape of one stored frame for image kinds (None for vector kinds)."""
    return ATARI_FRAME if kind == "atari" else None


def preprocessing(kind: str, frame_stack: int = 1) -> dict[str, Any]:
    """What config.json records under `observation`: enough to rebuild the inputs at eval."""
    out: dict[str, Any] = {"kind": kind}
    if is_image(kind):
        out.update(
            frame_shape=list(ATARI_FRAME),
            frame_stack=int(frame_stack),
            scale=1 / 255,
            steps=[
                "rgb->grey (cv2.COLOR_RGB2GRAY)",
                "resize 84x84 (cv2.INTER_AREA)",
                "uint8",
                f"stack {frame_stack} frames (clamped at episode start)",
                "/255 in the state encoder",
            ],
        )
    elif kind.startswith("minigrid"):
        out.update(
            view=list(MINIGRID_VIEW),
            direction=True,
            encoding="one-hot" if kind == "minigrid-onehot" else "flat",
        )
    return out


# ----------------------------------------------------------------------------- transforms


def _atari_frames(obs: np.ndarray) -> np.ndarray:
    obs = np.asarray(obs)
    if obs.shape[1:] == ATARI_FRAME:  # already preprocessed (locally collected data)
        return obs.astype(np.uint8, copy=False)
    if obs.shape[1:] != ATARI_RAW:
        raise DatasetError(
            f"atari observations have shape {obs.shape[1:]}; expected raw "
            f"{ATARI_RAW} RGB or preprocessed {ATARI_FRAME} frames"
        )
    try:
        import cv2
    except ImportError:
        raise UsageError("Atari preprocessing needs OpenCV: pip install 'dtzoo[atari]'") from None
    out = np.empty((len(obs), *ATARI_FRAME), np.uint8)
    for i, f in enumerate(obs):
        grey = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
        out[i] = cv2.resize(grey, ATARI_FRAME[::-1], interpolation=cv2.INTER_AREA)
    return out


def _minigrid(obs: Any, onehot: bool) -> np.ndarray:
    width = (49 * sum(MINIGRID_SIZES) + MINIGRID_DIRECTIONS) if onehot else (49 * 3 + 1)
    if not isinstance(obs, dict):  # already flattened (locally collected data)
        arr = np.asarray(obs)
        if arr.ndim != 2 or arr.shape[1] != width:
            raise DatasetError(
                f"minigrid observations have shape {arr.shape}; expected a dict "
                f"(image, direction) or flat rows of {width}"
            )
        return arr.astype(np.uint8, copy=False)
    image = np.asarray(obs["image"]).astype(np.int64)
    direction = np.asarray(obs["direction"]).astype(np.int64).reshape(-1)
    n = len(image)
    if image.shape[1:] != MINIGRID_VIEW:
        raise DatasetError(f"minigrid image has shape {image.shape[1:]}, expected {MINIGRID_VIEW}")
    if not onehot:
        return np.concatenate([image.reshape(n, -1), direction[:, None]], axis=1).astype(np.uint8)
    parts = [
        np.eye(size, dtype=np.uint8)[np.clip(image[..., c], 0, size - 1)].reshape(n, -1)
        for c, size in enumerate(MINIGRID_SIZES)
    ]
    parts.append(np.eye(MINIGRID_DIRECTIONS, dtype=np.uint8)[direction % MINIGRID_DIRECTIONS])
    return np.concatenate(parts, axis=1)


def transform(kind: str, obs: Any) -> np.ndarray:
    """A batch of raw observations -> stored model observations (see the module docstring).

    Idempotent: already transformed batches pass through, so datasets collected through
    `make_env` (preprocessed) and downloaded ones (raw) load the same way.
    """
    if kind == "vector":
        return np.asarray(obs)
    if kind == "atari":
        return _atari_frames(obs)
    if kind in ("minigrid-flat", "minigrid-onehot"):
        return _minigrid(obs, onehot=kind == "minigrid-onehot")
    raise UsageError(f"unknown observation kind {kind!r}")


# ----------------------------------------------------------------------------- envs


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
    gym_id: str, kind: str = "vector", max_episode_steps: int | None = None, **kwargs: Any
):
    """The env as dtzoo sees it, for collection and evaluation alike.

    Image and MiniGrid kinds wrap the env so it emits stored-format observations
    (`transform` applied to each observation); vector envs are plain `gym.make`.
    """
    from gymnasium import spaces

    check_kind(kind)
    _register_optional(gym_id)
    if kind == "atari":
        kwargs = {**ATARI_MAKE_KWARGS, **kwargs}
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
    if kind == "vector":
        return env
    if kind == "atari":
        env = NoopStart(env, ATARI_NOOP_MAX)
        space = spaces.Box(0, 255, ATARI_FRAME, np.uint8)
        fn = lambda o: _atari_frames(np.asarray(o)[None])[0]
    else:
        onehot = kind == "minigrid-onehot"
        width = (49 * sum(MINIGRID_SIZES) + MINIGRID_DIRECTIONS) if onehot else 49 * 3 + 1
        space = spaces.Box(0, 255, (width,), np.uint8)
        fn = lambda o: _minigrid(
            {"image": o["image"][None], "direction": [o["direction"]]}, onehot
        )[0]
    return gym.wrappers.TransformObservation(env, fn, space)


class NoopStart(gym.Wrapper):
    """After reset, take U{0..noop_max} no-op actions (action 0) drawn from the env's seeded RNG,
    so seeded episodes differ (as AtariPreprocessing's noop_max does)."""

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


def make_vec_env(gym_id: str, kind: str, num_envs: int, max_episode_steps: int | None = None):
    """`num_envs` copies of `make_env` in a synchronous vector env (vector kinds: gym.make_vec)."""
    if kind == "vector" and max_episode_steps is None:
        return gym.make_vec(gym_id, num_envs=num_envs, vectorization_mode="sync")
    return gym.vector.SyncVectorEnv(
        [lambda: make_env(gym_id, kind, max_episode_steps) for _ in range(num_envs)]
    )


def memory_per_1k_frames(kind: str, frame_stack: int = 1) -> dict[str, float]:
    """Bytes per 1000 stored frames, and what on-the-fly stacking saves over storing stacks."""
    shape = frame_shape(kind)
    if shape is None:
        raise UsageError(f"{kind!r} is not an image kind")
    per = int(np.prod(shape))
    return {
        "stored_MB": per * 1000 / 1e6,
        "if_stacked_float32_MB": per * 4 * frame_stack * 1000 / 1e6,
    }
