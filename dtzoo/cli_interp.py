"""`dtzoo interp ...`: interpretability commands. Parse, delegate to dtzoo.interp, print.

Each command loads MODEL (a model id, ORG/ID, or a model directory) with `dtzoo.load`, runs
one helper from dtzoo.interp (which writes JSON + PNG under --out) and prints the result.
TransformerLens and matplotlib are imported only inside the commands, so `dtzoo --help` stays
fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

interp_app = typer.Typer(
    help="Interpretability: activation patching, RTG scan, direct "
    "attribution, attention (TransformerLens-compatible hooks).",
    no_args_is_help=True,
)

ModelArg = Annotated[
    str, typer.Argument(help="A model id, ORG/ID, or a model directory.", show_default=False)
]
OutOpt = Annotated[
    Optional[Path],
    typer.Option("--out", help="Output directory (default ./interp/<model id>[@revision])."),
]
RevisionOpt = Annotated[str, typer.Option("--revision", help="main or step<N>.")]
HubOpt = Annotated[
    Optional[str], typer.Option("--hub", help="local or hf (default $DTZOO_HUB or local).")
]
OrgOpt = Annotated[
    Optional[str], typer.Option("--org", help="Hub org (default $DTZOO_ORG or hub.org).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
AtOpt = Annotated[
    Optional[int],
    typer.Option(
        "--at",
        min=0,
        help="Episode step whose context window is analysed (default: context_len; "
        "patch: the step where the two returns-to-go change the action most).",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Env seed of the rollout.")]
TargetOpt = Annotated[
    Optional[float],
    typer.Option("--target", help="Target return of the rollout (default: the model's first)."),
]


def load_model(model: str, revision: str, hub: Optional[str], org: Optional[str]):
    """MODEL as a HookedDecisionTransformer, eval mode. Loaded before TransformerLens is
    imported (seconds), so a bad id fails fast."""
    from dtzoo.api import load
    from dtzoo.families import require_dt

    net = load(model, revision=revision, hub=hub, org=org)
    require_dt(net.config, "dtzoo interp")  # (its commands read return conditioning)
    from dtzoo.interp import to_transformer_lens

    return to_transformer_lens(net)


def out_dir(model, out: Optional[Path], revision: str) -> Path:
    if out is not None:
        return out
    name = model.config.model_id + ("" if revision == "main" else f"@{revision}")
    return Path("interp") / name


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    """JSON on stdout with --json; else a few readable lines, then the files written."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for line in lines:
        print(line)
    for key in ("json", "png"):
        if result.get("files", {}).get(key):
            print(result["files"][key])


