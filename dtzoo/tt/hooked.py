"""The Trajectory Transformer as a TransformerLens `HookedRootModule` (needs `dtzoo[interp]`).

`HookedTrajectoryTransformer` is our `TrajectoryTransformer` (same parameters, same forward)
with TL's `HookPoint`s and the surface TL's utilities read, built from the DT bridge's parts
(dtzoo.interp.hooked: `HookedBlocks`, `LayerNorm`, `HookedAttention`, `HookedMLP`):

- `cfg`: a `HookedTTConfig` (TTConfig + TL's fields: `n_ctx` = block_size, `d_vocab` =
  n_bins * transition_dim + 1 rows of the token table, `d_vocab_out` = n_bins + 1, `d_head`,
  `act_fn`, `normalization_type="LN"`, `positional_embedding_type="standard"`, ...);
- weights as TL lays them out: `W_E` [d_vocab, d_model] (row d * n_bins + bin for dimension
  d; the stop token last), `W_pos` [n_ctx, d_model], `W_Q, W_K, W_V` [n_layers, n_heads,
  d_model, d_head], `W_O`, `b_*`, `W_in`, `W_out`, `QK`, `OV` (per block too, as views);
- the unembedding is one head per transition dimension (the paper's EinLinear):
  `W_U` [transition_dim, d_model, n_bins + 1], `W_U[d]` the head of dimension d, a view of
  `head.weight`; position p uses `W_U[p % transition_dim]` (logits = ln_final(x_p) @ W_U[d]);
  `b_U` is zeros [transition_dim, n_bins + 1] (the heads have no bias);
- hook points: the TT's (`hook_embed`, `hook_pos_embed`, the blocks', `hook_final`) plus
  `*.hook_scale` / `*.hook_normalized` on `ln1`, `ln2`, `ln_final` and
  `blocks.{i}.attn.hook_result` with `model.set_use_attn_result(True)`. `hook_pos_embed` is
  the position table broadcast over the batch (an expanded view): a hook replaces it (returns a
  new tensor) rather than writing into it.

What applies as-is (tests/test_tt_hooked.py): `run_with_cache` (an `ActivationCache`),
`run_with_hooks` and `hooks`, the head weights and `QK` / `OV`, `cache.decompose_resid`,
`accumulated_resid`, `stack_head_results`, `get_full_resid_decomposition`,
`apply_ln_to_stack`, and `transformer_lens.patching` (the TT's input already is a token
tensor [batch, pos]). What does not: anything that reads logits through one `W_U` matrix
(`cache.logit_attrs` and `tokens_to_residual_directions` without a dimension: ValueError;
`cache.logit_lens`: NotImplementedError, as `unembed` is None); `model.logit_attrs(cache,
stack, targets)` is direct logit attribution with each position's own head.

    >>> from dtzoo.tt.hooked import to_transformer_lens
    >>> hooked = to_transformer_lens(model)             # a TrajectoryTransformer
    >>> logits, cache = hooked.run_with_cache(tokens)   # == model(tokens), bit for bit
    >>> cache.decompose_resid().sum(0)                  # == cache["resid_post", -1]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

# (TransformerLens's classes through dtzoo.interp.hooked, which says how to install it)
from dtzoo.interp.hooked import (
    ActivationCache,
    HookedBlocks,
    HookedRootModule,
    TLConfigFields,
    hooked_copy,
)
from dtzoo.tt.model import TrajectoryTransformer, TTConfig


def _tt_fields(cfg: TTConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TTConfig)}


@dataclass
class HookedTTConfig(TLConfigFields, TTConfig):
    """A TTConfig that also carries the fields TransformerLens's utilities read.

    >>> cfg = HookedTTConfig.from_tt(TTConfig(3, 1, n_bins=20, context_len=2))
    >>> cfg.n_ctx, cfg.d_vocab, cfg.d_vocab_out, cfg.d_head
    (11, 121, 21, 32)
    """

    model_name: str = "trajectory-transformer"
    original_architecture: str = "TrajectoryTransformer"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._derive_tl(
            n_ctx=self.block_size,
            d_vocab_out=self.n_bins + 1,
            d_vocab=self.n_bins * self.transition_dim + 1,
        )

    @classmethod
    def from_tt(cls, cfg: TTConfig, **overrides: Any) -> "HookedTTConfig":
        """The TTConfig fields of `cfg`, TL's fields derived."""
        return cls(**_tt_fields(cfg), **overrides)

    def to_tt(self) -> TTConfig:
        """Back to a plain TTConfig (what checkpoints store)."""
        return TTConfig(**_tt_fields(self))

    def architecture(self) -> dict[str, Any]:
        """config.json's block, as the plain TTConfig's (TL's fields are not architecture)."""
        return self.to_tt().architecture()


