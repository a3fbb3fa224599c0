"""Where each model of the grid stands: on this machine (prepared, running, trained,
evaluated) and on the hub (published, stale, missing). `dtzoo list` and `dtzoo status` print it.

    >>> grid_status(reg, reg.grid("tiny"))[0]["state"]      # "running", "trained", ...
    >>> remote_status(reg, grid="tiny", hub="hf")[0]["status"]  # "published", "stale", ...
"""

from __future__ import annotations

from dataclasses import dataclass

from dtzoo.data import dataset_exists
from dtzoo.fsutil import read_json
from dtzoo.hub import get_hub
from dtzoo.locate import org_for
from dtzoo.modeldir import EVAL, RunDir
from dtzoo.registry import ModelSpec, Registry


@dataclass
class ModelState:
    model_id: str
    prepared: bool
    trained: bool
    evaluated: bool
    published: bool | None  # None: the hub could not be asked
    step: int | None = None

    @property
    def label(self) -> str:
        for name in ("published", "evaluated", "trained", "prepared"):
            if getattr(self, name):
                return name
        return "pending"


def model_state(spec: ModelSpec, published: set[str] | None = None) -> ModelState:
    run = RunDir.of(spec.model_id)
    trained = run.is_trained()
    return ModelState(
        model_id=spec.model_id,
        prepared=dataset_exists(spec.env.dataset),
        trained=trained,
        evaluated=trained and run.file(EVAL).is_file(),
        published=None if published is None else spec.model_id in published,
        step=run.step() if trained else None,
    )


def grid_status(
    registry: Registry, model_ids: list[str], hub: str | None = None, org: str | None = None
) -> list[dict]:
    """Every cell's state from the files in DTZOO_HOME (and the hub's model list):
    `running` (another process holds the run's lock, or a resume state exists without a final
    model: an unfinished run, live or interrupted), else `published` / `evaluated` / `trained`,
    else `pending`. Rows: model_id, state, step (the final model's, or the newest resume
    state's), locked, detail."""
    from dtzoo.grid import lock_held

    published, _ = published_ids_or_none(registry, hub, org)  # offline: published unknown
    rows = []
    for mid in model_ids:
        spec = registry.resolve(mid)
        st = model_state(spec, published)
        locked = lock_held(mid)
        states = [] if st.trained else RunDir.of(mid).resume_states()
        resume = states[-1] if states else None
        step, detail = st.step, ""
        if resume is not None:
            step = resume[0]
        if locked:
            state, detail = "running", "run lock held"
        elif resume is not None:
            state, detail = "running", f"unfinished: resume state at step {step}, lock free"
        else:
            state = st.label if st.label != "prepared" else "pending"
        rows.append(
            {
                "model_id": mid,
                "state": state,
                "step": step,
                "locked": locked,
                "prepared": st.prepared,
                "trained": st.trained,
                "evaluated": st.evaluated,
                "published": st.published,
                "detail": detail,
            }
        )
    return rows


def published_ids(registry: Registry, hub: str | None = None, org: str | None = None) -> set[str]:
    h = get_hub(hub)
    return {r.split("/", 1)[1] for r in h.list_models(org_for(registry, org))}


def published_ids_or_none(
    registry: Registry, hub: str | None = None, org: str | None = None
) -> tuple[set[str] | None, str]:
    """`published_ids`, or (None, why) when the hub cannot be asked (offline): `dtzoo list` and
    `dtzoo status` still show everything they know from this machine."""
    from dtzoo.errors import HubError

    try:
        return published_ids(registry, hub, org), ""
    except HubError as e:
        return None, str(e)


def remote_status(
    registry: Registry, grid: str | None = None, hub: str | None = None, org: str | None = None
) -> list[dict]:
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
            rows.append(
                {
                    "model_id": mid,
                    "repo_id": f"{org}/{mid}",
                    "status": "missing",
                    "sha": None,
                    "last_modified": None,
                    "results": [],
                }
            )
            continue
        status = "published" if mid in ids else "not in registry"
        local = RunDir.of(mid).file(EVAL)
        if (
            mid in ids
            and local.is_file()
            and _local_results(read_json(local)) != _card_key(r["results"])
        ):
            status = "stale"
        rows.append(
            {
                "model_id": mid,
                "repo_id": r["repo_id"],
                "status": status,
                "sha": r["sha"],
                "last_modified": r["last_modified"],
                "results": r["results"],
            }
        )
    return rows


def _local_results(report: dict) -> list[tuple]:
    """eval.json as the card rounds it (card.eval_results: 2 decimals)."""
    return sorted(
        (float(x["target_return"]), round(x["return_mean"], 2), round(x["normalized_mean"], 2))
        for x in report.get("results", [])
    )


def _card_key(results: list[dict]) -> list[tuple]:
    return sorted(
        (r["target_return"], r.get("mean_reward"), r.get("normalized_score"))
        for r in results
        if r.get("target_return") is not None
    )
