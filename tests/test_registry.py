"""dtzoo.registry: the bundled registry, model ids, recipes, schedules and error reporting."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from dtzoo.errors import RegistryError, UsageError
from dtzoo.registry import (
    CheckpointSchedule,
    Recipe,
    load_registry,
    model_id,
    parse_model_id,
)

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "registry.yaml"

# A fixed registry for the error-reporting tests (the bundled file changes as the zoo grows).
BASE = """\
hub:
  org: dtzoo
  license: mit
recipe:
  context_len: 20
  lr: 1.0e-4
  batch_size: 64
  activation: relu
  grad_clip: 0.25
  steps: 100000
checkpoints:
  log_until: 512
  every: 1000
eval:
  episodes: 10
  seed: 0
envs:
  pendulum:
    gym_id: Pendulum-v1
    dataset: dtzoo/pendulum/scripted-v0
    max_ep_len: 200
    reward_scale: 100
    target_returns: [-150, -600]
    ref_scores: {random: -1230.0, expert: -145.0}
    prepare:
      policy: scripted
      episodes: 100
    recipe: {d_model: 64, lr: 1.0e-3}
    eval: {episodes: 5}
  hopper:
    gym_id: Hopper-v5
    dataset: mujoco/hopper/medium-v0
    max_ep_len: 1000
    reward_scale: 1000
    target_returns: [3600, 1800]
    ref_scores: {random: -20.3, expert: 3234.3}
grids:
  tiny:
    envs: [pendulum]
    layers: [1, 2]
    seeds: [0, 1]
  small:
    description: hopper
    envs: [hopper, pendulum]
    layers: [1, 2, 3]
    seeds: [0, 1, 2]
