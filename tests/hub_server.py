"""A small, in-memory fake of the Hugging Face Hub HTTP API, for offline tests.

The server speaks enough of the Hub protocol for the *unmodified* ``huggingface_hub`` client (2.x,
with ``HF_HUB_DISABLE_XET=1``) to create repos, commit files (inline and through the legacy Git LFS
batch API), manage branches and tags, read repo/revision info, list repos and download files, for
model, dataset and space repos. It is built on the standard library only (``http.server``); the
README front matter is parsed with PyYAML, which ``huggingface_hub`` itself depends on.

Usage::

    server = HubServer(tokens={"hf_w": {"user": "alice", "orgs": ["dtzoo"], "write": True}}).start()
    os.environ["HF_ENDPOINT"] = server.url  # must happen before `huggingface_hub` is imported
    ...
    server.files("dtzoo/my-model")  # -> {".gitattributes": b"...", "config.json": b"..."}
    server.stop()

Or by hand: ``python -m tests.hub_server --port 8080 --token hf_xxx``.

Behaviour worth knowing (mirrors the real Hub unless stated otherwise):

* A new repo has one commit, "initial commit" by "system", holding a default ``.gitattributes``
  (pass ``init_gitattributes=False`` for an empty initial commit).
* Upload mode (preupload): "lfs" when ``size >= lfs_threshold`` or the path matches one of
  ``lfs_patterns`` (fnmatch on the path and on the basename), else "regular". Unlike the Hub,
  ``.gitattributes`` is not read; pass ``lfs_patterns=HUB_DEFAULT_LFS_PATTERNS`` to mimic it. The
  preupload answer carries the ``oid`` of the file already stored at that path (sha256 for LFS
  files, git blob sha1 otherwise), which lets the client skip unchanged files.
* A commit is applied atomically (whole or not at all), under one lock. A commit without operations
  creates an empty commit, as the Hub does (the client never sends one: it skips no-op commits
  itself).
* ``parentCommit`` must equal the branch head, else 412.
* Any request carrying an unknown token gets 401 "Invalid credentials in Authorization header";
  writes need a token with write access to the namespace (401 without a token, 403 without access).
  Private repos are invisible (RepoNotFound) to tokens without access to their namespace.
* Files are served directly by ``/resolve`` (no CDN redirect), with ``X-Repo-Commit``, ``ETag`` (git
  blob sha1; for LFS files the sha1 of the pointer file) and, for LFS files, ``X-Linked-Etag``
  (sha256) and ``X-Linked-Size``. Single byte ranges are honoured (206).
* No pagination: every listing fits in one page.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import itertools
import json
import re
import secrets
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml
from typing_extensions import Self

REPO_TYPES = ("model", "dataset", "space")
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
PLURAL_TO_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}
SPACE_SDKS = ("gradio", "streamlit", "docker", "static")

HUB_DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar.*", "*.tar", "*.tflite",
    "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)  # fmt: skip
DEFAULT_GITATTRIBUTES = "".join(
    f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in HUB_DEFAULT_LFS_PATTERNS
)

_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,96}")
_BRANCH_RE = re.compile(r"[A-Za-z0-9_.\-/]{1,200}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_COMMIT_RE = re.compile(r"[0-9a-f]{7,40}")
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*$", re.DOTALL | re.MULTILINE)
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")
_INVALID_TOKEN = "Invalid credentials in Authorization header"
_TRUE = ("1", "true", "yes")


def _now() -> str:
    """Current UTC time in the Hub's ISO format (millisecond precision, ``Z`` suffix)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Git LFS pointer file for an object."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def parse_card_data(readme: bytes | None) -> dict[str, Any] | None:
    """Parse a README's YAML front matter into a dict (``None`` if absent, empty or invalid)."""
    if readme is None:
        return None
    match = _FRONT_MATTER_RE.match(readme.decode("utf-8", errors="replace"))
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) and data else None


def validate_repo_name(name: str) -> str | None:
    """Why ``name`` (a namespace or a repo name) is not valid on the Hub, or ``None`` if it is."""
    if not _NAME_RE.fullmatch(name):
        return "must be 1-96 characters among letters, digits, '-', '_' and '.'"
    if name[0] in "-." or name[-1] in "-.":
        return "cannot start or end with '-' or '.'"
    if "--" in name or ".." in name:
        return "cannot contain '--' or '..'"
    if name.endswith(".git"):
        return "cannot end with '.git'"
    return None


def validate_path_in_repo(path: str) -> str | None:
    """Return why ``path`` cannot be stored in a repo, or ``None`` if it can."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return f"invalid path {path!r}"
    if _CONTROL_CHARS_RE.search(path):
        return f"control characters in path {path!r}"
    if ".git" in parts:
        return f"cannot write under a '.git' folder: '{path}'"
    return None


class HubError(Exception):
    """An error answered in the Hub's format (``X-Error-Code`` and ``X-Error-Message`` headers)."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers: dict[str, str] = extra.pop("headers", {})
        self.extra = extra

    def response(self) -> Response:
        """The HTTP response for this error."""
        headers = {
            "X-Error-Message": _header_safe(self.message),
            **self.headers,
        }
        if self.code:
            headers["X-Error-Code"] = self.code
        return Response.json(
            {"error": self.message, **self.extra}, status=self.status, headers=headers
        )


def _bad_request(message: str) -> HubError:
    return HubError(400, message)


def _content_disposition(filename: str) -> str:
    """``Content-Disposition`` of a download, like the Hub's (RFC 5987 for non-ASCII names)."""
    fallback = _header_safe(filename).replace('"', "_")
    return f"inline; filename*=UTF-8''{quote(filename)}; filename=\"{fallback}\";"


