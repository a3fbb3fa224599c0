"""dtzoo.grid: a failing cell does not stop the grid; run locks let two processes share a grid."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dtzoo import paths
from dtzoo.errors import DatasetError
from dtzoo.grid import already_trained, run_cells
from dtzoo.train import train_model

HOLD_LOCK = textwrap.dedent("""
    import fcntl, pathlib, sys, time
    lock, hold, released = pathlib.Path(sys.argv[1]), float(sys.argv[2]), pathlib.Path(sys.argv[3])
    finished = pathlib.Path(sys.argv[4]) if len(sys.argv) > 4 else None
    lock.parent.mkdir(parents=True, exist_ok=True)
    f = open(lock, "a+")
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(hold)
    if finished:  # the other process finished the cell while it held the lock
        for name in ("config.json", "manifest.json"):
            (finished / name).write_text("{}")
    released.write_text("")
    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    f.close()
""")

TRY_LOCK = textwrap.dedent("""
    import fcntl, pathlib, sys
    pathlib.Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
    f = open(sys.argv[1], "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("busy")
    else:
        print("free")
""")


def lock_is_free(model_id: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", TRY_LOCK, str(paths.run_dir(model_id) / ".lock")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return out == "free"


class Killed(Exception):
    pass


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(ghost_registry):
    reg = ghost_registry
    # a cell whose recipe the registry would refuse, built by hand: the bug surfaces in training
    base = reg.resolve("pendulum-1L-seed0")
    odd = dataclasses.replace(
        base, model_id="oddheads-1L-seed0", recipe=dataclasses.replace(base.recipe, n_heads=3)
    )
    specs = [reg.resolve("ghost-1L-seed0"), base, odd, reg.resolve("pendulum-1L-seed1")]
    calls = []

    def train(spec):
        calls.append(spec.model_id)
        return train_model(spec, reg.checkpoints, steps=2, device="cpu")

    results = run_cells(specs, train)
    assert calls == [s.model_id for s in specs]
    assert [(r.model_id, r.status, r.ok) for r in results] == [
        ("ghost-1L-seed0", "failed", False),
        ("pendulum-1L-seed0", "done", True),
        ("oddheads-1L-seed0", "failed", False),
        ("pendulum-1L-seed1", "done", True),
    ]
    assert (
        "dtzoo/ghost/missing-v0" in results[0].detail and "dtzoo data prepare" in results[0].detail
    )
    assert "n_heads 3" in results[2].detail
    assert results[1].value.steps == 2 and results[1].value.path == paths.run_dir(
        "pendulum-1L-seed0"
    )
    assert (paths.run_dir("pendulum-1L-seed0") / "config.json").is_file()
    assert (paths.run_dir("pendulum-1L-seed1") / "config.json").is_file()
    with pytest.raises(DatasetError):  # the error really was the dataset's
        train(specs[0])

    # again, skipping what is trained: only the failed cells are tried
    calls.clear()
    again = run_cells(specs, train, skip=already_trained())
    assert calls == ["ghost-1L-seed0", "oddheads-1L-seed0"]
    assert [r.status for r in again] == ["failed", "skipped", "failed", "skipped"]
    assert again[1].detail == "already trained (2 steps)"


def test_an_interrupted_cell_is_reported_as_resumed(ghost_registry):
    reg = ghost_registry
    spec = reg.resolve("pendulum-2L-seed0")

    def kill_after_first_step(s, total, loss):
        if s == 1:
            raise Killed("killed")

    first = run_cells(
        [spec],
        lambda sp: train_model(
            sp, reg.checkpoints, steps=2, device="cpu", progress=kill_after_first_step
        ),
    )
    assert (first[0].status, first[0].detail) == ("failed", "Killed: killed")
    second = run_cells([spec], lambda sp: train_model(sp, reg.checkpoints, steps=2, device="cpu"))
    assert (second[0].status, second[0].detail) == ("resumed", "from step 1")
    assert second[0].value.resumed_from == 1


def test_a_cell_resumed_from_step_0_is_reported_as_resumed(ghost_registry):
    """With no checkpoint at step 1, a run killed after step 1 resumes from the step-0 state."""
    from dtzoo.registry import CheckpointSchedule

    spec = ghost_registry.resolve("pendulum-2L-seed1")
    schedule = CheckpointSchedule(log_until=0, every=100)
    assert schedule.steps(2) == [0, 2]

    def kill_after_first_step(s, total, loss):
        if s == 1:
            raise Killed("killed")

    run_cells(
        [spec],
        lambda sp: train_model(sp, schedule, steps=2, device="cpu", progress=kill_after_first_step),
    )
    again = run_cells([spec], lambda sp: train_model(sp, schedule, steps=2, device="cpu"))
    assert (again[0].status, again[0].detail, again[0].value.resumed_from) == (
        "resumed",
        "from step 0",
        0,
    )


def test_each_cell_holds_its_run_lock_while_it_works(zoo_env, registry):
    specs = [registry.resolve("pendulum-1L-seed0"), registry.resolve("cartpole-1L-seed0")]
    seen = {}

    def work(spec):
        seen[spec.model_id] = {
            m: lock_is_free(m) for m in ("pendulum-1L-seed0", "cartpole-1L-seed0")
        }
        return spec.model_id

    results = run_cells(specs, work, lock=True)
    assert [(r.status, r.value) for r in results] == [
        ("done", "pendulum-1L-seed0"),
        ("done", "cartpole-1L-seed0"),
    ]
    # while a cell works its own lock is taken, the other cell's is not
    assert seen == {
        "pendulum-1L-seed0": {"pendulum-1L-seed0": False, "cartpole-1L-seed0": True},
        "cartpole-1L-seed0": {"pendulum-1L-seed0": True, "cartpole-1L-seed0": False},
    }
    assert lock_is_free("pendulum-1L-seed0") and lock_is_free("cartpole-1L-seed0")  # released


def _hold(
    model_id: str, seconds: float, released: Path, finished: Path | None = None
) -> subprocess.Popen:
    """Another process takes the run's lock; with `finished` it writes a trained run's final
    files there before letting go."""
    args = [
        sys.executable,
        "-c",
        HOLD_LOCK,
        str(paths.run_dir(model_id) / ".lock"),
        str(seconds),
        str(released),
    ]
    proc = subprocess.Popen(
        args + ([str(finished)] if finished else []), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_cell_locked_by_another_process_is_deferred_then_run(zoo_env, registry, tmp_path):
    specs = [
        registry.resolve(m) for m in ("pendulum-1L-seed0", "pendulum-2L-seed0", "cartpole-1L-seed0")
    ]
    released = tmp_path / "released"
    proc = _hold("pendulum-1L-seed0", 1.5, released)
    calls = []

    def work(spec):
        calls.append((spec.model_id, released.exists()))
        return spec.model_id

    try:
        results = run_cells(specs, work, lock=True)
    finally:
        proc.wait(timeout=30)
    # the free cells ran at once, the locked one only once the other process let go
    assert calls == [
        ("pendulum-2L-seed0", False),
        ("cartpole-1L-seed0", False),
        ("pendulum-1L-seed0", True),
    ]
    assert [(r.model_id, r.status, r.value) for r in results] == [
        (s.model_id, "done", s.model_id) for s in specs
    ]
    assert proc.returncode == 0


def test_a_deferred_cell_the_other_process_finished_is_skipped(zoo_env, registry, tmp_path):
    specs = [registry.resolve(m) for m in ("pendulum-1L-seed0", "cartpole-1L-seed1")]
    released = tmp_path / "released"
    proc = _hold("pendulum-1L-seed0", 1.0, released, finished=paths.run_dir("pendulum-1L-seed0"))
    calls = []
    try:
        results = run_cells(
            specs, lambda s: calls.append(s.model_id), skip=already_trained(), lock=True
        )
    finally:
        proc.wait(timeout=30)
    assert released.exists()
    assert calls == ["cartpole-1L-seed1"]  # trained exactly once: by the other process
    assert [(r.model_id, r.status) for r in results] == [
        ("pendulum-1L-seed0", "skipped"),
        ("cartpole-1L-seed1", "done"),
    ]
