"""Leaderboards: mean ± std over seeds per env x layers x target return, never a single run.

    >>> rows = leaderboard_rows(reports)              # eval.json dicts
    >>> print(render(rows, "markdown"))
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict

import numpy as np

from dtzoo.registry import parse_model_id

COLUMNS = ["env", "layers", "target_return", "return_mean", "return_std", "score_mean",
           "score_std", "seeds", "episodes", "data"]
HEADERS = {"env": "env", "layers": "layers", "target_return": "target", "return_mean": "return",
           "return_std": "± (seeds)", "score_mean": "norm. score", "score_std": "± (seeds)",
           "seeds": "seeds", "episodes": "episodes/seed", "data": "data"}


def leaderboard_rows(reports: list[dict]) -> list[dict]:
    """Aggregate eval.json reports: one row per (env, layers, target return)."""
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for rep in reports:
        env, layers, _ = parse_model_id(rep["model_id"])
        for r in rep["results"]:
            groups[(env, layers, r["target_return"])].append((rep, r))
    rows = []
    for (env, layers, target), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        rets = np.array([r["return_mean"] for _, r in items])
        scores = np.array([r["normalized_mean"] for _, r in items])
        rows.append({
            "env": env, "layers": layers, "target_return": target,
            "return_mean": float(rets.mean()), "return_std": float(rets.std()),
            "score_mean": float(scores.mean()), "score_std": float(scores.std()),
            "seeds": len(items), "episodes": int(min(rep["episodes"] for rep, _ in items)),
            "data": ", ".join(sorted({rep["dataset"] for rep, _ in items})),
        })
    return rows


def format_cell(row: dict, col: str) -> str:
    v = row[col]
    if isinstance(v, float):
        return f"{v:g}" if col == "target_return" else f"{v:.1f}"
    return str(v)


def render(rows: list[dict], fmt: str = "markdown") -> str:
    """Rows as markdown, csv or json (the rich table lives in the CLI)."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(HEADERS[c] for c in COLUMNS) + " |",
                 "|" + "|".join("---" if c in ("env", "data") else "---:" for c in COLUMNS) + "|"]
        lines += ["| " + " | ".join(format_cell(r, c) for c in COLUMNS) + " |" for r in rows]
        return "\n".join(lines)
    raise ValueError(f"unknown format {fmt!r}")
