"""TransformerLens-style hook points: names, shapes, caching, ablation, attention patterns."""

from __future__ import annotations

import pytest
import torch

from dtzoo.model import (
    TOKEN_KINDS,
    DecisionTransformer,
    DTConfig,
    position_token,
    token_position,
)

B, T, S, A, D, H, M = 3, 5, 4, 2, 32, 4, 40
L = 3 * T

EMBED_HOOKS = ["hook_embed_rtg", "hook_embed_state", "hook_embed_action", "hook_embed_time"]
BLOCK_HOOKS = [
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
]


def design_names(n_layers: int) -> set[str]:
    """Every hook name DESIGN.md lists."""
    names = set(EMBED_HOOKS) | {"hook_final"}
    return names | {f"blocks.{i}.{h}" for i in range(n_layers) for h in BLOCK_HOOKS}


def expected_shape(name: str) -> tuple[int, ...]:
    if name in EMBED_HOOKS:
        return (B, T, D)
    if name.endswith(("hook_q", "hook_k", "hook_v", "hook_z")):
        return (B, L, H, D // H)
    if name.endswith(("hook_attn_scores", "hook_pattern")):
        return (B, H, L, L)
    if name.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return (B, L, M)
    return (B, L, D)  # residual stream, attn_out, mlp_out, hook_final


def make_model(n_layers: int) -> DecisionTransformer:
    torch.manual_seed(n_layers)
    cfg = DTConfig(
        state_dim=S,
        act_dim=A,
        n_layers=n_layers,
        d_model=D,
        n_heads=H,
        d_mlp=M,
        context_len=T,
        max_ep_len=100,
    )
    model = DecisionTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def make_inputs(seed: int = 0, padded: bool = False):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(B, T, S, generator=g)
    actions = torch.rand(B, T, A, generator=g) * 2 - 1
    rtg = torch.randn(B, T, 1, generator=g)
    timesteps = torch.randint(0, 100, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    if padded:  # left padding: row 0 none, row 1 two steps, row 2 all but the last step
        mask[1, :2] = False
        mask[2, : T - 1] = False
    return states, actions, rtg, timesteps, mask


def no_hooks_left(model: DecisionTransformer) -> bool:
    return all(not hp._forward_hooks for hp in model.hook_points().values())


@pytest.fixture(params=[1, 2], ids=["1L", "2L"])
def model(request) -> DecisionTransformer:
    return make_model(request.param)


def test_every_design_name_is_present_with_its_shape(model):
    n = model.cfg.n_layers
    assert set(model.hook_names()) == design_names(n)
    _, cache = model.run_with_cache(*make_inputs())
    assert set(cache) == design_names(n)
    for name, act in cache.items():
        assert tuple(act.shape) == expected_shape(name), name
        assert not act.requires_grad
    assert no_hooks_left(model)


def test_hook_names_are_in_forward_order(model):
    fired: list[str] = []
    model.run_with_hooks(*make_inputs(), fwd_hooks=[(lambda n: True, lambda a, n: fired.append(n))])
    assert fired == model.hook_names()


def test_cache_is_consistent(model):
    preds, cache = model.run_with_cache(*make_inputs())
    assert torch.equal(preds, model(*make_inputs()))
    for i in range(model.cfg.n_layers):
        b = f"blocks.{i}."
        assert torch.equal(
            cache[b + "hook_resid_mid"], cache[b + "hook_resid_pre"] + cache[b + "hook_attn_out"]
        )
        assert torch.equal(
            cache[b + "hook_resid_post"], cache[b + "hook_resid_mid"] + cache[b + "hook_mlp_out"]
        )
        assert torch.equal(cache[b + "mlp.hook_post"], torch.relu(cache[b + "mlp.hook_pre"]))
        z = cache[b + "attn.hook_z"].reshape(B, L, D)
        torch.testing.assert_close(model.blocks[i].attn.out(z), cache[b + "hook_attn_out"])
        if i:
            assert torch.equal(
                cache[b + "hook_resid_pre"], cache[f"blocks.{i - 1}.hook_resid_post"]
            )
    # the action is read from the state tokens of hook_final
    state_tokens = cache["hook_final"][:, [token_position(t, "state") for t in range(T)]]
    torch.testing.assert_close(torch.tanh(model.predict_action(state_tokens)), preds)


def test_names_filter_limits_the_cache(model):
    x = make_inputs()
    _, cache = model.run_with_cache(*x, names_filter="blocks.0.attn.hook_pattern")
    assert list(cache) == ["blocks.0.attn.hook_pattern"]
    wanted = ["hook_embed_rtg", "blocks.0.hook_resid_post"]
    _, cache = model.run_with_cache(*x, names_filter=wanted)
    assert set(cache) == set(wanted)
    _, cache = model.run_with_cache(*x, names_filter=lambda n: n.endswith("hook_pattern"))
    assert set(cache) == {f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)}
    _, cache = model.run_with_cache(*x, names_filter=None)
    assert set(cache) == design_names(model.cfg.n_layers)
    assert no_hooks_left(model)


def zero(act: torch.Tensor, name: str) -> torch.Tensor:
    return torch.zeros_like(act)


def zero_rtg_tokens(act: torch.Tensor, name: str) -> torch.Tensor:
    act = act.clone()
    act[:, [token_position(t, "rtg") for t in range(T)]] = 0
    return act


@pytest.mark.parametrize(
    "hook",
    [("hook_embed_rtg", zero), ("blocks.0.hook_resid_pre", zero_rtg_tokens)],
    ids=["embed_rtg", "resid_pre-rtg-tokens"],
)
def test_ablation_changes_output_and_removal_restores_it(model, hook):
    x = make_inputs()
    clean = model(*x)
    ablated = model.run_with_hooks(*x, fwd_hooks=[hook])
    assert (ablated - clean).abs().max() > 1e-4
    assert no_hooks_left(model)
    assert torch.equal(model(*x), clean)


def test_ablating_rtg_removes_rtg_dependence(model):
    s, a, r, t, m = make_inputs()
    hooks = [("hook_embed_rtg", zero)]
    out1 = model.run_with_hooks(s, a, r, t, m, fwd_hooks=hooks)
    out2 = model.run_with_hooks(s, a, r * 10 + 3, t, m, fwd_hooks=hooks)
    assert torch.equal(out1, out2)
    assert not torch.equal(model(s, a, r, t, m), model(s, a, r * 10 + 3, t, m))


def test_activation_patching_replaces_activations(model):
    clean, corrupt = make_inputs(0), make_inputs(1)
    corrupt = (*corrupt[:3], clean[3], clean[4])  # same timesteps and mask
    corrupt_out, cache = model.run_with_cache(*corrupt, names_filter="blocks.0.hook_resid_pre")
    patched = model.run_with_hooks(
        *clean, fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, n: cache[n])]
    )
    assert torch.equal(patched, corrupt_out)


