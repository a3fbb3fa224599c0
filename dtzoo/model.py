"""The Decision Transformer (Chen et al. 2021), with TransformerLens-style hook points.

Per timestep three tokens (R_t, s_t, a_t), each a linear embedding plus a learned timestep
embedding; a LayerNorm over the stacked tokens; GPT-2 pre-LN blocks; a final LayerNorm; the
action is read from the s_t token. Weights map one-to-one onto transformers'
`DecisionTransformerModel` (see dtzoo.convert).

    >>> model = DecisionTransformer(DTConfig(state_dim=3, act_dim=1))
    >>> actions = model(states, actions, returns_to_go, timesteps, attention_mask)
    >>> actions, cache = model.run_with_cache(states, actions, returns_to_go, timesteps)
    >>> cache["blocks.0.attn.hook_pattern"].shape      # (batch, heads, 3*T, 3*T)
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dtzoo.architecture import ARCHITECTURE_KEYS, Architecture, setting

TOKENS_PER_STEP = 3  # R_t, s_t, a_t
TOKEN_KINDS = ("rtg", "state", "action")


STATE_ENCODERS = ("linear", "nature_cnn")


@dataclass(kw_only=True)
class DTConfig(Architecture):
    """Architecture of one DT: the recipe's settings (`Architecture`: context_len, d_model,
    n_heads, d_mlp, activation, dropout) plus what the env and the model id fix.
    `discrete=True` means act_dim logits and one-hot action inputs."""

    state_dim: int
    act_dim: int
    discrete: bool = False
    n_layers: int = 1
    max_ep_len: int = 1000
    # "linear": nn.Linear(state_dim, d_model) on (B, T, state_dim) states (the DT paper's gym
    # setup); "nature_cnn": the Nature-DQN conv stack on (B, T, *obs_shape) uint8 frames
    # (obs_shape = (frame_stack, H, W)), scaled by 1/255 inside the encoder (the paper's Atari).
    state_encoder: str = setting("linear", choices=STATE_ENCODERS)
    obs_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        problem = self.arch_problem()
        if problem:
            raise ValueError(problem)
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                raise ValueError(
                    f"unknown {f.name} {str(value)[:40]!r}: use one of {', '.join(choices)}"
                )
        if self.state_encoder == "nature_cnn":
            if self.obs_shape is None or len(self.obs_shape) != 3:
                raise ValueError("state_encoder 'nature_cnn' needs obs_shape (frames, H, W)")
            self.obs_shape = tuple(int(x) for x in self.obs_shape)

    def architecture(self) -> dict:
        """The `architecture` block of config.json (what `ModelConfig.dt_config` reads back):
        ARCHITECTURE_KEYS always, in their order; any other field but the dims only where it
        differs from its default (so a config.json keeps its bytes when a setting is added).
        `DTConfig(state_dim=3, act_dim=1).architecture()["n_layers"]` -> 1."""
        arch = {k: getattr(self, k) for k in ARCHITECTURE_KEYS}
        for f in dataclasses.fields(DTConfig):
            value = getattr(self, f.name)
            if f.name not in arch and f.name not in _NOT_ARCHITECTURE and value != f.default:
                arch[f.name] = list(value) if isinstance(value, tuple) else value
        return arch


_NOT_ARCHITECTURE = ("state_dim", "act_dim", "discrete")  # config.json keeps them elsewhere


class HookPoint(nn.Module):
    """An identity whose output hooks can read or replace (as in TransformerLens)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "gelu_exact": F.gelu,
    "tanh": torch.tanh,
}


