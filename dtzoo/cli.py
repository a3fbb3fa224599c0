"""The `dtzoo` command line: parse, delegate to dtzoo.zoo, print. No logic lives here.

Data goes to stdout (tables, JSON, paths); progress and notes go to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dtzoo import __version__
from dtzoo.errors import DtzooError

app = typer.Typer(help="dtzoo: a model zoo and checkpoint hub for Decision Transformers.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Datasets: prepare, inspect.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# wide tables when piped (rich would wrap them at 80 columns)
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

GridOpt = Annotated[Optional[str], typer.Option("--grid", "-g", help="A grid from the registry.")]
IdsArg = Annotated[Optional[list[str]], typer.Argument(help="Model ids, e.g. pendulum-1L-seed0.", show_default=False)]
HubOpt = Annotated[Optional[str], typer.Option("--hub", help="local or hf (default $DTZOO_HUB or local).")]
OrgOpt = Annotated[Optional[str], typer.Option("--org", help="Hub org (default $DTZOO_ORG or hub.org).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]

_registry_path: str | None = None


def registry():
    from dtzoo.registry import load_registry

    return load_registry(_registry_path)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err,
                    transient=False)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"dtzoo {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    registry_file: Annotated[Optional[str], typer.Option(
        "--registry", envvar="DTZOO_REGISTRY", help="Registry YAML (default: the bundled one).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    global _registry_path
    _registry_path = registry_file


# ----------------------------------------------------------------------------- list


@app.command("list")
def list_cmd(grid: GridOpt = None, hub: HubOpt = None, org: OrgOpt = None,
             as_json: JsonOpt = False) -> None:
    """The registry's model ids and their state (prepared / trained / evaluated / published)."""
    from dtzoo import zoo

    reg = registry()
    ids = reg.grid(grid) if grid else reg.all_model_ids()
    published = zoo.published_ids(reg, hub, org)
    states = [zoo.model_state(reg.resolve(m), published) for m in ids]
    if as_json:
        out.print_json(json.dumps([{**s.__dict__, "state": s.label} for s in states]))
        return
    table = Table("model", "prepared", "trained", "evaluated", "published", "step")
    mark = lambda b: "[green]yes[/]" if b else "[dim]-[/]"  # noqa: E731
    for s in states:
        table.add_row(s.model_id, mark(s.prepared), mark(s.trained), mark(s.evaluated),
                      mark(s.published), str(s.step if s.step is not None else ""))
    out.print(table)


# ----------------------------------------------------------------------------- data


@data_app.command("prepare")
def data_prepare(envs: Annotated[list[str], typer.Argument(help="Env keys, e.g. pendulum.")],
                 overwrite: Annotated[bool, typer.Option(help="Rebuild even if present.")] = False) -> None:
    """Make each env's dataset available locally (prepared here, or downloaded via Minari)."""
    from dtzoo import zoo

    reg = registry()
    specs = [reg.env(e) for e in envs]
    for env in specs:
        with err.status(f"preparing {env.dataset} ..."):
            path = zoo.prepare_env(env, overwrite=overwrite)
        out.print(f"{env.key}: {env.dataset} -> {path}")


# ----------------------------------------------------------------------------- train / eval


