"""The zoo's operations on one model: prepare, train, evaluate, sweep, publish, pull,
revisions, export/import. (Where models stand: dtzoo.status; how a revision is staged for a
hub: dtzoo.staging; running many cells: dtzoo.grid.)

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
from dtzoo.card import write_card
from dtzoo.checkpoint import load_model, read_config
from dtzoo.data import dataset_dir, dataset_exists, datasets_root
from dtzoo.errors import DatasetError, DtzooError, UsageError
from dtzoo.evals import report_dir
from dtzoo.families import TT, require_dt
from dtzoo.fsutil import atomic_write_json, file_lock, read_json
from dtzoo.hub import PublishResult, get_hub, repo_id
from dtzoo.locate import ModelRef, content_hash, hub_repo_id, locate, org_for  # noqa: F401
from dtzoo.modeldir import (
    EVAL,
    SWEEP,
    VIDEO,
    RunDir,
    revision_order,
)
from dtzoo.registry import EnvSpec, ModelSpec, Registry, family_of
from dtzoo.staging import staged_model_dir, write_transformers_dir


def prepare_env(env: EnvSpec, overwrite: bool = False) -> Path:
    """Make the env's dataset available locally: prepare it (envs with `prepare:`) or download."""
    if env.prepare:  # prepare_dataset returns an existing one at once (and warns if it differs)
        from dtzoo.collect import prepare_dataset

        p = env.prepare
        prepare_dataset(
            env.dataset,
            env.gym_id,
            policy=p.get("policy", "scripted"),
            episodes=int(p.get("episodes", 100)),
            noise=p.get("noise", [0.0]),
            seed=int(p.get("seed", 0)),
            overwrite=overwrite,
            obs=env.obs,
            max_episode_steps=env.max_episode_steps,
            ref_episodes=p.get("ref_episodes"),
        )
        return dataset_dir(env.dataset)
    if dataset_exists(env.dataset) and not overwrite:
        return dataset_dir(env.dataset)
    return download_dataset(env.dataset)


def download_dataset(dataset_id: str) -> Path:
    """Download through Minari (respects MINARI_REMOTE and MINARI_DATASETS_PATH)."""
    import minari
    from huggingface_hub.utils import logging as hf_logging

    def fail(reason: str) -> DatasetError:
        return DatasetError(
            f"dataset {dataset_id!r} is not in {datasets_root()} and could not be downloaded "
            f"({reason}); on a machine with network run `minari download {dataset_id}` and copy "
            "the folder, or point MINARI_DATASETS_PATH at a store that has it"
        )

    if os.environ.get("MINARI_REMOTE", "hf://").startswith("hf://"):
        # huggingface_hub retries a refused connection for ~30 s; ask once, quickly, first
        from huggingface_hub import constants

        from dtzoo.hub.hf import is_network_error, probe

        try:
            probe(constants.ENDPOINT)
        except Exception as e:
            if not is_network_error(e):
                raise
            raise fail(f"{constants.ENDPOINT} unreachable: {type(e).__name__}") from None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # no retry chatter on stderr
    try:
        minari.download_dataset(dataset_id)
    except Exception as e:  # minari surfaces network failures as many exception types
        raise fail(str(e).splitlines()[0][:160] if str(e) else type(e).__name__) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return dataset_dir(dataset_id)


# ----------------------------------------------------------------------------- state


# ----------------------------------------------------------------------------- train / eval


def train_cell(
    spec: ModelSpec,
    registry: Registry,
    steps: int | None = None,
    device: str = "auto",
    progress=None,
    precision: str | None = None,
):
    from dtzoo.train import train_model

    prepare_env(spec.env)
    if spec.family == TT:
        from dtzoo.tt.cell import train_tt_cell

        return train_tt_cell(spec, registry.checkpoints, steps, device, progress)
    return train_model(
        spec,
        registry.checkpoints,
        steps=steps,
        device=device,
        progress=progress,
        precision=precision,
    )


def require_trained(model_id: str) -> Path:
    run = RunDir.of(model_id)
    if not run.is_trained():
        raise UsageError(f"{model_id} is not trained yet: run `dtzoo train {model_id}`")
    return run.path


@dataclass
class EvalOutcome:
    """What `eval_model` did: the report, and why it was skipped (None: it ran)."""

    report: dict
    ref: ModelRef
    skipped: str | None = None


def default_episodes(registry: Registry, config) -> int:
    """The env's eval episodes when the registry knows the env, else the registry default."""
    env = registry.envs.get(config.env.get("key", ""))
    return env.eval_episodes if env else registry.default_eval_episodes


def _eval_lock(ref: ModelRef) -> Path:
    # a run trained here: the lock its training holds, so eval never reads a half-written run
    return RunDir(ref.path).lock if ref.trained_here else report_dir(ref) / ".lock"


