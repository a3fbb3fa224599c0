"""Training (schedule, resume), the Agent, evaluation and leaderboards on the tiny real datasets."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch

from dtzoo import paths
from dtzoo.agent import Agent
from dtzoo.checkpoint import CONFIG, MANIFEST, WEIGHTS, load_model, read_config, verify
from dtzoo.errors import TrainingError
from dtzoo.evaluate import episode_seeds, evaluate, rollout
from dtzoo.leaderboard import COLUMNS, leaderboard_rows, render
from dtzoo.model import DecisionTransformer
from dtzoo.registry import load_registry
from dtzoo.train import read_log, train_model
from tests.conftest import TEST_STEPS, assert_same_weights, make_test_registry, model_weights

MID = "pendulum-1L-seed0"
SCHEDULE = [0, 1, 2, 4, 8, 16, 20, 40]  # the test registry: log_until 16, every 20, 40 steps


class Killed(Exception):
    """Stands in for a kill between two training steps."""


def kill_at(step: int):
    def progress(s: int, total: int, loss: float) -> None:
        if s == step:
            raise Killed(f"killed after step {s}")

    return progress


@pytest.fixture(scope="module")
def trained(tmp_path_factory, minari_store):
    """pendulum-1L-seed0 and -seed1 trained for the test registry's 40 steps, in their own home."""
    base = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DTZOO_HOME", str(base / "home"))
        mp.setenv("MINARI_DATASETS_PATH", str(minari_store))
        mp.setenv("DTZOO_REGISTRY", str(make_test_registry(base / "registry.yaml")))
        reg = load_registry()
        results = {}
        for mid in (MID, "pendulum-1L-seed1", "cartpole-1L-seed0"):
            results[mid] = train_model(reg.resolve(mid), reg.checkpoints, device="cpu")
        yield {
            "registry": reg,
            "results": results,
            "runs": {mid: paths.run_dir(mid) for mid in results},
        }


# ----------------------------------------------------------------------------- training


def test_training_writes_the_final_model_and_checkpoints_on_the_schedule(trained):
    reg, result = trained["registry"], trained["results"][MID]
    run = trained["runs"][MID]
    assert reg.checkpoints.steps(TEST_STEPS) == SCHEDULE
    assert (result.model_id, result.path, result.steps, result.resumed_from) == (
        MID,
        run,
        TEST_STEPS,
        None,
    )
    assert np.isfinite(result.final_loss)
    for name in (WEIGHTS, CONFIG, MANIFEST, "training_log.csv", "learning_curve.png"):
        assert (run / name).is_file(), name
    verify(run)
    config = read_config(run)
    assert (config.step, config.total_steps, config.seed, config.model_id) == (
        TEST_STEPS,
        TEST_STEPS,
        0,
        MID,
    )
    assert config.architecture["n_layers"] == 1 and config.architecture["d_model"] == 32
    assert config.dataset["id"] == "dtzoo/pendulum/scripted-v0" and config.dataset["episodes"] == 20
    assert config.dataset["fingerprint"].startswith("sha256:")

    ckpts = sorted((run / "checkpoints").iterdir(), key=lambda p: int(p.name[4:]))
    assert [p.name for p in ckpts] == [f"step{n}" for n in SCHEDULE]  # exactly these, no others
    for p in ckpts:
        verify(p)
        assert read_config(p).step == int(p.name[4:])
        assert sorted(x.name for x in p.iterdir()) == [CONFIG, MANIFEST, WEIGHTS]
    assert [p.name for p in (run / "resume").iterdir()] == [f"state-{TEST_STEPS}.safetensors"]

    log = read_log(run / "training_log.csv")
    assert [r["step"] for r in log] == list(range(1, TEST_STEPS + 1))
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 for r in log)
    assert log[0]["lr"] < log[-1]["lr"] == pytest.approx(reg.resolve(MID).recipe.lr)  # warm-up
    assert np.mean([r["loss"] for r in log[-10:]]) < np.mean([r["loss"] for r in log[:10]])


def test_the_final_checkpoint_is_the_final_model(trained):
    run = trained["runs"][MID]
    final = run / "checkpoints" / f"step{TEST_STEPS}"
    assert (final / WEIGHTS).read_bytes() == (run / WEIGHTS).read_bytes()
    assert json.loads((final / CONFIG).read_text()) == json.loads((run / CONFIG).read_text())
    assert_same_weights(final, run)
    # and training moved the weights away from step 0 (and between checkpoints)
    w0, w8, wN = (model_weights(run / "checkpoints" / f"step{n}") for n in (0, 8, TEST_STEPS))
    assert not torch.equal(w0["embed_state.weight"], wN["embed_state.weight"])
    assert not torch.equal(w8["embed_state.weight"], wN["embed_state.weight"])


