"""Faults injected with real processes and real signals, and what must survive them.

- SIGKILL during training (at checkpoint directories appearing, and at random moments): the same
  command resumes, and the final weights and every step<N> checkpoint are bitwise those of an
  uninterrupted run with the same seed.
- SIGKILL during `dtzoo publish` and `dtzoo pull` (local hub): no ref ever points at a snapshot
  that fails verification, no cache directory verifies wrongly, the next call completes.
- Corruption (a flipped byte, a truncated file) in the pull cache or a hub snapshot: detected,
  the message names the file; `dtzoo pull` heals the cache; `dtzoo.load` refuses.
- Two processes at once: `dtzoo train --grid` twice trains each cell once; two publishes of the
  same model do not interleave.
- Numerical faults: a NaN loss or gradient stops that run naming the step, keeps the last
  finite checkpoint, and the grid goes on.
- Security: nothing unpickles (an AST scan of dtzoo/), no trust_remote_code, tokens never
  reach output, logs, cards or configs.

Set DTZOO_FAULT_LOG=<file> to get one JSON line per injected fault (docs/reliability.md).
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from dtzoo.checkpoint import CONFIG, MANIFEST, WEIGHTS, verify
from dtzoo.errors import CheckpointError, HubError, TrainingError
from tests.conftest import ROOT, assert_same_weights, make_test_registry, model_weights, run_cli

MID = "pendulum-1L-seed0"
STEPS = 120  # test registry schedule: 0 1 2 4 8 16 20 40 60 80 100 120; warm-up is 10 steps
SCHEDULE = [0, 1, 2, 4, 8, 16, 20, 40, 60, 80, 100, 120]
REPO = f"dtzoo/{MID}"
BIG = 48 << 20  # an extra file in the published model, so a publish or pull takes a while


# ----------------------------------------------------------------------------- helpers


def record(fault: str, **counts) -> None:
    """One JSON line per injected fault, for the figures in docs/reliability.md."""
    path = os.environ.get("DTZOO_FAULT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"fault": fault, **counts}) + "\n")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dtzoo.cli", *args]


def full_env(zoo_env: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **zoo_env, "COLUMNS": "200"}
    env.pop("DTZOO_ORG", None)
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL; True if the process was still running (the kill landed mid-operation)."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    return proc.returncode == -signal.SIGKILL


def wait_until(cond, proc: subprocess.Popen, timeout: float = 180, every: float = 0.002) -> bool:
    """Poll `cond()` until it holds (True) or the process exits first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        time.sleep(every)
    raise AssertionError("timed out waiting")


def log_rows(run: Path) -> list[tuple]:
    lines = (run / "training_log.csv").read_text().splitlines()[1:]
    return [tuple(line.split(",")[:3]) for line in lines]  # step, loss, lr (not elapsed_s)


def hidden_bytes(root: Path) -> int:
    """Bytes in hidden temp files/dirs left behind (garbage, never read as a model)."""
    total = 0
    for p in root.rglob(".*"):
        if p.name in (".lock",):
            continue
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(q.stat().st_size for q in p.rglob("*") if q.is_file())
    return total


def assert_run_consistent(run: Path) -> None:
    """What a killed run may leave: complete checkpoints only, a readable resume state."""
    from dtzoo.modeldir import RunDir
    from dtzoo.train import read_resume_state

    for ckpt in (run / "checkpoints").glob("step*"):
        verify(ckpt)  # a visible checkpoint is whole
        assert all(torch.isfinite(t).all() for t in model_weights(ckpt).values())
    state = RunDir(run).newest_resume_state()
    if state is not None:
        meta, _ = read_resume_state(state)
        assert (run / "checkpoints" / f"step{meta['step']}").is_dir()
        assert meta["total_steps"] == STEPS


def assert_matches_reference(run: Path, ref: Path) -> None:
    verify(run)
    assert_same_weights(run, ref)
    assert (run / CONFIG).read_bytes() == (ref / CONFIG).read_bytes()
    names = sorted((p.name for p in (run / "checkpoints").glob("step*")), key=lambda n: int(n[4:]))
    assert names == [f"step{n}" for n in SCHEDULE]
    for n in SCHEDULE:
        a, b = run / "checkpoints" / f"step{n}", ref / "checkpoints" / f"step{n}"
        verify(a)
        assert_same_weights(a, b)
        assert (a / CONFIG).read_bytes() == (b / CONFIG).read_bytes()
    assert log_rows(run) == log_rows(ref)  # the log too: no step lost, repeated or re-averaged


class Reference:
    """An uninterrupted `dtzoo train MID --steps STEPS`, run in the background in its own home."""

    def __init__(self, base: Path, minari: Path):
        self.home = base / "home"
        reg = make_test_registry(base / "registry.yaml")
        self.env = full_env(
            {
                "DTZOO_HOME": str(self.home),
                "DTZOO_REGISTRY": str(reg),
                "MINARI_DATASETS_PATH": str(minari),
                "DTZOO_HUB": "local",
            }
        )
        self.log = base / "reference.log"
        self.proc = start(cli("train", MID, "--steps", str(STEPS)), self.env, self.log)

    @property
    def run(self) -> Path:
        assert self.proc.wait(timeout=600) == 0, self.log.read_text()
        return self.home / "runs" / MID


@pytest.fixture(scope="module")
def reference(tmp_path_factory, minari_store):
    ref = Reference(tmp_path_factory.mktemp("reference"), minari_store)
    yield ref
    if ref.proc.poll() is None:
        kill(ref.proc)


@pytest.fixture
def cli_env(zoo_env):
    return full_env(zoo_env)


