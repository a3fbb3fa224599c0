"""dtzoo.architecture: the recipe's network settings declared once, and everything that reads
them (DTConfig, Recipe, the registry's checks, config.json's architecture block)."""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass

import pytest

from dtzoo.architecture import ACTIVATION_NAMES, Architecture, setting
from dtzoo.checkpoint import _architecture_problem
from dtzoo.errors import RegistryError
from dtzoo.model import ACTIVATIONS, DTConfig
from dtzoo.registry import PRECISIONS, Recipe, _load_yaml, _Parser


def test_choices_and_defaults_have_one_source():
    import dtzoo.cli
    import dtzoo.train

    assert ACTIVATION_NAMES == tuple(ACTIVATIONS)
    assert dtzoo.train.PRECISIONS is PRECISIONS
    option = typing.get_type_hints(dtzoo.cli.train, include_extras=True)["precision"]
    literal = typing.get_args(typing.get_args(option)[0])[0]  # Optional[Literal[...]]
    assert typing.get_args(literal) == PRECISIONS
    paper = Architecture().arch_settings()
    assert Recipe().arch_settings() == paper == DTConfig(state_dim=1, act_dim=1).arch_settings()


def test_config_json_layout_is_unchanged():
    """The recipe and architecture blocks keep their key order (config.json bytes, hashes)."""
    recipe = list(Recipe().record())
    assert recipe[:6] == ["context_len", "d_model", "n_heads", "d_mlp", "activation", "dropout"]
    assert recipe[6:] == [
        "lr",
        "weight_decay",
        "warmup_steps",
        "grad_clip",
        "batch_size",
        "steps",
        "precision",
        "val_fraction",
    ]
    assert json.dumps(DTConfig(state_dim=3, act_dim=1).architecture()) == (
        '{"n_layers": 1, "d_model": 128, "n_heads": 1, "d_mlp": 512, "context_len": 20, '
        '"max_ep_len": 1000, "activation": "relu", "dropout": 0.1}'
    )
    image = DTConfig(state_dim=1, act_dim=2, state_encoder="nature_cnn", obs_shape=(4, 84, 84))
    block = image.architecture()
    assert list(block)[-2:] == ["state_encoder", "obs_shape"] and block["obs_shape"] == [4, 84, 84]
    assert DTConfig(state_dim=1, act_dim=2, **block) == image  # read back as written


def test_dtconfig_checks_choices_and_consistency():
    with pytest.raises(ValueError, match="unknown activation 'swish': use one of relu"):
        DTConfig(state_dim=1, act_dim=1, activation="swish")
    with pytest.raises(ValueError, match="d_model 30 is not divisible by n_heads 4"):
        DTConfig(state_dim=1, act_dim=1, d_model=30, n_heads=4)
    with pytest.raises(TypeError):  # keywords only: DTConfig(3, 1) would set the context
        DTConfig(3, 1)


@dataclass(kw_only=True)
class Toy:
    flag: bool = setting(True)
    mode: str = setting("a", choices=("a", "b"))
    width: int = setting(4, gt=0, le=8)
    rate: float = setting(0.5, ge=0, le=1)
    keep: float = setting(0.1, ge=0, lt=1)


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("flag: 1", "toy.flag must be true or false, got 1"),
        ("mode: c", "toy.mode must be one of a, b, got 'c'"),
        ("width: 0", "toy.width must be positive, got 0"),
        ("width: 9", "toy.width must be <= 8, got 9"),
        ("width: 2.5", "toy.width must be an integer"),
        ("rate: 1.5", "toy.rate must be in [0, 1], got 1.5"),
        ("keep: 1", "toy.keep must be below 1, got 1"),
        ("keep: -1", "toy.keep must be >= 0, got -1"),
        ("mode: 3", "toy.mode must be a string"),
    ],
)
def test_registry_checks_any_dataclass_by_its_fields(tmp_path, yaml_text, message):
    """A setting added to Architecture is checked from its type, bounds and choices alone."""
    path = tmp_path / "r.yaml"
    node = _load_yaml("\n" + yaml_text + "\n")  # on line 2
    with pytest.raises(RegistryError) as e:
        _Parser(path).dataclass_fields(node, Toy, "toy")
    assert str(e.value).startswith(f"{path}:2: {message}")
    good = _load_yaml("flag: false\nmode: b\nwidth: 8.0\nrate: 1\n")
    assert _Parser(path).dataclass_fields(good, Toy, "toy") == dict(
        flag=False, mode="b", width=8, rate=1
    )


@pytest.mark.parametrize(
    "edit, drop, problem",
    [
        ({}, "dropout", None),  # an absent setting takes its default
        ({}, "d_model", "architecture.d_model must be an integer from 1 to 8192, got 'None'"),
        ({"dropout": 1.0}, None, "architecture.dropout must be a number in [0, 1)"),
        ({"activation": 3}, None, "architecture.activation must be a string"),
        ({"n_layers": 129}, None, "architecture.n_layers must be an integer from 1 to 128, got"),
    ],
)
def test_config_json_architecture_is_checked_from_the_fields(edit, drop, problem):
    arch = {**DTConfig(state_dim=1, act_dim=1).architecture(), **edit}
    arch.pop(drop, None)
    got = _architecture_problem(arch)
    assert got is None if problem is None else got.startswith(problem), got