@app.command()
def train(ids: IdsArg = None, grid: GridOpt = None,
          steps: Annotated[Optional[int], typer.Option(help="Override the recipe's step count.", min=1)] = None,
          device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto") -> None:
    """Train what is not trained yet; unfinished runs resume from their last checkpoint."""
    from dtzoo import grid as executor
    from dtzoo import zoo

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("use auto, cpu or cuda", param_hint="--device")
    reg = registry()
    specs = reg.select(grid, ids or [])
    with progress_bar() as bar:
        def cell(spec):
            task = bar.add_task(spec.model_id, total=steps or spec.recipe.steps, info="")

            def tick(step: int, total: int, loss: float) -> None:
                bar.update(task, completed=step, info=f"loss {loss:.4f}")

            return zoo.train_cell(spec, reg, steps=steps, device=device, progress=tick)

        results = executor.run_cells(specs, cell, skip=executor.already_trained, lock=True)
    _report(results, "trained")


@app.command("eval")
def eval_cmd(ids: IdsArg = None, grid: GridOpt = None,
             episodes: Annotated[Optional[int], typer.Option(help="Episodes per target return.", min=1)] = None,
             as_json: JsonOpt = False) -> None:
    """Roll the trained models out; write eval.json and print their leaderboard."""
    from dtzoo import grid as executor
    from dtzoo import zoo
    from dtzoo.leaderboard import leaderboard_rows

    reg = registry()
    specs = reg.select(grid, ids or [])
    with progress_bar() as bar:
        task = bar.add_task("evaluating", total=len(specs), info="")

        def cell(spec):
            bar.update(task, info=spec.model_id)
            report = zoo.eval_cell(spec, reg, episodes=episodes)
            bar.advance(task)
            return report

        results = executor.run_cells(specs, cell)
    reports = [r.value for r in results if r.ok]
    if as_json:
        out.print_json(json.dumps({"models": reports, "leaderboard": leaderboard_rows(reports)}))
    else:
        _print_leaderboard(leaderboard_rows(reports))
    _report(results, "evaluated", quiet=True)


@app.command()
def leaderboard(grid: GridOpt = None,
                fmt: Annotated[str, typer.Option("--format", "-f", help="table, markdown, csv or json.")] = "table") -> None:
    """Mean ± std over seeds for every env x layers x target return."""
    from dtzoo import zoo
    from dtzoo.leaderboard import leaderboard_rows, render

    if fmt not in ("table", "markdown", "csv", "json"):
        raise typer.BadParameter("use table, markdown, csv or json", param_hint="--format")
    reg = registry()
    rows = leaderboard_rows(zoo.eval_reports(reg.grid(grid) if grid else reg.all_model_ids()))
    if not rows:
        err.print("no evaluated models yet: run `dtzoo eval --grid NAME`")
    if fmt == "table":
        _print_leaderboard(rows)
    else:
        out.print(render(rows, fmt), markup=False, highlight=False)


def _print_leaderboard(rows: list[dict]) -> None:
    from dtzoo.leaderboard import COLUMNS, HEADERS, _cell

    table = Table(*(HEADERS[c] for c in COLUMNS), title="leaderboard (mean ± std over seeds)")
    for r in rows:
        table.add_row(*(_cell(r, c) for c in COLUMNS))
    out.print(table)


# ----------------------------------------------------------------------------- hubs


@app.command()
def publish(ids: IdsArg = None, grid: GridOpt = None, hub: HubOpt = None, org: OrgOpt = None,
            checkpoints: Annotated[bool, typer.Option(help="Also publish step<N> revisions.")] = False) -> None:
    """Publish trained models: weights, config, model card, plots (main, and step<N>)."""
    from dtzoo import grid as executor
    from dtzoo import zoo

    reg = registry()
    specs = reg.select(grid, ids or [])
    with progress_bar() as bar:
        task = bar.add_task("publishing", total=len(specs), info="")

        def cell(spec):
            bar.update(task, info=spec.model_id)
            res = zoo.publish_cell(spec, reg, hub=hub, org=org, checkpoints=checkpoints)
            bar.advance(task)
            return res

        results = executor.run_cells(specs, cell)
    table = Table("repo", "revision", "commit", "url", "status")
    for r in results:
        for p in r.value or []:
            table.add_row(p.repo_id, p.revision, p.commit[:12], p.url,
                          "unchanged (skipped)" if p.skipped else "published")
    out.print(table)
    _report(results, "published", quiet=True)


@app.command("pull")
def pull_cmd(model_id: Annotated[str, typer.Argument(help="e.g. pendulum-1L-seed0")],
             revision: Annotated[str, typer.Option(help="main, step<N> or a commit.")] = "main",
             hub: HubOpt = None, org: OrgOpt = None) -> None:
    """Download (cached, verified) a model; the last line printed is its local directory."""
    from dtzoo import zoo

    path = zoo.pull(model_id, registry(), revision=revision, hub=hub, org=org)
    print(path)


# ----------------------------------------------------------------------------- shared


def _report(results, verb: str, quiet: bool = False) -> None:
    """One line per cell on stderr; exit 1 if any cell failed."""
    failed = [r for r in results if not r.ok]
    if not quiet:
        for r in results:
            err.print(f"{r.model_id}: {r.status}" + (f" ({r.detail})" if r.detail else ""))
    for r in failed:
        err.print(f"[red]{r.model_id} failed:[/] {r.detail}", markup=True)
    done = sum(r.status in ("done", "resumed") for r in results)
    err.print(f"{done} {verb}, {sum(r.status == 'skipped' for r in results)} skipped, {len(failed)} failed")
    if failed:
        raise typer.Exit(1)


def main() -> None:
    """Console entry point: user errors become one line and a non-zero exit, not a traceback."""
    try:
        app()
    except DtzooError as e:
        print(f"error: {e}", file=sys.stderr)  # one plain line: rich would wrap it
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted: run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