def test_seed_fixes_the_initialisation(trained):
    run0, run1 = trained["runs"][MID], trained["runs"]["pendulum-1L-seed1"]
    config = read_config(run0 / "checkpoints" / "step0")
    torch.manual_seed(0)
    fresh = DecisionTransformer(config.dt_config()).state_dict()
    step0 = model_weights(run0 / "checkpoints" / "step0")
    assert all(torch.equal(fresh[k], step0[k]) for k in fresh)
    other = model_weights(run1 / "checkpoints" / "step0")
    assert not torch.equal(other["embed_state.weight"], step0["embed_state.weight"])


def test_a_finished_run_is_returned_as_is(trained, zoo_env):
    """Training again a finished run does not train again (copied to this test's own home)."""
    src = trained["runs"][MID]
    run = paths.run_dir(MID)
    shutil.copytree(src, run)
    before = (run / WEIGHTS).read_bytes()
    reg = load_registry()
    result = train_model(reg.resolve(MID), reg.checkpoints, device="cpu")
    assert result.resumed_from == TEST_STEPS
    assert (run / WEIGHTS).read_bytes() == before
    assert read_config(run).step == TEST_STEPS
    # fewer steps than it was trained for: one line saying what to do (more steps extend it)
    with pytest.raises(TrainingError, match="already trained for 40 steps, more than --steps 20"):
        train_model(reg.resolve(MID), reg.checkpoints, steps=20, device="cpu")


def test_an_interrupted_run_resumes_bit_for_bit(trained, registry):
    """Kill a run twice (during warm-up, and later), resume each time: the same model as run A.

    A kill is an exception from the progress callback, i.e. between two steps; whatever was on
    disk then (checkpoints, the newest resume state, the log) is all the resumed run gets.
    Resuming goes back to the newest resume state (step 4, then step 20) and redoes the steps
    after it, so the optimiser, scheduler, dropout RNG and sampler must all be restored exactly.
    """
    spec = registry.resolve(MID)
    run = paths.run_dir(MID)
    assert run != trained["runs"][MID]
    with pytest.raises(Killed):
        train_model(spec, registry.checkpoints, device="cpu", progress=kill_at(7))
    assert not (run / CONFIG).exists()  # not trained: no final model
    assert [p.name for p in (run / "resume").iterdir()] == ["state-4.safetensors"]
    assert sorted(int(p.name[4:]) for p in (run / "checkpoints").iterdir()) == [0, 1, 2, 4]

    with pytest.raises(Killed):
        train_model(spec, registry.checkpoints, device="cpu", progress=kill_at(27))
    assert [p.name for p in (run / "resume").iterdir()] == ["state-20.safetensors"]

    result = train_model(spec, registry.checkpoints, device="cpu")
    assert result.resumed_from == 20

    a = trained["runs"][MID]
    assert (run / WEIGHTS).read_bytes() == (a / WEIGHTS).read_bytes()
    for n in SCHEDULE:
        assert_same_weights(run / "checkpoints" / f"step{n}", a / "checkpoints" / f"step{n}")
    # the log is the uninterrupted run's log (no duplicated or missing steps)
    log_a, log_b = read_log(a / "training_log.csv"), read_log(run / "training_log.csv")
    assert [r["step"] for r in log_b] == list(range(1, TEST_STEPS + 1))
    assert [(r["step"], r["loss"], r["lr"]) for r in log_b] == [
        (r["step"], r["loss"], r["lr"]) for r in log_a
    ]
    # and resumed from the step-0 state as well
    shutil.rmtree(run)
    with pytest.raises(Killed):
        train_model(spec, registry.checkpoints, device="cpu", progress=kill_at(1))
    assert [p.name for p in (run / "resume").iterdir()] == ["state-1.safetensors"]


def test_resume_refuses_a_changed_dataset(zoo_env, tmp_path, monkeypatch, minari_store):
    from dtzoo.collect import prepare_dataset

    store = tmp_path / "store"
    shutil.copytree(minari_store, store)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    reg = load_registry()
    spec = reg.resolve(MID)
    with pytest.raises(Killed):
        train_model(spec, reg.checkpoints, device="cpu", progress=kill_at(5))
    resume_state = paths.run_dir(MID) / "resume" / "state-4.safetensors"
    assert resume_state.is_file()
    # the same dataset id, other episodes
    prepare_dataset(
        spec.env.dataset,
        spec.env.gym_id,
        policy="scripted",
        episodes=20,
        noise=[0.0, 1.0],
        seed=1,
        overwrite=True,
    )
    with pytest.raises(TrainingError) as e:
        train_model(spec, reg.checkpoints, device="cpu")
    assert spec.env.dataset in str(e.value) and "changed" in str(e.value)
    assert str(paths.run_dir(MID)) in str(e.value)  # says what to delete to start over
    assert resume_state.is_file() and not (paths.run_dir(MID) / CONFIG).exists()


