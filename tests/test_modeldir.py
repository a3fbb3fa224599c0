"""dtzoo.modeldir: one type owns the model directory's layout, revision names and manifest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dtzoo import paths
from dtzoo.checkpoint import save_model
from dtzoo.errors import CheckpointError
from dtzoo.modeldir import (
    MANIFEST,
    WEIGHTS,
    ModelDir,
    RunDir,
    revision_name,
    revision_order,
    revision_step,
)
from tests.test_checkpoint import make_config, make_model


def test_revision_names_round_trip_and_sort():
    for step in (0, 1, 512, 10**17):
        assert revision_step(revision_name(step)) == step
    for bad in ("main", "step", "step01", "step-1", "step1\n", "Step4", "step" + "9" * 19, 4):
        assert revision_step(bad) is None
    revs = ["step16", "main", "step2", "step0"]
    assert sorted(revs, key=revision_order) == ["main", "step0", "step2", "step16"]


def test_a_run_lists_complete_checkpoints_and_resume_states_by_step(tmp_path):
    run = RunDir(tmp_path / "run")
    config = make_config()
    for step in (16, 2, 0):
        save_model(make_model(config), config, run.checkpoint(step).path)
    (run.checkpoints_dir / "step8").mkdir()  # a half-made checkpoint: not a model directory
    (run.checkpoints_dir / "step04").mkdir()  # not a revision name
    assert [(s, d.name) for s, d in run.checkpoints()] == [
        (0, "step0"),
        (2, "step2"),
        (16, "step16"),
    ]
    run.resume_dir.mkdir()
    for name in ("state-3.safetensors", "state-12.safetensors", "state-foo.safetensors"):
        (run.resume_dir / name).write_bytes(b"")
    assert [s for s, _ in run.resume_states()] == [3, 12]
    assert run.newest_resume_state() == run.resume_state(12)
    assert not run.is_trained() and run.trained_steps() is None
    assert run.revision("main") is run and run.revision("step2").path == run.checkpoint(2).path


def test_build_is_atomic_and_seals_the_new_directory(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), ModelDir.build(target) as d:
        d.file("partial.bin").write_bytes(b"x")
        raise RuntimeError("killed half way")
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing half-written is left
    config = make_config(step=40)
    save_model(make_model(config), config, target)
    d = ModelDir(target)
    assert d.step() == 40 and d.is_model_dir()
    assert re.fullmatch(r"[0-9a-f]{40}", d.content_hash())
    assert set(d.verify_sealed()["files"]) == {WEIGHTS, "config.json"}


def test_sealing_refuses_weights_changed_since_the_last_seal(tmp_path):
    config = make_config()
    d = ModelDir(save_model(make_model(config), config, tmp_path / "m"))
    before = (d.path / MANIFEST).read_bytes()
    (d.path / "eval.json").write_text("{}\n")  # an evaluation adds a file: sealing takes it
    assert "eval.json" in d.seal()["files"]
    save_model(make_model(config, 9), config, tmp_path / "other")
    (d.path / WEIGHTS).write_bytes((tmp_path / "other" / WEIGHTS).read_bytes())
    sealed = (d.path / MANIFEST).read_bytes()
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 mismatch"):
        d.seal()  # corrupt (or swapped) weights are never sealed under a fresh hash
    assert (d.path / MANIFEST).read_bytes() == sealed != before
    d.seal(new_weights=True)  # what training does after writing new weights
    d.verify()


def test_only_modeldir_writes_a_manifest():
    """The one-writer rule: any other module writing manifest.json would bypass `seal`."""
    root = Path(__file__).resolve().parent.parent / "dtzoo"
    writers = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if re.search(r"\bwrite_manifest\(", p.read_text()) and p.name != "modeldir.py"
    )
    assert writers == []


def test_home_follows_xdg_cache_home_like_huggingface_hub(monkeypatch, tmp_path):
    monkeypatch.delenv("DTZOO_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.home() == tmp_path / "xdg" / "dtzoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert paths.home() == Path.home() / ".cache" / "dtzoo"
    monkeypatch.setenv("DTZOO_HOME", str(tmp_path / "mine"))
    assert paths.home() == tmp_path / "mine"
