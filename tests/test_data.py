"""dtzoo.data: Minari datasets -> flat arrays, action spaces, the DT batch sampler, fingerprints."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest

from dtzoo.data import ActionSpace, SegmentSampler, dataset_dir, fingerprint, load_trajectories
from dtzoo.errors import DatasetError

K = 20


def minari_episodes(dataset_id: str) -> tuple[list[dict], ActionSpace]:
    """The dataset read episode by episode straight from Minari (the reference for everything)."""
    ds = minari.load_dataset(dataset_id)
    space = ActionSpace.from_gym(ds.action_space)
    eps = []
    for ep in ds.iterate_episodes():
        T = len(ep.actions)
        eps.append(
            {
                "observations": np.asarray(ep.observations, np.float32)[:T],
                "raw_actions": np.asarray(ep.actions),
                "actions": space.to_model(np.asarray(ep.actions).reshape(T, -1)),
                "rewards": np.asarray(ep.rewards, np.float32),
            }
        )
    return eps, space


def discount_cumsum(x: np.ndarray, gamma: float) -> np.ndarray:
    """As in the DT paper's experiment.py (in float64 here)."""
    out = np.zeros(len(x), np.float64)
    out[-1] = x[-1]
    for t in reversed(range(len(x) - 1)):
        out[t] = x[t] + gamma * out[t + 1]
    return out