# ----------------------------------------------------------------------------- kill during training


@pytest.mark.slow
def test_sigkill_in_warmup_and_later_resumes_bitwise(zoo_env, cli_env, reference, tmp_path):
    """Kill when checkpoints/step4 appears (warm-up: 10 steps), then when step60 appears."""
    run = Path(zoo_env["DTZOO_HOME"]) / "runs" / MID
    from dtzoo.modeldir import RunDir

    resumed = []
    for trigger in ("step4", "step60"):
        proc = start(cli("train", MID, "--steps", str(STEPS)), cli_env, tmp_path / "train.log")
        assert wait_until(lambda t=trigger: (run / "checkpoints" / t).is_dir(), proc)
        assert kill(proc), "the run finished before it could be killed"
        assert not (run / MANIFEST).exists()
        assert_run_consistent(run)
        resumed.append(int(RunDir(run).newest_resume_state().stem.split("-")[1]))
    assert resumed[0] <= 4 and 20 <= resumed[1] <= 60
    done = run_cli("train", MID, "--steps", str(STEPS), env=zoo_env)
    assert f"{MID}: resumed (from step {resumed[1]})" in done.stderr
    assert_matches_reference(run, reference.run)
    assert hidden_bytes(run) == 0
    record("sigkill during training (checkpoint trigger)", injected=2, survived=2)


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_bitwise(zoo_env, cli_env, reference, tmp_path):
    """Kill at random moments after each new resume state (training, checkpointing, the final
    write-out) until the run is done or 8 kills; then the same command finishes it."""
    run = Path(zoo_env["DTZOO_HOME"]) / "runs" / MID
    from dtzoo.modeldir import RunDir

    rng = random.Random(int(os.environ.get("DTZOO_FAULT_SEED", "0")))
    kills = landed = 0
    while not (run / MANIFEST).exists() and kills < 8:
        proc = start(cli("train", MID, "--steps", str(STEPS)), cli_env, tmp_path / "train.log")
        # past start-up (a new resume state: progress), then a random moment in the next
        # checkpoints, their saving, or the final write-out
        last = RunDir(run).newest_resume_state()
        wait_until(lambda last=last: RunDir(run).newest_resume_state() != last, proc)
        time.sleep(rng.uniform(0.0, 0.4))
        kills += 1
        landed += kill(proc)
        assert_run_consistent(run)
    assert landed >= 2
    garbage = hidden_bytes(run)  # temp files of killed writes: never read, removed on resume
    run_cli("train", MID, "--steps", str(STEPS), env=zoo_env)
    assert_matches_reference(run, reference.run)
    assert hidden_bytes(run) == 0
    record(
        "sigkill during training (random moment)",
        injected=kills,
        landed_mid_run=landed,
        survived=kills,
        garbage_bytes_left_by_kills=garbage,
    )


def test_resume_keeps_the_log_average_of_a_partial_logging_window(zoo_env, registry):
    """With 300 steps the log averages every 3 steps; a run resumed from the step-4 state must
    still average steps 4-6 for its step-6 row (losses since the last row are resume state)."""
    from dtzoo import paths
    from dtzoo.train import read_log, train_model

    class Killed(Exception):
        pass

    def kill_at(n):
        def progress(s, total, loss):
            if s == n:
                raise Killed

        return progress

    spec = registry.resolve(MID)
    with pytest.raises(Killed):  # uninterrupted up to step 9 (log rows 3 and 6 are written at 8)
        train_model(spec, registry.checkpoints, steps=300, device="cpu", progress=kill_at(9))
    want = read_log(paths.run_dir(MID) / "training_log.csv")
    shutil.rmtree(paths.run_dir(MID))
    with pytest.raises(Killed):  # killed after the step-4 checkpoint, with step 4's loss pending
        train_model(spec, registry.checkpoints, steps=300, device="cpu", progress=kill_at(6))
    with pytest.raises(Killed):  # resumed from step 4, killed again at 9
        train_model(spec, registry.checkpoints, steps=300, device="cpu", progress=kill_at(9))
    got = read_log(paths.run_dir(MID) / "training_log.csv")
    assert [r["step"] for r in got] == [3, 6]
    assert [(r["step"], r["loss"], r["lr"]) for r in got] == [
        (r["step"], r["loss"], r["lr"]) for r in want
    ]


# ------------------------------------------------------------------- kill during publish / pull


@pytest.fixture
def big_run(zoo_env, reference) -> Iterator[Path]:
    """A trained run (the reference's) with a 64 MB extra file, in this test's home."""
    run = Path(zoo_env["DTZOO_HOME"]) / "runs" / MID
    shutil.copytree(reference.run, run, ignore=shutil.ignore_patterns(".lock"))
    (run / "big.bin").write_bytes(os.urandom(BIG))
    yield run
    for big in ("hub", "cache", "runs"):  # ~0.5 GB of snapshots: do not keep them in /tmp
        shutil.rmtree(Path(zoo_env["DTZOO_HOME"]) / big, ignore_errors=True)


def hub_invariants(home: Path) -> tuple[int, int]:
    """Every ref names a snapshot that verifies against its commit; every visible snapshot
    verifies; every visible cache directory verifies. Returns (snapshots, cache entries)."""
    from dtzoo.hub.local import COMMIT_RE, verify_commit

    repo = home / "hub" / REPO
    for ref in (repo / "refs").glob("*") if (repo / "refs").is_dir() else []:
        if ref.name.startswith("."):
            continue
        commit = ref.read_text().strip()
        assert COMMIT_RE.match(commit), ref
        verify_commit(repo / "snapshots" / commit, commit)
    snaps = [p for p in (repo / "snapshots").glob("[!.]*")] if (repo / "snapshots").is_dir() else []
    for snap in snaps:
        verify_commit(snap, snap.name)
    cache = home / "cache" / REPO
    entries = [p for p in cache.glob("[!.]*") if p.is_dir()] if cache.is_dir() else []
    for entry in entries:
        verify_commit(entry, entry.name)
    return len(snaps), len(entries)