def _require_object(value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else a 400."""
    if not isinstance(value, dict):
        raise _bad_request(f"Expected a JSON object for {what}, got {type(value).__name__}")
    return value


def _header_safe(value: str) -> str:
    """``value`` as a header value: ASCII, no control characters."""
    return _CONTROL_CHARS_RE.sub(" ", value.encode("ascii", "replace").decode())


@dataclass(frozen=True)
class Blob:
    """A file's content, stored either inline (regular git blob) or as a Git LFS object."""

    data: bytes
    lfs: bool = False

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, len(self.data))

    @cached_property
    def oid(self) -> str:
        """Git object id: of the content for a regular file, of the pointer file for an LFS file."""
        return git_blob_sha1(self.pointer if self.lfs else self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def upload_oid(self) -> str:
        """The oid preupload reports, for the client to compare: sha256 for LFS, else git sha1."""
        return self.sha256 if self.lfs else self.oid

    def lfs_json(self) -> dict[str, Any] | None:
        """The ``lfs`` field of tree entries (``None`` for regular files)."""
        if not self.lfs:
            return None
        return {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}


Tree = Mapping[str, Blob]


@dataclass(frozen=True)
class Commit:
    """An immutable commit: a full snapshot of the repo's files plus metadata."""

    oid: str
    parent: str | None
    title: str
    description: str
    author: str
    date: str
    tree: Tree

    def as_json(self) -> dict[str, Any]:
        """A ``/commits`` listing entry."""
        return {
            "id": self.oid,
            "title": self.title,
            "message": self.description,
            "authors": [{"user": self.author, "avatar": None}],
            "date": self.date,
        }


@dataclass
class Repo:
    """A repository: its refs and the commits they point to."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    uid: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)
    sdk: str | None = None

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    @property
    def head(self) -> Commit:
        return self.commits[self.branches["main"]]

    def history(self, oid: str) -> list[Commit]:
        """Commits reachable from ``oid`` through first parents, newest first."""
        chain: list[Commit] = []
        current: str | None = oid
        while current is not None:
            chain.append(self.commits[current])
            current = self.commits[current].parent
        return chain


def _in_namespaces(namespace: str, allowed: Iterable[str]) -> bool:
    """Whether ``namespace`` is in ``allowed`` (case-insensitive; ``"*"`` allows all)."""
    return any(a == "*" or a.lower() == namespace.lower() for a in allowed)


@dataclass(frozen=True)
class Principal:
    """The identity behind a token, with its permissions.

    ``orgs`` may contain ``"*"`` (every namespace). ``write`` is ``True`` (write access to the
    user's and the orgs' namespaces), ``False`` (read-only) or the namespaces it may write to.
    """

    token: str
    user: str
    orgs: tuple[str, ...] = ()
    write: bool | tuple[str, ...] = True

    @classmethod
    def from_config(cls, token: str, config: Mapping[str, Any]) -> Principal:
        write = config.get("write", True)
        return cls(
            token=token,
            user=str(config.get("user", "user")),
            orgs=tuple(config.get("orgs", ())),
            write=write if isinstance(write, bool) else tuple(write),
        )

    def can_read(self, namespace: str) -> bool:
        return _in_namespaces(namespace, (self.user, *self.orgs))

    def can_write(self, namespace: str) -> bool:
        if isinstance(self.write, bool):
            return self.write and self.can_read(namespace)
        return _in_namespaces(namespace, self.write)

    def whoami(self) -> dict[str, Any]:
        """The ``/api/whoami-v2`` payload."""
        role = "write" if self.write else "read"
        orgs = [o for o in self.orgs if o != "*"]
        return {
            "type": "user",
            "id": hashlib.sha1(self.user.encode()).hexdigest()[:24],
            "name": self.user,
            "fullname": self.user,
            "email": f"{self.user}@example.com",
            "emailVerified": True,
            "isPro": False,
            "canPay": False,
            "avatarUrl": "",
            "orgs": [{"type": "org", "name": o, "fullname": o, "roleInOrg": role} for o in orgs],
            "auth": {
                "type": "access_token",
                "accessToken": {"displayName": "test token", "role": role},
            },
        }


@dataclass
class Request:
    """A parsed HTTP request, body fully read."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    principal: Principal | None = None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def args(self, *names: str) -> list[str]:
        return [v for name in names for v in self.query.get(name, [])]

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in _TRUE

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (400 if it is not one)."""
        try:
            payload = json.loads(self.body or b"{}")
        except ValueError as err:
            raise _bad_request(f"Invalid JSON body: {err}") from err
        return _require_object(payload, "the JSON body")


@dataclass
class Response:
    """An HTTP response to write back."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(
        cls, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response:
        body = json.dumps(payload, default=str).encode()
        return cls(
            status, body, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        )


class HubApp:
    """The Hub's logic and state, independent of the HTTP transport.

    Every public method takes a :class:`Request` plus the path parameters captured by its route and
    returns a :class:`Response`, or raises :class:`HubError`. All state lives in memory, behind one
    re-entrant lock.
    """

    def __init__(
        self,
        tokens: Mapping[str, Mapping[str, Any]],
        lfs_threshold: int,
        lfs_patterns: Iterable[str],
        init_gitattributes: bool,
    ) -> None:
        self.tokens = dict(tokens)
        self.lfs_threshold = lfs_threshold
        self.lfs_patterns = tuple(lfs_patterns)
        self.init_gitattributes = init_gitattributes
        self.base_url = ""
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self._upload_tickets: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._counter = itertools.count()

    # ----------------------------------------------------------------------------------------------
    # Helpers: auth, lookups, serialisation
    # ----------------------------------------------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        """The principal behind the ``Authorization`` header; 401 for an unknown token."""
        auth = headers.get("Authorization") or headers.get("authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        config = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if config is None:
            raise HubError(401, _INVALID_TOKEN)
        return Principal.from_config(token.strip(), config)

    @staticmethod
    def require_auth(req: Request) -> Principal:
        if req.principal is None:
            raise HubError(401, "You must be authenticated to access this resource")
        return req.principal

    def require_write(self, req: Request, namespace: str) -> Principal:
        principal = self.require_auth(req)
        if not principal.can_write(namespace):
            raise HubError(
                403, f"You don't have the rights to write to the namespace '{namespace}'"
            )
        return principal

    @staticmethod
    def _repo_not_found(req: Request, repo_type: str, repo_id: str) -> HubError:
        status = 401 if req.principal is None else 404
        return HubError(status, f"Repository not found: {repo_type} '{repo_id}'", "RepoNotFound")

    def get_repo(self, req: Request, repo_type: str, repo_id: str) -> Repo:
        """A repo the requester may read, else RepoNotFound."""
        repo = self.repos.get((repo_type, repo_id.lower()))
        if repo is None or (
            repo.private and not (req.principal and req.principal.can_read(repo.namespace))
        ):
            raise self._repo_not_found(req, repo_type, repo_id)
        return repo

    def can_list(self, req: Request, repo: Repo) -> bool:
        return not repo.private or (
            req.principal is not None and req.principal.can_read(repo.namespace)
        )

    @staticmethod
    def find_ref(repo: Repo, revision: str) -> tuple[str, str] | None:
        """``(kind, name)`` of the ref ``revision`` names: kind is "branch", "tag" or "pr"."""
        name = revision.removeprefix("refs/heads/")
        if name in repo.branches:
            return "branch", name
        name = revision.removeprefix("refs/tags/")
        if name in repo.tags:
            return "tag", name
        match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if match and int(match.group(1)) in repo.pull_requests:
            return "pr", revision
        return None

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """The commit a branch, tag, PR ref, commit oid or unique oid prefix (>= 7 chars) names."""
        ref = self.find_ref(repo, revision)
        if ref is not None:
            return repo.commits[self.ref_target(repo, *ref)]
        if _COMMIT_RE.fullmatch(revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def ref_target(repo: Repo, kind: str, name: str) -> str:
        if kind == "branch":
            return repo.branches[name]
        if kind == "tag":
            return repo.tags[name]
        return repo.pull_requests[int(name.rsplit("/", 1)[1])]

    def repo_url(self, repo: Repo) -> str:
        return f"{self.base_url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def is_lfs_path(self, path: str, size: int) -> bool:
        basename = path.rsplit("/", 1)[-1]
        matches = any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(basename, p) for p in self.lfs_patterns
        )
        return size >= self.lfs_threshold or matches

    def new_commit(
        self, repo: Repo, parent: str | None, tree: Tree, title: str, description: str, author: str
    ) -> Commit:
        """Create and register a commit (refs are not moved)."""
        date = _now()
        seed = json.dumps(
            [
                parent,
                title,
                description,
                author,
                date,
                next(self._counter),
                sorted((p, b.oid) for p, b in tree.items()),
            ]
        )
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, parent, title, description, author, date, tree=dict(tree))
        repo.commits[commit.oid] = commit
        return commit

    @staticmethod
    def tags_for(repo: Repo, card: Mapping[str, Any] | None) -> list[str]:
        """Repo tags, from the card like on the Hub (tags, library, task, license, datasets)."""
        card = card or {}

        def as_list(value: Any) -> list[str]:
            return [
                str(v) for v in (value if isinstance(value, list) else [value] if value else [])
            ]

        tags = (
            as_list(card.get("tags"))
            + as_list(card.get("library_name"))
            + as_list(card.get("pipeline_tag"))
        )
        tags += [f"license:{v}" for v in as_list(card.get("license"))]
        tags += [f"dataset:{v}" for v in as_list(card.get("datasets"))]
        return list(dict.fromkeys(tags + ["region:us"]))

    @staticmethod
    def sibling_json(path: str, blob: Blob, with_metadata: bool) -> dict[str, Any]:
        sibling: dict[str, Any] = {"rfilename": path}
        if with_metadata:
            sibling.update(size=blob.size, blobId=blob.oid)
            if blob.lfs:
                sibling["lfs"] = {
                    "size": blob.size,
                    "sha256": blob.sha256,
                    "pointerSize": len(blob.pointer),
                }
        return sibling

    def repo_json(
        self, repo: Repo, commit: Commit, *, siblings: bool = True, blobs: bool = False
    ) -> dict[str, Any]:
        """Repo info at ``commit``, as ``/api/{type}s/{repo}`` and the listings serialise it."""
        card = parse_card_data(
            commit.tree["README.md"].data if "README.md" in commit.tree else None
        )
        info: dict[str, Any] = {
            "_id": repo.uid,
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "trendingScore": 0,
            "tags": self.tags_for(repo, card),
            "usedStorage": sum(blob.size for blob in commit.tree.values()),
        }
        if card is not None:
            info["cardData"] = card
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            for key in ("library_name", "pipeline_tag", "model-index"):
                if card and card.get(key):
                    info[key] = card[key]
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
        if siblings:
            info["siblings"] = [
                self.sibling_json(p, b, blobs) for p, b in sorted(commit.tree.items())
            ]
        return info

    @staticmethod
    def restrict(info: dict[str, Any], expand: list[str]) -> dict[str, Any]:
        """Keep only the ``expand``-ed properties (and ids), like the Hub's ``expand[]``."""
        return {k: v for k, v in info.items() if k in {"_id", "id", *expand}}

    def last_commit_for(self, repo: Repo, commit: Commit, path: str) -> Commit:
        """The newest commit, from ``commit`` back, that changed ``path`` (a file or folder)."""

        def snapshot(c: Commit) -> list[tuple[str, str]]:
            return sorted(
                (p, b.oid) for p, b in c.tree.items() if p == path or p.startswith(path + "/")
            )

        history = repo.history(commit.oid)
        for newer, older in itertools.pairwise(history):
            if snapshot(newer) != snapshot(older):
                return newer
        return history[-1]

    def tree_entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        """A ``/tree`` or ``/paths-info`` entry for a file or a folder."""
        blob = commit.tree.get(path)
        if blob is not None:
            entry: dict[str, Any] = {
                "type": "file",
                "oid": blob.oid,
                "size": blob.size,
                "path": path,
            }
            if blob.lfs:
                entry["lfs"] = blob.lfs_json()
        else:
            contents = sorted(
                (p, b.oid) for p, b in commit.tree.items() if p.startswith(path + "/")
            )
            entry = {
                "type": "directory",
                "oid": hashlib.sha1(json.dumps(contents).encode()).hexdigest(),
                "size": 0,
                "path": path,
            }
        if expand:
            last = self.last_commit_for(repo, commit, path)
            entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
        return entry

    @staticmethod
    def folder_paths(tree: Tree, prefix: str, recursive: bool) -> list[str]:
        """Files and folders under ``prefix`` ("" for root): children, or all descendants."""
        base = f"{prefix}/" if prefix else ""
        found: set[str] = set()
        for path in tree:
            if not path.startswith(base):
                continue
            parts = path[len(base) :].split("/")
            depth = len(parts) if recursive else 1
            found.update(base + "/".join(parts[: i + 1]) for i in range(depth))
        return sorted(found)

    # ----------------------------------------------------------------------------------------------
    # Account and repo management
    # ----------------------------------------------------------------------------------------------

    def whoami(self, req: Request) -> Response:
        return Response.json(self.require_auth(req).whoami())

    def create_repo(self, req: Request) -> Response:
        principal = self.require_auth(req)
        payload = req.json()
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise _bad_request(f"Invalid repo type '{repo_type}'")
        namespace = str(payload.get("organization") or principal.user)
        name = str(payload.get("name") or "")
        for part in (namespace, name):
            if (problem := validate_repo_name(part)) is not None:
                raise _bad_request(f"Invalid repo name '{namespace}/{name}': {problem}")
        if repo_type == "space" and payload.get("sdk") not in SPACE_SDKS:
            raise _bad_request(f"Invalid space sdk '{payload.get('sdk')}'")
        if not principal.can_write(namespace):
            raise HubError(
                403,
                f"You don't have the rights to create a {repo_type} "
                f'under the namespace "{namespace}"',
            )
        private = (
            payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        )
        with self.lock:
            key = (repo_type, f"{namespace}/{name}".lower())
            if key in self.repos:
                url = self.repo_url(self.repos[key])
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            repo_id, uid = f"{namespace}/{name}", secrets.token_hex(12)
            repo = Repo(repo_type, repo_id, private, _now(), uid, sdk=payload.get("sdk"))
            tree = (
                {".gitattributes": Blob(DEFAULT_GITATTRIBUTES.encode())}
                if self.init_gitattributes
                else {}
            )
            repo.branches["main"] = self.new_commit(
                repo, None, tree, "initial commit", "", "system"
            ).oid
            self.repos[key] = repo
        return Response.json({"url": self.repo_url(repo), "name": repo.repo_id, "id": repo.uid})

    def _repo_from_payload(self, req: Request) -> Repo:
        payload = req.json()
        namespace = payload.get("organization") or self.require_auth(req).user
        return self.get_repo(
            req, payload.get("type") or "model", f"{namespace}/{payload.get('name')}"
        )

    def delete_repo(self, req: Request) -> Response:
        with self.lock:
            repo = self._repo_from_payload(req)
            self.require_write(req, repo.namespace)
            del self.repos[(repo.repo_type, repo.repo_id.lower())]
        return Response.json({})

    def update_settings(self, req: Request, kind: str, repo: str) -> Response:
        with self.lock:
            target = self.get_repo(req, kind, repo)
            self.require_write(req, target.namespace)
            payload = req.json()
            if "private" in payload:
                target.private = bool(payload["private"])
            if "visibility" in payload:
                target.private = payload["visibility"] != "public"
        return Response.json({})

    def validate_yaml(self, req: Request) -> Response:
        match = _FRONT_MATTER_RE.match(str(req.json().get("content", "")))
        if match is not None:
            try:
                data = yaml.safe_load(match.group(1))
            except yaml.YAMLError as err:
                raise HubError(
                    400, "Invalid YAML in README.md", errors=[{"message": str(err)}]
                ) from err
            if data is not None and not isinstance(data, dict):
                raise HubError(
                    400, "Invalid metadata", errors=[{"message": "metadata must be a YAML mapping"}]
                )
        return Response.json({"errors": [], "warnings": []})

    # ----------------------------------------------------------------------------------------------
    # Reads
    # ----------------------------------------------------------------------------------------------

    def list_repos(self, req: Request, kind: str) -> Response:
        author, searches, filters = req.arg("author"), req.args("search"), req.args("filter")
        full, card, expand = req.flag("full"), req.flag("cardData"), req.args("expand", "expand[]")
        with self.lock:
            candidates = [
                r for r in self.repos.values() if r.repo_type == kind and self.can_list(req, r)
            ]
            entries = [
                self.repo_json(r, r.head, siblings=full or "siblings" in expand) for r in candidates
            ]
        entries = [
            e for e in entries
            if (author is None or e["author"] == author)
            and all(s.lower() in e["id"].lower() for s in searches)
            and all(f in e["tags"] for f in filters)
        ]  # fmt: skip
        if (sort := req.arg("sort")) is not None:
            entries.sort(key=lambda e: e.get(sort) or 0, reverse=req.arg("direction", "-1") != "1")
        if not card and "cardData" not in expand:
            entries = [{k: v for k, v in e.items() if k != "cardData"} for e in entries]
        if expand:
            entries = [self.restrict(e, expand) for e in entries]
        if (limit := req.arg("limit")) is not None:
            if not limit.isdigit():
                raise _bad_request(f"Invalid limit '{limit}'")
            entries = entries[: int(limit)]
        return Response.json(entries)

    def repo_info(self, req: Request, kind: str, repo: str, rev: str = "main") -> Response:
        with self.lock:
            target = self.get_repo(req, kind, repo)
            info = self.repo_json(target, self.resolve(target, rev), blobs=req.flag("blobs"))
        expand = req.args("expand", "expand[]")
        return Response.json(self.restrict(info, expand) if expand else info)

    def tree(
        self, req: Request, kind: str, repo: str, rev: str, path: str | None = None
    ) -> Response:
        path = (path or "").strip("/")
        with self.lock:
            target = self.get_repo(req, kind, repo)
            commit = self.resolve(target, rev)
            if path and not any(p.startswith(path + "/") for p in commit.tree):
                raise HubError(
                    404,
                    f"Folder not found: '{path}'",
                    "EntryNotFound",
                    headers={"X-Repo-Commit": commit.oid},
                )
            paths = self.folder_paths(commit.tree, path, req.flag("recursive"))
            return Response.json(
                [self.tree_entry(target, commit, p, req.flag("expand")) for p in paths]
            )

    def paths_info(self, req: Request, kind: str, repo: str, rev: str) -> Response:
        form = parse_qs(req.body.decode(), keep_blank_values=True)
        if "json" in req.headers.get("Content-Type", ""):
            payload = req.json()
            form = {
                "paths": payload.get("paths", []),
                "expand": [str(payload.get("expand", False))],
            }
        expand = form.get("expand", ["false"])[-1].lower() in _TRUE
        with self.lock:
            target = self.get_repo(req, kind, repo)
            commit = self.resolve(target, rev)
            paths = [p.strip("/") for p in form.get("paths", [])]
            existing = [
                p
                for p in paths
                if p in commit.tree or any(q.startswith(p + "/") for q in commit.tree)
            ]
            return Response.json([self.tree_entry(target, commit, p, expand) for p in existing])

    def list_commits(self, req: Request, kind: str, repo: str, rev: str) -> Response:
        with self.lock:
            target = self.get_repo(req, kind, repo)
            history = target.history(self.resolve(target, rev).oid)
        return Response.json([c.as_json() for c in history])

    def refs(self, req: Request, kind: str, repo: str) -> Response:
        def refs_json(names: Mapping[Any, str], prefix: str) -> list[dict[str, str]]:
            return [
                {"name": str(n), "ref": f"{prefix}{n}", "targetCommit": oid}
                for n, oid in sorted(names.items())
            ]

        with self.lock:
            target = self.get_repo(req, kind, repo)
            payload = {
                "branches": refs_json(target.branches, "refs/heads/"),
                "converts": [],
                "tags": refs_json(target.tags, "refs/tags/"),
            }
            if req.flag("include_prs"):
                payload["pullRequests"] = refs_json(target.pull_requests, "refs/pr/")
        return Response.json(payload)

    def resolve_file(self, req: Request, kind: str, repo: str, rev: str, path: str) -> Response:
        """``GET``/``HEAD`` ``/{repo}/resolve/{revision}/{path}``: the file, with Hub headers."""
        with self.lock:
            target = self.get_repo(req, kind, repo)
            commit = self.resolve(target, rev)
            blob = commit.tree.get(path)
        if blob is None:
            raise HubError(
                404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid}
            )
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{blob.oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": _content_disposition(path.rsplit("/", 1)[-1]),
        }
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        return self._ranged(blob.data, req.headers.get("Range"), headers)

    @staticmethod
    def _ranged(data: bytes, range_header: str | None, headers: dict[str, str]) -> Response:
        """The whole content, or the ``bytes=`` range asked for (206; 416 if unsatisfiable)."""
        if not range_header:
            return Response(200, data, headers)
        match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header)
        size = len(data)
        if match is None or match.groups() == ("", ""):
            raise HubError(
                416,
                f"Unsupported range '{range_header}'",
                headers={"Content-Range": f"bytes */{size}"},
            )
        start_s, end_s = match.groups()
        start = int(start_s) if start_s else max(size - int(end_s), 0)
        end = min(int(end_s), size - 1) if start_s and end_s else size - 1
        if start >= size or start > end:
            raise HubError(
                416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"}
            )
        return Response(
            206, data[start : end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
        )

    # ----------------------------------------------------------------------------------------------
    # Writes: refs
    # ----------------------------------------------------------------------------------------------

    def create_branch(self, req: Request, kind: str, repo: str, branch: str) -> Response:
        with self.lock:
            target = self.get_repo(req, kind, repo)
            self.require_write(req, target.namespace)
            if (
                not _BRANCH_RE.fullmatch(branch)
                or ".." in branch
                or branch.startswith(("refs/", "/"))
            ):
                raise _bad_request(f"Invalid branch name '{branch}'")
            if branch in target.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = self.resolve(target, str(req.json().get("startingPoint") or "main"))
            target.branches[branch] = start.oid
        return Response.json({})

    def delete_branch(self, req: Request, kind: str, repo: str, branch: str) -> Response:
        with self.lock:
            target = self.get_repo(req, kind, repo)
            self.require_write(req, target.namespace)
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch")
            if target.branches.pop(branch, None) is None:
                raise HubError(404, f"Branch not found: {branch}", "RevisionNotFound")
        return Response.json({})

    def create_tag(self, req: Request, kind: str, repo: str, rev: str) -> Response:
        tag = str(req.json().get("tag") or "")
        with self.lock:
            target = self.get_repo(req, kind, repo)
            self.require_write(req, target.namespace)
            if not _BRANCH_RE.fullmatch(tag) or ".." in tag:
                raise _bad_request(f"Invalid tag name '{tag}'")
            if tag in target.tags:
                raise HubError(409, f"Tag already exists: {tag}")
            target.tags[tag] = self.resolve(target, rev).oid
        return Response.json({})

    def delete_tag(self, req: Request, kind: str, repo: str, tag: str) -> Response:
        with self.lock:
            target = self.get_repo(req, kind, repo)
            self.require_write(req, target.namespace)
            if target.tags.pop(tag, None) is None:
                raise HubError(404, f"Tag not found: {tag}", "RevisionNotFound")
        return Response.json({})

    # ----------------------------------------------------------------------------------------------
    # Writes: uploads and commits
    # ----------------------------------------------------------------------------------------------

    def _writable_repo(self, req: Request, kind: str, repo: str) -> Repo:
        """The repo, if the requester may write to it (or open a PR on it, with ``create_pr``)."""
        target = self.get_repo(req, kind, repo)
        if req.flag("create_pr"):
            self.require_auth(req)
        else:
            self.require_write(req, target.namespace)
        return target

    def preupload(self, req: Request, kind: str, repo: str, rev: str) -> Response:
        files = req.json().get("files")
        if not isinstance(files, list):
            raise _bad_request("'files' must be a list")
        with self.lock:
            target = self._writable_repo(req, kind, repo)
            commit = self.resolve(target, rev)
            answers = [self._preupload_answer(commit, f) for f in files]
        return Response.json({"files": answers, "commitOid": commit.oid})

    def _preupload_answer(self, commit: Commit, file: Mapping[str, Any]) -> dict[str, Any]:
        file = _require_object(file, "a preupload file")
        path, size = str(file.get("path", "")), file.get("size")
        if (problem := validate_path_in_repo(path)) is not None:
            raise _bad_request(problem)
        if not isinstance(size, int) or size < 0:
            raise _bad_request(f"Invalid size for '{path}'")
        existing = commit.tree.get(path)
        return {
            "path": path,
            "uploadMode": "lfs" if self.is_lfs_path(path, size) else "regular",
            "shouldIgnore": False,
            "oid": existing.upload_oid if existing is not None else None,
        }

    def commit(self, req: Request, kind: str, repo: str, rev: str) -> Response:
        header, operations = self._parse_ndjson(req.body)
        with self.lock:
            target = self._writable_repo(req, kind, repo)
            base = self.resolve(target, rev)
            if req.flag("create_pr"):
                ref: tuple[str, str] = ("pr", f"refs/pr/{len(target.pull_requests) + 1}")
            else:
                ref = self.find_ref(target, rev) or ("commit", rev)
                if ref[0] not in ("branch", "pr"):
                    raise _bad_request(f"Invalid rev id: {rev} is not a branch")
                parent = header.get("parentCommit")
                if parent is not None and not base.oid.startswith(str(parent)):
                    raise HubError(
                        412, "A commit has happened since. Please refresh and try again."
                    )
            tree = self._apply_operations(target, dict(base.tree), operations)
            author = req.principal.user if req.principal else "anonymous"
            new = self.new_commit(
                target,
                base.oid,
                tree,
                str(header.get("summary") or ""),
                str(header.get("description") or ""),
                author,
            )
            payload = self._move_ref(target, ref, new)
        return Response.json(payload)

    def _move_ref(self, repo: Repo, ref: tuple[str, str], commit: Commit) -> dict[str, Any]:
        """Point ``ref`` to ``commit`` (creating a PR ref if needed); return the API answer."""
        kind, name = ref
        payload: dict[str, Any] = {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{self.repo_url(repo)}/commit/{commit.oid}",
            "hookOutput": "",
        }
        if kind == "branch":
            repo.branches[name] = commit.oid
        else:
            number = int(name.rsplit("/", 1)[1])
            repo.pull_requests[number] = commit.oid
            payload["pullRequestUrl"] = f"{self.repo_url(repo)}/discussions/{number}"
        return payload

    @staticmethod
    def _parse_ndjson(body: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Split a commit payload into its header value and its operation lines."""
        try:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError as err:
            raise _bad_request(f"Invalid NDJSON commit payload: {err}") from err
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
            raise _bad_request("The first line of a commit payload must be its header")
        header = _require_object(lines[0].get("value") or {}, "the commit header")
        if not str(header.get("summary") or "").strip():
            raise _bad_request("A commit needs a summary")
        return header, lines[1:]

    def _apply_operations(
        self, repo: Repo, tree: dict[str, Blob], operations: list[dict[str, Any]]
    ) -> dict[str, Blob]:
        """Apply commit operations to ``tree`` (a copy); raise on any problem (repo untouched)."""
        appliers: dict[str, Callable[[Repo, dict[str, Blob], dict[str, Any]], None]] = {
            "file": self._op_file,
            "lfsFile": self._op_lfs_file,
            "deletedFile": self._op_deleted_file,
            "deletedFolder": self._op_deleted_folder,
        }
        for operation in operations:
            operation = _require_object(operation, "a commit operation")
            key, value = (
                operation.get("key"),
                _require_object(operation.get("value") or {}, "a value"),
            )
            if key not in appliers:
                raise _bad_request(f"Unsupported commit operation '{key}'")
            path = (
                str(value.get("path", "")).strip("/")
                if key == "deletedFolder"
                else str(value.get("path", ""))
            )
            if (problem := validate_path_in_repo(path)) is not None:
                raise _bad_request(problem)
            appliers[key](repo, tree, {**value, "path": path})
        return tree

    @staticmethod
    def _op_file(repo: Repo, tree: dict[str, Blob], value: dict[str, Any]) -> None:
        content = str(value.get("content", ""))
        if value.get("encoding", "utf-8") == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except ValueError as err:
                raise _bad_request(f"Invalid base64 content for '{value['path']}'") from err
        else:
            data = content.encode()
        tree[value["path"]] = Blob(data)

    def _op_lfs_file(self, repo: Repo, tree: dict[str, Blob], value: dict[str, Any]) -> None:
        oid, size = value.get("oid"), value.get("size")
        if not isinstance(oid, str) or oid not in repo.lfs_oids or oid not in self.lfs_store:
            raise _bad_request(
                "Your push was rejected because an LFS pointer pointed to a file that does not "
                f"exist ({value['path']})"
            )
        data = self.lfs_store[oid]
        if size is not None and size != len(data):
            raise _bad_request(f"LFS object size mismatch for '{value['path']}'")
        tree[value["path"]] = Blob(data, lfs=True)

    @staticmethod
    def _op_deleted_file(repo: Repo, tree: dict[str, Blob], value: dict[str, Any]) -> None:
        if tree.pop(value["path"], None) is None:
            raise HubError(
                404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound"
            )

    @staticmethod
    def _op_deleted_folder(repo: Repo, tree: dict[str, Blob], value: dict[str, Any]) -> None:
        doomed = [p for p in tree if p.startswith(value["path"] + "/")]
        if not doomed:
            raise HubError(
                404, f"A folder with this name doesn't exist: {value['path']}", "EntryNotFound"
            )
        for path in doomed:
            del tree[path]

    # ----------------------------------------------------------------------------------------------
    # Git LFS
    # ----------------------------------------------------------------------------------------------

    def lfs_batch(self, req: Request, kind: str, repo: str) -> Response:
        payload = req.json()
        if payload.get("operation") != "upload":
            raise _bad_request("Only the 'upload' LFS operation is supported")
        with self.lock:
            target = self.get_repo(req, kind, repo)
            self.require_write(req, target.namespace)
            objects = [self._lfs_batch_object(target, obj) for obj in payload.get("objects") or []]
        return Response.json(
            {"transfer": "basic", "objects": objects},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_batch_object(self, repo: Repo, obj: Mapping[str, Any]) -> dict[str, Any]:
        obj = _require_object(obj, "an LFS object")
        oid, size = obj.get("oid"), obj.get("size")
        if (
            not isinstance(oid, str)
            or not _SHA256_RE.fullmatch(oid)
            or not isinstance(size, int)
            or size < 0
        ):
            return {
                "oid": str(oid),
                "size": size if isinstance(size, int) else 0,
                "error": {"code": 422, "message": "Invalid object"},
            }
        answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        if oid in repo.lfs_oids and oid in self.lfs_store:
            return answer  # already there: no actions => the client skips the upload
        ticket = secrets.token_hex(16)
        self._upload_tickets[ticket] = ((repo.repo_type, repo.repo_id.lower()), oid, size)
        git_url = f"{self.repo_url(repo)}.git/info/lfs/objects"
        answer["actions"] = {
            "upload": {"href": f"{self.base_url}/__lfs__/upload/{ticket}", "expires_in": 3600},
            "verify": {"href": f"{git_url}/verify", "header": {}, "expires_in": 3600},
        }
        return answer

    def lfs_upload(self, req: Request, ticket: str) -> Response:
        """``PUT`` of an LFS object to the (pre-signed, token-less) href the batch endpoint gave."""
        with self.lock:
            found = self._upload_tickets.get(ticket)
        if found is None:
            raise HubError(404, "Unknown or expired upload URL")
        repo_key, oid, size = found
        if len(req.body) != size or hashlib.sha256(req.body).hexdigest() != oid:
            raise _bad_request(f"Uploaded content does not match oid {oid} / size {size}")
        with self.lock:
            repo = self.repos.get(repo_key)
            if repo is None:
                raise HubError(404, "Repository was deleted during the upload", "RepoNotFound")
            self.lfs_store[oid] = req.body
            repo.lfs_oids.add(oid)
        return Response(200, b"", {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})

    def lfs_verify(self, req: Request, kind: str, repo: str) -> Response:
        payload = req.json()
        with self.lock:
            target = self.get_repo(req, kind, repo)
            self.require_write(req, target.namespace)
            oid, size = payload.get("oid"), payload.get("size")
            known = isinstance(oid, str) and oid in target.lfs_oids
            stored = self.lfs_store.get(oid) if known else None
            if stored is None or len(stored) != size:
                raise HubError(404, f"LFS object {oid} not found")
        return Response.json({})

    def missing_repo(self, req: Request, kind: str, repo: str) -> Response:
        """Catch-all for ids without a namespace: the Hub has no such (canonical) repos here."""
        raise self._repo_not_found(req, kind, repo)


_API = r"/api/(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_GIT = r"/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?)"
_SUBPATHS = "revision|tree|commits|paths-info|preupload|commit|branch|tag|refs|settings"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern), name)
    for method, pattern, name in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", r"/api/(?P<kind>models|datasets|spaces)", "list_repos"),
        ("GET", _API, "repo_info"),
        ("GET", _API + r"/revision/(?P<rev>.+)", "repo_info"),
        ("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("POST", _API + r"/paths-info/(?P<rev>.+)", "paths_info"),
        ("GET", _API + r"/commits/(?P<rev>.+)", "list_commits"),
        ("GET", _API + r"/refs", "refs"),
        ("PUT", _API + r"/settings", "update_settings"),
        ("POST", _API + r"/preupload/(?P<rev>.+)", "preupload"),
        ("POST", _API + r"/commit/(?P<rev>.+)", "commit"),
        ("POST", _API + r"/branch/(?P<branch>.+)", "create_branch"),
        ("DELETE", _API + r"/branch/(?P<branch>.+)", "delete_branch"),
        ("POST", _API + r"/tag/(?P<rev>.+)", "create_tag"),
        ("DELETE", _API + r"/tag/(?P<tag>.+)", "delete_tag"),
        ("POST", _GIT + r"\.git/info/lfs/objects/batch", "lfs_batch"),
        ("POST", _GIT + r"\.git/info/lfs/objects/verify", "lfs_verify"),
        ("PUT", r"/__lfs__/upload/(?P<ticket>[0-9a-f]+)", "lfs_upload"),
        ("GET", _GIT + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve_file"),
        ("HEAD", _GIT + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve_file"),
        (
            "*",
            rf"/api/(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+)(?:/(?:{_SUBPATHS})(?:/.*)?)?",
            "missing_repo",
        ),
        ("*", r"/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+)/resolve/.*", "missing_repo"),
    ]
]


def route(app: HubApp, req: Request) -> Response:
    """Dispatch a request to the :class:`HubApp` method its path maps to (404 if none)."""
    for method, pattern, name in ROUTES:
        if method not in (req.method, "*"):
            continue
        match = pattern.fullmatch(req.path)
        if match is not None:
            params = {
                k: unquote(v) if v is not None else None for k, v in match.groupdict().items()
            }
            if "kind" in params:  # "models"/"datasets"/"spaces", or a URL prefix (None for models)
                params["kind"] = PLURAL_TO_TYPE[params["kind"]]
            return getattr(app, name)(req, **params)
    raise HubError(404, f"Not found: {req.method} {req.path}")


class _RequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive transport for :class:`HubApp`; always reads the body before answering."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, each request would stall
    # for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    server: _HubHTTPServer
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.hub.verbose:
            super().log_message(format, *args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        parts = urlsplit(self.path)
        req = Request(
            self.command,
            parts.path,
            parse_qs(parts.query, keep_blank_values=True),
            self.headers,
            body,
        )
        hub = self.server.hub
        hub.record_request(req.method, req.path)
        try:
            req.principal = hub.app.authenticate(self.headers)
            response = route(hub.app, req)
        except HubError as err:
            response = err.response()
        except Exception:  # noqa: BLE001 - any bug of the fake: a 500, kept for the tests
            hub.errors.append(traceback.format_exc())
            response = HubError(
                500, "Internal error in the fake Hub server (see HubServer.errors)"
            ).response()
        self._write(response)

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class HubServer:
    """A fake Hugging Face Hub on ``127.0.0.1``, served from a daemon thread.

    Args:
        tokens: token -> ``{"user": "alice", "orgs": ["dtzoo"], "write": True}`` (``write`` may
            also be a list of namespaces). Defaults to one token, ``"hf_test_token"``, for user
            "user" with write access everywhere. Read on every request: tests may edit
            ``server.tokens``.
        lfs_threshold: files of this many bytes or more go through LFS (0: every non-empty file).
        lfs_patterns: fnmatch patterns of paths always sent through LFS (e.g.
            ``HUB_DEFAULT_LFS_PATTERNS``).
        init_gitattributes: whether a new repo's first commit holds the default ``.gitattributes``.
        port: port to bind (0 => a free one).
        verbose: log every request to stderr.
    """

    DEFAULT_TOKEN = "hf_test_token"

    def __init__(
        self,
        tokens: Mapping[str, Mapping[str, Any]] | None = None,
        lfs_threshold: int = 10_000_000,
        *,
        lfs_patterns: Iterable[str] = (),
        init_gitattributes: bool = True,
        port: int = 0,
        verbose: bool = False,
    ) -> None:
        if tokens is None:
            tokens = {self.DEFAULT_TOKEN: {"user": "user", "orgs": ["*"], "write": True}}
        self.app = HubApp(tokens, lfs_threshold, lfs_patterns, init_gitattributes)
        self.port = port
        self.verbose = verbose
        self.request_log: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind ``127.0.0.1`` (a free port unless one was given) and serve from a daemon thread."""
        self._httpd = _HubHTTPServer(("127.0.0.1", self.port), _RequestHandler)
        self._httpd.hub = self
        self.port = self._httpd.server_address[1]
        self.app.base_url = self.url
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"hub-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (what ``HF_ENDPOINT`` must be set to)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def tokens(self) -> dict[str, Mapping[str, Any]]:
        """The valid tokens (token -> config); edit it to add or revoke tokens on the fly."""
        return self.app.tokens

    # ---- request accounting ----------------------------------------------------------------------

    def record_request(self, method: str, path: str) -> None:
        self.request_log.append((method, path))

    def reset_request_log(self) -> None:
        """Forget the requests seen so far."""
        self.request_log.clear()

    def count_requests(self, method: str | None = None, path_contains: str = "") -> int:
        """Logged requests with this method (any if ``None``) and a path with ``path_contains``."""
        return sum(1 for m, p in self.request_log if method in (None, m) and path_contains in p)

    # ---- state inspection ------------------------------------------------------------------------

    def _repo(self, repo_id: str, repo_type: str) -> Repo:
        repo = self.app.repos.get((repo_type, repo_id.lower()))
        if repo is None:
            raise KeyError(f"No {repo_type} repo '{repo_id}' on the fake Hub")
        return repo

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return (repo_type, repo_id.lower()) in self.app.repos

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        return self._repo(repo_id, repo_type).private

    def _commit(self, repo_id: str, revision: str, repo_type: str) -> Commit:
        with self.app.lock:
            repo = self._repo(repo_id, repo_type)
            return self.app.resolve(repo, revision)

    def files(
        self, repo_id: str, revision: str = "main", repo_type: str = "model"
    ) -> dict[str, bytes]:
        """Path -> content of each file at ``revision`` (branch, tag, ``refs/pr/N`` or commit)."""
        return {
            path: blob.data
            for path, blob in sorted(self._commit(repo_id, revision, repo_type).tree.items())
        }

    def lfs_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> set[str]:
        """Paths stored as LFS objects at ``revision``."""
        return {
            path
            for path, blob in self._commit(repo_id, revision, repo_type).tree.items()
            if blob.lfs
        }

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """Commit oid ``revision`` points to."""
        return self._commit(repo_id, revision, repo_type).oid

    def branches(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        """Branch name -> commit oid."""
        with self.app.lock:
            return dict(self._repo(repo_id, repo_type).branches)

    def tags(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        """Tag name -> commit oid."""
        with self.app.lock:
            return dict(self._repo(repo_id, repo_type).tags)

    def commits(
        self, repo_id: str, revision: str = "main", repo_type: str = "model"
    ) -> list[dict[str, Any]]:
        """History of ``revision``, newest first.

        Each commit is a dict: oid, parent, message, description, author, date, files (paths).
        """
        with self.app.lock:
            repo = self._repo(repo_id, repo_type)
            history = repo.history(self.app.resolve(repo, revision).oid)
        return [
            {
                "oid": c.oid,
                "parent": c.parent,
                "message": c.title,
                "description": c.description,
                "author": c.author,
                "date": c.date,
                "files": sorted(c.tree),
            }
            for c in history
        ]

    def lfs_objects(self) -> dict[str, bytes]:
        """Every LFS object uploaded so far (sha256 -> content), across repos."""
        with self.app.lock:
            return dict(self.app.lfs_store)


def main(argv: list[str] | None = None) -> None:
    """Run the fake Hub: ``python -m tests.hub_server --port 8080 --token hf_x``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--port", type=int, default=0, help="port to bind on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        help="valid token, write access everywhere (repeatable)",
    )
    parser.add_argument("--user", default="user", help="user name behind the tokens")
    parser.add_argument(
        "--lfs-threshold", type=int, default=10_000_000, help="LFS size threshold in bytes"
    )
    parser.add_argument(
        "--hub-lfs-patterns",
        action="store_true",
        help="also send the Hub's default LFS patterns to LFS",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    tokens = {
        t: {"user": args.user, "orgs": ["*"], "write": True}
        for t in args.token or [HubServer.DEFAULT_TOKEN]
    }
    patterns = HUB_DEFAULT_LFS_PATTERNS if args.hub_lfs_patterns else ()
    server = HubServer(
        tokens, args.lfs_threshold, lfs_patterns=patterns, port=args.port, verbose=args.verbose
    ).start()
    print(f"Fake Hugging Face Hub on {server.url}", file=sys.stderr)
    print(
        f"  export HF_ENDPOINT={server.url} HF_HUB_DISABLE_XET=1 HF_TOKEN={next(iter(tokens))}",
        file=sys.stderr,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
