"""The DT as a TransformerLens `HookedRootModule`, with what TL's analysis utilities read.

TransformerLens 4 removed `HookedTransformer`; what it keeps for models it does not know is
`HookedRootModule` + `HookPoint`. `HookedDecisionTransformer` is our `DecisionTransformer`
(same parameters, same forward) with TL's own `HookPoint`s in place of ours and the surface
TL's utilities read from a model:

- `cfg`: a `HookedDTConfig` (DTConfig + TL's fields: `normalization_type="LN"`, `attn_only`,
  `device`, `d_head`, `n_ctx` = 3 * context_len, `d_vocab_out` = act_dim, `act_fn`, ...);
- weights as TL lays them out: `W_Q, W_K, W_V` [n_layers, n_heads, d_model, d_head] (views
  of the fused `qkv`), `b_Q, b_K, b_V` [n_layers, n_heads, d_head], `W_O` [n_layers, n_heads,
  d_head, d_model], `b_O`, `W_in` [n_layers, d_model, d_mlp], `W_out`, `b_in`, `b_out`, the
  action head as `W_U` [d_model, act_dim] / `b_U`, and `QK` / `OV` `FactoredMatrix` circuits;
  per block the same as `blocks[i].attn.W_Q` (a view: editing it edits the model);
- extra hook points: `hook_embed` (the embedding LayerNorm's output = the residual stream's
  start, so `decompose_resid` sums to the final residual), `*.hook_scale` and
  `*.hook_normalized` on every LayerNorm (`ln1`, `ln2`, `ln_final`, `embed_ln`), and
  `blocks.{i}.attn.hook_result` (per-head outputs [batch, pos, head, d_model]) when
  `cfg.use_attn_result` is on (`model.set_use_attn_result(True)`);
- `to_tokens(states, actions, rtg, timesteps, mask)`: the DT's five inputs as one object with
  `.shape == (batch, 3 * T)`, which TL's `patching` functions pass back to `run_with_hooks`;
  `accumulated_bias`, `tokens_to_residual_directions` (for `cache.logit_attrs`).

The parts are shared with dtzoo.tt.hooked's `HookedTrajectoryTransformer`: `HookedBlocks`
(the blocks' TL hooks and weight stacks, `run_with_cache`), `TLConfigFields` (TL's config
fields), `hooked_copy`; `to_transformer_lens` picks the class by the model's family.

Exactness: the extra hooks never change a plain run. A LayerNorm's output is always
`F.layer_norm`'s; its scale is computed only when `hook_scale` has hooks, and the output is
recomputed from the hooked scale only when a hook replaced or edited it (`_version`). The
same holds for `hook_result` and the attention output. So every activation and the output
equal `DecisionTransformer`'s bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dtzoo.model import MLP, TOKENS_PER_STEP, Attention, DecisionTransformer, DTConfig
from dtzoo.model import HookPoint as DtzooHookPoint
from dtzoo.tt.model import TrajectoryTransformer

if TYPE_CHECKING:
    from dtzoo.tt.hooked import HookedTrajectoryTransformer

try:
    from transformer_lens import ActivationCache, HookedRootModule
    from transformer_lens.FactoredMatrix import FactoredMatrix
    from transformer_lens.hook_points import HookPoint as TLHookPoint
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"dtzoo.interp needs TransformerLens ({e}); install it with `pip install 'dtzoo[interp]'`"
    ) from e

# our activation names -> TransformerLens's names for the same functions
_TL_ACT_FN = {"relu": "relu", "gelu": "gelu_new", "gelu_exact": "gelu", "tanh": "tanh"}


@dataclass
class TLConfigFields:
    """The config fields TransformerLens's utilities read, beside a family's own config:
    `HookedDTConfig` = DTConfig + these, `HookedTTConfig` (dtzoo.tt.hooked) = TTConfig + these.
    A subclass's __post_init__ derives them with `_derive_tl`."""

    d_head: int = 0  # set from d_model / n_heads
    n_ctx: int = 0  # the most tokens one forward sees
    d_vocab: int = -1  # rows of the token embedding (-1: none, e.g. the DT's continuous inputs)
    d_vocab_out: int = 0  # outputs per position of the unembedding
    act_fn: str = "relu"
    normalization_type: str = "LN"  # LayerNorms with their own weights (not folded)
    attn_only: bool = False
    eps: float = 1e-5
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    use_attn_in: bool = False
    use_hook_mlp_in: bool = False
    n_key_value_heads: int | None = None
    positional_embedding_type: str = "standard"  # absolute position embeddings, added
    gated_mlp: bool = False
    uses_rms_norm: bool = False
    final_rms: bool = False
    layer_norm_folding: bool = False
    default_prepend_bos: bool = False
    model_name: str = ""
    original_architecture: str = ""

    def _derive_tl(self, n_ctx: int, d_vocab_out: int, d_vocab: int = -1) -> None:
        """Set TL's derived fields from the family's own: `self._derive_tl(60, act_dim)`."""
        self.d_head = self.d_model // self.n_heads
        self.n_ctx, self.d_vocab_out, self.d_vocab = n_ctx, d_vocab_out, d_vocab
        self.act_fn = _TL_ACT_FN.get(self.activation, self.activation)


