"""Where a model to use comes from: a run trained here, a hub snapshot, or a directory.

Every consumer command (`dtzoo eval`, `export`, `data collect`, `dtzoo.load`) takes one string:

    pendulum-1L-seed0          trained on this machine? its run directory; else pulled from the hub
    someone/hopper-1L-seed0    pulled from the hub (any org; the env need not be in the registry)
    ./my-model                 a model directory (a run directory takes --revision step<N> too)

    >>> ref = locate("dtzoo/hopper-1L-seed0", registry, revision="step64")
    >>> ref.path, ref.repo_id, ref.commit

The registry is needed to train a model, not to use one: a pulled model's config.json holds
everything (state statistics, action space, gym id, reference scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dtzoo.checkpoint import read_config
from dtzoo.errors import HubError, UsageError
from dtzoo.hub import check_revision, get_hub, repo_id
from dtzoo.modeldir import REQUIRED_FILES, ModelDir, RunDir, revision_step
from dtzoo.registry import MODEL_ID_RE, Registry


@dataclass(frozen=True)
class ModelRef:
    """A located model directory and where it came from (`source`: run, hub or dir)."""

    path: Path
    model_id: str
    source: str
    revision: str = "main"
    repo_id: str | None = None
    commit: str | None = None  # the hub's commit, or a content hash of weights + config

    @property
    def trained_here(self) -> bool:
        """The final model of a run of this machine: its evaluations go into its card."""
        return self.source == "run" and self.revision == "main"

    def describe(self) -> dict:
        """The provenance recorded beside an evaluation."""
        return {
            "source": self.source,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "path": str(self.path),
        }


def org_for(registry: Registry, org: str | None = None) -> str:
    """The hub org: `--org`, else $DTZOO_ORG, else the registry's `hub.org`."""
    import os

    return org or os.environ.get("DTZOO_ORG") or registry.org


def hub_repo_id(model: str, registry: Registry, org: str | None = None) -> str:
    """`ORG/ID` as given, or `ID` in the default org: `hub_repo_id("hopper-1L-seed0", reg)`;
    a UsageError for a name the Hub would reject (on every hub, so names stay portable)."""
    from dtzoo.hub.common import check_repo_id

    return check_repo_id(model if "/" in model else repo_id(org_for(registry, org), model))


def content_hash(model_dir: Path) -> str:
    """A 40-hex id of a model directory's weights and config (its manifest's sha256 sums)."""
    return ModelDir(model_dir).content_hash()


def revision_dir(run: Path, revision: str) -> Path:
    """A run directory's model for `revision`: the run itself for main, else its
    checkpoints/<revision>; a UsageError if that checkpoint does not exist."""
    check_revision(revision)
    d = RunDir(run)
    ckpt = d.revision(revision).path
    if not ckpt.is_dir():
        raise UsageError(f"{run} has no checkpoint {revision!r} (looked in {d.checkpoints_dir})")
    return ckpt


def _is_dir(path: Path) -> bool:
    """`path.is_dir()`, False for a name no file system takes (e.g. too long: ENAMETOOLONG)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def local_run(model_id: str, revision: str = "main") -> Path | None:
    """The directory of `model_id` at `revision` if it was trained here, else None."""
    if not MODEL_ID_RE.fullmatch(model_id):  # (never a path: "../x" is not a run)
        return None
    run = RunDir.of(model_id)
    if revision == "main":
        return run.path if run.is_trained() else None
    ckpt = run.revision(revision)
    return ckpt.path if revision_step(revision) is not None and ckpt.is_model_dir() else None


def locate(
    model: str,
    registry: Registry,
    revision: str = "main",
    hub: str | None = None,
    org: str | None = None,
) -> ModelRef:
    """Find `model` (a directory, a model id trained here, or `[ORG/]ID` on the hub)."""
    check_revision(revision)
    path = Path(model).expanduser()
    if _is_dir(path):
        d = revision_dir(path, revision)
        ModelDir(d).verify(only=REQUIRED_FILES)  # a damaged file says so before it is read
        return ModelRef(d, read_config(d).model_id, "dir", revision, commit=content_hash(d))
    if "/" not in model:
        run = local_run(model, revision)
        if run is not None:
            commit = None if revision == "main" else content_hash(run)
            return ModelRef(run, model, "run", revision, commit=commit)
    rid = hub_repo_id(model, registry, org)
    try:
        snap = get_hub(hub).pull(rid, revision)
    except HubError as e:
        if "/" not in model and model in registry.all_model_ids():
            raise HubError(
                f"{model} is not trained here (`dtzoo train {model}`), and {e}"
            ) from None
        raise
    config = read_config(snap)
    return ModelRef(snap, config.model_id, "hub", revision, repo_id=rid, commit=snap.name)
