"""TransformerLens's analysis utilities on the hooked DT, each checked against a hand computation.

Tiny random-weight models (1 and 2 layers, 2 heads, d_model 32), weights drawn wider than the
GPT-2 init so that every component matters; eval mode. The hand computations use only the
plain model's parameters (qkv, out, fc_in, fc_out, LayerNorms, predict_action) and its
cached activations, never the views under test.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformer_lens")

from transformer_lens import ActivationCache, patching  # noqa: E402

from dtzoo.interp import DTInput, HookedDecisionTransformer, to_transformer_lens  # noqa: E402
from dtzoo.model import DecisionTransformer, DTConfig, token_position  # noqa: E402

H, D, DMLP, T, ACT = 2, 32, 64, 5, 2
ATOL = 1e-5


def make(n_layers: int, seed: int = 0, **kw) -> DecisionTransformer:
    torch.manual_seed(seed)
    cfg = DTConfig(
        state_dim=3,
        act_dim=ACT,
        n_layers=n_layers,
        d_model=D,
        n_heads=H,
        d_mlp=DMLP,
        context_len=T,
        max_ep_len=100,
        dropout=0.0,
        **kw,
    )
    model = DecisionTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def inputs(seed: int = 0, batch: int = 3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, T, dtype=torch.bool)
    mask[0, :2] = False  # one left-padded row
    return (
        torch.randn(batch, T, 3, generator=g),
        torch.rand(batch, T, ACT, generator=g) * 2 - 1,
        torch.randn(batch, T, 1, generator=g),
        torch.randint(0, 100, (batch, T), generator=g),
        mask,
    )


@pytest.fixture(params=[1, 2], ids=["1L", "2L"])
def run(request):
    """(plain model, hooked model with hook_result on, its ActivationCache, plain cache, x)."""
    plain = make(request.param)
    hooked = to_transformer_lens(plain)
    hooked.set_use_attn_result(True)
    x = inputs()
    _, plain_cache = plain.run_with_cache(*x)
    preds, cache = hooked.run_with_cache(*x)
    return plain, hooked, cache, plain_cache, x, preds


def pre_tanh(plain: DecisionTransformer, final: torch.Tensor) -> torch.Tensor:
    """The action head on the final (ln_final'd) residual at the state tokens."""
    return plain.predict_action(final[:, 1::3])


def ln_hand(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    c = x - x.mean(-1, keepdim=True)
    return c / (c.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt() * ln.weight + ln.bias


def test_hooked_run_equals_the_plain_run_bitwise_with_every_extra_hook(run):
    plain, hooked, cache, plain_cache, x, preds = run
    assert torch.equal(preds, plain(*x))
    for name, act in plain_cache.items():  # every shared activation, bit for bit
        assert torch.equal(cache[name], act), name
    names = hooked.hook_names()
    assert [n for n in names if n in plain_cache] == plain.hook_names()  # same order
    L = plain.cfg.n_layers
    extras = {
        "hook_embed",
        "embed_ln.hook_scale",
        "ln_final.hook_scale",
        "ln_final.hook_normalized",
    } | {
        f"blocks.{i}.{k}"
        for i in range(L)
        for k in (
            "ln1.hook_scale",
            "ln1.hook_normalized",
            "ln2.hook_scale",
            "ln2.hook_normalized",
            "attn.hook_result",
        )
    }
    assert set(names) - set(plain_cache) == extras
    assert set(cache.keys()) == set(names)
    assert torch.equal(cache["hook_embed"], plain_cache["blocks.0.hook_resid_pre"])
    cfg = hooked.cfg
    assert (
        cfg.normalization_type,
        cfg.attn_only,
        cfg.device,
        cfg.n_heads,
        cfg.d_head,
        cfg.d_vocab_out,
        cfg.n_ctx,
        cfg.act_fn,
    ) == ("LN", False, "cpu", H, D // H, ACT, 3 * T, "relu")
    assert isinstance(hooked, HookedDecisionTransformer) and isinstance(cache, ActivationCache)


def test_weight_views_reproduce_q_k_v_z_and_the_mlp(run):
    plain, hooked, cache, _, _, _ = run
    assert hooked.W_Q.shape == (plain.cfg.n_layers, H, D, D // H)
    assert hooked.W_O.shape == (plain.cfg.n_layers, H, D // H, D)
    assert hooked.W_in.shape == (plain.cfg.n_layers, D, DMLP) and hooked.W_U.shape == (D, ACT)
    for i, block in enumerate(plain.blocks):
        x = ln_hand(cache["resid_pre", i], block.ln1)
        for kind, W, b in (
            ("q", hooked.W_Q, hooked.b_Q),
            ("k", hooked.W_K, hooked.b_K),
            ("v", hooked.W_V, hooked.b_V),
        ):
            hand = torch.einsum("bpm,hmd->bphd", x, W[i]) + b[i]
            torch.testing.assert_close(cache[kind, i], hand, atol=ATOL, rtol=0)
        # attn_out = sum over heads of z_h @ W_O[h] + b_O
        out = torch.einsum("bphd,hdm->bpm", cache["z", i], hooked.W_O[i]) + hooked.b_O[i]
        torch.testing.assert_close(cache["attn_out", i], out, atol=ATOL, rtol=0)
        m = ln_hand(cache["resid_mid", i], block.ln2)
        torch.testing.assert_close(
            cache["pre", i], m @ hooked.W_in[i] + hooked.b_in[i], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            cache["mlp_out", i],
            cache["post", i] @ hooked.W_out[i] + hooked.b_out[i],
            atol=ATOL,
            rtol=0,
        )
    # the per-block weights are views: editing W_Q edits the fused qkv
    with torch.no_grad():
        hooked.blocks[0].attn.W_Q[1, 3, 5] = 7.0
    assert hooked.blocks[0].attn.qkv.weight[D // H + 5, 3] == 7.0


def test_hook_scale_is_the_layer_norm_scale_and_patching_it_acts(run):
    plain, hooked, cache, _, x, preds = run
    final = cache["resid_post", -1]
    c = final - final.mean(-1, keepdim=True)
    scale = (c.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(cache["ln_final.hook_scale"], scale, atol=ATOL, rtol=0)
    torch.testing.assert_close(cache["scale"], scale, atol=ATOL, rtol=0)  # TL's shorthand
    ln = plain.ln_final
    torch.testing.assert_close(
        c / cache["scale"] * ln.weight + ln.bias, cache["hook_final"], atol=ATOL, rtol=0
    )
    # doubling ln_final's scale halves the normalised residual before the gain
    doubled = hooked.run_with_hooks(*x, fwd_hooks=[("ln_final.hook_scale", lambda s, hook: s * 2)])
    hand = torch.tanh(pre_tanh(plain, c / (2 * scale) * ln.weight + ln.bias))
    torch.testing.assert_close(doubled, hand, atol=ATOL, rtol=0)
    assert not torch.allclose(doubled, preds)

    # an in-place edit of the scale counts too
    def edit(s, hook):
        s.mul_(2)

    assert torch.allclose(
        hooked.run_with_hooks(*x, fwd_hooks=[("ln_final.hook_scale", edit)]), doubled, atol=ATOL
    )


def test_accumulated_resid_with_ln_reads_out_the_action(run):
    plain, hooked, cache, _, _, preds = run
    acc, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    L = plain.cfg.n_layers
    assert labels == [f"{i}_pre" for i in range(L)] + ["final_post"]
    for i in range(L):  # each layer's stream through ln_final (stats recomputed), by hand
        torch.testing.assert_close(
            acc[i], ln_hand(cache["resid_pre", i], plain.ln_final), atol=ATOL, rtol=0
        )
    readout = acc[-1][:, 1::3] @ hooked.W_U + hooked.b_U  # the logit lens's last entry
    torch.testing.assert_close(torch.tanh(readout), preds, atol=ATOL, rtol=0)
    lens = cache.logit_lens(positions=None)  # TL's one-call logit lens
    torch.testing.assert_close(torch.tanh(lens.values[-1][:, 1::3]), preds, atol=ATOL, rtol=0)


def test_decompose_resid_sums_to_the_final_residual(run):
    plain, _, cache, _, _, _ = run
    L = plain.cfg.n_layers
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed"] + [f"{i}_{k}_out" for i in range(L) for k in ("attn", "mlp")]
    torch.testing.assert_close(parts.sum(0), cache["resid_post", -1], atol=ATOL, rtol=0)
    # with the final LN's cached scale: the components sum to ln_final's input, normalised
    ln = plain.ln_final
    scaled = cache.decompose_resid(apply_ln=True).sum(0)
    torch.testing.assert_close(scaled * ln.weight + ln.bias, cache["hook_final"], atol=ATOL, rtol=0)
    attn_only = cache.decompose_resid(mode="attn", incl_embeds=False)
    assert attn_only.shape[0] == L


def test_head_results_sum_to_attn_out_minus_b_O(run):
    plain, hooked, cache, _, x, _ = run
    L = plain.cfg.n_layers
    heads, labels = cache.stack_head_results(return_labels=True)
    assert labels == [f"L{i}H{h}" for i in range(L) for h in range(H)]
    for i, block in enumerate(plain.blocks):
        per_head = heads[i * H : (i + 1) * H]
        torch.testing.assert_close(
            per_head.sum(0), cache["attn_out", i] - block.attn.out.bias, atol=ATOL, rtol=0
        )
        w = block.attn.out.weight  # hand: z_h @ out.weight[:, h*dh:(h+1)*dh].T
        dh = D // H
        for h in range(H):
            hand = cache["z", i][:, :, h] @ w[:, h * dh : (h + 1) * dh].T
            torch.testing.assert_close(per_head[h], hand, atol=ATOL, rtol=0)
    # without use_attn_result TL computes the same results from hook_z and W_O
    hooked.set_use_attn_result(False)
    _, lean = hooked.run_with_cache(*x)
    assert not any(k.endswith("hook_result") for k in lean.keys())
    torch.testing.assert_close(lean.stack_head_results(), heads, atol=ATOL, rtol=0)
    # ablating one head through hook_result = removing its share of attn_out
    hooked.set_use_attn_result(True)

    def drop_head(r, hook):  # in place, as TL's patch setters do
        r[:, :, 0] = 0

    seen = {}

    def keep(act, hook):
        seen[hook.name] = act.clone()

    hooked.run_with_hooks(
        *x, fwd_hooks=[("blocks.0.attn.hook_result", drop_head), ("blocks.0.hook_attn_out", keep)]
    )
    torch.testing.assert_close(
        seen["blocks.0.hook_attn_out"], cache["attn_out", 0] - heads[0], atol=ATOL, rtol=0
    )


def test_full_resid_decomposition_and_neuron_results(run):
    plain, hooked, cache, _, _, _ = run
    L = plain.cfg.n_layers
    full, labels = cache.get_full_resid_decomposition(return_labels=True)
    assert full.shape[0] == L * H + L * DMLP + 2 and labels[-2:] == ["embed", "bias"]
    torch.testing.assert_close(full.sum(0), cache["resid_post", -1], atol=1e-4, rtol=0)
    bias = sum(b.attn.out.bias + b.mlp.fc_out.bias for b in plain.blocks)
    torch.testing.assert_close(full[-1, 0, 0], bias, atol=ATOL, rtol=0)
    for i, block in enumerate(plain.blocks):
        neurons = cache.get_neuron_results(i)  # [batch, pos, d_mlp, d_model]
        hand = cache["post", i][..., None] * block.mlp.fc_out.weight.T
        torch.testing.assert_close(neurons, hand, atol=ATOL, rtol=0)
        torch.testing.assert_close(
            neurons.sum(-2) + block.mlp.fc_out.bias, cache["mlp_out", i], atol=ATOL, rtol=0
        )


def test_direct_action_attribution_with_logit_attrs(run):
    plain, hooked, cache, _, _, preds = run
    full = cache.get_full_resid_decomposition()
    ln, head = plain.ln_final, plain.predict_action
    for a in range(ACT):
        attrs = cache.logit_attrs(full, tokens=a)  # [components, batch, pos]
        const = ln.bias @ head.weight[a] + head.bias[a]
        total = attrs.sum(0)[:, 1::3] + const
        # = the pre-tanh action head on the scaled final residual
        torch.testing.assert_close(torch.tanh(total), preds[..., a], atol=1e-4, rtol=0)
        scaled = cache.apply_ln_to_stack(full).sum(0)[:, 1::3]
        hand = (scaled * ln.weight) @ head.weight[a]
        torch.testing.assert_close(attrs.sum(0)[:, 1::3], hand, atol=1e-4, rtol=0)


def test_transformer_lens_patching_matches_hand_patching(run):
    plain, hooked, cache, _, x, _ = run
    clean = hooked.to_tokens(*x)
    corrupt = hooked.to_tokens(x[0], x[1], x[2] * 4 - 2, x[3], x[4])
    assert isinstance(clean, DTInput) and clean.shape == (3, 3 * T)
    assert torch.equal(hooked(clean), hooked(*x))

    def metric(out):  # the last step's first action dim, over the batch
        return out[:, -1, 0].mean()

    res = patching.get_act_patch_resid_pre(hooked, corrupt, cache, metric)
    L = plain.cfg.n_layers
    assert res.shape == (L, 3 * T)
    last_s = token_position(T - 1, "state")
    for layer, pos in [(0, token_position(T - 1, "rtg")), (L - 1, last_s), (0, 4)]:

        def put(act, hook, pos=pos):
            act[:, pos] = cache[hook.name][:, pos]
            return act

        hand = metric(
            hooked.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", put)])
        )
        torch.testing.assert_close(res[layer, pos], hand, atol=ATOL, rtol=0)
    # the last action token comes after every state token read: patching it does nothing
    base = metric(hooked(corrupt))
    torch.testing.assert_close(res[:, -1], base.expand(L), atol=ATOL, rtol=0)
    # the corrupted R tokens matter: some patch moves the metric
    assert (res - base).abs().max() > 1e-3
    heads = patching.get_act_patch_attn_head_out_all_pos(hooked, corrupt, cache, metric)
    assert heads.shape == (L, H) and torch.isfinite(heads).all()


def test_factored_qk_and_ov_circuits(run):
    plain, hooked, cache, _, _, _ = run
    L, dh = plain.cfg.n_layers, D // H
    assert hooked.QK.shape == (L, H, D, D) and hooked.OV.shape == (L, H, D, D)
    for i, block in enumerate(plain.blocks):
        wq, wk, wv = block.attn.qkv.weight.split(D)
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            torch.testing.assert_close(hooked.QK.AB[i, h], wq[sl].T @ wk[sl], atol=ATOL, rtol=0)
            torch.testing.assert_close(
                hooked.blocks[i].attn.OV.AB[h],
                wv[sl].T @ block.attn.out.weight[:, sl].T,
                atol=ATOL,
                rtol=0,
            )
        # OV by hand: a head's result = pattern @ (ln1(x) OV + b_V W_O)
        x = ln_hand(cache["resid_pre", i], block.ln1)
        ov = hooked.blocks[i].attn.OV.AB
        bv_o = torch.einsum("hd,hdm->hm", hooked.b_V[i], hooked.W_O[i])
        hand = torch.einsum("bhqk,bkm,hmn->bqhn", cache["pattern", i], x, ov) + bv_o
        torch.testing.assert_close(cache["result", i], hand, atol=1e-4, rtol=0)
        # QK by hand: scores (before the mask) = (x W_Q + b_Q)(x W_K + b_K)^T / sqrt(d_head)
        q = torch.einsum("bpm,hmd->bphd", x, hooked.W_Q[i]) + hooked.b_Q[i]
        k = torch.einsum("bpm,hmd->bphd", x, hooked.W_K[i]) + hooked.b_K[i]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / dh**0.5
        real = torch.isfinite(cache["attn_scores", i])
        torch.testing.assert_close(scores[real], cache["attn_scores", i][real], atol=1e-4, rtol=0)


def test_image_model_state_encoder_hooks_fire_under_run_with_cache():
    torch.manual_seed(0)
    cfg = DTConfig(
        state_dim=0,
        act_dim=4,
        discrete=True,
        d_model=D,
        n_heads=H,
        d_mlp=DMLP,
        context_len=2,
        dropout=0.0,
        state_encoder="nature_cnn",
        obs_shape=(2, 44, 44),
    )
    plain = DecisionTransformer(cfg).eval()
    hooked = to_transformer_lens(plain)
    frames = torch.randint(0, 256, (2, 2, 2, 44, 44), dtype=torch.uint8)
    x = (frames, torch.zeros(2, 2, 4), torch.randn(2, 2, 1), torch.zeros(2, 2, dtype=torch.long))
    names = [f"hook_state_encoder_conv{i}" for i in range(3)] + ["hook_state_encoder_out"]
    _, plain_cache = plain.run_with_cache(*x)
    preds, cache = hooked.run_with_cache(*x)
    for n in names:
        assert n in cache.keys(), n
        assert torch.equal(cache[n], plain_cache[n]), n
    assert cache["hook_state_encoder_out"].shape == (2, 2, D)
    # and patching through them works: zero the encoder's output = zero state embeddings + time
    out = hooked.run_with_hooks(
        *x, fwd_hooks=[("hook_state_encoder_out", lambda a, hook: torch.zeros_like(a))]
    )
    assert not torch.equal(out, preds)
    torch.testing.assert_close(
        cache["hook_embed_state"] - cache["hook_state_encoder_out"],
        cache["hook_embed_time"],
        atol=ATOL,
        rtol=0,
    )
