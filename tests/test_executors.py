"""dtzoo.grid executors: local worker processes, a real Ray runtime, submitit's local executor
(the SLURM path), idempotent cells (skip / resume / failed with its last line), `dtzoo status`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dtzoo import grid, paths, zoo
from dtzoo.errors import UsageError
from dtzoo.modeldir import RunDir
from tests.conftest import run_cli

STEPS = 6  # a handful: the cells only have to finish, not learn
GHOST = "ghost-1L-seed0"  # its dataset does not exist anywhere: fails on purpose

HOLD_LOCK = textwrap.dedent("""
    import fcntl, pathlib, sys, time
    lock = pathlib.Path(sys.argv[1])
    lock.parent.mkdir(parents=True, exist_ok=True)
    f = open(lock, "a+")
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.read()  # hold it until the test closes our stdin
""")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("MINARI_REMOTE", "gcp://dtzoo-test-no-such-bucket")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def statuses(results) -> dict[str, str]:
    return {r.model_id: r.status for r in results}


def interrupt(spec, reg, at: int = 2) -> None:
    """Train `spec` and kill it (in effect) after step `at`: a resume state, no final model."""
    from dtzoo.train import train_model

    class Killed(Exception):
        pass

    def kill(step, total, loss):
        if step == at:
            raise Killed

    with pytest.raises(Killed):
        train_model(spec, reg.checkpoints, steps=STEPS, device="cpu", progress=kill)


def state_of(env, *ids) -> dict[str, dict]:
    rows = json.loads(run_cli("status", *ids, "--json", env=env).stdout)
    return {r["model_id"]: r for r in rows}


# ----------------------------------------------------------------------------- fast


def test_a_missing_extra_is_one_line_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(grid.MissingExtra, match=r"pip install 'dtzoo\[ray\]'") as e:
        grid.make_executor("ray")
    assert e.value.exit_code == 2
    with pytest.raises(grid.MissingExtra, match=r"pip install 'dtzoo\[slurm\]'"):
        grid.make_executor("slurm")
    with pytest.raises(UsageError, match="unknown executor"):
        grid.make_executor("dask")


def test_time_limits_parse_to_minutes():
    assert [grid.parse_minutes(t) for t in ("90", "01:30", "1-00:10", "00:00:30", None)] == [
        90,
        90,
        24 * 60 + 10,
        1,
        60,
    ]
    for bad in ("abc", "0", "1:2:3:4"):
        with pytest.raises(UsageError, match="--time"):
            grid.parse_minutes(bad)


def test_run_cell_skips_finished_cells_and_reports_failures(ghost_registry, offline):
    opts = {"steps": 2, "device": "cpu"}
    first = grid.run_cell("train", "pendulum-1L-seed0", opts)
    assert (first.status, first.value.steps) == ("done", 2)
    again = grid.run_cell("train", "pendulum-1L-seed0", opts)
    assert (again.status, again.detail) == ("skipped", "already trained (2 steps)")
    ghost = grid.run_cell("train", GHOST, opts)
    assert ghost.status == "failed" and "dtzoo/ghost/missing-v0" in ghost.detail
    assert "\n" not in ghost.detail
    # eval: done once, then skipped with its eval.json (the leaderboard still gets it)
    ev = grid.run_cell("eval", "pendulum-1L-seed0", {"episodes": 1})
    ev2 = grid.run_cell("eval", "pendulum-1L-seed0", {"episodes": 1})
    assert (ev.status, ev2.status, ev2.detail) == ("done", "skipped", "already evaluated")
    assert ev2.value["results"] == ev.value["results"]
    ev3 = grid.run_cell("eval", "pendulum-1L-seed0", {"episodes": 2})  # other settings: redone
    assert ev3.status == "done" and ev3.value["episodes"] == 2
    assert grid.run_cell("eval", "pendulum-1L-seed1", {}).status == "failed"  # not trained
    assert grid.run_cell("nonsense", "pendulum-1L-seed1", {}).status == "failed"


@pytest.mark.slow
def test_status_reports_every_state(zoo_env, registry):
    reg = registry
    one, two, locked, broken = (
        reg.resolve(m)
        for m in (
            "pendulum-1L-seed0",
            "pendulum-1L-seed1",
            "pendulum-2L-seed0",
            "cartpole-1L-seed0",
        )
    )
    for spec in (one, two):
        zoo.train_cell(spec, reg, steps=2, device="cpu")
    zoo.eval_cell(one, reg, episodes=1)
    zoo.eval_cell(two, reg, episodes=1)
    zoo.publish_cell(one, reg, hub="local")
    interrupt(broken, reg, at=2)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(paths.run_dir(locked.model_id) / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        rows = state_of(zoo_env, "--grid", "tiny")
        table = run_cli("status", "--grid", "tiny", env=zoo_env)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert {m: r["state"] for m, r in rows.items()} == {
        "pendulum-1L-seed0": "published",
        "pendulum-1L-seed1": "evaluated",
        "pendulum-2L-seed0": "running",
        "pendulum-2L-seed1": "pending",
        "cartpole-1L-seed0": "running",
        "cartpole-1L-seed1": "pending",
        "cartpole-2L-seed0": "pending",
        "cartpole-2L-seed1": "pending",
    }
    assert (
        rows["pendulum-2L-seed0"]["locked"]
        and rows["pendulum-2L-seed0"]["detail"] == "run lock held"
    )
    assert not rows["cartpole-1L-seed0"]["locked"] and rows["cartpole-1L-seed0"]["step"] == 2
    assert rows["pendulum-1L-seed0"]["step"] == 2
    assert "pendulum-2L-seed0 │ running" in table.stdout
    assert "4 pending, 2 running, 0 trained, 1 evaluated, 1 published" in table.stderr
    # the lock is free again: an untouched run directory with a lock file is pending
    assert state_of(zoo_env, "pendulum-2L-seed0")["pendulum-2L-seed0"]["state"] == "pending"
    zoo.train_cell(locked, reg, steps=2, device="cpu")
    assert state_of(zoo_env, "pendulum-2L-seed0")["pendulum-2L-seed0"]["state"] == "trained"


# ----------------------------------------------------------------------------- local workers


@pytest.mark.slow
def test_local_workers_train_the_pendulum_cells(zoo_env, registry):
    ids = ["pendulum-1L-seed0", "pendulum-1L-seed1", "pendulum-2L-seed0"]
    proc = run_cli(
        "train", *ids, "--executor", "local", "--workers", "2", "--steps", str(STEPS), env=zoo_env
    )
    assert "3 trained, 0 skipped, 0 failed" in proc.stderr
    assert all(f"{m}: done" in proc.stderr for m in ids)
    rows = state_of(zoo_env, *ids)
    assert {m: (r["state"], r["step"]) for m, r in rows.items()} == {
        m: ("trained", STEPS) for m in ids
    }
    again = run_cli("train", *ids, "--executor", "local", "--workers", "2", env=zoo_env)
    assert "0 trained, 3 skipped, 0 failed" in again.stderr


# ----------------------------------------------------------------------------- ray


@pytest.fixture
def ray_runtime(zoo_env):
    """A real Ray runtime on this machine (2 CPUs), shut down after the test."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": grid.worker_env()},
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_trains_the_cells_a_failing_one_does_not_stop_them(
    ghost_registry, offline, ray_runtime, zoo_env
):
    ids = [GHOST, "pendulum-1L-seed0", "cartpole-1L-seed0"]
    done: list[str] = []
    ex = grid.RayExecutor(cpus_per_cell=1)
    results = ex.run(
        "train", ids, {"steps": STEPS, "device": "cpu"}, on_done=lambda r: done.append(r.model_id)
    )
    assert statuses(results) == {
        GHOST: "failed",
        "pendulum-1L-seed0": "done",
        "cartpole-1L-seed0": "done",
    }
    assert "dtzoo/ghost/missing-v0" in results[0].detail and "\n" not in results[0].detail
    assert sorted(done) == sorted(ids)
    assert all(RunDir.of(m).is_trained() for m in ids[1:])
    assert ray_runtime.is_initialized()  # ours: the executor does not shut it down

    # the CLI joins the same runtime: finished cells are skipped, the failed one fails again
    address = ray_runtime.get_runtime_context().gcs_address
    env = {**zoo_env, "MINARI_REMOTE": "gcp://dtzoo-test-no-such-bucket", "HF_HUB_OFFLINE": "1"}
    proc = run_cli("train", *ids, "--executor", "ray", "--address", address, env=env, check=False)
    assert proc.returncode == 1, proc.stderr
    failed = [ln for ln in proc.stderr.splitlines() if " failed: " in ln]
    assert (
        len(failed) == 1 and failed[0].startswith(f"{GHOST} failed: ") and "missing-v0" in failed[0]
    )
    assert "pendulum-1L-seed0: skipped (already trained" in proc.stderr
    assert proc.stderr.strip().endswith("0 trained, 2 skipped, 1 failed")

    ev = run_cli(
        "eval",
        *ids[1:],
        "--executor",
        "ray",
        "--address",
        address,
        "--episodes",
        "1",
        "--json",
        env=env,
    )
    assert [m["model_id"] for m in json.loads(ev.stdout)["models"]] == ids[1:]
    assert {m: r["state"] for m, r in state_of(zoo_env, *ids).items()} == {
        GHOST: "pending",
        "pendulum-1L-seed0": "evaluated",
        "cartpole-1L-seed0": "evaluated",
    }


