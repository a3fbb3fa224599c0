"""The Python entry point: `dtzoo.load`."""

from __future__ import annotations

import os
from pathlib import Path

from dtzoo.checkpoint import ModelConfig, load_model


def load(model: str | os.PathLike, revision: str = "main", hub: str | None = None,
         org: str | None = None, device: str = "cpu", registry: str | os.PathLike | None = None):
    """Load a zoo model (pulled from a hub, verified) or a model directory on disk.

    Returns `(model, config)`: the DecisionTransformer in eval mode and its ModelConfig.

    >>> model, config = dtzoo.load("pendulum-1L-seed0")                   # local hub, main
    >>> model, config = dtzoo.load("hopper-1L-seed0", revision="step1000", hub="hf")
    >>> model, config = dtzoo.load("~/.cache/dtzoo/runs/pendulum-1L-seed0")  # a directory
    """
    from dtzoo import zoo

    path = Path(os.path.expanduser(str(model)))
    if path.is_dir():  # a run directory: main, or one of its training-time checkpoints
        path = zoo.revision_dir(path, revision)
    else:
        from dtzoo.registry import load_registry

        path = zoo.pull(str(model), load_registry(registry), revision=revision, hub=hub, org=org)
    return load_model(path, device=device)


__all__ = ["load", "ModelConfig"]
