"""The architecture settings a recipe may choose, declared once: name, type, default (the DT
paper's gym values), bounds and choices. `DTConfig` (dtzoo.model) and `Recipe`
(dtzoo.registry) inherit them; the registry and config.json are checked against them.

Kept free of torch, so loading the registry or reading a config.json does not import it.

    >>> Architecture().d_model
    128
    >>> Architecture(d_model=64).arch_settings()["d_model"]
    64
    >>> value_problem(field_of(Architecture, "activation"), "swish")
    "must be one of relu, gelu, gelu_exact, tanh, got 'swish'"
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any

# the MLP's nonlinearities, by name (dtzoo.model.ACTIVATIONS maps each to its function)
ACTIVATION_NAMES = ("relu", "gelu", "gelu_exact", "tanh")


def setting(
    default: Any,
    *,
    choices: tuple[Any, ...] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """A dataclass field with the values it allows (what the registry and config.json checks
    read): `d_model: int = setting(128, gt=0, le=8192)`, `act: str = setting("relu",
    choices=("relu", "tanh"))`."""
    bounds = {k: v for k, v in dict(gt=gt, ge=ge, lt=lt, le=le).items() if v is not None}
    return dataclasses.field(default=default, metadata={"choices": choices, **bounds})


@dataclass(kw_only=True)
class Architecture:
    """The network settings a recipe may set. Adding a field here adds it to `DTConfig`,
    `Recipe`, the registry's checks, config.json (written when it differs from its default,
    so older files keep their bytes) and the checks on reading config.json."""

    context_len: int = setting(20, gt=0, le=4096)
    d_model: int = setting(128, gt=0, le=8192)
    n_heads: int = setting(1, gt=0, le=256)
    d_mlp: int = setting(512, gt=0, le=32768)
    activation: str = setting("relu", choices=ACTIVATION_NAMES)
    dropout: float = setting(0.1, ge=0, lt=1)

    def arch_settings(self) -> dict[str, Any]:
        """The Architecture fields of this object (a `Recipe` or `DTConfig` too), by name:
        `Recipe().arch_settings()` -> {"context_len": 20, "d_model": 128, ...}."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Architecture)}

    def arch_problem(self) -> str | None:
        """What makes these settings inconsistent with each other, or None:
        `Architecture(d_model=30, n_heads=4).arch_problem()` -> "d_model 30 is not ..."."""
        if self.d_model % self.n_heads:
            return f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}"
        return None


# the architecture block of every config.json, in its order: `DTConfig.architecture()` writes
# these always, and any other setting only where it differs from its default
ARCHITECTURE_KEYS = (
    "n_layers",
    "d_model",
    "n_heads",
    "d_mlp",
    "context_len",
    "max_ep_len",
    "activation",
    "dropout",
)


@functools.cache
def field_types(cls: type) -> dict[str, type]:
    """The declared type of each field of dataclass `cls`, resolved from its annotation; an
    optional type (`int | None`) gives the type inside: `field_types(Architecture)["dropout"]`
    -> float."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        out[f.name] = args[0] if typing.get_origin(t) in (typing.Union, types.UnionType) else t
    return out


def field_of(cls: type, name: str) -> dataclasses.Field:
    """The dataclass field `name` of `cls`: `field_of(Architecture, "d_model").default` -> 128."""
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def value_problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with `value` for a field made by `setting` (choices, then bounds), as the
    end of a sentence, or None: `value_problem(field_of(Architecture, "dropout"), 1.5)` ->
    "must be below 1, got 1.5"."""
    m = f.metadata
    if m.get("choices") is not None and value not in m["choices"]:
        return f"must be one of {', '.join(map(str, m['choices']))}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    ge, le = m.get("ge"), m.get("le")
    # a float range closed at both ends reads as one interval
    if ge is not None and le is not None and isinstance(f.default, float):
        if not ge <= value <= le:
            return f"must be in [{ge}, {le}], got {value!r}"
        return None
    if "gt" in m and not value > m["gt"]:
        above = "positive" if m["gt"] == 0 else f"> {m['gt']}"
        return f"must be {above}, got {value!r}"
    if ge is not None and not value >= ge:
        return f"must be >= {ge}, got {value!r}"
    if "lt" in m and not value < m["lt"]:
        return f"must be below {m['lt']}, got {value!r}"
    if le is not None and not value <= le:
        return f"must be <= {le}, got {value!r}"
    return None


def int_range(f: dataclasses.Field) -> tuple[int, int | None]:
    """The smallest and largest value an integer `setting` allows (None: no upper bound):
    `int_range(field_of(Architecture, "d_model"))` -> (1, 8192)."""
    m = f.metadata
    return (m["gt"] + 1 if "gt" in m else m.get("ge", 0)), m.get("le")


def interval(f: dataclasses.Field) -> str:
    """The values a float `setting` allows, in interval notation: `interval(field_of(
    Architecture, "dropout"))` -> "in [0, 1)"."""
    m = f.metadata
    left = f"({m['gt']}" if "gt" in m else f"[{m.get('ge', '-inf')}"
    right = f"{m['lt']})" if "lt" in m else f"{m.get('le', 'inf')}]"
    return f"in {left}, {right}"
