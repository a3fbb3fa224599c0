"""PNG plots for model directories (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path

from dtzoo.fsutil import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(Path(path), buf.getvalue())


def learning_curve(log: list[dict], path: Path, title: str = "") -> None:
    """Training loss against step (log scale on loss)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in log], [r["loss"] for r in log], color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    if log and min(r["loss"] for r in log) > 0:
        ax.set_yscale("log")
    ax.set_title(title or "learning curve")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def rtg_sweep_plot(report: dict, path: Path) -> None:
    """Achieved return (mean ± std over episodes) against target return, with y = x."""
    plt = _figure()
    res = report["results"]
    x = [r["target_return"] for r in res]
    y = [r["return_mean"] for r in res]
    e = [r["return_std"] for r in res]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, color="tab:blue", label="achieved")
    lo, hi = min(x + y), max(x + y)
    ax.plot([lo, hi], [lo, hi], ls="--", color="grey", label="achieved = target")
    data = report.get("data_returns") or {}
    if data.get("min") is not None and data.get("max") is not None:
        ax.axvspan(data["min"], data["max"], color="tab:green", alpha=0.12, label="returns in the data")
    ax.set_xlabel("target return")
    ax.set_ylabel("achieved return")
    ax.set_title(f"{report['model_id']}: return conditioning")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def leaderboard_plot(rows: list[dict], path: Path) -> None:
    """Normalised score (mean ± std over seeds) against layers: one panel per env, one line per
    target return."""
    plt = _figure()
    envs = sorted({r["env"] for r in rows})
    fig, axes = plt.subplots(1, max(1, len(envs)), figsize=(4 * max(1, len(envs)), 3.4), squeeze=False)
    for ax, env in zip(axes[0], envs):
        env_rows = [r for r in rows if r["env"] == env]
        for target in sorted({r["target_return"] for r in env_rows}, reverse=True):
            line = sorted((r for r in env_rows if r["target_return"] == target), key=lambda r: r["layers"])
            ax.errorbar([r["layers"] for r in line], [r["score_mean"] for r in line],
                        yerr=[r["score_std"] for r in line], marker="o", capsize=3,
                        label=f"target {target:g}")
        ax.set_title(env)
        ax.set_xlabel("layers")
        ax.set_xticks(sorted({r["layers"] for r in env_rows}))
        ax.set_ylabel("normalised score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
