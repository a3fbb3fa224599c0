"""Minari datasets -> flat arrays, normalisation statistics and vectorised batch sampling.

>>> data = load_trajectories("dtzoo/pendulum/scripted-v0")
>>> sampler = SegmentSampler(data, context_len=20, max_ep_len=200, reward_scale=100, seed=0)
>>> batch = sampler.sample(64)        # dict of numpy arrays, left-padded, with a mask
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dtzoo.errors import DatasetError
from dtzoo.observations import DEFAULT_KIND, ObservationKind, get_kind


@dataclass
class ActionSpace:
    """Continuous (`low`/`high` bounds) or discrete (`n` actions), as stored in config.json."""

    kind: str  # "box" | "discrete"
    low: list[float] | None = None
    high: list[float] | None = None
    n: int | None = None

    @property
    def discrete(self) -> bool:
        return self.kind == "discrete"

    @property
    def dim(self) -> int:
        return self.n if self.discrete else len(self.low)

    @classmethod
    def from_gym(cls, space: Any) -> "ActionSpace":
        from gymnasium import spaces

        if isinstance(space, spaces.Discrete):
            return cls("discrete", n=int(space.n))
        if isinstance(space, spaces.Box) and len(space.shape) == 1:
            if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
                # actions are mapped onto the model's tanh range [-1, 1]: bounds are required
                raise DatasetError(f"unsupported action space {space}: a Box needs finite bounds")
            return cls(
                "box", low=space.low.astype(float).tolist(), high=space.high.astype(float).tolist()
            )
        raise DatasetError(f"unsupported action space {space}: dtzoo handles Box(1-d) and Discrete")

    def to_model(self, actions: np.ndarray) -> np.ndarray:
        """Env actions -> model inputs: bounds mapped to [-1, 1], or one-hot."""
        if self.discrete:
            return np.eye(self.n, dtype=np.float32)[actions.astype(np.int64).reshape(-1)]
        low, high = np.asarray(self.low), np.asarray(self.high)
        return (2.0 * (actions - low) / (high - low) - 1.0).astype(np.float32)

    def to_env(self, outputs: np.ndarray) -> np.ndarray:
        """Model outputs -> env actions: argmax of logits, or [-1, 1] mapped to the bounds."""
        if self.discrete:
            return outputs.argmax(axis=-1)
        low, high = np.asarray(self.low), np.asarray(self.high)
        return (low + (outputs + 1.0) * 0.5 * (high - low)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        if self.discrete:
            return {"kind": "discrete", "n": self.n}
        return {"kind": "box", "low": self.low, "high": self.high}


@dataclass
class Trajectories:
    """A dataset flattened: step arrays plus episode boundaries (`starts`, `lengths`)."""

    observations: np.ndarray  # the observation before each action: (N, state_dim) float32, or
    # uint8 for the other kinds (dtzoo.observations): (N, 84, 84) frames, (N, D) MiniGrid views
    actions: np.ndarray  # (N, act_dim) float32 model-space actions
    rewards: np.ndarray  # (N,) float32
    starts: np.ndarray  # (E,) int64 index of each episode's first step
    lengths: np.ndarray  # (E,) int64
    action_space: ActionSpace
    dataset_id: str
    gym_id: str
    minari_version: str
    fingerprint: str
    ref_scores: dict[str, float] | None = None  # the dataset's own ref_min_score / ref_max_score
    obs_kind: str = DEFAULT_KIND  # the name of an observation kind (dtzoo.observations)

    @property
    def kind(self) -> ObservationKind:
        """The observation kind: how these observations become model inputs."""
        return get_kind(self.obs_kind)

    @property
    def image(self) -> bool:
        """Frames (N, H, W) uint8, scaled by 1/255 in the model and stacked by the sampler."""
        return self.kind.image

    @property
    def returns(self) -> np.ndarray:
        return np.add.reduceat(self.rewards.astype(np.float64), self.starts)

    @property
    def state_dim(self) -> int:
        return int(np.prod(self.observations.shape[1:]))

    def state_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std over all observations (std floored at 1e-6, as in the DT code).

        Image observations have none (empty arrays): they are scaled by 1/255 instead."""
        return self.kind.state_stats(self.observations)


def datasets_root() -> Path:
    """Where Minari keeps datasets ($MINARI_DATASETS_PATH or ~/.minari/datasets, read now and
    created if missing): Minari's own answer, so dtzoo never looks elsewhere than Minari.

    >>> datasets_root() / "dtzoo/pendulum/scripted-v0"
    """
    from minari.storage.datasets_root_dir import get_dataset_path

    return Path(get_dataset_path())


def dataset_dir(dataset_id: str) -> Path:
    return datasets_root() / dataset_id


def dataset_exists(dataset_id: str) -> bool:
    return (dataset_dir(dataset_id) / "data").is_dir()


