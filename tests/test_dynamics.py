"""Training dynamics: the lazy per-run checkpoint schedule, held-out episodes and the
validation loss, a log flushed as it goes, `dtzoo.revisions`, linear probes across revisions
(`dtzoo interp probe`), and the RTG sweep's marks (data's best return, expert score).

One tiny pendulum-1L-seed0 (the test registry plus a per-env denser schedule: 40 steps,
d_model 32) is trained once for the module; the CLI runs in subprocesses on the same home.
"""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
import torch
import yaml

import dtzoo
from dtzoo import paths, zoo
from dtzoo.checkpoint import load_model, read_config
from dtzoo.dynamics import (
    episode_segments,
    fit_logistic,
    fit_ridge,
    held_out_episodes,
    probe_revisions,
    probe_scores,
    r2_score,
    revision_dirs,
)
from dtzoo.errors import RegistryError, UsageError
from dtzoo.registry import CheckpointSchedule, load_registry
from tests.conftest import TEST_STEPS, assert_same_weights, make_test_registry, run_cli

MID = "pendulum-1L-seed0"
ENV_SCHEDULE = {"log": 6, "evenly": 10}  # on top of the test registry's log_until 16, every 20
SCHEDULE = CheckpointSchedule(16, 20, **ENV_SCHEDULE).steps(TEST_STEPS)


# ----------------------------------------------------------------------------- the schedule


def test_schedule_is_the_union_of_its_parts_and_ends_at_the_last_step():
    sched = CheckpointSchedule(log_until=512, every=1000, log=16, evenly=20)
    steps = sched.steps(1500)
    assert steps[0] == 0 and steps[-1] == 1500 and steps == sorted(set(steps))
    assert {1, 2, 4, 256, 512, 1000} <= set(steps)  # powers of two, every 1000
    assert {75 * i for i in range(1, 21)} <= set(steps)  # evenly: 1500 * i / 20
    late = [s for s in steps if s > 512]
    assert len(late) >= 12 and max(np.diff(late)) <= 75  # dense late in training, not 512->1000
    assert [s for s in steps if sched.is_checkpoint(s, 1500)] == steps
    assert [s for s in range(1501) if sched.is_checkpoint(s, 1500)] == steps
    # the old two-key schedule is unchanged
    assert CheckpointSchedule(16, 20).steps(40) == [0, 1, 2, 4, 8, 16, 20, 40]


def test_schedule_is_lazy_for_huge_runs():
    sched = CheckpointSchedule(log_until=512, every=1000, log=16, evenly=20)
    total = 10**20
    t0 = time.perf_counter()
    run = sched.for_run(total)
    first = list(itertools.islice(run, 14))
    assert first[:11] == [0, 1, 2, 4, 8, 16, 22, 32, 64, 128, 256]
    assert total in run and 10**19 * 3 in run and 10**20 - 1 not in run and 5 * 10**18 in run
    assert time.perf_counter() - t0 < 1.0  # a list would never finish


def test_registry_sets_the_schedule_globally_and_per_env(tmp_path):
    reg = yaml.safe_load(make_test_registry(tmp_path / "r.yaml").read_text())
    reg["checkpoints"] = {"log_until": 8, "every": 1000, "evenly": 4}
    reg["envs"]["pendulum"]["checkpoints"] = {"log": 5}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(reg, sort_keys=False))
    loaded = load_registry(tmp_path / "r.yaml")
    assert loaded.checkpoints == CheckpointSchedule(log_until=8, every=1000, log=0, evenly=4)
    pend = loaded.checkpoints.merged(loaded.env("pendulum").checkpoints)
    assert pend == CheckpointSchedule(log_until=8, every=1000, log=5, evenly=4)
    assert loaded.env("cartpole").checkpoints == {}
    reg["envs"]["pendulum"]["checkpoints"] = {"evenly": -1}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(reg, sort_keys=False))
    with pytest.raises(
        RegistryError,
        match=r"r\.yaml:\d+: envs\.pendulum\.checkpoints\.evenly "
        r"must be an integer >= 0",
    ):
        load_registry(tmp_path / "r.yaml")


