"""The fake Hub of ``tests/hub_server.py`` against the real, unmodified ``huggingface_hub`` client.

Every test drives the client and then checks both sides: what the client returned or raised, and
what the server stored (``hub_server.files``, ``branches``, ``commits``) or saw
(``hub_server.request_log``).
"""

from __future__ import annotations

import http.client
import json
import os
import struct
import subprocess
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import gymnasium as gym
import httpx2
import minari
import numpy as np
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from minari.data_collector import EpisodeBuffer

from tests.hub_fixtures import ORG, OUTSIDER_TOKEN, READ_TOKEN, WRITE_TOKEN, set_hub_offline
from tests.hub_server import HubServer

REPO = f"{ORG}/hopper-dt"
CARD = "---\nlicense: mit\nlibrary_name: dtzoo\ntags: [decision-transformer, hopper]\n---\n# DT\n"
# Raw NDJSON commit lines, for requests sent by hand.
HEADER_LINE = b'{"key": "header", "value": {"summary": "x"}}\n'
NEWLINE_PATH_LINE = b'{"key": "file", "value": {"path": "a\\nb", "content": ""}}\n'


def fake_safetensors(n_floats: int, seed: int = 0) -> bytes:
    """Bytes shaped like a safetensors file: u64 header length, JSON header, raw f32 values."""
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}
    ).encode()
    return (
        struct.pack("<Q", len(header))
        + header
        + struct.pack(f"<{n_floats}f", *(float(seed + i) for i in range(n_floats)))
    )


MODEL_FILES: dict[str, bytes] = {
    "README.md": CARD.encode(),
    "config.json": json.dumps({"state_dim": 11, "act_dim": 3, "hidden_size": 128}).encode(),
    "model.safetensors": fake_safetensors(2048),
    "checkpoints/step_100.safetensors": fake_safetensors(512, seed=100),
}


def write_folder(root: Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (relative path -> content) under ``root``; return ``root``."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def user_files(
    server: HubServer, repo_id: str = REPO, revision: str = "main", repo_type: str = "model"
) -> dict[str, bytes]:
    """The repo's files, without the ``.gitattributes`` every new repo starts with."""
    return {
        p: d for p, d in server.files(repo_id, revision, repo_type).items() if p != ".gitattributes"
    }


def read_tree(folder: str | Path) -> dict[str, bytes]:
    """Relative path -> content of the files under ``folder`` (skipping the ``.cache`` folder)."""
    root = Path(folder)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


@pytest.fixture
def published(hub_server: HubServer, tmp_path: Path) -> HubServer:
    """``hub_server`` with :data:`REPO` created and :data:`MODEL_FILES` uploaded to main."""
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=write_folder(tmp_path / "model", MODEL_FILES))
    hub_server.reset_request_log()
    return hub_server


# --------------------------------------------------------------------------------------------------
# Repos
# --------------------------------------------------------------------------------------------------


def test_create_repo_and_exist_ok(hub_server: HubServer) -> None:
    api = HfApi()
    url = api.create_repo(REPO)
    assert (url.endpoint, url.repo_id, url.repo_type) == (hub_server.url, REPO, "model")
    assert str(url) == f"{hub_server.url}/{REPO}"
    # Like the Hub: an initial commit by "system" holding the default .gitattributes.
    assert [(c["message"], c["author"]) for c in hub_server.commits(REPO)] == [
        ("initial commit", "system")
    ]
    assert b"*.safetensors filter=lfs" in hub_server.files(REPO)[".gitattributes"]

    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(REPO)
    assert excinfo.value.response.status_code == 409
    assert excinfo.value.response.json()["url"] == str(url)
    assert api.create_repo(REPO, exist_ok=True) == url
    assert api.create_repo(REPO.upper(), exist_ok=True) == url  # repo ids are case-insensitive

    # Without an organization, the repo goes to the token's user.
    assert api.create_repo("scratch").repo_id == "alice/scratch"
    api.delete_repo("alice/scratch")
    assert not hub_server.repo_exists("alice/scratch")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("alice/scratch")
    api.delete_repo("alice/scratch", missing_ok=True)


