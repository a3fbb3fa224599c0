"""The Python entry point: `dtzoo.load`."""

from __future__ import annotations

import os

from dtzoo.checkpoint import ModelConfig, load_model


def load(
    model: str | os.PathLike,
    revision: str = "main",
    hub: str | None = None,
    org: str | None = None,
    device: str = "cpu",
    registry: str | os.PathLike | None = None,
):
    """Load a zoo model: `[ORG/]ID` from the hub (cached, verified), a model id trained on
    this machine (its run directory), or a model directory on disk.

    Returns the model in eval mode (a DecisionTransformer, or a TrajectoryTransformer for a
    `<env>-tt-<N>L-seed<K>` id); its ModelConfig is `model.config`.

    >>> model = dtzoo.load("hopper-1L-seed0")                        # Hugging Face Hub, main
    >>> model = dtzoo.load("someone/hopper-1L-seed0", revision="step1000")
    >>> model = dtzoo.load("pendulum-1L-seed0", hub="local")         # the offline local hub
    >>> model = dtzoo.load("~/.cache/dtzoo/runs/pendulum-1L-seed0")  # a directory
    >>> model.config.state_mean[:3]
    """
    from dtzoo.locate import locate
    from dtzoo.registry import load_registry

    ref = locate(os.path.expanduser(str(model)), load_registry(registry), revision, hub, org)
    return load_model(ref.path, device=device)[0]


__all__ = ["load", "ModelConfig"]