def test_command_line_overrides_the_schedule(zoo_env, registry):
    from dtzoo.registry import with_checkpoints

    over = CheckpointSchedule.parse_override("log=4, evenly=3")
    assert over == {"log": 4, "evenly": 3}
    spec = with_checkpoints([registry.resolve(MID)], over)[0]
    assert spec.env.checkpoints == over and registry.env("pendulum").checkpoints == {}
    assert registry.checkpoints.merged(spec.env.checkpoints).steps(30) == [
        0,
        1,
        2,
        3,
        4,
        8,
        10,
        16,
        20,
        30,
    ]
    for bad, msg in (
        ("evnly=3", "unknown key 'evnly'"),
        ("log=-1", "log must be an integer"),
        ("", "expected KEY=N"),
    ):
        with pytest.raises(UsageError, match=msg):
            CheckpointSchedule.parse_override(bad)
    proc = run_cli("train", MID, "--checkpoints", "evnly=3", env=zoo_env, check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        "error: --checkpoints 'evnly=3': unknown key 'evnly'; keys: log_until, every, log, evenly"
    ]


def test_held_out_episodes_are_fixed_by_the_seed():
    a, b = held_out_episodes(100, 0.05, 0), held_out_episodes(100, 0.05, 1)
    assert len(a) == 5 and np.array_equal(a, held_out_episodes(100, 0.05, 0))
    assert not np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert len(held_out_episodes(10, 0.05, 0)) == 0  # nothing when that rounds to none
    ep, si = episode_segments(np.array([45, 10, 20]), np.array([0, 2]), 20)
    assert list(ep) == [0, 0, 0, 2] and list(si) == [0, 20, 40, 0]  # tiles, not overlaps


# ----------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def run(tmp_path_factory, minari_store):
    """pendulum-1L-seed0 with a denser per-env schedule; what progress saw on disk."""
    base = tmp_path_factory.mktemp("dyn")
    reg_path = make_test_registry(base / "registry.yaml")
    reg = yaml.safe_load(reg_path.read_text())
    reg["envs"]["pendulum"]["checkpoints"] = ENV_SCHEDULE
    reg_path.write_text(yaml.safe_dump(reg, sort_keys=False))
    env = {
        "DTZOO_HOME": str(base / "home"),
        "MINARI_DATASETS_PATH": str(minari_store),
        "DTZOO_REGISTRY": str(reg_path),
        "DTZOO_HUB": "local",
    }
    seen: dict[int, list[int]] = {}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("DTZOO_ORG", raising=False)
        registry = load_registry()
        run_dir = paths.run_dir(MID)

        def progress(step, total, loss):  # what a reader of the log sees during training
            log = run_dir / "training_log.csv"
            seen[step] = (
                [int(line.split(",")[0]) for line in log.read_text().splitlines()[1:]]
                if log.is_file()
                else []
            )

        zoo.train_cell(registry.resolve(MID), registry, device="cpu", progress=progress)
        yield {"env": env, "registry": registry, "run": run_dir, "seen": seen, "base": base}


def test_checkpoints_follow_the_per_env_schedule(run):
    ckpts = sorted(int(p.name[4:]) for p in (run["run"] / "checkpoints").iterdir())
    assert ckpts == SCHEDULE and len(SCHEDULE) > 8  # denser than the global 8
    final = run["run"] / "checkpoints" / f"step{TEST_STEPS}"
    assert_same_weights(final, run["run"])  # the last step is main


def test_log_is_flushed_as_it_goes_with_a_validation_loss(run):
    # each row is on disk by the next step (40 steps log every step), not only at checkpoints
    for step in range(2, TEST_STEPS + 1):
        want = step if step in SCHEDULE else step - 1  # a checkpoint also writes its own row
        assert run["seen"][step] == list(range(1, want + 1)), (step, run["seen"][step])
    from dtzoo.train import read_log

    rows = read_log(run["run"] / "training_log.csv")
    assert [r["step"] for r in rows] == list(range(1, TEST_STEPS + 1))
    assert all(r["val_loss"] is not None and np.isfinite(r["val_loss"]) for r in rows)


def test_validation_loss_is_the_final_models_loss_on_the_held_out_episodes(run):
    """Recompute the last row's val_loss from the saved model and the held-out episodes: it
    is those episodes' loss, and they were never sampled for training."""
    from dtzoo.data import SegmentSampler, load_trajectories
    from dtzoo.train import read_log

    model, config = load_model(run["run"])
    held = config.dataset["val_episodes"]
    data = load_trajectories(config.dataset["id"])
    assert (
        held
        == held_out_episodes(len(data.lengths), config.recipe["val_fraction"], config.seed).tolist()
        and len(held) == 1
    )
    K = config.architecture["context_len"]
    sampler = SegmentSampler(
        data,
        K,
        config.architecture["max_ep_len"],
        config.reward_scale,
        seed=0,
        state_mean=np.asarray(config.state_mean, np.float32),
        state_std=np.asarray(config.state_std, np.float32),
    )
    batch = sampler.segments(*episode_segments(data.lengths, np.asarray(held), K))
    b = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.no_grad():
        pred = model(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])
    want = torch.nn.functional.mse_loss(pred[b["mask"]], b["actions"][b["mask"]]).item()
    got = read_log(run["run"] / "training_log.csv")[-1]["val_loss"]
    assert got == pytest.approx(want, rel=1e-5)


