"""dtzoo.hub.hf: publish to and pull from the Hugging Face Hub, through the unmodified client.

Every test drives dtzoo (zoo.publish_cell / zoo.pull / dtzoo.load, or the CLI in a subprocess)
against tests/hub_server.py and asserts on both sides: what the server stores (files, branches,
commits, requests) and what dtzoo reports and leaves on disk. Models come from the tiny test
registry, trained once per module and copied into each test's DTZOO_HOME.

The last test talks to the real Hub; it runs only with DTZOO_LIVE_HUB_ORG and HF_TOKEN set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
import yaml

from dtzoo import paths, zoo
from dtzoo.card import write_card
from dtzoo.checkpoint import MANIFEST, WEIGHTS, load_model, verify
from dtzoo.errors import HubError, UsageError
from dtzoo.hub import get_hub
from dtzoo.hub.hf import HFHub, card_results, check_repo_id
from dtzoo.modeldir import ModelDir
from tests.conftest import run_cli, trained_home
from tests.hub_fixtures import (
    HUB_TOKENS,
    ORG,
    OUTSIDER_TOKEN,
    READ_TOKEN,
    WRITE_TOKEN,
    set_hub_offline,
)
from tests.hub_server import HUB_DEFAULT_LFS_PATTERNS, parse_card_data
from tests.test_checkpoint import flip_byte

MID, MID2 = "pendulum-1L-seed0", "pendulum-1L-seed1"
RID, RID2 = f"{ORG}/{MID}", f"{ORG}/{MID2}"
STEPS = ["step0", "step1", "step2", "step4", "step8", "step16", "step20", "step40"]
ALL_TOKENS = [*HUB_TOKENS, "hf_not_a_real_token_0123456789"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hf_trained_home(tmp_path_factory, minari_store) -> Path:
    """A DTZOO_HOME with MID trained and evaluated, and MID2 trained (once per module)."""
    return trained_home(tmp_path_factory, minari_store, "hf_trained", [MID, MID2], (MID,))


@pytest.fixture
def home(zoo_env, hf_trained_home) -> Path:
    """This test's DTZOO_HOME, holding a copy of the trained runs; the pair grid is registered."""
    h = Path(zoo_env["DTZOO_HOME"])
    shutil.copytree(hf_trained_home / "runs", h / "runs")
    reg_path = Path(zoo_env["DTZOO_REGISTRY"])
    reg = yaml.safe_load(reg_path.read_text())
    reg["grids"]["pair"] = {"envs": ["pendulum"], "layers": [1], "seeds": [0, 1]}
    reg_path.write_text(yaml.safe_dump(reg, sort_keys=False))
    return h


# regenerated for the hub (the card names the org and the transformers/ folder), and the
# transformers export published beside the model
STAGED = {"README.md", MANIFEST}
TRANSFORMERS = {"transformers/config.json", "transformers/model.safetensors"}


