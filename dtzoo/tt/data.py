"""Trajectories (dtzoo.data) -> discretised transitions and windows for the Trajectory
Transformer, as the paper's `DiscretizedDataset`.

A transition is (s_t, a_t, r_t, V_t) with V_t = sum_{k > t} discount^(k-t-1) r_k, the
discounted return after step t within its episode. Windows are `context_len` transitions from
any step of an episode but its last; steps past the episode's end are stop tokens (the model
learns that the episode ended), and targets past `max_path_length` carry no loss (there the
episode was cut off, not ended).

    >>> tt = tokenize(load_trajectories("dtzoo/pendulum/scripted-v0"), n_bins=100)
    >>> sampler = WindowSampler(tt, context_len=10, max_path_length=200, seed=0)
    >>> batch = sampler.sample(256)      # {"inputs", "targets", "mask"}: (256, 10 * D - 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dtzoo.data import SeededSampler, Trajectories
from dtzoo.errors import DatasetError
from dtzoo.tt.discretize import Discretizer


def discounted_values(
    rewards: np.ndarray, starts: np.ndarray, lengths: np.ndarray, discount: float
) -> np.ndarray:
    """V_t = sum_{k > t} discount^(k-t-1) r_k within each episode (0 at its last step).

    >>> discounted_values(np.array([1.0, 1.0, 1.0]), np.array([0]), np.array([3]), 0.5)
    array([1.5, 1. , 0. ])
    """
    r = np.asarray(rewards, np.float64)
    out = np.zeros(len(r), np.float64)
    for s, n in zip(starts.tolist(), lengths.tolist()):
        acc = 0.0
        for t in range(s + n - 1, s, -1):  # backwards: V_{t-1} = r_t + discount * V_t
            acc = r[t] + discount * acc
            out[t - 1] = acc
    return out


def transitions(data: Trajectories, discount: float = 0.99) -> np.ndarray:
    """(N, obs + act + 2) float64 rows (s_t, a_t, r_t, V_t); actions in model space ([-1, 1]
    for a Box, see dtzoo.data.ActionSpace)."""
    if data.image or data.obs_kind != "vector" or data.action_space.discrete:
        raise DatasetError(
            f"dataset {data.dataset_id!r}: the Trajectory Transformer takes vector observations "
            "and continuous (Box) actions"
        )
    values = discounted_values(data.rewards, data.starts, data.lengths, discount)
    return np.concatenate(
        [
            data.observations.astype(np.float64),
            data.actions.astype(np.float64),
            data.rewards.astype(np.float64)[:, None],
            values[:, None],
        ],
        axis=1,
    )


@dataclass
class TTData:
    """A dataset as tokens: (N, transition_dim) int64 rows plus episode boundaries."""

    tokens: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    discretizer: Discretizer
    observation_dim: int
    action_dim: int

    @property
    def transition_dim(self) -> int:
        return self.tokens.shape[1]


def tokenize(
    data: Trajectories, n_bins: int = 100, kind: str = "quantile", discount: float = 0.99
) -> TTData:
    """Fit the discretiser on the dataset's transitions and encode them.

    >>> tt = tokenize(data, n_bins=100, kind="quantile", discount=0.99)
    >>> tt.discretizer.to_dict()                  # what config.json stores
    """
    flat = transitions(data, discount)
    disc = Discretizer.fit(flat, n_bins, kind)
    return TTData(
        tokens=disc.encode(flat),
        starts=np.asarray(data.starts, np.int64),
        lengths=np.asarray(data.lengths, np.int64),
        discretizer=disc,
        observation_dim=data.state_dim,
        action_dim=data.action_space.dim,
    )


class WindowSampler(SeededSampler):
    """Seeded windows of `context_len` transitions, flattened to the model's tokens.

    Every (episode, start) with start < length - 1 is equally likely (the paper's index list).
    `sample(B)` returns inputs (B, L) = window[:-1], targets (B, L) = window[1:] and the
    targets' mask (B, L) bool, L = context_len * transition_dim - 1. The RNG state can be
    saved and restored (`state()` / `set_state()`), as dtzoo.data.SegmentSampler's.
    """

    def __init__(
        self,
        data: TTData,
        context_len: int = 10,
        max_path_length: int | None = None,
        seed: int = 0,
    ):
        self.data, self.K = data, context_len
        self.max_path_length = (
            int(data.lengths.max()) if max_path_length is None else max_path_length
        )
        n_starts = np.maximum(data.lengths - 1, 0)
        if n_starts.sum() == 0:
            raise DatasetError("no episode has two steps: there are no windows to train on")
        self.p = n_starts / n_starts.sum()
        self.stop = data.discretizer.n_bins
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch: `windows(*draw(batch_size))`."""
        return self.windows(*self.draw(batch_size))

    def draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Random (episode index, start step) pairs, uniform over all valid starts."""
        d = self.data
        ep = self.rng.choice(len(d.lengths), size=batch_size, p=self.p)
        start = (self.rng.random(batch_size) * (d.lengths[ep] - 1)).astype(np.int64)
        return ep, np.minimum(start, d.lengths[ep] - 2)

    def windows(self, ep: np.ndarray, start: np.ndarray) -> dict[str, np.ndarray]:
        """The windows at step `start[b]` of episode `ep[b]`, stop tokens after its end."""
        d, K = self.data, self.K
        ep, start = np.asarray(ep, np.int64), np.asarray(start, np.int64)
        step = start[:, None] + np.arange(K)[None, :]  # (B, K) step within the episode
        inside = step < d.lengths[ep][:, None]
        rows = d.starts[ep][:, None] + np.minimum(step, d.lengths[ep][:, None] - 1)
        tokens = np.where(inside[..., None], d.tokens[rows], self.stop)  # (B, K, D)
        # past max_path_length the dataset cut the episode off: no target there
        mask = np.broadcast_to((step < self.max_path_length)[..., None], tokens.shape)
        flat, flat_mask = tokens.reshape(len(ep), -1), mask.reshape(len(ep), -1)
        return {"inputs": flat[:, :-1], "targets": flat[:, 1:], "mask": flat_mask[:, 1:].copy()}
