"""The `dtzoo` command line: parse, delegate to dtzoo.zoo, print. No logic lives here.

Data goes to stdout (tables, JSON, paths); progress and notes go to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Literal, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dtzoo import __version__
from dtzoo.errors import DtzooError

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    help="dtzoo: a model zoo and checkpoint hub for Decision Transformers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings=HELP,
)
data_app = typer.Typer(
    help="Datasets: prepare, inspect.", no_args_is_help=True, context_settings=HELP
)
app.add_typer(data_app, name="data")
from dtzoo.cli_interp import interp_app  # noqa: E402 (typer only: cheap)

app.add_typer(interp_app, name="interp")

# wide tables when piped (rich would wrap them at 80 columns)
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

GridOpt = Annotated[Optional[str], typer.Option("--grid", "-g", help="A grid from the registry.")]
IdsArg = Annotated[
    Optional[list[str]],
    typer.Argument(help="Model ids, e.g. pendulum-1L-seed0.", show_default=False),
]
HubOpt = Annotated[
    Optional[Literal["hf", "local"]],
    typer.Option(
        "--hub",
        help="hf (the Hugging Face Hub) or local (offline, under DTZOO_HOME); "
        "default $DTZOO_HUB or hf.",
        show_default=False,
    ),
]
OrgOpt = Annotated[
    Optional[str], typer.Option("--org", help="Hub org (default $DTZOO_ORG or hub.org).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
# where the cells run (dtzoo.grid); shared by train and eval
ExecOpt = Annotated[
    Literal["local", "ray", "slurm"],
    typer.Option("--executor", help="Where cells run: local, ray or slurm (submitit)."),
]
RevisionOpt = Annotated[
    str, typer.Option("--revision", help="main, step<N> (a training-time checkpoint) or a commit.")
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        help="local: cells in N worker processes; slurm: at most N array tasks at once.",
    ),
]
AddressOpt = Annotated[
    Optional[str],
    typer.Option("--address", help="ray: ray://host:10001, auto, or none to start a local Ray."),
]
CpusOpt = Annotated[float, typer.Option("--cpus-per-cell", min=0, help="ray/slurm: CPUs per cell.")]
GpusOpt = Annotated[
    float,
    typer.Option(
        "--gpus-per-cell",
        min=0,
        help="ray: GPUs per cell (a fraction shares one); slurm: GPUs per array task.",
    ),
]
PartitionOpt = Annotated[Optional[str], typer.Option("--partition", help="slurm: the partition.")]
TimeOpt = Annotated[
    Optional[str], typer.Option("--time", help="slurm: time limit per cell, HH:MM.")
]

MAX_EPISODES = 10_000  # per target return: a bound checked before any rollout is planned

_registry_path: str | None = None


def registry():
    from dtzoo.registry import load_registry

    return load_registry(_registry_path)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def version_callback(value: bool) -> None:
    if value:
        out.print(f"dtzoo {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    registry_file: Annotated[
        Optional[str],
        typer.Option(
            "--registry", envvar="DTZOO_REGISTRY", help="Registry YAML (default: the bundled one)."
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    global _registry_path
    _registry_path = registry_file


# ----------------------------------------------------------------------------- list


@app.command("list")
def list_cmd(
    model_id: Annotated[Optional[str], typer.Argument(help="One model (with --revisions).")] = None,
    grid: GridOpt = None,
    hub: HubOpt = None,
    org: OrgOpt = None,
    show_revisions: Annotated[
        bool, typer.Option("--revisions", help="List the model's revisions (step<N>, main).")
    ] = False,
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="What the hub's org holds: eval results from the model cards, "
            "missing / stale models.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The registry's model ids and their state (prepared / trained / evaluated / published)."""
    from dtzoo import status, zoo

    reg = registry()
    if remote:
        return _print_remote(status.remote_status(reg, grid=grid, hub=hub, org=org), as_json)
    if show_revisions:
        if not model_id:
            raise typer.BadParameter("--revisions needs a MODEL_ID", param_hint="--revisions")
        return _print_revisions(zoo.revisions(model_id, reg, hub, org), model_id, as_json)
    ids = (
        [reg.resolve(model_id).model_id]
        if model_id
        else reg.grid(grid)
        if grid
        else reg.all_model_ids()
    )
    published, why = status.published_ids_or_none(reg, hub, org)
    if published is None:
        print(f"note: published state unknown ({why})", file=sys.stderr)
    states = [status.model_state(reg.resolve(m), published) for m in ids]
    if as_json:
        out.print_json(json.dumps([{**s.__dict__, "state": s.label} for s in states]))
        return
    table = Table("model", "prepared", "trained", "evaluated", "published", "step")
    mark = lambda b: "[green]yes[/]" if b else "[dim]-[/]"  # noqa: E731
    for s in states:
        table.add_row(
            s.model_id,
            mark(s.prepared),
            mark(s.trained),
            mark(s.evaluated),
            "?" if s.published is None else mark(s.published),
            str(s.step if s.step is not None else ""),
        )
    out.print(table)


