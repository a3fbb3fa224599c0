"""Datasets: Minari download through a Hub-protocol server, provenance, collection, info."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import minari
import pytest
import yaml

from tests.conftest import run_cli
from tests.hub_fixtures import ORG, WRITE_TOKEN


def registry_with_remote_env(path: Path, dataset_id: str) -> Path:
    """The test registry plus an env with no `prepare:` block: its data must be downloaded."""
    reg = yaml.safe_load(path.read_text())
    reg["envs"]["remote-cartpole"] = {
        "gym_id": "CartPole-v1",
        "dataset": dataset_id,
        "max_ep_len": 500,
        "reward_scale": 100,
        "target_returns": [500],
        "ref_scores": {"random": 22.2, "expert": 500.0},
        "recipe": {"steps": 10, "warmup_steps": 2, "d_model": 32, "d_mlp": 64, "batch_size": 16},
        "eval": {"episodes": 1},
    }
    path.write_text(yaml.safe_dump(reg, sort_keys=False))
    return path


def test_prepare_downloads_through_minari_remote(zoo_env, hub_server, tmp_path, monkeypatch):
    """Upload a tiny dataset to the test Hub; `dtzoo data prepare` fetches it via MINARI_REMOTE."""
    from dtzoo.collect import collect_episodes, scripted_policy

    dataset_id = "cartpole/remote-v0"
    upload_store = tmp_path / "upload-store"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(upload_store))
    monkeypatch.setenv("MINARI_REMOTE", f"hf://{ORG}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps = collect_episodes("CartPole-v1", scripted_policy("CartPole-v1"), episodes=3, seed=1)
        minari.create_dataset_from_buffers(
            dataset_id,
            eps,
            env="CartPole-v1",
            data_format="arrow",
            ref_min_score=22.2,
            ref_max_score=500.0,
        )
        minari.upload_dataset(dataset_id, token=WRITE_TOKEN)
    assert any(
        p.endswith("remote-v0/data/metadata.json")
        for p in hub_server.files(f"{ORG}/cartpole", repo_type="dataset")
    )

    store = tmp_path / "fresh-store"
    env = {
        **zoo_env,
        "MINARI_DATASETS_PATH": str(store),
        "MINARI_REMOTE": f"hf://{ORG}",
        "DTZOO_REGISTRY": str(
            registry_with_remote_env(Path(zoo_env["DTZOO_REGISTRY"]), dataset_id)
        ),
    }
    run_cli("data", "prepare", "remote-cartpole", env=env)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    downloaded = minari.load_dataset(dataset_id)
    assert downloaded.total_episodes == 3
    assert sum(len(e.rewards) for e in downloaded.iterate_episodes()) == sum(
        len(e.rewards) for e in eps
    )
    info = json.loads(run_cli("data", "info", "remote-cartpole", "--json", env=env).stdout)
    assert info["episodes"] == 3 and info["return"]["mean"] == pytest.approx(500.0)


def test_offline_without_local_copy_is_one_line(zoo_env, tmp_path):
    dataset_id = "cartpole/nowhere-v0"
    env = {
        **zoo_env,
        "MINARI_DATASETS_PATH": str(tmp_path / "empty"),
        "MINARI_REMOTE": "hf://dtzoo",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
        "DTZOO_REGISTRY": str(
            registry_with_remote_env(Path(zoo_env["DTZOO_REGISTRY"]), dataset_id)
        ),
    }
    proc = run_cli("data", "prepare", "remote-cartpole", env=env, check=False, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "could not be downloaded" in lines[0]
        and "MINARI_DATASETS_PATH" in lines[0]
    )


def test_config_and_card_record_dataset_provenance(zoo_env, registry):
    from dtzoo import paths, zoo
    from dtzoo.data import fingerprint

    spec = registry.resolve("cartpole-1L-seed0")
    zoo.train_cell(spec, registry)
    config = json.loads((paths.run_dir(spec.model_id) / "config.json").read_text())
    ds = config["dataset"]
    assert ds["id"] == "dtzoo/cartpole/scripted-v0"
    assert ds["fingerprint"] == fingerprint(ds["id"]) and ds["fingerprint"].startswith("sha256:")
    assert ds["minari_version"] == minari.__version__
    zoo.eval_cell(spec, registry, episodes=1)
    card = (paths.run_dir(spec.model_id) / "README.md").read_text()
    assert ds["fingerprint"] in card and f"minari {ds['minari_version']}" in card


def test_resume_refuses_changed_dataset(zoo_env, tmp_path, monkeypatch):
    """A run whose dataset changed underneath it must not silently continue."""
    import shutil

    store = tmp_path / "own-store"
    shutil.copytree(zoo_env["MINARI_DATASETS_PATH"], store)
    env = {**zoo_env, "MINARI_DATASETS_PATH": str(store)}
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    run = Path(zoo_env["DTZOO_HOME"]) / "runs" / "pendulum-1L-seed0"
    from dtzoo import zoo
    from dtzoo.registry import load_registry

    reg = load_registry()
    spec = reg.resolve("pendulum-1L-seed0")
    zoo.train_cell(spec, reg)
    for f in ("config.json", "manifest.json"):  # make it look unfinished, as after a kill
        (run / f).unlink()
    meta = store / "dtzoo" / "pendulum" / "scripted-v0" / "data" / "metadata.json"
    meta.write_text(meta.read_text() + "\n")  # still valid, but no longer the same bytes
    proc = run_cli("train", "pendulum-1L-seed0", env=env, check=False)
    assert proc.returncode == 1
    assert "dataset 'dtzoo/pendulum/scripted-v0' changed" in proc.stderr
    assert not (run / "config.json").exists()


def test_collect_from_a_zoo_checkpoint(zoo_env, registry):
    from dtzoo import zoo

    zoo.train_cell(registry.resolve("cartpole-1L-seed0"), registry)
    proc = run_cli(
        "data",
        "collect",
        "cartpole",
        "--policy",
        "cartpole-1L-seed0",
        "--episodes",
        "4",
        "--noise",
        "0,0.5",
        "--out",
        "me/cartpole/dt-v0",
        "--target-return",
        "500",
        env=zoo_env,
    )
    assert "me/cartpole/dt-v0: 4 episodes" in proc.stdout
    ds = minari.load_dataset("me/cartpole/dt-v0")
    assert ds.total_episodes == 4
    assert ds.storage.metadata["algorithm_name"] == "dtzoo:cartpole-1L-seed0"
    info = json.loads(run_cli("data", "info", "me/cartpole/dt-v0", "--json", env=zoo_env).stdout)
    assert info["episodes"] == 4 and sum(info["histogram"]["counts"]) == 4


def test_collect_random_and_train_on_it(zoo_env, tmp_path):
    """A researcher's new dataset, made with `data collect`, trains through a user registry."""
    run_cli(
        "data",
        "collect",
        "pendulum",
        "--policy",
        "random",
        "--episodes",
        "6",
        "--out",
        "me/pendulum/random-v0",
        env=zoo_env,
    )
    reg = yaml.safe_load(Path(zoo_env["DTZOO_REGISTRY"]).read_text())
    reg["envs"]["pendulum-random"] = {**reg["envs"]["pendulum"], "dataset": "me/pendulum/random-v0"}
    del reg["envs"]["pendulum-random"]["prepare"]
    user_reg = tmp_path / "user.yaml"
    user_reg.write_text(yaml.safe_dump(reg))
    env = {**zoo_env, "DTZOO_REGISTRY": str(user_reg)}
    run_cli("train", "pendulum-random-1L-seed0", "--steps", "5", env=env)
    config = json.loads(
        (
            Path(zoo_env["DTZOO_HOME"]) / "runs" / "pendulum-random-1L-seed0" / "config.json"
        ).read_text()
    )
    assert config["dataset"]["id"] == "me/pendulum/random-v0" and config["dataset"]["episodes"] == 6


def test_ref_scores_from_dataset_metadata(zoo_env, tmp_path):
    """`ref_scores: dataset` takes the reference returns from the Minari dataset's metadata."""
    reg = yaml.safe_load(Path(zoo_env["DTZOO_REGISTRY"]).read_text())
    reg["envs"]["pendulum"]["ref_scores"] = "dataset"
    user_reg = tmp_path / "user.yaml"
    user_reg.write_text(yaml.safe_dump(reg))
    env = {**zoo_env, "DTZOO_REGISTRY": str(user_reg)}
    run_cli("train", "pendulum-1L-seed0", "--steps", "3", env=env)
    meta = minari.load_dataset("dtzoo/pendulum/scripted-v0").storage.metadata
    config = json.loads(
        (Path(zoo_env["DTZOO_HOME"]) / "runs" / "pendulum-1L-seed0" / "config.json").read_text()
    )
    assert config["env"]["ref_scores"] == {
        "random": meta["ref_min_score"],
        "expert": meta["ref_max_score"],
    }
    info = json.loads(run_cli("data", "info", "pendulum", "--json", env=env).stdout)
    assert info["ref_scores"]["source"] == "dataset metadata"
