"""The zoo's operations on one model id: prepare, train, evaluate, publish, pull, state.

The CLI calls these and prints; tests and scripts can call them directly.

    >>> reg = load_registry()
    >>> spec = reg.resolve("pendulum-1L-seed0")
    >>> prepare_env(spec.env); train_cell(spec, reg); eval_cell(spec, reg)
    >>> publish_cell(spec, reg, hub="local")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dtzoo import paths
from dtzoo.checkpoint import load_model, read_config, write_manifest
from dtzoo.data import dataset_exists, dataset_dir, datasets_root
from dtzoo.errors import DatasetError, UsageError
from dtzoo.fsutil import atomic_write_json, atomic_write_text, read_json
from dtzoo.hub import PublishResult, get_hub, repo_id
from dtzoo.registry import EnvSpec, ModelSpec, Registry

PLOTS = ("learning_curve.png", "rtg_sweep.png")


def prepare_env(env: EnvSpec, overwrite: bool = False) -> Path:
    """Make the env's dataset available locally: prepare it (envs with `prepare:`) or download."""
    if dataset_exists(env.dataset) and not overwrite:
        return dataset_dir(env.dataset)
    if env.prepare:
        from dtzoo.collect import prepare_dataset

        p = env.prepare
        prepare_dataset(env.dataset, env.gym_id, policy=p.get("policy", "scripted"),
                        episodes=int(p.get("episodes", 100)), noise=p.get("noise", [0.0]),
                        seed=int(p.get("seed", 0)), overwrite=overwrite)
        return dataset_dir(env.dataset)
    return download_dataset(env.dataset)


def download_dataset(dataset_id: str) -> Path:
    """Download through Minari (respects MINARI_REMOTE and MINARI_DATASETS_PATH)."""
    import minari

    try:
        minari.download_dataset(dataset_id)
    except Exception as e:  # minari surfaces network failures as many exception types
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DatasetError(
            f"dataset {dataset_id!r} is not in {datasets_root()} and could not be downloaded "
            f"({reason}); on a machine with network run `minari download {dataset_id}` and copy "
            "the folder, or point MINARI_DATASETS_PATH at a store that has it") from None
    return dataset_dir(dataset_id)


def org_for(registry: Registry, org: str | None = None) -> str:
    return org or os.environ.get("DTZOO_ORG") or registry.org


# ----------------------------------------------------------------------------- state


@dataclass
class ModelState:
    model_id: str
    prepared: bool
    trained: bool
    evaluated: bool
    published: bool
    step: int | None = None

    @property
    def label(self) -> str:
        for name in ("published", "evaluated", "trained", "prepared"):
            if getattr(self, name):
                return name
        return "pending"


def model_state(spec: ModelSpec, published: set[str] | None = None) -> ModelState:
    run = paths.run_dir(spec.model_id)
    trained = (run / "config.json").is_file()
    step = read_json(run / "config.json")["step"] if trained else None
    return ModelState(
        model_id=spec.model_id,
        prepared=dataset_exists(spec.env.dataset),
        trained=trained,
        evaluated=trained and (run / "eval.json").is_file(),
        published=spec.model_id in (published or set()),
        step=step,
    )


def published_ids(registry: Registry, hub: str | None = None, org: str | None = None) -> set[str]:
    h = get_hub(hub)
    return {r.split("/", 1)[1] for r in h.list_models(org_for(registry, org))}


# ----------------------------------------------------------------------------- train / eval


def train_cell(spec: ModelSpec, registry: Registry, steps: int | None = None,
               device: str = "auto", progress=None):
    from dtzoo.train import train_model

    prepare_env(spec.env)
    return train_model(spec, registry.checkpoints, steps=steps, device=device, progress=progress)


def require_trained(model_id: str) -> Path:
    run = paths.run_dir(model_id)
    if not (run / "config.json").is_file():
        raise UsageError(f"{model_id} is not trained yet: run `dtzoo train {model_id}`")
    return run


def eval_cell(spec: ModelSpec, registry: Registry, episodes: int | None = None,
              progress=None) -> dict:
    """Evaluate the trained model at its target returns; writes eval.json and the card."""
    from dtzoo.evaluate import evaluate

    run = require_trained(spec.model_id)
    model, config = load_model(run)
    report = evaluate(model, config, episodes=episodes or spec.env.eval_episodes,
                      seed_base=registry.eval_seed, progress=progress)
    atomic_write_json(run / "eval.json", report)
    write_card(run, registry)
    return report


def write_card(model_dir: Path, registry: Registry, org: str | None = None) -> None:
    """(Re)write README.md from config.json and eval.json, then refresh the manifest."""
    from dtzoo.card import build_card

    config = read_config(model_dir)
    report = read_json(model_dir / "eval.json") if (model_dir / "eval.json").is_file() else None
    plots = [p for p in PLOTS if (model_dir / p).is_file()]
    card = build_card(config, report, org=org_for(registry, org), license=registry.license, plots=plots)
    atomic_write_text(model_dir / "README.md", str(card))
    write_manifest(model_dir)


def eval_reports(model_ids: list[str]) -> list[dict]:
    """The eval.json of every listed model that has one."""
    out = []
    for mid in model_ids:
        p = paths.run_dir(mid) / "eval.json"
        if p.is_file():
            out.append(read_json(p))
    return out


# ----------------------------------------------------------------------------- hubs


def publish_cell(spec: ModelSpec, registry: Registry, hub: str | None = None,
                 org: str | None = None, checkpoints: bool = False) -> list[PublishResult]:
    """Publish the final model as `main` (and, with checkpoints=True, every `step<N>`)."""
    run = require_trained(spec.model_id)
    h = get_hub(hub)
    rid = repo_id(org_for(registry, org), spec.model_id)
    results = []
    if checkpoints:
        for ckpt in sorted((run / "checkpoints").glob("step*"), key=lambda p: int(p.name[4:])):
            write_card(ckpt, registry, org)
            results.append(h.publish(ckpt, rid, revision=ckpt.name))
    if not (run / "README.md").is_file():
        write_card(run, registry, org)
    results.append(h.publish(run, rid, revision="main"))
    return results


def pull(model_id: str, registry: Registry, revision: str = "main", hub: str | None = None,
         org: str | None = None) -> Path:
    registry.resolve(model_id)
    return get_hub(hub).pull(repo_id(org_for(registry, org), model_id), revision)
