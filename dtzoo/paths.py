"""Where dtzoo keeps things: everything lives under $DTZOO_HOME (default ~/.cache/dtzoo).

runs/<model id>/                 training runs: the final model directory, checkpoints/step<N>/
hub/<org>/<model id>/            the local hub (snapshots and refs)
cache/<org>/<model id>/<commit>/ models pulled from a hub
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("DTZOO_HOME") or Path.home() / ".cache" / "dtzoo")


def run_dir(model_id: str) -> Path:
    return home() / "runs" / model_id


def checkpoint_dir(model_id: str, step: int) -> Path:
    return run_dir(model_id) / "checkpoints" / f"step{step}"


def is_trained(model_id: str) -> bool:
    """A run is trained once its final config.json and manifest.json are both written (in
    that order), so a run killed between the two is resumed, not mistaken for finished."""
    run = run_dir(model_id)
    return (run / "config.json").is_file() and (run / "manifest.json").is_file()


def local_hub_dir() -> Path:
    return home() / "hub"


def cache_dir() -> Path:
    return home() / "cache"