@dataclass
class HookedDTConfig(TLConfigFields, DTConfig):
    """A DTConfig that also carries the fields TransformerLens's utilities read.

    >>> cfg = HookedDTConfig.from_dt(DTConfig(state_dim=3, act_dim=1, n_layers=2))
    >>> cfg.n_ctx, cfg.d_head, cfg.d_vocab_out, cfg.normalization_type
    (60, 128, 1, 'LN')
    """

    model_name: str = "decision-transformer"
    original_architecture: str = "DecisionTransformer"

    def __post_init__(self) -> None:
        super().__post_init__()
        # 3 tokens per step; no token vocabulary (the DT embeds continuous R, s, a); the action
        # head is the unembedding
        self._derive_tl(n_ctx=TOKENS_PER_STEP * self.context_len, d_vocab_out=self.act_dim)

    @classmethod
    def from_dt(cls, cfg: DTConfig, **overrides: Any) -> "HookedDTConfig":
        """The DT architecture fields of `cfg` (any DTConfig), TL's fields derived."""
        keep = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(DTConfig)}
        return cls(**keep, **overrides)

    def to_dt(self) -> DTConfig:
        """Back to a plain DTConfig (what checkpoints store)."""
        return DTConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DTConfig)})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class HookPoint(TLHookPoint, DtzooHookPoint):
    """TransformerLens's HookPoint that is also a dtzoo HookPoint (so isinstance checks in
    either library find it). Both are identities; TransformerLens's hook machinery applies."""


def _edited(out: torch.Tensor, before: torch.Tensor, version: int) -> bool:
    """Did a hook replace `before` or edit it in place?"""
    return out is not before or out._version != version


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm with TL's `hook_scale` ([..., 1]: sqrt(var + eps)) and `hook_normalized`.

    The output is `F.layer_norm`'s, so a hooked run equals a plain one bit for bit; only a hook
    that changes the scale makes it `(x - mean) / scale * w + b` with that scale.
    """

    hook_scale: HookPoint
    hook_normalized: HookPoint
    _out_hook: tuple[HookPoint, ...] = ()  # embed_ln reports its output as the root's hook_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if self.hook_scale._forward_hooks:  # cached or patched: compute it only then
            centred = x - x.mean(-1, keepdim=True)
            scale = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
            v = scale._version
            hooked = self.hook_scale(scale)
            if _edited(hooked, scale, v):
                out = centred / hooked * self.weight + self.bias
        return (self._out_hook[0] if self._out_hook else self.hook_normalized)(out)


class HeadsOut(nn.Linear):
    """The attention's output projection; with `cfg.use_attn_result` it also reports each
    head's output [batch, pos, head, d_model] at the attention's `hook_result` (as TL). The
    output is the Linear's unless a hook changed the results: then sum(results) + b_O."""

    _attn: tuple["HookedAttention", ...] = ()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = F.linear(z, self.weight, self.bias)
        attn = self._attn[0]
        if attn.cfg.use_attn_result:
            heads = z.view(*z.shape[:-1], attn.n_heads, attn.d_head)
            result = torch.einsum("...hd,hdm->...hm", heads, attn.W_O)
            v = result._version
            hooked = attn.hook_result(result)
            if _edited(hooked, result, v):
                out = hooked.sum(-2) + self.bias
        return out


