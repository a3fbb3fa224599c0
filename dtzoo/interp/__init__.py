"""Interpretability for zoo models: a TransformerLens-complete hooked DT and one-call helpers.

`HookedDecisionTransformer` (dtzoo.interp.hooked) is the DT on TransformerLens's
`HookedRootModule`: TL's `run_with_cache`, `ActivationCache` analysis (`accumulated_resid`,
`decompose_resid`, `stack_head_results`, `get_full_resid_decomposition`, `logit_attrs`, ...)
and `transformer_lens.patching` run on it. `to_transformer_lens(model)` takes either family:
a Trajectory Transformer becomes a `HookedTrajectoryTransformer` (dtzoo.tt.hooked, the same
parts; its docstring says which TL utilities apply to its per-dimension heads). The helpers
(dtzoo.interp.tools) answer a DT's own questions in one call each, returning a dict and
writing JSON + PNG:
`patch` (activation patching between two returns-to-go), `rtg_scan`, `attribute` (direct
action attribution) and `attention` (attention by token kind R/s/a).

    >>> from dtzoo.interp import load_hooked
    >>> model = load_hooked("pendulum-2L-seed0")            # or revision="step64"
    >>> preds, cache = model.run_with_cache(states, actions, rtg, timesteps)
    >>> cache["resid_post", 1].shape                                 # (batch, 3*T, d_model)
    >>> cache.decompose_resid().sum(0)                               # == cache["resid_post", 1]
    >>> from dtzoo import interp
    >>> interp.patch(model, -150, -1200, out_dir="interp")["top"][0]

Why not `TransformerBridge`: the bridge wraps a Hugging Face model through an
`ArchitectureAdapter` whose component map is a language model's (token embedding, position
embedding, blocks, final norm, unembedding; a tokenizer is required and `forward` takes token
ids or `inputs_embeds` and returns logits). A DT has four input streams (R, s, a, t) interleaved
into three tokens per step, a LayerNorm over the embedded tokens, and a regression head read from
the state tokens only; TransformerLens 4.3 has no adapter for transformers'
`DecisionTransformerModel`. `HookedRootModule` represents the whole DT exactly, so that is what
we use. The same model also works unchanged with nnsight: `nnsight.NNsight(model)`.
"""

from __future__ import annotations

from dtzoo.interp.hooked import (
    DTInput,
    HookedDecisionTransformer,
    HookedDTConfig,
    HookPoint,
    load_hooked,
    to_transformer_lens,
)
from dtzoo.interp.tools import attention, attribute, patch, rollout_window, rtg_scan

__all__ = [
    "DTInput",
    "HookPoint",
    "HookedDTConfig",
    "HookedDecisionTransformer",
    "attention",
    "attribute",
    "load_hooked",
    "patch",
    "rollout_window",
    "rtg_scan",
    "to_transformer_lens",
]
