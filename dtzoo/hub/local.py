"""The local hub: a directory under $DTZOO_HOME/hub with the Hub's repo/revision semantics.

    hub/<org>/<model id>/snapshots/<commit>/   immutable file sets, named by content hash
    hub/<org>/<model id>/refs/<revision>       a file holding the commit a revision points to

A snapshot is built in a temporary directory and renamed into place; only then is the ref
replaced (atomically), so a reader sees the old revision or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from dtzoo import paths
from dtzoo.checkpoint import check_safetensors
from dtzoo.errors import CheckpointError, HubError
from dtzoo.fsutil import (
    atomic_write_text,
    check_owned,
    file_lock,
    fsync_dir,
    make_temp_dir,
    read_json,
    remove_stale,
)
from dtzoo.hub import PublishResult, check_revision
from dtzoo.hub.common import NAME_RE, check_repo_id
from dtzoo.modeldir import MANIFEST, WEIGHTS, ModelDir, revision_order, verify

COMMIT_RE = re.compile(r"[0-9a-f]{40}")  # a local-hub commit: sha1 of the manifest


def _copy_verified(src: Path, dest: Path) -> None:
    """Copy a model directory's files into `dest` via a temp dir, verify, then rename."""
    tmp = make_temp_dir(dest)
    try:
        for p in ModelDir(src).files():
            dest_file = tmp / p.relative_to(src)
            dest_file.parent.mkdir(exist_ok=True)
            shutil.copy2(p, dest_file)
            with open(dest_file, "rb") as f:  # on disk before the rename makes it visible
                os.fsync(f.fileno())
        verify(tmp)
        try:
            tmp.rename(dest)
            fsync_dir(dest.parent)
        except OSError:
            if not dest.is_dir():  # else another process put the same content there first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_of(manifest: dict) -> str:
    """A local-hub commit: the sha1 of the manifest (which holds the sha256 of every file)."""
    return hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def verify_commit(path: Path, commit: str) -> None:
    """`verify`, plus: the manifest is the one the commit names (so a file edited together
    with its manifest entry is caught too), and the weights are safetensors."""
    verify(path)
    if commit_of(read_json(Path(path) / MANIFEST)) != commit:
        raise CheckpointError(
            f"{Path(path) / MANIFEST}: does not match commit {commit} (files were modified)"
        )
    check_safetensors(Path(path) / WEIGHTS)


def _remove_stale_temp_dirs(parent: Path) -> None:
    """Temp dirs (`.<name>.*.tmp`) left by a killed publish or pull. Call with the lock held
    that every writer of `parent` takes, so none of them is still being filled. A linked
    `parent` is refused (fsutil.remove_stale): nothing outside it is ever deleted."""
    remove_stale(parent, lambda p: p.name.startswith(".") and p.name.endswith(".tmp"))


def _discard(path: Path) -> None:
    """Remove a damaged cache entry or snapshot: a link or a file is unlinked (never what a
    link points to), a directory removed."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _intact(path: Path, commit: str) -> bool:
    """A real directory (not a link) holding exactly the files of `commit`."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        verify_commit(path, commit)
        return True
    except CheckpointError:
        return False