def _up_to_date(path: Path, model_hash: str, episodes: int, seed_base: int) -> dict | None:
    from dtzoo.evals import read_report

    old = read_report(path)
    if (
        old
        and old.get("model_hash") == model_hash
        and old.get("episodes") == episodes
        and old.get("eval_seed", 0) == seed_base
    ):
        return old
    return None


def eval_model(
    model: str,
    registry: Registry,
    revision: str = "main",
    episodes: int | None = None,
    hub: str | None = None,
    org: str | None = None,
    progress=None,
    video: bool | None = None,
) -> EvalOutcome:
    """Evaluate any model (`dtzoo eval ID|ORG/ID|DIR`) at its target returns.

    A model trained here gets eval.json, replay.mp4 and a fresh card in its run directory; any
    other keeps eval.json under $DTZOO_HOME/evals/<repo>/<commit>/ (dtzoo.evals). An up-to-date
    report (same weights, episodes and seeds) is returned without rolling out again.

    >>> eval_model("dtzoo/hopper-1L-seed0", reg).report["results"][0]["return_mean"]
    """
    from dtzoo.evaluate import evaluate

    ref = locate(model, registry, revision, hub, org)
    out = report_dir(ref)
    with file_lock(_eval_lock(ref)):
        net, config = load_model(ref.path)
        episodes = episodes or default_episodes(registry, config)
        model_hash = content_hash(ref.path)
        old = _up_to_date(out / EVAL, model_hash, episodes, registry.eval_seed)
        if old is not None:
            return EvalOutcome(old, ref, "already evaluated")
        report = evaluate(
            net, config, episodes=episodes, seed_base=registry.eval_seed, progress=progress
        )
        report.update(_provenance(ref, config, model_hash, registry.eval_seed))
        if ref.trained_here and (registry.eval_video if video is None else video):
            from dtzoo.video import record_replay

            record_replay(net, config, ref.path / VIDEO, seed=report["episode_seeds"][0])
        atomic_write_json(out / EVAL, report)
        if ref.trained_here:
            write_card(ref.path, registry)
    return EvalOutcome(report, ref)


def _provenance(ref: ModelRef, config, model_hash: str, seed_base: int) -> dict:
    """What a report needs beyond the numbers: which model, from where, for the leaderboard."""
    return {
        "total_steps": config.total_steps,
        "env": config.env.get("key"),
        "family": config.family,
        "layers": config.architecture["n_layers"],
        "model_hash": model_hash,
        "eval_seed": seed_base,
        "source": ref.describe(),
    }


def eval_cell(
    spec: ModelSpec, registry: Registry, episodes: int | None = None, progress=None
) -> dict:
    """Evaluate a model trained here (writes eval.json and its card); see `eval_model`."""
    require_trained(spec.model_id)
    return eval_model(spec.model_id, registry, episodes=episodes, progress=progress).report


def sweep_model(
    model: str,
    registry: Registry,
    targets: list[float] | None = None,
    episodes: int | None = None,
    revision: str = "main",
    hub: str | None = None,
    org: str | None = None,
    progress=None,
) -> dict:
    """Roll out over a range of target returns; writes rtg_sweep.json/.png beside eval.json
    (and refreshes the card of a model trained here)."""
    from dtzoo.evaluate import default_sweep_targets, rtg_sweep
    from dtzoo.plots import rtg_sweep_plot

    ref = locate(model, registry, revision, hub, org)
    out = report_dir(ref)
    with file_lock(_eval_lock(ref)):
        net, config = load_model(ref.path)
        require_dt(config, "--rtg-sweep")  # (a planner has no target return to sweep)
        report = rtg_sweep(
            net,
            config,
            targets or default_sweep_targets(config),
            episodes=episodes or default_episodes(registry, config),
            seed_base=registry.eval_seed,
            progress=progress,
        )
        report.update(_provenance(ref, config, content_hash(ref.path), registry.eval_seed))
        atomic_write_json(out / SWEEP, report)
        rtg_sweep_plot(report, out / "rtg_sweep.png")
        if ref.trained_here:
            write_card(ref.path, registry)
    return report


def sweep_cell(
    spec: ModelSpec,
    registry: Registry,
    targets: list[float] | None = None,
    episodes: int | None = None,
    progress=None,
) -> dict:
    require_trained(spec.model_id)
    return sweep_model(spec.model_id, registry, targets, episodes, progress=progress)


def eval_reports(model_ids: list[str] | None = None) -> list[dict]:
    """Every final model evaluated on this machine (`dtzoo.evals.local_reports`)."""
    from dtzoo.evals import local_reports

    return local_reports(model_ids)


