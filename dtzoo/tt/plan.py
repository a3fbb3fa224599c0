"""Planning with a Trajectory Transformer: the paper's beam search over its own predictions.

From the context (past transitions and the current observation), `beam_plan` extends
`beam_width` candidate sequences `horizon` transitions ahead: each is copied `n_expand` times,
action tokens are sampled (top-`k_act`), reward and value tokens predicted (top-`k_rew`), the
candidates scored by sum_t discount^t E[r_t] + discount^(t+1) E[V_t] (expectations over the
predicted bins, as the paper's `percentile="mean"`), the best `beam_width` kept, and the next
observation sampled (top-`k_obs`). With k = 1 a token is the argmax; with beam_width = 1,
n_expand = 1 and every k = 1 the plan is greedy decoding (`greedy_decode`).

The stop token is never sampled inside a plan (an action or observation cannot be "the
episode ended"); its probability still counts zero reward and value in the score.

    >>> agent = TTAgent(model, model.cfg, discretizer, action_space=space)
    >>> obs, _ = env.reset(seed=0)
    >>> while True:
    ...     obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
    ...     agent.observe(reward)
    ...     if terminated or truncated: break
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dtzoo.data import ActionSpace
from dtzoo.errors import UsageError
from dtzoo.model import _attend_heads, _lin, _ln, _mlp, hooks_attached
from dtzoo.tt.discretize import Discretizer
from dtzoo.tt.model import TrajectoryTransformer, TTConfig
from dtzoo.tt.settings import PlanSettings


def _max_block(model: TrajectoryTransformer, max_context_transitions: int | None) -> int:
    cfg = model.cfg
    n = cfg.context_len if max_context_transitions is None else max_context_transitions
    return min(cfg.block_size, n * cfg.transition_dim - 1)


class Decoder:
    """Rows of growing token sequences and the model's next-token logits for them.

    The model sees each row's last `max_block` tokens, cropped by whole transitions from the
    front so the window starts at an observation's first token (position 0), as the paper's
    sampler. `fast=True` keeps every layer's keys and values of the window and runs only the
    new tokens (`cached_logits`); the window moves only when a crop happens, and then the
    cache is rebuilt. With a hook attached (or `fast=False`) every call is the reference
    forward on the whole window, so hooks see every token.

    >>> dec = Decoder(model, prefix[None], max_block=29)
    >>> dec.append(dec.logits().argmax(-1, keepdim=True))
    """

    def __init__(
        self, model: TrajectoryTransformer, x: torch.Tensor, max_block: int, fast: bool = True
    ):
        self.model, self.x, self.max_block = model, x, max_block
        self.fast = fast and not hooks_attached(model)
        self.start = 0  # where the cached window starts in x
        self.cache: KVCache | None = None
        self.last: tuple[int, torch.Tensor] | None = None  # (length, logits) computed last

    def logits(self) -> torch.Tensor:
        """(B, n_bins + 1) logits of the token after each row (kept until the rows change)."""
        if self.last is not None and self.last[0] == self.x.shape[1]:
            return self.last[1]
        D, over = self.model.cfg.transition_dim, self.x.shape[1] - self.max_block
        start = -(-over // D) * D if over > 0 else 0
        if not self.fast:
            logits = self.model(self.x[:, start:])[:, -1]
        else:
            if self.cache is None or start != self.start:  # a new window: rebuild
                self.start, self.cache = start, KVCache(self.model, len(self.x), self.max_block)
            new = self.x[:, start + self.cache.n :]
            logits = cached_logits(self.model, new, self.cache)[:, -1]
        self.last = (self.x.shape[1], logits)
        return logits

    def append(self, tokens: torch.Tensor) -> None:
        """Add (B, n) tokens to the rows."""
        self.x = torch.cat([self.x, tokens], dim=1)

    def select(self, rows: torch.Tensor) -> None:
        """Keep these rows, in this order (repeats allowed)."""
        self.x = self.x[rows]
        if self.cache is not None:
            self.cache.kv = self.cache.kv[:, :, rows]
        if self.last is not None:
            self.last = (self.last[0], self.last[1][rows])


class KVCache:
    """Every layer's keys and values of a window's first `n` tokens, preallocated for
    `max_block` tokens: kv (layers, 2, B, heads, max_block, d_head)."""

    def __init__(self, model: TrajectoryTransformer, batch: int, max_block: int):
        cfg, p = model.cfg, model.pos_emb
        shape = (cfg.n_layers, 2, batch, cfg.n_heads, max_block, cfg.d_model // cfg.n_heads)
        self.kv = torch.empty(shape, dtype=p.dtype, device=p.device)
        self.n = 0


@torch.no_grad()
def cached_logits(
    model: TrajectoryTransformer, tokens: torch.Tensor, cache: KVCache
) -> torch.Tensor:
    """`model.forward`'s logits (B, m, n_bins + 1) for (B, m) tokens that follow the `cache.n`
    window tokens whose keys and values `cache` holds; adds theirs. Eval mode, no hooks."""
    cfg, D = model.cfg, model.cfg.transition_dim
    B, m = tokens.shape
    n = cache.n
    pos = torch.arange(n, n + m, device=tokens.device)
    idx = torch.where(tokens == cfg.stop_token, cfg.n_bins * D, tokens + model.offsets[pos % D])
    x = F.embedding(idx, model.tok_emb.weight) + model.pos_emb[pos]
    keys = torch.arange(n + m, device=tokens.device)
    mask = (keys[None] <= pos[:, None]) & (keys % D != D - 1)[None]  # forward's mask rows
    for kv, block in zip(cache.kv, model.blocks):
        attn = block.attn
        qkv = _lin(attn.qkv, _ln(block.ln1, x)).view(B, m, 3, attn.n_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, heads, m, d_head) each
        kv[0, :, :, n : n + m], kv[1, :, :, n : n + m] = k, v
        x = x + _lin(attn.out, _attend_heads(q, kv[0, :, :, : n + m], kv[1, :, :, : n + m], mask))
        x = x + _mlp(block, x)
    cache.n = n + m
    x = _ln(model.ln_final, x)
    return torch.einsum("mvd,bmd->bmv", model.head.weight[pos % D], x)


@torch.no_grad()
def extend(
    dec: Decoder, n: int, k: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Append n tokens to every row, each the argmax (k = 1) or a sample from the top-k of
    the model's next-token distribution (k None: all bins); never the stop token. Returns the
    unfiltered probabilities (B, n, n_bins + 1)."""
    n_bins = dec.model.cfg.n_bins
    probs = []
    for _ in range(n):
        logits = dec.logits().float()
        probs.append(logits.softmax(-1))
        logits = logits[:, :n_bins]  # not the stop token
        if k == 1:
            token = logits.argmax(-1, keepdim=True)
        else:
            if k is not None and k < n_bins:
                kth = logits.topk(k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        dec.append(token)
    return torch.stack(probs, dim=1)


@torch.no_grad()
def greedy_decode(
    model: TrajectoryTransformer,
    prefix: torch.Tensor,
    n: int,
    max_context_transitions: int | None = None,
    fast: bool = False,
) -> torch.Tensor:
    """The n most likely next tokens one at a time: (L,) prefix -> (L + n,). By default the
    reference forward on every window (what the cached path must reproduce).

    >>> greedy_decode(model, prefix, n=4 * model.cfg.transition_dim - 3)
    """
    model.eval()
    dec = Decoder(model, prefix[None], _max_block(model, max_context_transitions), fast)
    extend(dec, n, 1)
    return dec.x[0]


@torch.no_grad()
def beam_plan(
    model: TrajectoryTransformer,
    prefix: torch.Tensor,
    discretizer: Discretizer,
    settings: PlanSettings | None = None,
    generator: torch.Generator | None = None,
    fast: bool = True,
) -> torch.Tensor:
    """The best plan from `prefix` (past transitions then the current observation's tokens,
    (L,) int64): (horizon, transition_dim) tokens, the first row the current transition.

    >>> plan = beam_plan(model, prefix, discretizer, PlanSettings(horizon=4, beam_width=8))
    >>> a_t = discretizer.decode(plan[0, obs_dim:-2].numpy(), dims=slice(obs_dim, -2))
    """
    s = settings or PlanSettings()
    model.eval()
    cfg = model.cfg
    D, obs_dim, act_dim, H = cfg.transition_dim, cfg.observation_dim, cfg.action_dim, s.horizon
    if (prefix.numel() - obs_dim) % D:
        raise UsageError(f"a prefix is whole transitions plus one observation ({obs_dim} tokens)")
    dev = prefix.device
    # bin centres of the reward and value dimensions, for the expected r_t and V_t
    centres = torch.as_tensor(discretizer.centres[:, -2:].T, dtype=torch.float32, device=dev)
    discounts = cfg.discount ** torch.arange(H + 1, dtype=torch.float32, device=dev)
    dec = Decoder(model, prefix[None], _max_block(model, s.max_context_transitions), fast)
    dec.logits()  # the prefix once, then its copies
    dec.select(torch.zeros(s.beam_width, dtype=torch.long, device=dev))
    rewards = torch.zeros(s.beam_width, H + 1, device=dev)
    for t in range(H):
        expand = torch.arange(len(rewards), device=dev).repeat(s.n_expand)
        dec.select(expand)
        rewards = rewards[expand]
        extend(dec, act_dim, s.k_act, generator)
        p = extend(dec, 2, s.k_rew, generator)[:, :, : cfg.n_bins]
        expected = (p * centres[None]).sum(-1)  # (B, 2): E[r_t], E[V_t]
        rewards[:, t], rewards[:, t + 1] = expected[:, 0], expected[:, 1]
        values = (rewards * discounts).sum(-1)
        keep = values.topk(min(s.beam_width, len(values))).indices
        dec.select(keep)
        rewards, values = rewards[keep], values[keep]
        if t < H - 1:
            extend(dec, obs_dim, s.k_obs, generator)
    return dec.x[values.argmax()].view(-1, D)[-H:]


class TTAgent:
    """A TT as a policy for one gymnasium env with vector observations: keeps the last
    `context_transitions` transitions as tokens, plans with `beam_plan`, and returns the
    plan's first action (mapped to the env's bounds when `action_space` is given; otherwise
    the model-space action in [-1, 1]).

    >>> agent = TTAgent(model, config, discretizer, PlanSettings(), action_space=space)
    """

    def __init__(
        self,
        model: TrajectoryTransformer,
        config: TTConfig,
        discretizer: Discretizer,
        settings: PlanSettings | None = None,
        action_space: ActionSpace | dict[str, Any] | None = None,
    ):
        if discretizer.dim != config.transition_dim or discretizer.n_bins != config.n_bins:
            raise UsageError(
                f"the discretizer ({discretizer.dim} dims, {discretizer.n_bins} bins) does not "
                f"match the model ({config.transition_dim} dims, {config.n_bins} bins)"
            )
        self.model, self.cfg, self.disc = model, config, discretizer
        self.settings = settings or PlanSettings()
        if isinstance(action_space, dict):
            action_space = ActionSpace(**action_space)
        self.space = action_space
        self.device = next(model.parameters()).device
        self.reset()

    def reset(self) -> None:
        """Start a new episode (the sampling RNG restarts from the settings' seed)."""
        self.context: list[np.ndarray] = []  # token rows (transition_dim,) of past steps
        self.pending: np.ndarray | None = None  # (obs, action) tokens awaiting their reward
        self.plan: torch.Tensor | None = None
        self.t = 0
        self.generator = torch.Generator(device=self.device).manual_seed(self.settings.seed)

    @torch.no_grad()
    def act(self, observation: np.ndarray) -> np.ndarray:
        """Plan from the context and this observation; return a_t (for env.step)."""
        if self.pending is not None:
            raise UsageError("call observe(reward) after each act(observation)")
        cfg = self.cfg
        obs_dim, act_dim = cfg.observation_dim, cfg.action_dim
        obs = np.asarray(observation, np.float64).reshape(obs_dim)
        obs_tokens = self.disc.encode(obs, dims=slice(0, obs_dim))
        if self.t % self.settings.plan_freq == 0 or self.plan is None or len(self.plan) < 2:
            prefix = np.concatenate([*self.context, obs_tokens])
            prefix_t = torch.as_tensor(prefix, dtype=torch.long, device=self.device)
            self.plan = beam_plan(self.model, prefix_t, self.disc, self.settings, self.generator)
        else:  # follow the current plan (its next step's action)
            self.plan = self.plan[1:]
        action_tokens = self.plan[0, obs_dim : obs_dim + act_dim].cpu().numpy()
        self.pending = np.concatenate([obs_tokens, action_tokens])
        action = self.disc.decode(action_tokens, dims=slice(obs_dim, obs_dim + act_dim))
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        return self.space.to_env(action) if self.space is not None else action

    def observe(self, reward: float) -> None:
        """Record r_t: the transition joins the context (its value is a placeholder, the top
        bin, as the paper: value tokens are never attended to)."""
        if self.pending is None:
            raise UsageError("observe(reward) comes after act(observation)")
        D = self.cfg.transition_dim
        r = self.disc.encode(np.array([reward]), dims=slice(D - 2, D - 1))
        row = np.concatenate([self.pending, r, [self.cfg.n_bins - 1]])
        keep = self.settings.context_transitions
        self.context = (self.context + [row])[-keep:] if keep else []
        self.pending = None
        self.t += 1


def rollout(
    model: TrajectoryTransformer,
    discretizer: Discretizer,
    gym_id: str,
    seeds: list[int],
    settings: PlanSettings | None = None,
    action_space: ActionSpace | dict[str, Any] | None = None,
    max_episode_steps: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One planned episode per seed (one after another: planning batches the beams, not the
    episodes); returns (returns, lengths) as dtzoo.evaluate.rollout does.

    >>> returns, lengths = rollout(model, disc, "Pendulum-v1", [0, 1], action_space=space)
    """
    from dtzoo.observations import make_env

    env = make_env(gym_id, "vector", max_episode_steps)
    if action_space is None:
        action_space = ActionSpace.from_gym(env.action_space)
    agent = TTAgent(model, model.cfg, discretizer, settings, action_space)
    returns, lengths = np.zeros(len(seeds)), np.zeros(len(seeds), np.int64)
    try:
        for i, seed in enumerate(seeds):
            agent.reset()
            obs, _ = env.reset(seed=seed)
            done = False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
                agent.observe(float(reward))
                returns[i] += reward
                lengths[i] += 1
                done = terminated or truncated
    finally:
        env.close()
    return returns, lengths
