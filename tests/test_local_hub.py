"""dtzoo.hub.local: publish/pull with the Hub's repo/revision semantics, on the local disk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dtzoo import paths
from dtzoo.checkpoint import MANIFEST, WEIGHTS, load_model, save_model, verify
from dtzoo.errors import CheckpointError, HubError, UsageError
from dtzoo.hub import check_revision, get_hub, repo_id
from dtzoo.hub.local import LocalHub
from dtzoo.modeldir import ModelDir
from tests.test_checkpoint import flip_byte, make_config, make_model

REPO = "dtzoo/pendulum-2L-seed3"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DTZOO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def hub(home) -> LocalHub:
    h = get_hub("local")
    assert isinstance(h, LocalHub) and h.root == home / "hub"
    return h


def model_dir(
    tmp_path: Path, name: str = "run", seed: int = 0, step: int = 40, readme: bytes = b"# card\n"
) -> Path:
    config = make_config(step=step)
    return save_model(
        make_model(config, seed), config, tmp_path / name, extra_files={"README.md": readme}
    )


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_publish_then_pull_round_trip(tmp_path, hub, home):
    src = model_dir(tmp_path)
    res = hub.publish(src, REPO)
    assert (res.repo_id, res.revision, res.skipped) == (REPO, "main", False)
    assert re.fullmatch(r"[0-9a-f]{40}", res.commit)
    assert res.url.startswith("file://") and res.url.endswith("@main")
    assert hub.revisions(REPO) == {"main": res.commit}

    path = hub.pull(REPO)
    assert path == paths.cache_dir() / REPO / res.commit
    assert path.is_relative_to(home)
    assert files(path) == files(src)
    model, config = load_model(path)
    original, _ = load_model(src)
    for k, v in original.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    assert config.model_id == "pendulum-2L-seed3"
    # the snapshot on the hub is complete and verified too
    verify(hub.repo(REPO) / "snapshots" / res.commit)
    assert hub.pull(REPO, res.commit) == path  # a commit hash is a revision as well


def test_publishing_unchanged_files_makes_no_new_commit(tmp_path, hub):
    src = model_dir(tmp_path)
    first = hub.publish(src, REPO)
    again = hub.publish(src, REPO)
    assert again.skipped and again.commit == first.commit
    # a byte-identical copy elsewhere is the same commit as well
    copy = model_dir(tmp_path, name="copy")
    assert files(copy) == files(src)
    assert hub.publish(copy, REPO).skipped
    assert [p.name for p in (hub.repo(REPO) / "snapshots").iterdir()] == [first.commit]


def test_a_change_makes_a_new_commit_and_keeps_the_old_one(tmp_path, hub):
    src = model_dir(tmp_path)
    first = hub.publish(src, REPO)
    (src / "README.md").write_text("# a better card\n")  # an optional file edited by hand
    manifest = (src / MANIFEST).read_bytes()
    with pytest.raises(CheckpointError, match="README.md: sha256 mismatch"):
        hub.publish(src, REPO)  # a hub publishes what was sealed, and never writes into src
    assert (src / MANIFEST).read_bytes() == manifest
    ModelDir(src).seal()  # the edit is now part of the model directory
    second = hub.publish(src, REPO)
    assert not second.skipped and second.commit != first.commit
    assert hub.revisions(REPO) == {"main": second.commit}
    assert (hub.pull(REPO) / "README.md").read_text() == "# a better card\n"
    assert (hub.pull(REPO, first.commit) / "README.md").read_text() == "# card\n"
    assert sorted(p.name for p in (hub.repo(REPO) / "snapshots").iterdir()) == sorted(
        [first.commit, second.commit]
    )
    # new weights: a new commit again
    retrained = model_dir(tmp_path, name="run2", seed=9, readme=b"# a better card\n")
    third = hub.publish(retrained, REPO)
    assert third.commit not in (first.commit, second.commit)


def test_revisions_main_and_training_steps(tmp_path, hub):
    steps = {n: model_dir(tmp_path, name=f"step{n}", seed=n, step=n) for n in (0, 4, 16)}
    main = model_dir(tmp_path, name="final", seed=16, step=16)
    commits = {
        f"step{n}": hub.publish(d, REPO, revision=f"step{n}").commit for n, d in steps.items()
    }
    commits["main"] = hub.publish(main, REPO).commit
    assert hub.revisions(REPO) == commits
    # the last checkpoint and main hold the same files, hence the same commit
    assert commits["main"] == commits["step16"]
    assert len(set(commits.values())) == 3
    for n in (0, 4, 16):
        _, config = load_model(hub.pull(REPO, f"step{n}"))
        assert config.step == n
    with pytest.raises(HubError) as e:
        hub.pull(REPO, "step8")
    assert "no revision 'step8'" in str(e.value)
    assert "revisions: main, step0, step4, step16" in str(e.value)  # in a useful order


def test_a_corrupt_cache_entry_is_fetched_again(tmp_path, hub):
    src = model_dir(tmp_path)
    hub.publish(src, REPO)
    path = hub.pull(REPO)
    flip_byte(path / WEIGHTS, (path / WEIGHTS).stat().st_size - 5)
    (path / "README.md").unlink()
    with pytest.raises(CheckpointError):
        verify(path)
    again = hub.pull(REPO)
    assert again == path
    verify(again)
    assert files(again) == files(src)


def test_a_corrupt_hub_snapshot_is_a_hub_error(tmp_path, hub):
    src = model_dir(tmp_path)
    commit = hub.publish(src, REPO).commit
    snap = hub.repo(REPO) / "snapshots" / commit
    flip_byte(snap / WEIGHTS, (snap / WEIGHTS).stat().st_size - 5)
    with pytest.raises(HubError) as e:
        hub.pull(REPO)
    assert "corrupt" in str(e.value) and REPO in str(e.value) and WEIGHTS in str(e.value)
    assert not (paths.cache_dir() / REPO / commit).exists()  # nothing half-copied into the cache


def test_unknown_repo_and_revision(tmp_path, hub):
    with pytest.raises(HubError, match="not on the local hub"):
        hub.pull("dtzoo/nothing-1L-seed0")
    hub.publish(model_dir(tmp_path), REPO)
    with pytest.raises(HubError, match="no revision 'step3'.*revisions: main"):
        hub.pull(REPO, "step3")
    with pytest.raises(HubError, match="no revision"):
        hub.pull(REPO, "0" * 40)
    assert hub.revisions("dtzoo/nothing-1L-seed0") == {}


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Main",
        "master",
        "step",
        "step-1",
        "stepx",
        "step4/../main",
        "../main",
        "v1.0",
        "STEP4",
        "main ",
        "0" * 39,
        "g" * 40,
    ],
)
def test_invalid_revisions_are_usage_errors(tmp_path, hub, bad):
    with pytest.raises(UsageError, match="invalid revision"):
        check_revision(bad)
    with pytest.raises(UsageError, match="invalid revision"):
        hub.publish(model_dir(tmp_path), REPO, revision=bad)
    with pytest.raises(UsageError, match="invalid revision"):
        hub.pull(REPO, bad)
    assert not hub.repo(REPO).exists() or hub.revisions(REPO) == {}


@pytest.mark.parametrize("good", ["main", "step0", "step100000", "a" * 40, "0123456789abcdef" * 4])
def test_valid_revisions(good):
    assert check_revision(good) == good


def test_list_models_lists_repos_with_a_main_revision(tmp_path, hub):
    assert hub.list_models("dtzoo") == []
    hub.publish(model_dir(tmp_path), "dtzoo/pendulum-2L-seed3")
    hub.publish(model_dir(tmp_path, "b", seed=1), "dtzoo/cartpole-1L-seed0")
    hub.publish(
        model_dir(tmp_path, "c", seed=2), "dtzoo/hopper-1L-seed0", revision="step0"
    )  # no main yet
    hub.publish(model_dir(tmp_path, "d", seed=3), "someone/pendulum-1L-seed0")
    assert hub.list_models("dtzoo") == ["dtzoo/cartpole-1L-seed0", "dtzoo/pendulum-2L-seed3"]
    assert hub.list_models("someone") == ["someone/pendulum-1L-seed0"]
    assert hub.list_models("nobody") == []


def test_publish_takes_only_the_model_files_of_a_run_directory(tmp_path, hub):
    src = model_dir(tmp_path)
    config = make_config(step=0)
    save_model(make_model(config, 1), config, src / "checkpoints" / "step0")
    (src / ".lock").write_text("")
    commit = hub.publish(src, REPO).commit
    snap = hub.repo(REPO) / "snapshots" / commit
    assert sorted(p.name for p in snap.iterdir()) == sorted(
        ["README.md", "config.json", MANIFEST, WEIGHTS]
    )
    # nothing temporary is left next to the snapshots or refs
    assert [p.name for p in (hub.repo(REPO) / "snapshots").iterdir()] == [commit]
    assert [p.name for p in (hub.repo(REPO) / "refs").iterdir()] == ["main"]


def test_publish_refuses_corrupt_weights_instead_of_re_signing_them(tmp_path, hub):
    src = model_dir(tmp_path)
    flip_byte(src / WEIGHTS, (src / WEIGHTS).stat().st_size - 5)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        hub.publish(src, REPO)
    assert hub.revisions(REPO) == {}
    assert not (hub.repo(REPO) / "snapshots").exists() or not any(
        (hub.repo(REPO) / "snapshots").iterdir()
    )


def test_hand_made_directories_are_sealed_before_publishing(tmp_path, hub):
    src = model_dir(tmp_path)
    (src / MANIFEST).unlink()
    (src / "eval.json").write_text("{}\n")
    with pytest.raises(CheckpointError, match=r"not sealed .*ModelDir\(path\).seal\(\)"):
        hub.publish(src, REPO)
    assert not (src / MANIFEST).exists()  # the hub wrote nothing into it
    ModelDir(src).seal()
    (src / "notes.txt").write_text("added after sealing\n")
    with pytest.raises(CheckpointError, match="notes.txt: not covered by manifest.json"):
        hub.publish(src, REPO)
    (src / "notes.txt").unlink()
    commit = hub.publish(src, REPO).commit
    assert (hub.pull(REPO) / "eval.json").read_text() == "{}\n"
    verify(hub.repo(REPO) / "snapshots" / commit)


def test_repo_ids_and_hub_names():
    assert repo_id("dtzoo", "hopper-1L-seed0") == "dtzoo/hopper-1L-seed0"
    assert repo_id("my.org_1", "hopper-1L-seed0") == "my.org_1/hopper-1L-seed0"
    for bad in ("", "my org", "a--b", "a..b", "-a", "a/b", "x" * 97):
        with pytest.raises(UsageError, match="invalid org"):
            repo_id(bad, "hopper-1L-seed0")
    with pytest.raises(UsageError, match="unknown hub 'ftp'"):
        get_hub("ftp")
