"""The model card (README.md), built with huggingface_hub's ModelCard / ModelCardData / EvalResult.

    >>> card = build_card(config, eval_report, org="dtzoo", license="mit")
    >>> card.save(run / "README.md")
    >>> write_card(run, registry)       # a model directory's card from its files, then sealed

The YAML metadata carries numeric results in `model-index` (mean return and normalised score
per target return), so the Hub and `dtzoo list --remote` can sort and compare them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtzoo.architecture import ARCHITECTURE_KEYS, Architecture
from dtzoo.checkpoint import ModelConfig
from dtzoo.families import TT
from dtzoo.modeldir import CARD, EVAL, PLOTS, SWEEP, VIDEO

if TYPE_CHECKING:
    from dtzoo.registry import Registry

TAGS = ["decision-transformer", "reinforcement-learning", "offline-rl", "interpretability", "dtzoo"]
# Minari's remote datasets are Hub dataset repos: `mujoco/hopper/medium-v0` lives in the repo
# `farama-minari/mujoco` (Minari's HF remote splits off the first path component)
MINARI_HUB_ORG = "farama-minari"
MINARI_NAMESPACES = ("mujoco", "D4RL", "atari", "minigrid")


def hub_dataset(dataset_id: str) -> str | None:
    """The Hub dataset repo of a Minari dataset id, or None for data prepared locally:
    `hub_dataset("mujoco/hopper/medium-v0")` -> "farama-minari/mujoco"."""
    root = dataset_id.split("/", 1)[0]
    return f"{MINARI_HUB_ORG}/{root}" if root in MINARI_NAMESPACES else None


def eval_results(config: ModelConfig, report: dict | None) -> list:
    from huggingface_hub import EvalResult

    if not report:
        return []
    out = []
    for r in report["results"]:
        target = r["target_return"]  # None: a Trajectory Transformer's planned episodes
        how = "beam search" if target is None else f"target {target:g}"
        common = dict(
            task_type="reinforcement-learning",
            task_name="Offline reinforcement learning",
            dataset_type=config.dataset["id"],
            dataset_name=f"{config.env['gym_id']} ({config.dataset['id']})",
            dataset_config="planning" if target is None else f"target_return={target:g}",
            metric_args={"episodes": report["episodes"], "target_return": target},
        )
        out.append(
            EvalResult(
                metric_type="mean_reward",
                metric_value=round(r["return_mean"], 2),
                metric_name=f"mean return ({how})",
                **common,
            )
        )
        out.append(
            EvalResult(
                metric_type="normalized_score",
                metric_value=round(r["normalized_mean"], 2),
                metric_name=f"normalised score ({how})",
                **common,
            )
        )
    return out


def sweep_table(sweep: dict) -> str:
    rows = ["| target return | achieved return | std | normalised score |", "|---:|---:|---:|---:|"]
    for r in sweep["results"]:
        rows.append(
            f"| {r['target_return']:.1f} | {r['return_mean']:.1f} | {r['return_std']:.1f} | "
            f"{r['normalized_mean']:.1f} |"
        )
    from dtzoo.evaluate import sweep_summary  # the data's best return, the expert score

    return "\n".join(rows) + f"\n\n{sweep_summary(sweep)}."


def results_table(report: dict) -> str:
    rows = [
        "| target return | mean return | std | normalised score | mean length | episodes |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        target = "planned" if r["target_return"] is None else f"{r['target_return']:g}"
        rows.append(
            f"| {target} | {r['return_mean']:.1f} | {r['return_std']:.1f} | "
            f"{r['normalized_mean']:.1f} | {r['length_mean']:.0f} | {report['episodes']} |"
        )
    return "\n".join(rows)


def tags(config: ModelConfig) -> list[str]:
    """The card's tags: the family's name in place of the DT's, the env key and gym id."""
    family = ["trajectory-transformer"] if config.family == TT else []
    base = [t for t in TAGS if not (family and t == "decision-transformer")]
    return family + base + [config.env["key"], config.env["gym_id"]]


def _first_target(config: ModelConfig) -> str:
    return f"{config.target_returns[0]:g}" if config.target_returns else "-"


def _agent_line(config: ModelConfig) -> str:
    if config.family == TT:
        return (
            "agent = dtzoo.make_agent(model)   # beam search with config.json's planning settings"
        )
    return (
        f"agent = dtzoo.Agent(model, target_return={_first_target(config)})"
        "   # model.config has the rest"
    )


def _needs(config: ModelConfig) -> str:
    if config.family == TT:
        return "the discretizer's bin edges, the planning settings"
    return "state mean/std, reward scale"


