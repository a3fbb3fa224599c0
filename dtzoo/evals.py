"""Evaluations kept on this machine, so `dtzoo leaderboard` ranks everything evaluated here.

A model trained here keeps eval.json (and rtg_sweep.json/.png) in its run directory: they go
into its card. Every other model (pulled from a hub, a checkpoint revision, a directory) keeps
them per repo and commit, never inside the hub cache:

    $DTZOO_HOME/evals/<org>/<model id>/<commit>/eval.json      a hub snapshot
    $DTZOO_HOME/evals/local/<model id>/<content hash>/...      a directory or a run's step<N>

    >>> report_dir(ref)                       # where ref's evaluations live
    >>> local_reports(["pendulum-1L-seed0"])  # the reports the leaderboard ranks
"""

from __future__ import annotations

from pathlib import Path

from dtzoo import paths
from dtzoo.fsutil import read_json
from dtzoo.locate import ModelRef
from dtzoo.modeldir import EVAL


def evals_root() -> Path:
    return paths.home() / "evals"


def report_dir(ref: ModelRef) -> Path:
    """Where the evaluations of `ref` are written (its run directory, if trained here)."""
    if ref.trained_here:
        return ref.path
    repo = ref.repo_id or f"local/{ref.model_id}"
    return evals_root() / repo / str(ref.commit)


def read_report(path: Path) -> dict | None:
    """A report, or None when it is missing or unreadable (one bad file never hides the rest)."""
    try:
        report = read_json(path)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("results"), list) else None


def local_reports(model_ids: list[str] | None = None) -> list[dict]:
    """The eval.json of every final model evaluated here, one per model id (a run trained here
    wins over a pulled copy; otherwise the newest). `model_ids` restricts the set."""
    wanted = set(model_ids) if model_ids is not None else None
    found: dict[str, tuple[int, float, dict]] = {}  # model id -> (rank, mtime, report)
    candidates = [(0, p) for p in sorted(paths.home().glob(f"runs/*/{EVAL}"))]
    candidates += [(1, p) for p in sorted(evals_root().glob(f"**/{EVAL}"))]
    for rank, path in candidates:
        report = read_report(path)
        if report is None or not is_final(report):
            continue
        mid = str(report.get("model_id"))
        if wanted is not None and mid not in wanted:
            continue
        key = (rank, -path.stat().st_mtime)
        if mid not in found or key < found[mid][:2]:
            found[mid] = (*key, report)
    return [found[m][2] for m in sorted(found)]


def is_final(report: dict) -> bool:
    """A report of a final model (not a training-time checkpoint); old reports lack the field."""
    total = report.get("total_steps")
    return total is None or report.get("step") == total
