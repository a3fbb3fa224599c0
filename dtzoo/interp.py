"""A dtzoo checkpoint as a TransformerLens `HookedRootModule` (optional: `pip install dtzoo[interp]`).

TransformerLens 4 removed `HookedTransformer`; what it keeps for models it does not know is
`HookedRootModule` + `HookPoint` ("the supported way to add TransformerLens-style hooks to
arbitrary nn.Modules"). `HookedDecisionTransformer` is our `DecisionTransformer` with
TransformerLens's own `HookPoint`s in place of ours, under the same names, on a
`HookedRootModule`: TransformerLens's `run_with_cache`, `run_with_hooks`, `hooks`, `add_hook`,
`reset_hooks`, `list_hooks` and `ActivationCache` drive it, and the forward is ours, so every
activation equals the one `DecisionTransformer.run_with_cache` records.

    >>> from dtzoo.interp import load_hooked
    >>> model, config = load_hooked("pendulum-2L-seed0")            # or revision="step64"
    >>> preds, cache = model.run_with_cache(states, actions, rtg, timesteps)
    >>> cache["resid_post", 1].shape                                 # (batch, 3*T, d_model)
    >>> cache["pattern", 0].shape                                    # (batch, heads, 3*T, 3*T)
    >>> ablate = lambda x, hook: torch.zeros_like(x)                 # TL signature: (act, hook)
    >>> model.run_with_hooks(states, actions, rtg, timesteps, fwd_hooks=[("hook_embed_rtg", ablate)])

Why not `TransformerBridge`: the bridge wraps a Hugging Face model through an
`ArchitectureAdapter` whose component map is a language model's (token embedding, position
embedding, blocks, final norm, unembedding; a tokenizer is required and `forward` takes token
ids or `inputs_embeds` and returns logits). A DT has four input streams (R, s, a, t) interleaved
into three tokens per step, a LayerNorm over the embedded tokens, and a regression head read from
the state tokens only; TransformerLens 4.3 has no adapter for transformers'
`DecisionTransformerModel`. Only the GPT-2 trunk could be bridged (fed `inputs_embeds`), which
loses the embedding hooks and the action head. `HookedRootModule` represents the whole DT
exactly, so that is what we use. The same model also works unchanged with nnsight:
`nnsight.NNsight(model)` (see docs/interpretability.md).
"""

from __future__ import annotations

import os

import torch

from dtzoo.model import DecisionTransformer, DTConfig
from dtzoo.model import HookPoint as DtzooHookPoint

try:
    from transformer_lens import ActivationCache, HookedRootModule
    from transformer_lens.hook_points import HookPoint as TLHookPoint
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"dtzoo.interp needs TransformerLens ({e}); install it with `pip install 'dtzoo[interp]'`"
    ) from e

__all__ = ["HookPoint", "HookedDecisionTransformer", "load_hooked", "to_transformer_lens"]


class HookPoint(TLHookPoint, DtzooHookPoint):
    """TransformerLens's HookPoint that is also a dtzoo HookPoint (so isinstance checks in
    either library find it). Both are identities; TransformerLens's hook machinery applies."""


def _swap_hook_points(root: torch.nn.Module) -> None:
    """Replace every dtzoo HookPoint under `root` by a TransformerLens one, in place."""
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DtzooHookPoint) and not isinstance(child, TLHookPoint):
                setattr(parent, name, HookPoint())  # same key in _modules: order is kept


class HookedDecisionTransformer(HookedRootModule, DecisionTransformer):
    """The dtzoo Decision Transformer as a TransformerLens `HookedRootModule`.

    Same parameters (state_dict keys), same forward, same hook names as `DecisionTransformer`
    (`model.hook_names()`); the hook API is TransformerLens's: hook functions are called as
    `fn(activation, hook=HookPoint)` (use `hook.name`), and `run_with_cache` returns an
    `ActivationCache` (`cache["resid_pre", 0]`, `cache["pattern", 1]`, ...), or a plain dict with
    `return_cache_object=False`.
    """

    def __init__(self, cfg: DTConfig):
        DecisionTransformer.__init__(self, cfg)  # nn.Module.__init__ runs once, in there
        self.is_caching = False
        self.context_level = 0
        _swap_hook_points(self)
        self.setup()  # TransformerLens: names every module, builds mod_dict and hook_dict

    # TransformerLens's HookedRootModule.hook_points() returns hook_dict.values(); ours a dict
    def hook_names(self) -> list[str]:
        """Every hook point, in forward order (the same list as DecisionTransformer's)."""
        return list(self.hook_dict)

    def run_with_cache(self, *model_args, return_cache_object: bool = True,
                       remove_batch_dim: bool = False, **kwargs):
        """TransformerLens's run_with_cache; the cache is an `ActivationCache` by default."""
        out, cache = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim,
                                            **kwargs)
        if return_cache_object:
            cache = ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)
        return out, cache


def to_transformer_lens(model: DecisionTransformer) -> HookedDecisionTransformer:
    """A HookedDecisionTransformer with `model`'s weights (a copy), dtype, device and mode."""
    if isinstance(model, HookedDecisionTransformer):
        return model
    p = next(model.parameters())
    hooked = HookedDecisionTransformer(model.cfg).to(device=p.device, dtype=p.dtype)
    hooked.load_state_dict(model.state_dict(), strict=True)
    return hooked.train(model.training)


def load_hooked(model: str | os.PathLike, revision: str = "main", **kwargs):
    """`dtzoo.load(...)` as a HookedDecisionTransformer: returns `(model, config)`, eval mode."""
    from dtzoo.api import load

    net, config = load(model, revision=revision, **kwargs)
    return to_transformer_lens(net), config
