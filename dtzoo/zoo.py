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
from dtzoo.data import dataset_dir, dataset_exists, datasets_root
from dtzoo.errors import DatasetError, UsageError
from dtzoo.fsutil import atomic_write_json, atomic_write_text, read_json
from dtzoo.hub import PublishResult, get_hub, repo_id
from dtzoo.registry import EnvSpec, ModelSpec, Registry

PLOTS = ("learning_curve.png", "rtg_sweep.png")


def prepare_env(env: EnvSpec, overwrite: bool = False) -> Path:
    """Make the env's dataset available locally: prepare it (envs with `prepare:`) or download."""
    if env.prepare:  # prepare_dataset returns an existing one at once (and warns if it differs)
        from dtzoo.collect import prepare_dataset

        p = env.prepare
        prepare_dataset(env.dataset, env.gym_id, policy=p.get("policy", "scripted"),
                        episodes=int(p.get("episodes", 100)), noise=p.get("noise", [0.0]),
                        seed=int(p.get("seed", 0)), overwrite=overwrite, obs=env.obs,
                        max_episode_steps=env.max_episode_steps,
                        ref_episodes=p.get("ref_episodes"))
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
            "the folder, or point MINARI_DATASETS_PATH at a store that has it")

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
    trained = paths.is_trained(spec.model_id)
    step = read_json(run / "config.json")["step"] if trained else None
    return ModelState(
        model_id=spec.model_id,
        prepared=dataset_exists(spec.env.dataset),
        trained=trained,
        evaluated=trained and (run / "eval.json").is_file(),
        published=spec.model_id in (published or set()),
        step=step,
    )


def grid_status(registry: Registry, model_ids: list[str], hub: str | None = None,
                org: str | None = None) -> list[dict]:
    """Every cell's state from the files in DTZOO_HOME (and the hub's model list):
    `running` (another process holds the run's lock, or a resume state exists without a final
    model: an unfinished run, live or interrupted), else `published` / `evaluated` / `trained`,
    else `pending`. Rows: model_id, state, step (the final model's, or the newest resume
    state's), locked, detail."""
    from dtzoo.grid import lock_held
    from dtzoo.train import newest_resume_state

    published = published_ids(registry, hub, org)
    rows = []
    for mid in model_ids:
        spec = registry.resolve(mid)
        st = model_state(spec, published)
        locked = lock_held(mid)
        run = paths.run_dir(mid)
        resume = None if st.trained else newest_resume_state(run) if run.is_dir() else None
        step, detail = st.step, ""
        if resume is not None:
            step = int(resume.stem.split("-")[1])  # state-<step>.safetensors
        if locked:
            state, detail = "running", "run lock held"
        elif resume is not None:
            state, detail = "running", f"unfinished: resume state at step {step}, lock free"
        else:
            state = st.label if st.label != "prepared" else "pending"
        rows.append({"model_id": mid, "state": state, "step": step, "locked": locked,
                     "prepared": st.prepared, "trained": st.trained, "evaluated": st.evaluated,
                     "published": st.published, "detail": detail})
    return rows


def published_ids(registry: Registry, hub: str | None = None, org: str | None = None) -> set[str]:
    h = get_hub(hub)
    return {r.split("/", 1)[1] for r in h.list_models(org_for(registry, org))}


# ----------------------------------------------------------------------------- train / eval


def train_cell(spec: ModelSpec, registry: Registry, steps: int | None = None,
               device: str = "auto", progress=None, precision: str | None = None):
    from dtzoo.train import train_model

    prepare_env(spec.env)
    return train_model(spec, registry.checkpoints, steps=steps, device=device, progress=progress,
                       precision=precision)


def require_trained(model_id: str) -> Path:
    run = paths.run_dir(model_id)
    if not paths.is_trained(model_id):
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


