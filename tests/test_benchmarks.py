"""The benchmarks run (tiny sizes), and the fast paths compute what the reference code does.

No timings are asserted here: speed is measured by `python -m benchmarks`, not by tests.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import reference
from tests.conftest import ROOT

DATASET = "dtzoo/pendulum/scripted-v0"


@pytest.mark.slow
def test_benchmarks_run_at_tiny_sizes(minari_store, tmp_path):
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_store), "DTZOO_HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--dataset",
            DATASET,
            "--gym-ids",
            "Pendulum-v1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [
        line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    figures = [r.split("|")[1].strip() for r in rows[1:]]
    assert len(figures) == 11 and figures[0].startswith("batch sampling")
    wanted = [
        "training steps/s, fp32, 1L",
        "training steps/s, fp32, 3L",
        "bf16 autocast 3L",
        "evaluation env-steps/s, 1L",
        "evaluation env-steps/s vs the simulator, 1L",
        "evaluation env-steps/s, 3L",
        "`dtzoo --help`",
    ]
    for w in wanted:
        assert any(w in f for f in figures), (w, figures)
    for r in rows[1:]:
        dtzoo_value = r.split("|")[2].strip()
        assert float(dtzoo_value) > 0, r


def test_vectorised_sampler_equals_the_papers_get_batch(monkeypatch, minari_store):
    """Same episode and start indices -> the same batch, array for array."""
    from dtzoo.data import SegmentSampler, load_trajectories

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_store))
    data = load_trajectories(DATASET)
    sampler = SegmentSampler(data, context_len=20, max_ep_len=200, reward_scale=100.0, seed=3)
    episodes, starts = sampler.draw(16)
    ours = sampler.segments(episodes, starts)
    # replay exactly those indices through the reference loop
    monkeypatch.setattr(np.random, "choice", lambda *a, **k: np.asarray(episodes))
    it = iter(int(s) for s in starts)
    monkeypatch.setattr(random, "randint", lambda lo, hi: next(it))
    mean, std = data.state_stats()
    s, a, r, rtg, t, mask = reference.get_batch(
        reference.split_trajectories(data), 16, 20, 200, mean, std, 100.0
    )
    m = ours["mask"]
    assert np.array_equal(mask.numpy().astype(bool), m)
    np.testing.assert_allclose(s.numpy()[m], ours["states"][m], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.numpy()[m], ours["actions"][m])
    np.testing.assert_allclose(
        rtg.numpy()[:, :-1][m] if rtg.shape[1] > 20 else rtg.numpy()[m],
        ours["returns_to_go"][m],
        rtol=1e-5,
        atol=1e-4,
    )
    np.testing.assert_array_equal(t.numpy()[m], ours["timesteps"][m])


def test_batched_evaluation_returns_equal_one_episode_at_a_time(zoo_env, registry):
    """evaluate() (N episodes per forward) and the paper's per-episode loop agree per seed."""
    import gymnasium as gym

    from dtzoo import paths, zoo
    from dtzoo.checkpoint import load_model
    from dtzoo.evaluate import episode_seeds, evaluate

    spec = registry.resolve("pendulum-1L-seed0")
    zoo.train_cell(spec, registry)
    model, config = load_model(paths.run_dir(spec.model_id))
    ours = evaluate(model, config, episodes=3, targets=[-150.0])["results"][0]["returns"]
    env = gym.make("Pendulum-v1")
    mean = np.asarray(config.state_mean, np.float32)
    std = np.asarray(config.state_std, np.float32)
    low, high = config.action_space["low"][0], config.action_space["high"][0]

    theirs = []
    for seed in episode_seeds(config.seed, 3):
        wrapped = gym.wrappers.RescaleAction(env, -1.0, 1.0) if (low, high) != (-1.0, 1.0) else env
        # the model acts in [-1, 1]; the reference hands its output to the env as is
        ret, _ = reference.evaluate_episode_rtg(
            wrapped,
            model,
            config.architecture["max_ep_len"],
            config.reward_scale,
            mean,
            std,
            -150.0,
            seed,
            config.architecture["context_len"],
        )
        theirs.append(ret)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)