def model_files(path: Path, staged: bool = True) -> dict[str, bytes]:
    """What a model directory publishes as it is: its top-level files (but card and manifest,
    when published through zoo.publish_cell, which stages them anew)."""
    skip = STAGED if staged else set()
    return {
        p.name: p.read_bytes()
        for p in sorted(path.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name not in skip
    }


def hub_files(server, repo: str, revision: str = "main", staged: bool = True) -> dict[str, bytes]:
    """A revision's files but the staged ones (checked to be there), or all of them for a
    direct HFHub.publish (staged=False)."""
    files = server.files(repo, revision)
    assert ".gitattributes" in files  # the Hub's own file stays on every branch
    skip = STAGED | TRANSFORMERS if staged else set()
    assert skip <= set(files), sorted(files)
    return {k: v for k, v in files.items() if k != ".gitattributes" and k not in skip}


def dtzoo_commits(server, repo: str, revision: str) -> list[dict]:
    """The revision's history, checking it is dtzoo's commits on top of the initial commit."""
    history = server.commits(repo, revision)
    assert history[-1]["message"] == "initial commit"
    return history[:-1]


def commit_posts(server) -> int:
    return server.count_requests("POST", "/commit/")


def dead_endpoint() -> str:
    """An endpoint nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def point_at(monkeypatch, endpoint: str) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


def hf_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def assert_one_line_error(proc, *needles: str, exit_code: int | None = None) -> str:
    """A failed CLI run: a non-zero exit (`exit_code` if given), no traceback, the message on
    exactly one line, no token anywhere."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert exit_code is None or proc.returncode == exit_code, out
    assert "Traceback" not in out and "huggingface_hub" not in out, out
    lines = [ln for ln in proc.stderr.splitlines() if all(n in ln for n in needles)]
    assert len(lines) == 1, f"expected one line with {needles}:\n{proc.stderr}"
    for token in ALL_TOKENS:
        assert token not in out
    return lines[0]


# ----------------------------------------------------------------------------- publish


def test_publish_main_stores_exactly_the_model_directory_inline(hub_server, home, registry):
    run = home / "runs" / MID
    (res,) = zoo.publish_cell(registry.resolve(MID), registry, hub="hf", checkpoints=False)
    assert (res.repo_id, res.revision, res.skipped) == (RID, "main", False)
    assert res.commit == hub_server.head(RID, "main")
    assert res.url == f"{hub_server.url}/{RID}/tree/main"
    # the server holds the model directory byte for byte, as regular (inline) files
    assert hub_files(hub_server, RID) == model_files(run)
    assert {"config.json", "eval.json", WEIGHTS, "training_log.csv", "learning_curve.png"} <= set(
        model_files(run)
    )
    assert hub_server.lfs_files(RID) == set()
    assert hub_server.count_requests(path_contains="/info/lfs/") == 0
    # one commit for the revision, with everything in it
    (commit,) = dtzoo_commits(hub_server, RID, "main")
    assert commit["oid"] == res.commit and commit["author"] == "alice"
    assert commit["message"] == f"dtzoo: publish {MID} main (training step 40)"
    assert set(commit["files"]) == set(model_files(run)) | STAGED | TRANSFORMERS | {
        ".gitattributes"
    }
    assert hub_server.branches(RID) == {"main": res.commit}
    assert get_hub("hf").revisions(RID) == {"main": res.commit}


def test_publish_checkpoints_as_branches_through_lfs(hub_server_factory, home, registry):
    server = hub_server_factory(lfs_threshold=0)  # every file goes through the LFS batch API
    run = home / "runs" / MID
    results = zoo.publish_cell(registry.resolve(MID), registry, hub="hf", checkpoints=True)
    assert [r.revision for r in results] == STEPS + ["main"]
    assert not any(r.skipped for r in results)
    assert server.branches(RID) == {r.revision: r.commit for r in results}
    assert commit_posts(server) == len(results)  # one commit per revision
    for r in results:
        local = run if r.revision == "main" else run / "checkpoints" / r.revision
        files = hub_files(server, RID, r.revision)
        assert files == model_files(local), r.revision
        assert server.lfs_files(RID, r.revision) == set(server.files(RID, r.revision)) - {
            ".gitattributes"
        }  # stored as LFS objects
        (commit,) = dtzoo_commits(server, RID, r.revision)  # initial commit + exactly one
        assert commit["oid"] == r.commit
        if r.revision != "main":
            assert load_model(local)[1].step == int(r.revision[4:])
            assert {"config.json", WEIGHTS} == set(files)
    assert server.count_requests("POST", "/info/lfs/objects/batch") == len(results)
    # main is the final checkpoint's weights
    assert (
        server.files(RID, "main")[WEIGHTS]
        == server.files(RID, "step40")[WEIGHTS]
        == (run / WEIGHTS).read_bytes()
    )
    assert server.files(RID, "step0")[WEIGHTS] != server.files(RID, "step40")[WEIGHTS]
    # and every revision pulls back: dtzoo.load of a training-time checkpoint
    import dtzoo

    model = dtzoo.load(MID, revision="step8", hub="hf", registry=os.environ["DTZOO_REGISTRY"])
    assert model.config.step == 8
    ref, _ = load_model(run / "checkpoints" / "step8")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ref.state_dict().items())
    revs = zoo.revisions(MID, registry, hub="hf")
    assert list(revs) == ["main"] + STEPS
    assert all(revs[r]["hub_commit"] == server.head(RID, r) and revs[r]["local"] for r in revs)