def sweep_cell(spec: ModelSpec, registry: Registry, targets: list[float] | None = None,
               episodes: int | None = None, progress=None) -> dict:
    """Roll out over a range of target returns; writes rtg_sweep.json/.png and the card."""
    from dtzoo.evaluate import default_sweep_targets, rtg_sweep
    from dtzoo.plots import rtg_sweep_plot

    run = require_trained(spec.model_id)
    model, config = load_model(run)
    report = rtg_sweep(model, config, targets or default_sweep_targets(config),
                       episodes=episodes or spec.env.eval_episodes, seed_base=registry.eval_seed,
                       progress=progress)
    atomic_write_json(run / "rtg_sweep.json", report)
    rtg_sweep_plot(report, run / "rtg_sweep.png")
    write_card(run, registry)
    return report


def write_card(model_dir: Path, registry: Registry, org: str | None = None) -> None:
    """(Re)write README.md from config.json and eval.json, then refresh the manifest."""
    from dtzoo.card import build_card

    def optional_json(name: str) -> dict | None:
        return read_json(model_dir / name) if (model_dir / name).is_file() else None

    config = read_config(model_dir)
    plots = [p for p in PLOTS if (model_dir / p).is_file()]
    card = build_card(config, optional_json("eval.json"), org=org_for(registry, org),
                      license=registry.license, plots=plots, sweep=optional_json("rtg_sweep.json"))
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
    write_card(run, registry, org)  # deterministic: unchanged inputs give unchanged bytes
    results.append(h.publish(run, rid, revision="main"))
    return results


def remote_status(registry: Registry, grid: str | None = None, hub: str | None = None,
                  org: str | None = None) -> list[dict]:
    """The org's published zoo next to the registry's grid, one row per model id:
    `{"model_id", "repo_id", "status", "sha", "last_modified", "results"}`, `results` being the
    card's numeric eval results (`[{"target_return", "mean_reward", "normalized_score",
    "episodes"}]`). Status: `missing` (in the grid, not on the hub), `stale` (the local run's
    eval.json differs from the published card), `published` (the card matches, or there is no
    local eval to compare with), `not in registry` (on the hub, not in this registry)."""
    h = get_hub(hub)
    org = org_for(registry, org)
    remote = {r["model_id"]: r for r in h.list_remote(org)}
    ids = registry.grid(grid) if grid else registry.all_model_ids()
    extra = [] if grid else sorted(m for m in remote if m not in ids)
    rows = []
    for mid in ids + extra:
        r = remote.get(mid)
        if r is None:
            rows.append({"model_id": mid, "repo_id": f"{org}/{mid}", "status": "missing",
                         "sha": None, "last_modified": None, "results": []})
            continue
        status = "published" if mid in ids else "not in registry"
        local = paths.run_dir(mid) / "eval.json"
        if mid in ids and local.is_file() and _local_results(read_json(local)) != _card_key(r["results"]):
            status = "stale"
        rows.append({"model_id": mid, "repo_id": r["repo_id"], "status": status, "sha": r["sha"],
                     "last_modified": r["last_modified"], "results": r["results"]})
    return rows


def _local_results(report: dict) -> list[tuple]:
    """eval.json as the card rounds it (card.eval_results: 2 decimals)."""
    return sorted((float(x["target_return"]), round(x["return_mean"], 2), round(x["normalized_mean"], 2))
                  for x in report.get("results", []))


def _card_key(results: list[dict]) -> list[tuple]:
    return sorted((r["target_return"], r.get("mean_reward"), r.get("normalized_score"))
                  for r in results if r.get("target_return") is not None)


def pull(model_id: str, registry: Registry, revision: str = "main", hub: str | None = None,
         org: str | None = None) -> Path:
    registry.resolve(model_id)
    return get_hub(hub).pull(repo_id(org_for(registry, org), model_id), revision)


def revisions(model_id: str, registry: Registry, hub: str | None = None,
              org: str | None = None) -> dict[str, dict]:
    """Every revision of a model: local checkpoints (`step<N>`, `main`) and what the hub holds."""
    registry.resolve(model_id)
    run = paths.run_dir(model_id)
    out: dict[str, dict] = {}
    for ckpt in (run / "checkpoints").glob("step*"):
        out[ckpt.name] = {"local": str(ckpt), "hub_commit": None}
    if paths.is_trained(model_id):
        out["main"] = {"local": str(run), "hub_commit": None}
    for rev, commit in get_hub(hub).revisions(repo_id(org_for(registry, org), model_id)).items():
        out.setdefault(rev, {"local": None})["hub_commit"] = commit
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "main", int(kv[0][4:] or 0)
                                                    if kv[0].startswith("step") else 0)))