def fingerprint(dataset_id: str) -> str:
    """sha256 over the dataset's data files (names and bytes), so any change is detected."""
    root = dataset_dir(dataset_id) / "data"
    h = hashlib.sha256()
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def load_trajectories(
    dataset_id: str, obs_kind: str | ObservationKind = DEFAULT_KIND
) -> Trajectories:
    """Read a local Minari dataset into flat arrays, validating shapes and values.

    `obs_kind` (dtzoo.observations) turns raw observations into stored ones: vector kinds stay
    float32 (N, state_dim); atari frames become (N, 84, 84) uint8; MiniGrid dicts flat uint8.
    """
    import minari

    kind = get_kind(obs_kind)

    if not dataset_exists(dataset_id):
        raise DatasetError(
            f"dataset {dataset_id!r} is not in {datasets_root()}: run `dtzoo data prepare ENV` "
            "or set MINARI_DATASETS_PATH to the folder that holds it"
        )
    try:
        ds = minari.load_dataset(dataset_id)
    except Exception as e:  # minari raises a zoo of types for broken metadata
        raise DatasetError(f"cannot open dataset {dataset_id!r}: {e}") from None
    space = ActionSpace.from_gym(ds.action_space)
    obs, acts, rews, lengths = [], [], [], []
    for ep in ds.iterate_episodes():
        o = kind.transform(ep.observations)
        if o.ndim != kind.ndim:
            raise DatasetError(
                f"dataset {dataset_id!r}: episode {ep.id} observations have shape "
                f"{o.shape}; dtzoo needs {kind.stored_as}"
            )
        T = len(ep.actions)
        obs.append(o[:T])
        acts.append(np.asarray(ep.actions).reshape(T, -1))
        rews.append(np.asarray(ep.rewards, dtype=np.float32))
        lengths.append(T)
    if not lengths or sum(lengths) == 0:
        raise DatasetError(f"dataset {dataset_id!r} has no episodes")
    observations = np.concatenate(obs).astype(kind.dtype, copy=False)
    raw_actions = np.concatenate(acts)
    rewards = np.concatenate(rews)
    for name, arr in (
        ("observations", observations),
        ("actions", raw_actions),
        ("rewards", rewards),
    ):
        if not np.isfinite(arr).all():
            raise DatasetError(f"dataset {dataset_id!r}: {name} contain NaN or inf")
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    keep = lengths_arr > 0  # zero-length episodes carry nothing to learn from
    starts = np.concatenate([[0], np.cumsum(lengths_arr)[:-1]])[keep]
    spec = ds.spec.env_spec
    return Trajectories(
        observations=observations,
        actions=space.to_model(raw_actions),
        rewards=rewards,
        starts=starts.astype(np.int64),
        lengths=lengths_arr[keep],
        action_space=space,
        dataset_id=dataset_id,
        gym_id=spec.id if spec is not None else "",
        minari_version=str(getattr(ds.spec, "minari_version", "")),
        fingerprint=fingerprint(dataset_id),
        ref_scores=_dataset_ref_scores(ds),
        obs_kind=kind.name,
    )


def _dataset_ref_scores(ds) -> dict[str, float] | None:
    meta = ds.storage.metadata
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    return None if lo is None or hi is None else {"random": float(lo), "expert": float(hi)}


class SeededSampler:
    """A sampler whose draws come from one numpy Generator, `rng`: its state saves into a
    resume state and restores exactly."""

    rng: np.random.Generator

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


