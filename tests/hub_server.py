"""A small, in-memory fake of the Hugging Face Hub HTTP API, for offline tests.

The server speaks the part of the Hub protocol that dtzoo and Minari use, for the *unmodified*
``huggingface_hub`` client (2.x, with ``HF_HUB_DISABLE_XET=1``): create model and dataset repos,
commit files (inline, or through the legacy Git LFS batch API), create and delete branches, read
refs, commits, trees and repo info, list repos (with ``cardData``) and download files. It is built
on the standard library only (``http.server``); the README front matter is parsed with PyYAML,
which ``huggingface_hub`` itself depends on.

Usage::

    server = HubServer(tokens={"hf_w": {"user": "alice", "orgs": ["dtzoo"], "write": True}}).start()
    os.environ["HF_ENDPOINT"] = server.url  # must happen before `huggingface_hub` is imported
    ...
    server.files("dtzoo/my-model")  # -> {".gitattributes": b"...", "config.json": b"..."}
    server.stop()

Behaviour worth knowing (mirrors the real Hub unless stated otherwise):

* A new repo has one commit, "initial commit" by "system", holding a default ``.gitattributes``.
  Creating an existing repo answers 409 with the repo's ``url`` (``create_repo(exist_ok=True)``
  reads it).
* Uploading a README.md makes the client call ``POST /api/validate-yaml`` first; it always passes.
* Upload mode (preupload): "lfs" when ``size >= lfs_threshold`` or the path matches one of
  ``lfs_patterns`` (fnmatch on the path and on the basename), else "regular". The preupload answer
  carries the ``oid`` of the file already stored at that path (sha256 for LFS files, git blob sha1
  otherwise), which lets the client skip unchanged files.
* A commit is applied whole or not at all, under one lock; ``parentCommit`` must equal the branch
  head, else 412.
* Any request carrying an unknown token gets 401 "Invalid credentials in Authorization header";
  creating a repo needs a token with write access to the namespace (401 without a token, 403
  without access). Every repo is public.
* Every request's body is read before the answer, errors included, so a kept-alive connection
  stays in step.
* Files are served directly by ``/resolve`` (no CDN redirect), with ``X-Repo-Commit``, ``ETag`` (git
  blob sha1) and, for LFS files, ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``.
* No pagination: every listing fits in one page.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import re
import secrets
import threading
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from typing_extensions import Self

URL_PREFIXES = {"model": "", "dataset": "datasets/"}
PLURAL_TO_TYPE = {"models": "model", "datasets": "dataset", None: "model"}

HUB_DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar.*", "*.tar", "*.tflite",
    "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)  # fmt: skip
DEFAULT_GITATTRIBUTES = "".join(
    f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in HUB_DEFAULT_LFS_PATTERNS
)

_COMMIT_RE = re.compile(r"[0-9a-f]{7,40}")
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*$", re.DOTALL | re.MULTILINE)
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")
_INVALID_TOKEN = "Invalid credentials in Authorization header"


def _now() -> str:
    """Current UTC time in the Hub's ISO format (millisecond precision, ``Z`` suffix)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def parse_card_data(readme: bytes | None) -> dict[str, Any] | None:
    """A README's YAML front matter as a dict (``None`` if absent or empty)."""
    match = _FRONT_MATTER_RE.match(readme.decode("utf-8", errors="replace")) if readme else None
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) and data else None


