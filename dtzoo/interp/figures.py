"""PNG figures for the dtzoo.interp helpers (matplotlib, headless); each reads the helper's
result dict, so a figure can be redrawn from its JSON: `patch_plot(json.load(f), "p.png")`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dtzoo.plots import _figure, _save


def _token_ticks(ax, tokens: list[str], axis: str = "x", every: int = 1) -> None:
    """Token labels: the kind letter, with the step number on each step's R token
    (`every=3`: only the R tokens, for square plots)."""
    idx = [i for i in range(len(tokens)) if i % every == 0]
    labels = [tokens[i] if i % 3 == 0 else tokens[i][0] for i in idx]
    if axis == "x":
        ax.set_xticks(idx)
        ax.set_xticklabels(labels, fontsize=6, rotation=90)
    else:
        ax.set_yticks(idx)
        ax.set_yticklabels(labels, fontsize=6)


def _real(result: dict) -> list[int]:
    """Indices of the real (not left-padded) tokens."""
    return [i for i, m in enumerate(np.repeat(result["mask"], 3)) if m]


def patch_plot(result: dict, path: Path) -> None:
    """Heatmap: hooks (rows) x tokens (columns), the share of the action change recovered."""
    plt = _figure()
    keep = _real(result)
    values = np.asarray(result["recovered"])[:, keep]
    tokens = [result["tokens"][i] for i in keep]
    fig, ax = plt.subplots(
        figsize=(max(6, 0.16 * len(tokens) + 2.5), 0.38 * len(result["hooks"]) + 1.6)
    )
    lim = max(1.0, float(np.abs(values).max()))
    im = ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(len(result["hooks"])))
    ax.set_yticklabels(
        [h.replace("blocks.", "L").replace(".hook_", " ") for h in result["hooks"]], fontsize=7
    )
    _token_ticks(ax, tokens)
    fig.colorbar(im, ax=ax, label="action change recovered", shrink=0.8)
    ax.set_title(
        f"{result['model_id']}: patching RTG {result['target_from']:g} -> "
        f"{result['target_to']:g} (episode step {result['episode_step']})",
        fontsize=9,
    )
    _save(fig, path)
    plt.close(fig)


def rtg_scan_plot(result: dict, path: Path) -> None:
    """Top: the predicted action against the target return; bottom: the newest state token's
    attention to R, s and a tokens per head. Lines at the data's best return and the expert."""
    plt = _figure()
    x = result["targets"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6, 5.2), sharex=True)
    actions = np.asarray(result["actions"])
    for d in range(actions.shape[1]):
        ax1.plot(x, actions[:, d], marker=".", label=f"action[{d}]")
    ax1.set_ylabel("predicted action")
    styles = {"R": "-", "s": "--", "a": ":"}
    for head, att in result["attention"].items():
        for kind, ls in styles.items():
            ax2.plot(x, att[kind], ls=ls, label=f"{head} -> {kind}")
    ax2.set_ylabel("attention of newest s")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("target return (in context)")
    for ax in (ax1, ax2):
        for value, color, name in (
            (result.get("data_return_max"), "tab:green", "data's best"),
            (result.get("expert_score"), "tab:red", "expert"),
        ):
            if value is not None:
                ax.axvline(value, color=color, lw=1, ls=":", label=name if ax is ax1 else None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    ax1.set_title(
        f"{result['model_id']}: RTG scan (episode step {result['episode_step']}, "
        f"rolled out at {result['rollout_target']:g})",
        fontsize=9,
    )
    _save(fig, path)
    plt.close(fig)


def attribution_plot(result: dict, path: Path) -> None:
    """Horizontal bars: each component's direct effect on each pre-tanh action dimension."""
    plt = _figure()
    values = np.asarray(result["attribution"])
    labels = result["labels"]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(labels) + 1.4))
    n = values.shape[1]
    height = 0.8 / n
    for d in range(n):
        ax.barh(
            np.arange(len(labels)) + d * height,
            values[:, d],
            height=height,
            label=f"action[{d}] (pre-tanh {result['pre_tanh'][d]:+.3f})",
        )
    ax.set_yticks(np.arange(len(labels)) + 0.4 - height / 2)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("direct effect on the pre-tanh action")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(
        f"{result['model_id']}: direct action attribution (episode step {result['episode_step']})",
        fontsize=9,
    )
    _save(fig, path)
    plt.close(fig)


def attention_plot(result: dict, path: Path) -> None:
    """Per head: the pattern over the window's real tokens, and the 3x3 R/s/a summary."""
    plt = _figure()
    heads = result["heads"]
    tokens = [result["tokens"][i] for i in _real(result)]
    fig, axes = plt.subplots(
        len(heads),
        2,
        figsize=(10, 4.6 * len(heads)),
        squeeze=False,
        gridspec_kw={"width_ratios": [3, 1]},
    )
    for (ax, ax_k), head in zip(axes, heads):
        ax.imshow(np.asarray(head["pattern"]), cmap="viridis", vmin=0, vmax=1)
        _token_ticks(ax, tokens, "x", every=3)
        _token_ticks(ax, tokens, "y", every=3)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(f"L{head['layer']}H{head['head']} attention pattern", fontsize=9)
        kinds = list(head["by_kind"])
        m = np.asarray([[head["by_kind"][q][k] for k in kinds] for q in kinds])
        ax_k.imshow(m, cmap="viridis", vmin=0, vmax=1)
        for i in range(3):
            for j in range(3):
                ax_k.text(
                    j,
                    i,
                    f"{m[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if m[i, j] < 0.5 else "black",
                )
        ax_k.set_xticks(range(3), kinds)
        ax_k.set_yticks(range(3), kinds)
        ax_k.set_xlabel("key kind")
        ax_k.set_ylabel("query kind")
        ax_k.set_title("mean mass by kind", fontsize=9)
    fig.suptitle(
        f"{result['model_id']}: attention (episode step {result['episode_step']})", fontsize=10
    )
    _save(fig, path)
    plt.close(fig)
