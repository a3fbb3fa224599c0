"""The consumer's zoo: a researcher who trained nothing pulls, loads, evaluates and ranks
published models, and opens them in transformers.

A publisher trains two tiny pendulum models once per module and publishes them (with their
training-time revisions) to tests/hub_server.py through the real huggingface_hub client. Each
consumer test then starts from a fresh DTZOO_HOME and HF cache, with a registry that does not
know the `pendulum` env at all: everything it does works from what was pulled.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dtzoo import paths, zoo
from dtzoo.registry import load_registry
from tests.conftest import run_cli, trained_home
from tests.hub_fixtures import ORG

MID, MID2 = "pendulum-1L-seed0", "pendulum-1L-seed1"
RID, RID2 = f"{ORG}/{MID}", f"{ORG}/{MID2}"


@pytest.fixture(scope="module")
def publisher_home(tmp_path_factory, minari_store) -> Path:
    """A DTZOO_HOME with MID trained and evaluated (with its replay video) and MID2 trained."""
    return trained_home(
        tmp_path_factory, minari_store, "publisher", [MID, MID2], (MID,), video=True
    )


@pytest.fixture
def published(zoo_env, publisher_home, hub_server, monkeypatch, tmp_path):
    """Both models published to the Hub server (default: with every step<N> revision); then
    this process becomes a consumer: empty DTZOO_HOME, empty HF cache, a registry without
    `pendulum`, and the default hub (hf)."""
    reg_path = Path(zoo_env["DTZOO_REGISTRY"])
    raw = yaml.safe_load(reg_path.read_text())
    raw["grids"]["pair"] = {"envs": ["pendulum"], "layers": [1], "seeds": [0, 1]}
    reg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("DTZOO_HOME", str(publisher_home))
    reg = load_registry()
    results = [r for m in (MID, MID2) for r in zoo.publish_cell(reg.resolve(m), reg, hub="hf")]

    consumer = tmp_path / "consumer"
    monkeypatch.setenv("DTZOO_HOME", str(consumer / "home"))
    monkeypatch.delenv("DTZOO_HUB")  # the default: the Hugging Face Hub
    del raw["envs"]["pendulum"]
    raw["grids"] = {k: g for k, g in raw["grids"].items() if "pendulum" not in g["envs"]}
    consumer.mkdir(parents=True)
    consumer_reg = consumer / "registry.yaml"
    consumer_reg.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("DTZOO_REGISTRY", str(consumer_reg))
    from huggingface_hub import constants

    hf_home = consumer / "hf"  # a fresh HF cache: nothing pulled yet
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    return {
        "server": hub_server,
        "results": results,
        "registry": load_registry(),
        "publisher_reg": reg,
        "home": consumer / "home",
    }


def test_default_hub_is_the_hugging_face_hub(monkeypatch):
    from dtzoo.hub import get_hub

    monkeypatch.delenv("DTZOO_HUB", raising=False)
    assert get_hub().name == "hf"
    monkeypatch.setenv("DTZOO_HUB", "local")
    assert get_hub().name == "local"


def test_publish_holds_revisions_transformers_card_and_video(published, publisher_home):
    server, results = published["server"], published["results"]
    revs = {r.revision for r in results if r.repo_id == RID}
    assert "main" in revs and {"step0", "step8", "step40"} <= revs  # checkpoints by default
    files = server.files(RID, "main")
    hf_config = json.loads(files["transformers/config.json"])
    assert hf_config["model_type"] == "decision_transformer"
    assert hf_config["dtzoo"]["model_id"] == MID
    assert "transformers/model.safetensors" in files
    assert files["replay.mp4"][4:8] == b"ftyp"  # an MP4 container
    card = files["README.md"].decode()
    for snippet in (
        f"dtzoo pull {RID}",
        f'dtzoo.load("{RID}")',
        "pip install dtzoo",
        f'from_pretrained("{RID}", subfolder="transformers")',
        '<video src="replay.mp4"',
    ):
        assert snippet in card, snippet
    # MID2 was never evaluated: no video, and its card says so; the step revisions too
    assert "replay.mp4" not in server.files(RID2, "main")
    assert "No replay video" in server.files(RID2, "main")["README.md"].decode()
    assert "transformers/config.json" in server.files(RID, "step8")
    # publishing stages a copy: the run directory gained no transformers/ folder
    assert not (publisher_home / "runs" / MID / "transformers").exists()


def test_consumer_pulls_evaluates_and_ranks_a_model_whose_env_is_unknown(published):
    reg = published["registry"]
    assert "pendulum" not in reg.envs
    proc = run_cli("pull", RID)
    snap = Path(proc.stdout.strip().splitlines()[-1])
    assert (snap / "model.safetensors").is_file() and (snap / "transformers").is_dir()

    proc = run_cli("eval", RID, "--json")
    report = json.loads(proc.stdout)["models"][0]
    assert report["model_id"] == MID and report["source"]["repo_id"] == RID
    stored = paths.home() / "evals" / ORG / MID / snap.name / "eval.json"
    assert json.loads(stored.read_text())["results"] == report["results"]
    assert not (paths.home() / "runs").exists()  # nothing pretends to be trained here
    assert "already evaluated" in run_cli("eval", RID).stderr

    sweep = zoo.sweep_model(RID, reg, targets=[-1200.0, 0.0], episodes=1)
    assert [r["target_return"] for r in sweep["results"]] == [-1200.0, 0.0]
    assert (stored.parent / "rtg_sweep.json").is_file() and (
        stored.parent / "rtg_sweep.png"
    ).is_file()
    early = zoo.eval_model(RID, reg, revision="step8").report
    assert early["step"] == 8 and early["source"]["revision"] == "step8"
    rows = zoo.leaderboard(reg)
    assert [(r["env"], r["layers"], r["seeds"]) for r in rows] == [("pendulum", 1, 1)] * 2
    assert rows[0]["return_mean"] == pytest.approx(report["results"][0]["return_mean"])
    assert rows[0]["return_std"] is None  # one seed has no spread, not ± 0.0
    board = run_cli("leaderboard", "--format", "markdown").stdout
    assert "| pendulum | dt | 1 |" in board and "| - |" in board


def test_load_gives_the_published_weights_and_transformers_agrees(published, publisher_home):
    import dtzoo

    model = dtzoo.load(RID)
    assert model.config.model_id == MID and not model.training
    ref = dtzoo.load(publisher_home / "runs" / MID)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    agent = dtzoo.Agent(model, target_return=-150)  # the config comes from model.config
    assert agent.act(np.zeros(3, np.float32)).shape == (1,)

    from transformers import DecisionTransformerModel

    hf = DecisionTransformerModel.from_pretrained(RID, subfolder="transformers").eval()
    g = torch.Generator().manual_seed(0)
    K, c = model.config.architecture["context_len"], model.config
    states = torch.randn(4, K, c.state_dim, generator=g)
    actions = torch.rand(4, K, c.act_dim, generator=g) * 2 - 1
    rtg = torch.randn(4, K, 1, generator=g)
    timesteps = torch.randint(0, 100, (4, K), generator=g)
    mask = torch.ones(4, K, dtype=torch.long)
    with torch.no_grad():
        ours = model(states, actions, rtg[..., 0], timesteps, mask)
        theirs = hf(
            states=states,
            actions=actions,
            rewards=None,
            returns_to_go=rtg,
            timesteps=timesteps,
            attention_mask=mask,
        ).action_preds
    diff = (ours - theirs).abs().max().item()
    print(f"transformers vs dtzoo: max |action difference| {diff:.2e}")
    assert diff < 1e-5


def test_leaderboard_from_published_cards_downloads_no_weights(published):
    server, reg = published["server"], published["publisher_reg"]
    before = server.count_requests("GET", "model.safetensors")
    rows = zoo.leaderboard(reg, "pair", hub="hf")
    assert server.count_requests("GET", "model.safetensors") == before
    assert {r["target_return"] for r in rows} == {-150.0, -600.0}
    for r in rows:  # seed1 is published but not evaluated: its card has no results
        assert (r["seeds"], r["seeds_expected"], r["missing"]) == (1, 2, [MID2])
        assert r["return_std"] is None and r["return_mean"] is not None
    out = run_cli(
        "leaderboard",
        "--grid",
        "pair",
        "--hub",
        "hf",
        "--format",
        "csv",
        env={"DTZOO_REGISTRY": str(reg.path)},
    ).stdout
    table = list(csv.DictReader(io.StringIO(out.strip())))
    assert [(r["seeds"], r["seeds_expected"], r["missing"], r["return_std"]) for r in table] == [
        ("1", "2", MID2, "")
    ] * 2


def test_train_steps_extends_a_finished_run_exactly(zoo_env, registry):
    spec = registry.resolve(MID)
    zoo.train_cell(spec, registry, steps=20, device="cpu")
    proc = run_cli("train", MID, "--steps", "10", check=False)
    assert proc.returncode != 0 and "already trained for 20 steps" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "already trained for 20 steps, more than --steps 10" in proc.stderr
    assert "already trained (20 steps)" in run_cli("train", MID, "--steps", "20").stderr
    extended = zoo.train_cell(spec, registry, steps=30, device="cpu")
    assert extended.resumed_from == 20 and extended.steps == 30
    run = paths.run_dir(MID)
    once = Path(zoo_env["DTZOO_HOME"]).parent / "once"
    shutil.copytree(run, once / "extended")
    shutil.rmtree(run)
    zoo.train_cell(spec, registry, steps=30, device="cpu")
    assert (run / "model.safetensors").read_bytes() == (
        once / "extended" / "model.safetensors"
    ).read_bytes()


def test_cli_habits():
    assert "Usage" in run_cli("-h").stdout
    assert "--install-completion" in run_cli("--help").stdout
    proc = run_cli("leaderboard", "--format", "xml", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "table" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "<fp32|bf16>" in run_cli("train", "-h").stdout  # choices shown in --help


# ----------------------------------------------------------------------------- bad input


def test_consumer_bad_input_is_one_line(zoo_env, registry, tmp_path):
    from dtzoo.errors import UsageError

    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no config.json"):
        zoo.import_model(tmp_path / "empty", "pendulum", "pendulum-1L-seed9", registry)
    proc = run_cli(
        "leaderboard", "--plot", str(tmp_path / "no" / "such" / "board.png"), check=False
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "no").exists()  # never creates folders
    proc = run_cli("pull", "dtzoo/x", "--revision", "step" + "9" * 5000, check=False)
    assert proc.returncode == 2 and "invalid revision" in proc.stderr
    for bad in ("main\n", "step01", "step"):
        with pytest.raises(UsageError):
            zoo.locate(MID, registry, revision=bad)
    with pytest.raises(UsageError, match="invalid repo id"):  # not a path, not an id: one line
        zoo.locate("a" * 5000, registry)


def test_card_results_reads_a_bounded_number_of_metrics():
    from dtzoo.hub.hf import MAX_CARD_ENTRIES, card_results

    class Exploding(dict):
        def get(self, *args):
            raise AssertionError("read past the bound")

    good = {"type": "mean_reward", "value": 1.0, "args": {"target_return": 5, "episodes": 2}}
    # what a YAML alias bomb expands to: one list referenced many times
    metrics = [good] * MAX_CARD_ENTRIES + [Exploding()]
    (row,) = card_results([{"results": [{"metrics": metrics}]}])
    assert row == {"target_return": 5.0, "mean_reward": 1.0, "episodes": 2}
