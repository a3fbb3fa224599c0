"""dtzoo.collect: scripted experts, the noise ladder, determinism and local Minari datasets."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest

from dtzoo.collect import (
    SCRIPTED,
    collect_episodes,
    episode_noise,
    episode_returns,
    measure_reference_scores,
    prepare_dataset,
    random_policy,
    returns_by_noise,
    scripted_policy,
)
from dtzoo.errors import UsageError


@pytest.fixture
def minari_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def _arrays(eps):
    return [(e.observations, e.actions, e.rewards, e.terminations, e.truncations) for e in eps]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for ea, eb in zip(_arrays(a), _arrays(b))
        for x, y in zip(ea, eb)
    )


def _hidden_dirs(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []


# ----------------------------------------------------------------------------- experts


def test_scripted_pendulum_is_near_best_known_and_far_above_random():
    expert = episode_returns(collect_episodes("Pendulum-v1", "scripted", 20, seed=0))
    rand = episode_returns(collect_episodes("Pendulum-v1", "random", 20, seed=0))
    assert expert.mean() > -200, expert  # best known is about -150
    assert rand.mean() < -900, rand  # uniform random is about -1200
    assert expert.mean() - rand.mean() > 700


def test_scripted_pendulum_balances_from_upright():
    # Starting at the top at rest, the balance controller must hold it: return ~0.
    pol = scripted_policy("Pendulum-v1")
    env = gym.make("Pendulum-v1")
    env.reset(seed=0)
    env.unwrapped.state = np.array([0.05, 0.0])
    obs, total = env.unwrapped._get_obs(), 0.0
    for _ in range(200):
        obs, r, *_ = env.step(pol(obs[None])[0])
        total += r
    assert total > -1.0


def test_scripted_cartpole_noiseless_reaches_500():
    rets = episode_returns(collect_episodes("CartPole-v1", "scripted", 10, seed=0))
    assert rets.mean() >= 475 and rets.min() >= 400, rets


def test_scripted_lookup_and_unknown_gym_id():
    assert set(SCRIPTED) >= {"Pendulum-v1", "CartPole-v1"}
    assert scripted_policy("CartPole-v1") is SCRIPTED["CartPole-v1"]
    with pytest.raises(UsageError) as e:
        scripted_policy("Hopper-v5")
    assert "Hopper-v5" in str(e.value)
    assert "Pendulum-v1" in str(e.value) and "CartPole-v1" in str(e.value)
    with pytest.raises(UsageError):
        measure_reference_scores("MountainCar-v0", episodes=1)
    with pytest.raises(UsageError, match="unknown gym id 'Pendulum-v9'"):
        collect_episodes("Pendulum-v9", "random", 1)


def test_random_policy_respects_the_space():
    rng = np.random.default_rng(0)
    box = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    a = random_policy(box, rng)(np.zeros((500, 3)))
    assert a.shape == (500, 1) and a.dtype == np.float32
    assert a.min() >= -2 and a.max() <= 2 and a.min() < -1.9 and a.max() > 1.9
    d = random_policy(gym.spaces.Discrete(3, start=1), rng)(np.zeros((500, 4)))
    assert d.shape == (500,) and set(d.tolist()) == {1, 2, 3}


# ----------------------------------------------------------------------------- noise


def test_noise_ladder_splits_evenly_and_lowers_returns():
    eps = collect_episodes("Pendulum-v1", "scripted", 30, noise=[0.0, 1.0, 2.0], seed=0)
    lv = episode_noise(eps)
    assert lv.tolist() == [0.0] * 10 + [1.0] * 10 + [2.0] * 10
    assert all(len(e.infos["noise"]) == len(e) + 1 for e in eps)
    means = list(returns_by_noise(eps).values())
    assert means[0] > means[1] + 100 > means[2] + 200, means

    eps = collect_episodes("CartPole-v1", "scripted", 31, noise=[0.0, 0.5, 1.0], seed=0)
    assert np.bincount((episode_noise(eps) * 2).astype(int)).tolist() == [11, 10, 10]
    means = list(returns_by_noise(eps).values())
    assert means[0] >= 475 and means[0] > means[1] > means[2], means
    assert means[2] < 60  # noise 1.0 is a uniformly random policy (about 22)


def test_continuous_noise_std_and_clipping():
    zero = lambda obs: np.zeros((len(obs), 1), np.float32)
    eps = collect_episodes("Pendulum-v1", zero, 10, noise=[0.25], seed=0)
    acts = np.concatenate([e.actions for e in eps]).ravel()
    # std = level * (high - low) / 2 = 0.25 * 4 / 2 = 0.5 (clipping at +-2 is ~4 sigma away)
    assert abs(acts.std() - 0.5) < 0.03 and abs(acts.mean()) < 0.05
    eps = collect_episodes("Pendulum-v1", zero, 4, noise=[2.0], seed=0)
    acts = np.concatenate([e.actions for e in eps]).ravel()
    assert acts.min() >= -2.0 and acts.max() <= 2.0 and np.mean(np.abs(acts) == 2.0) > 0.5


def test_discrete_noise_replaces_actions_with_probability_level():
    left = lambda obs: np.zeros(len(obs), np.int64)
    eps = collect_episodes("CartPole-v1", left, 200, noise=[0.5], seed=0)
    acts = np.concatenate([e.actions for e in eps])
    # half the actions are replaced by a uniform draw over {0, 1}: a quarter become 1
    assert acts.dtype == np.int64 and abs(acts.mean() - 0.25) < 0.03


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("gym_id,noise", [("Pendulum-v1", [0.0, 1.0]), ("CartPole-v1", [0.0, 0.5])])
def test_same_seed_same_bytes_other_seed_differs(gym_id, noise):
    a = collect_episodes(gym_id, "scripted", 6, noise=noise, seed=3)
    b = collect_episodes(gym_id, "scripted", 6, noise=noise, seed=3)
    c = collect_episodes(gym_id, "scripted", 6, noise=noise, seed=4)
    assert _same(a, b)
    assert [e.seed for e in a] == [e.seed for e in b] != [e.seed for e in c]
    assert not any(np.array_equal(x.observations[0], y.observations[0]) for x, y in zip(a, c))
    # an episode does not depend on how many run in lockstep
    assert _same(a, collect_episodes(gym_id, "scripted", 6, noise=noise, seed=3, num_envs=1))
    r1 = collect_episodes(gym_id, "random", 4, seed=3)
    assert _same(r1, collect_episodes(gym_id, "random", 4, seed=3))
    assert not _same(r1, collect_episodes(gym_id, "random", 4, seed=4))


def test_stateful_policy_hooks_and_stable_rows():
    class Counting:
        def __init__(self):
            self.waves, self.reward_sum = [], 0.0

        def reset(self, n):
            self.waves.append(n)
            self.t = np.zeros(n, int)

        def __call__(self, obs):
            assert len(obs) == len(self.t)
            self.t += 1
            return np.ones(len(obs), np.int64)

        def observe(self, rewards, done):
            assert rewards.shape == done.shape == self.t.shape
            self.reward_sum += float(rewards.sum())

    pol = Counting()
    eps = collect_episodes("CartPole-v1", pol, 10, seed=0, num_envs=4)
    assert pol.waves == [4, 4, 2]
    assert pol.reward_sum == pytest.approx(episode_returns(eps).sum())
    bad = lambda obs: np.zeros(len(obs) + 1, np.int64)
    with pytest.raises(UsageError, match="shape"):
        collect_episodes("CartPole-v1", bad, 2)


# ----------------------------------------------------------------------------- datasets


def test_prepare_dataset_writes_a_loadable_minari_dataset(minari_root):
    did = "dtzoo-test/pendulum/scripted-v0"
    ds = prepare_dataset(did, "Pendulum-v1", episodes=10, noise=[0.0, 1.0], seed=1)
    assert (minari_root / did / "data" / "metadata.json").is_file()  # MINARI_DATASETS_PATH used
    assert _hidden_dirs(minari_root) == []
    loaded = minari.load_dataset(did)
    env = gym.make("Pendulum-v1")
    for d in (ds, loaded):
        assert d.total_episodes == 10 and d.total_steps == 2000
        assert d.observation_space == env.observation_space
        assert d.action_space == env.action_space
    md = loaded.storage.metadata
    assert md["dataset_id"] == did and md["data_format"] == "arrow"
    assert md["algorithm_name"] == "dtzoo-scripted" and md["description"]
    assert md["ref_max_score"] > -250 and md["ref_min_score"] < -900
    assert md["dtzoo_collect"]["noise"] == [0.0, 1.0] and md["dtzoo_collect"]["seed"] == 1
    assert loaded.spec.env_spec.id == "Pendulum-v1"
    assert loaded.recover_environment(eval_env=True).spec.id == "Pendulum-v1"
    assert did in minari.list_local_datasets()

    # what is stored is exactly what collect_episodes produces
    ref = collect_episodes("Pendulum-v1", "scripted", 10, noise=[0.0, 1.0], seed=1)
    stored = list(loaded.iterate_episodes())
    for s, r in zip(stored, ref):
        np.testing.assert_array_equal(s.observations, r.observations)
        np.testing.assert_array_equal(s.actions, r.actions)
        np.testing.assert_array_equal(s.rewards, r.rewards)
        assert s.infos["noise"][0] == r.infos["noise"][0]
    assert [s.infos["noise"][0] for s in stored] == [0.0] * 5 + [1.0] * 5


def test_prepare_cartpole_counts_variable_length_episodes(minari_root):
    did = "dtzoo-test/cartpole/scripted-v0"
    ds = prepare_dataset(did, "CartPole-v1", episodes=8, noise=[0.0, 1.0], seed=0)
    ref = collect_episodes("CartPole-v1", "scripted", 8, noise=[0.0, 1.0], seed=0)
    assert ds.total_episodes == 8
    assert ds.total_steps == sum(len(e) for e in ref) < 8 * 500
    assert ds.action_space == gym.spaces.Discrete(2)
    lengths = [len(ep.actions) for ep in ds.iterate_episodes()]
    assert lengths == [len(e) for e in ref]
    rds = prepare_dataset(
        "dtzoo-test/cartpole/random-v0", "CartPole-v1", policy="random", episodes=5
    )
    assert rds.storage.metadata["algorithm_name"] == "random" and rds.total_episodes == 5


def test_prepare_twice_does_not_rewrite_unless_overwrite(minari_root):
    did = "dtzoo-test/cartpole/scripted-v0"
    prepare_dataset(did, "CartPole-v1", episodes=4, seed=0)
    meta = minari_root / did / "data" / "metadata.json"
    before = (meta.stat().st_ino, meta.stat().st_mtime_ns)
    with pytest.warns(UserWarning, match="already exists"):
        again = prepare_dataset(did, "CartPole-v1", episodes=2, seed=0)
    assert again.total_episodes == 4
    assert (meta.stat().st_ino, meta.stat().st_mtime_ns) == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same arguments: silent
        prepare_dataset(did, "CartPole-v1", episodes=4, seed=0)

    new = prepare_dataset(did, "CartPole-v1", episodes=2, seed=0, overwrite=True)
    assert new.total_episodes == 2 and minari.load_dataset(did).total_episodes == 2
    assert meta.stat().st_ino != before[0]
    assert _hidden_dirs(minari_root) == []


def test_failed_write_leaves_nothing_and_keeps_the_old_dataset(minari_root, monkeypatch):
    did = "dtzoo-test/pendulum/scripted-v0"
    real = minari.create_dataset_from_buffers

    def half_then_fail(*args, **kwargs):
        real(*args, **kwargs)  # a complete dataset in the staging folder...
        raise RuntimeError("disk full")  # ...then the write fails

    monkeypatch.setattr(minari, "create_dataset_from_buffers", half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_dataset(did, "Pendulum-v1", episodes=2)
    assert not (minari_root / did).exists() and _hidden_dirs(minari_root) == []
    assert os.environ["MINARI_DATASETS_PATH"] == str(minari_root)  # restored

    monkeypatch.setattr(minari, "create_dataset_from_buffers", real)
    prepare_dataset(did, "Pendulum-v1", episodes=3)
    monkeypatch.setattr(minari, "create_dataset_from_buffers", half_then_fail)
    with pytest.raises(RuntimeError):
        prepare_dataset(did, "Pendulum-v1", episodes=2, overwrite=True)
    assert minari.load_dataset(did).total_episodes == 3
    assert _hidden_dirs(minari_root) == []


def test_prepare_dataset_rejects_bad_input(minari_root):
    with pytest.raises(UsageError, match="available: .*CartPole-v1, Pendulum-v1"):
        prepare_dataset("dtzoo-test/mc/scripted-v0", "MountainCar-v0", episodes=2)
    with pytest.raises(UsageError, match="unknown policy"):
        prepare_dataset("dtzoo-test/pendulum/x-v0", "Pendulum-v1", policy="sac", episodes=2)
    with pytest.raises(UsageError, match="Malformed dataset ID"):
        prepare_dataset("no version", "Pendulum-v1", episodes=2)
    assert not minari_root.exists() or not any(minari_root.rglob("metadata.json"))