def test_hook_returning_none_leaves_output_unchanged(model):
    x = make_inputs()
    seen: list[str] = []
    out = model.run_with_hooks(
        *x,
        fwd_hooks=[
            ("blocks.0.attn.hook_pattern", lambda act, n: seen.append(n)),
            (lambda n: "resid" in n, lambda act, n: None),
        ],
    )
    assert seen == ["blocks.0.attn.hook_pattern"]
    assert torch.equal(out, model(*x))


def test_unknown_hook_name_raises_key_error(model):
    x = make_inputs()
    with pytest.raises(KeyError, match="blocks.0.hook_nope"):
        model.run_with_hooks(*x, fwd_hooks=[("hook_embed_rtg", zero), ("blocks.0.hook_nope", zero)])
    assert no_hooks_left(model)
    with pytest.raises(KeyError):
        model.run_with_hooks(*x, fwd_hooks=[(f"blocks.{model.cfg.n_layers}.hook_resid_pre", zero)])


def test_token_position_round_trip():
    assert token_position(0, "rtg") == 0 and token_position(2, "state") == 7
    assert position_token(7) == (2, "state")
    for pos in range(3 * 20):
        assert token_position(*position_token(pos)) == pos
    for t in range(20):
        for kind in TOKEN_KINDS:
            assert position_token(token_position(t, kind)) == (t, kind)


@pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
def test_attention_pattern_is_causal_and_ignores_padding(model, padded):
    s, a, r, t, mask = make_inputs(padded=padded)
    _, cache = model.run_with_cache(s, a, r, t, mask, names_filter=lambda n: "hook_pattern" in n)
    valid_tokens = mask.repeat_interleave(3, dim=1)  # (B, L)
    future = torch.ones(L, L, dtype=torch.bool).triu(1)  # [q, k]: k after q
    for pattern in cache.values():
        torch.testing.assert_close(pattern.sum(-1), torch.ones(B, H, L), atol=1e-6, rtol=0)
        for b in range(B):
            q = valid_tokens[b]
            rows = pattern[b][:, q]  # (H, valid queries, L)
            assert rows[:, future[q]].abs().max() == 0  # no attention to the future
            padded_keys = ~valid_tokens[b]
            if padded_keys.any():  # padded keys get no attention from real queries
                assert rows[..., padded_keys].abs().max() < 1e-6
    if padded:  # a left-padded row predicts what the same steps without padding predict
        out = model(s, a, r, t, mask)
        for b in range(B):
            keep = mask[b]
            alone = model(
                s[b : b + 1, keep], a[b : b + 1, keep], r[b : b + 1, keep], t[b : b + 1, keep]
            )
            torch.testing.assert_close(out[b, keep], alone[0], atol=1e-6, rtol=0)