def test_held_out_episodes_are_never_drawn_for_training(run):
    from dtzoo.data import load_trajectories
    from dtzoo.train import Trainer

    reg = run["registry"]
    spec = reg.resolve(MID)
    data = load_trajectories(spec.env.dataset)
    trainer = Trainer(spec, data, TEST_STEPS, reg.checkpoints, torch.device("cpu"))
    held = trainer.config.dataset["val_episodes"]
    ep, _ = trainer.sampler.draw(20_000)
    assert held and not np.isin(ep, held).any()
    assert len(np.unique(ep)) == len(data.lengths) - len(held)


# ----------------------------------------------------------------------------- revisions


def test_revisions_of_a_run_a_directory_and_the_hub(run):
    got = [(step, m) for step, m in dtzoo.revisions(MID)]
    assert [s for s, _ in got] == SCHEDULE
    for step, m in got:
        assert m.config.step == step and not m.training
        ref, _ = load_model(run["run"] / "checkpoints" / f"step{step}")
        assert all(
            torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values())
        )
    assert [s for s, _ in dtzoo.revisions(run["run"])] == SCHEDULE  # a directory
    # published with its checkpoints, then read back from the local hub as ORG/ID
    zoo.publish_cell(run["registry"].resolve(MID), run["registry"], hub="local", checkpoints=True)
    rid = f"{run['registry'].org}/{MID}"
    assert [s for s, _ in revision_dirs(rid, hub="local")] == SCHEDULE
    for (step, m), (_, ref) in zip(dtzoo.revisions(rid, hub="local"), got):
        assert m.config.step == step
        assert all(
            torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values())
        )


def test_revisions_of_something_that_is_no_model_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="holds no model"):
        list(dtzoo.revisions(tmp_path))


# ----------------------------------------------------------------------------- probes


def test_ridge_and_logistic_probes_recover_linear_structure():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16))
    w = rng.normal(size=(16, 2))
    y = x @ w + 3.0
    assert r2_score(x[200:], y[200:], fit_ridge(x[:200], y[:200], alpha=1e-6)) > 0.999
    noise = rng.normal(size=(400, 2))
    assert abs(r2_score(x[200:], noise[200:], fit_ridge(x[:200], noise[:200]))) < 0.2
    labels = (x @ w).argmax(-1)
    lin = fit_logistic(x[:200], labels[:200], 2)
    with torch.no_grad():
        acc = (
            lin(torch.as_tensor(x[200:], dtype=torch.float32)).argmax(-1).numpy() == labels[200:]
        ).mean()
    assert acc > 0.9
    # a discrete target (one-hot actions) is scored by accuracy on the test rows
    onehot = np.eye(2)[labels]
    train = np.arange(400) < 200
    got = probe_scores({"h": x}, onehot, train, discrete=True)["h"]
    assert got == pytest.approx(acc, abs=0.05) and got > 0.9


def test_probes_on_rollouts_when_asked(run):
    rep = probe_revisions(MID, ["state[1]"], ["hook_embed_state"], source="rollout")
    assert rep["source"].startswith("8 rollouts of the final model")
    assert rep["steps"] == SCHEDULE and rep["samples"]["test"] > 100
    assert min(rep["scores"]["hook_embed_state"]["state[1]"]) > 0.9  # a linear map of it


def test_probes_across_revisions(run):
    rep = probe_revisions(
        MID, ["rtg", "state[0]"], ["hook_embed_rtg", "hook_embed_state", "blocks.0.hook_resid_post"]
    )
    assert rep["steps"] == SCHEDULE and rep["metric"] == {"rtg": "r2", "state[0]": "r2"}
    assert rep["samples"]["train"] > 100 and rep["samples"]["test"] > 100
    # an embedding is a linear map of its input (plus the timestep's): probes read it back
    assert min(rep["scores"]["hook_embed_rtg"]["rtg"]) > 0.9
    assert min(rep["scores"]["hook_embed_state"]["state[0]"]) > 0.9
    post = rep["scores"]["blocks.0.hook_resid_post"]["rtg"]
    assert len(post) == len(SCHEDULE) and all(np.isfinite(post))
    with pytest.raises(UsageError, match="unknown probe target"):
        probe_revisions(MID, ["reward"])