def _print_remote(rows: list[dict], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(rows))
        return
    style = {"missing": "yellow", "stale": "red", "published": "green"}
    table = Table(
        "model",
        "status",
        "hub commit",
        "last modified",
        "target",
        "mean return",
        "norm. score",
        title="published models (eval results from their model cards)",
    )
    num = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
    for r in rows:
        status = f"[{style.get(r['status'], 'dim')}]{r['status']}[/]"
        head = [r["model_id"], status, (r["sha"] or "")[:12], (r["last_modified"] or "")[:19]]
        for i, res in enumerate(r["results"] or [{}]):
            table.add_row(
                *(head if i == 0 else [""] * 4),
                num(res.get("target_return")),
                num(res.get("mean_reward")),
                num(res.get("normalized_score")),
            )
    out.print(table)


def _print_revisions(revs: dict[str, dict], model_id: str, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(revs))
        return
    table = Table("revision", "local", "hub commit", title=f"{model_id}: revisions")
    for rev, info in revs.items():
        table.add_row(rev, info.get("local") or "-", (info.get("hub_commit") or "-")[:12])
    out.print(table)


# ----------------------------------------------------------------------------- data


@data_app.command("prepare")
def data_prepare(
    envs: Annotated[list[str], typer.Argument(help="Env keys, e.g. pendulum.")],
    overwrite: Annotated[bool, typer.Option(help="Rebuild even if present.")] = False,
) -> None:
    """Make each env's dataset available locally (prepared here, or downloaded via Minari)."""
    from dtzoo import zoo

    reg = registry()
    specs = [reg.env(e) for e in envs]
    for env in specs:
        with err.status(f"preparing {env.dataset} ..."):
            path = zoo.prepare_env(env, overwrite=overwrite)
        out.print(f"{env.key}: {env.dataset} -> {path}")


@data_app.command("info")
def data_info(
    name: Annotated[str, typer.Argument(help="An env key or a Minari dataset id.")],
    as_json: JsonOpt = False,
) -> None:
    """Episodes, steps, return distribution (with a histogram) and reference scores."""
    from dtzoo.data import dataset_summary

    reg = registry()
    env = reg.envs.get(name)
    info = dataset_summary(env.dataset, obs_kind=env.obs) if env else dataset_summary(name)
    if env and env.ref_scores:  # the registry's reference scores are the ones models use
        info["ref_scores"] = {**env.ref_scores, "source": f"registry env {env.key}"}
    else:
        info["ref_scores"]["source"] = "dataset metadata"
    if as_json:
        out.print_json(json.dumps(info))
        return
    r, ref = info["return"], info["ref_scores"]
    out.print(f"[bold]{info['dataset']}[/] ({info['gym_id']}, minari {info['minari_version']})")
    out.print(
        f"episodes {info['episodes']}, steps {info['steps']}, episode length "
        f"{info['episode_length']['min']}..{info['episode_length']['max']}"
    )
    out.print(
        f"return min {r['min']:.1f} / mean {r['mean']:.1f} / max {r['max']:.1f} "
        f"(std {r['std']:.1f})"
    )
    out.print(f"reference scores: random {ref.get('random')}, expert {ref.get('expert')}")
    counts, edges = info["histogram"]["counts"], info["histogram"]["edges"]
    width = max(counts) or 1
    for c, lo, hi in zip(counts, edges, edges[1:]):
        out.print(f"  {lo:10.1f} .. {hi:10.1f} | {'#' * round(40 * c / width):<40} {c}")


