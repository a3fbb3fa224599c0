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

Training state (model, AdamW, schedule, sampler and RNG) is saved with every checkpoint in
`resume/`, as a DT's is: an interrupted TT run resumes from its last checkpoint bit for bit.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dtzoo.checkpoint import ModelConfig, save_model, write_weights
from dtzoo.errors import TrainingError
from dtzoo.families import TT
from dtzoo.fsutil import atomic_write_json, atomic_write_text
from dtzoo.modeldir import CONFIG, CURVE, WEIGHTS, RunDir
from dtzoo.registry import CheckpointSchedule, ModelSpec
from dtzoo.tt.data import tokenize
from dtzoo.tt.discretize import Discretizer
from dtzoo.tt.model import TrajectoryTransformer, TTConfig
from dtzoo.tt.plan import PlanSettings, TTAgent, rollout
from dtzoo.tt.train import TTRecipe, TTTraining, lr_factor, start_tt

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
    """Train (or resume) one TT cell in its run directory; returns dtzoo.train.TrainResult.
    At every checkpoint step the training state is saved as a DT's is (resume/, safetensors),
    so a killed run continues bit for bit."""
    from dtzoo.data import check_matches_env, load_trajectories
    from dtzoo.train import (
        TrainResult,
        check_fingerprint,
        load_training_state,
        pick_device,
        run_length,
    )

    run = RunDir.of(spec.model_id)
    model_kw, recipe, plan, discretization = tt_settings(spec)
    steps = run_length(run, steps, extendable=False)  # (its cosine schedule spans the run)
    state = run.newest_resume_state()
    recipe = dataclasses.replace(recipe, steps=steps or recipe.steps)
    t0 = time.time()
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
    training = start_tt(tt, recipe, cfg, seed=spec.seed, device=pick_device(device))
    log: list[dict] = []
    pending: list[float] = []
    if state is not None:
        meta = load_training_state(
            state, training.model, training.optim, training.sched, training.device
        )
        check_fingerprint(meta, data, spec.model_id, run.path)
        training.sampler.set_state(meta["sampler"])
        training.step, log, pending = meta["step"], meta["log"], meta["pending_losses"]
    resumed = training.step if state is not None else None
    cell = _TTCellLog(run, spec, data, cfg, tt.discretizer, plan, recipe, training, log, pending)
    keep = schedule.merged(spec.env.checkpoints).for_run(recipe.steps)

    def on_step(step: int, model: TrajectoryTransformer) -> None:
        if step in keep:
            cell.checkpoint(step)

    if resumed is None and 0 in keep:
        cell.checkpoint(0)
    training.run(progress=cell.progress(progress), on_step=on_step)
    cell.finish()
    final = log[-1]["loss"] if log else float("nan")
    return TrainResult(spec.model_id, run.path, recipe.steps, resumed, final, time.time() - t0)


@dataclass
class _TTCellLog:
    """What a TT cell writes while it trains: log rows, checkpoints with the training state,
    the final model directory."""

    run: RunDir
    spec: ModelSpec
    data: Any  # dtzoo.data.Trajectories
    cfg: TTConfig
    disc: Discretizer
    plan: PlanSettings
    recipe: TTRecipe
    training: TTTraining
    log: list[dict]  # training_log.csv's rows so far
    pending: list[float]  # losses since the last row

    def __post_init__(self) -> None:
        self.log_every = max(1, self.recipe.steps // 100)
        self.t0 = time.time() - (self.log[-1]["elapsed_s"] if self.log else 0.0)

    def config_at(self, step: int) -> ModelConfig:
        return tt_model_config(
            self.spec, self.data, self.cfg, self.disc, self.plan, self.recipe, step
        )

    def progress(self, outer: ProgressFn | None) -> ProgressFn:
        from dtzoo.train import log_csv

        def on_loss(step: int, total: int, loss: float) -> None:
            self.pending.append(loss)
            if step % self.log_every == 0 or step == total:
                lr = self.recipe.lr * lr_factor(step - 1, self.recipe)
                row = {"step": step, "loss": float(np.mean(self.pending)), "lr": lr}
                elapsed = round(time.time() - self.t0, 3)
                self.log.append({**row, "elapsed_s": elapsed, "val_loss": None})
                self.pending.clear()
                atomic_write_text(self.run.log, log_csv(self.log))
            if outer:
                outer(step, total, self.log[-1]["loss"] if self.log else float("nan"))

        return on_loss

    def checkpoint(self, step: int) -> None:
        """step<N>/ and the training state to resume from (the state after the directory)."""
        from dtzoo.train import save_training_state

        t = self.training
        t.model.eval()
        save_model(t.model, self.config_at(step), self.run.checkpoint(step).path)
        t.model.train()
        meta = {
            "step": step,
            "sampler": t.sampler.state(),
            "scheduler": t.sched.state_dict(),
            "dataset_fingerprint": self.data.fingerprint,
            "total_steps": self.recipe.steps,
            "pending_losses": list(self.pending),
            "log": self.log,
        }
        save_training_state(self.run, t.model, t.optim, meta, t.device)

    def finish(self) -> None:
        """The final model directory at the top of the run (config.json last = trained)."""
        from dtzoo.plots import learning_curve
        from dtzoo.train import log_csv

        write_weights(self.training.model, self.run.file(WEIGHTS))
        atomic_write_text(self.run.log, log_csv(self.log))
        learning_curve(self.log, self.run.file(CURVE), title=self.spec.model_id)
        atomic_write_json(self.run.file(CONFIG), self.config_at(self.recipe.steps).to_dict())
        self.run.seal(new_weights=True)


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
