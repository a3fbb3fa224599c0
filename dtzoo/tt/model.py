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

import math

import torch
import torch.nn.functional as F
from torch import nn

from dtzoo.model import Block, DecisionTransformer, HookPoint
from dtzoo.tt.settings import FAMILY, TOKEN_KINDS, TTConfig  # noqa: F401 (re-exported)


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