def _dt_rows(config: ModelConfig) -> str:
    """The DT's rows of the training table (a setting beyond them gets a row of its own:
    config.json has it only where it differs from its default)."""
    a = config.architecture
    settings = {f.name for f in dataclasses.fields(Architecture)} - set(ARCHITECTURE_KEYS)
    more = "".join(f"\n| {k} | {v} |" for k, v in a.items() if k in settings)
    return (
        f"\n| context length / max episode length | {a['context_len']} / {a['max_ep_len']} |"
        f"{more}\n| reward scale | {config.reward_scale:g} |"
    )


def _tt_rows(config: ModelConfig) -> str:
    a, plan = config.architecture, config.extra["planning"]
    disc = config.extra["discretizer"]
    return (
        f"\n| context (transitions) / bins | {a['context_len']} / {a['n_bins']} ({disc['kind']}) |"
        f"\n| loss weights action / reward / value | {a['action_weight']:g} / "
        f"{a['reward_weight']:g} / {a['value_weight']:g} |"
        f"\n| discount | {a['discount']:g} |"
        f"\n| planning: horizon / beam width / expand | {plan['horizon']} / "
        f"{plan['beam_width']} / {plan['n_expand']} |"
    )


def build_card(
    config: ModelConfig,
    report: dict | None,
    org: str,
    license: str = "mit",
    plots: list[str] = (),
    sweep: dict | None = None,
    video: str | None = None,
    video_note: str | None = None,
    transformers: bool = False,
):
    """A ModelCard for a model directory; `report` is eval.json (or None before evaluation),
    `sweep` is rtg_sweep.json (or None), `video` the replay's file name (or None, and then
    `video_note` says why), `transformers` whether the repo holds a `transformers/` folder."""
    from huggingface_hub import ModelCard, ModelCardData

    a = config.architecture
    rec = config.recipe
    data = ModelCardData(
        library_name="dtzoo",
        license=license,
        tags=tags(config),
        datasets=[hub_dataset(config.dataset["id"])] if hub_dataset(config.dataset["id"]) else None,
        model_name=config.model_id,
        eval_results=eval_results(config, report) or None,
        pipeline_tag="reinforcement-learning",
    )
    kind = "discrete" if config.action_space["kind"] == "discrete" else "continuous"
    results = results_table(report) if report else "_Not evaluated yet: run `dtzoo eval`._"
    figures = "\n".join(f"![{Path(p).stem}]({p})" for p in plots)
    repo = f"{org}/{config.model_id}"
    sweep_section = (
        ""
        if not sweep
        else f"""
## Return conditioning

Achieved return when the model is asked for each target return ({sweep["episodes"]} episodes
each). Where the achieved return stops following the target is where return conditioning ends.

{sweep_table(sweep)}
"""
    )
    tt = config.family == TT
    episode = (
        "One planned episode" if tt else f"One episode at target return {_first_target(config)}"
    )
    replay = (
        f'{episode}:\n\n<video src="{video}" controls width="360"></video>\n\n[{video}]({video})'
        if video
        else f"_{video_note or 'No replay video.'}_"
    )
    hf_snippet = (
        ""
        if not transformers
        else f"""
The same model as a transformers `DecisionTransformerModel` (same actions; our config is under
`"dtzoo"` in its config.json):

```python
from transformers import DecisionTransformerModel
hf = DecisionTransformerModel.from_pretrained("{repo}", subfolder="transformers")
```
"""
    )
    sizes = f"{a['n_layers']} / {a['d_model']} / {a['n_heads']} / {a['d_mlp']}"
    optimiser = (
        f"AdamW, lr {rec['lr']:g}, weight decay {rec['weight_decay']:g}, warm-up "
        f"{rec['warmup_steps']} steps, grad clip {rec['grad_clip']}"
    )
    rows = _tt_rows(config) if tt else _dt_rows(config)
    eval_how = "plan with beam search" if tt else "roll it out at its target returns"
    d = config.dataset
    dataset = (
        f"`{d['id']}` ({d['episodes']} episodes, {d['steps']} steps, minari {d['minari_version']})"
    )
    what = (
        "A Trajectory Transformer (Janner et al. 2021)"
        if tt
        else "A Decision Transformer (Chen et al. 2021)"
    )
    body = f"""
# {config.model_id}

{what} with {a["n_layers"]} layer(s) trained on
`{config.dataset["id"]}` for `{config.env["gym_id"]}` ({kind} actions), seed {config.seed},
step {config.step} of {config.total_steps}. Part of the dtzoo grids of small, comparable models
with training-time checkpoints (revisions `step<N>`) and TransformerLens-style hooks.

## Use it

```bash
pip install dtzoo
dtzoo pull {repo}                      # cached, verified; prints the local directory
dtzoo eval {repo}                      # {eval_how}
```

```python
import dtzoo
model = dtzoo.load("{repo}")            # or revision="step<N>" for a training-time checkpoint
{_agent_line(config)}
```
{hf_snippet}
`config.json` holds everything needed to act: {_needs(config)}, action bounds,
the gym id with its version. The weights are `model.safetensors`.

## Replay

{replay}

## Results

{results}

Normalised score = 100 x (return - random) / (expert - random), with reference returns
random = {config.env["ref_scores"]["random"]:g} and expert = {config.env["ref_scores"]["expert"]:g}.
{sweep_section}
## Training

| setting | value |
|---|---|
| layers / d_model / heads / d_mlp | {sizes} |{rows}
| activation / dropout | {a["activation"]} / {a["dropout"]} |
| optimiser | {optimiser} |
| batch / steps | {rec["batch_size"]} / {rec["steps"]} |
| dataset | {dataset} |
| dataset fingerprint | `{config.dataset["fingerprint"]}` |
| dtzoo version | {config.dtzoo_version} |

{figures}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


# ----------------------------------------------------------------------------- reading cards


MAX_CARD_ENTRIES = 10_000  # metrics read from one card's model-index (foreign YAML)


def card_results(model_index: Any) -> list[dict[str, Any]]:
    """Numeric eval results from a card's raw `model-index`, one dict per target return:
    `{"target_return": -150.0, "mean_reward": -984.79, "normalized_score": 22.49, "episodes": 2,
    "dataset": "dtzoo/pendulum/scripted-v0"}`.
    Values that are not numbers come back as None (never as strings). Read metric by metric,
    not with huggingface_hub's `model_index_to_eval_results`: that one walks every entry (an
    alias bomb in full) and fails whole on one missing key, while a foreign card's partial
    model-index still gives what it has."""
    rows: dict[Any, dict[str, Any]] = {}
    for result, metric in _metrics(model_index):
        dataset = result.get("dataset") if isinstance(result.get("dataset"), dict) else {}
        config = str(dataset.get("config") or "")
        args = metric.get("args") if isinstance(metric.get("args"), dict) else {}
        target = _number(args.get("target_return"))
        if target is None and config.startswith("target_return="):
            target = _number(config.split("=", 1)[1])
        row = rows.setdefault(target, {"target_return": target})
        if isinstance(dataset.get("type"), str):
            row["dataset"] = dataset["type"]
        if metric.get("type"):
            row[str(metric["type"])] = _number(metric.get("value"))
        if _number(args.get("episodes")) is not None:
            row["episodes"] = int(_number(args["episodes"]))
    return sorted(
        rows.values(), key=lambda r: (r["target_return"] is None, -(r["target_return"] or 0))
    )


def _metrics(model_index: Any) -> Iterator[tuple[dict, dict]]:
    """(result, metric) pairs of a raw model-index, at most MAX_CARD_ENTRIES of them: a card's
    YAML is foreign input (an alias bomb must not make us walk millions of entries)."""
    seen = 0
    for entry in model_index if isinstance(model_index, list) else []:
        results = entry.get("results") if isinstance(entry, dict) else None
        for result in results if isinstance(results, list) else []:
            metrics = result.get("metrics") if isinstance(result, dict) else None
            for metric in metrics if isinstance(metrics, list) else []:
                seen += 1
                if seen > MAX_CARD_ENTRIES:
                    return
                if isinstance(metric, dict):
                    yield result, metric


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- a directory's card


def _optional_json(model_dir: Path, name: str) -> dict | None:
    """A report beside the model, None where it is missing or unreadable."""
    from dtzoo.evals import read_report

    return read_report(model_dir / name) if (model_dir / name).is_file() else None


def build_model_card(
    model_dir: Path, registry: "Registry", org: str | None = None, transformers: bool = False
):
    """The card of a model directory, from config.json, eval.json, rtg_sweep.json and the
    plots and video beside them."""
    from dtzoo.checkpoint import read_config
    from dtzoo.locate import org_for
    from dtzoo.video import renderer_note

    config = read_config(model_dir)
    video = VIDEO if (model_dir / VIDEO).is_file() else None
    return build_card(
        config,
        _optional_json(model_dir, EVAL),
        org=org_for(registry, org),
        license=registry.license,
        plots=[p for p in PLOTS if (model_dir / p).is_file()],
        sweep=_optional_json(model_dir, SWEEP),
        video=video,
        video_note=None if video else renderer_note(config),
        transformers=transformers,
    )


def write_card(model_dir: Path, registry: "Registry", org: str | None = None) -> None:
    """(Re)write README.md of a model directory, then seal it (with the evaluations just added)."""
    from dtzoo.fsutil import atomic_write_text
    from dtzoo.modeldir import ModelDir

    atomic_write_text(model_dir / CARD, str(build_model_card(model_dir, registry, org)))
    ModelDir(model_dir).seal()