def test_private_repos_are_hidden_from_outsiders(hub_server: HubServer) -> None:
    HfApi().create_repo(REPO, private=True)
    assert hub_server.is_private(REPO)
    assert HfApi(token=READ_TOKEN).model_info(REPO).private is True  # org member
    for outsider in (HfApi(token=OUTSIDER_TOKEN), HfApi(token=False)):
        with pytest.raises(RepositoryNotFoundError):
            outsider.model_info(REPO)
        assert REPO not in [m.id for m in outsider.list_models(author=ORG)]
    HfApi().update_repo_settings(REPO, private=False)
    assert HfApi(token=False).model_info(REPO).private is False


def test_invalid_repo_ids_are_rejected(hub_server: HubServer) -> None:
    with pytest.raises(HFValidationError):  # the client validates before sending anything...
        HfApi().create_repo(f"{ORG}/bad name")
    assert hub_server.request_log == []
    headers = {"Authorization": f"Bearer {WRITE_TOKEN}"}
    # ...and so does the server.
    for name in ("bad name", "-leading-dash", "double--dash", "x" * 97, "repo.git", ""):
        response = httpx2.post(
            f"{hub_server.url}/api/repos/create",
            json={"name": name, "organization": ORG},
            headers=headers,
        )
        assert response.status_code == 400, name
    assert not hub_server.app.repos


# --------------------------------------------------------------------------------------------------
# Uploads and commits
# --------------------------------------------------------------------------------------------------