class LocalHub:
    name = "local"

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else paths.local_hub_dir()

    def repo(self, repo_id: str) -> Path:
        return self.root / check_repo_id(repo_id)

    def url(self, repo_id: str, revision: str) -> str:
        return f"file://{self.repo(repo_id)}@{revision}"

    def publish(self, src: Path, repo_id: str, revision: str = "main") -> PublishResult:
        """Publish the files of model directory `src` as `revision` of `repo_id`."""
        check_revision(revision)
        if (Path(src) / WEIGHTS).is_file():  # (a missing one is reported by verify below)
            check_safetensors(Path(src) / WEIGHTS)  # a hub never holds a pickle as weights
        commit = commit_of(ModelDir(src).verify_sealed())  # published as it is, never written
        repo = self.repo(repo_id)
        check_owned(repo / "snapshots")
        (repo / "snapshots").mkdir(parents=True, exist_ok=True)
        with file_lock(repo / ".lock"):
            _remove_stale_temp_dirs(repo / "snapshots")
            snap = repo / "snapshots" / commit
            # the snapshot is checked, not trusted: a damaged one is replaced from `src`
            intact = _intact(snap, commit)
            if intact and self.revisions(repo_id).get(revision) == commit:
                return PublishResult(repo_id, revision, commit, self.url(repo_id, revision), True)
            if not intact:
                _discard(snap)
                _copy_verified(src, snap)
            atomic_write_text(repo / "refs" / revision, commit + "\n")
        return PublishResult(repo_id, revision, commit, self.url(repo_id, revision), False)

    def check_reachable(self, repo_id: str) -> None:
        """Always reachable (a directory); the HF backend asks its endpoint once."""

    def revisions(self, repo_id: str) -> dict[str, str]:
        refs = self.repo(repo_id) / "refs"
        if not refs.is_dir():
            return {}
        return {p.name: _read_ref(p) for p in refs.iterdir() if not p.name.startswith(".")}

    def resolve(self, repo_id: str, revision: str) -> str:
        check_revision(revision)
        revs = self.revisions(repo_id)
        if not revs:
            raise HubError(
                f"{repo_id} is not on the local hub ({self.root}): publish it first "
                "with `dtzoo publish`"
            )
        if revision in revs:
            commit = revs[revision]
            if not COMMIT_RE.fullmatch(commit):  # it becomes a path: never let it leave the repo
                raise HubError(
                    f"{self.repo(repo_id) / 'refs' / revision}: corrupt ref "
                    f"{commit[:60]!r} (expected a 40-hex commit): publish again"
                )
            return commit
        if COMMIT_RE.fullmatch(revision) and (self.repo(repo_id) / "snapshots" / revision).is_dir():
            return revision
        raise HubError(
            f"{repo_id} has no revision {revision!r}; revisions: "
            + ", ".join(sorted(revs, key=revision_order))
        )

    def pull(self, repo_id: str, revision: str = "main") -> Path:
        """Copy a revision into the cache (verified) and return its directory."""
        commit = self.resolve(repo_id, revision)
        dest = paths.cache_dir() / check_repo_id(repo_id) / commit
        check_owned(dest.parent)  # (a link or file at `dest` itself is replaced below)
        if _intact(dest, commit):  # a verified cache hit writes nothing (a read-only home works)
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(dest.parent / ".lock"):  # pulls of one repo take turns
            _remove_stale_temp_dirs(dest.parent)
            if _intact(dest, commit):
                return dest
            _discard(dest)  # corrupt, or a file or a link in its place: fetch a clean copy below
            snap = self.repo(repo_id) / "snapshots" / commit
            try:
                verify_commit(snap, commit)
            except CheckpointError as e:
                raise HubError(
                    f"the local hub's copy of {repo_id}@{revision} is corrupt: {e}"
                ) from None
            _copy_verified(snap, dest)
        return dest

    def list_remote(self, org: str) -> list[dict]:
        """Like HFHub.list_remote: the org's models with the numeric eval results of their cards."""
        from datetime import datetime, timezone

        from dtzoo.card import card_results

        rows = []
        for rid in self.list_models(org):
            commit = self.revisions(rid)["main"]
            readme = self.repo(rid) / "snapshots" / commit / "README.md"
            ok = COMMIT_RE.fullmatch(commit) and readme.is_file()  # a corrupt ref reads nothing
            meta = (_card_metadata(readme) if ok else None) or {}
            mtime = (self.repo(rid) / "refs" / "main").stat().st_mtime
            rows.append(
                {
                    "repo_id": rid,
                    "model_id": rid.split("/", 1)[1],
                    "sha": commit,
                    "last_modified": datetime.fromtimestamp(mtime, timezone.utc).isoformat(),
                    "library_name": meta.get("library_name"),
                    "results": card_results(meta.get("model-index")),
                }
            )
        return rows

    def list_models(self, org: str) -> list[str]:
        base = self.root / check_repo_id(f"{org}/x").split("/")[0]
        if not base.is_dir():
            return []
        return sorted(
            f"{org}/{p.name}"
            for p in base.iterdir()
            if NAME_RE.fullmatch(p.name) and (p / "refs" / "main").is_file()
        )


def _card_metadata(readme: Path) -> dict:
    """A card's YAML front matter; a card whose YAML is broken (or not a mapping) gives {}."""
    from huggingface_hub import metadata_load

    try:
        meta = metadata_load(readme)
    except Exception:  # noqa: BLE001 - yaml raises many types; one bad card must not hide the rest
        return {}
    return meta if isinstance(meta, dict) else {}


def _read_ref(path: Path) -> str:
    """A ref's content (a commit when intact); a damaged ref reads as what it holds, which
    `resolve` then refuses in one line (a directory or unreadable bytes read as "")."""
    try:
        with open(path, "rb") as f:
            return f.read(256).decode("utf-8", "replace").strip()
    except OSError:
        return ""