@data_app.command("collect")
def data_collect(
    env: Annotated[str, typer.Argument(help="Env key from the registry (fixes the gym task).")],
    policy: Annotated[str, typer.Option(help="random, scripted, or a model id / model directory.")],
    episodes: Annotated[int, typer.Option(help="Number of episodes.", min=1, max=MAX_EPISODES)],
    out_id: Annotated[
        str, typer.Option("--out", help="New Minari dataset id, e.g. me/pendulum/dt-v0.")
    ],
    noise: Annotated[
        Optional[list[str]], typer.Option(help="Noise levels (repeat or comma-separate).")
    ] = None,
    target_return: Annotated[
        Optional[float], typer.Option(help="Target return for a model policy.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for env resets and noise.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """Make a Minari dataset from any policy (a zoo checkpoint included)."""
    from dtzoo import zoo

    levels = [float(x) for v in (noise or ["0"]) for x in v.split(",") if x.strip()]
    with err.status(f"collecting {episodes} episodes of {env} ..."):
        info = zoo.collect(
            registry(),
            env,
            policy,
            episodes,
            levels,
            out_id,
            seed=seed,
            target_return=target_return,
            overwrite=overwrite,
        )
    out.print(
        f"{out_id}: {info['episodes']} episodes, {info['steps']} steps, return mean "
        f"{info['return']['mean']:.1f} (min {info['return']['min']:.1f}, "
        f"max {info['return']['max']:.1f})"
    )


# ----------------------------------------------------------------------------- train / eval


@app.command()
def train(
    ids: IdsArg = None,
    grid: GridOpt = None,
    steps: Annotated[
        Optional[int], typer.Option(help="Override the recipe's step count.", min=1)
    ] = None,
    device: Annotated[
        Literal["auto", "cpu", "cuda"], typer.Option(help="Where to train.")
    ] = "auto",
    precision: Annotated[
        Optional[Literal["fp32", "bf16"]],
        typer.Option(help="bf16: bfloat16 autocast; default: the recipe's.", show_default=False),
    ] = None,
    checkpoints: Annotated[
        Optional[str],
        typer.Option(
            "--checkpoints",
            help="Override the checkpoint schedule, e.g. log=16,evenly=20 "
            "(keys: log_until, every, log, evenly).",
            show_default=False,
        ),
    ] = None,
    executor_name: ExecOpt = "local",
    workers: WorkersOpt = 1,
    address: AddressOpt = None,
    cpus_per_cell: CpusOpt = 1,
    gpus_per_cell: GpusOpt = 0,
    partition: PartitionOpt = None,
    time_limit: TimeOpt = None,
) -> None:
    """Train what is not trained yet; unfinished runs resume from their last checkpoint, and
    `--steps N` above a finished run's length extends it (the same weights as N steps at once)."""
    from dtzoo import grid as executor
    from dtzoo.registry import CheckpointSchedule

    if device == "cuda":  # once, up front, rather than once per cell
        from dtzoo.train import pick_device

        pick_device(device)
    if checkpoints:  # checked here, applied over the registry's schedule in every cell
        CheckpointSchedule.parse_override(checkpoints)
    reg = registry()
    specs = reg.select(grid, ids or [])
    ex = executor.make_executor(
        executor_name, workers, address, cpus_per_cell, gpus_per_cell, partition, time_limit
    )
    options = {
        "registry": str(reg.path.resolve()),
        "steps": steps,
        "device": device,
        "precision": precision,
        "checkpoints": checkpoints,
    }
    _report(_run_cells(ex, "train", [s.model_id for s in specs], options), "trained")


ModelsArg = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Model ids trained here or on the hub (pendulum-1L-seed0), ORG/ID, "
        "or model directories.",
        show_default=False,
    ),
]


@app.command("eval")
def eval_cmd(
    models: ModelsArg = None,
    grid: GridOpt = None,
    revision: RevisionOpt = "main",
    episodes: Annotated[
        Optional[int], typer.Option(help="Episodes per target return.", min=1, max=MAX_EPISODES)
    ] = None,
    rtg_sweep: Annotated[
        bool, typer.Option("--rtg-sweep", help="Sweep target returns; writes rtg_sweep.json/.png.")
    ] = False,
    targets: Annotated[
        Optional[str],
        typer.Option(help="Sweep targets LO:HI:N (default: random score to 1.5x expert)."),
    ] = None,
    revisions: Annotated[
        bool,
        typer.Option(
            "--revisions",
            help="Every training-time checkpoint: return against training step "
            "(revisions.json/.png under $DTZOO_HOME/evals/revisions/<id>).",
        ),
    ] = False,
    hub: HubOpt = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
    executor_name: ExecOpt = "local",
    workers: WorkersOpt = 1,
    address: AddressOpt = None,
    cpus_per_cell: CpusOpt = 1,
    gpus_per_cell: GpusOpt = 0,
    partition: PartitionOpt = None,
    time_limit: TimeOpt = None,
) -> None:
    """Roll models out at their target returns and print their leaderboard: models trained here,
    pulled from the hub (any org), or directories. Up-to-date results are reused."""
    from dtzoo import grid as executor
    from dtzoo.leaderboard import leaderboard_rows

    reg = registry()
    names = _model_names(reg, grid, models)
    ex = executor.make_executor(
        executor_name, workers, address, cpus_per_cell, gpus_per_cell, partition, time_limit
    )
    if revisions:
        return _eval_revisions(names, reg, episodes, hub, org, as_json)
    options = {
        "registry": str(reg.path.resolve()),
        "revision": revision,
        "episodes": episodes,
        "hub": hub,
        "org": org,
    }
    if rtg_sweep or targets:
        return _sweep(ex, names, {**options, "targets": targets}, as_json)
    results = _run_cells(ex, "eval", names, options)
    reports = [r.value for r in results if r.ok and r.value]
    if as_json:
        out.print_json(json.dumps({"models": reports, "leaderboard": leaderboard_rows(reports)}))
    else:
        _print_leaderboard(leaderboard_rows(reports))
    _report(results, "evaluated")


def _model_names(reg, grid: str | None, models: list[str] | None) -> list[str]:
    """What a consumer command acts on: the grid's ids, or the names given (not both)."""
    if grid and models:
        raise typer.BadParameter("give either --grid or models, not both", param_hint="--grid")
    if not grid and not models:
        raise typer.BadParameter(
            "nothing to do: give --grid NAME or models (ID, ORG/ID or a directory)",
            param_hint="MODELS",
        )
    return reg.grid(grid) if grid else list(models)


def _eval_revisions(
    names: list[str], reg, episodes: int | None, hub: str | None, org: str | None, as_json: bool
) -> None:
    from dtzoo.dynamics import eval_revisions

    reports = []
    with progress_bar() as bar:
        for name in names:
            task = bar.add_task(f"{name} revisions", total=None, info="")
            reports.append(
                eval_revisions(
                    name,
                    episodes,
                    hub,
                    org,
                    reg,
                    progress=lambda i, n: bar.update(task, completed=i, total=n),
                )
            )
    if as_json:
        return out.print_json(json.dumps(reports))
    for rep in reports:
        targets = [r["target_return"] for r in rep["revisions"][0]["results"]]
        table = Table(
            "step",
            *[f"return @ {t:g}" for t in targets],
            title=f"{rep['model_id']}: return against training step ({rep['episodes']} episodes)",
        )
        for row in rep["revisions"]:
            table.add_row(
                str(row["step"]),
                *[f"{r['return_mean']:.1f} ± {r['return_std']:.1f}" for r in row["results"]],
            )
        out.print(table)
        out.print(rep["files"]["png"])


def _sweep(ex, names: list[str], options: dict, as_json: bool) -> None:
    from dtzoo.evaluate import parse_targets, sweep_summary

    if options["targets"]:  # LO:HI:N checked here, once: one line for a bad range
        options["targets"] = parse_targets(options["targets"])
    results = _run_cells(ex, "sweep", names, options)
    reports = [r.value for r in results if r.ok]
    if as_json:
        out.print_json(json.dumps(reports))
    for rep in [] if as_json else reports:
        table = Table(
            "target",
            "achieved",
            "± (episodes)",
            "norm. score",
            title=f"{rep['model_id']}: achieved vs target return",
        )
        for r in rep["results"]:
            table.add_row(
                f"{r['target_return']:.1f}",
                f"{r['return_mean']:.1f}",
                f"{r['return_std']:.1f}",
                f"{r['normalized_mean']:.1f}",
            )
        out.print(table)
        out.print(sweep_summary(rep))  # the data's best, the expert, beyond the data
    _report(results, "swept", quiet=True)


@app.command()
def leaderboard(
    grid: GridOpt = None,
    fmt: Annotated[
        Literal["table", "markdown", "csv", "json"],
        typer.Option("--format", "-f", help="Output format."),
    ] = "table",
    hub: Annotated[
        Optional[Literal["hf", "local"]],
        typer.Option(
            "--hub",
            help="Rank what the hub's org published, from its model cards alone (no weights "
            "are downloaded); default: what was evaluated on this machine.",
            show_default=False,
        ),
    ] = None,
    org: OrgOpt = None,
    plot: Annotated[
        Optional[str], typer.Option(help="Also write a PNG: score vs layers per env.")
    ] = None,
) -> None:
    """Mean ± std over seeds for every env x layers x target return."""
    from pathlib import Path

    from dtzoo import zoo
    from dtzoo.leaderboard import render

    if plot and not Path(plot).expanduser().resolve().parent.is_dir():  # never create folders
        raise typer.BadParameter(f"the folder of {plot} does not exist", param_hint="--plot")
    rows = zoo.leaderboard(registry(), grid, hub=hub, org=org)
    if not any(r["seeds"] for r in rows):
        err.print(
            "no published results for this grid yet"
            if hub
            else "no evaluated models yet: run `dtzoo eval --grid NAME` or `dtzoo eval ORG/ID`"
        )
    if fmt == "table":
        _print_leaderboard(rows)
    else:
        out.print(render(rows, fmt), markup=False, highlight=False)
    if plot and rows:
        from dtzoo.plots import leaderboard_plot

        leaderboard_plot(rows, plot)
        err.print(f"wrote {plot}")


def _print_leaderboard(rows: list[dict]) -> None:
    from dtzoo.leaderboard import COLUMNS, HEADERS, format_cell

    table = Table(
        *(HEADERS[c] for c in COLUMNS),
        title="leaderboard (mean ± std over seeds; seeds found/expected for a grid)",
    )
    for r in rows:
        table.add_row(*(format_cell(r, c) for c in COLUMNS))
    out.print(table)


# ----------------------------------------------------------------------------- hubs


@app.command()
def publish(
    ids: IdsArg = None,
    grid: GridOpt = None,
    hub: HubOpt = None,
    org: OrgOpt = None,
    checkpoints: Annotated[
        bool,
        typer.Option(
            "--checkpoints/--no-checkpoints",
            help="Also publish every training-time checkpoint as a step<N> revision.",
        ),
    ] = True,
) -> None:
    """Publish trained models: weights, config, card, plots, replay video and a transformers/
    folder, as `main` and one `step<N>` revision per training-time checkpoint."""
    from dtzoo import grid as executor
    from dtzoo.hub import get_hub, repo_id
    from dtzoo.locate import org_for

    reg = registry()
    specs = reg.select(grid, ids or [])
    get_hub(hub), repo_id(org_for(reg, org), specs[0].model_id)  # bad hub / org: fail up front
    options = {"registry": str(reg.path.resolve()), "hub": hub, "org": org}
    options["checkpoints"] = checkpoints
    results = _run_cells(
        executor.make_executor("local"), "publish", [s.model_id for s in specs], options
    )
    table = Table("repo", "revision", "commit", "url", "status")
    for r in results:
        for p in r.value or []:
            table.add_row(
                p.repo_id,
                p.revision,
                p.commit[:12],
                p.url,
                "unchanged (skipped)" if p.skipped else "published",
            )
    out.print(table)
    pushed = [p for r in results for p in (r.value or [])]
    err.print(
        f"{sum(not p.skipped for p in pushed)} revisions published, "
        f"{sum(p.skipped for p in pushed)} unchanged"
    )
    _report(results, "models processed", quiet=True)


@app.command("pull")
def pull_cmd(
    model_id: Annotated[
        str, typer.Argument(help="ID (in the default org) or ORG/ID, e.g. hopper-1L-seed0.")
    ],
    revision: RevisionOpt = "main",
    hub: HubOpt = None,
    org: OrgOpt = None,
) -> None:
    """Download (cached, verified) any dtzoo model; the last line printed is its directory."""
    from dtzoo import zoo

    path = zoo.pull(model_id, registry(), revision=revision, hub=hub, org=org)
    print(path)


@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Argument(help="Model id, ORG/ID or model directory.")],
    out_dir: Annotated[str, typer.Option("--out", help="Directory to write.")],
    fmt: Annotated[
        Literal["transformers"], typer.Option("--format", help="Output format.")
    ] = "transformers",
    revision: RevisionOpt = "main",
    hub: HubOpt = None,
    org: OrgOpt = None,
) -> None:
    """Write a transformers DecisionTransformerModel directory (from_pretrained loads it)."""
    from dtzoo import zoo

    print(zoo.export_model(model, out_dir, registry(), revision=revision, hub=hub, org=org))