class SegmentSampler(SeededSampler):
    """Samples DT training segments exactly as the DT paper's `get_batch`, but vectorised.

    Episodes are drawn in proportion to their length, a start uniformly within the episode,
    up to `context_len` steps are taken and left-padded; states are z-normalised and
    returns-to-go divided by `reward_scale`. The RNG is a numpy Generator whose state can be
    saved and restored (`state()` / `set_state()`), so resumed runs draw the same batches.

    Image data (uint8 frames) is never copied or normalised: each segment step gathers
    `frame_stack` frames (indices clamped at its episode's start) as uint8 (B, K, S, H, W);
    the model scales by 1/255. Memory stays one uint8 frame per stored step.
    """

    def __init__(
        self,
        data: Trajectories,
        context_len: int,
        max_ep_len: int,
        reward_scale: float,
        seed: int,
        state_mean: np.ndarray | None = None,
        state_std: np.ndarray | None = None,
        frame_stack: int = 1,
    ):
        self.data, self.K, self.max_ep_len, self.scale = data, context_len, max_ep_len, reward_scale
        self.frame_stack, self.kind = frame_stack, data.kind
        mean, std = data.state_stats() if state_mean is None else (state_mean, state_std)
        self.norm_obs = self.kind.normalise(data.observations, mean, std)  # frames: not copied
        self.rtg = _returns_to_go(data.rewards, data.starts, data.lengths)
        # per-step index of the step relative to its episode's start
        self.t_in_ep = np.arange(len(data.rewards)) - np.repeat(data.starts, data.lengths)
        self.p = data.lengths / data.lengths.sum()
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of `batch_size` segments: `segments(*draw(batch_size))`."""
        return self.segments(*self.draw(batch_size))

    def draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Random (episode index, start index) pairs: episodes in proportion to their length."""
        ep = self.rng.choice(len(self.data.lengths), size=batch_size, p=self.p)
        si = (self.rng.random(batch_size) * self.data.lengths[ep]).astype(np.int64)  # in [0, len)
        return ep, np.minimum(si, self.data.lengths[ep] - 1)

    def segments(self, ep: np.ndarray, si: np.ndarray) -> dict[str, np.ndarray]:
        """The segments starting at step `si[b]` of episode `ep[b]`, left-padded to context_len."""
        K, d = self.K, self.data
        ep, si = np.asarray(ep, np.int64), np.asarray(si, np.int64)
        tlen = np.minimum(K, d.lengths[ep] - si)  # real steps in the segment
        offset = np.arange(K)[None, :] - (K - tlen)[:, None]  # <0 marks left padding
        mask = offset >= 0
        idx = d.starts[ep][:, None] + si[:, None] + np.maximum(offset, 0)
        pad_action = 0.0 if d.action_space.discrete else -10.0  # the DT code pads actions with -10
        return {
            "states": self._states(idx, d.starts[ep], mask),
            "actions": np.where(mask[..., None], d.actions[idx], pad_action).astype(np.float32),
            "returns_to_go": np.where(mask, self.rtg[idx] / self.scale, 0.0).astype(np.float32)[
                ..., None
            ],
            "timesteps": np.where(mask, np.minimum(self.t_in_ep[idx], self.max_ep_len - 1), 0),
            "mask": mask,
        }

    def _states(self, idx: np.ndarray, ep_start: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, K, state_dim) float32 normalised states, or (B, K, S, H, W) uint8 stacked frames."""
        return self.kind.segment_states(self.norm_obs, idx, ep_start, mask, self.frame_stack)


def _returns_to_go(rewards: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Undiscounted reward-to-go within each episode, for every step.

    Summed episode by episode: suffix sums over the whole array minus the sum after each
    episode lose every other episode's precision to one episode of huge rewards (with 1e18 in
    one episode, the others' returns-to-go came out 0)."""
    r = rewards.astype(np.float64)
    out = np.zeros(len(r), np.float64)
    for s, n in zip(starts.tolist(), lengths.tolist()):
        out[s : s + n] = np.cumsum(r[s : s + n][::-1])[::-1]
    return out.astype(np.float32)


def check_matches_env(
    data: Trajectories, gym_id: str, obs_kind: str | ObservationKind | None = None
) -> None:
    """The dataset's observations and actions have the sizes the env gives, so an env paired
    with the wrong dataset fails before training, not at the first evaluation.

    >>> check_matches_env(load_trajectories("dtzoo/pendulum/scripted-v0"), "Pendulum-v1")
    """
    kind = data.kind if obs_kind is None else get_kind(obs_kind)
    env = kind.make_env(gym_id)
    try:
        obs_shape, space = env.observation_space.shape, ActionSpace.from_gym(env.action_space)
    finally:
        env.close()
    want, have = int(np.prod(obs_shape or (0,))), int(np.prod(data.observations.shape[1:]))
    if want != have:
        raise DatasetError(
            f"dataset {data.dataset_id!r} has observations of size {have}, but "
            f"{gym_id} gives {want}: the registry pairs this env with another "
            "env's dataset"
        )
    if (space.kind, space.dim) != (data.action_space.kind, data.action_space.dim):
        raise DatasetError(
            f"dataset {data.dataset_id!r} has {data.action_space.kind} actions of "
            f"size {data.action_space.dim}, but {gym_id} takes {space.kind} "
            f"actions of size {space.dim}"
        )


def dataset_summary(
    dataset_id: str, bins: int = 10, obs_kind: str | ObservationKind = DEFAULT_KIND
) -> dict[str, Any]:
    """Episodes, steps, the return distribution (with a histogram) and the reference scores."""
    import minari

    data = load_trajectories(dataset_id, obs_kind)
    rets = data.returns
    counts, edges = np.histogram(rets, bins=bins)
    meta = minari.load_dataset(dataset_id).storage.metadata
    return {
        "dataset": dataset_id,
        "gym_id": data.gym_id,
        "episodes": int(len(data.lengths)),
        "steps": int(data.lengths.sum()),
        "episode_length": {
            "min": int(data.lengths.min()),
            "mean": float(data.lengths.mean()),
            "max": int(data.lengths.max()),
        },
        "return": {
            "min": float(rets.min()),
            "mean": float(rets.mean()),
            "std": float(rets.std()),
            "max": float(rets.max()),
        },
        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
        "ref_scores": {"random": meta.get("ref_min_score"), "expert": meta.get("ref_max_score")},
        "state_dim": data.state_dim,
        "action_space": data.action_space.to_dict(),
        "minari_version": data.minari_version,
        "fingerprint": data.fingerprint,
    }