class Attention(nn.Module):
    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_drop = nn.Dropout(cfg.dropout)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = (
            HookPoint(),
            HookPoint(),
            HookPoint(),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        # (B, L, D) -> three of (B, L, heads, d_head): TransformerLens's q/k/v layout
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.d_head).unbind(dim=2)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        # Explicit attention, not F.scaled_dot_product_attention: scores and pattern are hook
        # points, and a hooked run must give bit-identical outputs to a plain one. (SDPA was
        # measured no faster on CPU at these sizes once dropout is on.)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
        scores = self.hook_attn_scores(scores.masked_fill(~mask, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", self.attn_drop(pattern), v))
        return self.out(z.reshape(B, L, D))


class MLP(nn.Module):
    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = ACTIVATIONS[cfg.activation]
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.hook_post(self.act(self.hook_pre(self.fc_in(x)))))


class Block(nn.Module):
    """GPT-2 pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: DTConfig):
        super().__init__()
        # registration order = forward order, so hook_names() reads top to bottom
        self.hook_resid_pre = HookPoint()
        self.ln1, self.attn = nn.LayerNorm(cfg.d_model), Attention(cfg)
        self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint()
        self.ln2, self.mlp = nn.LayerNorm(cfg.d_model), MLP(cfg)
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.drop(self.attn(self.ln1(x), mask))))
        return self.hook_resid_post(x + self.hook_mlp_out(self.drop(self.mlp(self.ln2(x)))))


class NatureCNN(nn.Module):
    """The Nature-DQN state encoder (Mnih et al. 2015), as in the DT paper's Atari model:
    conv 32x8x8/4, 64x4x4/2, 64x3x3/1 with ReLU, flatten, linear to d_model (then tanh, as in
    the DT Atari code). Input (N, frames, H, W) in [0, 255]; scaled by 1/255 here.

    Hook points are owned by the DecisionTransformer (`hook_state_encoder_conv{i}`,
    `hook_state_encoder_out`) and handed in, so their names sit at the top level.
    """

    def __init__(self, obs_shape: tuple[int, ...], d_model: int, hooks: list[HookPoint]):
        super().__init__()
        c, h, w = obs_shape
        self.conv0 = nn.Conv2d(c, 32, 8, stride=4)
        self.conv1 = nn.Conv2d(32, 64, 4, stride=2)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=1)
        with torch.no_grad():
            n_flat = self._convs(torch.zeros(1, c, h, w), None).shape[1]
        self.fc = nn.Linear(n_flat, d_model)
        # registered, so code that swaps hook points (dtzoo.interp) reaches these too; each is
        # still listed once by named_modules(), under the DT's top-level name registered first
        self._hooks = nn.ModuleList(hooks)

    def _convs(self, x: torch.Tensor, hooks: list[HookPoint] | None) -> torch.Tensor:
        for i, conv in enumerate((self.conv0, self.conv1, self.conv2)):
            x = F.relu(conv(x))
            if hooks is not None:
                x = hooks[i](x)
        return x.flatten(1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        lead = states.shape[:-3]
        x = states.reshape(-1, *states.shape[-3:]).float() / 255.0
        out = torch.tanh(self.fc(self._convs(x, self._hooks)))
        return self._hooks[3](out.view(*lead, -1))


class DecisionTransformer(nn.Module):
    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed_timestep = nn.Embedding(cfg.max_ep_len, d)
        self.embed_return = nn.Linear(1, d)
        if cfg.state_encoder == "nature_cnn":
            for i in range(3):
                setattr(self, f"hook_state_encoder_conv{i}", HookPoint())
            self.hook_state_encoder_out = HookPoint()
            hooks = [getattr(self, f"hook_state_encoder_conv{i}") for i in range(3)]
            self.embed_state = NatureCNN(cfg.obs_shape, d, hooks + [self.hook_state_encoder_out])
        else:  # keep the key `embed_state.weight`: existing checkpoints and the HF export
            self.embed_state = nn.Linear(cfg.state_dim, d)
        self.embed_action = nn.Linear(cfg.act_dim, d)
        self.hook_embed_time, self.hook_embed_rtg = HookPoint(), HookPoint()
        self.hook_embed_state, self.hook_embed_action = HookPoint(), HookPoint()
        self.embed_ln = nn.LayerNorm(d)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(d)
        self.hook_final = HookPoint()
        self.predict_action = nn.Linear(d, cfg.act_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # GPT-2 initialisation, as in transformers' DecisionTransformerModel.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict a_t from tokens up to s_t.

        states (B, T, state_dim) (or (B, T, frames, H, W) frames for a "nature_cnn" encoder),
        actions (B, T, act_dim) (one-hot if discrete), returns_to_go
        (B, T, 1), timesteps (B, T) long, attention_mask (B, T) with 1 for real steps.
        Returns (B, T, act_dim): tanh actions in [-1, 1], or logits if discrete.
        """
        B, T = states.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.bool, device=states.device)
        if returns_to_go.dim() == 2:
            returns_to_go = returns_to_go.unsqueeze(-1)
        time = self.hook_embed_time(self.embed_timestep(timesteps))
        r = self.hook_embed_rtg(self.embed_return(returns_to_go) + time)
        s = self.hook_embed_state(self.embed_state(states) + time)
        a = self.hook_embed_action(self.embed_action(actions) + time)
        # interleave to (R_1, s_1, a_1, R_2, s_2, a_2, ...)
        x = torch.stack((r, s, a), dim=2).reshape(B, TOKENS_PER_STEP * T, -1)
        x = self.embed_drop(self.embed_ln(x))
        mask = self._attention_mask(attention_mask.bool())
        for block in self.blocks:
            x = block(x, mask)
        x = self.hook_final(self.ln_final(x))
        state_tokens = x.view(B, T, TOKENS_PER_STEP, -1)[:, :, 1]
        out = self.predict_action(state_tokens)
        return out if self.cfg.discrete else torch.tanh(out)

    @staticmethod
    def _attention_mask(step_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) real-step mask -> (B, 1, 3T, 3T) causal mask over tokens, keys padded out.

        Every token may attend to itself, so a padded token (whose keys are all padded) attends
        only to itself instead of producing NaN; real tokens never see padding.
        """
        B, T = step_mask.shape
        L = TOKENS_PER_STEP * T
        keys = step_mask.repeat_interleave(TOKENS_PER_STEP, dim=1)  # (B, 3T)
        causal = torch.ones(L, L, dtype=torch.bool, device=step_mask.device).tril()
        self_only = torch.eye(L, dtype=torch.bool, device=step_mask.device)
        return (causal[None, None] & keys[:, None, None, :]) | self_only

    # ------------------------------------------------------------------ interpretability

    def hook_points(self) -> dict[str, HookPoint]:
        return {n: m for n, m in self.named_modules() if isinstance(m, HookPoint)}

    def hook_names(self) -> list[str]:
        """Every hook point, in forward order: `model.hook_names()[:2]`."""
        return list(self.hook_points())

    @contextmanager
    def hooks(
        self, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], Callable]]
    ) -> Iterator[None]:
        """Attach `(name_or_filter, fn(activation, hook_name) -> activation | None)` hooks."""
        points = self.hook_points()
        handles = []
        try:
            for name, fn in fwd_hooks:
                names = [n for n in points if name(n)] if callable(name) else [name]
                for n in names:
                    if n not in points:
                        raise KeyError(f"no hook point {n!r}; see model.hook_names()")
                    handles.append(
                        points[n].register_forward_hook(
                            lambda _m, _inp, out, fn=fn, n=n: fn(out, n)
                        )
                    )
            yield
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(self, *args, fwd_hooks=(), **kwargs) -> torch.Tensor:
        """Forward with hooks that may read or replace activations (ablation, patching).

        >>> zero = lambda act, name: torch.zeros_like(act)
        >>> model.run_with_hooks(s, a, R, t, fwd_hooks=[("hook_embed_rtg", zero)])
        """
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(
        self, *args, names_filter: str | list[str] | Callable[[str], bool] | None = None, **kwargs
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward and return (predictions, {hook name: activation}).

        >>> preds, cache = model.run_with_cache(s, a, R, t, names_filter=lambda n: "pattern" in n)
        """
        if names_filter is None:
            keep = lambda n: True  # noqa: E731
        elif isinstance(names_filter, str):
            keep = lambda n: n == names_filter  # noqa: E731
        elif callable(names_filter):
            keep = names_filter
        else:
            wanted = set(names_filter)
            keep = wanted.__contains__
        cache: dict[str, torch.Tensor] = {}

        def save(act: torch.Tensor, name: str) -> None:
            cache[name] = act.detach()

        with self.hooks([(keep, save)]):
            out = self(*args, **kwargs)
        return out, cache

    # ------------------------------------------------------------------ exact fast paths

    def predict_actions(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward`'s result with less work: the last block runs its query, output projection
        and MLP on the state tokens only (the only tokens read), keys/values on all. Exact (the
        same arithmetic; dropout draws masks only for the tokens computed). With a hook
        attached this is `forward`, so hooks see every token.

        >>> pred = model.predict_actions(states, actions, rtg, timesteps, mask)  # (B, T, act)
        """
        if not fast_path_ok(self):
            return self(states, actions, returns_to_go, timesteps, attention_mask)
        B, T = states.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.bool, device=states.device)
        x = self.embed_drop(self.embed_tokens(states, actions, returns_to_go, timesteps))
        x = x.reshape(B, TOKENS_PER_STEP * T, -1)
        mask = self._attention_mask(attention_mask.bool())
        for block in self.blocks[:-1]:
            x = block(x, mask)
        last = self.blocks[-1]
        h = last.ln1(x)
        k, v = _kv(last.attn, h)
        xs, hs = (y.view(B, T, TOKENS_PER_STEP, -1)[:, :, 1] for y in (x, h))
        z = _attend(last.attn, _q(last.attn, hs), k, v, mask[:, :, 1::TOKENS_PER_STEP])
        xs = xs + last.drop(last.attn.out(z))
        xs = xs + last.drop(last.mlp(last.ln2(xs)))
        out = self.predict_action(self.ln_final(xs))
        return out if self.cfg.discrete else torch.tanh(out)

    def embed_tokens(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """(B, T, 3, d_model): each step's (R, s, a) tokens after the embedding LayerNorm (what
        `forward` computes before its first block, without dropout or hooks)."""
        if returns_to_go.dim() == 2:
            returns_to_go = returns_to_go.unsqueeze(-1)
        time = self.embed_timestep(timesteps)
        r = self.embed_return(returns_to_go) + time
        s = self.embed_state(states) + time
        a = self.embed_action(actions) + time
        return self.embed_ln(torch.stack((r, s, a), dim=2))


def token_position(t: int, kind: str) -> int:
    """Index of a token in the interleaved sequence: `token_position(2, "state")` -> 7."""
    return TOKENS_PER_STEP * t + TOKEN_KINDS.index(kind)


def position_token(pos: int) -> tuple[int, str]:
    """Inverse of token_position: `position_token(7)` -> (2, "state")."""
    return pos // TOKENS_PER_STEP, TOKEN_KINDS[pos % TOKENS_PER_STEP]


# ----------------------------------------------------------------------------- exact fast paths
# The reference is `DecisionTransformer.forward` (the full window, every token, every hook).
# The paths below compute the same numbers with less work and are used only when no hook is
# attached (`fast_path_ok`); tests/test_fastpath.py compares them with the reference.


def hooks_attached(model: nn.Module, modules: list[nn.Module] | None = None) -> bool:
    """True if a forward or backward hook is registered on any submodule (dtzoo's and
    TransformerLens's hook points register plain torch hooks) or globally. `modules`:
    `list(model.modules())`, when the caller keeps it (walking the tree costs ~0.1 ms)."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in (model.modules() if modules is None else modules)
    )


def fast_path_ok(model: nn.Module, modules: list[nn.Module] | None = None) -> bool:
    """A fast path may replace `model.forward`: a DecisionTransformer whose forward is the
    reference one, with no hook attached."""
    return (
        isinstance(model, DecisionTransformer)
        and type(model).forward is DecisionTransformer.forward
        and not hooks_attached(model, modules)
    )


def _q(attn: Attention, h: torch.Tensor) -> torch.Tensor:
    """Queries only: the first third of the fused QKV projection."""
    D = h.shape[-1]
    q = F.linear(h, attn.qkv.weight[:D], attn.qkv.bias[:D])
    return q.view(*h.shape[:-1], attn.n_heads, attn.d_head)


def _kv(attn: Attention, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values only: the last two thirds of the fused QKV projection."""
    D = h.shape[-1]
    kv = F.linear(h, attn.qkv.weight[D:], attn.qkv.bias[D:])
    return kv.view(*h.shape[:-1], 2, attn.n_heads, attn.d_head).unbind(dim=-3)


def _attend(
    attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention.forward's arithmetic for (B, Lq, H, dh) queries against (B, Lk, H, dh) keys;
    returns z as (B, Lq, d_model), before the output projection."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(attn.d_head)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    z = torch.einsum("bhqk,bkhd->bqhd", attn.attn_drop(scores.softmax(dim=-1)), v)
    return z.reshape(*q.shape[:2], -1)


def _lin(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _ln(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _mlp(block: Block, h: torch.Tensor) -> torch.Tensor:
    """block.mlp(block.ln2(h)) without module calls (eval mode: no dropout)."""
    mlp = block.mlp
    return _lin(mlp.fc_out, mlp.act(_lin(mlp.fc_in, _ln(block.ln2, h))))


class InferenceCache:
    """Exact incremental inference for an Agent: one step of N episodes in lockstep at a time.

    A token's layer-0 input (and so its layer-0 Q/K/V) depends on that token alone: the
    timestep embedding is absolute and there is no position embedding inside the window. So
    the embedded tokens and their layer-0 Q/K/V are computed once and kept while the window
    slides; each step adds a_{t-1}, R_t and s_t. Layers 1..L-2 run on the window's tokens as
    in `forward`; the last layer computes keys/values for all tokens but the query, output
    projection and MLP for the newest state token only. Padded steps are simply absent, which
    is what `forward`'s mask makes them. Eval mode only (no dropout), no hooks.

    >>> cache = InferenceCache(model, batch=8)
    >>> pred = cache.prefill(states, actions, rtg, timesteps)   # the window's real steps
    >>> pred = cache.step(a_prev, t_prev, s_t, R_t, t)          # (8, act_dim) each step
    """

    def __init__(self, model: DecisionTransformer, batch: int):
        cfg, p = model.cfg, next(model.parameters())
        self.model, self.cfg = model, cfg
        self.max_tokens = TOKENS_PER_STEP * cfg.context_len - 1  # the window up to s_t
        cap = 2 * TOKENS_PER_STEP * cfg.context_len  # room to slide before compacting
        self.x = torch.empty(batch, cap, cfg.d_model, dtype=p.dtype, device=p.device)
        # layer-0 q, k, v as (3, batch, heads, tokens, d_head): attention's matmul layout
        self.qkv = torch.empty(
            3, batch, cfg.n_heads, cap, cfg.d_model // cfg.n_heads, dtype=p.dtype, device=p.device
        )
        self.start = self.end = 0  # the window's tokens are x[:, start:end]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (episodes that go on), in this order."""
        self.x, self.qkv = self.x[rows], self.qkv[:, rows]

    def prefill(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """Start from a window's real steps (B, f, ...), newest last (its action is unknown and
        ignored); returns the prediction for the newest state, (B, act_dim)."""
        B, f = states.shape[:2]
        tokens = self.model.embed_tokens(states, actions, returns_to_go, timesteps)
        self.start = self.end = 0
        self._append(tokens.reshape(B, TOKENS_PER_STEP * f, -1)[:, :-1])  # drop a_newest
        return self._predict()

    def step(
        self,
        prev_action: torch.Tensor,
        prev_timestep: torch.Tensor,
        state: torch.Tensor,
        rtg: torch.Tensor,
        timestep: torch.Tensor,
    ) -> torch.Tensor:
        """Add a_{t-1} (B, act_dim) at prev_timestep (B,), then R_t (B,) and s_t (B, ...) at
        timestep (B,); drop what left the window; returns the prediction for s_t."""
        m = self.model  # (functional calls: at batch 20 the per-module overhead shows)
        a = _lin(m.embed_action, prev_action) + F.embedding(prev_timestep, m.embed_timestep.weight)
        time = F.embedding(timestep, m.embed_timestep.weight)
        r = _lin(m.embed_return, rtg.reshape(-1, 1)) + time
        s = (
            _lin(m.embed_state, state)
            if isinstance(m.embed_state, nn.Linear)
            else m.embed_state(state[:, None])[:, 0]
        ) + time
        self._append(_ln(m.embed_ln, torch.stack((a, r, s), dim=1)))
        return self._predict()

    def _append(self, tokens: torch.Tensor) -> None:
        n = tokens.shape[1]
        if self.end + n > self.x.shape[1]:  # compact: move the window to the front
            keep = self.end - self.start
            self.x[:, :keep] = self.x[:, self.start : self.end].clone()
            self.qkv[..., :keep, :] = self.qkv[..., self.start : self.end, :].clone()
            self.start, self.end = 0, keep
        B, first = tokens.shape[0], self.model.blocks[0]
        self.x[:, self.end : self.end + n] = tokens
        qkv = _lin(first.attn.qkv, _ln(first.ln1, tokens))  # pre-LN: layer-0 Q/K/V
        # (B, n, 3, H, dh) -> (3, B, H, n, dh)
        self.qkv[..., self.end : self.end + n, :] = qkv.view(
            B, n, 3, first.attn.n_heads, -1
        ).permute(2, 0, 3, 1, 4)
        self.end += n
        self.start = max(self.start, self.end - self.max_tokens)

    def _predict(self) -> torch.Tensor:
        m, blocks = self.model, self.model.blocks
        x = self.x[:, self.start : self.end]
        q, k, v = self.qkv[..., self.start : self.end, :].unbind(0)  # (B, H, L, dh) each
        first = blocks[0]
        if len(blocks) == 1:  # the newest state token's query is all that is needed
            h = x[:, -1:] + _lin(first.attn.out, _attend_heads(q[:, :, -1:], k, v, None))
            h = h + _mlp(first, h)
        else:
            L = x.shape[1]
            causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
            x = x + first.attn.out(_attend_heads(q, k, v, causal))
            x = x + first.mlp(first.ln2(x))
            for block in blocks[1:-1]:
                x = block(x, causal[None, None])
            last = blocks[-1]
            hl = last.ln1(x)
            k, v = (t.transpose(1, 2) for t in _kv(last.attn, hl))
            q = _q(last.attn, hl[:, -1:]).transpose(1, 2)
            h = x[:, -1:] + _lin(last.attn.out, _attend_heads(q, k, v, None))
            h = h + _mlp(last, h)
        out = _lin(m.predict_action, _ln(m.ln_final, h[:, 0]))
        return out if self.cfg.discrete else torch.tanh(out)


def _attend_heads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention.forward's arithmetic in (B, H, L, dh) layout (plain matmuls: cheaper than
    einsum for one query); returns z as (B, Lq, d_model), before the output projection."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    z = torch.matmul(scores.softmax(dim=-1), v)  # (B, H, Lq, dh)
    return z.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
