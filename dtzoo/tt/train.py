"""Training one Trajectory Transformer: the paper's recipe in a minimal seeded loop.

AdamW (betas 0.9/0.95, weight decay 0.1 on matmul weights only), lr 6e-4 with linear warmup
and cosine decay to 10%, gradient clipping at 1.0, the weighted next-token loss of
`TrajectoryTransformer.loss` on windows from `WindowSampler`.

    >>> result = train_tt(tokenize(data), TTRecipe(steps=1000), seed=0)
    >>> result.model, result.history[-1]          # the trained model, the last loss
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from dtzoo.errors import TrainingError
from dtzoo.tt.data import TTData, WindowSampler
from dtzoo.tt.model import TrajectoryTransformer, TTConfig
from dtzoo.tt.settings import TTRecipe

ProgressFn = Callable[[int, int, float], None]  # (step, total, loss)
StepFn = Callable[[int, "TrajectoryTransformer"], None]  # (steps done, model): checkpoints


@dataclass
class TTTrainResult:
    model: TrajectoryTransformer
    history: list[float] = field(default_factory=list)  # the loss at every step


def lr_factor(step: int, recipe: TTRecipe) -> float:
    """The multiplier of lr at `step`: linear warmup, then cosine to min_lr_fraction.

    >>> lr_factor(0, TTRecipe(steps=100, warmup_steps=10))
    0.1
    """
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    span = max(recipe.steps - recipe.warmup_steps, 1)
    progress = min((step - recipe.warmup_steps) / span, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(recipe.min_lr_fraction, cosine)


def make_optimizer(model: nn.Module, recipe: TTRecipe) -> torch.optim.AdamW:
    """AdamW with weight decay on the matmul weights only (not biases, LayerNorms or the
    token and position embeddings), as the paper's configure_optimizers."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        matmul = p.ndim >= 2 and not name.startswith(("tok_emb", "pos_emb"))
        (decay if matmul else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)


@dataclass
class TTTraining:
    """A TT being trained: the model, AdamW, the lr schedule and the window sampler, at `step`.
    `run` goes on to `recipe.steps`; a caller that saved `optim`, `sched`, `sampler` and the
    RNGs at some step can restore them and set `step` to continue exactly (dtzoo.tt.cell)."""

    model: TrajectoryTransformer
    optim: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    sampler: WindowSampler
    recipe: TTRecipe
    device: torch.device
    step: int = 0

    def run(self, progress: ProgressFn | None = None, on_step: StepFn | None = None) -> list[float]:
        """Train from `step` to `recipe.steps`; returns the loss of every step taken."""
        history: list[float] = []
        self.model.train()
        while self.step < self.recipe.steps:
            batch = self.sampler.sample(self.recipe.batch_size)
            batch = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
            loss = self.model.loss(batch["inputs"], batch["targets"], batch["mask"])
            if not torch.isfinite(loss):
                raise TrainingError(f"TT loss is {loss.item()} at step {self.step + 1}")
            self.optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
            self.optim.step()
            self.sched.step()
            self.step += 1
            history.append(loss.item())
            if progress:
                progress(self.step, self.recipe.steps, history[-1])
            if on_step:
                on_step(self.step, self.model)
        self.model.eval()
        return history


def start_tt(
    data: TTData,
    recipe: TTRecipe | None = None,
    config: TTConfig | None = None,
    seed: int = 0,
    max_path_length: int | None = None,
    device: str | torch.device = "cpu",
) -> TTTraining:
    """A fresh TTTraining at step 0; `config` defaults to the paper's architecture for the
    data's dimensions and bins. The seed fixes the initialisation, the windows and dropout."""
    recipe = recipe or TTRecipe()
    if config is None:
        config = TTConfig(
            observation_dim=data.observation_dim,
            action_dim=data.action_dim,
            n_bins=data.discretizer.n_bins,
        )
    if (config.observation_dim, config.action_dim, config.n_bins) != (
        data.observation_dim,
        data.action_dim,
        data.discretizer.n_bins,
    ):
        raise TrainingError("the TT config's dimensions or bins do not match the data's")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = TrajectoryTransformer(config).to(device)
    sampler = WindowSampler(data, config.context_len, max_path_length, seed=seed)
    optim = make_optimizer(model, recipe)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_factor(s, recipe))
    return TTTraining(model, optim, sched, sampler, recipe, device)


def train_tt(
    data: TTData,
    recipe: TTRecipe | None = None,
    config: TTConfig | None = None,
    seed: int = 0,
    max_path_length: int | None = None,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    on_step: StepFn | None = None,
) -> TTTrainResult:
    """Train a TT on `data` (dtzoo.tt.data.tokenize) from scratch (see `start_tt`).
    `on_step(n, model)` runs before the first step (n = 0) and after every step
    (n = 1..steps), e.g. to save `step<n>` checkpoints on a schedule.

    >>> result = train_tt(tt_data, TTRecipe(steps=200, batch_size=32), seed=0)
    """
    training = start_tt(data, recipe, config, seed, max_path_length, device)
    if on_step:
        on_step(0, training.model)
    history = training.run(progress, on_step)
    return TTTrainResult(model=training.model, history=history)