@interp_app.command("patch")
def patch_cmd(
    model: ModelArg,
    source: Annotated[
        float, typer.Option("--from", help="Target return whose activations are patched in.")
    ],
    dest: Annotated[float, typer.Option("--to", help="Target return of the run patched into.")],
    at: AtOpt = None,
    seed: SeedOpt = 0,
    out: OutOpt = None,
    revision: RevisionOpt = "main",
    hub: HubOpt = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Activation patching between two returns-to-go on a real rollout.

    For each (hook, token R/s/a, step): the share of the action change it carries.
    Writes patch.json and patch.png."""
    from dtzoo.errors import UsageError

    if source == dest:
        raise UsageError(f"--from and --to are both {source:g}: patch between two returns-to-go")
    m = load_model(model, revision, hub, org)
    from dtzoo import interp

    r = interp.patch(m, source, dest, at=at, seed=seed, out_dir=out_dir(m, out, revision))
    top = r["top"][:5]
    if r["action_change"] < 1e-3:  # plain print to stderr: one line
        print(
            f"note: the action changes by only {r['action_change']:.1e} here: the shares are "
            "noisy; try another --at or targets further apart",
            file=sys.stderr,
        )
    emit(
        r,
        as_json,
        [f"action at RTG {source:g}: {fmt(r['action_from'])}, at {dest:g}: {fmt(r['action_to'])}"]
        + [
            f"  {t['hook']:<28} {t['kind']} t={t['step']:<4} recovers {t['recovered']:+.3f}"
            for t in top
        ],
    )


@interp_app.command("rtg-scan")
def rtg_scan_cmd(
    model: ModelArg,
    targets: Annotated[
        Optional[str],
        typer.Option(
            "--targets", help="LO:HI:N target returns (default: random score to 1.5x expert)."
        ),
    ] = None,
    at: AtOpt = None,
    seed: SeedOpt = 0,
    target: TargetOpt = None,
    out: OutOpt = None,
    revision: RevisionOpt = "main",
    hub: HubOpt = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """In-context RTG scan: action and attention as the return-to-go varies.

    As DTI's show_rtg_scan. Writes rtg_scan.json and rtg_scan.png."""
    from dtzoo.evaluate import parse_targets

    spec = parse_targets(targets) if targets else None  # bad input fails before the load
    m = load_model(model, revision, hub, org)
    from dtzoo import interp

    r = interp.rtg_scan(
        m, targets=spec, at=at, seed=seed, target=target, out_dir=out_dir(m, out, revision)
    )
    emit(
        r,
        as_json,
        [f"target {t:>10.1f}  action {fmt(a)}" for t, a in zip(r["targets"], r["actions"])],
    )


@interp_app.command("attribute")
def attribute_cmd(
    model: ModelArg,
    at: AtOpt = None,
    seed: SeedOpt = 0,
    target: TargetOpt = None,
    out: OutOpt = None,
    revision: RevisionOpt = "main",
    hub: HubOpt = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Direct action attribution per component (embeddings, heads, MLPs, biases).

    The components sum to the pre-tanh action. Writes attribution.json and attribution.png."""
    m = load_model(model, revision, hub, org)
    from dtzoo import interp

    r = interp.attribute(m, at=at, seed=seed, target=target, out_dir=out_dir(m, out, revision))
    lines = [f"pre-tanh action {fmt(r['pre_tanh'])} = sum of components {fmt(r['total'])}"]
    lines += [f"  {c:<12} {fmt(v)}" for c, v in zip(r["labels"], r["attribution"])]
    emit(r, as_json, lines)


@interp_app.command("attention")
def attention_cmd(
    model: ModelArg,
    at: AtOpt = None,
    seed: SeedOpt = 0,
    target: TargetOpt = None,
    out: OutOpt = None,
    revision: RevisionOpt = "main",
    hub: HubOpt = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Attention summaries by token kind (R/s/a), per layer and head.

    How much each query kind attends to each key kind and to its own step.
    Writes attention.json and attention.png."""
    m = load_model(model, revision, hub, org)
    from dtzoo import interp

    r = interp.attention(m, at=at, seed=seed, target=target, out_dir=out_dir(m, out, revision))
    lines = []
    for head in r["heads"]:
        lines.append(
            f"L{head['layer']}H{head['head']}: state token attends "
            + ", ".join(f"{k} {v:.2f}" for k, v in head["by_kind"]["s"].items())
            + f"; own step {head['own_step']['s']:.2f}"
        )
    emit(r, as_json, lines)


@interp_app.command("probe")
def probe_cmd(
    model: ModelArg,
    targets: Annotated[
        list[str],
        typer.Option("--target", help="rtg, timestep, action or state\\[i] (repeatable)."),
    ] = ["rtg"],  # noqa: B006
    hooks: Annotated[
        Optional[list[str]],
        typer.Option(
            "--hook",
            help="Hook point (repeatable; default: resid_pre of block 0 and every resid_post).",
        ),
    ] = None,
    token: Annotated[str, typer.Option("--token", help="Token read: R, s or a.")] = "s",
    source: Annotated[
        str, typer.Option("--source", help="auto, data (held-out episodes) or rollout.")
    ] = "auto",
    out: OutOpt = None,
    hub: HubOpt = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Linear probes at every revision: R² (accuracy for discrete actions) against step.

    Closed-form ridge (logistic for discrete) on held-out episodes' activations, fit on half
    the episodes and scored on the rest. Writes probe.json and probe.png."""
    from dtzoo.dynamics import write_probe_report

    r = write_probe_report(
        model, targets, hooks, token=token, source=source, out_dir=out, hub=hub, org=org
    )
    lines = [
        f"{len(r['steps'])} revisions (steps {r['steps'][0]}..{r['steps'][-1]}); {r['source']}"
    ]
    for h in r["hooks"]:
        for t in r["targets"]:
            s = r["scores"][h][t]
            lines.append(
                f"  {h:<28} {t:<10} {r['metric'][t]} first {s[0]:+.3f} "
                f"final {s[-1]:+.3f} best {max(s):+.3f}"
            )
    emit(r, as_json, lines)


@interp_app.command("report")
def report_cmd(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    episodes: Annotated[
        int, typer.Option("--episodes", min=1, help="Episodes per sweep target.")
    ] = 3,
    targets: Annotated[
        Optional[str],
        typer.Option(
            "--targets", help="Sweep targets LO:HI:N (default: random score to 1.5x expert)."
        ),
    ] = None,
    probe_targets: Annotated[
        str, typer.Option("--probe-targets", help="Comma-separated probe targets.")
    ] = "rtg,timestep",
    no_probes: Annotated[
        bool, typer.Option("--no-probes", help="Skip probes across training.")
    ] = False,
    seed: SeedOpt = 0,
    hub: HubOpt = None,
    org: OrgOpt = None,
) -> None:
    """One self-contained HTML page: attention on a rollout, RTG sweep, patching, probes."""
    from rich.console import Console

    from dtzoo.evaluate import parse_targets
    from dtzoo.report import write_report

    err = Console(stderr=True)
    path = write_report(
        model,
        out,
        note=lambda m: err.print(f"report: {m}"),
        hub=hub,
        org=org,
        episodes=episodes,
        seed=seed,
        targets=parse_targets(targets) if targets else None,
        probe_targets=tuple(t for t in probe_targets.split(",") if t),
        probes=not no_probes,
    )
    print(path)


def fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(f"{x:+.4f}" for x in v) + "]"
    return f"{v:+.4f}"


__all__ = ["interp_app"]
