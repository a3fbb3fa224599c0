"""Training dynamics: held-out episodes, revisions of a run, linear probes across training.

    >>> for step, model in dtzoo.revisions("pendulum-1L-seed0"):       # step0, step1, ..., main
    ...     print(step, model.config.step)
    >>> report = probe_revisions("pendulum-1L-seed0", targets=["rtg", "timestep"],
    ...                          hooks=["hook_embed_state", "blocks.0.hook_resid_post"])
    >>> report["scores"]["blocks.0.hook_resid_post"]["rtg"]         # R^2 per revision

The validation loss in training_log.csv and the probes use the same held-out episodes: a
`recipe.val_fraction` share of the dataset's episodes, chosen by the model's seed
(`held_out_episodes`), never drawn for training. Probes are fit on half of them (by episode) and
scored on the other half, so a probe's R^2 measures what the residual stream encodes on episodes
the model never trained on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from dtzoo.errors import UsageError
from dtzoo.families import require_dt
from dtzoo.modeldir import RunDir, revision_name, revision_step

MAX_VAL_SEGMENTS = 256  # validation segments per log row: a fixed set, a few forwards
PROBE_KINDS = {"R": 0, "s": 1, "a": 2}  # token read by a probe (TOKEN_KINDS order)
_TARGET_RE = re.compile(r"^(rtg|timestep|action|state\[(\d+)\])$")


# ----------------------------------------------------------------------------- held-out episodes


def held_out_episodes(n_episodes: int, fraction: float, seed: int) -> np.ndarray:
    """The episodes set aside for validation: floor(fraction * n) of them, chosen by `seed`
    (sorted indices; none when that is zero). `held_out_episodes(100, 0.05, 0)` -> 5 indices."""
    n = int(n_episodes * fraction)
    if n <= 0 or n >= n_episodes:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, 0x7E57])  # its own stream: training draws are untouched
    return np.sort(rng.permutation(n_episodes)[:n]).astype(np.int64)


def episode_segments(
    lengths: np.ndarray, episodes: np.ndarray, context_len: int, limit: int = MAX_VAL_SEGMENTS
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows (start 0, K, 2K, ...) tiling each listed episode, thinned evenly
    to at most `limit`: (episode index, start index) arrays for `SegmentSampler.segments`."""
    ep = [np.full(-(-int(lengths[e]) // context_len), e) for e in episodes]
    si = [np.arange(0, int(lengths[e]), context_len) for e in episodes]
    ep_a = np.concatenate(ep) if ep else np.zeros(0, np.int64)
    si_a = np.concatenate(si) if si else np.zeros(0, np.int64)
    if len(ep_a) > limit:
        keep = np.linspace(0, len(ep_a) - 1, limit).round().astype(np.int64)
        ep_a, si_a = ep_a[keep], si_a[keep]
    return ep_a.astype(np.int64), si_a.astype(np.int64)


# ----------------------------------------------------------------------------- revisions


def revision_dirs(
    model: str | os.PathLike, hub: str | None = None, org: str | None = None, registry=None
) -> list[tuple[int, Path | str]]:
    """(step, model directory or hub revision name) of every revision, in step order.

    A directory: its `checkpoints/step<N>` (and the directory itself when its step is not
    among them). A model id trained (or training) here: its run. Otherwise `[ORG/]ID` on the
    hub: its `step<N>` revisions (or `main` alone), pulled one at a time by `revisions`."""
    from dtzoo import paths
    from dtzoo.checkpoint import read_config
    from dtzoo.registry import MODEL_ID_RE

    path = Path(os.path.expanduser(str(model)))
    if (
        not path.is_dir()
        and MODEL_ID_RE.fullmatch(str(model))
        and paths.run_dir(str(model)).is_dir()
    ):
        path = paths.run_dir(str(model))
    if path.is_dir():
        found = {step: d.path for step, d in RunDir(path).checkpoints()}
        if (path / "config.json").is_file():
            found.setdefault(read_config(path).step, path)
        if not found:
            raise UsageError(f"{path} holds no model and no checkpoints/step<N>")
        return sorted(found.items())
    from dtzoo.hub import get_hub
    from dtzoo.locate import hub_repo_id

    rid = hub_repo_id(str(model), _registry(registry), org)
    revs = get_hub(hub).revisions(rid)
    steps = sorted(s for s in map(revision_step, revs) if s is not None)
    if not steps and "main" not in revs:
        raise UsageError(f"{rid} has no revisions on the {hub or 'default'} hub")
    return [(s, revision_name(s)) for s in steps] or [(-1, "main")]


def _registry(registry):
    from dtzoo.registry import load_registry

    return registry if registry is not None else load_registry()


def load_model_ref(
    model: str | os.PathLike,
    revision: str = "main",
    hub: str | None = None,
    org: str | None = None,
    device: str = "cpu",
    registry=None,
):
    """`dtzoo.load` with an already loaded registry: the model, ModelConfig at `model.config`."""
    from dtzoo.checkpoint import load_model
    from dtzoo.locate import locate

    ref = locate(os.path.expanduser(str(model)), _registry(registry), revision, hub, org)
    net, config = load_model(ref.path, device=device)
    net.config = config
    return net


def revisions(
    model: str | os.PathLike,
    hub: str | None = None,
    org: str | None = None,
    device: str = "cpu",
    registry=None,
) -> Iterator[tuple[int, torch.nn.Module]]:
    """Yield `(step, model)` for every training-time checkpoint, in step order, loading one
    at a time (each model has its ModelConfig at `model.config`; the last one is `main`).

    >>> for step, m in dtzoo.revisions("pendulum-1L-seed0"):            # a run trained here
    >>> for step, m in dtzoo.revisions("someone/pendulum-1L-seed0")      # hub step<N> revisions
    >>> for step, m in dtzoo.revisions("~/.cache/dtzoo/runs/pendulum-1L-seed0")
    """
    for _, where in revision_dirs(model, hub, org, registry):
        net = _load_revision(model, where, hub, org, device, registry)
        yield net.config.step, net


def _load_revision(model, where: Path | str, hub, org, device: str, registry):
    """One entry of `revision_dirs`: a directory, or a hub revision (pulled, verified)."""
    from dtzoo.checkpoint import load_model

    if isinstance(where, str):
        return load_model_ref(str(model), where, hub, org, device, _registry(registry))
    net, config = load_model(where, device=device)
    net.config = config
    return net


# ----------------------------------------------------------------------------- probe data


def parse_target(target: str) -> tuple[str, int | None]:
    """ "rtg" | "timestep" | "action" | "state[i]" -> (kind, index)."""
    m = _TARGET_RE.match(target)
    if not m:
        raise UsageError(f"unknown probe target {target!r}: use rtg, timestep, action or state[i]")
    return ("state", int(m[2])) if m[2] is not None else (m[1], None)


def probe_episodes(config, source: str = "auto", episodes: int = 32):
    """The episodes probes read: (Trajectories, episode indices, where they came from).

    `data`: the model's held-out episodes from its dataset (needs it locally, same fingerprint),
    topped up with training episodes (chosen by the seed) to `episodes` when fewer were held out;
    `rollout`: `episodes` fresh episodes of the final model at its first target return;
    `auto`: data when the dataset is here, else rollouts."""
    from dtzoo.data import dataset_exists, load_trajectories
    from dtzoo.observations import kind_of

    if source not in ("auto", "data", "rollout"):
        raise UsageError(f"--source {source!r}: use auto, data or rollout")
    ds = config.dataset.get("id", "")
    if source != "rollout" and ds and dataset_exists(ds):
        data = load_trajectories(ds, kind_of(config))
        if data.fingerprint == config.dataset.get("fingerprint"):
            held = np.asarray(config.dataset.get("val_episodes", []), np.int64)
            if len(held) >= episodes:
                return data, held, f"{len(held)} held-out episodes of {ds}"
            # too few held out for a probe (or an old run): add training episodes, by seed
            rng = np.random.default_rng([config.seed, 0x9B0B])
            rest = rng.permutation(np.setdiff1d(np.arange(len(data.lengths)), held))
            eps = np.sort(np.concatenate([held, rest[: episodes - len(held)]]))
            return (
                data,
                eps,
                (
                    f"{len(eps)} episodes of {ds} ({len(held)} held out in training, "
                    "the rest seen in training)"
                ),
            )
    if source == "data":
        raise UsageError(
            f"probes with --source data need dataset {ds!r} here, as trained "
            "(`dtzoo data prepare ENV` or `minari download`)"
        )
    return None, None, "rollout"


def record_episodes(model, target_return: float, seeds: list[int]):
    """Roll `model` out once per seed and keep what it saw: a Trajectories of those episodes
    (vector observations), so probes and plots can read real rollouts without a dataset."""
    from dtzoo.agent import Agent
    from dtzoo.data import ActionSpace, Trajectories
    from dtzoo.observations import kind_of

    config = model.config
    kind = kind_of(config)
    if kind.image:  # recorded as flat rows below
        raise UsageError(f"{config.model_id}: rollouts for probes need vector observations")
    space = ActionSpace(**config.action_space)
    envs = kind.make_vec_env(config.env["gym_id"], len(seeds), config.env.get("max_episode_steps"))
    obs_l, act_l, rew_l, alive_l = [], [], [], []
    try:
        agent = Agent(model, config, target_return=target_return, num_envs=len(seeds))
        obs, _ = envs.reset(seed=seeds)
        alive = np.ones(len(seeds), bool)
        while alive.any() and len(obs_l) < config.env["max_ep_len"]:
            action = agent.act(obs)
            obs_l.append(np.asarray(obs, np.float32).reshape(len(seeds), -1))
            act_l.append(agent.actions[:, -1].copy())  # model space (tanh outputs / one-hot)
            obs, reward, terminated, truncated, _ = envs.step(action)
            agent.observe(reward)
            rew_l.append(np.asarray(reward, np.float32))
            alive_l.append(alive.copy())
            alive &= ~(terminated | truncated)
    finally:
        envs.close()
    alive_a = np.stack(alive_l, 1)  # (n, T): steps before each episode ended
    lengths = alive_a.sum(1).astype(np.int64)

    def pick(xs: list[np.ndarray]) -> np.ndarray:  # (T, n, ...) steps -> each episode's, joined
        return np.concatenate([np.stack(xs, 1)[i, :n] for i, n in enumerate(lengths)])

    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return Trajectories(
        observations=pick(obs_l),
        actions=pick(act_l),
        rewards=pick(rew_l),
        starts=starts,
        lengths=lengths,
        action_space=space,
        dataset_id=f"rollouts of {config.model_id}",
        gym_id=config.env["gym_id"],
        minari_version="",
        fingerprint="",
        obs_kind=kind.name,
    )


def probe_batch(config, data, episodes: np.ndarray) -> tuple[dict, np.ndarray]:
    """The segments tiling `episodes` as model inputs, plus each segment's episode index."""
    from dtzoo.data import SegmentSampler

    K = config.architecture["context_len"]
    sampler = SegmentSampler(
        data,
        K,
        config.architecture["max_ep_len"],
        config.reward_scale,
        seed=0,
        state_mean=np.asarray(config.state_mean, np.float32),
        state_std=np.asarray(config.state_std, np.float32),
    )
    ep, si = episode_segments(data.lengths, episodes, K, limit=1024)
    return sampler.segments(ep, si), ep


def probe_targets(batch: dict, target: str, config) -> np.ndarray:
    """(B, T, k) target values at every step of the batch."""
    kind, i = parse_target(target)
    if kind == "rtg":
        return batch["returns_to_go"] * config.reward_scale  # in return units
    if kind == "timestep":
        return batch["timesteps"][..., None].astype(np.float32)
    if kind == "action":
        return batch["actions"]
    if i >= batch["states"].shape[-1]:
        raise UsageError(f"probe target {target!r}: the state has {batch['states'].shape[-1]} dims")
    return batch["states"][..., i : i + 1]  # z-normalised, as the model reads it


# ----------------------------------------------------------------------------- probes


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1e-1) -> np.ndarray:
    """Closed-form ridge regression with an unpenalised bias: weights (d + 1, k)."""
    x1 = np.concatenate([x, np.ones((len(x), 1))], 1).astype(np.float64)
    reg = alpha * len(x) * np.eye(x1.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(x1.T @ x1 + reg, x1.T @ y.astype(np.float64))


def r2_score(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """R^2 of a ridge probe on (x, y), averaged over target dims (1 = perfect, 0 = the mean)."""
    pred = np.concatenate([x, np.ones((len(x), 1))], 1) @ w
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    ok = ss_tot > 1e-12
    return float(np.mean(1.0 - ss_res[ok] / ss_tot[ok])) if ok.any() else float("nan")


def fit_logistic(
    x: np.ndarray, labels: np.ndarray, n_classes: int, alpha: float = 1e-3, steps: int = 200
) -> torch.nn.Linear:
    """Multinomial logistic regression (L-BFGS, L2 penalty) for discrete targets."""
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        lin.weight.normal_(0, 0.01, generator=g)
        lin.bias.zero_()
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt) + alpha * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def probe_scores(
    acts: dict[str, np.ndarray], y: np.ndarray, train: np.ndarray, discrete: bool
) -> dict[str, float]:
    """One probe per hook: R^2 (or accuracy for a discrete target) on the test rows."""
    out = {}
    for name, x in acts.items():
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6  # standardise: one alpha fits all hooks
        xs = (x - mu) / sd
        if discrete:
            labels = y.argmax(-1)
            lin = fit_logistic(xs[train], labels[train], y.shape[-1])
            with torch.no_grad():
                pred = lin(torch.as_tensor(xs[~train], dtype=torch.float32)).argmax(-1).numpy()
            out[name] = float((pred == labels[~train]).mean())
        else:
            out[name] = r2_score(xs[~train], y[~train], fit_ridge(xs[train], y[train]))
    return out


@torch.no_grad()
def activations(model, batch: dict, hooks: list[str], token: str = "s") -> dict[str, np.ndarray]:
    """(N, d_model) activations at the `token` of every real step, for each hook."""
    names = set(model.hook_names())
    for h in hooks:
        if h not in names:
            raise UsageError(
                f"no hook point {h!r} in {model.config.model_id}; e.g. "
                f"{', '.join(n for n in model.hook_names() if 'resid' in n)[:200]}"
            )
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
    _, cache = model.run_with_cache(
        t["states"],
        t["actions"],
        t["returns_to_go"],
        t["timesteps"],
        t["mask"],
        names_filter=list(hooks),
    )
    mask = batch["mask"].reshape(-1)
    out = {}
    for h in hooks:
        a = cache[h]
        B, T = batch["mask"].shape
        if a.shape[1] == 3 * T:  # token stream: pick the probed token kind of each step
            a = a.view(B, T, 3, -1)[:, :, PROBE_KINDS[token]]
        out[h] = a.reshape(B * T, -1).float().numpy()[mask]
    return out


def default_hooks(n_layers: int) -> list[str]:
    """The residual stream before the first block and after each block."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]


def probe_revisions(
    model: str | os.PathLike,
    targets: list[str],
    hooks: list[str] | None = None,
    token: str = "s",
    source: str = "auto",
    hub: str | None = None,
    org: str | None = None,
    registry=None,
    progress=None,
) -> dict:
    """Fit linear probes at every revision of `model`: for each hook and target, the score
    (R^2, or accuracy for a discrete action) against training step. The probes' inputs are the
    same episodes at every revision; probes are fit on half the episodes, scored on the rest.

    >>> rep = probe_revisions("pendulum-1L-seed0", ["rtg", "state[0]"])
    >>> rep["steps"], rep["scores"]["blocks.0.hook_resid_post"]["rtg"]
    """
    if token not in PROBE_KINDS:
        raise UsageError(f"--token {token!r}: use R, s or a")
    for t in targets:
        parse_target(t)
    revs = revision_dirs(model, hub, org, registry)
    steps, scores, batch, ep, train, meta = [], {}, None, None, None, {}
    for i, (step, net) in enumerate(revisions(model, hub, org, registry=registry)):
        if batch is None:  # inputs fixed once, from the first revision's config (same run)
            batch, ep, meta = _probe_inputs(model, net.config, source, hub, org, registry)
            hooks = hooks or default_hooks(net.cfg.n_layers)
            uniq = np.unique(ep)
            if len(uniq) >= 2:  # probes are fit on half the episodes and scored on the rest
                rng = np.random.default_rng(0)  # a random half: datasets are often ordered
                train_eps = rng.permutation(uniq)[: len(uniq) // 2]
                train_steps = np.isin(ep, train_eps)[:, None].repeat(batch["mask"].shape[1], 1)
            else:  # one episode: its first half against its second
                train_steps = np.zeros(batch["mask"].shape, bool)
                train_steps[: len(ep) // 2] = True
            train = train_steps.reshape(-1)[batch["mask"].reshape(-1)]
            ys = {}
            for t in targets:
                y = probe_targets(batch, t, net.config)
                ys[t] = y.reshape(-1, y.shape[-1])[batch["mask"].reshape(-1)]
        acts = activations(net, batch, hooks, token)
        for t in targets:
            discrete = parse_target(t)[0] == "action" and net.cfg.discrete
            for h, s in probe_scores(acts, ys[t], train, discrete).items():
                scores.setdefault(h, {}).setdefault(t, []).append(s)
        steps.append(int(step))
        if progress:
            progress(i + 1, len(revs))
    cfg = net.config
    return {
        "model_id": cfg.model_id,
        "kind": "probe",
        "token": token,
        "targets": list(targets),
        "hooks": list(hooks),
        "steps": steps,
        "scores": scores,
        "metric": {
            t: "accuracy" if parse_target(t)[0] == "action" and net.cfg.discrete else "r2"
            for t in targets
        },
        "samples": {"train": int(train.sum()), "test": int((~train).sum())},
        **meta,
    }


def _probe_inputs(model, config, source, hub, org, registry) -> tuple[dict, np.ndarray, dict]:
    """The fixed probe inputs: held-out data episodes, or rollouts of the final model."""
    require_dt(config, "dtzoo interp probe")
    data, eps, where = probe_episodes(config, source)
    if data is None:  # rollouts of the final model (main): what the trained policy visits
        final = _load_revision(
            model, revision_dirs(model, hub, org, registry)[-1][1], hub, org, "cpu", registry
        )
        seeds = [10_000_000 + config.seed * 100 + i for i in range(8)]
        data = record_episodes(final, config.target_returns[0], seeds)
        eps = np.arange(len(data.lengths))
        where = f"8 rollouts of the final model at target {config.target_returns[0]:g}"
    batch, ep = probe_batch(config, data, eps)
    return batch, ep, {"source": where, "episodes": [int(e) for e in np.unique(ep)]}


def write_probe_report(
    model: str | os.PathLike,
    targets: list[str],
    hooks: list[str] | None = None,
    out_dir: Path | None = None,
    progress=None,
    **kwargs,
) -> dict:
    """`probe_revisions`, then probe.json and probe.png under `out_dir` (default
    ./interp/<model id>); the result's `files` names them."""
    from dtzoo.fsutil import atomic_write_json
    from dtzoo.plots import probe_plot

    rep = probe_revisions(model, targets, hooks, progress=progress, **kwargs)
    out = Path(out_dir) if out_dir is not None else Path("interp") / rep["model_id"]
    rep["files"] = {"json": str(out / "probe.json"), "png": str(out / "probe.png")}
    probe_plot(rep, out / "probe.png")
    atomic_write_json(out / "probe.json", rep)
    return rep


# ----------------------------------------------------------------------------- return vs step


def eval_revisions(
    model: str | os.PathLike,
    episodes: int | None = None,
    hub: str | None = None,
    org: str | None = None,
    registry=None,
    out_dir: Path | None = None,
    progress=None,
) -> dict:
    """Roll every revision out at the model's target returns (the same episode seeds at each):
    return against training step. Writes revisions.json and revisions.png under `out_dir`
    (default $DTZOO_HOME/evals/revisions/<model id>).

    >>> rep = eval_revisions("pendulum-1L-seed0", episodes=5)
    >>> [(r["step"], r["results"][0]["return_mean"]) for r in rep["revisions"]]
    """
    from dtzoo.evaluate import evaluate
    from dtzoo.fsutil import atomic_write_json
    from dtzoo.plots import revisions_plot
    from dtzoo.zoo import default_episodes

    reg = _registry(registry)
    revs = revision_dirs(model, hub, org, reg)
    rows, config = [], None
    for i, (step, net) in enumerate(revisions(model, hub, org, registry=reg)):
        config = net.config
        n = episodes or default_episodes(reg, config)
        rep = evaluate(net, config, episodes=n, seed_base=reg.eval_seed)
        rows.append(
            {
                "step": step,
                "results": [
                    {
                        k: r[k]
                        for k in ("target_return", "return_mean", "return_std", "normalized_mean")
                    }
                    for r in rep["results"]
                ],
            }
        )
        if progress:
            progress(i + 1, len(revs))
    if out_dir is None:
        from dtzoo import paths

        out_dir = paths.home() / "evals" / "revisions" / config.model_id
    out = Path(out_dir)
    report = {
        "model_id": config.model_id,
        "kind": "eval_revisions",
        "episodes": n,
        "eval_seed": reg.eval_seed,
        "ref_scores": config.env["ref_scores"],
        "data_best_return": config.dataset.get("return_max"),
        "revisions": rows,
        "files": {"json": str(out / "revisions.json"), "png": str(out / "revisions.png")},
    }
    revisions_plot(report, out / "revisions.png")
    atomic_write_json(out / "revisions.json", report)
    return report
