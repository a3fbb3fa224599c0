"""Evaluation never leaves a run unusable: kills while it rewrites the card and manifest, and
two evaluations of one model at once (reliability, class 3)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dtzoo import paths, zoo
from dtzoo.checkpoint import verify
from dtzoo.fsutil import atomic_write_text
from tests.conftest import ROOT, run_cli, trained_home

MID = "pendulum-1L-seed0"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, minari_store) -> Path:
    return trained_home(tmp_path_factory, minari_store, "evalfaults", [MID], (MID,)) / "runs" / MID


@pytest.fixture
def run(zoo_env, trained_run) -> Path:
    dest = paths.run_dir(MID)
    shutil.copytree(trained_run, dest)
    return dest


def usable(run: Path, registry) -> None:
    """What a user does next works: load, export, and evaluate again."""
    import dtzoo

    assert dtzoo.load(run).config.model_id == MID
    zoo.export_model(MID, run.parent.parent / "export", registry)
    zoo.eval_model(MID, registry, episodes=1)
    verify(run)  # the next evaluation re-hashed every file


def test_a_card_rewritten_without_its_manifest_still_loads(run, registry):
    # the state a kill leaves between writing README.md and manifest.json (both atomic)
    atomic_write_text(run / "README.md", (run / "README.md").read_text() + "\nnew results\n")
    with pytest.raises(Exception, match="sha256 mismatch"):
        verify(run)  # the full check sees it ...
    usable(run, registry)  # ... but nothing a user does next fails


def test_sigkill_during_evaluation_never_breaks_the_run(run, registry, zoo_env):
    """Kill `dtzoo eval` at spread-out moments (while loading, rolling out, writing eval.json,
    the video and the card, the manifest); after every kill the run must stay usable."""
    env = {**os.environ, **zoo_env, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "dtzoo.cli", "eval", MID, "--episodes", "30"]
    kills = 0
    for i, delay in enumerate((0.8, 1.4, 2.0, 2.6, 3.2)):
        (run / "eval.json").unlink(missing_ok=True)  # so every eval really rewrites
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        import dtzoo

        assert dtzoo.load(run).config.model_id == MID, f"kill {i} at {delay}s"
    assert kills >= 3
    usable(run, registry)


def test_two_evaluations_of_one_model_at_once(run, zoo_env):
    (run / "eval.json").unlink()
    env = {**os.environ, **zoo_env, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "dtzoo.cli", "eval", MID, "--episodes", "3"]
    procs = [
        subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    errs = " ".join(e for _, e in outs)
    assert "mismatch" not in errs and "corrupt" not in errs
    # one evaluated, the other waited for the run's lock and found the report up to date
    assert sorted("already evaluated" in e for _, e in outs) == [False, True]
    verify(run)
    assert json.loads((run / "eval.json").read_text())["episodes"] == 3
    assert "Traceback" not in run_cli("leaderboard").stderr
