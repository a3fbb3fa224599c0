"""Interpretability walk-through on one dtzoo model (docs/interpretability.md shows the output).

    dtzoo data prepare pendulum && dtzoo train pendulum-2L-seed0
    dtzoo publish pendulum-2L-seed0 --checkpoints
    python examples/interpretability.py pendulum-2L-seed0 --out-dir docs/img \
        --revisions step0,step64,step256,main

1. attention patterns over the (R, s, a) tokens, averaged over dataset segments -> PNG;
2. ablations of the return-to-go tokens: how far the predicted action moves, and what that
   does to the return of real episodes;
3. a probe-ready activation dump (the residual stream at every state token, after every layer,
   with the true return-to-go) -> .npz, and a least-squares linear probe for the RTG per layer;
4. (--revisions) the same probe at training-time checkpoints;
5. (with TransformerLens) TL's own analysis on the same segments: `decompose_resid`, direct
   action attribution with `cache.logit_attrs`, and the one-call helpers of dtzoo.interp on a
   real rollout: activation patching between two returns-to-go and an in-context RTG scan
   (JSON + PNG each).

MODEL is a model id (pulled from the hub, like `dtzoo.load`) or a model directory. The model's
dataset must be available locally (`dtzoo data prepare ENV`). Only dtzoo's own hooks are used
(`run_with_cache`, `run_with_hooks`, `hooks`); with `pip install dtzoo[interp]` the same names
work through TransformerLens (`dtzoo.interp.load_hooked`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import dtzoo
from dtzoo.data import ActionSpace, SegmentSampler, load_trajectories
from dtzoo.evaluate import episode_seeds, rollout
from dtzoo.model import TOKEN_KINDS, token_position

KIND_LABEL = {"rtg": "R", "state": "s", "action": "a"}


# ----------------------------------------------------------------------------- data


def dataset_segments(config, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` full-length context windows from the model's own dataset, normalised as in training.

    Adds `rtg_raw` (the true return-to-go, unscaled) and `episode` (for a split by episode)."""
    data = load_trajectories(config.dataset["id"])
    if data.fingerprint != config.dataset["fingerprint"]:
        print(f"note: {config.dataset['id']} differs from the data the model was trained on")
    K = config.architecture["context_len"]
    sampler = SegmentSampler(
        data,
        K,
        config.architecture["max_ep_len"],
        config.reward_scale,
        seed=seed,
        state_mean=np.asarray(config.state_mean),
        state_std=np.asarray(config.state_std),
    )
    ep, si = sampler.draw(n)
    si = np.minimum(si, data.lengths[ep] - K)  # full windows: no padding in the probe data
    if (si < 0).any():
        raise SystemExit(f"some episodes are shorter than the context ({K} steps)")
    seg = sampler.segments(ep, si)
    seg["rtg_raw"] = seg["returns_to_go"][..., 0] * config.reward_scale
    seg["episode"] = np.repeat(ep[:, None], K, axis=1)
    return seg


def as_tensors(seg: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.from_numpy(seg[k])
        for k in ("states", "actions", "returns_to_go", "timesteps", "mask")
    )


# ----------------------------------------------------------------------------- 1. attention