def temp_dirs(parent: Path) -> list[Path]:
    return [p for p in parent.glob(".*.tmp") if p.is_dir()] if parent.is_dir() else []


@pytest.mark.slow
def test_sigkill_during_publish_never_shows_a_partial_model(zoo_env, cli_env, big_run, tmp_path):
    home = Path(zoo_env["DTZOO_HOME"])
    snapshots = home / "hub" / REPO / "snapshots"
    weights, config = (big_run / WEIGHTS).read_bytes(), (big_run / CONFIG).read_bytes()
    rng = random.Random(int(os.environ.get("DTZOO_FAULT_SEED", "0")))
    t0 = time.monotonic()
    run_cli("publish", MID, env=zoo_env)
    full = time.monotonic() - t0
    hub_invariants(home)
    tries, mid_copy = 8, 0
    for i in range(tries):
        with open(big_run / "big.bin", "r+b") as f:  # new content: a new commit to write
            f.seek(rng.randrange(BIG - 8))
            f.write(os.urandom(8))
        before = set(temp_dirs(snapshots))
        proc = start(cli("publish", MID), cli_env, tmp_path / "publish.log")
        if i % 2 == 0:  # at the moment the snapshot is being copied
            wait_until(lambda b=before: set(temp_dirs(snapshots)) - b, proc, every=0.0005)
        else:  # at a random moment
            time.sleep(rng.uniform(0.05, full * 1.2))
        kill(proc)
        mid_copy += bool(set(temp_dirs(snapshots)) - before)
        hub_invariants(home)
        assert (big_run / WEIGHTS).read_bytes() == weights and (
            big_run / CONFIG
        ).read_bytes() == config
    assert mid_copy >= tries // 2, "the kills did not hit the copy window"
    garbage = hidden_bytes(home / "hub")
    run_cli("publish", MID, env=zoo_env)  # the next call completes (and clears the temp dirs)
    hub_invariants(home)
    main = (home / "hub" / REPO / "refs" / "main").read_text().strip()
    assert (snapshots / main / "big.bin").read_bytes() == (big_run / "big.bin").read_bytes()
    assert temp_dirs(snapshots) == []
    record(
        "sigkill during publish",
        injected=tries,
        mid_copy=mid_copy,
        survived=tries,
        garbage_bytes_before_next_publish=garbage,
    )


@pytest.mark.slow
def test_sigkill_during_pull_leaves_nothing_a_load_would_trust(zoo_env, cli_env, big_run, tmp_path):
    import dtzoo

    home = Path(zoo_env["DTZOO_HOME"])
    run_cli("publish", MID, env=zoo_env)
    cache = home / "cache" / REPO
    rng = random.Random(int(os.environ.get("DTZOO_FAULT_SEED", "0")))
    t0 = time.monotonic()
    path = Path(run_cli("pull", MID, env=zoo_env).stdout.strip().splitlines()[-1])
    full = time.monotonic() - t0
    tries, mid_copy = 8, 0
    for i in range(tries):
        shutil.rmtree(path, ignore_errors=True)
        before = set(temp_dirs(cache))
        proc = start(cli("pull", MID), cli_env, tmp_path / "pull.log")
        if i % 2 == 0:
            wait_until(lambda b=before: set(temp_dirs(cache)) - b, proc, every=0.0005)
        else:
            time.sleep(rng.uniform(0.05, full * 1.2))
        kill(proc)
        mid_copy += bool(set(temp_dirs(cache)) - before)
        hub_invariants(home)  # the commit directory is absent or whole
        from dtzoo.hub.local import verify_commit

        snap = home / "hub" / REPO / "snapshots" / path.name
        for tmp in temp_dirs(cache):  # a half-copied directory is not a model anyone would load
            try:  # (one killed after its copy was whole, before the rename, holds the same bytes)
                verify_commit(tmp, path.name)
                assert all((tmp / p.name).read_bytes() == p.read_bytes() for p in snap.iterdir())
            except CheckpointError:
                pass
    assert mid_copy >= tries // 2, "the kills did not hit the copy window"
    again = Path(run_cli("pull", MID, env=zoo_env).stdout.strip().splitlines()[-1])
    assert again == path and temp_dirs(cache) == []
    hub_invariants(home)
    config = dtzoo.load(MID).config
    assert config.model_id == MID and config.step == STEPS
    record("sigkill during pull", injected=tries, mid_copy=mid_copy, survived=tries)


# ----------------------------------------------------------------------------- corruption


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset % len(raw)] ^= 0xFF
    path.write_bytes(bytes(raw))


def truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


@pytest.fixture
def published(zoo_env, reference) -> Path:
    """The reference model published to this test's local hub; returns the hub snapshot."""
    run = Path(zoo_env["DTZOO_HOME"]) / "runs" / MID
    shutil.copytree(reference.run, run, ignore=shutil.ignore_patterns(".lock"))
    from dtzoo.hub import get_hub

    res = get_hub("local").publish(run, REPO)
    return Path(zoo_env["DTZOO_HOME"]) / "hub" / REPO / "snapshots" / res.commit


