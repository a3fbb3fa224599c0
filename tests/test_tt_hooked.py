"""The Trajectory Transformer on TransformerLens (dtzoo.tt.hooked), each utility checked against
the plain TT or a hand computation.

A tiny random-weight TT (obs 3, act 1: 6 tokens a transition; 2 layers, 2 heads, d_model 32,
context 3 transitions = 17 tokens), weights drawn wider than the GPT-2 init so that every
component matters; eval mode. Hand computations use the plain model's parameters.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformer_lens")

from transformer_lens import ActivationCache, patching  # noqa: E402

import dtzoo.interp  # noqa: E402
from dtzoo.tt import TrajectoryTransformer, TTConfig, greedy_decode  # noqa: E402
from dtzoo.tt.hooked import (  # noqa: E402
    HookedTrajectoryTransformer,
    HookedTTConfig,
    to_transformer_lens,
)
from tests.test_tt import hook_shapes  # noqa: E402

H, D_MODEL, DMLP, N_BINS = 2, 32, 64, 20
ATOL = 1e-5


def make(seed: int = 0) -> TrajectoryTransformer:
    torch.manual_seed(seed)
    cfg = TTConfig(
        3, 1, n_bins=N_BINS, n_layers=2, n_heads=H, d_model=D_MODEL, d_mlp=DMLP, context_len=3
    )
    model = TrajectoryTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def window(seed: int = 0, batch: int = 3) -> torch.Tensor:
    """A (batch, block_size) token window; row 0 ends in stop tokens (an episode's end)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, N_BINS, (batch, 17), generator=g)
    tokens[0, 12:] = N_BINS
    return tokens


@pytest.fixture(scope="module")
def run():
    """(plain TT, hooked TT with hook_result on, its ActivationCache, plain cache, tokens)."""
    plain = make()
    hooked = to_transformer_lens(plain)
    hooked.set_use_attn_result(True)
    tokens = window()
    _, plain_cache = plain.run_with_cache(tokens)
    _, cache = hooked.run_with_cache(tokens)
    return plain, hooked, cache, plain_cache, tokens


def test_plain_run_is_bitwise_the_tt_and_every_hook_fires_with_its_shape(run):
    plain, hooked, cache, plain_cache, tokens = run
    assert isinstance(hooked, HookedTrajectoryTransformer) and isinstance(cache, ActivationCache)
    assert torch.equal(hooked(tokens), plain(tokens))
    assert torch.equal(
        hooked.loss(tokens[:, :-1], tokens[:, 1:]), plain.loss(tokens[:, :-1], tokens[:, 1:])
    )
    for name, act in plain_cache.items():  # every shared activation, bit for bit
        assert torch.equal(cache[name], act), name
    B, L = tokens.shape
    want = hook_shapes(plain.cfg, B, L)  # the TT's documented shapes, plus TL's extras
    for ln in [f"blocks.{i}.{k}" for i in range(2) for k in ("ln1", "ln2")] + ["ln_final"]:
        want |= {f"{ln}.hook_scale": (B, L, 1), f"{ln}.hook_normalized": (B, L, D_MODEL)}
    want |= {f"blocks.{i}.attn.hook_result": (B, L, H, D_MODEL) for i in range(2)}
    assert {k: tuple(cache[k].shape) for k in cache.keys()} == want  # every hook fired
    names = hooked.hook_names()
    assert set(names) == set(want) and [n for n in names if n in plain_cache] == plain.hook_names()
    cfg = hooked.cfg
    assert isinstance(cfg, HookedTTConfig) and cfg.to_tt() == plain.cfg
    assert cfg.architecture() == plain.cfg.architecture()
    assert (cfg.n_ctx, cfg.d_vocab, cfg.d_vocab_out, cfg.d_head, cfg.act_fn) == (
        17,
        N_BINS * 6 + 1,
        N_BINS + 1,
        D_MODEL // H,
        "gelu",
    )
    # one call for both families; a hooked model comes back as it is
    assert type(dtzoo.interp.to_transformer_lens(plain)) is HookedTrajectoryTransformer
    assert dtzoo.interp.to_transformer_lens(hooked) is hooked
    assert hooked.state_dict().keys() == plain.state_dict().keys()


def ln_hand(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    c = x - x.mean(-1, keepdim=True)
    return c / (c.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt() * ln.weight + ln.bias


def test_weights_in_tl_layout_reproduce_the_activations_and_the_logits(run):
    plain, hooked, cache, _, tokens = run
    assert hooked.W_Q.shape == (2, H, D_MODEL, D_MODEL // H)
    assert hooked.W_U.shape == (6, D_MODEL, N_BINS + 1) and hooked.W_E.shape == (121, D_MODEL)
    for i, block in enumerate(plain.blocks):
        x = ln_hand(cache["resid_pre", i], block.ln1)
        for kind, W, b in (("q", hooked.W_Q, hooked.b_Q), ("v", hooked.W_V, hooked.b_V)):
            hand = torch.einsum("bpm,hmd->bphd", x, W[i]) + b[i]
            torch.testing.assert_close(cache[kind, i], hand, atol=ATOL, rtol=0)
        out = torch.einsum("bphd,hdm->bpm", cache["z", i], hooked.W_O[i]) + hooked.b_O[i]
        torch.testing.assert_close(cache["attn_out", i], out, atol=ATOL, rtol=0)
        m = ln_hand(cache["resid_mid", i], block.ln2)
        torch.testing.assert_close(
            cache["pre", i], m @ hooked.W_in[i] + hooked.b_in[i], atol=ATOL, rtol=0
        )
    # position p is read out by W_U[p % transition_dim]; the token embedding is W_E's row
    logits = torch.stack([cache["hook_final"][:, p] @ hooked.W_U[p % 6] for p in range(17)], 1)
    torch.testing.assert_close(logits, plain(tokens), atol=ATOL, rtol=0)
    torch.testing.assert_close(cache["embed"][1, 7], hooked.W_E[1 * N_BINS + tokens[1, 7]])
    torch.testing.assert_close(cache["pos_embed"][2], hooked.W_pos[:17])


def test_editing_a_weight_view_edits_the_model():
    tokens = window()
    base = make()(tokens)
    by_view, by_fused = to_transformer_lens(make()), make()
    dh = D_MODEL // H
    with torch.no_grad():
        by_view.blocks[0].attn.W_Q[1, 3, 5] += 2.0  # head 1, d_model 3, d_head 5
        by_fused.blocks[0].attn.qkv.weight[dh + 5, 3] += 2.0
    out = by_view(tokens)
    assert torch.equal(out, by_fused(tokens)) and not torch.allclose(out, base)
    # W_U[d] is dimension d's head: editing it moves the logits of positions p % 6 == d only
    with torch.no_grad():
        by_view.W_U[2, :, 4] += 1.0
    moved = (by_view(tokens) - out).abs().amax((0, 2)) > 0
    assert moved.tolist() == [p % 6 == 2 for p in range(17)]


def test_decompositions_sum_to_the_final_residual(run):
    plain, hooked, cache, _, _ = run
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    torch.testing.assert_close(parts.sum(0), cache["resid_post", -1], atol=ATOL, rtol=0)
    ln = plain.ln_final
    scaled = cache.decompose_resid(apply_ln=True).sum(0)
    torch.testing.assert_close(scaled * ln.weight + ln.bias, cache["hook_final"], atol=ATOL, rtol=0)
    acc = cache.accumulated_resid(apply_ln=True)  # each stream through ln_final (as TL 4.3)
    torch.testing.assert_close(acc[0], ln_hand(cache["resid_pre", 0], ln), atol=ATOL, rtol=0)
    torch.testing.assert_close(acc[-1], cache["hook_final"], atol=ATOL, rtol=0)
    full = cache.get_full_resid_decomposition()
    assert full.shape[0] == 2 * H + 2 * DMLP + 3  # heads, neurons, embed, pos_embed, biases
    torch.testing.assert_close(full.sum(0), cache["resid_post", -1], atol=1e-4, rtol=0)
    heads = cache.stack_head_results()
    for i, block in enumerate(plain.blocks):
        torch.testing.assert_close(
            heads[i * H : (i + 1) * H].sum(0),
            cache["attn_out", i] - block.attn.out.bias,
            atol=ATOL,
            rtol=0,
        )


def test_transformer_lens_patching_equals_hand_patching(run):
    _, hooked, cache, _, clean = run
    corrupt = clean.clone()
    corrupt[:, :6] = (clean[:, :6] + 7) % N_BINS  # another first transition

    def metric(logits):  # the log-prob of the clean last token, over the batch
        return logits[:, -1].log_softmax(-1).gather(-1, clean[:, -1:]).mean()

    res = patching.get_act_patch_resid_pre(hooked, corrupt, cache, metric)
    assert res.shape == (2, 17)
    for layer, pos in [(0, 0), (0, 3), (1, 4), (1, 16)]:

        def put(act, hook, pos=pos):
            act[:, pos] = cache[hook.name][:, pos]
            return act

        hand = metric(
            hooked.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", put)])
        )
        torch.testing.assert_close(res[layer, pos], hand, atol=ATOL, rtol=0)
    base = metric(hooked(corrupt))
    # position 5 is a value token: no token reads it, so patching it does nothing
    torch.testing.assert_close(res[:, 5], base.expand(2), atol=ATOL, rtol=0)
    assert (res - base).abs().max() > 1e-3  # the corrupted tokens matter somewhere
    heads = patching.get_act_patch_attn_head_out_all_pos(hooked, corrupt, cache, metric)
    assert heads.shape == (2, H) and torch.isfinite(heads).all()


def test_a_hook_that_zeroes_an_activation_changes_the_output(run):
    _, hooked, _, _, tokens = run
    plain = hooked(tokens)

    def zero(act, hook):
        return torch.zeros_like(act)

    for name in ("blocks.1.hook_mlp_out", "blocks.0.attn.hook_result", "hook_pos_embed"):
        ablated = hooked.run_with_hooks(tokens, fwd_hooks=[(name, zero)])
        assert not torch.allclose(ablated, plain), name
    assert torch.equal(hooked(tokens), plain)  # hooks are gone afterwards
    # zeroing every head's result of layer 0 = removing its attention output but b_O
    seen = {}
    hooked.run_with_hooks(
        tokens,
        fwd_hooks=[
            ("blocks.0.attn.hook_result", zero),
            ("blocks.0.hook_attn_out", lambda a, hook: seen.setdefault("out", a.clone())),
        ],
    )
    assert torch.equal(seen["out"], hooked.blocks[0].attn.b_O.expand_as(seen["out"]))


def test_logit_attribution_goes_through_each_position_s_own_head(run):
    plain, hooked, cache, _, tokens = run
    targets = torch.roll(tokens, -1, 1)
    attrs = hooked.logit_attrs(cache, cache.decompose_resid(), targets)
    assert attrs.shape == (6, 3, 17)
    heads = plain.head.weight  # [transition_dim, n_bins + 1, d_model]
    const = torch.stack(
        [plain.ln_final.bias @ heads[p % 6, targets[:, p]].T for p in range(17)], 1
    )  # [batch, pos]
    logits = plain(tokens).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(attrs.sum(0) + const, logits, atol=1e-4, rtol=0)
    d0 = hooked.tokens_to_residual_directions(targets[:, 0], dim=0)
    torch.testing.assert_close(d0, plain.ln_final.weight * heads[0, targets[:, 0]])
    # TL's single-W_U readouts refuse rather than mix the heads
    with pytest.raises(ValueError, match="per transition dimension"):
        cache.logit_attrs(cache.decompose_resid(), tokens=3)
    with pytest.raises(NotImplementedError):
        cache.logit_lens()


def test_the_hooked_tt_plans_as_the_tt_does(run):
    plain, hooked, _, _, tokens = run
    prefix = tokens[1, :9]
    assert torch.equal(greedy_decode(hooked, prefix, 6, fast=True), greedy_decode(plain, prefix, 6))