class HookedTrajectoryTransformer(HookedBlocks, HookedRootModule, TrajectoryTransformer):
    """The dtzoo Trajectory Transformer as a TransformerLens `HookedRootModule`.

    Same parameters (state_dict keys), forward and loss as `TrajectoryTransformer`; hook
    functions are called as `fn(activation, hook=HookPoint)`; `run_with_cache` returns an
    `ActivationCache` (`cache["resid_pre", 0]`, `cache["scale"]`, `cache.decompose_resid()`).
    The module docstring lists which TL utilities apply.
    """

    cfg: HookedTTConfig

    def __init__(self, cfg: TTConfig):
        cfg = cfg if isinstance(cfg, HookedTTConfig) else HookedTTConfig.from_tt(cfg)
        TrajectoryTransformer.__init__(self, cfg)  # nn.Module.__init__ runs once, in there
        self._add_tl_hooks(cfg)
        self.setup()  # TransformerLens: names every module, builds mod_dict and hook_dict

    W_E = property(lambda self: self.tok_emb.weight, doc="[d_vocab, d_model]")
    W_pos = property(lambda self: self.pos_emb, doc="[n_ctx, d_model]")
    W_U = property(
        lambda self: self.head.weight.transpose(1, 2),
        doc="[transition_dim, d_model, n_bins + 1]: W_U[d] is dimension d's head (a view)",
    )
    # TL's readout (logit_lens, logit_readout) reads `ln_final(x) @ W_U + b_U` with one
    # matrix; with no `unembed` it refuses instead of mixing the heads (`self.head` is ours)
    unembed = None

    @property
    def b_U(self) -> torch.Tensor:
        """[transition_dim, n_bins + 1] zeros: the heads have no bias."""
        w = self.head.weight
        return torch.zeros(w.shape[:2], device=w.device, dtype=w.dtype)

    def to_single_token(self, token: int) -> int:
        """A bin index (0..n_bins-1, or n_bins = stop): TL's `to_single_token`."""
        if isinstance(token, str):
            raise ValueError("a TT has no tokenizer: name tokens by their bin index")
        return int(token)

    def tokens_to_residual_directions(
        self, tokens: int | torch.Tensor, dim: int | None = None
    ) -> torch.Tensor:
        """The residual direction [..., d_model] of each token as transition dimension `dim`'s
        head reads it, in the space `apply_ln_to_stack` maps to: ln_final's gain times
        `W_U[dim]`'s column. `dim` is required: TL's single-W_U callers (`cache.logit_attrs`)
        cannot name it, so they get this error; use `model.logit_attrs` instead.

        >>> hooked.tokens_to_residual_directions(torch.tensor([3, 7]), dim=0).shape  # (2, d)
        """
        if dim is None:
            raise ValueError(
                "a Trajectory Transformer has one unembedding per transition dimension "
                "(W_U [transition_dim, d_model, n_bins + 1]): pass dim=, or use "
                "model.logit_attrs(cache, residual_stack, targets) for per-position attribution"
            )
        directions = self.ln_final.weight[:, None] * self.W_U[dim]  # [d_model, n_bins + 1]
        return directions[:, torch.as_tensor(tokens, device=directions.device)].movedim(0, -1)

    def logit_attrs(
        self, cache: ActivationCache, residual_stack: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Direct logit attribution through each position's own head: residual_stack
        [components, batch, pos, d_model] over a whole window from its first token (e.g.
        `cache.decompose_resid()`), targets [batch, pos] (the next tokens) -> [components,
        batch, pos]. Over a full decomposition, the sum plus `ln_final.bias @ W_U[d][:, t]` is
        the logit of target t at each position (TL's `cache.logit_attrs`, per dimension).

        >>> attrs = hooked.logit_attrs(cache, cache.decompose_resid(), window[:, 1:])
        """
        L, D = targets.shape[-1], self.cfg.transition_dim
        heads = (self.ln_final.weight[:, None] * self.W_U).transpose(1, 2)  # [D, n_bins+1, d]
        dims = torch.arange(L, device=targets.device) % D
        directions = heads[dims, targets]  # [batch, pos, d_model]
        scaled = cache.apply_ln_to_stack(residual_stack, layer=-1)
        return (scaled * directions).sum(-1)


def to_transformer_lens(model: TrajectoryTransformer) -> HookedTrajectoryTransformer:
    """A HookedTrajectoryTransformer with `model`'s weights (a copy), dtype, device and mode
    (`dtzoo.interp.to_transformer_lens` calls this for a TT).

    >>> hooked = to_transformer_lens(TrajectoryTransformer(TTConfig(3, 1)).eval())
    """
    if isinstance(model, HookedTrajectoryTransformer):
        return model
    return hooked_copy(model, HookedTrajectoryTransformer)


__all__ = [
    "HookedTTConfig",
    "HookedTrajectoryTransformer",
    "to_transformer_lens",
]