# ----------------------------------------------------------------------------- agent and evaluation


def test_evaluate_returns_finite_results_for_every_target_deterministically(trained):
    model, config = load_model(trained["runs"][MID])
    report = evaluate(model, config, episodes=2)
    assert report["model_id"] == MID and report["step"] == TEST_STEPS
    assert report["episodes"] == 2 and report["episode_seeds"] == episode_seeds(0, 2) == [0, 1]
    assert report["gym_id"] == "Pendulum-v1" and report["dataset"] == "dtzoo/pendulum/scripted-v0"
    assert (
        [r["target_return"] for r in report["results"]] == config.target_returns == [-150.0, -600.0]
    )
    refs = config.env["ref_scores"]
    for r in report["results"]:
        rets = np.array(r["returns"])
        assert rets.shape == (2,) and np.isfinite(rets).all()
        assert r["lengths"] == [200, 200]  # Pendulum-v1 truncates at 200 steps
        assert r["return_mean"] == pytest.approx(rets.mean()) and r["return_std"] == pytest.approx(
            rets.std()
        )
        assert r["normalized_mean"] == pytest.approx(
            100 * (rets.mean() - refs["random"]) / (refs["expert"] - refs["random"])
        )
    again = evaluate(model, config, episodes=2)
    assert [r["returns"] for r in again["results"]] == [r["returns"] for r in report["results"]]
    # other seeds: other episodes
    other = evaluate(model, config, episodes=2, seed_base=1)
    assert other["episode_seeds"] == [1_000_000, 1_000_001]
    assert other["results"][0]["returns"] != report["results"][0]["returns"]
    assert json.loads(json.dumps(report)) == report  # eval.json-ready


def test_episode_seeds_depend_on_the_model_seed_only():
    assert episode_seeds(0, 3) == [0, 1, 2]
    assert episode_seeds(2, 3) == [20_000, 20_001, 20_002]
    assert episode_seeds(2, 3, base=1) == [1_020_000, 1_020_001, 1_020_002]
    assert len(set(episode_seeds(0, 10_000)) & set(episode_seeds(1, 10))) == 0


def test_a_trained_model_beats_its_step0_checkpoint(trained):
    run = trained["runs"][MID]
    model, config = load_model(run)
    model0, config0 = load_model(run / "checkpoints" / "step0")
    target = config.target_returns[0]
    trained_ret = evaluate(model, config, episodes=5, targets=[target])["results"][0]["return_mean"]
    init_ret = evaluate(model0, config0, episodes=5, targets=[target])["results"][0]["return_mean"]
    # 40 tiny steps: far from the expert (about -150), but clearly better than the initialisation
    assert trained_ret > init_ret + 25, (trained_ret, init_ret)


def test_the_agent_in_a_plain_env_loop_matches_the_vectorised_rollout(trained):
    model, config = load_model(trained["runs"][MID])
    target = config.target_returns[0]
    env = gym.make(config.env["gym_id"])
    agent = Agent(model, config, target_return=target)
    obs, _ = env.reset(seed=7)
    total, steps, rewards = 0.0, 0, []
    while True:
        action = agent.act(obs)
        assert action.shape == (1,) and -2.0 <= action[0] <= 2.0
        obs, reward, terminated, truncated, _ = env.step(action)
        agent.observe(reward)
        total, steps = total + reward, steps + 1
        rewards.append(reward)
        if steps == 3:  # the context fills from the right, R_t counts down by r_t / scale
            assert agent.filled == 3
            assert agent.rtg[0, -3:].tolist() == pytest.approx(
                [
                    target / 100,
                    (target - rewards[0]) / 100,
                    (target - rewards[0] - rewards[1]) / 100,
                ],
                rel=1e-5,
            )
            assert agent.timesteps[0, -3:].tolist() == [0, 1, 2]
        if terminated or truncated:
            break
    assert agent.filled == config.architecture["context_len"] and agent.t == steps == 200
    returns, lengths = rollout(model, config, target, seeds=[7])
    assert lengths.tolist() == [200]
    assert returns[0] == pytest.approx(total, rel=1e-6)
    agent.reset(target_return=-600)
    assert agent.filled == 0 and agent.t == 0 and agent.next_rtg[0] == pytest.approx(-6.0)


