"""The tiny grid end to end through the real CLI: prepare, train, eval, publish, pull, leaderboard.

Every step runs `python -m dtzoo.cli` in a subprocess against an isolated DTZOO_HOME, with
real Minari datasets, real gymnasium envs and real safetensors files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TEST_STEPS, run_cli

pytestmark = pytest.mark.slow


def test_tiny_grid_end_to_end(zoo_env):
    home = Path(zoo_env["DTZOO_HOME"])
    grid_ids = run_cli("list", "--grid", "tiny", "--json", env=zoo_env)
    states = json.loads(grid_ids.stdout)
    assert [s["model_id"] for s in states] == [
        f"{e}-{n}L-seed{s}" for e in ("pendulum", "cartpole") for n in (1, 2) for s in (0, 1)
    ]
    assert all(s["prepared"] and not s["trained"] for s in states)

    run_cli("train", "--grid", "tiny", env=zoo_env)
    for s in states:
        run = home / "runs" / s["model_id"]
        for name in (
            "model.safetensors",
            "config.json",
            "manifest.json",
            "training_log.csv",
            "learning_curve.png",
        ):
            assert (run / name).is_file(), f"{s['model_id']} lacks {name}"
        assert (run / "checkpoints" / f"step{TEST_STEPS}").is_dir()

    second = run_cli("train", "--grid", "tiny", env=zoo_env)
    assert "0 trained, 8 skipped, 0 failed" in second.stderr

    ev = run_cli("eval", "--grid", "tiny", "--json", env=zoo_env)
    out = json.loads(ev.stdout)
    assert len(out["models"]) == 8
    for report in out["models"]:
        for r in report["results"]:
            assert all(abs(x) < 1e6 for x in r["returns"]) and len(r["returns"]) == 2
    # one leaderboard row per env x layers x target return, each over both seeds
    lb = out["leaderboard"]
    assert {(r["env"], r["layers"]) for r in lb} == {
        (e, n) for e in ("pendulum", "cartpole") for n in (1, 2)
    }
    assert len(lb) == 8 and all(r["seeds"] == 2 for r in lb)

    listed = {s["model_id"]: s for s in json.loads(run_cli("list", "--json", env=zoo_env).stdout)}
    assert listed["pendulum-1L-seed0"]["state"] == "evaluated"

    pub = run_cli("publish", "--grid", "tiny", env=zoo_env)  # main + every step<N> revision
    assert pub.stdout.count("published") >= 8 * 2 and "step0" in pub.stdout
    again = run_cli("publish", "--grid", "tiny", env=zoo_env)
    assert again.stdout.count("unchanged (skipped)") == pub.stdout.count("published")

    pulled = run_cli("pull", "pendulum-1L-seed0", env=zoo_env)
    path = Path(pulled.stdout.strip().splitlines()[-1])
    assert path.is_dir() and path.is_relative_to(home / "cache")
    run = home / "runs" / "pendulum-1L-seed0"
    for name in ("model.safetensors", "config.json", "eval.json"):
        assert (path / name).read_bytes() == (run / name).read_bytes()
    card = (path / "README.md").read_text()  # the card as published: names the org
    assert card.startswith("---\n") and "library_name: dtzoo" in card and "model-index" in card
    assert 'dtzoo.load("dtzoo/pendulum-1L-seed0")' in card and (path / "transformers").is_dir()

    md = run_cli("leaderboard", "--grid", "tiny", "--format", "markdown", env=zoo_env).stdout
    assert md.count("\n| pendulum |") + md.count("\n| cartpole |") == 8
    png = home / "leaderboard.png"
    csv_rows = (
        run_cli("leaderboard", "--format", "csv", "--plot", str(png), env=zoo_env)
        .stdout.strip()
        .splitlines()
    )
    assert csv_rows[0].startswith("env,family,layers,target_return") and len(csv_rows) == 9
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_python_api_loads_published_model(zoo_env, registry):
    import dtzoo
    from dtzoo import zoo

    spec = registry.resolve("pendulum-1L-seed0")
    zoo.train_cell(spec, registry)
    zoo.publish_cell(spec, registry)
    model = dtzoo.load("pendulum-1L-seed0")
    config = model.config
    assert not model.training and config.model_id == "pendulum-1L-seed0"
    assert config.env["gym_id"] == "Pendulum-v1" and len(config.state_mean) == 3
    states = torch.zeros(2, 5, 3)
    actions = model(
        states, torch.zeros(2, 5, 1), torch.zeros(2, 5, 1), torch.zeros(2, 5, dtype=torch.long)
    )
    assert actions.shape == (2, 5, 1) and actions.abs().max() <= 1

    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    agent = dtzoo.Agent(model, config, target_return=-150)
    obs, _ = env.reset(seed=0)
    total, steps = 0.0, 0
    while True:
        action = agent.act(obs)
        assert env.action_space.contains(action)
        obs, reward, term, trunc, _ = env.step(action)
        agent.observe(reward)
        total, steps = total + reward, steps + 1
        if term or trunc:
            break
    assert steps == 200 and -2000 < total <= 0


def test_trained_pendulum_beats_untrained(zoo_env, registry):
    """A few hundred steps on the scripted data must beat the step-0 weights at the expert
    target."""
    from dtzoo import paths, zoo
    from dtzoo.checkpoint import load_model
    from dtzoo.evaluate import evaluate
    from dtzoo.modeldir import RunDir

    spec = registry.resolve("pendulum-1L-seed0")
    zoo.train_cell(spec, registry, steps=300)
    trained = evaluate(*load_model(paths.run_dir(spec.model_id)), episodes=4, targets=[-150])
    untrained = evaluate(
        *load_model(RunDir.of(spec.model_id).checkpoint(0).path), episodes=4, targets=[-150]
    )
    t, u = trained["results"][0]["return_mean"], untrained["results"][0]["return_mean"]
    assert t > u + 300, (t, u)


def test_interrupted_training_resumes(zoo_env):
    """Kill the trainer mid-run (SIGKILL); the same command resumes from its last checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, **zoo_env}
    home = Path(zoo_env["DTZOO_HOME"])
    run = home / "runs" / "cartpole-1L-seed0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtzoo.cli", "train", "cartpole-1L-seed0", "--steps", "1000"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "step20").is_dir():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "config.json").exists(), "the run finished before it could be killed"
    states = list((run / "resume").glob("state-*.safetensors"))
    assert states
    killed_at = int(states[0].stem.split("-")[1])
    done = run_cli("train", "cartpole-1L-seed0", "--steps", "1000", env=zoo_env)
    assert f"resumed (from step {killed_at})" in done.stderr
    assert json.loads((run / "config.json").read_text())["step"] == 1000


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "pendulm-1L-seed0"], "did you mean pendulum-1L-seed0"),
        (["train", "--grid", "huge"], "unknown grid 'huge'; grids: "),
        (["pull", "not a model"], "invalid repo id"),
        (["data", "prepare", "pendulm"], "did you mean pendulum"),
        (["pull", "pendulum-1L-seed0", "--revision", "../x"], "invalid revision"),
    ],
)
def test_bad_input_is_one_line_exit_2(zoo_env, args, needle):
    proc = run_cli(*args, env=zoo_env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_malformed_registry_names_file_and_line(zoo_env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("envs:\n  pendulum:\n    gym_id: Pendulum-v1\n    dataset: [unclosed\n")
    proc = run_cli("--registry", str(bad), "list", env=zoo_env, check=False)
    assert proc.returncode == 2 and f"{bad}:" in proc.stderr and "Traceback" not in proc.stderr