CORRUPTIONS = [
    (WEIGHTS, "flip"),
    (WEIGHTS, "truncate"),
    (CONFIG, "flip"),
    (CONFIG, "truncate"),
    ("training_log.csv", "flip"),
    (MANIFEST, "truncate"),
]


def corrupt(path: Path, how: str, rng: random.Random) -> None:
    flip(path, rng.randrange(path.stat().st_size)) if how == "flip" else truncate(path)


def test_a_corrupt_cache_is_refused_by_load_and_healed_by_pull(zoo_env, published):
    import dtzoo

    rng = random.Random(0)
    path = Path(run_cli("pull", MID, env=zoo_env).stdout.strip().splitlines()[-1])
    for name, how in CORRUPTIONS:
        corrupt(path / name, how, rng)
        if name in (WEIGHTS, CONFIG, MANIFEST):  # what inference reads must verify
            with pytest.raises(CheckpointError) as e:
                dtzoo.load(path)
            assert str(path) in str(e.value) and name in str(e.value)  # names the file
        else:  # an extra (the log, the card) does not change the model: it still loads
            dtzoo.load(path)
        healed = Path(run_cli("pull", MID, env=zoo_env).stdout.strip().splitlines()[-1])
        assert healed == path
        for p in published.iterdir():
            assert (path / p.name).read_bytes() == p.read_bytes()
        dtzoo.load(path)
    # a file changed together with its manifest entry: caught by the commit (manifest hash)
    from dtzoo.checkpoint import write_manifest

    flip(path / "training_log.csv", 10)
    write_manifest(path)
    verify(path)  # self-consistent now ...
    healed = Path(run_cli("pull", MID, env=zoo_env).stdout.strip().splitlines()[-1])
    assert (healed / "training_log.csv").read_bytes() == (
        published / "training_log.csv"
    ).read_bytes()
    record("corrupt cache file", injected=len(CORRUPTIONS) + 1, survived=len(CORRUPTIONS) + 1)


def test_a_corrupt_hub_snapshot_is_detected_naming_the_file(zoo_env, published):
    import dtzoo

    rng = random.Random(1)
    home = Path(zoo_env["DTZOO_HOME"])
    pristine = {p.name: p.read_bytes() for p in published.iterdir()}
    for name, how in CORRUPTIONS:
        shutil.rmtree(home / "cache", ignore_errors=True)
        corrupt(published / name, how, rng)
        proc = run_cli("pull", MID, env=zoo_env, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "corrupt" in proc.stderr and REPO in proc.stderr
        assert str(published / name) in proc.stderr, proc.stderr  # names the file
        with pytest.raises(HubError, match="corrupt"):
            dtzoo.load(REPO, hub="local")  # ORG/ID: the hub's copy (MID alone is the local run)
        assert not (home / "cache" / REPO / published.name).exists()  # nothing cached
        (published / name).write_bytes(pristine[name])
    record("corrupt hub snapshot file", injected=len(CORRUPTIONS), detected=len(CORRUPTIONS))


# ------------------------------------------------------------------------ two processes at once


def small_registry(path: Path, steps: int) -> Path:
    make_test_registry(path, steps=steps)
    return path


@pytest.mark.slow
def test_two_grid_trainings_at_once_train_each_cell_once(zoo_env, cli_env, tmp_path):
    reg = small_registry(tmp_path / "registry12.yaml", steps=12)
    env = {**cli_env, "DTZOO_REGISTRY": str(reg)}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start(cli("train", "--grid", "tiny"), env, log) for log in logs]
    assert [p.wait(timeout=600) for p in procs] == [0, 0], [log.read_text() for log in logs]
    outs = [log.read_text() for log in logs]
    from dtzoo.registry import load_registry

    ids = load_registry(reg).grid("tiny")
    home = Path(zoo_env["DTZOO_HOME"])
    for mid in ids:
        statuses = sorted(
            re.findall(rf"^{re.escape(mid)}: (\w+)", out, re.MULTILINE)[0] for out in outs
        )
        assert statuses == ["done", "skipped"], (mid, statuses)
        run = home / "runs" / mid
        verify(run)
        assert [r[0] for r in log_rows(run)] == [str(s) for s in range(1, 13)]  # trained once
        assert [p.name for p in (run / "resume").iterdir()] == ["state-12.safetensors"]
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
            f"step{n}" for n in (0, 1, 2, 4, 8, 12)
        )
        assert hidden_bytes(run) == 0
    record("two concurrent `train --grid tiny`", cells=len(ids), trained_twice=0)


@pytest.mark.slow
def test_two_publishes_at_once_do_not_interleave(zoo_env, cli_env, big_run, tmp_path):
    home = Path(zoo_env["DTZOO_HOME"])
    for round_ in range(3):
        with open(big_run / "big.bin", "r+b") as f:
            f.write(os.urandom(16))
        logs = [tmp_path / f"p{round_}{i}.log" for i in range(2)]
        snapshots = home / "hub" / REPO / "snapshots"
        before = set(snapshots.iterdir()) if snapshots.is_dir() else set()
        procs = [start(cli("publish", MID), cli_env, log) for log in logs]
        assert [p.wait(timeout=300) for p in procs] == [0, 0], [log.read_text() for log in logs]
        hub_invariants(home)
        main = (home / "hub" / REPO / "refs" / "main").read_text().strip()
        new = {p.name for p in set(snapshots.iterdir()) - before}
        # one snapshot per new content, however many publishes raced (step<N> ones come once)
        assert main in new and (round_ == 0 or new == {main}), new
        snap = home / "hub" / REPO / "snapshots" / main
        assert (snap / "big.bin").read_bytes() == (big_run / "big.bin").read_bytes()
        assert temp_dirs(snap.parent) == []
    record("two concurrent publishes", rounds=3, interleaved=0)


