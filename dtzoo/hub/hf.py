"""The Hugging Face Hub backend, through the unmodified `huggingface_hub` client.

    >>> hub = HFHub()                    # endpoint $HF_ENDPOINT; token $HF_TOKEN or `hf auth login`
    >>> hub.publish(run_dir, "dtzoo/pendulum-1L-seed0", revision="main")   # one commit, or none
    >>> hub.pull("dtzoo/pendulum-1L-seed0", revision="step20")           # HF cache, verified

Revisions, as on the local hub: `main` is the final model, `step<N>` a branch per training-time
checkpoint. A `step<N>` branch starts at the repo's first commit (the Hub's "initial commit", which
holds only `.gitattributes`), so its history is that commit plus the checkpoint's own commits, and
it never shows another revision's files, even for a moment.

Publishing makes ONE commit per revision holding every file of the model directory (and deleting
any other file but `.gitattributes`), with the branch head as parent commit, so a concurrent
publish fails instead of mixing files. When the Hub already holds exactly these files (compared by
git blob sha1, or sha256 for LFS/Xet files) no commit is made and the result says `skipped`.

Pulling goes through the HF cache ($HF_HOME / $HF_HUB_CACHE): a cached revision that verifies
(manifest.json sha256 sums) is returned without any HTTP request; a corrupt cached copy is
downloaded again (once); with HF_HUB_OFFLINE=1 only cached models pull. A cached `main` is not
compared with the Hub: pull a commit hash, or clear the cache entry, to see a newer `main`.

Every failure is one line (HubError, or UsageError for a repo id the Hub would reject) that never
contains the token.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dtzoo import __version__
from dtzoo.card import MAX_CARD_ENTRIES, card_results  # noqa: F401 (re-exported)
from dtzoo.errors import CheckpointError, DtzooError, HubError, UsageError
from dtzoo.fsutil import sha256_file
from dtzoo.hub import ORG_RE, PublishResult, check_revision
from dtzoo.hub.common import check_repo_id
from dtzoo.modeldir import ModelDir, revision_order, verify

LOG = logging.getLogger(__name__)
KEEP = frozenset({".gitattributes"})  # the Hub's own file: kept on every branch, never compared
PROBE_TIMEOUT = 10.0  # seconds to connect before a Hub counts as unreachable
LOGIN_HINT = "set HF_TOKEN or run `hf auth login`"
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file (what the Hub reports for files stored inline)."""
    h = hashlib.sha1(b"blob %d\0" % Path(path).stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def same_file(remote, path: Path) -> bool:
    """Whether a `RepoFile` from the Hub's tree holds exactly the bytes of local `path`."""
    if remote.size != path.stat().st_size:
        return False
    if remote.lfs is not None:  # LFS and Xet files: the Hub knows their sha256
        return remote.lfs.sha256 == sha256_file(path)
    return remote.blob_id == git_blob_sha1(path)


class HFHub:
    name = "hf"

    def __init__(self, endpoint: str | None = None, token: str | None = None):
        """`endpoint` defaults to $HF_ENDPOINT (read by huggingface_hub when it is imported);
        `token` to huggingface_hub's own lookup ($HF_TOKEN, then the saved login)."""
        from huggingface_hub import constants

        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self._token = token
        self._api = None
        self._reachable = False

    @property
    def api(self):
        """The HfApi client, made on first use: a cached pull never imports it (~0.15 s)."""
        if self._api is None:
            from huggingface_hub import HfApi

            self._api = HfApi(
                endpoint=self.endpoint,
                token=self._token,
                library_name="dtzoo",
                library_version=__version__,
            )
        return self._api

    def url(self, repo_id: str, revision: str) -> str:
        return f"{self.endpoint}/{repo_id}/tree/{revision}"

    # ------------------------------------------------------------------------- publish

    def publish(self, src: Path, repo_id: str, revision: str = "main") -> PublishResult:
        """Publish the files of model directory `src` as `revision` of `repo_id` (one commit)."""
        check_revision(revision)
        if _COMMIT_RE.fullmatch(revision) or len(revision) == 64:
            raise UsageError(f"cannot publish to a commit ({revision[:12]}): use main or step<N>")
        check_repo_id(repo_id)
        model = ModelDir(src)
        model.verify_sealed()  # published as it is, never written
        local = {p.relative_to(model.path).as_posix(): p for p in model.files()}
        step = model.step()
        with self._errors("publish", repo_id, revision):
            self._connect()
            branches = self._branches(repo_id, create=True)
            created = revision not in branches
            if created:  # a step<N> branch starts at the repo's first commit (.gitattributes only)
                head = self._root_commit(repo_id, branches["main"])
                self.api.create_branch(repo_id, branch=revision, revision=head, exist_ok=True)
            else:
                head = branches[revision]
            try:
                remote = self._tree(repo_id, head)
                ops = self._operations(local, remote)
                if not ops:
                    return PublishResult(
                        repo_id, revision, head, self.url(repo_id, revision), skipped=not created
                    )
                info = self.api.create_commit(
                    repo_id,
                    ops,
                    revision=revision,
                    parent_commit=head,
                    commit_message=f"dtzoo: publish {repo_id.split('/', 1)[1]} {revision}"
                    + (f" (training step {step})" if step is not None else ""),
                    commit_description=f"{len(local)} files, published with dtzoo {__version__}.",
                )
            except BaseException:
                if created:  # the branch must not stay behind without its files
                    self._delete_branch_quietly(repo_id, revision)
                raise
        return PublishResult(
            repo_id, revision, info.oid, self.url(repo_id, revision), skipped=info.oid == head
        )

    def _operations(self, local: dict[str, Path], remote: dict[str, Any]) -> list:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops: list = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
            for name, path in sorted(local.items())
            if name not in remote or not same_file(remote[name], path)
        ]
        ops += [
            CommitOperationDelete(path_in_repo=name)
            for name in sorted(remote)
            if name not in local and name not in KEEP
        ]
        return ops

    def _branches(self, repo_id: str, create: bool = False) -> dict[str, str]:
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            refs = self.api.list_repo_refs(repo_id)
        except RepositoryNotFoundError:
            if not create:
                raise
            self.api.create_repo(repo_id, exist_ok=True)
            refs = self.api.list_repo_refs(repo_id)
        return {b.name: b.target_commit for b in refs.branches}

    def _root_commit(self, repo_id: str, main_head: str) -> str:
        return list(self.api.list_repo_commits(repo_id, revision=main_head))[-1].commit_id

    def _tree(self, repo_id: str, commit: str) -> dict[str, Any]:
        from huggingface_hub import RepoFile

        return {
            f.path: f
            for f in self.api.list_repo_tree(repo_id, revision=commit, recursive=True)
            if isinstance(f, RepoFile)
        }

    def _delete_branch_quietly(self, repo_id: str, branch: str) -> None:
        try:
            self.api.delete_branch(repo_id, branch=branch)
        except Exception as e:  # noqa: BLE001 - best effort; the original error is what matters
            LOG.debug("could not delete branch %s of %s: %s", branch, repo_id, type(e).__name__)

    # ------------------------------------------------------------------------- pull

    def pull(self, repo_id: str, revision: str = "main") -> Path:
        """A verified snapshot of `revision` in the HF cache (no request when already cached)."""
        from huggingface_hub import constants

        check_revision(revision)
        check_repo_id(repo_id)
        path, corrupt = self._cached(repo_id, revision)
        if path is not None:
            return path
        if constants.HF_HUB_OFFLINE:
            if corrupt is not None:
                raise HubError(
                    f"the cached copy of {repo_id}@{revision} is corrupt ({corrupt}) "
                    "and HF_HUB_OFFLINE is set: unset it to download it again"
                )
            raise HubError(
                f"{repo_id}@{revision} is not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: pull it once "
                "while online"
            )
        force = corrupt is not None  # a corrupt cached copy: download every file again
        with self._errors("pull", repo_id, revision):
            self._connect()
            while True:
                path = Path(
                    self.api.snapshot_download(repo_id, revision=revision, force_download=force)
                )
                try:
                    verify(path)
                    return path
                except CheckpointError as e:
                    if force:
                        raise HubError(
                            f"{repo_id}@{revision} on {self.endpoint} fails verification: {e}"
                        ) from None
                    force = True

    def _cached(self, repo_id: str, revision: str) -> tuple[Path | None, CheckpointError | None]:
        """(path, None) for a cached revision that verifies, (None, error) for a corrupt one,
        (None, None) when the cache does not hold it (or only part of it).

        Reads the HF cache layout (`models--<org>--<name>/refs/<revision>` -> commit,
        `snapshots/<commit>/`) directly, as `snapshot_download(local_files_only=True)` does, but
        without importing the HTTP client; manifest.json then checks every file's sha256."""
        from huggingface_hub import constants

        repo_dir = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
        commit = revision
        if not _COMMIT_RE.fullmatch(revision):
            try:
                commit = (repo_dir / "refs" / revision).read_text().strip()
            except (OSError, UnicodeDecodeError):
                return None, None
        if not _COMMIT_RE.fullmatch(commit):
            return None, None
        path = repo_dir / "snapshots" / commit
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()  # a damaged entry: fetched again, never read through a link
            return None, None
        if not path.is_dir():
            return None, None
        try:
            verify(path)
        except CheckpointError as e:
            if not (path / "config.json").exists() or not (path / "manifest.json").exists():
                return None, None  # an incomplete snapshot: fetch what is missing
            return None, e
        return path, None

    # ------------------------------------------------------------------------- listings

    def revisions(self, repo_id: str) -> dict[str, str]:
        """{branch: commit}: `main` first, then `step<N>` by N; {} for a repo the Hub lacks."""
        from huggingface_hub.errors import RepositoryNotFoundError

        check_repo_id(repo_id)
        with self._errors("list the revisions of", repo_id):
            self._connect()
            try:
                branches = self._branches(repo_id)
            except RepositoryNotFoundError:
                return {}
        return dict(sorted(branches.items(), key=lambda kv: revision_order(kv[0])))

    def list_models(self, org: str) -> list[str]:
        _check_org(org)
        with self._errors("list the models of", org):
            self._connect()
            return sorted(m.id for m in self.api.list_models(author=org))

    def list_remote(self, org: str) -> list[dict[str, Any]]:
        """The org's models with their card metadata, one dict each:
        `{"repo_id", "model_id", "sha", "last_modified", "library_name", "results"}`, where
        `results` is `card_results(model-index)` (numbers)."""
        _check_org(org)
        with self._errors("list the models of", org):
            self._connect()
            infos = list(self.api.list_models(author=org, cardData=True))
        rows = []
        for m in sorted(infos, key=lambda m: m.id):
            card = m.card_data.to_dict() if hasattr(m.card_data, "to_dict") else (m.card_data or {})
            model_index = card.get("model-index") or getattr(m, "model_index", None)
            rows.append(
                {
                    "repo_id": m.id,
                    "model_id": m.id.split("/", 1)[1],
                    "sha": m.sha,
                    "last_modified": m.last_modified.isoformat() if m.last_modified else None,
                    "library_name": card.get("library_name") or getattr(m, "library_name", None),
                    "results": card_results(model_index),
                }
            )
        return rows

    # ------------------------------------------------------------------------- errors

    def check_reachable(self, repo_id: str) -> None:
        """One bounded request: a HubError now, before a publish stages anything."""
        check_repo_id(repo_id)
        with self._errors("publish", repo_id):
            self._connect()

    def _connect(self) -> None:
        """Fail fast (one request, bounded time) when the Hub cannot be reached, rather than in
        huggingface_hub's retry loop (5 retries over ~25 s on connection errors)."""
        if self._reachable:
            return
        probe(self.endpoint)
        self._reachable = True

    @contextmanager
    def _errors(self, action: str, what: str, revision: str | None = None) -> Iterator[None]:
        try:
            yield
        except DtzooError:
            raise
        except Exception as e:  # noqa: BLE001 - translated into one line below
            raise self._translate(e, action, what, revision) from None

    def _translate(self, e: Exception, action: str, what: str, revision: str | None) -> DtzooError:
        from huggingface_hub import constants
        from huggingface_hub.errors import (
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = self.endpoint
        target = f"{what}@{revision}" if revision else what
        if isinstance(e, LocalEntryNotFoundError) and e.__cause__ is not None:
            e = e.__cause__  # snapshot_download hides why the Hub could not be asked
        if isinstance(e, HFValidationError):
            return UsageError(self._scrub(f"invalid repo id {what!r}: {_first_line(e)}"))
        if isinstance(e, OfflineModeIsEnabled) or (
            isinstance(e, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE
        ):
            return HubError(
                f"cannot {action} {target}: HF_HUB_OFFLINE is set (unset it to reach {where})"
            )
        if is_network_error(e):
            return HubError(
                self._scrub(
                    f"cannot reach the Hub at {where} ({_first_line(e) or type(e).__name__}): "
                    "check the network and HF_ENDPOINT; cached models still pull with "
                    "HF_HUB_OFFLINE=1"
                )
            )
        if isinstance(e, RevisionNotFoundError):
            try:
                known = ", ".join(self.revisions(what.split("@")[0])) or "none"
            except DtzooError:
                known = "unknown"
            return HubError(f"{what} has no revision {revision!r} on {where}; revisions: {known}")
        if isinstance(e, RepositoryNotFoundError) and action != "publish":
            return HubError(
                f"{what} is not on {where} (or it is private and your token cannot "
                f"read it): publish it first with `dtzoo publish --hub hf`"
            )
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            status = e.response.status_code
            server = _first_line(e.server_message or "")
            if status == 401:
                if self._token_value() is None:
                    return HubError(
                        f"cannot {action} {target}: not logged in to {where}: {LOGIN_HINT}"
                    )
                return HubError(
                    f"cannot {action} {target}: {where} rejected the token (invalid or "
                    f"expired): {LOGIN_HINT}"
                )
            if status == 403:
                ns = what.split("/")[0]
                return HubError(
                    self._scrub(
                        f"cannot {action} {target}: your token has no write access to {ns!r}: ask "
                        f"an admin of {ns} for write access, or pass --org <your user name>"
                    )
                )
            if status == 412:
                return HubError(
                    f"cannot {action} {target}: it changed on {where} while publishing "
                    "(another publish at the same time?): run the command again"
                )
            if status == 400 or status == 422:
                return HubError(
                    self._scrub(
                        f"{where} rejected the request to {action} {target}: "
                        f"{server or 'bad request'}"
                    )
                )
            if status >= 500:
                return HubError(
                    f"{where} failed (HTTP {status}) to {action} {target}: try again later"
                )
            return HubError(
                self._scrub(
                    f"cannot {action} {target}: HTTP {status} from {where}"
                    + (f": {server}" if server else "")
                )
            )
        if isinstance(e, (ValueError, OSError)):
            return HubError(self._scrub(f"cannot {action} {target}: {_first_line(e)}"))
        return HubError(
            self._scrub(f"cannot {action} {target}: {type(e).__name__}: {_first_line(e)}")
        )

    def _token_value(self) -> str | None:
        if self._token:
            return self._token
        from huggingface_hub import get_token

        try:
            return get_token()
        except Exception:  # noqa: BLE001
            return None

    def _scrub(self, message: str) -> str:
        token = self._token_value()
        if token and len(token) >= 4:
            message = message.replace(token, "***")
        return " ".join(message.split())


def _check_org(org: str) -> None:
    if not ORG_RE.fullmatch(org) or "--" in org or ".." in org:
        raise UsageError(
            f"invalid org {org!r}: letters, digits, '-', '_' and '.', at most 96 characters"
        )


def _first_line(e: Any) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def probe(endpoint: str) -> None:
    """One HEAD request with a bounded timeout (no token sent); raises the transport error if
    the Hub cannot be reached, where huggingface_hub would retry for ~25 s first."""
    from huggingface_hub.utils import get_session

    get_session().head(endpoint.rstrip("/") + "/", timeout=PROBE_TIMEOUT)


def is_network_error(e: BaseException) -> bool:
    """A transport failure (refused, DNS, timeout, TLS) of whichever HTTP library
    huggingface_hub uses (httpx2 in 2.x, httpx in 1.x, requests before)."""
    for name in ("httpx2", "httpx"):
        mod = sys.modules.get(name)
        if mod is not None and isinstance(e, getattr(mod, "TransportError", ())):
            return True
    requests = sys.modules.get("requests")
    if requests is not None and isinstance(e, (requests.ConnectionError, requests.Timeout)):
        return True
    return isinstance(e, (ConnectionError, TimeoutError))