def test_upload_folder_inline(hub_server: HubServer, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    info = api.upload_folder(
        repo_id=REPO, folder_path=write_folder(tmp_path / "m", MODEL_FILES), commit_message="v1"
    )

    assert user_files(hub_server) == MODEL_FILES
    assert hub_server.lfs_files(REPO) == set()  # all below the 10 MB threshold => committed inline
    assert info.oid == hub_server.head(REPO) == hub_server.branches(REPO)["main"]
    assert info.commit_url == f"{hub_server.url}/{REPO}/commit/{info.oid}"
    assert [(c["message"], c["author"]) for c in hub_server.commits(REPO)] == [
        ("v1", "alice"),
        ("initial commit", "system"),
    ]
    # README.md's metadata is validated (twice: by upload_folder, then by create_commit).
    assert hub_server.count_requests("POST", "/api/validate-yaml") == 2
    assert hub_server.count_requests("POST", ".git/info/lfs") == 0
    assert hub_server.count_requests("POST", f"/api/models/{REPO}/commit/main") == 1


def test_upload_folder_lfs(hub_server_factory: Callable[..., HubServer], tmp_path: Path) -> None:
    hub_server = hub_server_factory(lfs_threshold=0)  # every non-empty file goes through Git LFS
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(
        repo_id=REPO, folder_path=write_folder(tmp_path / "m", {**MODEL_FILES, "empty.txt": b""})
    )

    assert user_files(hub_server) == {**MODEL_FILES, "empty.txt": b""}
    assert hub_server.lfs_files(REPO) == set(MODEL_FILES)  # empty files are always committed inline
    assert set(hub_server.lfs_objects().values()) == set(MODEL_FILES.values())
    assert hub_server.count_requests("POST", f"/{REPO}.git/info/lfs/objects/batch") == 1
    assert hub_server.count_requests("PUT", "/__lfs__/upload/") == len(MODEL_FILES)
    assert hub_server.count_requests("POST", "/info/lfs/objects/verify") == len(MODEL_FILES)

    siblings = {s.rfilename: s for s in api.model_info(REPO, files_metadata=True).siblings}
    weights, content = siblings["model.safetensors"], MODEL_FILES["model.safetensors"]
    assert weights.lfs is not None and weights.lfs.size == weights.size == len(content)
    assert Path(hf_hub_download(REPO, "model.safetensors")).read_bytes() == content


@pytest.mark.parametrize("lfs_threshold", [10_000_000, 0], ids=["inline", "lfs"])
def test_identical_upload_makes_no_commit(
    hub_server_factory: Callable[..., HubServer], tmp_path: Path, lfs_threshold: int
) -> None:
    hub_server = hub_server_factory(lfs_threshold=lfs_threshold)
    api = HfApi()
    api.create_repo(REPO)
    folder = write_folder(tmp_path / "m", MODEL_FILES)
    first = api.upload_folder(repo_id=REPO, folder_path=folder)
    hub_server.reset_request_log()

    # The preupload answer carries each stored file's oid: the client sees nothing changed, skips
    # the commit and answers with the current head (fetched with a revision-info call). In LFS
    # mode it still asks the LFS batch endpoint, which answers "already there": nothing is PUT.
    second = api.upload_folder(repo_id=REPO, folder_path=folder)
    assert second.oid == first.oid == hub_server.head(REPO)
    assert len(hub_server.commits(REPO)) == 2
    assert hub_server.count_requests("POST", "/commit/") == 0
    assert hub_server.count_requests("PUT") == 0
    assert hub_server.count_requests("GET", f"/api/models/{REPO}/revision/main") == 1

    # Changing one file commits (only that content changes); LFS uploads only the changed object.
    hub_server.reset_request_log()
    (folder / "config.json").write_bytes(b'{"hidden_size": 256}')
    third = api.upload_folder(repo_id=REPO, folder_path=folder)
    assert third.oid == hub_server.head(REPO) != first.oid
    assert user_files(hub_server) == {**MODEL_FILES, "config.json": b'{"hidden_size": 256}'}
    assert hub_server.count_requests("PUT") == (1 if lfs_threshold == 0 else 0)


def test_empty_commits(published: HubServer) -> None:
    api = HfApi()
    before = published.head(REPO)
    # The client never sends an empty commit: it answers with the current head instead.
    assert api.create_commit(REPO, operations=[], commit_message="nothing").oid == before
    assert published.count_requests("POST", "/commit/") == 0
    # Sent by hand, an empty commit is recorded, like on the Hub: a new commit with the same files.
    response = httpx2.post(
        f"{published.url}/api/models/{REPO}/commit/main",
        content=HEADER_LINE,
        headers={"Authorization": f"Bearer {WRITE_TOKEN}", "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 200
    assert response.json()["commitOid"] == published.head(REPO) != before
    assert published.files(REPO) == published.files(REPO, before)


def test_commits_are_atomic(published: HubServer) -> None:
    api = HfApi()
    before, files_before = published.head(REPO), published.files(REPO)
    operations = [
        CommitOperationAdd("new.txt", b"new"),
        CommitOperationDelete("config.json"),
        CommitOperationDelete("does-not-exist.bin"),
    ]
    with pytest.raises(EntryNotFoundError):
        api.create_commit(REPO, operations=operations, commit_message="half-broken")
    assert published.head(REPO) == before and published.files(REPO) == files_before

    with pytest.raises(HfHubHTTPError) as excinfo:  # parent_commit must be the branch head
        api.create_commit(
            REPO,
            operations=operations[:1],
            commit_message="stale",
            parent_commit=published.commits(REPO)[1]["oid"],
        )
    assert excinfo.value.response.status_code == 412
    info = api.create_commit(
        REPO, operations=operations[:2], commit_message="ok", parent_commit=before
    )
    assert published.head(REPO) == info.oid and published.commits(REPO)[0]["parent"] == before
    assert "config.json" not in published.files(REPO) and published.files(REPO)["new.txt"] == b"new"

    api.delete_folder("checkpoints", repo_id=REPO)
    assert not any(p.startswith("checkpoints/") for p in published.files(REPO))


# --------------------------------------------------------------------------------------------------
# Refs and repo info
# --------------------------------------------------------------------------------------------------


def test_branches_tags_and_pull_requests(published: HubServer, tmp_path: Path) -> None:
    api = HfApi()
    main = published.head(REPO)
    api.create_branch(REPO, branch="v2")
    api.create_branch(REPO, branch="v2", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_branch(REPO, branch="v2")
    assert excinfo.value.response.status_code == 409
    api.upload_file(
        path_or_fileobj=b'{"hidden_size": 64}',
        path_in_repo="config.json",
        repo_id=REPO,
        revision="v2",
    )

    assert published.branches(REPO) == {"main": main, "v2": published.head(REPO, "v2")}
    assert published.files(REPO, "v2")["config.json"] == b'{"hidden_size": 64}'
    assert published.files(REPO)["config.json"] == MODEL_FILES["config.json"]  # main untouched
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == published.branches(REPO)
    assert api.model_info(REPO, revision="v2").sha == published.head(REPO, "v2")
    assert api.model_info(REPO, revision=main).sha == main
    assert [c.commit_id for c in api.list_repo_commits(REPO, revision="v2")] == [
        c["oid"] for c in published.commits(REPO, "v2")
    ]

    api.create_branch(REPO, branch="from-initial", revision=published.commits(REPO)[-1]["oid"])
    assert api.list_repo_files(REPO, revision="from-initial") == [".gitattributes"]
    api.delete_branch(REPO, branch="from-initial")
    assert "from-initial" not in published.branches(REPO)

    api.create_tag(REPO, tag="v1.0", revision=main)
    assert published.tags(REPO) == {"v1.0": main}
    assert (
        Path(hf_hub_download(REPO, "config.json", revision="v1.0")).read_bytes()
        == MODEL_FILES["config.json"]
    )

    pr = api.upload_file(
        path_or_fileobj=b"proposal", path_in_repo="PR.md", repo_id=REPO, create_pr=True
    )
    assert pr.pr_revision == "refs/pr/1"
    assert published.files(REPO, "refs/pr/1")["PR.md"] == b"proposal"
    assert "PR.md" not in published.files(REPO)
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [pr.name for pr in refs.pull_requests] == ["1"]


def test_repo_info_and_listings(published: HubServer) -> None:
    api = HfApi()
    info = api.model_info(REPO)
    assert (info.id, info.author, info.sha) == (REPO, ORG, published.head(REPO))
    assert sorted(s.rfilename for s in info.siblings) == sorted(published.files(REPO))
    assert info.card_data.license == "mit" and info.library_name == "dtzoo"
    assert {"decision-transformer", "hopper", "dtzoo", "license:mit"} <= set(info.tags)

    assert api.list_repo_files(REPO) == sorted(published.files(REPO))
    top = {e.path: type(e).__name__ for e in api.list_repo_tree(REPO)}
    assert top["checkpoints"] == "RepoFolder" and top["config.json"] == "RepoFile"
    assert [e.path for e in api.list_repo_tree(REPO, "checkpoints")] == [
        "checkpoints/step_100.safetensors"
    ]
    expanded = next(iter(api.list_repo_tree(REPO, "checkpoints", expand=True)))
    assert expanded.last_commit.oid == published.head(REPO)
    assert api.file_exists(REPO, "config.json") and not api.file_exists(REPO, "nope.json")
    assert [p.path for p in api.get_paths_info(REPO, ["config.json", "checkpoints", "nope"])] == [
        "config.json",
        "checkpoints",
    ]


def walker_card() -> ModelCard:
    """A card built with huggingface_hub itself, carrying eval results (``model-index``)."""
    result = EvalResult(
        task_type="reinforcement-learning",
        dataset_type="walker/expert-v0",
        dataset_name="Walker2d expert",
        metric_type="mean_reward",
        metric_value=4321.5,
    )
    data = ModelCardData(model_name="walker-dt", tags=["walker"], eval_results=[result])
    return ModelCard.from_template(data)


def test_list_models_with_card_data(published: HubServer) -> None:
    api = HfApi()
    walker = f"{ORG}/walker-dt"
    api.create_repo(walker)
    walker_card().push_to_hub(walker)
    api.create_repo("alice/elsewhere")

    models = {m.id: m for m in api.list_models(author=ORG, cardData=True)}
    assert set(models) == {REPO, walker}
    assert models[REPO].card_data.tags == ["decision-transformer", "hopper"]
    assert models[walker].card_data.tags == ["walker"]
    assert models[walker].card_data.eval_results[0].metric_value == 4321.5
    assert api.model_info(walker).model_index[0]["name"] == "walker-dt"
    assert all(m.card_data is None for m in api.list_models(author=ORG))
    assert [m.id for m in api.list_models(author=ORG, search="walker")] == [f"{ORG}/walker-dt"]
    assert [m.id for m in api.list_models(filter="hopper")] == [REPO]
    assert len(list(api.list_models(limit=1))) == 1
    full = next(iter(api.list_models(author=ORG, search="hopper", full=True)))
    assert full.sha == published.head(REPO)
    assert "config.json" in [s.rfilename for s in full.siblings]
    assert list(api.list_datasets(author=ORG)) == []


# --------------------------------------------------------------------------------------------------
# Downloads and the local cache
# --------------------------------------------------------------------------------------------------


def test_downloads_from_main_and_branch(published: HubServer, tmp_path: Path) -> None:
    api = HfApi()
    api.create_branch(REPO, branch="dev")
    api.upload_file(
        path_or_fileobj=b"dev only", path_in_repo="DEV.md", repo_id=REPO, revision="dev"
    )
    odd_name = "résultats/eval #1.json"
    api.upload_file(path_or_fileobj=b"{}", path_in_repo=odd_name, repo_id=REPO, revision="dev")
    assert Path(hf_hub_download(REPO, odd_name, revision="dev")).read_bytes() == b"{}"

    path = Path(hf_hub_download(REPO, "checkpoints/step_100.safetensors"))
    assert path.read_bytes() == MODEL_FILES["checkpoints/step_100.safetensors"]
    assert published.head(REPO) in path.parts  # cache layout: snapshots/<commit>/...

    main_snapshot = snapshot_download(REPO)
    assert Path(main_snapshot).name == published.head(REPO)
    assert read_tree(main_snapshot) == published.files(REPO)
    dev_snapshot = snapshot_download(REPO, revision="dev")
    assert read_tree(dev_snapshot) == published.files(REPO, "dev")
    assert read_tree(snapshot_download(REPO, local_dir=tmp_path / "local")) == published.files(REPO)


def test_cached_downloads_request_counts(published: HubServer) -> None:
    sha = published.head(REPO)
    snapshot = snapshot_download(REPO)

    def requests_made(download: Callable[[], str]) -> int:
        published.reset_request_log()
        assert download() in (snapshot, os.path.join(snapshot, "config.json"))
        return len(published.request_log)

    # A commit sha is immutable: with the tree listing and the files cached, no request at all.
    assert requests_made(lambda: snapshot_download(REPO, revision=sha)) == 0
    assert requests_made(lambda: hf_hub_download(REPO, "config.json", revision=sha)) == 0
    # A branch must be resolved: one revision-info call (snapshot) or one HEAD (single file), and
    # no content is downloaded again.
    assert requests_made(lambda: snapshot_download(REPO)) == 1
    assert published.request_log == [("GET", f"/api/models/{REPO}/revision/main")]
    assert requests_made(lambda: hf_hub_download(REPO, "config.json")) == 1
    assert published.request_log == [("HEAD", f"/{REPO}/resolve/main/config.json")]
    # local_files_only, or offline mode: served from the cache, branch resolved through refs/main.
    assert requests_made(lambda: snapshot_download(REPO, local_files_only=True)) == 0
    assert requests_made(lambda: hf_hub_download(REPO, "config.json", local_files_only=True)) == 0


def test_offline_mode(published: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = snapshot_download(REPO)
    published.reset_request_log()
    set_hub_offline(monkeypatch)
    assert snapshot_download(REPO) == snapshot
    assert hf_hub_download(REPO, "config.json") == os.path.join(snapshot, "config.json")
    with pytest.raises(OfflineModeIsEnabled):  # API calls are refused before reaching the network
        HfApi().model_info(REPO)
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download(f"{ORG}/never-downloaded")
    assert published.request_log == []


def test_range_requests_and_headers(published: HubServer) -> None:
    url = f"{published.url}/{REPO}/resolve/main/model.safetensors"
    data = MODEL_FILES["model.safetensors"]
    head = httpx2.head(url)
    assert head.headers["X-Repo-Commit"] == published.head(REPO)
    assert int(head.headers["Content-Length"]) == len(data)
    partial = httpx2.get(url, headers={"Range": "bytes=8-15"})
    assert partial.status_code == 206 and partial.content == data[8:16]
    assert partial.headers["Content-Range"] == f"bytes 8-15/{len(data)}"
    assert httpx2.get(url, headers={"Range": "bytes=-4"}).content == data[-4:]
    assert httpx2.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416


# --------------------------------------------------------------------------------------------------
# Errors and permissions
# --------------------------------------------------------------------------------------------------


def test_not_found_errors(published: HubServer) -> None:
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{ORG}/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{ORG}/missing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("gpt2")  # canonical (namespace-less) ids do not exist here
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "no-such-file.json")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, "no-such-folder"))
    with pytest.raises(RevisionNotFoundError):  # committing to a missing branch
        api.upload_file(
            path_or_fileobj=b"x", path_in_repo="x", repo_id=REPO, revision="no-such-branch"
        )


def write_attempts(api: HfApi) -> list[Callable[[], object]]:
    """Calls that each need write access to the "dtzoo" namespace."""
    return [
        lambda: api.create_repo(f"{ORG}/new"),
        lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO),
        lambda: api.create_branch(REPO, branch="b"),
    ]


def assert_status(call: Callable[[], object], status: int) -> None:
    with pytest.raises(HfHubHTTPError) as excinfo:
        call()
    assert excinfo.value.response.status_code == status


def test_authentication_and_permissions(published: HubServer) -> None:
    head = published.head(REPO)
    bad = HfApi(token="hf_not_a_valid_token")
    for call in [bad.whoami, *write_attempts(bad)]:
        assert_status(call, 401)
    for call in write_attempts(HfApi(token=False)):  # anonymous
        assert_status(call, 401)
    # A read-only member, and a write token for another namespace:
    for token in (READ_TOKEN, OUTSIDER_TOKEN):
        api = HfApi(token=token)
        for call in write_attempts(api):
            assert_status(call, 403)
        # create_repo(exist_ok=True) falls back to reading the existing repo after a 403.
        assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert published.head(REPO) == head and not published.repo_exists(f"{ORG}/new")
    assert set(published.branches(REPO)) == {"main"}

    assert HfApi(token=OUTSIDER_TOKEN).create_repo("mallory/own").repo_id == "mallory/own"
    assert HfApi(token=False).model_info(REPO).sha == head  # public reads need no token
    assert HfApi().whoami()["name"] == "alice"
    assert [o["name"] for o in HfApi(token=READ_TOKEN).whoami()["orgs"]] == [ORG]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/repos/create", b"[1, 2]"),
        ("POST", "/api/repos/create", b"{not json"),
        ("POST", f"/api/models/{REPO}/preupload/main", b'{"files": [1]}'),
        ("POST", f"/api/models/{REPO}/preupload/main", b'{"files": [{"path": "a", "size": -1}]}'),
        ("POST", f"/api/models/{REPO}/commit/main", b'{"key": "file", "value": {}}\n'),
        ("POST", f"/api/models/{REPO}/commit/main", HEADER_LINE + b"[]\n"),
        ("POST", f"/api/models/{REPO}/commit/main", HEADER_LINE + NEWLINE_PATH_LINE),
        ("POST", f"/{REPO}.git/info/lfs/objects/batch", b'{"operation": "upload", "objects": [1]}'),
    ],
)
def test_malformed_requests_get_400(
    published: HubServer, method: str, path: str, body: bytes
) -> None:
    headers = {"Authorization": f"Bearer {WRITE_TOKEN}"}
    response = httpx2.request(method, published.url + path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert published.errors == []


def test_error_bodies_keep_the_connection_in_sync(hub_server: HubServer) -> None:
    """An error answered before the body is used must not desynchronise a kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", hub_server.port)
    body = HEADER_LINE + b"x" * 200_000
    for _ in range(3):
        conn.request(
            "POST",
            f"/api/models/{REPO}/commit/main",
            body=body,
            headers={"Authorization": "Bearer wrong"},
        )
        response = conn.getresponse()
        assert response.status == 401
        assert (
            response.getheader("X-Error-Message") == "Invalid credentials in Authorization header"
        )
        response.read()
        conn.request("GET", "/api/whoami-v2", headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["name"] == "alice"
    conn.close()


# --------------------------------------------------------------------------------------------------
# Datasets, Minari and subprocesses
# --------------------------------------------------------------------------------------------------


def test_dataset_repos(hub_server_factory: Callable[..., HubServer], tmp_path: Path) -> None:
    hub_server = hub_server_factory(lfs_patterns=("*.arrow",))
    dataset = f"{ORG}/hopper-expert"
    files = {
        "README.md": b"---\nlicense: cc-by-4.0\n---\n",
        "data/metadata.json": b'{"dataset_id": "hopper/expert-v0"}',
        "data/main_data.arrow": bytes(range(256)) * 40,
    }
    api = HfApi()
    assert api.create_repo(dataset, repo_type="dataset").repo_type == "dataset"
    api.upload_folder(
        repo_id=dataset, folder_path=write_folder(tmp_path / "d", files), repo_type="dataset"
    )

    assert user_files(hub_server, dataset, repo_type="dataset") == files
    assert hub_server.lfs_files(dataset, repo_type="dataset") == {"data/main_data.arrow"}
    assert hub_server.count_requests("POST", f"/datasets/{dataset}.git/info/lfs/objects/batch") == 1
    assert not hub_server.repo_exists(dataset)  # model and dataset namespaces are separate
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(dataset)

    assert api.dataset_info(dataset).card_data.license == "cc-by-4.0"
    assert [d.id for d in api.list_datasets(author=ORG, dataset_name="hopper")] == [dataset]
    metadata = hf_hub_download(dataset, "data/metadata.json", repo_type="dataset")
    assert Path(metadata).read_bytes() == files["data/metadata.json"]
    local = snapshot_download(
        dataset, repo_type="dataset", allow_patterns="data/*", local_dir=tmp_path / "local"
    )
    assert read_tree(local) == {k: v for k, v in files.items() if k.startswith("data/")}
    with pytest.raises(EntryNotFoundError):  # what Minari catches for a missing namespace file
        hf_hub_download(dataset, "namespace_metadata.json", repo_type="dataset")


def test_subprocess_uses_the_fake_hub(published: HubServer) -> None:
    """Subprocesses import huggingface_hub afresh: the environment alone leads them to the fake."""
    script = (
        "import huggingface_hub as hh; "
        f"print(hh.whoami()['name'], hh.HfApi().model_info('{REPO}').sha, "
        "hh.constants.HF_HUB_DISABLE_XET)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["alice", published.head(REPO), "True"]
    assert published.count_requests("GET", "/api/whoami-v2") == 1


def cartpole_episodes(count: int) -> list[EpisodeBuffer]:
    """A few short CartPole episodes with alternating actions (deterministic, no extra deps)."""
    env = gym.make("CartPole-v1")
    episodes = []
    for index in range(count):
        obs, _ = env.reset(seed=index)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        while not (terminations and (terminations[-1] or truncations[-1])):
            action = len(actions) % 2
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terminations.append(terminated)
            truncations.append(truncated)
        episodes.append(
            EpisodeBuffer(
                id=index,
                seed=index,
                observations=np.asarray(observations),
                actions=np.asarray(actions),
                rewards=rewards,
                terminations=terminations,
                truncations=truncations,
                infos={},
            )
        )
    return episodes


def test_minari_hf_remote_roundtrip(
    hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Minari's own ``hf://<org>`` remote uploads and downloads datasets through the fake Hub."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("MINARI_REMOTE", f"hf://{ORG}")
    dataset_id = "cartpole/alternating-v0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari warns about unset author/code_permalink
        minari.create_dataset_from_buffers(
            dataset_id, cartpole_episodes(2), env="CartPole-v1", data_format="arrow"
        )
    rewards = [ep.rewards.sum() for ep in minari.load_dataset(dataset_id).iterate_episodes()]

    minari.upload_dataset(dataset_id, token=WRITE_TOKEN)
    stored = hub_server.files(f"{ORG}/cartpole", repo_type="dataset")
    assert {"namespace_metadata.json", "alternating-v0/data/metadata.json"} <= set(stored)
    assert dataset_id in minari.list_remote_datasets()

    minari.delete_dataset(dataset_id)
    minari.download_dataset(dataset_id)
    downloaded = minari.load_dataset(dataset_id)
    assert [ep.rewards.sum() for ep in downloaded.iterate_episodes()] == rewards
