"""dtzoo.checkpoint and dtzoo.fsutil: the model directory format, verification, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dtzoo.checkpoint import (
    CONFIG,
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    ModelConfig,
    is_model_dir,
    load_model,
    read_config,
    save_model,
    verify,
    write_manifest,
)
from dtzoo.errors import CheckpointError
from dtzoo.fsutil import atomic_dir, atomic_write_bytes, read_json
from dtzoo.model import DecisionTransformer


def make_config(discrete: bool = False, n_layers: int = 2, step: int = 7) -> ModelConfig:
    act_dim = 2 if discrete else 1
    return ModelConfig(
        model_id="pendulum-2L-seed3",
        architecture={
            "n_layers": n_layers,
            "d_model": 16,
            "n_heads": 2,
            "d_mlp": 32,
            "context_len": 5,
            "max_ep_len": 50,
            "activation": "gelu",
            "dropout": 0.1,
        },
        state_dim=3,
        act_dim=act_dim,
        action_space={"kind": "discrete", "n": 2}
        if discrete
        else {"kind": "box", "low": [-2.0], "high": [2.0]},
        state_mean=[0.1, -0.2, 0.3],
        state_std=[1.0, 2.0, 0.5],
        reward_scale=100.0,
        target_returns=[-150.0, -600.0],
        env={
            "key": "pendulum",
            "gym_id": "Pendulum-v1",
            "max_ep_len": 50,
            "ref_scores": {"random": -1230.0, "expert": -145.0},
        },
        dataset={
            "id": "dtzoo/pendulum/scripted-v0",
            "minari_version": "0.5.4",
            "fingerprint": "sha256:" + "0" * 64,
            "episodes": 20,
            "steps": 4000,
        },
        recipe={"lr": 1e-3, "steps": 40},
        seed=3,
        step=step,
        total_steps=40,
    )


def make_model(config: ModelConfig, seed: int = 0) -> DecisionTransformer:
    torch.manual_seed(seed)
    model = DecisionTransformer(config.dt_config())
    with torch.no_grad():  # make every tensor distinct from its initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture
def saved(tmp_path) -> tuple[Path, DecisionTransformer, ModelConfig]:
    config = make_config()
    model = make_model(config)
    path = save_model(model, config, tmp_path / "model", extra_files={"README.md": b"# card\n"})
    return path, model, config


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("discrete", [False, True])
def test_save_load_round_trip_is_bitwise(tmp_path, discrete):
    config = make_config(discrete=discrete)
    model = make_model(config, seed=1)
    path = save_model(model, config, tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == [CONFIG, MANIFEST, WEIGHTS]
    loaded, cfg = load_model(path)
    assert cfg == config and cfg.to_dict() == config.to_dict()
    assert not loaded.training  # eval mode
    want, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    # same outputs on the same input (eval mode: no dropout)
    model.eval()
    x = (
        torch.randn(2, 5, 3),
        torch.randn(2, 5, config.act_dim),
        torch.randn(2, 5, 1),
        torch.arange(5).repeat(2, 1),
    )
    assert torch.equal(model(*x), loaded(*x))


def test_directory_contents_and_manifest(saved):
    path, model, config = saved
    assert is_model_dir(path) and not is_model_dir(path.parent)
    assert json.loads((path / CONFIG).read_text()) == config.to_dict()
    manifest = read_json(path / MANIFEST)
    assert manifest["format_version"] == FORMAT_VERSION
    assert set(manifest["files"]) == {WEIGHTS, CONFIG, "README.md"}
    assert manifest["files"]["README.md"]["size"] == len(b"# card\n")
    with safe_open(str(path / WEIGHTS), framework="pt") as f:
        assert f.metadata()["dtzoo_format_version"] == str(FORMAT_VERSION)
        assert set(f.keys()) == set(model.state_dict())
    assert config.format_version == FORMAT_VERSION and config.dtzoo_version
    verify(path)


def test_save_model_replaces_a_previous_directory_whole(tmp_path):
    config = make_config()
    path = save_model(
        make_model(config, 0), config, tmp_path / "m", extra_files={"stale.txt": b"old"}
    )
    assert (path / "stale.txt").is_file()
    model2 = make_model(config, 2)
    save_model(model2, config, path)
    assert not (path / "stale.txt").exists()
    loaded, _ = load_model(path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model2.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp or old directories left


# ----------------------------------------------------------------------------- verification


def test_verify_detects_a_flipped_byte_in_the_weights(saved):
    path, _, _ = saved
    size = (path / WEIGHTS).stat().st_size
    flip_byte(path / WEIGHTS, size - 3)  # inside the tensor data: still a valid safetensors file
    with pytest.raises(CheckpointError) as e:
        verify(path)
    assert str(path / WEIGHTS) in str(e.value) and "sha256 mismatch" in str(e.value)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_model(path)
    load_model(path, verify_files=False)  # the file itself still parses: only the hash catches it


@pytest.mark.parametrize("name", [CONFIG, "README.md"])
def test_verify_detects_a_flipped_byte_in_any_listed_file(saved, name):
    path, _, _ = saved
    flip_byte(path / name, 2)
    with pytest.raises(CheckpointError) as e:
        verify(path)
    assert str(path / name) in str(e.value)


def test_verify_detects_a_truncated_file(saved):
    path, _, _ = saved
    raw = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError) as e:
        verify(path)
    assert str(path / WEIGHTS) in str(e.value)


def test_verify_detects_missing_files_and_manifest(saved):
    path, _, _ = saved
    (path / "README.md").unlink()
    with pytest.raises(CheckpointError, match="README.md listed in the manifest is missing"):
        verify(path)
    (path / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="missing manifest.json"):
        verify(path)
    (path / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=f"missing {WEIGHTS}"):
        load_model(path)


def test_verify_rejects_a_manifest_that_does_not_cover_the_weights(saved):
    path, _, _ = saved
    m = read_json(path / MANIFEST)
    del m["files"][WEIGHTS]
    (path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="not covered by the manifest"):
        verify(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable manifest"):
        verify(path)


def test_verify_refuses_manifest_names_outside_the_directory(saved, tmp_path):
    path, _, _ = saved
    m = read_json(path / MANIFEST)
    m["files"]["../outside"] = {"sha256": "0" * 64, "size": 0}
    (tmp_path / "outside").write_text("")
    (path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="listed in the manifest"):
        verify(path)


# ----------------------------------------------------------------------------- strict weights


def _rewrite_weights(path: Path, tensors: dict) -> None:
    save_file(tensors, str(path / WEIGHTS))
    write_manifest(path)  # a consistent manifest: only the strict load can catch it


def test_missing_tensor_is_named(saved):
    path, model, _ = saved
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    del tensors["blocks.1.mlp.fc_out.weight"]
    _rewrite_weights(path, tensors)
    with pytest.raises(CheckpointError, match=r"missing blocks\.1\.mlp\.fc_out\.weight"):
        load_model(path)


def test_extra_tensor_is_named(saved):
    path, model, _ = saved
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors["blocks.2.ln1.weight"] = torch.ones(16)  # a third layer the config does not have
    _rewrite_weights(path, tensors)
    with pytest.raises(CheckpointError, match=r"unexpected blocks\.2\.ln1\.weight"):
        load_model(path)


def test_misshaped_tensor_is_named(saved):
    path, model, _ = saved
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors["embed_state.weight"] = torch.zeros(16, 4)
    _rewrite_weights(path, tensors)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert "embed_state.weight has shape (16, 4), expected (16, 3)" in str(e.value)
    assert str(path / WEIGHTS) in str(e.value)


def test_config_that_disagrees_with_the_weights_is_refused(saved):
    path, _, config = saved
    d = config.to_dict()
    d["architecture"]["n_layers"] = 1
    atomic_write_bytes(path / CONFIG, json.dumps(d).encode())
    write_manifest(path)
    with pytest.raises(CheckpointError, match=r"unexpected blocks\.1\."):
        load_model(path)


# ----------------------------------------------------------------------------- no pickle, ever


class _Payload:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_in_place_of_the_weights_is_refused_and_never_unpickled(saved, tmp_path):
    path, _, _ = saved
    marker = tmp_path / "pwned"
    evil = {"embed_state.weight": torch.zeros(16, 3), "payload": _Payload(marker)}
    torch.save(evil, path / WEIGHTS)
    # the payload is live: torch's pickle loader would run it
    probe = tmp_path / "probe"
    torch.save({"payload": _Payload(probe)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()

    with pytest.raises(CheckpointError, match="sha256 mismatch"):  # the manifest catches it first
        load_model(path)
    write_manifest(path)  # even with a matching manifest, the format check refuses it
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert "not a valid safetensors file" in str(e.value) and str(path / WEIGHTS) in str(e.value)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(path, verify_files=False)
    assert not marker.exists()


def test_a_garbage_weights_file_is_refused(saved):
    path, _, _ = saved
    (path / WEIGHTS).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    write_manifest(path)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(path)


# ----------------------------------------------------------------------------- config.json


def test_newer_format_version_is_a_clear_error(saved):
    path, _, config = saved
    d = config.to_dict()
    d["format_version"] = FORMAT_VERSION + 1
    d["some_future_key"] = {"x": 1}
    (path / CONFIG).write_text(json.dumps(d))
    write_manifest(path)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert str(path / CONFIG) in msg and f"format version {FORMAT_VERSION + 1} is newer" in msg
    assert "upgrade dtzoo" in msg


def test_unknown_keys_of_the_same_version_are_ignored(saved):
    path, _, config = saved
    d = config.to_dict()
    d["added_later"] = 1
    (path / CONFIG).write_text(json.dumps(d))
    write_manifest(path)
    _, cfg = load_model(path)
    assert cfg == config


def test_config_missing_keys_or_invalid_json(saved):
    path, _, config = saved
    d = config.to_dict()
    del d["state_mean"], d["reward_scale"]
    (path / CONFIG).write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="missing keys state_mean, reward_scale"):
        read_config(path)
    (path / CONFIG).write_text("{")
    with pytest.raises(CheckpointError, match="invalid config"):
        read_config(path)
    (path / CONFIG).unlink()
    with pytest.raises(CheckpointError, match="missing config.json"):
        read_config(path)


# ----------------------------------------------------------------------------- atomic_dir


def test_atomic_dir_leaves_nothing_when_the_body_raises(tmp_path):
    target = tmp_path / "ckpt" / "step4"
    with pytest.raises(RuntimeError, match="killed"), atomic_dir(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        assert tmp.parent == target.parent and tmp != target
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_dir_keeps_the_old_directory_when_the_body_raises(tmp_path):
    target = tmp_path / "m"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "a").write_text("new")
        (tmp / "b").write_text("new")
        raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["a"] and (target / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_save_model_that_fails_midway_leaves_the_previous_model(tmp_path, saved):
    path, _, config = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    class Unserialisable:
        def to_dict(self):
            return {"bad": object()}  # json.dumps fails after the weights were written

    with pytest.raises(TypeError):
        save_model(make_model(config, 5), Unserialisable(), path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in path.parent.iterdir()] == ["model"]  # no temp directory left


def test_saving_the_same_model_twice_gives_the_same_bytes(tmp_path):
    """The hub names commits by content: equal weights must be equal files (safetensors alone
    writes its metadata map in hash order, which differs from one save to the next)."""
    config = make_config()
    model = make_model(config, 4)
    blobs = {
        save_model(model, config, tmp_path / f"m{i}").joinpath(WEIGHTS).read_bytes()
        for i in range(8)
    }
    assert len(blobs) == 1
    blob = blobs.pop()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert header["__metadata__"]["format"] == "pt"
    assert (8 + n) % 8 == 0
    assert len({(tmp_path / f"m{i}" / MANIFEST).read_bytes() for i in range(8)}) == 1