# ----------------------------------------------------------------------------- interop


def revision_dir(run: Path, revision: str) -> Path:
    """A run directory's model for `revision`: the run itself for main, else its
    checkpoints/<revision>; a UsageError if that checkpoint does not exist."""
    if revision == "main":
        return run
    ckpt = run / "checkpoints" / revision
    if not ckpt.is_dir():
        raise UsageError(f"{run} has no checkpoint {revision!r} (looked in {run / 'checkpoints'})")
    return ckpt


def resolve_model_dir(model: str, registry: Registry, revision: str = "main") -> Path:
    """A path to a model directory, a trained run, or (failing both) a pull from the hub."""
    p = Path(model).expanduser()
    if p.is_dir():
        return revision_dir(p, revision)
    registry.resolve(model)
    run = paths.run_dir(model)
    if revision == "main" and paths.is_trained(model):
        return run
    if revision.startswith("step") and paths.checkpoint_dir(model, int(revision[4:])).is_dir():
        return paths.checkpoint_dir(model, int(revision[4:]))
    return pull(model, registry, revision=revision)


def export_model(model: str, out: Path, registry: Registry, revision: str = "main") -> Path:
    """Write a transformers `DecisionTransformerModel` directory (plus our config under "dtzoo")."""
    from dtzoo.convert import export_transformers

    net, config = load_model(resolve_model_dir(model, registry, revision))
    export_transformers(net, Path(out))
    hf_config = read_json(Path(out) / "config.json")
    hf_config["dtzoo"] = config.to_dict()  # state stats etc., so the round trip is lossless
    atomic_write_json(Path(out) / "config.json", hf_config)
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
    hf_config = read_json(Path(src) / "config.json")
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
        raise DatasetError(f"importing needs the state statistics of {spec.env.dataset!r}: run "
                           f"`dtzoo data prepare {spec.env.key}` first")
    data = load_trajectories(spec.env.dataset, spec.env.obs)
    if data.state_dim != dt_config.state_dim or data.action_space.dim != dt_config.act_dim:
        raise UsageError(f"{src} expects state/action dims {dt_config.state_dim}/{dt_config.act_dim}, "
                         f"env {spec.env.key!r} has {data.state_dim}/{data.action_space.dim}")
    mean, std = data.state_stats()
    recipe = dataclasses.replace(spec.recipe, d_model=dt_config.d_model, n_heads=dt_config.n_heads,
                                 d_mlp=dt_config.d_mlp, context_len=dt_config.context_len,
                                 activation=dt_config.activation, dropout=dt_config.dropout)
    config = make_config(dataclasses.replace(spec, recipe=recipe), data, mean, std, steps=0, step=0)
    config.architecture["max_ep_len"] = dt_config.max_ep_len
    config.extra["imported_from"] = str(src)
    return config


def collect(registry: Registry, env_key: str, policy: str, episodes: int, noise: list[float],
            dataset_id: str, seed: int = 0, target_return: float | None = None,
            overwrite: bool = False) -> dict:
    """`dtzoo data collect`: a Minari dataset from random, scripted or zoo-model actions."""
    from dtzoo.collect import prepare_dataset
    from dtzoo.data import dataset_summary

    env = registry.env(env_key)
    if policy not in ("random", "scripted"):
        from dtzoo.agent import AgentPolicy

        net, config = load_model(resolve_model_dir(policy, registry))
        if config.env["gym_id"] != env.gym_id:
            raise UsageError(f"{policy} acts in {config.env['gym_id']}, not {env.gym_id}")
        policy = AgentPolicy(net, config, target_return)
    prepare_dataset(dataset_id, env.gym_id, policy=policy, episodes=episodes, noise=noise,
                    seed=seed, overwrite=overwrite, obs=env.obs,
                    max_episode_steps=env.max_episode_steps)
    return dataset_summary(dataset_id, obs_kind=env.obs)