def attention_figure(model, x, path: Path, title: str, last_steps: int = 4) -> np.ndarray:
    """Mean attention pattern per layer and head: the last `last_steps` steps of the context, and
    the attention mass each token kind (rows) puts on each token kind (columns). Returns the
    kind-to-kind matrices, (layers, heads, 3, 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, cache = model.run_with_cache(*x, names_filter=lambda n: n.endswith("hook_pattern"))
    K = model.cfg.context_len
    layers, heads = model.cfg.n_layers, model.cfg.n_heads
    lo = token_position(K - last_steps, "rtg")
    labels = [
        f"{KIND_LABEL[k]} t{t - K + 1:+d}".replace("+0", "")
        for t in range(K - last_steps, K)
        for k in TOKEN_KINDS
    ]  # "R t-3", ..., "a t"
    kinds = np.zeros((layers, heads, 3, 3))
    fig, axes = plt.subplots(
        layers * heads,
        2,
        figsize=(9.5, 4.2 * layers * heads),
        gridspec_kw={"width_ratios": [3, 1.3]},
        squeeze=False,
    )
    for layer in range(layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].mean(0)  # (heads, 3K, 3K)
        for h in range(heads):
            p = pattern[h].numpy()
            for qi in range(3):  # mass from the window's queries of kind qi onto all keys of
                # kind ki, in the whole context (rows sum to 1)
                kinds[layer, h, qi] = [p[lo + qi :: 3, ki::3].sum(-1).mean() for ki in range(3)]
            ax, ax2 = axes[layer * heads + h]
            im = ax.imshow(p[lo:, lo:], cmap="viridis", vmin=0)
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_xlabel("key (attended to)")
            ax.set_ylabel("query")
            ax.set_title(f"layer {layer} head {h}: last {last_steps} steps", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
            ax2.imshow(kinds[layer, h], cmap="magma", vmin=0, vmax=1)
            for qi in range(3):
                for ki in range(3):
                    v = kinds[layer, h, qi, ki]
                    ax2.text(
                        ki,
                        qi,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        color="white" if v < 0.6 else "black",
                        fontsize=9,
                    )
            ticks = [KIND_LABEL[k] for k in TOKEN_KINDS]
            ax2.set_xticks(range(3), ticks)
            ax2.set_yticks(range(3), [f"{t} tokens" for t in ticks])
            ax2.set_title(
                f"attention mass by kind\n(queries in the last {last_steps} steps)", fontsize=9
            )
    fig.suptitle(f"{title}: mean attention over {x[0].shape[0]} dataset segments", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return kinds


# ----------------------------------------------------------------------------- 2. ablation


def rtg_ablations(model, config, x) -> dict[str, torch.Tensor]:
    """Predicted actions (last step of each segment) under ablations of the R tokens."""
    K = model.cfg.context_len
    r_cols = torch.tensor([token_position(t, "rtg") for t in range(K)])
    clean, cache = model.run_with_cache(*x, names_filter="hook_embed_rtg")
    mean_r = cache["hook_embed_rtg"].mean(dim=(0, 1), keepdim=True)

    def zero(act, name):  # the R tokens' embeddings (return + time) -> 0
        return torch.zeros_like(act)

    def mean(act, name):  # -> the mean R embedding over all segments and steps
        return mean_r.expand_as(act)

    def knock_out(pattern, name):  # no token may read the R tokens, in any layer
        pattern = pattern.clone()
        pattern[..., r_cols] = 0.0
        return pattern

    states, actions, rtg, timesteps, mask = x
    out = {"clean": clean}
    out["zero-ablate R embeddings"] = model.run_with_hooks(*x, fwd_hooks=[("hook_embed_rtg", zero)])
    out["mean-ablate R embeddings"] = model.run_with_hooks(*x, fwd_hooks=[("hook_embed_rtg", mean)])
    out["attention to R knocked out"] = model.run_with_hooks(
        *x, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), knock_out)]
    )
    # not an ablation, a counterfactual: every segment told the return-to-go is the expert's
    expert = torch.full_like(rtg, config.env["ref_scores"]["expert"] / config.reward_scale)
    out["R := expert return (counterfactual)"] = model(states, actions, expert, timesteps, mask)
    return {k: v[:, -1].detach() for k, v in out.items()}


def rollout_under(model, config, target: float, seeds: list[int], fwd_hooks=()) -> np.ndarray:
    with model.hooks(fwd_hooks):
        returns, _ = rollout(model, config, target, seeds)
    return returns


# ----------------------------------------------------------------------------- 3. probe


def residual_dump(model, x, seg) -> dict[str, np.ndarray]:
    """The residual stream at every state token after the embedding and after every block."""
    names = ["blocks.0.hook_resid_pre"] + [
        f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)
    ]
    _, cache = model.run_with_cache(*x, names_filter=names)
    s_pos = [token_position(t, "state") for t in range(model.cfg.context_len)]
    d = model.cfg.d_model
    dump = {f"resid_{i}": cache[n][:, s_pos].reshape(-1, d).numpy() for i, n in enumerate(names)}
    dump["layer_names"] = np.array(names)
    dump["rtg"] = seg["rtg_raw"].reshape(-1)
    dump["timestep"] = seg["timesteps"].reshape(-1)
    dump["state"] = seg["states"].reshape(-1, seg["states"].shape[-1])
    dump["episode"] = seg["episode"].reshape(-1)
    return dump


def probe_r2(X: np.ndarray, y: np.ndarray, test: np.ndarray) -> float:
    """Least-squares linear probe (with a bias), R^2 on the held-out rows."""
    X1 = np.c_[X, np.ones(len(X))]
    w = np.linalg.lstsq(X1[~test], y[~test], rcond=None)[0]
    return 1 - ((X1[test] @ w - y[test]) ** 2).sum() / ((y[test] - y[test].mean()) ** 2).sum()


def probe_table(dump: dict[str, np.ndarray]) -> dict[str, float]:
    test = dump["episode"] % 5 == 0  # held-out episodes, not just held-out steps
    r2 = {
        f"{i}: {n}": probe_r2(dump[f"resid_{i}"], dump["rtg"], test)
        for i, n in enumerate(dump["layer_names"])
    }
    r2["baseline: state + timestep"] = probe_r2(
        np.c_[dump["state"], dump["timestep"]], dump["rtg"], test
    )
    return r2


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "model", nargs="?", default="pendulum-2L-seed0", help="model id (or model directory)"
    )
    ap.add_argument("--out-dir", default=".", help="where the PNG and the .npz go")
    ap.add_argument("--segments", type=int, default=512, help="dataset segments to analyse")
    ap.add_argument("--episodes", type=int, default=10, help="rollout episodes per condition")
    ap.add_argument("--revisions", default="", help="e.g. step0,step64,main: probe across training")
    ap.add_argument("--hub", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    out_dir = Path(args.out_dir)
    model = dtzoo.load(args.model, hub=args.hub)
    config = model.config
    stem = config.model_id

    print(
        f"== {stem} (step {config.step}): {model.cfg.n_layers} layers, d_model "
        f"{model.cfg.d_model}, context {model.cfg.context_len} steps = "
        f"{3 * model.cfg.context_len} tokens"
    )
    print(f"{len(model.hook_names())} hook points: {model.hook_names()}")

    seg = dataset_segments(config, args.segments)
    x = as_tensors(seg)
    with torch.no_grad():
        # 1. attention
        png = out_dir / f"{stem}_attention.png"
        kinds = attention_figure(model, x, png, stem)
        print(f"\n== 1. attention (mean over {args.segments} segments) -> {png}")
        print("attention mass from the state tokens of the last 4 steps onto R / s / a keys:")
        for layer in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                r, s, a = kinds[layer, h, 1]
                print(f"  layer {layer} head {h}:  R {r:.3f}   s {s:.3f}   a {a:.3f}")

        # 2. ablation of the R tokens
        space = ActionSpace(**config.action_space)
        acts = rtg_ablations(model, config, x)
        clean = space.to_env(acts["clean"].numpy())
        print(
            f"\n== 2. ablating the return-to-go tokens (action at the last step of "
            f"{args.segments} segments, env units)"
        )
        print(f"  {'condition':38s} {'mean |Δa|':>10s} {'max |Δa|':>9s} {'segment 0 action':>17s}")
        for name, pred in acts.items():
            a = space.to_env(pred.numpy())
            diff = np.abs(a - clean)
            print(f"  {name:38s} {diff.mean():10.3f} {diff.max():9.3f} {a[0, 0]:17.3f}")
        target = config.target_returns[0]
        seeds = episode_seeds(config.seed, args.episodes)
        zero = [("hook_embed_rtg", lambda act, name: torch.zeros_like(act))]
        base = rollout_under(model, config, target, seeds)
        ablated = rollout_under(model, config, target, seeds, zero)
        low = rollout_under(model, config, config.env["ref_scores"]["random"], seeds)
        print(
            f"  rollouts at target {target:g} ({args.episodes} episodes): return "
            f"{base.mean():.1f} ± {base.std():.1f}; R embeddings zeroed: "
            f"{ablated.mean():.1f} ± {ablated.std():.1f}; (target "
            f"{config.env['ref_scores']['random']:g}: {low.mean():.1f} ± {low.std():.1f})"
        )

        # 3. probe-ready dump + linear probe
        dump = residual_dump(model, x, seg)
        npz = out_dir / f"{stem}_probe.npz"
        np.savez_compressed(npz, **dump)
        n = len(dump["rtg"])
        print(f"\n== 3. probe: residual stream at {n} state tokens -> {npz}")
        print(f"  keys: {sorted(dump)}")
        print("  linear probe for the true return-to-go, R^2 on held-out episodes:")
        for name, r2 in probe_table(dump).items():
            print(f"    {name:34s} R^2 = {r2:.3f}")

        # 4. across training-time checkpoints
        if args.revisions:
            print("\n== 4. the same probe across training (R^2, held-out episodes)")
            names = list(dump["layer_names"])
            print(
                f"  {'revision':10s} "
                + " ".join(f"{'layer ' + str(i):>9s}" for i in range(len(names)))
            )
            for rev in args.revisions.split(","):
                m = dtzoo.load(args.model, revision=rev, hub=args.hub)
                r2 = probe_table(residual_dump(m, x, seg))
                print(
                    f"  {rev:10s} "
                    + " ".join(f"{v:9.3f}" for k, v in r2.items() if not k.startswith("baseline"))
                )

    # 5. TransformerLens's analysis and the dtzoo.interp helpers
    try:
        from dtzoo import interp
    except ImportError:
        print("\n== 5. skipped: pip install 'dtzoo[interp]' for TransformerLens")
        return
    print("\n== 5. TransformerLens on the same segments, and dtzoo.interp helpers")
    transformer_lens_tour(interp.to_transformer_lens(model), x, out_dir, stem)


def transformer_lens_tour(hooked, x, out_dir: Path, stem: str) -> None:
    """decompose_resid and logit_attrs on dataset segments; patch and rtg_scan on a rollout."""
    from dtzoo import interp

    hooked.set_use_attn_result(True)
    with torch.no_grad():
        preds, cache = hooked.run_with_cache(*x)
        parts, labels = cache.decompose_resid(return_labels=True)
        err = (parts.sum(0) - cache["resid_post", -1]).abs().max()
        print(f"  decompose_resid: {labels}; sum - final residual: max |err| = {err:.1e}")
        full, labels = cache.get_full_resid_decomposition(expand_neurons=False, return_labels=True)
        attrs = cache.logit_attrs(full, tokens=0)[:, :, 1::3]  # state tokens, action dim 0
        print("  direct attribution to action[0] (pre-tanh), mean |.| over state tokens:")
        for name, a in sorted(zip(labels, attrs.abs().mean((1, 2)).tolist()), key=lambda t: -t[1]):
            print(f"    {name:10s} {a:.3f}")
    target = hooked.config.target_returns
    low = hooked.config.env["ref_scores"]["random"]
    at = 3 * hooked.cfg.context_len  # past the swing-up, where the return-to-go matters
    r = interp.patch(hooked, target[0], low, at=at, out_dir=out_dir / f"{stem}_interp")
    best = r["top"][0]
    print(
        f"  patch RTG {target[0]:g} -> {low:g} at step {at}: action "
        f"{r['action_from'][0]:+.3f} vs "
        f"{r['action_to'][0]:+.3f}; largest share: {best['hook']} {best['kind']}"
        f"{best['step']} ({best['recovered']:+.2f}) -> {r['files']['png']}"
    )
    scan = interp.rtg_scan(hooked, at=at, out_dir=out_dir / f"{stem}_interp")
    a = np.asarray(scan["actions"])[:, 0]
    print(
        f"  rtg scan over {len(a)} targets: action[0] from {a.min():+.3f} to {a.max():+.3f}"
        f" -> {scan['files']['png']}"
    )


if __name__ == "__main__":
    main()