def test_republish_unchanged_is_skipped_and_a_change_is_one_commit(hub_server, home, registry):
    spec = registry.resolve(MID)
    first = zoo.publish_cell(spec, registry, hub="hf", checkpoints=True)
    heads = hub_server.branches(RID)
    hub_server.reset_request_log()

    again = zoo.publish_cell(spec, registry, hub="hf", checkpoints=True)
    assert all(r.skipped for r in again)
    assert [r.commit for r in again] == [r.commit for r in first]
    assert hub_server.branches(RID) == heads
    assert commit_posts(hub_server) == 0
    assert hub_server.count_requests("POST") == 0  # not even a preupload

    # re-evaluated: a new eval.json, hence a new model card (what `dtzoo eval` writes)
    run = home / "runs" / MID
    report = json.loads((run / "eval.json").read_text())
    report["results"][0]["return_mean"] += 12.5
    (run / "eval.json").write_text(json.dumps(report))
    write_card(run, registry)
    hub_server.reset_request_log()
    third = zoo.publish_cell(spec, registry, hub="hf", checkpoints=True)
    assert [r.skipped for r in third] == [True] * len(STEPS) + [False]
    assert commit_posts(hub_server) == 1
    assert {k: v for k, v in hub_server.branches(RID).items() if k != "main"} == {
        k: v for k, v in heads.items() if k != "main"
    }
    new, old = dtzoo_commits(hub_server, RID, "main")
    assert new["oid"] == third[-1].commit
    assert new["parent"] == old["oid"] == heads["main"]
    assert hub_files(hub_server, RID) == model_files(home / "runs" / MID)
    assert hub_server.files(RID, heads["main"])["eval.json"] != hub_server.files(RID)["eval.json"]


def test_a_removed_file_is_deleted_in_the_same_commit(hub_server, home):
    run = home / "runs" / MID
    hub = HFHub()
    hub.publish(run, RID)
    (run / "learning_curve.png").unlink()
    ModelDir(run).seal()  # the directory without it is the model now
    res = hub.publish(run, RID)
    assert not res.skipped
    assert "learning_curve.png" not in hub_server.files(RID)
    assert hub_files(hub_server, RID, staged=False) == model_files(run, staged=False)
    assert len(dtzoo_commits(hub_server, RID, "main")) == 2


def test_the_card_loads_back_with_numbers_in_the_model_index(hub_server, home, registry):
    from huggingface_hub import ModelCard

    zoo.publish_cell(registry.resolve(MID), registry, hub="hf", checkpoints=False)
    card = ModelCard.load(RID)  # through huggingface_hub, from the server
    assert card.data.library_name == "dtzoo" and card.data.license == "mit"
    assert {"decision-transformer", "offline-rl", "pendulum"} <= set(card.data.tags)
    results = card.data.eval_results
    assert len(results) == 4
    assert {r.metric_type for r in results} == {"mean_reward", "normalized_score"}
    assert all(type(r.metric_value) is float for r in results)
    # the stored YAML itself carries numbers, not strings
    meta = parse_card_data(hub_server.files(RID)["README.md"])
    values = [
        m["value"] for e in meta["model-index"] for res in e["results"] for m in res["metrics"]
    ]
    assert values and all(isinstance(v, (int, float)) for v in values)
    # the org listing reads them from card metadata
    (row,) = HFHub().list_remote(ORG)
    assert (row["repo_id"], row["model_id"], row["library_name"]) == (RID, MID, "dtzoo")
    assert row["sha"] == hub_server.head(RID) and row["last_modified"]
    report = {
        r["target_return"]: r
        for r in json.loads((home / "runs" / MID / "eval.json").read_text())["results"]
    }
    assert [r["target_return"] for r in row["results"]] == sorted(report, reverse=True)
    for r in row["results"]:
        assert r["mean_reward"] == round(report[r["target_return"]]["return_mean"], 2)
        assert r["normalized_score"] == round(report[r["target_return"]]["normalized_mean"], 2)
        assert r["episodes"] == 2
    assert HFHub().list_models(ORG) == [RID]


def test_card_results_only_returns_numbers():
    index = [
        {
            "name": "m",
            "results": [
                {
                    "dataset": {"config": "target_return=10"},
                    "metrics": [
                        {"type": "mean_reward", "value": "3483.58 +/- 405.47"},
                        {"type": "normalized_score", "value": 7, "args": {"episodes": 3}},
                    ],
                }
            ],
        }
    ]
    assert card_results(index) == [
        {"target_return": 10.0, "mean_reward": None, "normalized_score": 7.0, "episodes": 3}
    ]
    assert card_results(None) == [] and card_results("junk") == []


