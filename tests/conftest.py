"""Shared fixtures: an isolated DTZOO_HOME, a fast test registry, and tiny real datasets.

The test registry is the bundled registry.yaml with smaller numbers (fewer episodes, steps and
eval episodes), so everything runs the real code paths in seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

pytest_plugins = ["tests.hub_fixtures"]

# One intra-op thread per process: the suite's models are tiny, and several torch processes
# (the CLI subprocesses) spinning two OpenMP threads each on a 2-core machine run 10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
TEST_STEPS = 40


def make_test_registry(path: Path, steps: int = TEST_STEPS, episodes: int = 20) -> Path:
    """Write the bundled registry with test-sized numbers to `path`."""
    reg = yaml.safe_load((ROOT / "registry.yaml").read_text())
    reg["checkpoints"] = {"log_until": 16, "every": 20}
    reg["eval"]["video"] = False  # replay videos cost seconds each; tests that want one ask
    for key in ("pendulum", "cartpole"):
        env = reg["envs"][key]
        env["prepare"]["episodes"] = episodes
        env["recipe"].update(steps=steps, warmup_steps=10, d_model=32, d_mlp=64, batch_size=32)
        env["eval"] = {"episodes": 2}
    reg["tt"] = {  # a Trajectory Transformer small enough to train and plan in seconds
        "model": {"n_bins": 20, "n_heads": 2, "d_model": 32, "d_mlp": 64, "context_len": 4},
        "train": {"steps": steps, "batch_size": 16, "warmup_steps": 10},
        "plan": {"horizon": 2, "beam_width": 2, "n_expand": 1, "k_act": 4},
    }
    path.write_text(yaml.safe_dump(reg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def minari_store(tmp_path_factory) -> Path:
    """A session-wide Minari store holding the tiny grid's datasets (prepared once)."""
    from dtzoo.registry import load_registry
    from dtzoo.zoo import prepare_env

    store = tmp_path_factory.mktemp("minari")
    reg_path = make_test_registry(tmp_path_factory.mktemp("reg") / "registry.yaml")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(store)
    try:
        reg = load_registry(reg_path)
        for key in ("pendulum", "cartpole"):
            prepare_env(reg.env(key))
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return store


def trained_home(
    tmp_path_factory,
    minari_store: Path,
    name: str,
    train: list[str],
    evaluate: tuple[str, ...] = (),
    video: bool = False,
) -> Path:
    """A DTZOO_HOME of its own with `train` trained and `evaluate` evaluated, for a
    module-scoped fixture: train once per module, copy the runs into each test's home."""
    from dtzoo import zoo
    from dtzoo.registry import load_registry

    home = tmp_path_factory.mktemp(name) / "home"
    reg_path = make_test_registry(home.parent / "registry.yaml")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {
            "DTZOO_HOME": str(home),
            "DTZOO_REGISTRY": str(reg_path),
            "MINARI_DATASETS_PATH": str(minari_store),
        }.items():
            mp.setenv(k, v)
        reg = load_registry()
        for mid in train:
            zoo.train_cell(reg.resolve(mid), reg, device="cpu")
        for mid in evaluate:
            zoo.eval_model(mid, reg, video=video)
    return home


@pytest.fixture
def zoo_env(tmp_path, monkeypatch, minari_store) -> dict[str, str]:
    """Isolated DTZOO_HOME + test registry + the shared tiny datasets; returns the env vars."""
    home = tmp_path / "home"
    reg = make_test_registry(tmp_path / "registry.yaml")
    env = {
        "DTZOO_HOME": str(home),
        "DTZOO_REGISTRY": str(reg),
        "MINARI_DATASETS_PATH": str(minari_store),
        "DTZOO_HUB": "local",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("DTZOO_ORG", raising=False)
    return env


@pytest.fixture
def registry(zoo_env):
    from dtzoo.registry import load_registry

    return load_registry()


def run_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run the real `dtzoo` command in a subprocess (as a user would)."""
    full_env = {**os.environ, **(env or {}), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "dtzoo.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"dtzoo {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def run_inproc(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`dtzoo ARGS` in this process: dtzoo.cli.main with sys.argv and the environment set, its
    output captured (a subprocess costs ~1.5 s of imports). An exception other than SystemExit
    that escapes main() comes back as a traceback on stderr with exit code -1."""
    import contextlib
    import io
    import sys
    import traceback

    from dtzoo import cli

    out, err = io.StringIO(), io.StringIO()
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        for k, v in {**(env or {}), "COLUMNS": "200"}.items():
            mp.setenv(k, v)
        mp.setattr(sys, "argv", ["dtzoo", *args])
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            err.write(traceback.format_exc())
            code = -1
    proc = subprocess.CompletedProcess(["dtzoo", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"dtzoo {' '.join(args)} exited {code}\n{proc.stderr}")
    return proc


@pytest.fixture
def ghost_registry(zoo_env):
    """The test registry plus an env `ghost` whose dataset nobody prepared: its cells fail."""
    from dtzoo.registry import load_registry

    path = Path(zoo_env["DTZOO_REGISTRY"])
    reg = yaml.safe_load(path.read_text())
    pend = reg["envs"]["pendulum"]
    reg["envs"]["ghost"] = {
        **{
            k: pend[k]
            for k in ("gym_id", "max_ep_len", "reward_scale", "target_returns", "ref_scores")
        },
        "dataset": "dtzoo/ghost/missing-v0",
    }
    path.write_text(yaml.safe_dump(reg, sort_keys=False))
    return load_registry()


def model_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    """Two model directories hold bitwise-identical weights (tensors and file bytes)."""
    wa, wb = model_weights(a), model_weights(b)
    assert list(wa) == list(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs between {a} and {b}"
    assert (Path(a) / "model.safetensors").read_bytes() == (
        Path(b) / "model.safetensors"
    ).read_bytes()
