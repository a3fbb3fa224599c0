"""The Trajectory Transformer (Janner et al. 2021): a GPT over discretised transitions.

Each transition (s_t, a_t, r_t, V_t) is `transition_dim` = obs + act + 2 tokens, one per
dimension, each an integer bin in 0..n_bins-1 (dtzoo.tt.discretize); `n_bins` is the stop
token that fills a window after its episode has ended. A token of dimension d is embedded as
row `d * n_bins + token` of one table (the paper's `offset`; the stop token has its own last
row), plus a learned position embedding; then GPT-2 pre-LN blocks (dtzoo.model.Block, with
the paper's mask: no token attends to a value token), a final LayerNorm and one output head
per transition dimension (the paper's EinLinear): position p, of dimension p mod
transition_dim, predicts token p + 1 over n_bins + 1 classes.

    >>> model = TrajectoryTransformer(TTConfig(observation_dim=3, action_dim=1))
    >>> logits = model(tokens)                       # (B, L, n_bins + 1), L <= block_size
    >>> loss = model.loss(tokens[:, :-1], tokens[:, 1:], mask)
    >>> logits, cache = model.run_with_cache(tokens)
    >>> cache["blocks.0.attn.hook_pattern"].shape   # (B, n_heads, L, L)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dtzoo.architecture import Architecture, field_of, value_problem
from dtzoo.model import Block, DecisionTransformer, HookPoint

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

    def loss_weights(self) -> torch.Tensor:
        """(transition_dim,) weight of a target token of each dimension."""
        return torch.tensor(
            [1.0] * self.observation_dim
            + [self.action_weight] * self.action_dim
            + [self.reward_weight, self.value_weight]
        )


class EinLinear(nn.Module):
    """`n` independent bias-free linear maps; input (..., n, in) -> (..., n, out), map i
    applied to slot i (the paper's per-dimension output heads)."""

    def __init__(self, n: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))
        for w in self.weight:  # each head initialised as an nn.Linear would be (as the paper)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("noi,...ni->...no", self.weight, x)


class TrajectoryTransformer(nn.Module):
    def __init__(self, cfg: TTConfig):
        super().__init__()
        self.cfg = cfg
        D, d = cfg.transition_dim, cfg.d_model
        self.tok_emb = nn.Embedding(cfg.n_bins * D + 1, d)  # + the shared stop token
        self.pos_emb = nn.Parameter(torch.zeros(cfg.block_size, d))
        # registration order = forward order, so hook_names() reads top to bottom
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(d)
        self.hook_final = HookPoint()
        self.head = EinLinear(D, d, cfg.n_bins + 1)
        self.apply(DecisionTransformer._init_weights)  # GPT-2 init (EinLinear keeps its own)
        L = cfg.block_size
        mask = torch.ones(L, L, dtype=torch.bool).tril()
        # the paper's mask: no token attends to a value token (V_t is a target, never read;
        # planning feeds a placeholder there); no row is empty: position 0 is an observation
        mask[:, D - 1 :: D] = False
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("offsets", torch.arange(D) * cfg.n_bins, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) int64, L <= block_size, starting at a transition's first token (0..
        n_bins-1, or n_bins = stop) -> logits (B, L, n_bins + 1) for the token after each."""
        B, L = tokens.shape
        cfg, D = self.cfg, self.cfg.transition_dim
        if L > cfg.block_size:
            raise ValueError(f"{L} tokens exceed the block size {cfg.block_size}")
        offsets = self.offsets.repeat(-(-L // D))[:L]
        idx = torch.where(tokens == cfg.stop_token, cfg.n_bins * D, tokens + offsets)
        pos = self.pos_emb[:L].expand(B, L, -1)
        x = self.hook_embed(self.tok_emb(idx)) + self.hook_pos_embed(pos)
        x = self.drop(x)
        mask = self.mask[None, None, :L, :L]
        for block in self.blocks:
            x = block(x, mask)
        x = self.hook_final(self.ln_final(x))
        # pad to whole transitions so position p meets head p mod D, then crop back
        pad = -L % D
        x = F.pad(x, (0, 0, 0, pad)).view(B, (L + pad) // D, D, -1)
        return self.head(x).reshape(B, L + pad, -1)[:, :L]

    def loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The paper's loss: next-token cross-entropy weighted per dimension (action_weight on
        action targets, ...), masked targets counting zero, mean over all targets.

        >>> loss = model.loss(window[:, :-1], window[:, 1:], target_mask)
        """
        logits = self(inputs)
        ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, L)
        L, D = targets.shape[1], self.cfg.transition_dim
        # target j is the token at position j + 1 of the window
        weights = self.cfg.loss_weights().to(ce.device).repeat(-(-(L + 1) // D))[1 : L + 1]
        ce = ce * weights
        if mask is not None:
            ce = ce * mask
        return ce.mean()

    # ------------------------------------------------------------------ interpretability
    # The DT's implementations: they rely only on named_modules() and HookPoint.
    hook_points = DecisionTransformer.hook_points
    hook_names = DecisionTransformer.hook_names
    hooks = DecisionTransformer.hooks
    run_with_hooks = DecisionTransformer.run_with_hooks
    run_with_cache = DecisionTransformer.run_with_cache