def test_a_concurrent_commit_makes_the_publish_fail_whole(hub_server, home, monkeypatch):
    """The commit names its parent: if the branch moved meanwhile, nothing of ours lands."""
    from huggingface_hub import HfApi

    run = home / "runs" / MID
    hub = HFHub()
    first = hub.publish(run, RID)
    report = json.loads((run / "eval.json").read_text())
    report["note"] = "edited"
    (run / "eval.json").write_text(json.dumps(report))
    ModelDir(run).seal()
    real_tree = HFHub._tree

    def racing_tree(self, repo_id, commit):
        tree = real_tree(self, repo_id, commit)
        HfApi().upload_file(path_or_fileobj=b"x", path_in_repo="other.txt", repo_id=repo_id)
        return tree

    monkeypatch.setattr(HFHub, "_tree", racing_tree)
    with pytest.raises(HubError, match="changed on .* while publishing.*run the command again"):
        hub.publish(run, RID)
    monkeypatch.setattr(HFHub, "_tree", real_tree)
    history = dtzoo_commits(hub_server, RID, "main")
    assert [c["oid"] for c in history][1:] == [first.commit]  # only the other commit landed
    assert hub_server.files(RID)["eval.json"] != (run / "eval.json").read_bytes()
    res = hub.publish(run, RID)  # run again: our files, with the other file removed
    assert not res.skipped and hub_files(hub_server, RID, staged=False) == model_files(
        run, staged=False
    )


# ----------------------------------------------------------------------------- pull


def test_pull_verifies_into_the_hf_cache_and_a_second_pull_makes_no_request(
    hub_server, home, registry, zoo_env
):
    run = home / "runs" / MID
    zoo.publish_cell(registry.resolve(MID), registry, hub="hf", checkpoints=False)
    hub_server.reset_request_log()
    path = zoo.pull(MID, registry, hub="hf")
    assert path.is_relative_to(hf_cache()) and path.name == hub_server.head(RID)
    assert hub_server.count_requests("GET", "/resolve/") >= len(model_files(run))
    verify(path)
    assert {k: v for k, v in model_files(path).items() if k != ".gitattributes"} == model_files(run)

    hub_server.reset_request_log()
    assert zoo.pull(MID, registry, hub="hf") == path
    import dtzoo

    model = dtzoo.load(MID, hub="hf", registry=zoo_env["DTZOO_REGISTRY"])
    ref, _ = load_model(run)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ref.state_dict().items())
    assert hub_server.request_log == []
    # the CLI, a separate process, finds it in the same cache: still no request
    out = run_cli("pull", MID, "--hub", "hf", env=zoo_env)
    assert out.stdout.strip().splitlines()[-1] == str(path)
    assert hub_server.request_log == []
    # nothing was written under DTZOO_HOME's own cache
    assert not paths.cache_dir().exists()


def test_offline_pulls_cached_models_and_refuses_others_in_one_line(
    hub_server, home, registry, zoo_env, monkeypatch
):
    zoo.publish_cell(registry.resolve(MID), registry, hub="hf", checkpoints=True)
    path = zoo.pull(MID, registry, hub="hf")
    set_hub_offline(monkeypatch)
    hub_server.reset_request_log()
    assert zoo.pull(MID, registry, hub="hf") == path
    with pytest.raises(HubError) as e:
        zoo.pull(MID, registry, revision="step20", hub="hf")
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and f"{RID}@step20" in msg
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        get_hub("hf").publish(home / "runs" / MID, RID)
    cli = run_cli("pull", MID, "--revision", "step20", "--hub", "hf", env=zoo_env, check=False)
    assert_one_line_error(cli, "HF_HUB_OFFLINE", "step20")
    ok = run_cli("pull", MID, "--hub", "hf", env=zoo_env)
    assert ok.stdout.strip().splitlines()[-1] == str(path)
    assert hub_server.request_log == []