def leaderboard(
    registry: Registry, grid: str | None = None, hub: str | None = None, org: str | None = None
) -> list[dict]:
    """Leaderboard rows: from what was evaluated on this machine, or (with `hub`) from the
    model cards the hub's org published. With a grid, rows say which seeds are missing."""
    from dtzoo.leaderboard import expected_cells, leaderboard_rows

    ids = registry.grid(grid) if grid else None
    if hub is None:
        reports = eval_reports(ids)
    else:
        reports = card_reports(registry, ids, hub=hub, org=org)
    return leaderboard_rows(reports, expected_cells(ids) if ids else None)


def card_reports(
    registry: Registry, model_ids: list[str] | None, hub: str | None = None, org: str | None = None
) -> list[dict]:
    """Eval reports built from the published cards' model-index alone (no weights are
    downloaded): one per model of the hub's org (of `model_ids`, if given)."""
    wanted = set(model_ids) if model_ids is not None else None
    reports = []
    for r in get_hub(hub).list_remote(org_for(registry, org)):
        if wanted is not None and r["model_id"] not in wanted:
            continue
        results = [
            {
                "target_return": x["target_return"],
                "return_mean": x.get("mean_reward"),
                "normalized_mean": x.get("normalized_score"),
            }
            for x in r["results"]
            # (a Trajectory Transformer plans: its one row has no target)
            if (x.get("target_return") is not None or family_of(r["model_id"]) == TT)
            and x.get("mean_reward") is not None
            and x.get("normalized_score") is not None
        ]
        if results:
            eps = [x["episodes"] for x in r["results"] if x.get("episodes") is not None]
            data = sorted({x["dataset"] for x in r["results"] if x.get("dataset")})
            reports.append(
                {
                    "model_id": r["model_id"],
                    "results": results,
                    "episodes": min(eps) if eps else None,
                    "dataset": ", ".join(data) or "?",
                    "source": {"repo_id": r["repo_id"], "commit": r["sha"]},
                }
            )
    return reports


# ----------------------------------------------------------------------------- hubs


def publish_cell(
    spec: ModelSpec,
    registry: Registry,
    hub: str | None = None,
    org: str | None = None,
    checkpoints: bool = True,
) -> list[PublishResult]:
    """Publish the final model as `main` and (unless checkpoints=False) every training-time
    checkpoint as `step<N>`. The run directory is not modified: each revision is staged."""
    run = require_trained(spec.model_id)
    h = get_hub(hub)
    org = org_for(registry, org)
    rid = repo_id(org, spec.model_id)
    h.check_reachable(rid)  # fail in one request, before staging anything
    revisions = RunDir(run).checkpoints() if checkpoints else []
    results = []
    for src, revision in [(d.path, d.name) for _, d in revisions] + [(run, "main")]:
        with staged_model_dir(src, registry, org) as stage:
            results.append(h.publish(stage, rid, revision=revision))
    return results


def pull(
    model: str,
    registry: Registry,
    revision: str = "main",
    hub: str | None = None,
    org: str | None = None,
) -> Path:
    """Download `[ORG/]ID` (cached, verified) from the hub; any dtzoo model, registry or not."""
    from dtzoo.errors import HubError

    path = get_hub(hub).pull(hub_repo_id(model, registry, org), revision)
    try:
        read_config(path)
    except DtzooError as e:
        raise HubError(f"{model} is not a dtzoo model: {e}") from None
    return path


def revisions(
    model: str, registry: Registry, hub: str | None = None, org: str | None = None
) -> dict[str, dict]:
    """Every revision of a model: local checkpoints (`step<N>`, `main`) and what the hub holds."""
    from dtzoo.locate import local_run

    out: dict[str, dict] = {}
    if local_run(model) is not None or local_run(model, "step0") is not None:
        run = RunDir.of(model)
        for _, ckpt in run.checkpoints():
            out[ckpt.name] = {"local": str(ckpt.path), "hub_commit": None}
        if run.is_trained():
            out["main"] = {"local": str(run.path), "hub_commit": None}
    for rev, commit in get_hub(hub).revisions(hub_repo_id(model, registry, org)).items():
        out.setdefault(rev, {"local": None})["hub_commit"] = commit
    return dict(sorted(out.items(), key=lambda kv: revision_order(kv[0])))


# ----------------------------------------------------------------------------- interop


def resolve_model_dir(
    model: str,
    registry: Registry,
    revision: str = "main",
    hub: str | None = None,
    org: str | None = None,
) -> Path:
    """A model directory: a directory, a model trained here, or (failing both) a hub pull."""
    return locate(model, registry, revision, hub, org).path


