"""Evaluation: N episodes at once in a gymnasium vector env, one batched forward per step.

    >>> report = evaluate(model, config, episodes=10)          # every target return in config
    >>> report["results"][0]["return_mean"]
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from dtzoo import __version__
from dtzoo.agent import Agent
from dtzoo.checkpoint import ModelConfig

ProgressFn = Callable[[int, int], None]  # (done env-steps, expected env-steps)


def episode_seeds(model_seed: int, episodes: int, base: int = 0) -> list[int]:
    """Eval episode seeds depend only on the model's seed, so comparisons are paired."""
    return [base * 1_000_000 + model_seed * 10_000 + i for i in range(episodes)]


def rollout(model, config: ModelConfig, target_return: float, seeds: list[int],
            progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run len(seeds) episodes in lockstep; returns (returns, lengths) per episode."""
    import gymnasium as gym

    n = len(seeds)
    envs = gym.make_vec(config.env["gym_id"], num_envs=n, vectorization_mode="sync")
    try:
        agent = Agent(model, config, target_return=target_return, num_envs=n)
        obs, _ = envs.reset(seed=seeds)
        returns, lengths = np.zeros(n), np.zeros(n, np.int64)
        alive = np.ones(n, bool)
        while alive.any():
            obs, reward, terminated, truncated, _ = envs.step(agent.act(obs))
            agent.observe(reward)
            returns += np.where(alive, reward, 0.0)
            lengths += alive
            alive &= ~(terminated | truncated)
            if progress:
                progress(int(alive.sum()), n)
        return returns, lengths
    finally:
        envs.close()


def summarize(config: ModelConfig, target: float, returns: np.ndarray, lengths: np.ndarray) -> dict:
    refs = config.env["ref_scores"]
    norm = 100.0 * (returns - refs["random"]) / (refs["expert"] - refs["random"])
    return {
        "target_return": float(target),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "normalized_mean": float(norm.mean()),
        "normalized_std": float(norm.std()),
        "length_mean": float(lengths.mean()),
        "returns": [float(x) for x in returns],
        "lengths": [int(x) for x in lengths],
    }


def evaluate(model, config: ModelConfig, episodes: int = 10, targets: list[float] | None = None,
             seed_base: int = 0, progress: Callable[[int, int], None] | None = None) -> dict:
    """Roll out at every target return; the dict is what eval.json holds."""
    t0 = time.time()
    targets = list(config.target_returns if targets is None else targets)
    seeds = episode_seeds(config.seed, episodes, seed_base)
    results = []
    for i, target in enumerate(targets):
        returns, lengths = rollout(model, config, target, seeds)
        results.append(summarize(config, target, returns, lengths))
        if progress:
            progress(i + 1, len(targets))
    return {
        "model_id": config.model_id,
        "step": config.step,
        "gym_id": config.env["gym_id"],
        "dataset": config.dataset["id"],
        "episodes": episodes,
        "episode_seeds": seeds,
        "ref_scores": config.env["ref_scores"],
        "results": results,
        "dtzoo_version": __version__,
        "seconds": round(time.time() - t0, 2),
    }
