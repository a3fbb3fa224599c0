"""A Trajectory Transformer as a cell of the zoo: trained by `dtzoo train` from the same Minari
datasets into the same run directory as a DT (final model, `step<N>` checkpoints on the
registry's schedule, training_log.csv, learning curve), evaluated by `dtzoo eval` with beam
search, published and pulled like any model directory.

Its config.json is a DT's with `"family": "trajectory-transformer"`, the TT's architecture
block (TTConfig.architecture), and under `extra` the discretizer's bin edges and the planning
settings (`{"discretizer": {"kind", "n_bins", "edges"}, "planning": PlanSettings.to_dict()}`):
everything to plan without the dataset. A TT plans for the highest value, so it has no target
returns (its results row has `target_return: null`).

    >>> result = train_tt_cell(registry.resolve("pendulum-tt-1L-seed0"), registry.checkpoints)
    >>> model, config = load_model(result.path)           # a TrajectoryTransformer
    >>> returns, lengths = tt_rollout(model, config, seeds=[0, 1])

A TT run that is interrupted starts again from step 0 (its training state is not saved); its
checkpoints are replaced as the new run reaches them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from dtzoo.checkpoint import ModelConfig, save_model, write_weights
from dtzoo.errors import TrainingError
from dtzoo.families import TT
from dtzoo.fsutil import atomic_write_json, atomic_write_text
from dtzoo.modeldir import CONFIG, CURVE, WEIGHTS, RunDir
from dtzoo.registry import MAX_STEPS, CheckpointSchedule, ModelSpec
from dtzoo.tt.data import tokenize
from dtzoo.tt.discretize import Discretizer
from dtzoo.tt.model import TrajectoryTransformer, TTConfig
from dtzoo.tt.plan import PlanSettings, TTAgent, rollout
from dtzoo.tt.train import TTRecipe, lr_factor, train_tt

ProgressFn = Callable[[int, int, float], None]  # (step, total, loss)


def tt_settings(spec: ModelSpec) -> tuple[dict[str, Any], TTRecipe, PlanSettings, str]:
    """The registry's `tt:` block over the paper's defaults: (TTConfig keywords but the dims,
    TTRecipe, PlanSettings, discretization)."""
    tt = spec.tt or {}
    model = {**tt.get("model", {}), "n_layers": spec.n_layers}
    return (
        model,
        TTRecipe(**tt.get("train", {})),
        PlanSettings(**tt.get("plan", {})),
        tt.get("discretization", "quantile"),
    )


def tt_model_config(
    spec: ModelSpec,
    data,
    cfg: TTConfig,
    disc: Discretizer,
    plan: PlanSettings,
    recipe: TTRecipe,
    step: int,
) -> ModelConfig:
    """config.json of a TT trained on `data` (dtzoo.data.Trajectories)."""
    from dtzoo.train import dataset_block, env_block

    return ModelConfig(
        model_id=spec.model_id,
        architecture=cfg.architecture(),
        state_dim=cfg.observation_dim,
        act_dim=cfg.action_dim,
        action_space=data.action_space.to_dict(),
        state_mean=[],  # a TT reads raw values through its discretizer: no normalisation
        state_std=[],
        reward_scale=1.0,
        target_returns=[],
        env=env_block(spec, data),
        dataset=dataset_block(data),
        recipe={**dataclasses.asdict(recipe), "discretization": disc.kind},
        seed=spec.seed,
        step=step,
        total_steps=recipe.steps,
        extra={"discretizer": disc.to_dict(), "planning": plan.to_dict()},
        family=TT,
    )


def train_tt_cell(
    spec: ModelSpec,
    schedule: CheckpointSchedule,
    steps: int | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
):
    """Train one TT cell into its run directory; returns dtzoo.train.TrainResult."""
    from dtzoo.data import check_matches_env, load_trajectories
    from dtzoo.plots import learning_curve
    from dtzoo.train import TrainResult, log_csv, pick_device

    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise TrainingError(f"--steps {str(steps)[:30]}: must be from 1 to {MAX_STEPS}")
    run = RunDir.of(spec.model_id)
    trained = run.trained_steps()
    if trained is not None and steps and steps != trained:
        raise TrainingError(
            f"{spec.model_id} is trained for {trained} steps and a Trajectory Transformer keeps "
            f"no training state to extend it: delete {run.path} to train it with --steps {steps}"
        )
    run.remove_stale_temps()
    t0 = time.time()
    model_kw, recipe, plan, discretization = tt_settings(spec)
    recipe = dataclasses.replace(recipe, steps=steps or recipe.steps)
    data = load_trajectories(spec.env.dataset, spec.env.obs)
    check_matches_env(data, spec.env.gym_id, spec.env.obs)
    tt = tokenize(
        data,
        n_bins=model_kw.get("n_bins", TTConfig.n_bins),
        kind=discretization,
        discount=model_kw.get("discount", TTConfig.discount),
    )
    cfg = TTConfig(observation_dim=tt.observation_dim, action_dim=tt.action_dim, **model_kw)
    _check_size(cfg, spec.model_id)

    def config_at(step: int) -> ModelConfig:
        return tt_model_config(spec, data, cfg, tt.discretizer, plan, recipe, step)

    keep = schedule.merged(spec.env.checkpoints).for_run(recipe.steps)
    log, pending, log_every = [], [], max(1, recipe.steps // 100)

    def on_loss(step: int, total: int, loss: float) -> None:
        pending.append(loss)
        if step % log_every == 0 or step == total:
            lr = recipe.lr * lr_factor(step - 1, recipe)
            row = {"step": step, "loss": float(np.mean(pending)), "lr": lr}
            log.append({**row, "elapsed_s": round(time.time() - t0, 3), "val_loss": None})
            pending.clear()
            atomic_write_text(run.log, log_csv(log))
        if progress:
            progress(step, total, log[-1]["loss"] if log else float("nan"))

    def on_step(step: int, model: TrajectoryTransformer) -> None:
        if step in keep:
            model.eval()
            save_model(model, config_at(step), run.checkpoint(step).path)
            model.train()

    result = train_tt(
        tt,
        recipe,
        cfg,
        seed=spec.seed,
        device=pick_device(device),
        progress=on_loss,
        on_step=on_step,
    )
    write_weights(result.model, run.file(WEIGHTS))
    learning_curve(log, run.file(CURVE), title=spec.model_id)
    atomic_write_json(run.file(CONFIG), config_at(recipe.steps).to_dict())
    run.seal(new_weights=True)
    final = log[-1]["loss"] if log else float("nan")
    return TrainResult(spec.model_id, run.path, recipe.steps, None, final, time.time() - t0)


def _check_size(cfg: TTConfig, where: str) -> None:
    """Refuse a model too large to build, before a weight is allocated."""
    from dtzoo.checkpoint import tt_size_problem

    problem = tt_size_problem(cfg.architecture(), cfg.observation_dim, cfg.action_dim)
    if problem:
        raise TrainingError(f"{where}: {problem}")


def planning(config: ModelConfig) -> tuple[Discretizer, PlanSettings]:
    """The discretizer and planning settings a TT's config.json holds."""
    extra = config.extra
    return Discretizer.from_dict(extra["discretizer"]), PlanSettings.from_dict(extra["planning"])


def tt_agent(model: TrajectoryTransformer, config: ModelConfig) -> TTAgent:
    """A policy that plans with a TT model directory's model: `.act(obs)`, `.observe(r)`."""
    disc, plan = planning(config)
    return TTAgent(model, model.cfg, disc, plan, action_space=config.action_space)


def tt_rollout(
    model: TrajectoryTransformer, config: ModelConfig, seeds: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Planned episodes of a TT model directory's model, one per seed: (returns, lengths)."""
    disc, plan = planning(config)
    return rollout(
        model,
        disc,
        config.env["gym_id"],
        seeds,
        plan,
        action_space=config.action_space,
        max_episode_steps=config.env.get("max_episode_steps"),
    )