class HubError(Exception):
    """An error answered in the Hub's format (``X-Error-Code`` and ``X-Error-Message`` headers)."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers: dict[str, str] = extra.pop("headers", {})
        self.extra = extra

    def response(self) -> Response:
        """The HTTP response for this error."""
        # a header value: ASCII, no control characters
        safe = _CONTROL_CHARS_RE.sub(" ", self.message.encode("ascii", "replace").decode())
        headers = {"X-Error-Message": safe, **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return Response.json(
            {"error": self.message, **self.extra}, status=self.status, headers=headers
        )


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
        """The Git LFS pointer file standing for the content in git."""
        return (
            f"version https://git-lfs.github.com/spec/v1\n"
            f"oid sha256:{self.sha256}\nsize {len(self.data)}\n"
        ).encode()

    @cached_property
    def oid(self) -> str:
        """Git object id: of the content for a regular file, of the pointer file for an LFS file."""
        return git_blob_sha1(self.pointer if self.lfs else self.data)

    @property
    def upload_oid(self) -> str:
        """The oid preupload reports, for the client to compare: sha256 for LFS, else git sha1."""
        return self.sha256 if self.lfs else self.oid


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
    """A repository: its branches and the commits they point to."""

    repo_type: str
    repo_id: str
    created_at: str
    uid: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

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


@dataclass(frozen=True)
class Principal:
    """The identity behind a token: a user, its orgs, and whether it may write to them."""

    user: str
    orgs: tuple[str, ...] = ()
    write: bool = True

    def can_write(self, namespace: str) -> bool:
        return self.write and namespace.lower() in {n.lower() for n in (self.user, *self.orgs)}


@dataclass
class Request:
    """A parsed HTTP request, body fully read."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    principal: Principal | None = None

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> dict[str, Any]:
        return json.loads(self.body or b"{}")


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
    ) -> None:
        self.tokens = dict(tokens)
        self.lfs_threshold = lfs_threshold
        self.lfs_patterns = tuple(lfs_patterns)
        self.base_url = ""
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self._upload_tickets: dict[str, str] = {}  # ticket -> the sha256 it may upload
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
        return Principal(str(config["user"]), tuple(config["orgs"]), bool(config["write"]))

    @staticmethod
    def require_auth(req: Request) -> Principal:
        if req.principal is None:
            raise HubError(401, "You must be authenticated to access this resource")
        return req.principal

    def get_repo(self, req: Request, repo_type: str, repo_id: str) -> Repo:
        """The repo, else RepoNotFound (401 for an anonymous request, as on the Hub)."""
        repo = self.repos.get((repo_type, repo_id.lower()))
        if repo is None:
            status = 401 if req.principal is None else 404
            raise HubError(status, f"Repository not found: {repo_type} '{repo_id}'", "RepoNotFound")
        return repo

    def writable_repo(self, req: Request, repo_type: str, repo_id: str) -> Repo:
        repo = self.get_repo(req, repo_type, repo_id)
        if not self.require_auth(req).can_write(repo.namespace):
            raise HubError(403, f"You don't have the rights to write to '{repo.namespace}'")
        return repo

    @staticmethod
    def resolve(repo: Repo, revision: str) -> Commit:
        """The commit a branch, a commit oid or a unique oid prefix (>= 7 chars) names."""
        name = revision.removeprefix("refs/heads/")
        if name in repo.branches:
            return repo.commits[repo.branches[name]]
        if _COMMIT_RE.fullmatch(revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

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
        """Create and register a commit (branches are not moved)."""
        date = _now()
        seed = [parent, title, author, date, next(self._counter), sorted(tree)]
        oid = hashlib.sha1(json.dumps(seed).encode()).hexdigest()
        commit = Commit(oid, parent, title, description, author, date, tree=dict(tree))
        repo.commits[commit.oid] = commit
        return commit

    @staticmethod
    def repo_json(repo: Repo, commit: Commit, siblings: bool) -> dict[str, Any]:
        """Repo info at ``commit``, as ``/api/{type}s/{repo}`` and the listings serialise it."""
        readme = commit.tree.get("README.md")
        card = parse_card_data(readme.data if readme else None)
        info: dict[str, Any] = {
            "_id": repo.uid,
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": False,
            "tags": [],
        }
        if card is not None:
            info["cardData"] = card
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            info.update({k: card[k] for k in ("library_name", "model-index") if card and k in card})
        if siblings:
            info["siblings"] = [{"rfilename": p} for p in sorted(commit.tree)]
        return info

    @staticmethod
    def tree_entry(commit: Commit, path: str) -> dict[str, Any]:
        """A ``/tree`` entry for a file or a folder."""
        blob = commit.tree.get(path)
        if blob is None:
            inside = sorted((p, b.oid) for p, b in commit.tree.items() if p.startswith(path + "/"))
            oid = hashlib.sha1(json.dumps(inside).encode()).hexdigest()
            return {"type": "directory", "oid": oid, "size": 0, "path": path}
        entry = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
        if blob.lfs:
            entry["lfs"] = {
                "oid": blob.sha256,
                "size": len(blob.data),
                "pointerSize": len(blob.pointer),
            }
        return entry

    # ----------------------------------------------------------------------------------------------
    # Repos
    # ----------------------------------------------------------------------------------------------

    def create_repo(self, req: Request) -> Response:
        principal = self.require_auth(req)
        payload = req.json()
        repo_type = payload.get("type") or "model"
        namespace = str(payload.get("organization") or principal.user)
        name = str(payload.get("name") or "")
        if not principal.can_write(namespace):
            raise HubError(
                403,
                f"You don't have the rights to create a {repo_type} "
                f'under the namespace "{namespace}"',
            )
        with self.lock:
            key = (repo_type, f"{namespace}/{name}".lower())
            if key in self.repos:
                url = self.repo_url(self.repos[key])
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            repo = Repo(repo_type, f"{namespace}/{name}", _now(), secrets.token_hex(12))
            tree = {".gitattributes": Blob(DEFAULT_GITATTRIBUTES.encode())}
            initial = self.new_commit(repo, None, tree, "initial commit", "", "system")
            repo.branches["main"] = initial.oid
            self.repos[key] = repo
        return Response.json({"url": self.repo_url(repo), "name": repo.repo_id, "id": repo.uid})

    def validate_yaml(self, req: Request) -> Response:
        return Response.json({"errors": [], "warnings": []})

    # ----------------------------------------------------------------------------------------------
    # Reads
    # ----------------------------------------------------------------------------------------------

    def list_repos(self, req: Request, kind: str) -> Response:
        author, search = req.arg("author"), req.arg("search")
        with self.lock:
            entries = [
                self.repo_json(r, r.head, siblings=False)
                for r in self.repos.values()
                if r.repo_type == kind
                and author in (None, r.namespace)
                and (search or "").lower() in r.repo_id.lower()
            ]
        if (req.arg("cardData") or "").lower() != "true":
            entries = [{k: v for k, v in e.items() if k != "cardData"} for e in entries]
        return Response.json(entries)

    def repo_info(self, req: Request, kind: str, repo: str, rev: str = "main") -> Response:
        with self.lock:
            target = self.get_repo(req, kind, repo)
            return Response.json(self.repo_json(target, self.resolve(target, rev), siblings=True))

    def tree(self, req: Request, kind: str, repo: str, rev: str) -> Response:
        """The whole tree, every file and every folder (what ``recursive=True`` asks for)."""
        with self.lock:
            commit = self.resolve(self.get_repo(req, kind, repo), rev)
        folders = {p.rsplit("/", i)[0] for p in commit.tree for i in range(1, p.count("/") + 1)}
        return Response.json([self.tree_entry(commit, p) for p in sorted({*commit.tree, *folders})])

    def list_commits(self, req: Request, kind: str, repo: str, rev: str) -> Response:
        with self.lock:
            target = self.get_repo(req, kind, repo)
            history = target.history(self.resolve(target, rev).oid)
        return Response.json([c.as_json() for c in history])

    def refs(self, req: Request, kind: str, repo: str) -> Response:
        with self.lock:
            branches = sorted(self.get_repo(req, kind, repo).branches.items())
        return Response.json(
            {
                "branches": [
                    {"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid}
                    for n, oid in branches
                ],
                "converts": [],
                "tags": [],
            }
        )

    def resolve_file(self, req: Request, kind: str, repo: str, rev: str, path: str) -> Response:
        """``GET``/``HEAD`` ``/{repo}/resolve/{revision}/{path}``: the file, with Hub headers."""
        with self.lock:
            commit = self.resolve(self.get_repo(req, kind, repo), rev)
        blob = commit.tree.get(path)
        if blob is None:  # the client's EntryNotFoundError: a missing optional file
            raise HubError(
                404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid}
            )
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{blob.oid}"',
            "Content-Type": "application/octet-stream",
        }
        if blob.lfs:
            headers.update(
                {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))}
            )
        return Response(200, blob.data, headers)

    # ----------------------------------------------------------------------------------------------
    # Writes: branches, uploads and commits
    # ----------------------------------------------------------------------------------------------

    def create_branch(self, req: Request, kind: str, repo: str, branch: str) -> Response:
        with self.lock:
            target = self.writable_repo(req, kind, repo)
            if branch in target.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = self.resolve(target, str(req.json().get("startingPoint") or "main"))
            target.branches[branch] = start.oid
        return Response.json({})

    def delete_branch(self, req: Request, kind: str, repo: str, branch: str) -> Response:
        with self.lock:
            del self.writable_repo(req, kind, repo).branches[branch]
        return Response.json({})

    def preupload(self, req: Request, kind: str, repo: str, rev: str) -> Response:
        with self.lock:
            commit = self.resolve(self.writable_repo(req, kind, repo), rev)
        answers = []
        for file in req.json()["files"]:
            existing = commit.tree.get(file["path"])
            answers.append(
                {
                    "path": file["path"],
                    "uploadMode": "lfs"
                    if self.is_lfs_path(file["path"], file["size"])
                    else "regular",
                    "shouldIgnore": False,
                    "oid": existing.upload_oid if existing is not None else None,
                }
            )
        return Response.json({"files": answers, "commitOid": commit.oid})

    def commit(self, req: Request, kind: str, repo: str, rev: str) -> Response:
        """An NDJSON commit: a header line, then ``file``/``lfsFile``/``deletedFile`` lines."""
        header, *operations = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        header = header["value"]
        with self.lock:
            target = self.writable_repo(req, kind, repo)
            base = self.resolve(target, rev)
            parent = header.get("parentCommit")
            if parent is not None and not base.oid.startswith(str(parent)):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(base.tree)
            for operation in operations:
                key, value = operation["key"], operation["value"]
                if key == "file":
                    tree[value["path"]] = Blob(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    tree[value["path"]] = Blob(self.lfs_store[value["oid"]], lfs=True)
                else:  # deletedFile
                    del tree[value["path"]]
            author = req.principal.user if req.principal else "anonymous"
            summary, description = str(header["summary"]), str(header.get("description") or "")
            new = self.new_commit(target, base.oid, tree, summary, description, author)
            target.branches[rev.removeprefix("refs/heads/")] = new.oid
        return Response.json(
            {
                "success": True,
                "commitOid": new.oid,
                "commitUrl": f"{self.repo_url(target)}/commit/{new.oid}",
                "hookOutput": "",
            }
        )

    # ----------------------------------------------------------------------------------------------
    # Git LFS
    # ----------------------------------------------------------------------------------------------

    def lfs_batch(self, req: Request, kind: str, repo: str) -> Response:
        """Upload actions for the objects not stored yet (none: the client skips the upload)."""
        with self.lock:
            target = self.writable_repo(req, kind, repo)
            objects = []
            for obj in req.json()["objects"]:
                answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in self.lfs_store:
                    ticket = secrets.token_hex(16)
                    self._upload_tickets[ticket] = obj["oid"]
                    verify = f"{self.repo_url(target)}.git/info/lfs/objects/verify"
                    answer["actions"] = {
                        "upload": {"href": f"{self.base_url}/__lfs__/upload/{ticket}"},
                        "verify": {"href": verify, "header": {}},
                    }
                objects.append(answer)
        return Response.json(
            {"transfer": "basic", "objects": objects},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def lfs_upload(self, req: Request, ticket: str) -> Response:
        """``PUT`` of an LFS object to the (pre-signed, token-less) href the batch endpoint gave."""
        with self.lock:
            self.lfs_store[self._upload_tickets.pop(ticket)] = req.body
        return Response(200, b"", {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})

    def lfs_verify(self, req: Request, kind: str, repo: str) -> Response:
        return Response.json({})


_API = r"/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
_GIT = r"/(?:(?P<kind>datasets)/)?(?P<repo>[^/]+/[^/]+?)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern), name)
    for method, pattern, name in [
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", r"/api/(?P<kind>models|datasets)", "list_repos"),
        ("GET", _API, "repo_info"),
        ("GET", _API + r"/revision/(?P<rev>.+)", "repo_info"),
        ("GET", _API + r"/tree/(?P<rev>[^/]+)/?", "tree"),
        ("GET", _API + r"/commits/(?P<rev>.+)", "list_commits"),
        ("GET", _API + r"/refs", "refs"),
        ("POST", _API + r"/preupload/(?P<rev>.+)", "preupload"),
        ("POST", _API + r"/commit/(?P<rev>.+)", "commit"),
        ("POST", _API + r"/branch/(?P<branch>.+)", "create_branch"),
        ("DELETE", _API + r"/branch/(?P<branch>.+)", "delete_branch"),
        ("POST", _GIT + r"\.git/info/lfs/objects/batch", "lfs_batch"),
        ("POST", _GIT + r"\.git/info/lfs/objects/verify", "lfs_verify"),
        ("PUT", r"/__lfs__/upload/(?P<ticket>[0-9a-f]+)", "lfs_upload"),
        ("GET", _GIT + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve_file"),
        ("HEAD", _GIT + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve_file"),
    ]
]


def route(app: HubApp, req: Request) -> Response:
    """Dispatch a request to the :class:`HubApp` method its path maps to (404 if none)."""
    for method, pattern, name in ROUTES:
        match = pattern.fullmatch(req.path) if method == req.method else None
        if match is not None:
            params = {k: unquote(v) if v else v for k, v in match.groupdict().items()}
            if "kind" in params:  # "models"/"datasets", or a URL prefix (None for models)
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
        pass  # quiet: the tests read HubServer.request_log instead

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        req = Request(self.command, parts.path, query, body)
        hub = self.server.hub
        hub.request_log.append((req.method, req.path))
        try:
            req.principal = hub.app.authenticate(self.headers)
            response = route(hub.app, req)
        except HubError as err:
            response = err.response()
        except Exception:  # noqa: BLE001 - any bug of the fake: a 500, kept for the tests
            hub.errors.append(traceback.format_exc())
            response = HubError(
                500, "Internal error in the fake Hub (see HubServer.errors)"
            ).response()
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class HubServer:
    """A fake Hugging Face Hub on ``127.0.0.1``, served from a daemon thread.

    Args:
        tokens: token -> ``{"user": "alice", "orgs": ["dtzoo"], "write": True}``.
        lfs_threshold: files of this many bytes or more go through LFS (0: every non-empty file).
        lfs_patterns: fnmatch patterns of paths always sent through LFS (e.g.
            ``HUB_DEFAULT_LFS_PATTERNS``).
    """

    def __init__(
        self,
        tokens: Mapping[str, Mapping[str, Any]],
        lfs_threshold: int = 10_000_000,
        *,
        lfs_patterns: Iterable[str] = (),
    ) -> None:
        self.app = HubApp(tokens, lfs_threshold, lfs_patterns)
        self.port = 0
        self.request_log: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Bind a free port of ``127.0.0.1`` and serve from a daemon thread."""
        self._httpd = _HubHTTPServer(("127.0.0.1", 0), _RequestHandler)
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

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (what ``HF_ENDPOINT`` must be set to)."""
        return f"http://127.0.0.1:{self.port}"

    # ---- request accounting ----------------------------------------------------------------------

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

    def _commit(self, repo_id: str, revision: str, repo_type: str) -> Commit:
        with self.app.lock:
            return self.app.resolve(self._repo(repo_id, repo_type), revision)

    def files(
        self, repo_id: str, revision: str = "main", repo_type: str = "model"
    ) -> dict[str, bytes]:
        """Path -> content of each file at ``revision`` (a branch or a commit)."""
        tree = self._commit(repo_id, revision, repo_type).tree
        return {path: blob.data for path, blob in sorted(tree.items())}

    def lfs_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> set[str]:
        """Paths stored as LFS objects at ``revision``."""
        tree = self._commit(repo_id, revision, repo_type).tree
        return {path for path, blob in tree.items() if blob.lfs}

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """Commit oid ``revision`` points to."""
        return self._commit(repo_id, revision, repo_type).oid

    def branches(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        """Branch name -> commit oid."""
        with self.app.lock:
            return dict(self._repo(repo_id, repo_type).branches)

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