@app.command("import")
def import_cmd(
    src: Annotated[str, typer.Argument(help="A transformers DT checkpoint directory.")],
    env: Annotated[str, typer.Option(help="Registry env the model acts in.")],
    name: Annotated[str, typer.Option(help="Model id to give it, e.g. hopper-3L-seed0.")],
) -> None:
    """Turn a transformers DecisionTransformerModel checkpoint into a dtzoo model."""
    from pathlib import Path

    from dtzoo import zoo

    if not Path(src).is_dir():
        raise typer.BadParameter(
            f"{src} is not a directory (download it first, e.g. with "
            "`hf download REPO --local-dir DIR`)",
            param_hint="SRC",
        )
    print(zoo.import_model(Path(src), env, name, registry()))


# ----------------------------------------------------------------------------- status


@app.command("status")
def status_cmd(
    ids: IdsArg = None,
    grid: GridOpt = None,
    hub: HubOpt = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every cell's state from the files in DTZOO_HOME: pending, running, trained, evaluated,
    published."""
    from dtzoo import status

    reg = registry()
    model_ids = (
        [s.model_id for s in reg.select(grid, ids or [])] if grid or ids else reg.all_model_ids()
    )
    rows = status.grid_status(reg, model_ids, hub=hub, org=org)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    style = {
        "pending": "dim",
        "running": "yellow",
        "trained": "cyan",
        "evaluated": "blue",
        "published": "green",
    }
    table = Table("model", "state", "step", "detail", title=f"status ({grid or 'all'})")
    for r in rows:
        table.add_row(
            r["model_id"],
            f"[{style[r['state']]}]{r['state']}[/]",
            "" if r["step"] is None else str(r["step"]),
            r["detail"],
        )
    out.print(table)
    counts = {k: sum(r["state"] == k for r in rows) for k in style}
    err.print(", ".join(f"{n} {k}" for k, n in counts.items()))


# ----------------------------------------------------------------------------- shared


def _run_cells(ex, kind: str, names: list[str], options: dict):
    """Hand the cells to the executor (grid.py holds the rules); a bar counts finished cells,
    and cells trained in this process get a bar of their own."""
    if ex.name == "slurm" and ex.cluster_name() != "slurm":  # plain print: one line
        print(
            "note: no SLURM here (sbatch not found): submitit runs the cells as local subprocesses",
            file=sys.stderr,
        )
    with progress_bar() as bar:
        task = bar.add_task(f"{kind} ({ex.name})", total=len(names), info="")

        def done(result) -> None:
            bar.update(task, advance=1, info=f"{result.model_id}: {result.status}")

        def cell_bar(name: str):
            cell = bar.add_task(name, total=None, info="")

            def tick(done: int, total: int, loss: float | None = None) -> None:
                info = "" if loss is None else f"loss {loss:.4f}"
                bar.update(cell, completed=done, total=total, info=info)

            return tick

        return ex.run(kind, names, options, on_done=done, progress=cell_bar)


def _report(results, verb: str, quiet: bool = False) -> None:
    """One line per cell on stderr; exit 1 if any cell failed."""
    failed = [r for r in results if not r.ok]
    if not quiet:
        for r in results:
            err.print(f"{r.model_id}: {r.status}" + (f" ({r.detail})" if r.detail else ""))
    for r in failed:  # plain print: one line each, however narrow the terminal
        print(f"{r.model_id} failed: {r.detail}", file=sys.stderr)
    done = sum(r.status in ("done", "resumed") for r in results)
    err.print(
        f"{done} {verb}, {sum(r.status == 'skipped' for r in results)} skipped, "
        f"{len(failed)} failed"
    )
    if failed:
        raise typer.Exit(1)


def main() -> None:
    """Console entry point: user errors become one line and a non-zero exit, not a traceback."""
    try:
        code = app(standalone_mode=False)
    except DtzooError as e:
        print(f"error: {e}", file=sys.stderr)  # one plain line: rich would wrap it
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # option errors: one line, not typer's box
        if type(e).__name__ != "NoArgsIsHelpError":
            print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    if code == 130:  # Ctrl-C: typer turns it into Exit(130), which app() returns here
        print("interrupted: run the same command again to resume", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