class HookedAttention(Attention):
    """Attention with TL's per-head weight views (of the fused qkv and the output Linear)."""

    cfg: HookedDTConfig
    hook_result: HookPoint

    def _qkv(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.n_heads * self.d_head
        w = self.qkv.weight[i * d : (i + 1) * d].view(self.n_heads, self.d_head, -1)
        return w.transpose(1, 2), self.qkv.bias[i * d : (i + 1) * d].view(self.n_heads, self.d_head)

    W_Q = property(lambda self: self._qkv(0)[0], doc="[n_heads, d_model, d_head]")
    W_K = property(lambda self: self._qkv(1)[0], doc="[n_heads, d_model, d_head]")
    W_V = property(lambda self: self._qkv(2)[0], doc="[n_heads, d_model, d_head]")
    b_Q = property(lambda self: self._qkv(0)[1], doc="[n_heads, d_head]")
    b_K = property(lambda self: self._qkv(1)[1], doc="[n_heads, d_head]")
    b_V = property(lambda self: self._qkv(2)[1], doc="[n_heads, d_head]")
    W_O = property(
        lambda self: self.out.weight.T.view(self.n_heads, self.d_head, -1),
        doc="[n_heads, d_head, d_model]",
    )
    b_O = property(lambda self: self.out.bias, doc="[d_model]")
    attn_scale = property(lambda self: math.sqrt(self.d_head))

    @property
    def QK(self) -> FactoredMatrix:
        """Per head W_Q @ W_K^T ([n_heads, d_model, d_model], factored)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """Per head W_V @ W_O ([n_heads, d_model, d_model], factored)."""
        return FactoredMatrix(self.W_V, self.W_O)


class HookedMLP(MLP):
    """MLP with TL's weight names."""

    W_in = property(lambda self: self.fc_in.weight.T, doc="[d_model, d_mlp]")
    b_in = property(lambda self: self.fc_in.bias, doc="[d_mlp]")
    W_out = property(lambda self: self.fc_out.weight.T, doc="[d_mlp, d_model]")
    b_out = property(lambda self: self.fc_out.bias, doc="[d_model]")


class DTInput:
    """The DT's five inputs as one "token" batch for TransformerLens utilities that take one
    input (e.g. `transformer_lens.patching`): `.shape == (batch, 3 * T)`, one entry per token.

    >>> x = model.to_tokens(states, actions, rtg, timesteps, mask)
    >>> model(x)            # == model(states, actions, rtg, timesteps, mask)
    """

    def __init__(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ):
        B, T = states.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.bool, device=states.device)
        self.tensors = (states, actions, returns_to_go, timesteps, attention_mask)
        self.shape = torch.Size((B, TOKENS_PER_STEP * T))

    def __len__(self) -> int:
        return self.shape[0]

    def to(self, device: str | torch.device) -> "DTInput":
        return DTInput(*(t.to(device) for t in self.tensors))

    def __repr__(self) -> str:
        return f"DTInput(batch={self.shape[0]}, steps={self.shape[1] // TOKENS_PER_STEP})"


def _swap_hook_points(root: nn.Module) -> None:
    """Replace every dtzoo HookPoint under `root` by a TransformerLens one, in place; a hook
    point reachable under two parents (NatureCNN's) is replaced by the same new one."""
    new: dict[int, HookPoint] = {}
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DtzooHookPoint) and not isinstance(child, TLHookPoint):
                setattr(parent, name, new.setdefault(id(child), HookPoint()))  # order is kept


def _upgrade(module: nn.Module, cls: type, **hooks: HookPoint) -> None:
    """Make `module` an instance of its subclass `cls` (same parameters) and add hook points."""
    module.__class__ = cls
    for name, hook in hooks.items():
        setattr(module, name, hook)


def _insert_after(parent: nn.Module, after: str, name: str, module: nn.Module) -> None:
    """Register `module` as `name` right after child `after` (hook_names() is forward order)."""
    items = list(parent._modules.items())
    i = [k for k, _ in items].index(after) + 1
    parent._modules = dict(items[:i] + [(name, module)] + items[i:])


