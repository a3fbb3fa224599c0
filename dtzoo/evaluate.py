"""Evaluation: N episodes at once in a gymnasium vector env, one batched forward per step.

>>> report = evaluate(model, config, episodes=10)          # every target return in config
>>> report["results"][0]["return_mean"]
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Sequence

import numpy as np

from dtzoo import __version__
from dtzoo.agent import Agent
from dtzoo.checkpoint import ModelConfig
from dtzoo.families import TT
from dtzoo.observations import kind_of, make_vec_env

ProgressFn = Callable[[int, int], None]  # (episodes done, episodes)
MAX_ENVS = 64  # envs stepped together in one vector env
MAX_TARGETS = 256  # target returns in one sweep (`--targets LO:HI:N`)


def episode_seeds(model_seed: int, episodes: int, base: int = 0) -> list[int]:
    """Eval episode seeds depend only on the model's seed, so comparisons are paired."""
    return [base * 1_000_000 + model_seed * 10_000 + i for i in range(episodes)]


def rollout(
    model,
    config: ModelConfig,
    target_return: float | Sequence[float],
    seeds: list[int],
    fast: bool = True,
    overlap: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Run len(seeds) episodes in lockstep, one batched forward per step; `target_return` is
    one number or one per episode. Returns (returns, lengths) per episode.

    The envs of one synchronous vector env are stepped in this process; an episode that ends
    leaves the batch, so neither its env nor the model works on it again. With `overlap=True`
    the envs step in a forked worker process, in two halves: while the worker steps one half,
    the model computes the other half's actions (a second core for the simulator). Both
    gymnasium's AsyncVectorEnv (one process per env) and this worker measured no faster than
    in-process stepping on the shared 2-core machine (docs/benchmarks.md), so it is off by
    default. `fast=False` makes the Agent run the reference forward. Returns are the same
    either way.
    """
    n = len(seeds)
    targets = np.broadcast_to(np.asarray(target_return, np.float64), (n,))
    overlap = overlap and n >= 2 and "fork" in mp.get_all_start_methods()
    key = (config.env["gym_id"], kind_of(config).name, config.env.get("max_episode_steps"), n)
    envs = take_envs(key)
    stepper = EnvWorker(envs.unwrapped.envs) if overlap else InProcess(envs.unwrapped.envs)
    try:
        obs = stepper.reset(seeds)
        groups = np.array_split(np.arange(n), 2 if overlap else 1)
        returns, lengths = np.zeros(n), np.zeros(n, np.int64)
        agents = [
            Agent(model, config, target_return=targets[g], num_envs=len(g), fast=fast)
            for g in groups
        ]
        for g, agent in zip(groups, agents):  # env index of each agent row, per group
            stepper.send(g, agent.act(obs[g]))
        while any(g.size for g in groups):
            for k, agent in enumerate(agents):
                if not groups[k].size:
                    continue
                obs, reward, done = stepper.receive()  # answers come in the order sent
                agent.observe(reward)
                returns[groups[k]] += reward
                lengths[groups[k]] += 1
                going = np.flatnonzero(~done)
                if going.size < groups[k].size:
                    agent.keep(going)
                    groups[k] = groups[k][going]
                if going.size:
                    stepper.send(groups[k], agent.act(obs[going]))
        give_back_envs(key, envs)  # every episode is reset with its seed: reusable
        return returns, lengths
    finally:
        stepper.close()
        if _ENVS.get(key) is not envs:
            envs.close()


# Vector envs kept for the next rollout on the same env: making 20 Hopper envs costs ~0.2 s,
# as much as evaluating 20 short episodes (a grid or an RTG sweep evaluates many models on one
# env). Safe because every rollout resets each env with its episode's seed.
_ENVS: dict[tuple, object] = {}
KEEP_ENVS = 2  # vector envs kept, the most recently used


def take_envs(key: tuple):
    """A vector env for key = (gym_id, kind, max_episode_steps, n): a kept one, or new."""
    envs = _ENVS.pop(key, None)
    return envs if envs is not None else make_vec_env(*key[:2], key[3], key[2])


def give_back_envs(key: tuple, envs) -> None:
    _ENVS[key] = envs
    while len(_ENVS) > KEEP_ENVS:
        _ENVS.pop(next(iter(_ENVS))).close()


def _step_all(envs: list, idx: np.ndarray, actions: np.ndarray) -> tuple:
    out = [envs[i].step(a) for i, a in zip(idx, actions)]
    return (
        np.stack([o[0] for o in out]),
        np.array([o[1] for o in out], np.float64),
        np.array([o[2] or o[3] for o in out]),
    )


class InProcess:
    """Steps the envs here, when asked: the same interface as EnvWorker."""

    def __init__(self, envs: list):
        self.envs, self.pending = envs, []

    def reset(self, seeds: list[int]) -> np.ndarray:
        return np.stack([e.reset(seed=int(s))[0] for e, s in zip(self.envs, seeds)])

    def send(self, idx: np.ndarray, actions: np.ndarray) -> None:
        self.pending.append((idx, actions))

    def receive(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _step_all(self.envs, *self.pending.pop(0))

    def close(self) -> None:
        pass


class EnvWorker(InProcess):
    """A forked process that owns copies of `envs` and steps the ones asked for while this
    process goes on (the model's forward overlaps the simulator on a second core)."""

    def __init__(self, envs: list):
        self.conn, child = mp.get_context("fork").Pipe()
        self.proc = mp.get_context("fork").Process(target=_worker, args=(child, envs), daemon=True)
        self.proc.start()
        child.close()

    def reset(self, seeds: list[int]) -> np.ndarray:
        self.conn.send(("reset", list(seeds)))
        return self._answer()

    def send(self, idx: np.ndarray, actions: np.ndarray) -> None:
        self.conn.send(("step", (idx, np.asarray(actions))))

    def receive(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._answer()

    def _answer(self):
        kind, value = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"evaluation env worker failed:\n{value}")
        return value

    def close(self) -> None:
        try:
            self.conn.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
        self.conn.close()


def _worker(conn, envs: list) -> None:
    import traceback

    local = InProcess(envs)
    while True:
        cmd, arg = conn.recv()
        if cmd == "close":
            return
        try:
            out = local.reset(arg) if cmd == "reset" else _step_all(envs, *arg)
            conn.send(("ok", out))
        except Exception:  # noqa: BLE001 - reported to the parent, which raises
            conn.send(("error", traceback.format_exc()))


def summarize(
    config: ModelConfig, target: float | None, returns: np.ndarray, lengths: np.ndarray
) -> dict:
    refs = config.env["ref_scores"]
    norm = 100.0 * (returns - refs["random"]) / (refs["expert"] - refs["random"])
    return {
        "target_return": None if target is None else float(target),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "normalized_mean": float(norm.mean()),
        "normalized_std": float(norm.std()),
        "length_mean": float(lengths.mean()),
        "returns": [float(x) for x in returns],
        "lengths": [int(x) for x in lengths],
    }


def evaluate(
    model,
    config: ModelConfig,
    episodes: int = 10,
    targets: list[float] | None = None,
    seed_base: int = 0,
    progress: ProgressFn | None = None,
) -> dict:
    """Roll out at every target return; the dict is what eval.json holds. A Trajectory
    Transformer plans for the highest value instead: one row, `target_return` None."""
    t0 = time.time()
    targets = list(config.target_returns if targets is None else targets)
    seeds = episode_seeds(config.seed, episodes, seed_base)
    roll, batch = rollout, MAX_ENVS
    if config.family == TT:
        from dtzoo.tt.cell import tt_rollout

        def roll(model, config, _targets, seeds):  # no target to condition on
            return tt_rollout(model, config, seeds)

        targets, batch = [None], 1  # (a planner runs one episode at a time)
    # every (target, episode) pair is one row; rows run in batches of up to MAX_ENVS envs, so
    # a sweep over 8 targets costs about as many forwards as one target
    rows = [(t, s) for t in targets for s in seeds]
    returns, lengths = np.zeros(len(rows)), np.zeros(len(rows), np.int64)
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        r, n = roll(model, config, [t for t, _ in chunk], [s for _, s in chunk])
        returns[start : start + len(chunk)], lengths[start : start + len(chunk)] = r, n
        if progress:
            progress(start + len(chunk), len(rows))
    results = [
        summarize(
            config,
            t,
            returns[i * episodes : (i + 1) * episodes],
            lengths[i * episodes : (i + 1) * episodes],
        )
        for i, t in enumerate(targets)
    ]
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


# ----------------------------------------------------------------------------- RTG sweep


def parse_targets(spec: str) -> list[float]:
    """ "LO:HI:N" -> N evenly spaced target returns: `parse_targets("0:100:3")` -> [0, 50, 100]."""
    from dtzoo.errors import UsageError

    shown = repr(spec) if len(spec) <= 60 else repr(spec[:55]) + "..."
    try:
        lo, hi, n = spec.split(":")
        # (a 5000-digit count: int() refuses it with a ValueError too; cap it before)
        lo_f, hi_f, n_i = float(lo), float(hi), int(n) if len(n) < 20 else MAX_TARGETS + 1
    except ValueError:
        raise UsageError(f"--targets {shown}: expected LO:HI:N, e.g. -1200:0:7") from None
    if not (np.isfinite(lo_f) and np.isfinite(hi_f)):  # NaN would end up in rtg_sweep.json
        raise UsageError(f"--targets {shown}: LO and HI must be finite numbers")
    if n_i < 2 or hi_f <= lo_f:
        raise UsageError(f"--targets {shown}: need LO < HI and N >= 2")
    if n_i > MAX_TARGETS:  # every target is `episodes` rollouts, and one row of memory each
        raise UsageError(f"--targets {shown}: at most {MAX_TARGETS} targets")
    with np.errstate(all="ignore"):
        targets = np.linspace(lo_f, hi_f, n_i)
    if not np.isfinite(targets).all():  # e.g. -1e308:1e308 (HI - LO overflows)
        raise UsageError(f"--targets {shown}: LO and HI too far apart")
    return [float(x) for x in targets]


def default_sweep_targets(config: ModelConfig, n: int = 8) -> list[float]:
    """From the random score to 50% beyond the expert score: past what the data holds."""
    lo, hi = config.env["ref_scores"]["random"], config.env["ref_scores"]["expert"]
    return [float(x) for x in np.linspace(lo, hi + 0.5 * (hi - lo), n)]


def rtg_sweep(
    model,
    config: ModelConfig,
    targets: list[float],
    episodes: int = 10,
    seed_base: int = 0,
    progress: ProgressFn | None = None,
) -> dict:
    """Achieved vs target return over a range of targets (rtg_sweep.json holds the result)."""
    report = evaluate(
        model, config, episodes=episodes, targets=targets, seed_base=seed_base, progress=progress
    )
    report["kind"] = "rtg_sweep"
    report["data_returns"] = {k: config.dataset.get(f"return_{k}") for k in ("min", "mean", "max")}
    # generalisation beyond the data: the marks every table and plot of a sweep shows
    best = max(report["results"], key=lambda r: r["return_mean"])
    data_best = report["data_returns"]["max"]  # None in configs that predate it
    report["data_best_return"] = data_best
    report["expert_return"] = config.env["ref_scores"]["expert"]
    report["best_achieved"] = {
        "target_return": best["target_return"],
        "return_mean": best["return_mean"],
    }
    report["above_data_best"] = (
        best["return_mean"] - data_best
        if data_best is not None and best["return_mean"] > data_best
        else None
    )
    return report


def sweep_summary(report: dict) -> str:
    """One line under a sweep's table: the data's best return, the expert score and how far the
    best achieved return lies above the data's best (works on rtg_sweep.json of any age)."""
    from dtzoo.plots import sweep_marks

    m = sweep_marks(report)
    parts = [
        f"data's best return {m['data_best']:.1f}"
        if m["data_best"] is not None
        else "data's best return unknown",
        f"expert score {m['expert']:.1f}" if m["expert"] is not None else "",
    ]
    best = m["best_achieved"]
    if best is not None:
        where = (
            f"{m['above_data_best']:.1f} above the data's best"
            if m["above_data_best"] is not None
            else "not above the data's best"
        )
        parts.append(
            f"best achieved {best['return_mean']:.1f} at target "
            f"{best['target_return']:.1f} ({where})"
        )
    return "; ".join(p for p in parts if p)