"""


def edited(tmp_path: Path, old: str, new: str, marker: str | None = None) -> tuple[Path, int]:
    """BASE with `old` replaced by `new` (once), and the line number `marker` is on."""
    assert BASE.count(old) == 1, f"{old!r} is not unique in BASE"
    text = BASE.replace(old, new)
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    needle = marker or new.strip().splitlines()[0]
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(lines) == 1, f"{needle!r} found on lines {lines}"
    return path, lines[0]


def registry_error(path: Path) -> str:
    with pytest.raises(RegistryError) as e:
        load_registry(path)
    return str(e.value)


# ----------------------------------------------------------------------------- bundled registry


def test_bundled_registry_expands_the_named_grids_in_order():
    reg = load_registry(BUNDLED)
    assert reg.grid("tiny") == [
        "pendulum-1L-seed0",
        "pendulum-1L-seed1",
        "pendulum-2L-seed0",
        "pendulum-2L-seed1",
        "cartpole-1L-seed0",
        "cartpole-1L-seed1",
        "cartpole-2L-seed0",
        "cartpole-2L-seed1",
    ]
    small = reg.grid("small")
    assert len(small) == 27 and len(set(small)) == 27
    assert small[:4] == ["hopper-1L-seed0", "hopper-1L-seed1", "hopper-1L-seed2", "hopper-2L-seed0"]
    assert small[-1] == "walker2d-3L-seed2"
    assert [m.split("-")[0] for m in small[::9]] == ["hopper", "halfcheetah", "walker2d"]
    assert reg.all_model_ids() == (
        reg.grid("tiny")
        + reg.grid("small")
        + reg.grid("atari")
        + reg.grid("minigrid")
        + reg.grid("tt")
        + reg.grid("tt-tiny")
    )
    assert len(reg.grid("atari")) == 4 * 4 * 3 and reg.grid("atari")[-1] == "qbert-6L-seed2"
    assert reg.org == "dtzoo" and reg.license == "mit"
    assert reg.envs["hopper"].gym_id == "Hopper-v5"
    assert reg.envs["hopper"].dataset == "mujoco/hopper/medium-v0"
    assert reg.envs["pendulum"].prepare and reg.envs["hopper"].prepare is None


def test_packaged_registry_is_the_root_registry(monkeypatch):
    """registry.yaml ships inside the wheel; the two copies must not drift apart."""
    packaged = Path(str(resources.files("dtzoo") / "registry.yaml"))
    assert packaged.read_text() == BUNDLED.read_text()
    monkeypatch.delenv("DTZOO_REGISTRY", raising=False)
    assert load_registry().path == packaged


def test_dtzoo_registry_env_var_picks_the_file(tmp_path, monkeypatch):
    path, _ = edited(tmp_path, "  org: dtzoo", "  org: someone-else")
    monkeypatch.setenv("DTZOO_REGISTRY", str(path))
    reg = load_registry()
    assert reg.org == "someone-else" and reg.path == path
    assert set(reg.envs) == {"pendulum", "hopper"}


def test_normalize_uses_reference_scores(tmp_path):
    env = load_registry(_base(tmp_path)).envs["pendulum"]
    assert env.ref_scores == {"random": -1230.0, "expert": -145.0}
    assert env.normalize(-1230.0) == pytest.approx(0.0)
    assert env.normalize(-145.0) == pytest.approx(100.0)
    assert env.normalize(-687.5) == pytest.approx(50.0)


def _base(tmp_path: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(BASE)
    return path


def test_base_registry_values(tmp_path):
    reg = load_registry(_base(tmp_path))
    assert reg.grid("small") == [
        f"{e}-{n}L-seed{s}" for e in ("hopper", "pendulum") for n in (1, 2, 3) for s in (0, 1, 2)
    ]
    assert reg.grids["small"].description == "hopper"
    assert reg.envs["pendulum"].eval_episodes == 5 and reg.envs["hopper"].eval_episodes == 10
    assert reg.envs["pendulum"].prepare == {"policy": "scripted", "episodes": 100}
    assert reg.envs["hopper"].prepare is None
    assert reg.envs["pendulum"].target_returns == [-150.0, -600.0]
    assert reg.checkpoints == CheckpointSchedule(512, 1000)
    assert reg.eval_seed == 0


# ----------------------------------------------------------------------------- model ids


@pytest.mark.parametrize(
    "mid, parsed",
    [
        ("hopper-expert-3L-seed2", ("hopper-expert", 3, 2)),
        ("hopper-1L-seed0", ("hopper", 1, 0)),
        ("a-b-c-12L-seed345", ("a-b-c", 12, 345)),
        ("env2-2L-seed10", ("env2", 2, 10)),
    ],
)
def test_parse_model_id_from_the_right(mid, parsed):
    assert parse_model_id(mid) == parsed
    assert model_id(*parsed) == mid


@pytest.mark.parametrize(
    "bad",
    [
        "hopper",
        "hopper-1L",
        "hopper-1l-seed0",
        "Hopper-1L-seed0",
        "hopper-L-seed0",
        "hopper-1L-seed",
        "hopper1L-seed0",
        "hopper-1L-seed0 ",
        "-1L-seed0",
        "hopper-1L-seedx",
        "hopper-01L-seed0",
        "hopper-1L-seed00",
        "hopper-1L-seed01",  # one model, one name
    ],
)
def test_malformed_model_ids_are_usage_errors(bad):
    with pytest.raises(UsageError, match="malformed model id"):
        parse_model_id(bad)


def test_resolve_merges_env_recipe_over_defaults():
    reg = load_registry(BUNDLED)
    spec = reg.resolve("pendulum-2L-seed1")
    assert (spec.model_id, spec.env.key, spec.n_layers, spec.seed) == (
        "pendulum-2L-seed1",
        "pendulum",
        2,
        1,
    )
    r = spec.recipe
    # from envs.pendulum.recipe
    assert (r.d_model, r.d_mlp, r.steps, r.warmup_steps, r.lr, r.batch_size) == (
        64,
        256,
        600,
        60,
        1e-3,
        64,
    )
    # from the top-level recipe
    assert (r.context_len, r.n_heads, r.activation, r.dropout, r.weight_decay, r.grad_clip) == (
        20,
        1,
        "relu",
        0.1,
        1e-4,
        0.25,
    )
    assert isinstance(r.steps, int) and isinstance(r.d_model, int)
    # an env without a recipe gets the paper's defaults, and resolving did not change them
    assert reg.resolve("hopper-3L-seed2").recipe == Recipe()
    assert reg.recipe == Recipe()
    # ids outside any grid resolve too, as long as the env exists
    assert reg.resolve("walker2d-7L-seed9").n_layers == 7


def test_resolve_unknown_env_hints_at_a_close_id():
    reg = load_registry(BUNDLED)
    with pytest.raises(UsageError) as e:
        reg.resolve("pendulm-1L-seed0")
    assert "pendulm" in str(e.value) and "did you mean" in str(e.value)
    assert "pendulum-1L-seed0" in str(e.value)
    with pytest.raises(UsageError, match="did you mean.*hopper-1L-seed0"):
        reg.resolve("hoper-1l-seed0")  # malformed and misspelled
    with pytest.raises(UsageError, match="layers must be >= 1"):
        reg.resolve("hopper-0L-seed0")


def test_unknown_env_and_grid_hint_at_close_names():
    reg = load_registry(BUNDLED)
    with pytest.raises(UsageError, match="did you mean pendulum"):
        reg.env("pendulm")
    with pytest.raises(UsageError) as e:
        reg.grid("tiyn")
    assert "did you mean tiny" in str(e.value)
    with pytest.raises(UsageError, match="either --grid or model ids"):
        reg.select("tiny", ["pendulum-1L-seed0"])
    with pytest.raises(UsageError, match="nothing to do"):
        reg.select(None, [])
    assert [s.model_id for s in reg.select(None, ["hopper-1L-seed0"])] == ["hopper-1L-seed0"]
    assert [s.model_id for s in reg.select("tiny", [])] == reg.grid("tiny")


# ----------------------------------------------------------------------------- checkpoint schedule


def test_checkpoint_schedule_pythia_style():
    sched = CheckpointSchedule(log_until=512, every=1000)
    powers = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert sched.steps(3000) == powers + [1000, 2000, 3000]
    assert sched.steps(600) == powers + [600]
    assert sched.steps(512) == powers
    assert sched.steps(2500) == powers + [1000, 2000, 2500]
    assert sched.steps(1) == [0, 1]
    assert sched.steps(3) == [0, 1, 2, 3]
    assert CheckpointSchedule(log_until=16, every=20).steps(40) == [0, 1, 2, 4, 8, 16, 20, 40]
    # log_until that is not a power of two stops at the last power below it
    assert CheckpointSchedule(log_until=10, every=100).steps(250) == [0, 1, 2, 4, 8, 100, 200, 250]


# ------------------------------------------------------------------------ errors with file:line


def test_malformed_yaml_reports_file_and_line(tmp_path):
    path, line = edited(tmp_path, "    gym_id: Hopper-v5\n", "    gym_id: Hopper-v5: v4\n")
    msg = registry_error(path)
    assert re.match(rf"^{re.escape(str(path))}:{line}: invalid YAML: mapping values", msg), msg


def test_tab_indentation_reports_its_line(tmp_path):
    path, line = edited(tmp_path, "    reward_scale: 1000\n", "\treward_scale: 1000\n")
    msg = registry_error(path)
    assert msg.startswith(f"{path}:{line}: invalid YAML"), msg


def test_unknown_env_key_reports_its_line_and_a_hint(tmp_path):
    path, line = edited(tmp_path, "    prepare:\n", "    prepaer:\n")
    msg = registry_error(path)
    assert msg.startswith(f"{path}:{line}: unknown key 'prepaer' in envs.pendulum"), msg
    assert "did you mean prepare" in msg


def test_unknown_key_in_env_recipe_reports_its_line(tmp_path):
    path, line = edited(
        tmp_path,
        "    recipe: {d_model: 64, lr: 1.0e-3}",
        "    recipe:\n      d_model: 64\n      d_modle: 32",
        "d_modle",
    )
    msg = registry_error(path)
    assert msg.startswith(f"{path}:{line}: unknown key 'd_modle' in envs.pendulum.recipe"), msg
    assert "did you mean d_model" in msg


def test_unknown_recipe_key_reports_its_line_and_a_hint(tmp_path):
    path, line = edited(tmp_path, "  grad_clip: 0.25\n", "  grad_clipp: 0.25\n")
    msg = registry_error(path)
    assert msg.startswith(f"{path}:{line}: unknown key 'grad_clipp' in recipe"), msg
    assert "did you mean grad_clip" in msg


def test_unknown_top_level_key_reports_its_line(tmp_path):
    path, line = edited(tmp_path, "checkpoints:\n", "checkpionts:\n")
    msg = registry_error(path)
    assert msg.startswith(f"{path}:{line}: unknown top-level key 'checkpionts'"), msg


@pytest.mark.parametrize(
    "old, new, expect",
    [
        ("  episodes: 10\n", "  episodez: 10\n", "unknown key 'episodez' in eval"),
        ("  license: mit\n", "  licence: mit\n", "unknown key 'licence' in hub"),
        (
            "    seeds: [0, 1, 2]\n",
            "    sedes: [0, 1, 2]\n    seeds: [0]\n",
            "unknown key 'sedes' in grids.small",
        ),
        (
            "    eval: {episodes: 5}",
            "    eval:\n      episods: 5",
            "unknown key 'episods' in envs.pendulum.eval",
        ),
    ],
)
def test_unknown_keys_in_eval_hub_and_grids_report_their_line(tmp_path, old, new, expect):
    path, line = edited(tmp_path, old, new, expect.split("'")[1])
    msg = registry_error(path)
    assert msg.startswith(f"{path}:{line}: {expect}"), msg


def test_missing_required_key_reports_the_env_line(tmp_path):
    path, line = edited(tmp_path, "  hopper:\n    gym_id: Hopper-v5\n", "  hopper:\n", "hopper:")
    msg = registry_error(path)
    assert msg.startswith(f"{path}:{line}: envs.hopper is missing required key 'gym_id'"), msg


@pytest.mark.parametrize(
    "old, new, marker, expect",
    [
        ("  lr: 1.0e-4\n", "  lr: fast\n", "lr: fast", "recipe.lr must be a number"),
        (
            "  batch_size: 64\n",
            "  batch_size: 6.5\n",
            "batch_size: 6.5",
            "recipe.batch_size must be an integer",
        ),
        (
            "  activation: relu\n",
            "  activation: 3\n",
            "activation: 3",
            "recipe.activation must be a string",
        ),
        (
            "    recipe: {d_model: 64, lr: 1.0e-3}",
            "    recipe:\n      d_model: true",
            "d_model: true",
            "envs.pendulum.recipe.d_model must be a number",
        ),
        (
            "    max_ep_len: 1000\n",
            "    max_ep_len: -5\n",
            "max_ep_len: -5",
            "envs.hopper.max_ep_len must be a positive number",
        ),
        (
            "    reward_scale: 1000\n",
            "    reward_scale: yes\n",
            "reward_scale: yes",
            "envs.hopper.reward_scale must be a positive",
        ),
        (
            "    target_returns: [3600, 1800]",
            "    target_returns: high",
            "target_returns: high",
            "envs.hopper.target_returns must be a list of numbers",
        ),
        (
            "    target_returns: [3600, 1800]",
            "    target_returns: []",
            "target_returns: []",
            "envs.hopper.target_returns must be a list of numbers",
        ),
        (
            "    ref_scores: {random: -20.3, expert: 3234.3}",
            "    ref_scores: {random: 1.6}",
            "ref_scores: {random: 1.6}",
            "envs.hopper.ref_scores needs distinct",
        ),
        (
            "    ref_scores: {random: -20.3, expert: 3234.3}",
            "    ref_scores: {random: low, expert: 3234.3}",
            "ref_scores: {random: low",
            "envs.hopper.ref_scores needs distinct numbers",
        ),
        (
            "    ref_scores: {random: -20.3, expert: 3234.3}",
            "    ref_scores: [1, 2]",
            "ref_scores: [1, 2]",
            "envs.hopper.ref_scores needs distinct numbers",
        ),
        (
            "    prepare:\n      policy: scripted\n      episodes: 100\n",
            "    prepare: scripted\n",
            "prepare: scripted",
            "envs.pendulum.prepare must be a mapping",
        ),
        (
            "    layers: [1, 2, 3]",
            "    layers: [1, two, 3]",
            "layers: [1, two",
            "grids.small.layers must be a list",
        ),
        (
            "    seeds: [0, 1]\n",
            "    seeds: [-1]\n",
            "seeds: [-1]",
            "grids.tiny.seeds must be a list of non-negative",
        ),
        (
            "    layers: [1, 2]\n",
            "    layers: [0, 1]\n",
            "layers: [0, 1]",
            "grids.tiny.layers must be a list",
        ),
        (
            "    seeds: [0, 1]\n",
            "    seeds: []\n",
            "seeds: []",
            "grids.tiny.seeds must be a non-empty list",
        ),
        ("  every: 1000\n", "  every: 0\n", "every: 0", "checkpoints.every must be >= 1"),
        ("  seed: 0\n", "  seed: -1\n", "seed: -1", "eval.seed must be an integer >= 0"),
        (
            "  episodes: 10\n",
            "  episodes: 2.5\n",
            "episodes: 2.5",
            "eval.episodes must be an integer >= 1",
        ),
        (
            "    eval: {episodes: 5}",
            "    eval:\n      episodes: ten",
            "episodes: ten",
            "envs.pendulum.eval.episodes must be an integer >= 1",
        ),
        ("  org: dtzoo\n", "  org: 42\n", "org: 42", "hub.org must be a string"),
        (
            "  hopper:\n    gym_id",
            "  Hopper_2:\n    gym_id",
            "Hopper_2:",
            "env key 'Hopper_2' must match",
        ),
    ],
)
def test_bad_values_report_the_line(tmp_path, old, new, marker, expect):
    path, line = edited(tmp_path, old, new, marker)
    msg = registry_error(path)
    assert msg.startswith(f"{path}:{line}: {expect}"), msg


def test_a_section_that_is_not_a_mapping_reports_its_line(tmp_path):
    start, end = BASE.index("recipe:\n"), BASE.index("checkpoints:\n")
    text = BASE[:start] + "recipe: [20]\n" + BASE[end:]
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    line = text.splitlines().index("recipe: [20]") + 1
    msg = registry_error(path)
    assert msg.startswith(f"{path}:{line}: recipe must be a mapping"), msg


def test_unknown_env_in_a_grid_reports_the_line_and_a_hint(tmp_path):
    path, line = edited(tmp_path, "    envs: [hopper, pendulum]", "    envs: [hopper, pendulm]")
    msg = registry_error(path)
    assert msg.startswith(f"{path}:{line}: grids.small names unknown env 'pendulm'"), msg
    assert "did you mean pendulum" in msg


def test_unreadable_registry_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    msg = registry_error(missing)
    assert str(missing) in msg and "cannot read registry" in msg


# ----------------------------------------------------------------------------- user registries


USER_ENV = """
  pendulum-random:
    description: Uniform random torques (a user-defined env, no code).
    gym_id: Pendulum-v1
    dataset: user/pendulum/random-v0
    max_ep_len: 200
    reward_scale: 100
    target_returns: [-900]
    ref_scores: {random: -1230.0, expert: -145.0}
    prepare: {policy: random, episodes: 4, noise: [0.0], seed: 3}
    recipe: {d_model: 16, d_mlp: 32, n_heads: 2, context_len: 5, batch_size: 8, warmup_steps: 2}
    eval: {episodes: 1}