def test_a_corrupt_cached_file_is_downloaded_again(hub_server, home, registry, monkeypatch):
    run = home / "runs" / MID
    zoo.publish_cell(registry.resolve(MID), registry, hub="hf", checkpoints=False)
    path = zoo.pull(MID, registry, hub="hf")
    flip_byte(path / WEIGHTS, (path / WEIGHTS).stat().st_size - 3)  # writes through to the blob
    assert (path / WEIGHTS).read_bytes() != (run / WEIGHTS).read_bytes()

    set_hub_offline(monkeypatch)  # offline, the corruption is reported, not served
    with pytest.raises(HubError, match="corrupt.*HF_HUB_OFFLINE"):
        zoo.pull(MID, registry, hub="hf")
    set_hub_offline(monkeypatch, False)

    hub_server.reset_request_log()
    assert zoo.pull(MID, registry, hub="hf") == path
    assert hub_server.count_requests("GET", f"/resolve/{path.name}/{WEIGHTS}") == 1
    verify(path)
    assert (path / WEIGHTS).read_bytes() == (run / WEIGHTS).read_bytes()
    hub_server.reset_request_log()
    zoo.pull(MID, registry, hub="hf")
    assert hub_server.request_log == []


def test_a_cache_entry_replaced_by_a_link_or_a_file_is_healed(hub_server, home, registry, tmp_path):
    zoo.publish_cell(registry.resolve(MID), registry, hub="hf", checkpoints=False)
    path = zoo.pull(MID, registry, hub="hf")
    outside = tmp_path / "outside"
    shutil.copytree(path, outside)  # someone else's folder, with files that would verify
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    shutil.rmtree(path)
    path.symlink_to(outside, target_is_directory=True)
    healed = zoo.pull(MID, registry, hub="hf")
    assert healed == path and path.is_dir() and not path.is_symlink()
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before  # untouched
    shutil.rmtree(path)
    path.write_text("not a directory")
    assert zoo.pull(MID, registry, hub="hf") == path and path.is_dir()
    verify(path)


def test_pull_of_a_missing_repo_or_revision_is_one_line(hub_server, home, registry):
    with pytest.raises(HubError) as e:
        zoo.pull(MID, registry, hub="hf")
    assert f"{RID} is not on {hub_server.url}" in str(e.value) and "\n" not in str(e.value)
    zoo.publish_cell(registry.resolve(MID), registry, hub="hf", checkpoints=False)
    with pytest.raises(HubError) as e:
        zoo.pull(MID, registry, revision="step3", hub="hf")
    assert str(e.value) == f"{RID} has no revision 'step3' on {hub_server.url}; revisions: main"
    assert get_hub("hf").revisions(RID2) == {}


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "case", ["invalid-token", "no-token", "read-only", "outsider", "unreachable", "bad-org"]
)
def test_publish_failures_are_one_line_and_a_nonzero_exit(
    case, hub_server_factory, home, zoo_env, monkeypatch
):
    token = {
        "invalid-token": ALL_TOKENS[-1],
        "no-token": None,
        "read-only": READ_TOKEN,
        "outsider": OUTSIDER_TOKEN,
    }.get(case, WRITE_TOKEN)
    server = hub_server_factory(token=token)
    args = ["publish", MID, "--hub", "hf", "--no-checkpoints"]
    if case == "unreachable":
        point_at(monkeypatch, dead_endpoint())
    if case == "bad-org":
        args += ["--org", "bad--org"]
    t0 = time.monotonic()
    proc = run_cli(*args, env=zoo_env, check=False)
    elapsed = time.monotonic() - t0
    needles = {  # the start and the end of the message: both on the same line
        "invalid-token": ("rejected the token", "set HF_TOKEN or run `hf auth login`"),
        "no-token": ("not logged in", "set HF_TOKEN or run `hf auth login`"),
        "read-only": ("no write access to 'dtzoo'", "--org <your user name>"),
        "outsider": ("no write access to 'dtzoo'", "--org <your user name>"),
        "unreachable": ("cannot reach the Hub at", "HF_HUB_OFFLINE=1"),
        "bad-org": ("invalid org 'bad--org'", "at most 96 characters"),
    }[case]
    assert_one_line_error(proc, *needles)
    if case == "unreachable":
        assert elapsed < 15  # no minute of retries (the process itself takes a few seconds)
    if case != "unreachable":
        assert commit_posts(server) == 0
        assert not server.repo_exists(RID) or dtzoo_commits(server, RID, "main") == []
    # nothing under the run directory mentions a token
    for p in (home / "runs").rglob("*"):
        if p.is_file():
            assert not any(t.encode() in p.read_bytes() for t in ALL_TOKENS), p


