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
