"""The Trajectory Transformer's settings, without torch (the registry checks its `tt:` block
against them when it loads): the architecture and loss (`TTConfig`), the optimisation
(`TTRecipe`) and beam search (`PlanSettings`), each with the paper's defaults.

    >>> TTConfig(3, 1).architecture()["n_bins"], TTRecipe().lr, PlanSettings().beam_width
    (100, 0.0006, 4)
"""

from __future__ import annotations

import dataclasses
from dataclasses import KW_ONLY, dataclass
from typing import Any

from dtzoo.architecture import Architecture, field_of, value_problem
from dtzoo.errors import UsageError

TOKEN_KINDS = ("observation", "action", "reward", "value")
FAMILY = "trajectory-transformer"  # config.json's "family" (the DT's configs have none)
_DIMS = ("observation_dim", "action_dim")


def _tt_default(name: str, default: Any) -> Any:
    """Architecture's field `name`, its bounds and choices kept, with the TT paper's default."""
    return dataclasses.field(default=default, metadata=field_of(Architecture, name).metadata)


@dataclass
class TTConfig(Architecture):
    """Architecture and loss of one Trajectory Transformer (the paper's gym settings).

    The settings a DT shares (`Architecture`: context_len, d_model, n_heads, d_mlp,
    activation, dropout) are inherited with their bounds and choices, which the registry and
    __post_init__ check; three keep the paper's TT defaults (context 10, 4 heads, exact GELU).
    `context_len` counts transitions; the model sees at most `block_size` =
    context_len * transition_dim - 1 tokens (a window minus its last token, as in training).
    `d_mlp` and `activation` are what dtzoo.model.Block reads (the paper: 4 * d_model, GELU).
    Only the dims are positional: `TTConfig(3, 1, n_layers=2)`.
    """

    observation_dim: int
    action_dim: int
    _: KW_ONLY
    n_bins: int = 100
    n_layers: int = 4
    n_heads: int = _tt_default("n_heads", 4)
    context_len: int = _tt_default("context_len", 10)
    activation: str = _tt_default("activation", "gelu_exact")
    action_weight: float = 5.0
    reward_weight: float = 1.0
    value_weight: float = 1.0
    discount: float = 0.99

    def __post_init__(self) -> None:
        if min(self.observation_dim, self.action_dim, self.n_bins) < 1:
            raise ValueError("observation_dim, action_dim and n_bins must be >= 1")
        for f in dataclasses.fields(Architecture):  # the shared settings' bounds and choices
            problem = value_problem(f, getattr(self, f.name))
            if problem:
                raise ValueError(f"{f.name} {problem}")
        problem = self.arch_problem()
        if problem:
            raise ValueError(problem)

    @property
    def transition_dim(self) -> int:
        return self.observation_dim + self.action_dim + 2  # + reward, value

    @property
    def block_size(self) -> int:
        return self.context_len * self.transition_dim - 1

    @property
    def stop_token(self) -> int:
        """The token after an episode's end (every dimension), predicted like any other."""
        return self.n_bins

    def to_dict(self) -> dict[str, Any]:
        """Every field, the shared Architecture settings first: `TTConfig(3, 1).to_dict()[
        "n_bins"]` -> 100."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TTConfig":
        """Inverse of to_dict (unknown keys are an error, so a typo is not silently ignored)."""
        return cls(**d)

    def architecture(self) -> dict[str, Any]:
        """config.json's `architecture` block: every field but the dimensions, which
        config.json keeps as `state_dim` / `act_dim` (as for the DT)."""
        return {k: v for k, v in self.to_dict().items() if k not in _DIMS}

    @classmethod
    def from_architecture(
        cls, arch: dict[str, Any], observation_dim: int, action_dim: int
    ) -> "TTConfig":
        """Inverse of architecture(): `TTConfig.from_architecture(arch, cfg.state_dim, ...)`."""
        return cls(observation_dim=observation_dim, action_dim=action_dim, **arch)

    def token_position(self, pos: int) -> tuple[int, str, int]:
        """What flat position `pos` holds: (transition step, kind, dimension within the kind).
        With obs 3, act 1 (6 tokens a step): `token_position(9)` -> (1, "action", 0)."""
        if pos < 0:
            raise ValueError(f"position must be >= 0, got {pos}")
        step, i = divmod(pos, self.transition_dim)
        if i < self.observation_dim:
            return step, "observation", i
        i -= self.observation_dim
        if i < self.action_dim:
            return step, "action", i
        return step, ("reward", "value")[i - self.action_dim], 0

    def position(self, step: int, kind: str, dim: int = 0) -> int:
        """Inverse of token_position: `position(1, "action", 0)` -> 9 with obs 3, act 1."""
        sizes = dict(zip(TOKEN_KINDS, (self.observation_dim, self.action_dim, 1, 1)))
        if kind not in sizes or not 0 <= dim < sizes[kind]:
            raise ValueError(f"no token ({kind!r}, dim {dim}); kinds: {', '.join(TOKEN_KINDS)}")
        before = sum(sizes[k] for k in TOKEN_KINDS[: TOKEN_KINDS.index(kind)])
        return step * self.transition_dim + before + dim

    def loss_weights(self):
        """(transition_dim,) torch tensor: the weight of a target token of each dimension."""
        import torch

        return torch.tensor(
            [1.0] * self.observation_dim
            + [self.action_weight] * self.action_dim
            + [self.reward_weight, self.value_weight]
        )


@dataclass
class TTRecipe:
    """The paper's optimisation settings (config/offline.py), counted in steps, not tokens."""

    steps: int = 10_000
    batch_size: int = 256
    lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_steps: int = 500
    min_lr_fraction: float = 0.1  # cosine decay ends at 10% of lr
    grad_clip: float = 1.0


@dataclass
class PlanSettings:
    """Beam-search settings. The paper's gym defaults are horizon 15, beam_width 128,
    n_expand 2, k_obs 1, k_act None (with a 0.6 cdf filter), 5 context transitions and a
    5-transition window: 256 rows x 89 tokens of decoding per env step. These defaults (8 rows
    x 21 tokens) plan one Pendulum-v1 episode in seconds on one CPU core, and fit the context
    and the plan in the model's window (5 + 4 <= 10 transitions), so keys and values are
    computed once per token of a plan (see `Decoder`)."""

    horizon: int = 4
    beam_width: int = 4
    n_expand: int = 2
    k_obs: int | None = 1  # None: sample from the whole distribution
    k_act: int | None = 10
    k_rew: int | None = 1
    context_transitions: int = 5  # past transitions the agent puts before the observation
    max_context_transitions: int | None = None  # the window the model sees (None: its own)
    plan_freq: int = 1  # replan every `plan_freq` env steps; in between, follow the plan
    seed: int = 0  # the sampling RNG's seed (reset with the agent)

    def __post_init__(self) -> None:
        sizes = (self.horizon, self.beam_width, self.n_expand, self.plan_freq)
        if min(sizes) < 1 or self.context_transitions < 0:
            raise UsageError(
                "horizon, beam_width, n_expand and plan_freq must be >= 1, context_transitions >= 0"
            )
        if self.max_context_transitions is not None and self.max_context_transitions < 1:
            raise UsageError("max_context_transitions must be >= 1 (or None)")
        if self.plan_freq > self.horizon:
            raise UsageError(f"plan_freq {self.plan_freq} exceeds the horizon {self.horizon}")

    def to_dict(self) -> dict[str, Any]:
        """config.json's `planning` block: `PlanSettings().to_dict()["beam_width"]` -> 4."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PlanSettings":
        return cls(**d)