def test_failures_in_process_are_hub_errors(hub_server_factory, home, monkeypatch):
    run = home / "runs" / MID
    hub_server_factory(token=READ_TOKEN)
    with pytest.raises(HubError, match="no write access to 'dtzoo'"):
        HFHub().publish(run, RID)
    hub_server_factory(token=ALL_TOKENS[-1])
    for call in (
        lambda h: h.publish(run, RID),
        lambda h: h.pull(RID),
        lambda h: h.revisions(RID),
        lambda h: h.list_models(ORG),
    ):
        with pytest.raises(HubError, match="rejected the token") as e:
            call(HFHub())
        assert ALL_TOKENS[-1] not in str(e.value)
    with pytest.raises(UsageError, match="invalid repo id"):
        HFHub().publish(run, "dtzoo/a..b")
    for bad in ("dtzoo/x.git", "dtzoo/-x", "a/b/c", "dtzoo/" + "x" * 97, "dtzoo/sp ace"):
        with pytest.raises(UsageError):
            check_repo_id(bad)
    point_at(monkeypatch, dead_endpoint())
    for call in (
        lambda h: h.publish(run, RID),
        lambda h: h.pull(RID),
        lambda h: h.revisions(RID),
        lambda h: h.list_models(ORG),
        lambda h: h.list_remote(ORG),
    ):
        t0 = time.monotonic()
        with pytest.raises(HubError, match="cannot reach the Hub"):
            call(HFHub())
        assert time.monotonic() - t0 < 3


# ----------------------------------------------------------------------------- resuming


def test_an_interrupted_grid_publish_resumes(
    hub_server_factory, home, registry, zoo_env, monkeypatch
):
    """Ctrl-C during the second model's checkpoints, then `dtzoo publish --grid pair
    --checkpoints`: what landed is skipped, the rest is published, one commit per revision."""
    from huggingface_hub import HfApi

    # the Hub's default patterns: the weights go through LFS, the other files inline
    server = hub_server_factory(lfs_patterns=HUB_DEFAULT_LFS_PATTERNS)
    real_commit, calls = HfApi.create_commit, []

    def interrupting_commit(self, *args, **kwargs):
        calls.append(kwargs.get("revision"))
        if len(calls) == len(STEPS) + 1 + 4:  # the 4th revision (step4) of the second model
            raise KeyboardInterrupt
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", interrupting_commit)
    with pytest.raises(KeyboardInterrupt):
        for mid in (MID, MID2):
            zoo.publish_cell(registry.resolve(mid), registry, hub="hf", checkpoints=True)
    monkeypatch.setattr(HfApi, "create_commit", real_commit)
    # the interrupted revision's new branch was rolled back, not left with the wrong files
    assert set(server.branches(RID2)) == {"main", "step0", "step1", "step2"}

    server.reset_request_log()
    proc = run_cli("publish", "--grid", "pair", "--checkpoints", "--hub", "hf", env=zoo_env)
    rows = [re.findall(r"[^\s│┃|]+", ln) for ln in proc.stdout.splitlines()]
    status = {
        (r[0], r[1]): any("skipped" in t for t in r[2:])
        for r in rows
        if len(r) > 2 and r[0] in (RID, RID2)
    }
    assert len(status) == 2 * (len(STEPS) + 1), proc.stdout
    assert all(status[(RID, rev)] for rev in STEPS + ["main"]), proc.stdout
    assert [rev for rev in STEPS + ["main"] if status[(RID2, rev)]] == ["step0", "step1", "step2"]
    assert commit_posts(server) == len(STEPS) + 1 - 3
    for repo, mid in ((RID, MID), (RID2, MID2)):
        assert set(server.branches(repo)) == set(STEPS) | {"main"}
        for rev in STEPS + ["main"]:
            assert len(dtzoo_commits(server, repo, rev)) == 1
            local = home / "runs" / mid / ("" if rev == "main" else f"checkpoints/{rev}")
            assert hub_files(server, repo, rev) == model_files(local)
            assert server.lfs_files(repo, rev) == {WEIGHTS, "transformers/model.safetensors"}
    assert "0 failed" in proc.stderr


# ----------------------------------------------------------------------------- tokens


