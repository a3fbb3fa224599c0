"""Leaderboards: mean ± std over seeds per env x family x layers x target return, never a
single run (a Trajectory Transformer's row has no target: it plans).

>>> rows = leaderboard_rows(reports)              # eval.json dicts (or built from cards)
>>> print(render(rows, "markdown"))
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict

import numpy as np

from dtzoo.errors import UsageError
from dtzoo.families import SHORT_NAMES
from dtzoo.registry import family_of, parse_model_id

COLUMNS = [
    "env",
    "family",
    "layers",
    "target_return",
    "return_mean",
    "return_std",
    "score_mean",
    "score_std",
    "seeds",
    "episodes",
    "data",
]
HEADERS = {
    "env": "env",
    "family": "family",
    "layers": "layers",
    "target_return": "target",
    "return_mean": "return",
    "return_std": "± (seeds)",
    "score_mean": "norm. score",
    "score_std": "± (seeds)",
    "seeds": "seeds",
    "episodes": "episodes/seed",
    "data": "data",
}
EXTRA_COLUMNS = ["seeds_expected", "missing"]  # in csv and json: what a grid lacks


def _cell(report: dict) -> tuple[str, str, int] | None:
    """(env, family tag, layers) of a report: its own fields, else parsed from the model id."""
    mid = str(report.get("model_id"))
    family = SHORT_NAMES.get(report.get("family") or family_of(mid), "?")
    if report.get("env") and report.get("layers"):
        return str(report["env"]), family, int(report["layers"])
    try:
        env, layers, _ = parse_model_id(mid)
    except UsageError:
        return None
    return env, family, layers


def leaderboard_rows(
    reports: list[dict], expected: dict[tuple[str, str, int], list[str]] | None = None
) -> list[dict]:
    """Aggregate eval reports: one row per (env, family, layers, target return), mean and std
    over seeds. `expected` maps (env, family, layers) to the model ids a grid holds: rows then
    say how many
    of them were found (`seeds` of `seeds_expected`) and which are `missing`; a group with none
    gets one empty row. One seed has no spread: its std is None, never 0."""
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for rep in reports:
        key = _cell(rep)
        if key is None:
            continue
        for r in rep["results"]:
            groups[(*key, r["target_return"])].append((rep, r))
    rows = []
    for (env, family, layers, target), items in groups.items():
        rets = np.array([r["return_mean"] for _, r in items], dtype=float)
        scores = np.array([r["normalized_mean"] for _, r in items], dtype=float)
        spread = len(items) > 1
        episodes = [rep["episodes"] for rep, _ in items if rep.get("episodes") is not None]
        rows.append(
            {
                "env": env,
                "family": family,
                "layers": layers,
                "target_return": target,
                "return_mean": float(rets.mean()),
                "return_std": float(rets.std()) if spread else None,
                "score_mean": float(scores.mean()),
                "score_std": float(scores.std()) if spread else None,
                "seeds": len(items),
                "episodes": min(episodes) if episodes else None,
                "data": ", ".join(sorted({str(rep.get("dataset")) for rep, _ in items})),
                **_coverage(expected, (env, family, layers), {rep["model_id"] for rep, _ in items}),
            }
        )
    for env, family, layers in expected or {}:
        if not any((r["env"], r["family"], r["layers"]) == (env, family, layers) for r in rows):
            rows.append(
                {
                    **dict.fromkeys(COLUMNS),
                    "env": env,
                    "family": family,
                    "layers": layers,
                    "seeds": 0,
                    "data": "",
                    **_coverage(expected, (env, family, layers), set()),
                }
            )
    return sorted(
        rows,
        key=lambda r: (
            r["env"],
            r["family"],
            r["layers"],
            r["target_return"] is None,
            -(r["target_return"] or 0),
        ),
    )


def _coverage(expected, cell: tuple[str, str, int], found: set[str]) -> dict:
    if expected is None:
        return {}
    ids = expected.get(cell, [])
    return {"seeds_expected": len(ids), "missing": sorted(set(ids) - found)}


def expected_cells(model_ids: list[str]) -> dict[tuple[str, str, int], list[str]]:
    """A grid's model ids grouped by (env, family tag, layers)."""
    out: dict[tuple[str, str, int], list[str]] = defaultdict(list)
    for mid in model_ids:
        env, layers, _ = parse_model_id(mid)
        out[(env, SHORT_NAMES[family_of(mid)], layers)].append(mid)
    return dict(out)


def format_cell(row: dict, col: str) -> str:
    v = row.get(col)
    if col == "seeds" and row.get("seeds_expected") is not None:
        return f"{v}/{row['seeds_expected']}"
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}" if col == "target_return" else f"{v:.1f}"
    return str(v)


def render(rows: list[dict], fmt: str = "markdown") -> str:
    """Rows as markdown, csv or json (the rich table lives in the CLI)."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        extra = [c for c in EXTRA_COLUMNS if any(c in r for r in rows)]
        w = csv.DictWriter(
            buf, fieldnames=COLUMNS + extra, lineterminator="\n", extrasaction="ignore"
        )
        w.writeheader()
        w.writerows({**r, "missing": " ".join(r["missing"])} if "missing" in r else r for r in rows)
        return buf.getvalue()
    if fmt == "markdown":
        lines = [
            "| " + " | ".join(HEADERS[c] for c in COLUMNS) + " |",
            "|"
            + "|".join("---" if c in ("env", "family", "data") else "---:" for c in COLUMNS)
            + "|",
        ]
        lines += ["| " + " | ".join(format_cell(r, c) for c in COLUMNS) + " |" for r in rows]
        return "\n".join(lines)
    raise ValueError(f"unknown format {fmt!r}")