"""

USER_GRID = """
  mine:
    description: A user's own grid.
    envs: [pendulum-random]
    layers: [2]
    seeds: [3, 4]
"""


def test_user_registry_adds_an_env_and_a_grid_with_no_code(tmp_path, monkeypatch):
    """A copy of the registry with one more env and grid: prepare, resolve and train from it."""
    from dtzoo import paths
    from dtzoo.checkpoint import load_model
    from dtzoo.train import train_model
    from dtzoo.zoo import prepare_env

    bundled = BUNDLED.read_text()
    reg_dict = yaml.safe_load(bundled)
    assert bundled.count("\ngrids:\n") == 1
    text = bundled.replace("\ngrids:\n", USER_ENV + "\ngrids:\n" + USER_GRID)
    path = tmp_path / "my-registry.yaml"
    path.write_text(text)
    monkeypatch.setenv("DTZOO_REGISTRY", str(path))
    monkeypatch.setenv("DTZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))

    reg = load_registry()
    assert set(reg.envs) == set(reg_dict["envs"]) | {"pendulum-random"}
    assert reg.grid("mine") == ["pendulum-random-2L-seed3", "pendulum-random-2L-seed4"]
    spec = reg.select("mine", [])[1]
    assert (spec.env.key, spec.n_layers, spec.seed) == ("pendulum-random", 2, 4)
    assert (spec.recipe.d_model, spec.recipe.n_heads, spec.recipe.context_len) == (16, 2, 5)
    assert spec.recipe.lr == 1e-4  # not overridden: the top-level recipe
    assert spec.env.eval_episodes == 1 and spec.env.prepare["policy"] == "random"

    prepare_env(spec.env)
    result = train_model(spec, reg.checkpoints, steps=3, device="cpu")
    assert result.path == paths.run_dir("pendulum-random-2L-seed4")
    _, config = load_model(result.path)
    assert config.dataset["id"] == "user/pendulum/random-v0"
    assert config.architecture["n_layers"] == 2 and config.architecture["n_heads"] == 2
    assert config.env["key"] == "pendulum-random" and config.step == 3


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("{activation: swish}", "recipe.activation must be one of relu, gelu, gelu_exact, tanh"),
        ("{precision: fp8}", "recipe.precision must be one of fp32, bf16"),
        ("{steps: 0}", "recipe.steps must be positive"),
        ("{dropout: 1.5}", "recipe.dropout must be below 1"),
    ],
)
def test_recipe_values_are_checked_at_load(tmp_path, recipe, message):
    path = tmp_path / "r.yaml"
    path.write_text(_base(tmp_path).read_text().replace("envs:\n", f"recipe: {recipe}\nenvs:\n", 1))
    with pytest.raises(RegistryError, match=message) as e:
        load_registry(path)
    assert str(e.value).startswith(f"{path}:")


def test_heads_must_divide_width(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        _base(tmp_path)
        .read_text()
        .replace("envs:\n", "recipe: {d_model: 30, n_heads: 4}\nenvs:\n", 1)
    )
    with pytest.raises(RegistryError, match="not divisible by n_heads 4"):
        load_registry(path).resolve("hopper-1L-seed0")
