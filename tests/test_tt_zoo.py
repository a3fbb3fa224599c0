"""The Trajectory Transformer as a zoo family: registry ids and grids, `dtzoo train` into a
run directory, evaluation with beam search, the card, the leaderboard's family column, and a
publish / pull / load round trip, on the tiny pendulum data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from dtzoo.errors import RegistryError
from dtzoo.families import DT, TT
from dtzoo.registry import family_of, load_registry, model_id

TT_ID = "pendulum-tt-1L-seed0"


def test_ids_grids_and_the_tt_block(registry, tmp_path):
    assert model_id("hopper", 4, 0, TT) == "hopper-tt-4L-seed0"
    assert family_of("hopper-tt-4L-seed0") == TT and family_of("halfcheetah-mixed-1L-seed0") == DT
    spec = registry.resolve(TT_ID)
    assert (spec.family, spec.env.key, spec.n_layers, spec.seed) == (TT, "pendulum", 1, 0)
    assert spec.tt["model"]["n_bins"] == 20  # the test registry's `tt:` block
    bundled = load_registry(Path(__file__).resolve().parent.parent / "registry.yaml")
    assert len(bundled.grid("tt")) == 27 and all(family_of(m) == TT for m in bundled.grid("tt"))

    raw = yaml.safe_load(registry.path.read_text())
    for where, value, message in (
        (("tt", "model", "n_bins"), 10**6, r"tt.model.n_bins must be from 1 to 1000"),
        (("tt", "plan", "horizon"), 0, r"tt.plan.horizon must be from 1 to 1000"),
        (("tt", "plan", "plan_freq"), 3, r"tt.plan: plan_freq 3 exceeds the horizon 2"),
        (("tt", "model", "n_heads"), 3, r"tt.model: d_model 32 is not divisible by n_heads 3"),
        (("tt", "plan", "beam_size"), 4, r"unknown key 'beam_size' in tt.plan"),
        (("tt", "model", "observation_dim"), 3, r"cannot be set in the registry"),
        (("tt", "discretization"), "log", r"tt.discretization must be one of quantile, uniform"),
    ):
        bad = json.loads(json.dumps(raw))
        node = bad
        for k in where[:-1]:
            node = node.setdefault(k, {})
        node[where[-1]] = value
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(RegistryError, match=rf"bad.yaml:\d+: .*{message}"):
            load_registry(path)
    bad = json.loads(json.dumps(raw))
    bad["envs"]["pendulum-tt"] = bad["envs"]["pendulum"]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(RegistryError, match="cannot end with a family tag"):
        load_registry(path)


def test_a_tt_trains_evaluates_publishes_and_loads_like_a_dt(zoo_env, registry, tmp_path):
    import dtzoo
    from dtzoo import zoo
    from dtzoo.checkpoint import load_model, read_config
    from dtzoo.leaderboard import leaderboard_rows, render
    from dtzoo.modeldir import ModelDir, RunDir
    from dtzoo.tt import TrajectoryTransformer

    spec = registry.resolve(TT_ID)
    result = zoo.train_cell(spec, registry, device="cpu")
    run = RunDir.of(TT_ID)
    assert result.path == run.path and run.is_trained() and run.trained_steps() == 40
    config = read_config(run.path)
    assert config.family == TT and config.target_returns == []
    assert set(config.extra) == {"discretizer", "planning"}
    assert json.loads((run.path / "config.json").read_text())["family"] == TT
    steps = [s for s, _ in run.checkpoints()]
    assert steps[0] == 0 and steps[-1] == 40 and 16 in steps  # the registry's schedule
    run.verify_sealed()
    assert "loss" in run.log.read_text().splitlines()[0]

    model, _ = load_model(run.path)
    assert isinstance(model, TrajectoryTransformer) and model.cfg.n_bins == 20
    tokens = torch.zeros(1, 7, dtype=torch.long)
    logits, cache = model.run_with_cache(tokens)
    assert cache["blocks.0.attn.hook_pattern"].shape == (1, 2, 7, 7)
    assert logits.shape == (1, 7, 21)

    outcome = zoo.eval_model(TT_ID, registry)
    (row,) = outcome.report["results"]
    assert row["target_return"] is None and len(row["returns"]) == 2
    assert outcome.report["family"] == TT
    card = (run.path / "README.md").read_text()
    assert (
        "Trajectory Transformer (Janner et al. 2021)" in card and "trajectory-transformer" in card
    )
    assert "dtzoo.make_agent(model)" in card and "| planned |" in card
    (lb,) = [r for r in leaderboard_rows([outcome.report]) if r["env"] == "pendulum"]
    assert (lb["family"], lb["target_return"], lb["seeds"]) == ("tt", None, 1)
    assert "| pendulum | tt | 1 | - |" in render([lb])

    published = zoo.publish_cell(spec, registry, hub="local", checkpoints=True)
    assert [p.revision for p in published][-1] == "main" and len(published) == len(steps) + 1
    snapshot = ModelDir(zoo.pull(f"dtzoo/{TT_ID}", registry, hub="local"))
    assert not (snapshot.path / "transformers").exists()  # transformers has no TT
    hub_rows = zoo.leaderboard(registry, hub="local")
    assert [(r["family"], r["target_return"]) for r in hub_rows] == [("tt", None)]

    shutil.rmtree(run.path)  # a consumer: nothing trained here
    pulled = dtzoo.load(f"dtzoo/{TT_ID}", hub="local")
    assert torch.equal(pulled(tokens), model(tokens))
    agent = dtzoo.make_agent(pulled)
    action = agent.act(torch.zeros(3).numpy())
    assert action.shape == (1,) and -2.0 <= float(action[0]) <= 2.0


def test_an_interrupted_tt_run_resumes_bit_for_bit(zoo_env, registry):
    from dtzoo import zoo
    from dtzoo.modeldir import WEIGHTS, RunDir

    spec = registry.resolve("pendulum-tt-1L-seed1")
    run = RunDir.of(spec.model_id)
    zoo.train_cell(spec, registry, device="cpu")
    straight = (run.path / WEIGHTS).read_bytes()
    shutil.rmtree(run.path)

    def killed_at_25(step: int, total: int, loss: float) -> None:
        if step == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        zoo.train_cell(spec, registry, device="cpu", progress=killed_at_25)
    assert not run.is_trained() and run.newest_resume_state() == run.resume_state(20)
    result = zoo.train_cell(spec, registry, device="cpu")
    assert result.resumed_from == 20
    assert (run.path / WEIGHTS).read_bytes() == straight
    steps = [int(line.split(",")[0]) for line in run.log.read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_dt_only_commands_say_so_in_one_line_for_a_tt(zoo_env, registry, tmp_path):
    from tests.conftest import run_inproc as run_cli

    run_cli("train", TT_ID, "--steps", "4", env=zoo_env)
    for args in (
        ("eval", TT_ID, "--rtg-sweep"),
        ("export", TT_ID, "--out", str(tmp_path / "hf")),
        ("interp", "attention", TT_ID),
    ):
        proc = run_cli(*args, env=zoo_env, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        # one line: the command's error, or the cell's failure (a grid command goes on)
        lines = [ln for ln in proc.stderr.splitlines() if "works on" in ln]
        assert len(lines) == 1 and lines[0].startswith(("error:", f"{TT_ID} failed:")), (
            args,
            proc.stderr[-1500:],
        )
        assert f"works on Decision Transformers; {TT_ID} is a trajectory-transformer" in lines[0]