def export_model(
    model: str,
    out: Path,
    registry: Registry,
    revision: str = "main",
    hub: str | None = None,
    org: str | None = None,
) -> Path:
    """Write a transformers `DecisionTransformerModel` directory (plus our config under "dtzoo")."""
    from dtzoo.convert import export_transformers

    src = resolve_model_dir(model, registry, revision, hub, org)
    if not write_transformers_dir(src, Path(out)):
        net, config = load_model(src)
        require_dt(config, "the transformers export")
        export_transformers(net, Path(out))  # raises the reason (image encoder, no transformers)
    return Path(out)


def import_model(src: Path, env_key: str, name: str, registry: Registry) -> Path:
    """Turn a transformers DT checkpoint into a dtzoo run directory `runs/<name>/`."""
    import dataclasses

    from dtzoo.checkpoint import ModelConfig, save_model
    from dtzoo.convert import from_transformers
    from dtzoo.model import DecisionTransformer

    spec = registry.resolve(name)
    if spec.env.key != env_key:
        raise UsageError(f"--name {name!r} belongs to env {spec.env.key!r}, not {env_key!r}")
    if not (Path(src) / "config.json").is_file():
        raise UsageError(
            f"{src} holds no config.json: not a transformers DecisionTransformerModel "
            "directory (save one with `model.save_pretrained(DIR)`)"
        )
    try:
        hf_config = read_json(Path(src) / "config.json")
    except (OSError, ValueError):
        raise UsageError(f"{src}/config.json is not valid JSON") from None
    if not isinstance(hf_config, dict):
        raise UsageError(f"{src}/config.json is not a transformers config (not a JSON object)")
    dt_config, state = from_transformers(src)
    if dt_config.n_layers != spec.n_layers:
        raise UsageError(f"{src} has {dt_config.n_layers} layers but --name says {spec.n_layers}L")
    if "dtzoo" in hf_config:
        config = dataclasses.replace(ModelConfig.from_dict(hf_config["dtzoo"]), model_id=name)
    else:
        config = _config_for_import(spec, dt_config, src)
    net = DecisionTransformer(config.dt_config())
    net.load_state_dict(state, strict=True)
    run = paths.run_dir(name)
    if (run / "config.json").exists():
        raise UsageError(f"{run} already holds a model; delete it or pick another --name")
    save_model(net, config, run)
    return run


def _config_for_import(spec: ModelSpec, dt_config, src: Path):
    """A ModelConfig for a foreign checkpoint: env settings from the registry, state statistics
    from the env's dataset (foreign DT checkpoints do not ship them)."""
    import dataclasses

    from dtzoo.data import load_trajectories
    from dtzoo.train import make_config

    if not dataset_exists(spec.env.dataset):
        raise DatasetError(
            f"importing needs the state statistics of {spec.env.dataset!r}: run "
            f"`dtzoo data prepare {spec.env.key}` first"
        )
    data = load_trajectories(spec.env.dataset, spec.env.obs)
    if data.state_dim != dt_config.state_dim or data.action_space.dim != dt_config.act_dim:
        raise UsageError(
            f"{src} expects state/action dims {dt_config.state_dim}/{dt_config.act_dim}, "
            f"env {spec.env.key!r} has {data.state_dim}/{data.action_space.dim}"
        )
    mean, std = data.state_stats()
    # the recipe records the checkpoint's architecture, not the registry's
    recipe = dataclasses.replace(spec.recipe, **dt_config.arch_settings())
    config = make_config(dataclasses.replace(spec, recipe=recipe), data, mean, std, steps=0, step=0)
    config.architecture = dt_config.architecture()  # its max_ep_len too
    config.extra["imported_from"] = str(src)
    return config


def collect(
    registry: Registry,
    env_key: str,
    policy: str,
    episodes: int,
    noise: list[float],
    dataset_id: str,
    seed: int = 0,
    target_return: float | None = None,
    overwrite: bool = False,
) -> dict:
    """`dtzoo data collect`: a Minari dataset from random, scripted or zoo-model actions."""
    from dtzoo.collect import prepare_dataset
    from dtzoo.data import dataset_summary

    env = registry.env(env_key)
    if policy not in ("random", "scripted"):
        from dtzoo.agent import AgentPolicy

        net, config = load_model(resolve_model_dir(policy, registry))
        require_dt(config, "a model as the collecting policy")
        if config.env["gym_id"] != env.gym_id:
            raise UsageError(f"{policy} acts in {config.env['gym_id']}, not {env.gym_id}")
        policy = AgentPolicy(net, config, target_return)
    prepare_dataset(
        dataset_id,
        env.gym_id,
        policy=policy,
        episodes=episodes,
        noise=noise,
        seed=seed,
        overwrite=overwrite,
        obs=env.obs,
        max_episode_steps=env.max_episode_steps,
    )
    return dataset_summary(dataset_id, obs_kind=env.obs)