def test_probe_command_writes_json_and_png(run):
    out = run["base"] / "probe"
    proc = run_cli(
        "interp",
        "probe",
        MID,
        "--target",
        "timestep",
        "--target",
        "action",
        "--out",
        str(out),
        env=run["env"],
    )
    rep = json.loads((out / "probe.json").read_text())
    assert rep["steps"] == SCHEDULE and rep["targets"] == ["timestep", "action"]
    assert rep["hooks"] == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{len(SCHEDULE)} revisions" in proc.stdout and str(out / "probe.png") in proc.stdout
    bad = run_cli(
        "interp",
        "probe",
        MID,
        "--hook",
        "blocks.9.nope",
        "--out",
        str(out),
        env=run["env"],
        check=False,
    )
    assert bad.returncode != 0 and "no hook point 'blocks.9.nope'" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- RTG sweep marks


def test_rtg_sweep_marks_the_datas_best_return_and_the_expert_score(run):
    from dtzoo.evaluate import rtg_sweep
    from dtzoo.plots import rtg_sweep_plot, sweep_marks

    model, config = load_model(run["run"])
    rep = rtg_sweep(model, config, [-1200.0, -150.0, 300.0], episodes=1)
    assert rep["data_best_return"] == config.dataset["return_max"]
    assert rep["expert_return"] == config.env["ref_scores"]["expert"]
    best = max(r["return_mean"] for r in rep["results"])
    assert rep["best_achieved"]["return_mean"] == best
    assert rep["above_data_best"] == (
        best - rep["data_best_return"] if best > rep["data_best_return"] else None
    )
    # a config from before dataset stats were recorded: no mark, no crash
    config.dataset.pop("return_max")
    old = rtg_sweep(model, config, [-150.0, 300.0], episodes=1)
    assert old["data_best_return"] is None and old["above_data_best"] is None
    rtg_sweep_plot(old, run["base"] / "old.png")
    marks = sweep_marks(
        {
            "results": [{"target_return": 1, "return_mean": 5.0}],
            "data_returns": {"max": 2.0},
            "ref_scores": {"expert": 9.0},
        }
    )
    assert marks["above_data_best"] == 3.0 and marks["expert"] == 9.0  # an old rtg_sweep.json
    rtg_sweep_plot(rep, run["base"] / "sweep.png")
    assert (run["base"] / "sweep.png").stat().st_size > 10_000
    # the tables (CLI, model card) carry the same marks in one line
    from dtzoo.card import sweep_table
    from dtzoo.evaluate import sweep_summary

    line = sweep_summary(rep)
    assert f"data's best return {rep['data_best_return']:.1f}" in line
    assert f"expert score {rep['expert_return']:.1f}" in line and line in sweep_table(rep)
    assert "3.0 above the data's best" in sweep_summary(
        {"results": [{"target_return": 1.0, "return_mean": 5.0}], "data_returns": {"max": 2.0}}
    )


def test_config_records_the_datas_best_return(run):
    config = read_config(run["run"])
    from dtzoo.data import load_trajectories

    data = load_trajectories(config.dataset["id"])
    assert config.dataset["return_max"] == pytest.approx(float(data.returns.max()))


def test_eval_revisions_gives_return_against_training_step(run):
    from dtzoo.dynamics import eval_revisions
    from dtzoo.evaluate import evaluate

    out = run["base"] / "evalrev"
    rep = eval_revisions(MID, episodes=1, registry=run["registry"], out_dir=out)
    assert [r["step"] for r in rep["revisions"]] == SCHEDULE
    assert (out / "revisions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "revisions.json").read_text())["revisions"] == rep["revisions"]
    # each row is that checkpoint's own evaluation (same seeds as `dtzoo eval --revision`)
    model, config = load_model(run["run"] / "checkpoints" / "step8")
    want = evaluate(model, config, episodes=1, seed_base=run["registry"].eval_seed)
    row = next(r for r in rep["revisions"] if r["step"] == 8)
    assert [r["return_mean"] for r in row["results"]] == [r["return_mean"] for r in want["results"]]
    cli = run_cli("eval", MID, "--revisions", "--episodes", "1", env=run["env"])
    assert "return against" in cli.stdout and cli.stdout.count("±") == 2 * len(SCHEDULE)
    png = paths.home() / "evals" / "revisions" / MID / "revisions.png"
    assert cli.stdout.strip().endswith(str(png)) and png.is_file()
