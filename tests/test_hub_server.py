"""The fake Hub of ``tests/hub_server.py`` against the real, unmodified ``huggingface_hub`` client.

Every test drives the client and then checks both sides: what the client returned or raised, and
what the server stored (``hub_server.files``, ``branches``, ``commits``) or saw
(``hub_server.request_log``). Only what dtzoo and Minari use is served, so only that is tested.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

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
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_fixtures import ORG, OUTSIDER_TOKEN, READ_TOKEN, set_hub_offline
from tests.hub_server import HubServer

REPO = f"{ORG}/hopper-dt"
CARD = "---\nlicense: mit\nlibrary_name: dtzoo\ntags: [decision-transformer, hopper]\n---\n# DT\n"
MODEL_FILES: dict[str, bytes] = {
    "README.md": CARD.encode(),
    "config.json": b'{"state_dim": 11, "act_dim": 3}',
    "model.safetensors": bytes(range(256)) * 32,
    "checkpoints/step_100.safetensors": bytes(range(128)) * 8,
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


def test_create_repo_answers_409_with_the_url(hub_server: HubServer) -> None:
    api = HfApi()
    url = api.create_repo(REPO)
    assert (url.endpoint, url.repo_id, url.repo_type) == (hub_server.url, REPO, "model")
    # Like the Hub: an initial commit by "system" holding the default .gitattributes.
    assert [(c["message"], c["author"]) for c in hub_server.commits(REPO)] == [
        ("initial commit", "system")
    ]
    assert b"*.safetensors filter=lfs" in hub_server.files(REPO)[".gitattributes"]
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(REPO)
    assert excinfo.value.response.status_code == 409
    assert excinfo.value.response.json()["url"] == str(url)
    assert api.create_repo(REPO, exist_ok=True) == url  # reads the url of the 409
    assert api.create_repo(REPO.upper(), exist_ok=True) == url  # repo ids are case-insensitive


@pytest.mark.parametrize("lfs_threshold", [10_000_000, 0], ids=["inline", "lfs"])
def test_upload_inline_or_through_lfs_and_again_unchanged(
    hub_server_factory: Callable[..., HubServer], tmp_path: Path, lfs_threshold: int
) -> None:
    hub_server = hub_server_factory(lfs_threshold=lfs_threshold)  # 0: every non-empty file
    lfs = lfs_threshold == 0
    api = HfApi()
    api.create_repo(REPO)
    files = {**MODEL_FILES, "empty.txt": b""}
    folder = write_folder(tmp_path / "m", files)
    first = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="v1")

    assert user_files(hub_server) == files
    assert hub_server.lfs_files(REPO) == (set(MODEL_FILES) if lfs else set())  # empty: inline
    assert first.oid == hub_server.head(REPO) and first.commit_url.endswith(f"/commit/{first.oid}")
    assert [(c["message"], c["author"]) for c in hub_server.commits(REPO)] == [
        ("v1", "alice"),
        ("initial commit", "system"),
    ]
    # README.md's metadata is validated first (by upload_folder, then by create_commit).
    assert hub_server.count_requests("POST", "/api/validate-yaml") == 2
    assert hub_server.count_requests("POST", f"/{REPO}.git/info/lfs/objects/batch") == int(lfs)
    assert hub_server.count_requests("PUT", "/__lfs__/upload/") == len(MODEL_FILES) * lfs
    assert hub_server.count_requests("POST", "/info/lfs/objects/verify") == len(MODEL_FILES) * lfs
    downloaded = hf_hub_download(REPO, "model.safetensors")
    assert Path(downloaded).read_bytes() == MODEL_FILES["model.safetensors"]

    # The preupload answer carries each stored file's oid: nothing changed, no commit (in LFS
    # mode the batch endpoint answers "already there": nothing is PUT).
    hub_server.reset_request_log()
    assert api.upload_folder(repo_id=REPO, folder_path=folder).oid == first.oid
    assert hub_server.count_requests("POST", "/commit/") == hub_server.count_requests("PUT") == 0


def test_a_commit_names_its_parent_and_applies_whole(published: HubServer) -> None:
    api = HfApi()
    before = published.head(REPO)
    add, delete = CommitOperationAdd("new.txt", b"new"), CommitOperationDelete("config.json")
    stale = published.commits(REPO)[1]["oid"]
    with pytest.raises(HfHubHTTPError) as excinfo:  # parent_commit must be the branch head
        api.create_commit(REPO, operations=[add], commit_message="stale", parent_commit=stale)
    assert excinfo.value.response.status_code == 412 and published.head(REPO) == before
    info = api.create_commit(
        REPO, operations=[add, delete], commit_message="ok", parent_commit=before
    )
    assert published.head(REPO) == info.oid and published.commits(REPO)[0]["parent"] == before
    assert "config.json" not in published.files(REPO) and published.files(REPO)["new.txt"] == b"new"


def test_branches_and_revisions(published: HubServer) -> None:
    api = HfApi()
    main = published.head(REPO)
    api.create_branch(REPO, branch="step8")
    api.create_branch(REPO, branch="step8", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_branch(REPO, branch="step8")
    assert excinfo.value.response.status_code == 409
    api.upload_file(
        path_or_fileobj=b'{"step": 8}', path_in_repo="config.json", repo_id=REPO, revision="step8"
    )
    step8 = published.head(REPO, "step8")
    assert published.branches(REPO) == {"main": main, "step8": step8}
    assert published.files(REPO)["config.json"] == MODEL_FILES["config.json"]  # main untouched
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == published.branches(REPO)
    assert [c.commit_id for c in api.list_repo_commits(REPO, revision="step8")] == [
        c["oid"] for c in published.commits(REPO, "step8")
    ]
    assert api.model_info(REPO, revision="step8").sha == step8
    assert api.model_info(REPO, revision=main[:12]).sha == main  # a commit, or its prefix
    tree = {e.path: e for e in api.list_repo_tree(REPO, revision="step8", recursive=True)}
    assert set(tree) == {*published.files(REPO, "step8"), "checkpoints"}
    assert type(tree["checkpoints"]).__name__ == "RepoFolder"
    assert Path(hf_hub_download(REPO, "config.json", revision="step8")).read_bytes() == (
        b'{"step": 8}'
    )
    assert read_tree(snapshot_download(REPO, revision=main)) == published.files(REPO)
    api.create_branch(REPO, branch="from-initial", revision=published.commits(REPO)[-1]["oid"])
    assert api.list_repo_files(REPO, revision="from-initial") == [".gitattributes"]
    api.delete_branch(REPO, branch="from-initial")
    assert set(published.branches(REPO)) == {"main", "step8"}


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


def test_listings_carry_the_card_data(published: HubServer) -> None:
    api = HfApi()
    walker = f"{ORG}/walker-dt"
    api.create_repo(walker)
    walker_card().push_to_hub(walker)
    api.create_repo("alice/elsewhere")
    api.create_repo(f"{ORG}/a-dataset", repo_type="dataset")

    models = {m.id: m for m in api.list_models(author=ORG, cardData=True)}
    assert set(models) == {REPO, walker}
    assert models[REPO].card_data.tags == ["decision-transformer", "hopper"]
    assert models[walker].card_data.eval_results[0].metric_value == 4321.5
    assert models[REPO].sha == published.head(REPO)
    assert all(m.card_data is None for m in api.list_models(author=ORG))
    info = api.model_info(walker)
    assert info.model_index[0]["name"] == "walker-dt" and info.card_data.tags == ["walker"]
    assert api.model_info(REPO).library_name == "dtzoo"
    # Minari lists a remote's datasets by author and name (a search)
    assert [d.id for d in api.list_datasets(author=ORG, dataset_name="a-data")] == [
        f"{ORG}/a-dataset"
    ]
    assert list(api.list_datasets(author=ORG, dataset_name="hopper")) == []


def test_a_cached_download_and_offline_mode(
    published: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = published.head(REPO)
    snapshot = snapshot_download(REPO)
    assert Path(snapshot).name == sha and read_tree(snapshot) == published.files(REPO)

    def requests_made(download: Callable[[], str]) -> int:
        published.reset_request_log()
        assert download() in (snapshot, os.path.join(snapshot, "config.json"))
        return len(published.request_log)

    # A commit sha is immutable: with the files cached, no request at all; a branch is resolved
    # with one revision-info call (snapshot) or one HEAD (single file).
    assert requests_made(lambda: snapshot_download(REPO, revision=sha)) == 0
    assert requests_made(lambda: snapshot_download(REPO)) == 1
    assert published.request_log == [("GET", f"/api/models/{REPO}/revision/main")]
    assert requests_made(lambda: hf_hub_download(REPO, "config.json")) == 1
    assert published.request_log == [("HEAD", f"/{REPO}/resolve/main/config.json")]
    # HF_HUB_OFFLINE: served from the cache, API calls refused before reaching the network
    published.reset_request_log()
    set_hub_offline(monkeypatch)
    assert snapshot_download(REPO) == snapshot
    assert hf_hub_download(REPO, "config.json") == os.path.join(snapshot, "config.json")
    with pytest.raises(OfflineModeIsEnabled):
        HfApi().model_info(REPO)
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download(f"{ORG}/never-downloaded")
    assert published.request_log == []


def test_not_found_errors(published: HubServer) -> None:
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{ORG}/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{ORG}/missing", "config.json")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):  # what Minari catches for a missing namespace file
        hf_hub_download(REPO, "no-such-file.json")


def test_tokens_and_write_access(published: HubServer) -> None:
    head = published.head(REPO)

    def status(call: Callable[[], object]) -> int:
        with pytest.raises(HfHubHTTPError) as excinfo:
            call()
        return excinfo.value.response.status_code

    for api in (HfApi(token="hf_not_a_valid_token"), HfApi(token=False)):  # bad, anonymous
        assert status(lambda: api.create_repo(f"{ORG}/new")) == 401
        assert status(lambda: api.create_branch(REPO, branch="b")) == 401
    for token in (READ_TOKEN, OUTSIDER_TOKEN):  # read-only member, writer elsewhere
        api = HfApi(token=token)
        assert status(lambda: api.create_repo(f"{ORG}/new")) == 403
        assert status(lambda: api.create_branch(REPO, branch="b")) == 403
        # create_repo(exist_ok=True) falls back to reading the existing repo after a 403.
        assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert HfApi(token=OUTSIDER_TOKEN).create_repo("mallory/own").repo_id == "mallory/own"
    assert HfApi(token=False).model_info(REPO).sha == head  # public reads need no token
    assert published.head(REPO) == head and not published.repo_exists(f"{ORG}/new")
    assert set(published.branches(REPO)) == {"main"}


def test_error_bodies_keep_the_connection_in_sync(hub_server: HubServer) -> None:
    """An error answered before the body is used must not desynchronise a kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", hub_server.port)
    body = b'{"key": "header", "value": {"summary": "x"}}\n' + b"x" * 200_000
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
        conn.request("GET", f"/api/models?author={ORG}")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read()) == []
    conn.close()


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
    local = snapshot_download(
        dataset, repo_type="dataset", allow_patterns="data/*", local_dir=tmp_path / "local"
    )
    assert read_tree(local) == {k: v for k, v in files.items() if k.startswith("data/")}


def test_subprocess_uses_the_fake_hub(published: HubServer) -> None:
    """Subprocesses import huggingface_hub afresh: the environment alone leads them to the fake."""
    script = (
        "import huggingface_hub as hh; "
        f"print(hh.HfApi().model_info('{REPO}').sha, hh.constants.HF_HUB_DISABLE_XET)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == [published.head(REPO), "True"]
    assert published.count_requests("GET", f"/api/models/{REPO}") == 1
