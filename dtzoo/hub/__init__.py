"""Hub backends: where models are published and pulled from.

    >>> hub = get_hub()                              # "hf" (default), or $DTZOO_HUB, or "local"
    >>> result = hub.publish(run_dir, "dtzoo/pendulum-1L-seed0", revision="main")
    >>> path = hub.pull("dtzoo/pendulum-1L-seed0", revision="main")

Every backend has the same revision semantics: `main` is the final model, `step<N>` the
training-time checkpoints; a publish lands whole or not at all, and publishing unchanged files
makes no new commit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dtzoo.errors import UsageError

HUBS = ("hf", "local")
DEFAULT_HUB = "hf"  # the Hugging Face Hub; "local" (DTZOO_HUB=local) for offline work and tests
# used with fullmatch (a "$" would accept a final newline); steps without leading zeros and
# short enough to be a file name
REVISION_RE = re.compile(r"main|step(?:0|[1-9][0-9]{0,17})|[0-9a-f]{40}|[0-9a-f]{64}")
ORG_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")


@dataclass
class PublishResult:
    repo_id: str
    revision: str
    commit: str
    url: str
    skipped: bool  # True when the hub already held exactly these files


class Hub(Protocol):
    name: str

    def check_reachable(self, repo_id: str) -> None: ...

    def publish(self, src: Path, repo_id: str, revision: str = "main") -> PublishResult: ...

    def pull(self, repo_id: str, revision: str = "main") -> Path: ...

    def revisions(self, repo_id: str) -> dict[str, str]: ...

    def list_models(self, org: str) -> list[str]: ...

    def list_remote(self, org: str) -> list[dict]:
        """The org's models with their card metadata: one dict per model with `repo_id`,
        `model_id`, `sha`, `last_modified`, `library_name` and `results` (the card's numeric
        model-index values, see `dtzoo.hub.hf.card_results`)."""
        ...


def check_revision(revision: str) -> str:
    if not isinstance(revision, str) or not REVISION_RE.fullmatch(revision):
        raise UsageError(f"invalid revision {revision!r}: use main, step<N> or a commit hash")
    return revision


def repo_id(org: str, model_id: str) -> str:
    """`repo_id("dtzoo", "hopper-1L-seed0")` -> "dtzoo/hopper-1L-seed0" (org checked as the
    Hub would)."""
    if not ORG_RE.fullmatch(org) or "--" in org or ".." in org:
        raise UsageError(
            f"invalid org {org!r}: letters, digits, '-', '_' and '.', at most 96 characters"
        )
    return f"{org}/{model_id}"


def get_hub(name: str | None = None) -> Hub:
    name = name or os.environ.get("DTZOO_HUB") or DEFAULT_HUB
    if name == "local":
        from dtzoo.hub.local import LocalHub

        return LocalHub()
    if name == "hf":
        from dtzoo.hub.hf import HFHub

        return HFHub()
    raise UsageError(f"unknown hub {name!r}; hubs: {', '.join(HUBS)}")