def test_discrete_actions_cartpole_model_beats_its_step0_checkpoint(trained):
    run = trained["runs"]["cartpole-1L-seed0"]
    model, config = load_model(run)
    assert config.action_space == {"kind": "discrete", "n": 2} and config.act_dim == 2
    agent = Agent(model, config)
    assert agent.target == config.target_returns[0] == 500.0
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=3)
    action = agent.act(obs)
    assert action in (0, 1) and np.issubdtype(np.asarray(action).dtype, np.integer)
    assert agent.actions[0, -1].tolist() in ([1.0, 0.0], [0.0, 1.0])  # one-hot, as in training
    env.step(action)
    report = evaluate(model, config, episodes=3)
    report0 = evaluate(*load_model(run / "checkpoints" / "step0"), episodes=3)
    for r, r0 in zip(report["results"], report0["results"]):
        assert r["return_mean"] > r0["return_mean"] + 100, (r, r0)
        assert r["lengths"] == [int(x) for x in r["returns"]]  # CartPole: +1 per step


# ----------------------------------------------------------------------------- leaderboard


def test_leaderboard_aggregates_seeds_and_renders_consistently(trained):
    reports = []
    for mid in (MID, "pendulum-1L-seed1"):
        run = trained["runs"][mid]
        model, config = load_model(run)
        reports.append(evaluate(model, config, episodes=2))
    rows = leaderboard_rows(reports)
    assert [(r["env"], r["layers"], r["target_return"]) for r in rows] == [
        ("pendulum", 1, -150.0),
        ("pendulum", 1, -600.0),
    ]
    for row, i in zip(rows, range(2)):
        rets = np.array([rep["results"][i]["return_mean"] for rep in reports])
        scores = np.array([rep["results"][i]["normalized_mean"] for rep in reports])
        assert row["return_mean"] == pytest.approx(rets.mean()) and row[
            "return_std"
        ] == pytest.approx(rets.std())
        assert row["score_mean"] == pytest.approx(scores.mean()) and row[
            "score_std"
        ] == pytest.approx(scores.std())
        assert row["return_std"] > 0  # two different seeds, two different models
        assert (row["seeds"], row["episodes"], row["data"]) == (2, 2, "dtzoo/pendulum/scripted-v0")
    # one seed alone: std 0, seeds 1
    single = leaderboard_rows(reports[:1])
    assert single[0]["seeds"] == 1 and single[0]["return_std"] is None  # no spread, not ± 0
    assert single[0]["return_mean"] == reports[0]["results"][0]["return_mean"]

    assert json.loads(render(rows, "json")) == rows
    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    assert [list(p) for p in parsed] == [COLUMNS] * len(rows)
    for p, row in zip(parsed, rows):
        for col in COLUMNS:
            want = row[col]
            assert (float(p[col]) == want) if isinstance(want, float) else (p[col] == str(want)), (
                col
            )
    md = render(rows, "markdown").splitlines()
    assert len(md) == 2 + len(rows)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in md]
    assert len(cells[0]) == len(COLUMNS) and all(len(c) == len(COLUMNS) for c in cells)
    assert cells[0][:5] == ["env", "family", "layers", "target", "return"]
    assert set(md[1].replace("|", "").replace("-", "").replace(":", "")) == set()
    for line, row in zip(cells[2:], rows):
        assert line[:3] == ["pendulum", "dt", "1"] and float(line[3]) == row["target_return"]
        assert line[4] == f"{row['return_mean']:.1f}" and line[5] == f"{row['return_std']:.1f}"
        assert line[6] == f"{row['score_mean']:.1f}" and line[8] == "2" and line[10] == row["data"]
    with pytest.raises(ValueError, match="unknown format"):
        render(rows, "html")


def test_bf16_precision_trains_and_is_recorded(zoo_env, registry):
    """bf16 autocast: finite losses close to fp32's, and the recipe says which precision ran."""
    import json

    from dtzoo import paths
    from dtzoo.train import read_log, train_model

    spec = registry.resolve("pendulum-1L-seed0")
    train_model(spec, registry.checkpoints, device="cpu", precision="bf16")
    run = paths.run_dir(spec.model_id)
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["precision"] == "bf16"
    bf16 = read_log(run / "training_log.csv")
    spec_fp32 = registry.resolve("pendulum-1L-seed1")
    train_model(spec_fp32, registry.checkpoints, device="cpu")
    fp32 = read_log(paths.run_dir(spec_fp32.model_id) / "training_log.csv")
    assert all(math.isfinite(r["loss"]) for r in bf16)
    assert (
        bf16[-1]["loss"] < bf16[0]["loss"]
        and abs(bf16[-1]["loss"] - fp32[-1]["loss"]) < 0.5 * fp32[0]["loss"]
    )


def test_a_run_directory_gives_main_or_its_checkpoints(trained):
    """dtzoo.load(dir, revision=...) and `dtzoo export DIR --revision` share this mapping."""
    from dtzoo.errors import UsageError
    from dtzoo.locate import revision_dir

    run = trained["runs"][MID]
    assert revision_dir(run, "main") == run
    assert revision_dir(run, "step8") == run / "checkpoints" / "step8"
    with pytest.raises(UsageError, match="has no checkpoint 'step7'"):
        revision_dir(run, "step7")