# ----------------------------------------------------------------------------- numerical faults


@pytest.mark.slow
def test_a_diverging_cell_stops_naming_the_step_and_the_grid_goes_on(zoo_env, cli_env, tmp_path):
    """lr 1e30: the weights reach ~1e29 after step 1 and the loss is NaN at step 2."""
    reg_path = make_test_registry(tmp_path / "registry.yaml", steps=12)
    reg = yaml.safe_load(reg_path.read_text())
    pend = reg["envs"]["pendulum"]
    reg["envs"]["blowup"] = {
        **{k: v for k, v in pend.items() if k != "prepare"},
        "recipe": {**pend["recipe"], "lr": 1.0e30},
    }
    reg["grids"]["faulty"] = {"envs": ["blowup", "pendulum"], "layers": [1], "seeds": [0]}
    reg_path.write_text(yaml.safe_dump(reg, sort_keys=False))
    env = {**cli_env, "DTZOO_REGISTRY": str(reg_path)}
    proc = subprocess.run(
        cli("train", "--grid", "faulty"),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "blowup-1L-seed0 failed: blowup-1L-seed0: loss is nan at step 2" in proc.stderr
    assert (
        "pendulum-1L-seed0: done" in proc.stderr and "1 trained, 0 skipped, 1 failed" in proc.stderr
    )
    home = Path(zoo_env["DTZOO_HOME"])
    verify(home / "runs" / "pendulum-1L-seed0")
    bad = home / "runs" / "blowup-1L-seed0"
    assert not (bad / CONFIG).exists() and not (bad / MANIFEST).exists()  # not a trained model
    assert sorted(p.name for p in (bad / "checkpoints").iterdir()) == ["step0", "step1"]
    for ckpt in (bad / "checkpoints").iterdir():  # the last good checkpoints are kept, finite
        verify(ckpt)
        assert all(torch.isfinite(t).all() for t in model_weights(ckpt).values())
    assert [p.name for p in (bad / "resume").iterdir()] == ["state-1.safetensors"]
    record("NaN loss in one grid cell", injected=1, other_cells_finished=1)


def test_a_nan_gradient_at_a_checkpoint_step_writes_no_nan_checkpoint(zoo_env, registry):
    """A finite loss with a NaN gradient (injected at step 8, a checkpoint step): the step is
    refused, so no checkpoint or resume state ever holds NaN weights."""
    from dtzoo import paths
    from dtzoo.modeldir import RunDir
    from dtzoo.train import train_model

    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def clip(params, *a, **k):  # step 8's backward pass produced a NaN gradient
        params = list(params)
        calls["n"] += 1
        if calls["n"] == 8:
            params[0].grad.fill_(float("nan"))
        return real_clip(params, *a, **k)

    with (
        pytest.MonkeyPatch.context() as mp,
        pytest.raises(TrainingError, match=f"{MID}: gradient norm is nan at step 8"),
    ):
        mp.setattr(torch.nn.utils, "clip_grad_norm_", clip)
        train_model(registry.resolve(MID), registry.checkpoints, steps=40, device="cpu")
    run = paths.run_dir(MID)
    assert sorted(int(p.name[4:]) for p in (run / "checkpoints").iterdir()) == [0, 1, 2, 4]
    for ckpt in (run / "checkpoints").iterdir():
        assert all(torch.isfinite(t).all() for t in model_weights(ckpt).values())
    assert RunDir(run).newest_resume_state().name == "state-4.safetensors"
    # the fault is gone: the run resumes from step 4 and finishes
    result = train_model(registry.resolve(MID), registry.checkpoints, steps=40, device="cpu")
    assert result.resumed_from == 4 and (run / MANIFEST).is_file()
    record("NaN gradient at a checkpoint step", injected=1, survived=1)


def test_non_finite_weights_are_never_checkpointed(zoo_env, registry, monkeypatch):
    """If the weights turn non-finite anyway (an optimiser overflow), the checkpoint is refused."""
    from dtzoo import paths
    from dtzoo.train import Trainer, train_model

    real = Trainer.save_checkpoint

    def save(self):
        if self.step == 16:
            with torch.no_grad():
                next(iter(self.model.parameters())).view(-1)[0] = float("inf")
        real(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    with pytest.raises(TrainingError, match=r"weights are not finite after step 16"):
        train_model(registry.resolve(MID), registry.checkpoints, steps=40, device="cpu")
    assert sorted(int(p.name[4:]) for p in (paths.run_dir(MID) / "checkpoints").iterdir()) == [
        0,
        1,
        2,
        4,
        8,
    ]


# ----------------------------------------------------------------------------- security


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (
                f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            )
            owner = (
                f.value.id
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                else None
                if isinstance(f, ast.Name)
                else "?"
            )  # None: a bare name
            yield node, owner, name, {k.arg: k.value for k in node.keywords}


def test_nothing_in_dtzoo_can_unpickle_or_run_remote_code():
    """An AST scan of every module: no pickle-family import, torch.load only with
    weights_only=True (and only in convert.py), no allow_pickle=True, yaml only with safe
    loaders, no trust_remote_code, no eval/exec."""
    files = sorted((ROOT / "dtzoo").rglob("*.py"))
    assert len(files) > 15
    torch_loads = []
    for path in files:
        src = path.read_text()
        tree = ast.parse(src, str(path))
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                )
                for m in mods:
                    assert m.split(".")[0] not in {
                        "pickle",
                        "cPickle",
                        "_pickle",
                        "dill",
                        "joblib",
                        "marshal",
                        "shelve",
                        "cloudpickle",
                    }, (rel, m)
            if isinstance(node, ast.Name) and node.id == "trust_remote_code":
                raise AssertionError(f"{rel}: trust_remote_code")
        for node, owner, name, kw in _calls(tree):
            where = f"{rel}:{node.lineno}"
            assert "trust_remote_code" not in kw, where
            assert name not in ("eval", "exec", "compile") or owner not in (None, "builtins"), where
            assert name not in ("unsafe_load", "full_load", "load_all", "unsafe_load_all"), where
            if name == "load" and owner == "torch":
                w = kw.get("weights_only")
                assert isinstance(w, ast.Constant) and w.value is True, where
                torch_loads.append(rel)
            if name == "load" and owner == "yaml":
                loader = kw.get("Loader")
                loader = getattr(loader, "id", getattr(loader, "attr", None))
                assert loader in ("_LineLoader", "SafeLoader", "CSafeLoader"), where
            if "allow_pickle" in kw:
                v = kw["allow_pickle"]
                assert isinstance(v, ast.Constant) and v.value is False, where
            if owner == "jit" or name in ("load_state_dict_from_url", "hub_load"):
                raise AssertionError(where)
        assert "import torch.jit" not in src
    assert set(torch_loads) <= {"dtzoo/convert.py"}
    from dtzoo.registry import _LineLoader

    # SafeLoader or libyaml's CSafeLoader: either way only the safe constructor builds objects
    assert issubclass(_LineLoader, yaml.constructor.SafeConstructor)
    assert not issubclass(
        _LineLoader, (yaml.constructor.FullConstructor, yaml.constructor.UnsafeConstructor)
    )


@pytest.mark.slow
def test_a_token_never_reaches_output_logs_cards_or_configs(zoo_env, cli_env, tmp_path):
    token = "hf_dtzooCanaryToken0123456789abcdefXYZ"
    reg = small_registry(tmp_path / "registry8.yaml", steps=8)
    env = {
        **zoo_env,
        "DTZOO_REGISTRY": str(reg),
        "HF_TOKEN": token,
        "HUGGING_FACE_HUB_TOKEN": token,
    }
    out = []
    for args in (
        ["train", MID],
        ["eval", MID, "--episodes", "1"],
        ["publish", MID, "--checkpoints"],
        ["pull", MID],
        ["list", "--json"],
        ["list", "--remote"],
        ["leaderboard"],
    ):
        proc = run_cli(*args, env=env)
        out += [proc.stdout, proc.stderr]
    assert not any(token in o or token[3:] in o for o in out)
    home = Path(zoo_env["DTZOO_HOME"])
    files = [p for p in home.rglob("*") if p.is_file()]
    assert len(files) > 30 and any(p.name == "README.md" for p in files)
    for p in files:
        data = p.read_bytes()
        assert token.encode() not in data and token[3:].encode() not in data, p


# ----------------------------------------------------------------------------- round two (issue 16)
# Links planted inside DTZOO_HOME, damage that must be healed (not skipped), a flipped bit in the
# resume state, a garbage training log, Ctrl-C, and killed dataset collection.


def outside_victim(base: Path) -> Path:
    """A folder outside DTZOO_HOME shaped like one dtzoo cleans: a stale temp dir and a file."""
    v = base / "victim"
    (v / ".stale.abc.tmp").mkdir(parents=True)
    (v / ".stale.abc.tmp" / "keep").write_text("outside\n")
    (v / "precious.txt").write_text("do not delete\n")
    return v


def assert_victim_untouched(v: Path) -> None:
    assert sorted(p.name for p in v.iterdir()) == [".stale.abc.tmp", "precious.txt"]
    assert [p.name for p in (v / ".stale.abc.tmp").iterdir()] == ["keep"]
    assert (v / "precious.txt").read_text() == "do not delete\n"


def relink(path: Path, target: Path) -> None:
    """Replace `path` (a folder or file inside DTZOO_HOME) by a symbolic link to `target`."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def test_links_inside_dtzoo_home_are_never_written_locked_or_cleaned_through(
    zoo_env, published, registry, tmp_path
):
    """A link where dtzoo owns a folder or a lock file: the operation stops with one line
    (LinkRefused), and the folder the link points to is not changed by a byte."""
    from dtzoo.fsutil import LinkRefused
    from dtzoo.hub.local import LocalHub
    from dtzoo.modeldir import ModelDir
    from dtzoo.train import train_model

    home = Path(zoo_env["DTZOO_HOME"])
    hub, run = LocalHub(), home / "runs" / MID
    repo, cache = home / "hub" / REPO, home / "cache" / REPO
    hub.pull(REPO)
    (run / "README.md").write_text("# a new card: a new commit to publish\n")
    ModelDir(run).seal()
    other = registry.resolve("pendulum-1L-seed1")  # not trained: train cleans its run first
    cases = {
        "hub snapshots": (repo / "snapshots", lambda: hub.publish(run, REPO)),
        "hub refs": (repo / "refs", lambda: hub.publish(run, REPO)),
        "hub lock": (repo / ".lock", lambda: hub.publish(run, REPO)),
        "cache repo": (cache, lambda: hub.pull(REPO)),
        "cache lock": (
            cache / ".lock",
            lambda: (shutil.rmtree(cache / published.name), hub.pull(REPO)),
        ),
        "run checkpoints": (
            home / "runs" / other.model_id / "checkpoints",
            lambda: train_model(other, registry.checkpoints, device="cpu"),
        ),
        "run resume": (
            home / "runs" / other.model_id / "resume",
            lambda: train_model(other, registry.checkpoints, device="cpu"),
        ),
    }
    for i, (name, (path, operation)) in enumerate(cases.items()):
        v = outside_victim(tmp_path / str(i))
        saved = tmp_path / f"saved{i}"
        if path.exists() and not path.name.startswith("."):
            shutil.copytree(path, saved, symlinks=True)
        relink(path, v / "precious.txt" if path.name == ".lock" else v)
        with pytest.raises(LinkRefused, match="symbolic link"):
            operation()
        assert_victim_untouched(v)
        path.unlink()  # put things back for the next case
        if saved.exists():
            shutil.copytree(saved, path, symlinks=True)
    assert hub.pull(REPO) == cache / published.name  # everything still works
    hub_invariants(home)
    # a link at the top of DTZOO_HOME is the user's choice (runs on a bigger disk): allowed
    elsewhere = tmp_path / "big-disk-cache"
    shutil.move(str(home / "cache"), elsewhere)
    (home / "cache").symlink_to(elsewhere)
    assert hub.pull(REPO) == cache / published.name
    record(
        "link planted inside DTZOO_HOME",
        injected=len(cases),
        survived=len(cases),
        files_touched_outside=0,
    )


def test_a_damaged_hub_snapshot_is_healed_by_the_next_publish(zoo_env, published, tmp_path):
    """Before: a flipped byte in the snapshot was "unchanged (skipped)" on re-publish, and every
    pull failed until the files changed. Now publish checks the snapshot it would skip to."""
    import dtzoo
    from dtzoo.hub.local import LocalHub

    rng, hub = random.Random(2), LocalHub()
    home = Path(zoo_env["DTZOO_HOME"])
    run = home / "runs" / MID
    pristine = {p.name: p.read_bytes() for p in published.iterdir()}
    damages = [*CORRUPTIONS, ("<dir>", "file"), ("<dir>", "link")]
    for name, how in damages:
        shutil.rmtree(home / "cache", ignore_errors=True)
        if name == "<dir>":  # the whole snapshot replaced by a file, or by a link to a copy
            copy = tmp_path / f"copy-{how}"
            shutil.copytree(published, copy)
            shutil.rmtree(published)
            published.write_text("x") if how == "file" else published.symlink_to(copy)
        else:
            corrupt(published / name, how, rng)
        if how != "link":  # (a link to an intact copy still pulls: reading through it is safe)
            with pytest.raises(HubError):
                hub.pull(REPO)
            shutil.rmtree(home / "cache", ignore_errors=True)
        res = hub.publish(run, REPO)
        assert not res.skipped and res.commit == published.name
        assert published.is_dir() and not published.is_symlink()
        assert {p.name: p.read_bytes() for p in published.iterdir()} == pristine
        hub_invariants(home)
        assert dtzoo.load(MID, hub="local").config.model_id == MID
        assert hub.publish(run, REPO).skipped  # intact now: skipped again
        if name == "<dir>" and how == "link":
            assert sorted(p.name for p in copy.iterdir()) == sorted(pristine)  # not deleted
    record("damaged hub snapshot healed by publish", injected=len(damages), survived=len(damages))


def test_a_cache_entry_replaced_by_a_file_or_a_link_is_healed_by_pull(zoo_env, published, tmp_path):
    """Before: a traceback (a file) or a cache entry read from wherever the link pointed."""
    import dtzoo
    from dtzoo.hub.local import LocalHub

    hub = LocalHub()
    entry = hub.pull(REPO)
    pristine = {p.name: p.read_bytes() for p in entry.iterdir()}
    good, bad = tmp_path / "good-copy", tmp_path / "bad-copy"
    shutil.copytree(entry, good)
    shutil.copytree(entry, bad)
    flip(bad / WEIGHTS, 100)
    for how in ("file", "empty dir", "link to a good copy", "link to a bad copy", "dangling link"):
        shutil.rmtree(entry)
        if how == "file":
            entry.write_text("not a model\n")
        elif how == "empty dir":
            entry.mkdir()
        else:
            entry.symlink_to(
                {
                    "link to a good copy": good,
                    "link to a bad copy": bad,
                    "dangling link": tmp_path / "absent",
                }[how]
            )
        assert hub.pull(REPO) == entry
        assert entry.is_dir() and not entry.is_symlink()
        assert {p.name: p.read_bytes() for p in entry.iterdir()} == pristine
        dtzoo.load(entry)
    assert sorted(p.name for p in good.iterdir()) == sorted(pristine)  # links: never followed
    assert sorted(p.name for p in bad.iterdir()) == sorted(pristine)
    record("cache entry replaced by a file or a link", injected=5, survived=5)


def test_a_cached_pull_writes_nothing(zoo_env, published):
    """A verified cache hit takes no lock and writes no file, so a read-only DTZOO_HOME (or one
    shared read-only between users) still pulls and loads. (The suite runs as root, which a
    chmod would not stop: the test checks that nothing at all is written instead.)"""
    import dtzoo
    from dtzoo.hub.local import LocalHub

    home = Path(zoo_env["DTZOO_HOME"])
    entry = LocalHub().pull(REPO)
    (entry.parent / ".lock").unlink()

    def state():
        return {str(p): p.stat().st_mtime_ns for p in home.rglob("*")}

    before = state()
    assert LocalHub().pull(REPO) == entry
    assert dtzoo.load(MID, hub="local").config.model_id == MID
    assert state() == before and not (entry.parent / ".lock").exists()


def unfinished_copy(reference_run: Path, run: Path) -> Path:
    """The reference run, made unfinished again (no final config.json and manifest.json): the
    next `train` resumes from its last resume state and writes the final model from it."""
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns(".lock"))
    for name in (CONFIG, MANIFEST, WEIGHTS):
        (run / name).unlink()
    from dtzoo.modeldir import RunDir

    return RunDir(run).newest_resume_state()


def test_a_flipped_bit_in_the_resume_state_is_refused(zoo_env, registry, reference):
    """Before: the run resumed from the damaged state and silently finished with other weights."""
    from dtzoo.train import train_model

    run = Path(zoo_env["DTZOO_HOME"]) / "runs" / MID
    state = unfinished_copy(reference.run, run)
    pristine = state.read_bytes()
    header = 8 + int.from_bytes(pristine[:8], "little")
    rng = random.Random(3)
    offsets = [rng.randrange(header, len(pristine)) for _ in range(3)]  # tensor bytes
    offsets.append(pristine.index(b'\\"step\\": ') + 10)  # the step number in the metadata
    for offset in offsets:
        raw = bytearray(pristine)
        raw[offset] ^= 1 << rng.randrange(8)
        state.write_bytes(bytes(raw))
        with pytest.raises(
            TrainingError, match="resume state is (corrupt|unreadable)|unreadable resume"
        ):
            train_model(registry.resolve(MID), registry.checkpoints, steps=STEPS, device="cpu")
        assert not (run / CONFIG).exists()  # no final model made from it
    state.write_bytes(pristine)
    train_model(registry.resolve(MID), registry.checkpoints, steps=STEPS, device="cpu")
    assert_matches_reference(run, reference.run)
    record("flipped bit in the resume state", injected=len(offsets), detected=len(offsets))


@pytest.mark.parametrize("damage", ["garbage", "rows lost", "row forged"])
def test_a_damaged_training_log_is_rewritten_from_the_resume_state(
    zoo_env, registry, reference, damage
):
    """Before: a garbage log was a traceback, and lost or forged rows went into the final log."""
    from dtzoo.train import train_model

    run = Path(zoo_env["DTZOO_HOME"]) / "runs" / MID
    unfinished_copy(reference.run, run)
    log = run / "training_log.csv"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(
        {
            "garbage": "step,loss\n\x00\xff,?\n",
            "rows lost": "".join(lines[:1] + lines[3:]),
            "row forged": "".join(lines[:3] + ["3,0.5,0.1,1.0\n"] + lines[3:]),
        }[damage]
    )
    train_model(registry.resolve(MID), registry.checkpoints, steps=STEPS, device="cpu")
    assert log_rows(run) == log_rows(reference.run)
    record("damaged training log", injected=1, survived=1)


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_the_same_command_does(zoo_env, cli_env, reference, tmp_path):
    """Before: typer turned KeyboardInterrupt into exit 130 before main() printed its line."""
    run = Path(zoo_env["DTZOO_HOME"]) / "runs" / MID
    proc = subprocess.Popen(
        cli("train", MID, "--steps", str(STEPS)),
        env=cli_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as at a terminal: a runner started in the background (CI) passes SIGINT on ignored,
        # and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert wait_until(lambda: (run / "checkpoints" / "step16").is_dir(), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted: run the same command again to resume"
    assert "Traceback" not in err
    done = run_cli("train", MID, "--steps", str(STEPS), env=zoo_env)
    assert f"{MID}: resumed" in done.stderr
    assert_matches_reference(run, reference.run)
    record("ctrl-c during training", injected=1, survived=1)


@pytest.mark.slow
def test_a_killed_collect_leaves_no_staging_and_loses_no_dataset(zoo_env, cli_env, tmp_path):
    """SIGKILL of `dtzoo data collect` while it writes; a killed overwrite whose old dataset
    was moved aside; a legacy trash folder; a live writer's staging (kept)."""
    import fcntl

    from dtzoo.collect import remove_stale_staging

    store = tmp_path / "store"
    env = {**cli_env, "MINARI_DATASETS_PATH": str(store)}
    args = ["data", "collect", "pendulum", "--policy", "random", "--episodes", "40"]

    def staging():
        return sorted(p.name for p in store.glob(".dtzoo-*")) if store.is_dir() else []

    proc = start(cli(*args, "--out", "test/killed-v0"), env, tmp_path / "collect.log")
    assert wait_until(lambda: bool(staging()), proc, every=0.001)
    assert kill(proc) and staging() and not (store / "test" / "killed-v0").exists()
    run_cli(*args, "--out", "test/killed-v0", env={**zoo_env, "MINARI_DATASETS_PATH": str(store)})
    assert staging() == []  # the killed write's staging went with the next write
    ds = store / "test" / "killed-v0"
    # a kill between the two renames of an overwrite: the old dataset sits in staging/.old
    aside = store / ".dtzoo-staging-killed"
    aside.mkdir()
    shutil.move(str(ds), aside / ".old")
    (store / ".dtzoo-trash-legacy").mkdir()
    live = store / ".dtzoo-staging-live"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer that is still running
    try:
        assert remove_stale_staging(store) == 2
        assert staging() == [".dtzoo-staging-live"]
    finally:
        os.close(fd)
    assert (ds / "data" / "metadata.json").is_file()  # put back where it was
    assert remove_stale_staging(store) == 1 and staging() == []  # its writer is gone now
    record("sigkill during data collect", injected=2, survived=2)