class HookedBlocks:
    """What a zoo model on TransformerLens's `HookedRootModule` shares across families (the DT,
    dtzoo.tt's TT): TL's hook points and weight views on GPT-2 blocks (dtzoo.model.Block) and
    LayerNorms, `run_with_cache` returning an `ActivationCache`, the per-layer weight stacks
    (`W_Q` ... `b_out`, `QK`, `OV`) and `accumulated_bias`. Put it first in the bases:

    >>> class HookedFoo(HookedBlocks, HookedRootModule, Foo): ...

    and call `_add_tl_hooks(cfg)` after Foo's __init__, then the family's own additions, then
    `self.setup()`. `cfg` carries `TLConfigFields`.
    """

    cfg: TLConfigFields
    blocks: nn.ModuleList

    def _add_tl_hooks(self, cfg: TLConfigFields) -> None:
        """TL's HookPoints in place of ours; `hook_scale` / `hook_normalized` on every
        LayerNorm; per-head weight views and `hook_result` on each block's attention."""
        self.is_caching = False  # HookedRootModule.__init__'s state (it is not called:
        self.context_level = 0  # nn.Module.__init__ ran in the family's __init__)
        _swap_hook_points(self)
        for ln in [m for m in self.modules() if type(m) is nn.LayerNorm]:
            _upgrade(ln, LayerNorm, hook_scale=HookPoint(), hook_normalized=HookPoint())
        for block in self.blocks:
            _upgrade(block.attn, HookedAttention, hook_result=HookPoint())
            block.attn.cfg = cfg
            _upgrade(block.attn.out, HeadsOut)
            block.attn.out._attn = (block.attn,)
            _upgrade(block.mlp, HookedMLP)
            block.hook_out_is_single_residual_stream = True  # TL's logit-lens check

    # TransformerLens's HookedRootModule.hook_points() returns hook_dict.values(); ours a dict
    def hook_names(self) -> list[str]:
        """Every hook point, in forward order (the family's plus TL's extras)."""
        return list(self.hook_dict)

    def run_with_cache(
        self,
        *model_args,
        return_cache_object: bool = True,
        remove_batch_dim: bool = False,
        **kwargs,
    ):
        """TransformerLens's run_with_cache; the cache is an `ActivationCache` by default."""
        out, cache = super().run_with_cache(
            *model_args, remove_batch_dim=remove_batch_dim, **kwargs
        )
        if return_cache_object:
            cache = ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)
        return out, cache

    def to(self, *args, **kwargs):
        model = super().to(*args, **kwargs)
        p = next(self.parameters())
        self.cfg.device, self.cfg.dtype = str(p.device), p.dtype
        return model

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Report each head's output at `blocks.{i}.attn.hook_result` (as TL's flag)."""
        self.cfg.use_attn_result = use_attn_result

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> torch.Tensor:
        """The sum of the output biases of every layer before `layer` (TL's definition)."""
        b_O = self.blocks[0].attn.b_O
        bias = torch.zeros(self.cfg.d_model, device=b_O.device, dtype=b_O.dtype)
        for block in self.blocks[:layer]:
            bias = bias + block.attn.b_O
            if include_mlp_biases:
                bias = bias + block.mlp.b_out
        if mlp_input:
            bias = bias + self.blocks[layer].attn.b_O
        return bias

    def _stack(self, name: str) -> torch.Tensor:
        parts = [getattr(b.attn if hasattr(b.attn, name) else b.mlp, name) for b in self.blocks]
        return torch.stack(parts)

    W_Q = property(lambda self: self._stack("W_Q"), doc="[n_layers, n_heads, d_model, d_head]")
    W_K = property(lambda self: self._stack("W_K"), doc="[n_layers, n_heads, d_model, d_head]")
    W_V = property(lambda self: self._stack("W_V"), doc="[n_layers, n_heads, d_model, d_head]")
    W_O = property(lambda self: self._stack("W_O"), doc="[n_layers, n_heads, d_head, d_model]")
    b_Q = property(lambda self: self._stack("b_Q"), doc="[n_layers, n_heads, d_head]")
    b_K = property(lambda self: self._stack("b_K"), doc="[n_layers, n_heads, d_head]")
    b_V = property(lambda self: self._stack("b_V"), doc="[n_layers, n_heads, d_head]")
    b_O = property(lambda self: self._stack("b_O"), doc="[n_layers, d_model]")
    W_in = property(lambda self: self._stack("W_in"), doc="[n_layers, d_model, d_mlp]")
    W_out = property(lambda self: self._stack("W_out"), doc="[n_layers, d_mlp, d_model]")
    b_in = property(lambda self: self._stack("b_in"), doc="[n_layers, d_mlp]")
    b_out = property(lambda self: self._stack("b_out"), doc="[n_layers, d_model]")

    @property
    def QK(self) -> FactoredMatrix:
        """W_Q @ W_K^T per layer and head: [n_layers, n_heads, d_model, d_model], factored."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """W_V @ W_O per layer and head: [n_layers, n_heads, d_model, d_model], factored."""
        return FactoredMatrix(self.W_V, self.W_O)


class HookedDecisionTransformer(HookedBlocks, HookedRootModule, DecisionTransformer):
    """The dtzoo Decision Transformer as a TransformerLens `HookedRootModule`.

    Same parameters (state_dict keys) and forward as `DecisionTransformer`, its hook names plus
    TL's `hook_embed`, `*.hook_scale`, `*.hook_normalized` and `attn.hook_result`. Hook
    functions are called as `fn(activation, hook=HookPoint)`; `run_with_cache` returns an
    `ActivationCache` (`cache["resid_pre", 0]`, `cache["scale"]`, `cache.decompose_resid()`),
    or a plain dict with `return_cache_object=False`.
    """

    cfg: HookedDTConfig

    def __init__(self, cfg: DTConfig):
        cfg = HookedDTConfig.from_dt(cfg) if not isinstance(cfg, HookedDTConfig) else cfg
        DecisionTransformer.__init__(self, cfg)  # nn.Module.__init__ runs once, in there
        self._add_tl_hooks(cfg)
        del self.embed_ln.hook_normalized  # its output is the root's hook_embed
        _insert_after(self, "embed_ln", "hook_embed", HookPoint())
        self.embed_ln._out_hook = (self.hook_embed,)
        self.setup()  # TransformerLens: names every module, builds mod_dict and hook_dict

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """As DecisionTransformer's; the first argument may also be a `DTInput`."""
        if args and isinstance(args[0], DTInput):
            args = args[0].tensors + args[1:]
        return DecisionTransformer.forward(self, *args, **kwargs)

    # ------------------------------------------------------------------ TL's model surface

    def to_tokens(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> DTInput:
        """The five DT inputs as one `DTInput` (what TL's patching functions pass around)."""
        return DTInput(states, actions, returns_to_go, timesteps, attention_mask)

    def to_single_token(self, action: int) -> int:
        """An action dimension (or discrete action) index: TL's `to_single_token`."""
        if isinstance(action, str):
            raise ValueError("a DT has no tokenizer: name actions by their index")
        return int(action)

    def tokens_to_residual_directions(self, actions: int | torch.Tensor) -> torch.Tensor:
        """The residual direction of each action output, in the space `apply_ln_to_stack`
        maps to (centred, divided by ln_final's scale): ln_final's gain times W_U's column.

        So `cache.logit_attrs(stack, tokens=a)` summed over a full decomposition plus
        `ln_final.b @ W_U[:, a] + b_U[a]` is the pre-tanh action a.
        """
        directions = self.ln_final.weight[:, None] * self.W_U  # [d_model, act_dim]
        d = directions[:, torch.as_tensor(actions, device=directions.device)]
        return d.movedim(0, -1)

    W_U = property(
        lambda self: self.predict_action.weight.T,
        doc="[d_model, act_dim]: the action head (pre-tanh for continuous actions)",
    )
    b_U = property(lambda self: self.predict_action.bias, doc="[act_dim]")
    unembed = property(lambda self: self.predict_action, doc="TL's name for the readout")


def hooked_copy(model: nn.Module, cls: type[HookedRootModule]) -> Any:
    """`cls(model.cfg)` with `model`'s weights (a copy), dtype, device and mode, and its
    ModelConfig (`.config`) where it has one: `hooked_copy(dt, HookedDecisionTransformer)`."""
    p = next(model.parameters())
    hooked = cls(model.cfg).to(device=p.device, dtype=p.dtype)
    hooked.load_state_dict(model.state_dict(), strict=True)
    if getattr(model, "config", None) is not None:
        hooked.config = model.config
        hooked.cfg.model_name = model.config.model_id
    return hooked.train(model.training)


def to_transformer_lens(
    model: DecisionTransformer | TrajectoryTransformer,
) -> HookedDecisionTransformer | HookedTrajectoryTransformer:
    """The model on TransformerLens, by family: a HookedDecisionTransformer for a DT, a
    HookedTrajectoryTransformer (dtzoo.tt.hooked) for a TT; `model`'s weights (a copy), dtype,
    device and mode. A model already hooked is returned as it is.

    >>> hooked = to_transformer_lens(model)     # either family
    """
    if isinstance(model, TrajectoryTransformer):
        from dtzoo.tt.hooked import to_transformer_lens as tt_to_transformer_lens

        return tt_to_transformer_lens(model)
    if isinstance(model, HookedDecisionTransformer):
        return model
    return hooked_copy(model, HookedDecisionTransformer)


def load_hooked(
    model: str, revision: str = "main", **kwargs
) -> HookedDecisionTransformer | HookedTrajectoryTransformer:
    """`dtzoo.load(...)` on TransformerLens (`to_transformer_lens`: by the model's family;
    eval mode, ModelConfig at `.config`).

    >>> model = load_hooked("pendulum-1L-seed0")
    >>> actions, cache = model.run_with_cache(states, actions, rtg, timesteps)
    """
    from dtzoo.api import load

    return to_transformer_lens(load(model, revision=revision, **kwargs))


__all__: Sequence[str] = [
    "DTInput",
    "HookedBlocks",
    "HookPoint",
    "HookedDTConfig",
    "HookedDecisionTransformer",
    "TLConfigFields",
    "hooked_copy",
    "load_hooked",
    "to_transformer_lens",
]