def test_the_token_is_never_printed_written_or_published(hub_server, home, zoo_env):
    pub = run_cli("publish", MID, "--checkpoints", "--hub", "hf", env=zoo_env)
    pull = run_cli("pull", MID, "--revision", "step20", "--hub", "hf", env=zoo_env)
    lst = run_cli("list", "--hub", "hf", "--json", env=zoo_env)
    for proc in (pub, pull, lst):
        assert WRITE_TOKEN not in proc.stdout + proc.stderr
    for rev in hub_server.branches(RID):
        for name, data in hub_server.files(RID, rev).items():
            assert WRITE_TOKEN.encode() not in data, (rev, name)
    for root in (home, hf_cache()):
        for p in root.rglob("*"):
            if p.is_file():
                assert WRITE_TOKEN.encode() not in p.read_bytes(), p


def test_the_saved_login_is_used_when_hf_token_is_unset(hub_server_factory, home, capsys):
    from huggingface_hub import constants

    server = hub_server_factory(token=None)
    token_file = Path(constants.HF_TOKEN_PATH)  # what `hf auth login` leaves behind
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(WRITE_TOKEN)
    res = HFHub().publish(home / "runs" / MID, RID)
    assert not res.skipped and server.head(RID) == res.commit
    assert dtzoo_commits(server, RID, "main")[0]["author"] == "alice"
    captured = capsys.readouterr()
    assert WRITE_TOKEN not in captured.out + captured.err


# ----------------------------------------------------------------------------- the real Hub


@pytest.mark.skipif(
    not (os.environ.get("DTZOO_LIVE_HUB_ORG") and os.environ.get("HF_TOKEN")),
    reason="live Hub test: set DTZOO_LIVE_HUB_ORG (a scratch org) and HF_TOKEN",
)
def test_live_publish_and_pull_on_the_real_hub(home, zoo_env, tmp_path, monkeypatch):
    """Publishes one tiny model to $DTZOO_LIVE_HUB_ORG on the real Hub, pulls it back into a
    fresh HF cache, and deletes the repo again if this test created it."""
    from huggingface_hub import HfApi

    org = os.environ["DTZOO_LIVE_HUB_ORG"]
    hf_home = tmp_path / "hf_home"
    env = {**zoo_env, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub")}
    for k in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET"):
        monkeypatch.delenv(k, raising=False)  # a live run uses the Hub's defaults (Xet included)
    api = HfApi(endpoint="https://huggingface.co")
    repo = f"{org}/{MID}"
    existed = api.repo_exists(repo)
    try:
        run_cli("publish", MID, "--hub", "hf", "--no-checkpoints", "--org", org, env=env)
        again = run_cli("publish", MID, "--hub", "hf", "--no-checkpoints", "--org", org, env=env)
        assert "unchanged (skipped)" in again.stdout
        pulled = run_cli("pull", MID, "--hub", "hf", "--org", org, env=env)
        path = Path(pulled.stdout.strip().splitlines()[-1])
        verify(path)
        assert (path / WEIGHTS).read_bytes() == (home / "runs" / MID / WEIGHTS).read_bytes()
    finally:
        if not existed:
            api.delete_repo(repo, missing_ok=True)


@pytest.mark.parametrize("hub", ["hf", "local"])
def test_list_remote_shows_published_missing_and_stale(hub, hub_server, home, registry, zoo_env):
    zoo.publish_cell(registry.resolve(MID), registry, hub=hub, checkpoints=False)
    rows = {
        r["model_id"]: r
        for r in json.loads(
            run_cli(
                "list", "--remote", "--grid", "pair", "--hub", hub, "--json", env=zoo_env
            ).stdout
        )
    }
    assert rows[MID]["status"] == "published" and rows[MID2]["status"] == "missing"
    assert all(isinstance(r["mean_reward"], float) for r in rows[MID]["results"])
    # a re-evaluation that is not published yet makes the hub's copy stale
    report_path = home / "runs" / MID / "eval.json"
    report = json.loads(report_path.read_text())
    report["results"][0]["return_mean"] += 1.0
    report_path.write_text(json.dumps(report))
    rows = {
        r["model_id"]: r
        for r in json.loads(
            run_cli(
                "list", "--remote", "--grid", "pair", "--hub", hub, "--json", env=zoo_env
            ).stdout
        )
    }
    assert rows[MID]["status"] == "stale"
