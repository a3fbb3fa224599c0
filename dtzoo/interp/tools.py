"""One-call answers to a DT's own questions, on a real rollout: each returns a dict and, with
`out_dir`, writes `<name>.json` and `<name>.png` there.

    >>> from dtzoo.interp import load_hooked, tools
    >>> model = load_hooked("pendulum-1L-seed0")
    >>> tools.patch(model, -150, -1200, out_dir="interp")     # which (hook, R/s/a, step) carry RTG
    >>> tools.rtg_scan(model, out_dir="interp")                 # action and attention vs target
    >>> tools.attribute(model, out_dir="interp")                # direct action attribution
    >>> tools.attention(model, out_dir="interp")                # attention by token kind

The context analysed is the model's own window at step `at` (default: context_len, the first
full window; for `patch`, the window where the two returns-to-go change the action most) of one
episode rolled out in its env (seed `seed`) at a target return; a second
return-to-go is the same window with every R token shifted by the difference of the targets
(R_t = target - rewards so far), as in DecisionTransformerInterpretability.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from dtzoo.errors import UsageError
from dtzoo.fsutil import atomic_write_json
from dtzoo.model import TOKEN_KINDS, TOKENS_PER_STEP

KIND_LETTER = {"rtg": "R", "state": "s", "action": "a"}
LETTERS = [KIND_LETTER[k] for k in TOKEN_KINDS]  # token order within a step: R, s, a


@dataclass
class Window:
    """One context window of a real episode, as the model saw it when it chose a_t."""

    states: torch.Tensor  # (1, K, ...)
    actions: torch.Tensor  # (1, K, act_dim), the newest (unknown) action zero
    rtg: torch.Tensor  # (1, K, 1), scaled by reward_scale
    timesteps: torch.Tensor  # (1, K)
    mask: torch.Tensor  # (1, K) real steps
    target: float  # the episode's target return
    step: int  # the episode step of the newest token
    seed: int

    def inputs(self, targets: Sequence[float] | None = None, reward_scale: float = 1.0):
        """The model inputs, one row per target return (default: the rollout's own)."""
        targets = [self.target] if targets is None else list(targets)
        shift = torch.tensor([(t - self.target) / reward_scale for t in targets])
        n = len(targets)
        rtg = (self.rtg + shift[:, None, None]) * self.mask[..., None]  # padding stays 0
        rep = lambda x: x.expand(n, *x.shape[1:])  # noqa: E731
        return rep(self.states), rep(self.actions), rtg, rep(self.timesteps), rep(self.mask)

    def labels(self) -> list[str]:
        """One label per token: 'R37', 's37', 'a37' (the episode step of each token)."""
        return [f"{k}{int(t)}" for t in self.timesteps[0] for k in LETTERS]


@torch.no_grad()
def rollout_window(
    model,
    target: float | None = None,
    at: int | None = None,
    seed: int = 0,
    score: Callable[[Window], float] | None = None,
) -> Window:
    """Roll the model out in its env at `target` until step `at`; its context window there.

    With `score` (and `at=None`) the whole episode is run and the full window (step >=
    context_len - 1) with the highest `score(window)` is returned; otherwise `at` defaults
    to context_len.

    >>> w = rollout_window(model, target=-150, at=20)
    >>> model(*w.inputs())[:, -1]        # the action the agent took at step 20
    """
    from dtzoo.agent import Agent
    from dtzoo.observations import kind_of, make_env

    config = model.config
    K = model.cfg.context_len
    search = score is not None and at is None
    at = K if at is None else int(at)
    if at < 0:
        raise UsageError(f"--at {at}: an episode step is >= 0")
    kind = kind_of(config)
    env = make_env(config.env["gym_id"], kind, config.env.get("max_episode_steps"))
    agent = Agent(model, config, target_return=target, num_envs=1, fast=False)
    best, best_score = None, -math.inf
    try:
        obs, _ = env.reset(seed=seed)
        t = 0
        while search or t <= at:
            action = agent.act(obs)
            window = _agent_window(agent, t, seed)
            if search and t >= K - 1 and (v := score(window)) > best_score:
                best, best_score = window, v
            obs, reward, terminated, truncated, _ = env.step(action)
            agent.observe(reward)
            if terminated or truncated:
                break
            t += 1
    finally:
        env.close()
    return best if best is not None else window


def _agent_window(agent, step: int, seed: int) -> Window:
    """The agent's context window as the model saw it when it chose the newest action."""
    actions = agent.actions.copy()
    actions[:, -1] = 0.0  # a_t was not known yet
    mask = np.zeros((1, agent.K), bool)
    mask[:, agent.K - agent.filled :] = True
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(agent.device)  # noqa: E731
    return Window(
        t(agent.states.copy()),
        t(actions),
        t(agent.rtg.copy())[..., None],
        t(agent.timesteps.copy()),
        t(mask),
        float(agent.target),
        step,
        seed,
    )


def _prediction(out: torch.Tensor) -> torch.Tensor:
    """The prediction at the newest state token: (batch, act_dim)."""
    return out[:, -1].float()


def _meta(model, window: Window, name: str) -> dict:
    c = model.config
    return {
        "kind": name,
        "model_id": c.model_id,
        "step": c.step,
        "gym_id": c.env["gym_id"],
        "episode_seed": window.seed,
        "episode_step": window.step,
        "rollout_target": window.target,
        "tokens": window.labels(),
        "mask": [bool(m) for m in window.mask[0]],
    }


def _write(result: dict, out_dir: str | os.PathLike | None, name: str, plot) -> dict:
    """`name`.json and `name`.png in out_dir (atomic); their paths under result['files']."""
    if out_dir is None:
        return result
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["files"] = {"json": str(out / f"{name}.json"), "png": str(out / f"{name}.png")}
    plot(result, out / f"{name}.png")
    atomic_write_json(out / f"{name}.json", result)
    return result


# ----------------------------------------------------------------------------- patching


def patch_hooks(n_layers: int) -> list[str]:
    """The residual-stream writes patched, in forward order, then the last residual."""
    names = [
        f"blocks.{i}.{h}"
        for i in range(n_layers)
        for h in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")
    ]
    return names + [f"blocks.{n_layers - 1}.hook_resid_post"]


@torch.no_grad()
def patch(
    model,
    source: float,
    dest: float,
    at: int | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
) -> dict:
    """Activation patching from a run at return-to-go `source` into one at `dest`.

    The episode is rolled out at `source`; the window is the one at step `at`, or by default
    the full window where the two returns-to-go change the action most. For every
    residual-stream write (hook) and every
    token (R/s/a at each step of the window) the `dest` run gets that one activation from the
    `source` run; `recovered` is how far the newest action moves toward the source action:
    (a_patched - a_dest) . (a_src - a_dest) / |a_src - a_dest|^2 (0: no effect, 1: all of it).
    One batched forward per hook (a row per token).

    >>> r = patch(model, -150, -1200)
    >>> r["top"][0]     # {'hook': 'blocks.0.hook_resid_pre', 'kind': 'R', 'step': 20, ...}
    """
    scale = model.config.reward_scale

    def change(w: Window) -> float:  # how far the two returns-to-go move the action
        out = _prediction(model(*w.inputs([source, dest], scale)))
        return float((out[0] - out[1]).norm())

    window = rollout_window(model, target=source, at=at, seed=seed, score=change)
    x_src = window.inputs([source], scale)
    x_dst = window.inputs([dest], scale)
    out_src, cache = model.run_with_cache(
        *x_src, return_cache_object=False, names_filter=patch_hooks(model.cfg.n_layers)
    )
    a_src, a_dst = _prediction(out_src)[0], _prediction(model(*x_dst))[0]
    delta = a_src - a_dst
    if float(delta.norm()) < 1e-6:
        raise UsageError(
            f"returns-to-go {source:g} and {dest:g} give the same action here; "
            "pick targets further apart or another --at"
        )
    n_tok = window.mask.shape[1] * TOKENS_PER_STEP
    rows = torch.arange(n_tok)
    batch = tuple(x.expand(n_tok, *x.shape[1:]) for x in x_dst)
    recovered = []
    for name in patch_hooks(model.cfg.n_layers):

        def put(act, hook, src=cache[name]):
            act = act.clone()
            act[rows, rows] = src[0, rows]  # row p patches token p only
            return act

        a = _prediction(model.run_with_hooks(*batch, fwd_hooks=[(name, put)]))
        recovered.append(((a - a_dst) @ delta / (delta @ delta)).tolist())
    r = _meta(model, window, "patch")
    steps = [int(t) for t in window.timesteps[0] for _ in LETTERS]
    kinds = LETTERS * window.mask.shape[1]
    cells = [
        {"hook": h, "kind": kinds[p], "step": steps[p], "recovered": v}
        for h, row in zip(patch_hooks(model.cfg.n_layers), recovered)
        for p, v in enumerate(row)
    ]
    r.update(
        {
            "target_from": float(source),
            "target_to": float(dest),
            "action_from": a_src.tolist(),
            "action_to": a_dst.tolist(),
            "action_change": float(delta.norm()),
            "hooks": patch_hooks(model.cfg.n_layers),
            "recovered": recovered,
            "top": sorted(cells, key=lambda c: -abs(c["recovered"]))[:10],
        }
    )
    from dtzoo.interp.figures import patch_plot

    return _write(r, out_dir, "patch", patch_plot)


# ----------------------------------------------------------------------------- RTG scan


def scan_targets(model, targets: str | Sequence[float] | None, n: int = 41) -> list[float]:
    """'LO:HI:N', a list, or None: from the random score to 1.5x past the expert score."""
    from dtzoo.evaluate import default_sweep_targets, parse_targets

    if targets is None:
        lo_hi = default_sweep_targets(model.config, 2)
        return [float(x) for x in np.linspace(lo_hi[0], lo_hi[1], n)]
    if isinstance(targets, str):
        return parse_targets(targets)
    return [float(t) for t in targets]


def _attention_to_kinds(pattern: torch.Tensor, query: int) -> dict[str, torch.Tensor]:
    """(batch, heads, q, k) pattern -> per kind R/s/a: the attention mass of `query`,
    (batch, heads)."""
    return {k: pattern[:, :, query, i::TOKENS_PER_STEP].sum(-1) for i, k in enumerate(LETTERS)}


@torch.no_grad()
def rtg_scan(
    model,
    targets: str | Sequence[float] | None = None,
    at: int | None = None,
    seed: int = 0,
    target: float | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict:
    """In-context RTG scan (DTI's show_rtg_scan): one real window, the return-to-go varied.

    For each target: the predicted action at the newest state token, and per layer and head
    how much that token attends to R, s and a tokens (and to its own step's R token).

    >>> r = rtg_scan(model, targets="-1500:0:16")
    >>> r["actions"][0], r["attention"]["L0H0"]["R"][0]
    """
    window = rollout_window(model, target=target, at=at, seed=seed)
    ts = scan_targets(model, targets)
    K = window.mask.shape[1]
    query = TOKENS_PER_STEP * (K - 1) + 1  # the newest state token
    out, cache = model.run_with_cache(
        *window.inputs(ts, model.config.reward_scale),
        return_cache_object=False,
        names_filter=lambda n: n.endswith("hook_pattern"),
    )
    attention = {}
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        kinds = _attention_to_kinds(pattern, query)
        for h in range(model.cfg.n_heads):
            attention[f"L{layer}H{h}"] = {
                **{k: v[:, h].tolist() for k, v in kinds.items()},
                "own_R": pattern[:, h, query, query - 1].tolist(),
            }
    actions = _prediction(out)
    r = _meta(model, window, "rtg_scan")
    ds = model.config.dataset
    r.update(
        {
            "targets": ts,
            "actions": actions.tolist(),
            "attention": attention,
            "action_range": [float(actions.min()), float(actions.max())],
            "data_return_max": ds.get("return_max"),
            "expert_score": model.config.env.get("ref_scores", {}).get("expert"),
        }
    )
    from dtzoo.interp.figures import rtg_scan_plot

    return _write(r, out_dir, "rtg_scan", rtg_scan_plot)


# ----------------------------------------------------------------------------- attribution


@torch.no_grad()
def attribute(
    model,
    at: int | None = None,
    seed: int = 0,
    target: float | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict:
    """Direct action attribution at the newest state token (TransformerLens's logit_attrs).

    The final residual there is decomposed into embed, each head's result (split further by
    the kind of token it reads: R, s, a), each MLP's output and the output biases; each part,
    centred and divided by ln_final's scale (cached), times ln_final's gain and the action
    head, is its direct effect on the pre-tanh action. The parts plus `ln_final.b @ W_U + b_U`
    sum to the pre-tanh action (`total` == `pre_tanh`).

    >>> r = attribute(model)
    >>> dict(zip(r["labels"], r["attribution"]))      # {'embed': [...], 'L0H0': [...], ...}
    """
    window = rollout_window(model, target=target, at=at, seed=seed)
    use = model.cfg.use_attn_result
    model.set_use_attn_result(True)
    try:
        _, cache = model.run_with_cache(*window.inputs())
    finally:
        model.set_use_attn_result(use)
    K = window.mask.shape[1]
    q = TOKENS_PER_STEP * (K - 1) + 1
    stack, labels = cache.get_full_resid_decomposition(
        expand_neurons=False, pos_slice=q, return_labels=True
    )  # [comp, 1, d_model]
    directions = model.tokens_to_residual_directions(torch.arange(model.cfg.act_dim))
    attrs = cache.apply_ln_to_stack(stack, pos_slice=q)[:, 0] @ directions.T  # [comp, act]
    const = model.ln_final.bias @ model.W_U + model.b_U
    final = cache["hook_final"][0, q]
    pre_tanh = final @ model.W_U + model.b_U
    # each head's direct effect split by the kind of the token it reads
    by_kind = {}
    for layer in range(model.cfg.n_layers):
        attn = model.blocks[layer].attn
        v = cache["v", layer][0]  # (pos, head, d_head)
        pattern = cache["pattern", layer][0, :, q]  # (head, pos)
        scale = cache["ln_final.hook_scale"][0, q]
        for h in range(model.cfg.n_heads):
            per_token = pattern[h, :, None] * (v[:, h] @ attn.W_O[h])  # (pos, d_model)
            per_token = (per_token - per_token.mean(-1, keepdim=True)) / scale
            eff = per_token @ directions.T  # (pos, act)
            by_kind[f"L{layer}H{h}"] = {
                k: eff[i::TOKENS_PER_STEP].sum(0).tolist() for i, k in enumerate(LETTERS)
            }
    r = _meta(model, window, "attribution")
    r.update(
        {
            "labels": labels + ["ln_final.b+b_U"],
            "attribution": torch.cat([attrs, const[None]]).tolist(),
            "total": (attrs.sum(0) + const).tolist(),
            "pre_tanh": pre_tanh.tolist(),
            "action": (pre_tanh if model.cfg.discrete else torch.tanh(pre_tanh)).tolist(),
            "by_source_kind": by_kind,
        }
    )
    from dtzoo.interp.figures import attribution_plot

    return _write(r, out_dir, "attribution", attribution_plot)


# ----------------------------------------------------------------------------- attention


@torch.no_grad()
def attention(
    model,
    at: int | None = None,
    seed: int = 0,
    target: float | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict:
    """Attention by token kind, per layer and head, on one real window.

    `by_kind[Q][K]`: the mean, over the real query tokens of kind Q (R/s/a), of the attention
    mass on key tokens of kind K (each row sums to 1); `own_step[Q]`: the mean mass a kind-Q
    token puts on tokens of its own step; `pattern`: the full pattern (real tokens).

    >>> r = attention(model)
    >>> r["heads"][0]["by_kind"]["s"]       # {'R': 0.41, 's': 0.37, 'a': 0.22}
    """
    window = rollout_window(model, target=target, at=at, seed=seed)
    _, cache = model.run_with_cache(
        *window.inputs(),
        return_cache_object=False,
        names_filter=lambda n: n.endswith("hook_pattern"),
    )
    real = window.mask[0].repeat_interleave(TOKENS_PER_STEP)
    pos = torch.arange(real.numel())
    step, kind = pos // TOKENS_PER_STEP, pos % TOKENS_PER_STEP
    same_step = (step[:, None] == step[None, :]).float()
    heads = []
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # (head, q, k)
        for h in range(model.cfg.n_heads):
            p = pattern[h]
            by_kind, own = {}, {}
            for qi, qk in enumerate(LETTERS):
                rows = real & (kind == qi)
                by_kind[qk] = {
                    kk: float(p[rows][:, kind == ki].sum(-1).mean())
                    for ki, kk in enumerate(LETTERS)
                }
                own[qk] = float((p[rows] * same_step[rows]).sum(-1).mean())
            heads.append(
                {
                    "layer": layer,
                    "head": h,
                    "by_kind": by_kind,
                    "own_step": own,
                    "pattern": p[real][:, real].tolist(),
                }
            )
    r = _meta(model, window, "attention")
    r["heads"] = heads
    from dtzoo.interp.figures import attention_plot

    return _write(r, out_dir, "attention", attention_plot)


__all__ = ["Window", "attention", "attribute", "patch", "rollout_window", "rtg_scan"]
