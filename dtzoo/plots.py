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
    """Training loss (and validation loss on held-out episodes, when logged) against step."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in log], [r["loss"] for r in log], color="tab:blue", label="training")
    val = [r for r in log if r.get("val_loss") is not None]
    if val:
        ax.plot(
            [r["step"] for r in val],
            [r["val_loss"] for r in val],
            color="tab:orange",
            label="validation (held-out episodes)",
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    losses = [r["loss"] for r in log] + [r["val_loss"] for r in val]
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.set_title(title or "learning curve")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def rtg_sweep_plot(report: dict, path: Path) -> None:
    """Achieved return (mean ± std over episodes) against target return, with y = x, the
    returns in the data (band), the data's best return and the expert score (lines), and the
    best achieved return above the data's best (annotated)."""
    plt = _figure()
    res = report["results"]
    x = [r["target_return"] for r in res]
    y = [r["return_mean"] for r in res]
    e = [r["return_std"] for r in res]
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, color="tab:blue", label="achieved")
    lo, hi = min(x + y), max(x + y)
    ax.plot([lo, hi], [lo, hi], ls="--", color="grey", label="achieved = target")
    data = report.get("data_returns") or {}
    if data.get("min") is not None and data.get("max") is not None:
        ax.axvspan(
            data["min"], data["max"], color="tab:green", alpha=0.12, label="returns in the data"
        )
    marks = sweep_marks(report)
    if marks["data_best"] is not None:
        ax.axhline(
            marks["data_best"],
            color="tab:green",
            lw=1.2,
            label=f"data's best return ({marks['data_best']:.1f})",
        )
    if marks["expert"] is not None:
        ax.axhline(
            marks["expert"],
            color="tab:red",
            lw=1.2,
            ls=":",
            label=f"expert score ({marks['expert']:.1f})",
        )
    if marks["above_data_best"] is not None:
        best = marks["best_achieved"]
        ax.annotate(
            f"+{marks['above_data_best']:.1f} above the data's best",
            (best["target_return"], best["return_mean"]),
            textcoords="offset points",
            xytext=(-10, 10),
            ha="right",
            fontsize=8,
            color="tab:green",
        )
    ax.set_xlabel("target return")
    ax.set_ylabel("achieved return")
    ax.set_title(f"{report['model_id']}: return conditioning")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def sweep_marks(report: dict) -> dict:
    """The reference marks of an RTG sweep, from the report (old reports: from what they hold).

    `data_best` (the dataset's best episode return), `expert` (the reference expert score),
    `best_achieved` (the result row with the highest mean return) and `above_data_best` (how
    far that mean lies above the data's best; None when it does not)."""
    data_best = report.get("data_best_return", (report.get("data_returns") or {}).get("max"))
    expert = report.get("expert_return", (report.get("ref_scores") or {}).get("expert"))
    res = report.get("results") or []
    best = max(res, key=lambda r: r["return_mean"]) if res else None
    above = None
    if best is not None and data_best is not None and best["return_mean"] > data_best:
        above = best["return_mean"] - data_best
    return {
        "data_best": data_best,
        "expert": expert,
        "best_achieved": best,
        "above_data_best": above,
    }


def probe_plot(report: dict, path: Path) -> None:
    """Probe score (R^2 or accuracy) against training step: one panel per target, one line per
    hook (layer); log-scaled steps, as checkpoints are log-spaced early in training."""
    plt = _figure()
    targets = report["targets"]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.3), squeeze=False)
    steps = [max(s, 0) for s in report["steps"]]
    for ax, t in zip(axes[0], targets):
        for hook in report["hooks"]:
            ax.plot([s + 1 for s in steps], report["scores"][hook][t], marker=".", label=hook)
        metric = report["metric"][t]
        ax.set_xscale("log")
        ax.set_xlabel("training step + 1")
        ax.set_ylabel("accuracy" if metric == "accuracy" else "R² (probe test episodes)")
        ax.set_ylim(-0.1 if metric == "r2" else 0, 1.02)
        ax.set_title(f"probe: {t}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['model_id']}: linear probes across {len(steps)} revisions", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def revisions_plot(report: dict, path: Path) -> None:
    """Achieved return (mean ± std over episodes) against training step, one line per target
    return, with the data's best return and the expert score (dtzoo eval --revisions)."""
    plt = _figure()
    revs = report["revisions"]
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    steps = [max(r["step"], 0) + 1 for r in revs]
    for i, target in enumerate(r["target_return"] for r in revs[0]["results"]):
        y = [r["results"][i]["return_mean"] for r in revs]
        e = [r["results"][i]["return_std"] for r in revs]
        ax.errorbar(steps, y, yerr=e, marker=".", capsize=2, label=f"target {target:g}")
    if report.get("data_best_return") is not None:
        ax.axhline(report["data_best_return"], color="tab:green", lw=1, label="data's best return")
    ax.axhline(report["ref_scores"]["expert"], color="tab:red", lw=1, ls=":", label="expert score")
    ax.set_xscale("log")
    ax.set_xlabel("training step + 1")
    ax.set_ylabel("achieved return")
    ax.set_title(f"{report['model_id']}: return across {len(revs)} revisions")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def leaderboard_plot(rows: list[dict], path: Path) -> None:
    """Normalised score (mean ± std over seeds) against layers: one panel per env, one line per
    family and target return (a Trajectory Transformer's: its planned episodes)."""
    plt = _figure()
    envs = sorted({r["env"] for r in rows})
    fig, axes = plt.subplots(
        1, max(1, len(envs)), figsize=(4 * max(1, len(envs)), 3.4), squeeze=False
    )
    for ax, env in zip(axes[0], envs):
        env_rows = [r for r in rows if r["env"] == env]
        lines = {
            (r.get("family") or "dt", r["target_return"])
            for r in env_rows
            if r["score_mean"] is not None
        }
        # DT lines first, highest target first; then the other families
        for family, target in sorted(lines, key=lambda k: (k[0], -(k[1] or 0))):
            line = sorted(
                (
                    r
                    for r in env_rows
                    if (r.get("family") or "dt", r["target_return"]) == (family, target)
                ),
                key=lambda r: r["layers"],
            )
            label = "planned" if target is None else f"target {target:g}"
            # one seed has no spread: no error bar rather than a misleading zero
            ax.errorbar(
                [r["layers"] for r in line],
                [r["score_mean"] for r in line],
                yerr=[r["score_std"] or 0.0 for r in line],
                marker="o",
                capsize=3,
                label=label if family == "dt" else f"{family}, {label}",
            )
        ax.set_title(env)
        ax.set_xlabel("layers")
        ax.set_xticks(sorted({r["layers"] for r in env_rows}))
        ax.set_ylabel("normalised score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