def paper_get_batch(episodes, ep_idx, start_idx, max_len, max_ep_len, scale, mean, std, discrete):
    """The DT paper's `get_batch` (gym/experiment.py), one sample at a time, for given indices.

    Two documented differences, both at padded positions the mask hides from the model: dtzoo
    pads states with 0 after normalising (the paper pads before, giving -mean/std), and a
    discrete action (one-hot) is padded with zeros instead of -10.
    """
    s, a, rtg, timesteps, mask = [], [], [], [], []
    for i, si in zip(ep_idx, start_idx):
        traj = episodes[i]
        state_dim, act_dim = traj["observations"].shape[1], traj["actions"].shape[1]
        s.append(traj["observations"][si : si + max_len].reshape(1, -1, state_dim))
        a.append(traj["actions"][si : si + max_len].reshape(1, -1, act_dim))
        timesteps.append(np.arange(si, si + s[-1].shape[1]).reshape(1, -1))
        timesteps[-1][timesteps[-1] >= max_ep_len] = max_ep_len - 1  # padding cutoff
        rtg.append(
            discount_cumsum(traj["rewards"][si:], gamma=1.0)[: s[-1].shape[1] + 1].reshape(1, -1, 1)
        )
        if rtg[-1].shape[1] <= s[-1].shape[1]:
            rtg[-1] = np.concatenate([rtg[-1], np.zeros((1, 1, 1))], axis=1)

        tlen = s[-1].shape[1]
        s[-1] = np.concatenate(
            [np.zeros((1, max_len - tlen, state_dim)), (s[-1] - mean) / std], axis=1
        )
        a[-1] = np.concatenate(
            [np.ones((1, max_len - tlen, act_dim)) * (0.0 if discrete else -10.0), a[-1]], axis=1
        )
        rtg[-1] = np.concatenate([np.zeros((1, max_len - tlen, 1)), rtg[-1]], axis=1) / scale
        timesteps[-1] = np.concatenate([np.zeros((1, max_len - tlen)), timesteps[-1]], axis=1)
        mask.append(np.concatenate([np.zeros((1, max_len - tlen)), np.ones((1, tlen))], axis=1))
    return {
        "states": np.concatenate(s, 0).astype(np.float32),
        "actions": np.concatenate(a, 0).astype(np.float32),
        "returns_to_go": np.concatenate(rtg, 0)[:, :-1].astype(np.float32),  # the model reads K
        "timesteps": np.concatenate(timesteps, 0).astype(np.int64),
        "mask": np.concatenate(mask, 0).astype(bool),
    }


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("env_key", ["pendulum", "cartpole"])
def test_load_trajectories_matches_minari_episode_by_episode(registry, env_key):
    env = registry.env(env_key)
    data = load_trajectories(env.dataset)
    episodes, space = minari_episodes(env.dataset)

    assert len(episodes) == 20  # the test registry prepares 20 episodes
    lengths = np.array([len(e["rewards"]) for e in episodes])
    np.testing.assert_array_equal(data.lengths, lengths)
    np.testing.assert_array_equal(data.starts, np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    n = lengths.sum()
    state_dim = gym.make(env.gym_id).observation_space.shape[0]
    assert data.observations.shape == (n, state_dim) and data.observations.dtype == np.float32
    assert data.actions.shape == (n, space.dim) and data.actions.dtype == np.float32
    assert data.rewards.shape == (n,) and data.state_dim == state_dim
    for ep, start, length in zip(episodes, data.starts, data.lengths):
        seg = slice(start, start + length)
        np.testing.assert_array_equal(data.observations[seg], ep["observations"])
        np.testing.assert_array_equal(data.actions[seg], ep["actions"])
        np.testing.assert_array_equal(data.rewards[seg], ep["rewards"])
    np.testing.assert_allclose(
        data.returns, [e["rewards"].astype(np.float64).sum() for e in episodes], rtol=1e-12
    )
    assert (data.dataset_id, data.gym_id) == (env.dataset, env.gym_id)
    assert data.minari_version and data.fingerprint == fingerprint(env.dataset)
    assert data.action_space == space


def test_cartpole_actions_are_one_hot_and_pendulum_actions_in_unit_box(registry):
    cp = load_trajectories(registry.env("cartpole").dataset)
    assert cp.action_space == ActionSpace("discrete", n=2)
    assert set(np.unique(cp.actions)) == {0.0, 1.0}
    np.testing.assert_array_equal(cp.actions.sum(axis=1), 1.0)
    pe = load_trajectories(registry.env("pendulum").dataset)
    assert pe.action_space == ActionSpace("box", low=[-2.0], high=[2.0])
    assert pe.actions.min() >= -1.0 and pe.actions.max() <= 1.0 and pe.actions.min() < -0.9


def test_state_stats_are_dataset_mean_and_std(registry):
    data = load_trajectories(registry.env("pendulum").dataset)
    mean, std = data.state_stats()
    obs = data.observations.astype(np.float64)
    np.testing.assert_allclose(mean, obs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, obs.std(0) + 1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- action spaces


def test_box_action_space_round_trip_and_bounds():
    space = ActionSpace.from_gym(
        gym.spaces.Box(
            low=np.array([0.0, -1.0, -3.0], np.float32), high=np.array([1.0, 3.0, 3.0], np.float32)
        )
    )
    assert (space.kind, space.low, space.high, space.dim, space.discrete) == (
        "box",
        [0.0, -1.0, -3.0],
        [1.0, 3.0, 3.0],
        3,
        False,
    )
    np.testing.assert_array_equal(
        space.to_model(np.array([[0.0, -1.0, -3.0], [1.0, 3.0, 3.0], [0.5, 1.0, 0.0]])),
        [[-1, -1, -1], [1, 1, 1], [0, 0, 0]],
    )
    rng = np.random.default_rng(0)
    acts = rng.uniform(space.low, space.high, size=(1000, 3)).astype(np.float32)
    model_space = space.to_model(acts)
    assert model_space.dtype == np.float32 and np.abs(model_space).max() <= 1.0
    np.testing.assert_allclose(space.to_env(model_space), acts, atol=1e-6)
    np.testing.assert_allclose(space.to_env(np.array([-1.0, 0.0, 1.0])), [0.0, 1.0, 3.0])
    assert ActionSpace(**space.to_dict()) == space
    assert json.loads(json.dumps(space.to_dict())) == space.to_dict()


def test_discrete_action_space_one_hot_round_trip():
    space = ActionSpace.from_gym(gym.spaces.Discrete(4))
    assert (space.kind, space.n, space.dim, space.discrete) == ("discrete", 4, 4, True)
    acts = np.array([0, 3, 1, 2, 3])
    one_hot = space.to_model(acts)
    np.testing.assert_array_equal(one_hot, np.eye(4)[acts])
    assert one_hot.dtype == np.float32
    np.testing.assert_array_equal(
        space.to_model(acts.reshape(-1, 1)), one_hot
    )  # (T, 1) as in datasets
    np.testing.assert_array_equal(space.to_env(one_hot), acts)
    np.testing.assert_array_equal(
        space.to_env(np.array([[0.1, 2.0, -1.0, 0.5]])), [1]
    )  # argmax of logits
    assert ActionSpace(**space.to_dict()) == space


def test_from_gym_uses_real_env_spaces_and_refuses_others():
    assert ActionSpace.from_gym(gym.make("Pendulum-v1").action_space) == ActionSpace(
        "box", low=[-2.0], high=[2.0]
    )
    assert ActionSpace.from_gym(gym.make("CartPole-v1").action_space) == ActionSpace(
        "discrete", n=2
    )
    with pytest.raises(DatasetError, match="unsupported action space"):
        ActionSpace.from_gym(gym.spaces.Box(low=-1, high=1, shape=(2, 2)))
    with pytest.raises(DatasetError, match="unsupported action space"):
        ActionSpace.from_gym(gym.spaces.MultiDiscrete([2, 3]))
    with pytest.raises(DatasetError, match="finite bounds"):  # could not be mapped onto [-1, 1]
        ActionSpace.from_gym(gym.spaces.Box(low=-np.inf, high=np.inf, shape=(2,), dtype=np.float32))


# ----------------------------------------------------------------------------- the sampler


def _all_starts(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (episode, start) pair of every episode."""
    ep = np.repeat(np.arange(len(lengths)), lengths)
    si = np.concatenate([np.arange(n) for n in lengths])
    return ep, si


@pytest.mark.parametrize(
    "env_key, max_ep_len", [("pendulum", 200), ("cartpole", 500), ("pendulum", 50)]
)
def test_segments_equal_the_dt_paper_get_batch(registry, env_key, max_ep_len):
    """Every (episode, start) pair of the dataset: the vectorised segments equal the paper's
    loop."""
    env = registry.env(env_key)
    data = load_trajectories(env.dataset)
    episodes, space = minari_episodes(env.dataset)
    mean, std = data.state_stats()
    sampler = SegmentSampler(data, K, max_ep_len, env.reward_scale, seed=0)
    ep, si = _all_starts(data.lengths)
    got = sampler.segments(ep, si)
    want = paper_get_batch(
        episodes, ep, si, K, max_ep_len, env.reward_scale, mean, std, space.discrete
    )
    assert set(got) == set(want)
    for key in ("states", "actions", "timesteps", "mask"):
        assert got[key].shape == want[key].shape, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert got["returns_to_go"].shape == (len(ep), K, 1)
    np.testing.assert_allclose(got["returns_to_go"], want["returns_to_go"], rtol=2e-6, atol=2e-6)
    assert got["states"].dtype == np.float32 and got["mask"].dtype == bool
    if max_ep_len < 200:  # the paper's padding cutoff is exercised
        assert got["timesteps"].max() == max_ep_len - 1


def test_left_padding_mask_rtg_and_timesteps_by_hand(registry):
    env = registry.env("cartpole")
    data = load_trajectories(env.dataset)
    sampler = SegmentSampler(data, K, env.max_ep_len, env.reward_scale, seed=0)
    e = int(np.argmin(data.lengths))  # a short episode (a noisy one)
    n = int(data.lengths[e])
    assert n >= 3
    b = sampler.segments(np.array([e, e, e]), np.array([n - 1, n - 3, 0]))
    # the last step alone: K-1 padded positions, then one real one
    assert b["mask"][0].tolist() == [False] * (K - 1) + [True]
    assert b["mask"][1].tolist() == [False] * (K - 3) + [True] * 3
    assert b["mask"][2].sum() == min(K, n) and b["mask"][2, -1]
    pad = ~b["mask"]
    assert (b["states"][pad] == 0).all() and (
        b["actions"][pad] == 0
    ).all()  # one-hot padding: zeros
    assert (b["returns_to_go"][pad] == 0).all() and (b["timesteps"][pad] == 0).all()
    start = int(data.starts[e])
    rewards = data.rewards[start : start + n].astype(np.float64)
    assert b["timesteps"][1, -3:].tolist() == [n - 3, n - 2, n - 1]
    suffix = [rewards[t:].sum() / env.reward_scale for t in (n - 3, n - 2, n - 1)]
    np.testing.assert_allclose(b["returns_to_go"][1, -3:, 0], suffix, rtol=1e-6)
    np.testing.assert_allclose(
        b["returns_to_go"][0, -1, 0], rewards[-1] / env.reward_scale, rtol=1e-6
    )
    mean, std = data.state_stats()
    np.testing.assert_array_equal(
        b["states"][0, -1], (data.observations[start + n - 1] - mean) / std
    )
    np.testing.assert_array_equal(b["actions"][0, -1], data.actions[start + n - 1])

    pend = registry.env("pendulum")
    pdata = load_trajectories(pend.dataset)
    ps = SegmentSampler(pdata, K, pend.max_ep_len, pend.reward_scale, seed=0)
    pb = ps.segments(np.array([3]), np.array([199]))
    assert (pb["actions"][0, :-1] == -10.0).all()  # continuous padding: -10, as in the paper
    assert pb["timesteps"][0, -1] == 199 and pb["mask"][0].sum() == 1


def test_draw_picks_episodes_in_proportion_to_length_and_starts_uniformly(registry):
    data = load_trajectories(registry.env("cartpole").dataset)
    assert len(set(data.lengths.tolist())) > 3  # lengths differ a lot (noisy episodes fall early)
    sampler = SegmentSampler(data, K, 500, 100, seed=1)
    n = 200_000
    ep, si = sampler.draw(n)
    assert ep.shape == si.shape == (n,)
    assert (si >= 0).all() and (si < data.lengths[ep]).all()
    p = data.lengths / data.lengths.sum()
    freq = np.bincount(ep, minlength=len(p)) / n
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n)), (freq, p)
    # the start is uniform within the episode: its relative position has mean 1/2, and every
    # start of the shortest episode is drawn
    rel = (si + 0.5) / data.lengths[ep]
    assert abs(rel.mean() - 0.5) < 0.005
    short = int(np.argmin(data.lengths))
    assert set(si[ep == short].tolist()) == set(range(int(data.lengths[short])))


def test_sample_is_draw_then_segments(registry):
    env = registry.env("pendulum")
    data = load_trajectories(env.dataset)
    a = SegmentSampler(data, K, env.max_ep_len, env.reward_scale, seed=5)
    b = SegmentSampler(data, K, env.max_ep_len, env.reward_scale, seed=5)
    for _ in range(3):
        got = a.sample(64)
        want = b.segments(*b.draw(64))
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        assert got["states"].shape == (64, K, 3) and got["actions"].shape == (64, K, 1)
        assert got["returns_to_go"].shape == (64, K, 1) and got["timesteps"].shape == (64, K)


def test_same_seed_same_batches_other_seed_other_batches(registry):
    env = registry.env("cartpole")
    data = load_trajectories(env.dataset)
    a, b, c = (SegmentSampler(data, K, env.max_ep_len, env.reward_scale, seed=s) for s in (3, 3, 4))
    for _ in range(3):
        ba, bb, bc = a.sample(32), b.sample(32), c.sample(32)
        for k in ba:
            np.testing.assert_array_equal(ba[k], bb[k])
        assert not np.array_equal(ba["states"], bc["states"])


def test_state_and_set_state_restore_the_stream(registry):
    env = registry.env("pendulum")
    data = load_trajectories(env.dataset)
    s = SegmentSampler(data, K, env.max_ep_len, env.reward_scale, seed=0)
    s.sample(16)
    saved = json.loads(json.dumps(s.state()))  # the trainer stores it as JSON
    first, second = s.sample(16), s.sample(16)
    assert not np.array_equal(first["states"], second["states"])
    fresh = SegmentSampler(data, K, env.max_ep_len, env.reward_scale, seed=99)
    fresh.set_state(saved)
    for want in (first, second):
        got = fresh.sample(16)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_explicit_stats_are_used_for_normalisation(registry):
    env = registry.env("pendulum")
    data = load_trajectories(env.dataset)
    mean, std = np.array([1.0, 2.0, 3.0], np.float32), np.array([2.0, 4.0, 8.0], np.float32)
    s = SegmentSampler(
        data, K, env.max_ep_len, env.reward_scale, seed=0, state_mean=mean, state_std=std
    )
    b = s.segments(np.array([0]), np.array([0]))  # steps 0..K-1 of episode 0, no padding
    np.testing.assert_array_equal(b["states"][0], (data.observations[:K] - mean) / std)


# ----------------------------------------------------------------------------- fingerprints


def _copy_dataset(dataset_id: str, store: Path) -> Path:
    src = dataset_dir(dataset_id)
    dest = store / dataset_id
    shutil.copytree(src, dest)
    return dest


def test_fingerprint_is_content_based_and_changes_with_any_data_file(
    zoo_env, tmp_path, monkeypatch
):
    dataset_id = "dtzoo/pendulum/scripted-v0"
    original = fingerprint(dataset_id)
    assert original.startswith("sha256:") and len(original) == len("sha256:") + 64
    copy = _copy_dataset(dataset_id, tmp_path / "store")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    assert fingerprint(dataset_id) == original  # the same bytes elsewhere: same fingerprint

    data_file = max((copy / "data").rglob("*.arrow"))
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data_file.write_bytes(bytes(raw))
    changed = fingerprint(dataset_id)
    assert changed != original
    raw[len(raw) // 2] ^= 0x01
    data_file.write_bytes(bytes(raw))
    assert fingerprint(dataset_id) == original
    (data_file.parent / "extra.arrow").write_bytes(b"")
    assert fingerprint(dataset_id) not in (original, changed)


# ----------------------------------------------------------------------------- bad datasets


def _buffers(episodes: list[int], nan_in: str | None = None, seed: int = 0):
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(seed)
    out = []
    for i, T in enumerate(episodes):
        obs = rng.normal(size=(T + 1, 3)).astype(np.float32)
        acts = rng.uniform(-2, 2, size=(T, 1)).astype(np.float32)
        rews = rng.normal(size=T)
        if nan_in and i == len(episodes) - 1:
            {"observations": obs, "actions": acts, "rewards": rews}[nan_in][T // 2] = np.nan
        out.append(
            EpisodeBuffer(
                id=i,
                observations=obs,
                actions=acts,
                rewards=rews,
                terminations=np.zeros(T, bool),
                truncations=np.arange(T) == T - 1,
                infos={},
            )
        )
    return out


def _make_dataset(dataset_id: str, buffers) -> None:
    env = gym.make("Pendulum-v1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env.spec,
            algorithm_name="test",
            observation_space=env.observation_space,
            action_space=env.action_space,
            data_format="arrow",
        )


@pytest.fixture
def tmp_store(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    return tmp_path / "store"


def test_a_small_hand_made_dataset_loads(tmp_store):
    _make_dataset("test/good-v0", _buffers([5, 3, 7]))
    data = load_trajectories("test/good-v0")
    assert data.lengths.tolist() == [5, 3, 7] and data.starts.tolist() == [0, 5, 8]
    assert data.gym_id == "Pendulum-v1"


@pytest.mark.parametrize("where", ["observations", "actions", "rewards"])
def test_nan_in_a_dataset_is_a_dataset_error(tmp_store, where):
    _make_dataset("test/nan-v0", _buffers([5, 6, 7], nan_in=where))
    with pytest.raises(DatasetError, match=f"test/nan-v0.*{where} contain NaN"):
        load_trajectories("test/nan-v0")


def test_a_dataset_with_no_episodes_is_a_dataset_error(tmp_store):
    _make_dataset("test/empty-v0", [])
    with pytest.raises(DatasetError, match="test/empty-v0.*no episodes"):
        load_trajectories("test/empty-v0")


def test_a_missing_dataset_says_how_to_get_it(tmp_store):
    with pytest.raises(DatasetError, match="dtzoo data prepare"):
        load_trajectories("test/absent-v0")
