"""A revision as it is published: a temporary copy of a model directory with a card naming
the org and `transformers/` (the same model as a transformers DecisionTransformerModel),
sealed. The run directory itself is never written by publishing.

    >>> with staged_model_dir(run, registry, "dtzoo") as stage:
    ...     hub.publish(stage, "dtzoo/pendulum-1L-seed0")
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from dtzoo import paths
from dtzoo.card import build_model_card
from dtzoo.checkpoint import load_model, read_config
from dtzoo.families import DT
from dtzoo.fsutil import atomic_write_json, atomic_write_text, make_temp_dir, read_json
from dtzoo.modeldir import CARD, MANIFEST, ModelDir
from dtzoo.registry import Registry


@contextmanager
def staged_model_dir(src: Path, registry: Registry, org: str):
    """A temporary copy of model directory `src` as it is published: its files, a card naming
    `org`, and `transformers/` (the same model as a transformers DecisionTransformerModel)."""
    ModelDir(src).check_required_unchanged()  # corrupt weights are never published afresh
    (paths.home() / "staging").mkdir(parents=True, exist_ok=True)
    stage = make_temp_dir(paths.home() / "staging" / src.name)
    try:
        for f in ModelDir(src).files():
            if f.parent == src and f.name not in (CARD, MANIFEST):
                shutil.copy2(f, stage / f.name)
        has_transformers = write_transformers_dir(src, stage / "transformers")
        card = build_model_card(stage, registry, org, transformers=has_transformers)
        atomic_write_text(stage / CARD, str(card))
        ModelDir(stage).seal()
        ModelDir(stage).verify()
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_transformers_dir(model_dir: Path, out: Path) -> bool:
    """Write `model_dir` as a transformers DecisionTransformerModel directory (config.json with
    `model_type: decision_transformer` and our config under "dtzoo", model.safetensors).
    False, with nothing written, where transformers cannot hold the model (image encoders,
    other families) or is not installed."""
    from dtzoo.convert import MissingDependencyError, export_transformers
    from dtzoo.errors import CheckpointError

    if read_config(model_dir).family != DT:  # transformers has no Trajectory Transformer
        return False  # (decided before the weights are read)
    net, config = load_model(model_dir)
    try:
        export_transformers(net, out)
    except (CheckpointError, MissingDependencyError):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        return False
    hf_config = read_json(out / "config.json")
    hf_config["dtzoo"] = config.to_dict()  # state stats etc., so the round trip is lossless
    atomic_write_json(out / "config.json", hf_config)
    return True
