"""Where dtzoo keeps things: everything lives under $DTZOO_HOME (default
$XDG_CACHE_HOME/dtzoo, else ~/.cache/dtzoo, as huggingface_hub places its own cache).

runs/<model id>/                 training runs (dtzoo.modeldir.RunDir)
hub/<org>/<model id>/            the local hub (snapshots and refs)
cache/<org>/<model id>/<commit>/ models pulled from the local hub
evals/<org>/<model id>/<commit>/ evaluations of models not trained here (dtzoo.evals)
staging/                         revisions being published (temporary)
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    if os.environ.get("DTZOO_HOME"):
        return Path(os.environ["DTZOO_HOME"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "dtzoo"


def run_dir(model_id: str) -> Path:
    return home() / "runs" / model_id


def local_hub_dir() -> Path:
    return home() / "hub"


def cache_dir() -> Path:
    return home() / "cache"
