"""Observation kinds are objects in one registry: a new kind is one class, registered once.

The toy kind below (Pendulum with angular velocities clipped to [-1, 1]) is defined and
registered here only, and goes through the registry, dataset preparation, loading, training
and evaluation without any other file knowing about it."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import yaml

from dtzoo.errors import UsageError
from dtzoo.observations import KINDS, ObservationKind, get_kind, kind_of, register
from tests.conftest import make_test_registry


class ClippedVector(ObservationKind):
    """Flat observations clipped to [-1, 1] (idempotent, as a kind's transform must be)."""

    name = "vector-clipped"

    def transform(self, obs):
        return np.clip(np.asarray(obs, np.float32), -1.0, 1.0)

    def observation_space(self, raw):
        return gym.spaces.Box(-1.0, 1.0, raw.shape, np.float32)


@pytest.fixture(scope="module")
def clipped():
    kind = register(ClippedVector())
    yield kind
    KINDS.pop(kind.name)


def test_the_registry_of_kinds():
    assert list(KINDS)[:4] == ["vector", "atari", "minigrid-flat", "minigrid-onehot"]
    assert get_kind("atari").image and not get_kind("minigrid-flat").image
    assert get_kind("atari").state_encoder(4) == {
        "state_encoder": "nature_cnn",
        "obs_shape": [4, 84, 84],
    }
    assert get_kind("vector").observation_block() is None  # vector configs record no kind
    assert get_kind("atari").memory_per_1k_frames(4) == {
        "stored_MB": 7.056,
        "if_stacked_float32_MB": 112.896,
    }
    with pytest.raises(UsageError, match="unknown observation kind 'nope': use one of vector, "):
        get_kind("nope")
    # a model's kind is read from its config in one place; none recorded means vector
    assert kind_of({"env": {}}) is KINDS["vector"]
    assert kind_of({"env": {"observation": {"kind": "atari"}}}) is KINDS["atari"]


def test_a_kind_added_by_one_class_trains_and_evaluates(clipped, tmp_path, monkeypatch):
    from dtzoo import paths
    from dtzoo.data import load_trajectories
    from dtzoo.registry import load_registry
    from dtzoo.zoo import eval_cell, prepare_env, train_cell

    path = make_test_registry(tmp_path / "registry.yaml", steps=4)
    reg = yaml.safe_load(path.read_text())
    env = dict(reg["envs"]["pendulum"], obs="vector-clipped", max_episode_steps=40)
    env["dataset"] = "dtzoo/pendulum-clipped/scripted-v0"
    env["prepare"] = {"episodes": 4, "noise": [0.0, 2.0], "seed": 0, "ref_episodes": 2}
    env["recipe"].update(context_len=4, batch_size=8)
    reg["envs"]["pendulum-clipped"] = env
    path.write_text(yaml.safe_dump(reg, sort_keys=False))
    for k, v in {
        "DTZOO_HOME": str(tmp_path / "home"),
        "DTZOO_REGISTRY": str(path),
        "MINARI_DATASETS_PATH": str(tmp_path / "minari"),
        "DTZOO_HUB": "local",
    }.items():
        monkeypatch.setenv(k, v)
    registry = load_registry()
    spec = registry.resolve("pendulum-clipped-1L-seed0")
    assert spec.env.obs == "vector-clipped" and spec.env.frame_stack == 1

    # the dataset: collected through the kind's env, metadata naming the kind
    prepare_env(spec.env)
    data = load_trajectories(spec.env.dataset, spec.env.obs)
    assert data.kind is clipped and data.observations.dtype == np.float32
    assert data.observations.shape == (int(data.lengths.sum()), 3)
    thdot = data.observations[:, 2]
    assert thdot.max() == 1.0 and thdot.min() == -1.0  # Pendulum's 8 rad/s, clipped
    meta = json.loads(
        (tmp_path / "minari" / spec.env.dataset / "data" / "metadata.json").read_text()
    )
    assert meta["dtzoo_collect"]["obs"] == "vector-clipped"

    # training: config.json records the kind, the model keeps the linear state embedding
    result = train_cell(spec, registry, device="cpu")
    assert result.steps == 4 and np.isfinite(result.final_loss)
    config = json.loads((paths.run_dir(spec.model_id) / "config.json").read_text())
    assert config["env"]["observation"] == {"kind": "vector-clipped"}
    assert "state_encoder" not in config["architecture"] and config["state_dim"] == 3

    # evaluation: the eval env is the kind's (clipped observations), episodes run to the end
    assert kind_of(config) is clipped
    eval_env = kind_of(config).make_env("Pendulum-v1")
    obs, _ = eval_env.reset(seed=0)
    obs = [obs] + [eval_env.step(np.array([2.0], np.float32))[0] for _ in range(30)]
    assert np.abs(np.stack(obs)).max() <= 1.0
    report = eval_cell(spec, registry)
    assert len(report["results"]) == len(spec.env.target_returns)
    assert all(np.isfinite(r["normalized_mean"]) for r in report["results"])
    assert all(r["lengths"] == [40, 40] for r in report["results"])
