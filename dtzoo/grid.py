"""The local executor: run one function over the cells of a grid, one cell after another.

A failing cell is recorded and the others go on. With `lock=True` each cell holds its run's
lock while it works; a cell locked by another process is deferred to the end and then waited
for, so two `dtzoo train --grid tiny` started together train every cell exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from dtzoo import paths
from dtzoo.errors import DtzooError
from dtzoo.fsutil import LockBusy, file_lock
from dtzoo.registry import ModelSpec


@dataclass
class CellResult:
    model_id: str
    status: str  # done | resumed | skipped | failed
    detail: str = ""
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


SkipFn = Callable[[ModelSpec], "str | None"]  # a reason to skip, or None


def already_trained(spec: ModelSpec) -> str | None:
    return "already trained" if paths.is_trained(spec.model_id) else None


def _run_one(spec: ModelSpec, fn: Callable[[ModelSpec], Any], skip: SkipFn | None) -> CellResult:
    reason = skip(spec) if skip else None
    if reason:
        return CellResult(spec.model_id, "skipped", reason)
    try:
        value = fn(spec)
    except DtzooError as e:
        return CellResult(spec.model_id, "failed", str(e))
    except Exception as e:  # a bug in one cell must not cost the rest of the grid
        return CellResult(spec.model_id, "failed", f"{type(e).__name__}: {e}")
    resumed = getattr(value, "resumed_from", None)
    if resumed is None:  # (step 0 is a real resume point: a run killed before step 1)
        return CellResult(spec.model_id, "done", "", value)
    return CellResult(spec.model_id, "resumed", f"from step {resumed}", value)


def run_cells(specs: list[ModelSpec], fn: Callable[[ModelSpec], Any], skip: SkipFn | None = None,
              lock: bool = False) -> list[CellResult]:
    results: dict[str, CellResult] = {}
    deferred: list[ModelSpec] = []
    for spec in specs:
        if not lock:
            results[spec.model_id] = _run_one(spec, fn, skip)
            continue
        try:
            with file_lock(paths.run_dir(spec.model_id) / ".lock", blocking=False):
                results[spec.model_id] = _run_one(spec, fn, skip)
        except LockBusy:
            deferred.append(spec)
    for spec in deferred:  # another process is on these: wait, then usually find them done
        with file_lock(paths.run_dir(spec.model_id) / ".lock", blocking=True):
            results[spec.model_id] = _run_one(spec, fn, skip)
    return [results[s.model_id] for s in specs]