# ----------------------------------------------------------------------------- submitit (slurm)


@pytest.mark.slow
def test_submitit_local_runs_the_slurm_path_idempotently(
    ghost_registry, offline, zoo_env, tmp_path
):
    pytest.importorskip("submitit")
    reg = ghost_registry
    interrupt(reg.resolve("pendulum-2L-seed0"), reg, at=2)
    ids = [GHOST, "pendulum-1L-seed0", "pendulum-2L-seed0"]
    ex = grid.SlurmExecutor(time="00:05", cluster="local", folder=str(tmp_path / "jobs"))
    results = ex.run("train", ids, {"steps": STEPS, "device": "cpu"})
    assert statuses(results) == {
        GHOST: "failed",
        "pendulum-1L-seed0": "done",
        "pendulum-2L-seed0": "resumed",
    }
    assert results[2].detail == "from step 2"
    assert "dtzoo/ghost/missing-v0" in results[0].detail
    assert list((tmp_path / "jobs").glob("*/*_log.out"))  # submitit's job logs

    # the CLI: same path (DTZOO_SUBMITIT_CLUSTER=local stands in for a cluster), skips, exit 1
    env = {
        **zoo_env,
        "DTZOO_SUBMITIT_CLUSTER": "local",
        "MINARI_REMOTE": "gcp://dtzoo-test-no-such-bucket",
        "HF_HUB_OFFLINE": "1",
    }
    proc = run_cli(
        "train",
        *ids,
        "--executor",
        "slurm",
        "--time",
        "00:05",
        "--partition",
        "cpu",
        env=env,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"{GHOST} failed: " in proc.stderr
    assert proc.stderr.strip().endswith("0 trained, 2 skipped, 1 failed")
    assert (Path(zoo_env["DTZOO_HOME"]) / "slurm").is_dir()  # job logs under DTZOO_HOME by default


def test_an_unreachable_ray_cluster_is_one_line(monkeypatch, zoo_env):
    import types

    def init(**kw):
        try:
            raise RuntimeError("Failed to connect to GCS.\nInvalidAuthToken: token is missing")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379") from cause

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(grid.ExecutorError) as e:
        grid.RayExecutor(address="10.0.0.9:6379").run("train", ["pendulum-1L-seed0"], {})
    msg = str(e.value)
    assert "\n" not in msg and "10.0.0.9:6379" in msg and "InvalidAuthToken" in msg
