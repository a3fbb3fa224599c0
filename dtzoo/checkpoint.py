"""What a model directory holds: config.json (`ModelConfig`, checked), the weights
(safetensors, strict key layout), and saving and loading a whole model. The layout, file names
and manifest belong to `dtzoo.modeldir` (docs/format.md).

    >>> save_model(model, config, path)              # atomic: a reader never sees half of it
    >>> model, config = load_model(path)             # verifies sha256 sums, strict weights
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtzoo import __version__
from dtzoo.architecture import (
    ARCHITECTURE_KEYS,
    Architecture,
    field_types,
    int_range,
    interval,
    value_problem,
)
from dtzoo.errors import CheckpointError, DtzooError
from dtzoo.families import DT, TT
from dtzoo.fsutil import atomic_write_bytes, atomic_write_json, read_json
from dtzoo.modeldir import (  # noqa: F401 (the format's names, re-exported for callers)
    CONFIG,
    FORMAT_VERSION,
    MANIFEST,
    REQUIRED_FILES,
    WEIGHTS,
    ModelDir,
    verify,
    write_manifest,
)


@dataclass
class ModelConfig:
    """config.json: the architecture plus everything needed to act without the dataset."""

    model_id: str
    architecture: dict[str, Any]  # DTConfig fields minus state/act dims
    state_dim: int
    act_dim: int
    action_space: dict[str, Any]  # {"kind": "box", "low", "high"} | {"kind": "discrete", "n"}
    state_mean: list[float]
    state_std: list[float]
    reward_scale: float
    target_returns: list[float]
    env: dict[str, Any]  # {"key", "gym_id", "max_ep_len", "ref_scores"}
    dataset: dict[str, Any]  # {"id", "minari_version", "fingerprint", "episodes", "steps"}
    recipe: dict[str, Any]
    seed: int
    step: int
    total_steps: int
    dtzoo_version: str = __version__
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # a TT's discretizer and planning
    family: str = DT  # written only for other families (a DT's config.json keeps its bytes)

    def dt_config(self):
        """The DTConfig the architecture block describes: `config.dt_config().n_layers`."""
        from dtzoo.model import DTConfig

        # DTConfig refuses unknown keys (TypeError), unknown choices such as an activation and
        # inconsistent values (ValueError)
        try:
            return DTConfig(
                state_dim=self.state_dim,
                act_dim=self.act_dim,
                discrete=self.action_space["kind"] == "discrete",
                **self.architecture,
            )
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"config.json of {self.model_id}: invalid architecture: {e}"
            ) from None

    def build_model(self):
        """An untrained network of this config's family and architecture (weights: load them)."""
        if self.family == TT:
            from dtzoo.tt import TrajectoryTransformer

            return TrajectoryTransformer(self.tt_config())
        from dtzoo.model import DecisionTransformer

        return DecisionTransformer(self.dt_config())

    def tt_config(self):
        """The TTConfig of a Trajectory Transformer's architecture block."""
        from dtzoo.tt import TTConfig

        try:
            return TTConfig.from_architecture(self.architecture, self.state_dim, self.act_dim)
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"config.json of {self.model_id}: invalid architecture: {e}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.family == DT:
            del d["family"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> "ModelConfig":
        if not isinstance(d, dict):
            raise CheckpointError(
                f"{where}: invalid config: a JSON object expected, got {type(d).__name__}"
            )
        version = d.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise CheckpointError(f"{where}: invalid config: format_version must be an integer")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: format version {d['format_version']} is newer than "
                f"this dtzoo understands ({FORMAT_VERSION}): upgrade dtzoo"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in d
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise CheckpointError(f"{where}: missing keys {', '.join(missing)}")
        problem = _config_problem(d)
        if problem:  # checked here, so no TypeError or KeyError surfaces later from the model
            raise CheckpointError(f"{where}: invalid config: {problem}")
        return cls(**{k: v for k, v in d.items() if k in names})


# Bounds on what a config.json may ask us to build: a typo or a hostile file must not exhaust
# memory before a weight is read (dtzoo.registry bounds what training may ask for the same way)
MAX_PARAMS = 10**9
# the recipe's integer settings bring their bounds (dtzoo.architecture); the model id and the
# env fix the other two
_SETTINGS = {f.name: f for f in dataclasses.fields(Architecture)}
ARCH_LIMITS = {
    "n_layers": 128,
    **{k: int_range(f)[1] for k, f in _SETTINGS.items() if field_types(Architecture)[k] is int},
    "max_ep_len": 10**6,
}


def param_count(arch: dict[str, Any], state_dim: int = 0, act_dim: int = 0) -> int:
    """About how many weights a DT with this architecture has (blocks, embeddings, heads)."""
    d, layers = arch["d_model"], arch["n_layers"]
    block = 4 * d * d + 2 * d * arch["d_mlp"] + 9 * d + arch["d_mlp"]
    embed = arch["max_ep_len"] * d + (state_dim + act_dim + 1) * d
    return layers * block + embed + act_dim * d


def check_model_size(
    arch: dict[str, Any],
    where: str,
    state_dim: int = 0,
    act_dim: int = 0,
    error: type[Exception] = CheckpointError,
) -> None:
    """Refuse an architecture past ARCH_LIMITS or MAX_PARAMS weights, in one line:
    `check_model_size(dict(n_layers=2, d_model=64, d_mlp=256, max_ep_len=1000), "x")`."""
    for k, top in ARCH_LIMITS.items():
        if k in arch and arch[k] > top:
            raise error(f"{where}: {k} {arch[k]} is above the limit {top}")
    n = param_count(arch, state_dim, act_dim)
    if n > MAX_PARAMS:
        raise error(f"{where}: about {n:.2e} parameters, above the limit {MAX_PARAMS:.0e}")


def _is_int(v: Any, lo: int = 0, hi: int = 2**62) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_num(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return (
        abs(v) < 10**300 if isinstance(v, int) else math.isfinite(v)
    )  # (float(10**400) overflows)


def _numbers(v: Any, n: int | None = None) -> bool:
    return isinstance(v, list) and (n is None or len(v) == n) and all(_is_num(x) for x in v)


def _architecture_problem(arch: dict[str, Any]) -> str | None:
    """What is wrong with the types or ranges of config.json's architecture block, or None.
    The sizes every config.json has are required; any other setting may be absent (its
    default applies): `_architecture_problem({"n_layers": 0})` -> "architecture.n_layers ..."."""
    types = field_types(Architecture)
    for k, top in ARCH_LIMITS.items():
        low = int_range(_SETTINGS[k])[0] if k in _SETTINGS else 1
        if (k in arch or k in ARCHITECTURE_KEYS) and not _is_int(arch.get(k), low, top):
            return (
                f"architecture.{k} must be an integer from {low} to {top}, "
                f"got {str(arch.get(k))[:40]!r}"
            )
    for k, f in _SETTINGS.items():
        if k not in arch:
            continue
        v = arch[k]
        if types[k] is float and not (_is_num(v) and value_problem(f, v) is None):
            return f"architecture.{k} must be a number {interval(f)}"
        if types[k] is str and not isinstance(v, str):
            return f"architecture.{k} must be a string"
        if types[k] is bool and not isinstance(v, bool):
            return f"architecture.{k} must be true or false"
    return None


def _config_problem(d: dict[str, Any]) -> str | None:
    """What is wrong with the shape or types of a config.json dict, or None."""
    for k in ("architecture", "action_space", "env", "dataset", "recipe"):
        if not isinstance(d[k], dict):
            return f"{k} must be an object, got {type(d[k]).__name__}"
    if not isinstance(d["model_id"], str) or not d["model_id"] or len(d["model_id"]) > 256:
        return "model_id must be a non-empty string"
    for k in ("state_dim", "act_dim"):
        if not _is_int(d[k], 1, 10**7):
            return f"{k} must be an integer from 1 to 10**7, got {str(d[k])[:40]!r}"
    for k in ("seed", "step", "total_steps"):
        if not _is_int(d[k]):
            return f"{k} must be a non-negative integer, got {str(d[k])[:40]!r}"
    arch = d["architecture"]
    family = d.get("family", DT)
    if family not in (DT, TT):
        return f"family must be {DT!r} or {TT!r}, got {str(family)[:40]!r}"
    problem = _tt_problem(d) if family == TT else _architecture_problem(arch)
    if problem:
        return problem
    shape = arch.get("obs_shape")
    if shape is not None and not (
        isinstance(shape, list) and len(shape) == 3 and all(_is_int(x, 1, 1024) for x in shape)
    ):
        return "architecture.obs_shape must be 3 integers from 1 to 1024 (frames, H, W)"
    space = d["action_space"]
    if space.get("kind") == "discrete":
        if space.get("n") != d["act_dim"] or not _is_int(space.get("n"), 1):
            return "action_space.n must equal act_dim"
    elif space.get("kind") == "box":
        if not (
            _numbers(space.get("low"), d["act_dim"]) and _numbers(space.get("high"), d["act_dim"])
        ):
            return "action_space low and high must be act_dim finite numbers each"
    else:
        return "action_space.kind must be 'box' or 'discrete'"
    for k in ("state_mean", "state_std"):
        if not _numbers(d[k]) or len(d[k]) not in (0, d["state_dim"]):
            return f"{k} must be a list of state_dim finite numbers"
    if not _is_num(d["reward_scale"]) or d["reward_scale"] <= 0:
        return "reward_scale must be a positive number"
    if not _numbers(d["target_returns"]) or len(d["target_returns"]) > 256:
        return "target_returns must be a list of at most 256 finite numbers"
    env, refs = d["env"], d["env"].get("ref_scores")
    if not isinstance(env.get("gym_id"), str):
        return "env.gym_id must be a string"
    if not (
        isinstance(refs, dict)
        and _is_num(refs.get("random"))
        and _is_num(refs.get("expert"))
        and refs["random"] != refs["expert"]
    ):
        return "env.ref_scores must hold distinct numbers 'random' and 'expert'"
    if not isinstance(d["dataset"].get("id", ""), str):
        return "dataset.id must be a string"
    if not isinstance(d.get("extra", {}), dict) or not isinstance(d.get("dtzoo_version", ""), str):
        return "extra must be an object and dtzoo_version a string"
    if family == TT:
        return None  # (its size was checked by _tt_problem)
    try:
        check_model_size(arch, "model", d["state_dim"], d["act_dim"], error=ValueError)
    except ValueError as e:
        return str(e)
    return None


def tt_size_problem(arch: dict[str, Any], state_dim: Any, act_dim: Any) -> str | None:
    """What makes a Trajectory Transformer's architecture block too large (or malformed) to
    build, or None: checked before anything is allocated from it."""
    from dtzoo.registry import TT_LIMITS

    for k in ("n_layers", "n_bins", "n_heads", "d_model", "d_mlp", "context_len"):
        top = ARCH_LIMITS["n_layers"] if k == "n_layers" else TT_LIMITS[k]
        if not _is_int(arch.get(k), 1, top):
            return f"architecture.{k} must be an integer from 1 to {top}"
    if not _is_int(state_dim, 1, 10**4) or not _is_int(act_dim, 1, 10**4):
        return "state_dim and act_dim must be integers from 1 to 10**4"
    dims = state_dim + act_dim + 2
    width, vocab = arch["d_model"], dims * arch["n_bins"] + 1
    params = 2 * vocab * width + arch["context_len"] * dims * width
    params += arch["n_layers"] * (4 * width * width + 2 * width * arch["d_mlp"])
    if params > MAX_PARAMS:
        return f"the model would have about {params:.3g} parameters (at most {MAX_PARAMS:.0e})"
    return None


def _tt_problem(d: dict[str, Any]) -> str | None:
    """A Trajectory Transformer's architecture, discretizer and planning blocks, checked
    (sizes first: nothing is built from a config that asks for too much)."""
    arch, extra = d["architecture"], d.get("extra")
    problem = tt_size_problem(arch, d["state_dim"], d["act_dim"])
    if problem:
        return problem
    if not (isinstance(extra, dict) and {"discretizer", "planning"} <= set(extra)):
        return "extra must hold the 'discretizer' and 'planning' blocks"
    try:
        from dtzoo.tt import Discretizer, PlanSettings, TTConfig

        cfg = TTConfig.from_architecture(arch, d["state_dim"], d["act_dim"])
        disc = Discretizer.from_dict(extra["discretizer"])
        PlanSettings.from_dict(extra["planning"])
    except (DtzooError, TypeError, ValueError, KeyError) as e:
        return f"invalid Trajectory Transformer block: {str(e)[:120]}"
    if disc.edges.shape != (cfg.n_bins + 1, cfg.transition_dim):
        return "extra.discretizer.edges must be (n_bins + 1) rows of transition_dim numbers"
    return None


# ----------------------------------------------------------------------------- writing


def safetensors_bytes(tensors: dict, metadata: dict[str, str]) -> bytes:
    """safetensors bytes that depend only on the tensors and metadata.

    safetensors writes its metadata map in a random (hash) order, so saving the same weights
    twice could give different bytes, different sha256 sums and a new hub commit; here the
    header is re-written with the metadata keys sorted (tensor entries keep their order).
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    canon = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    canon.update(header)
    head = json.dumps(canon, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + data[8 + n :]


def write_weights(model, path: Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "dtzoo_format_version": str(FORMAT_VERSION)}
    atomic_write_bytes(Path(path), safetensors_bytes(tensors, metadata))


def save_model(
    model, config: ModelConfig, path: Path, extra_files: dict[str, bytes] | None = None
) -> Path:
    """Write a complete model directory atomically (replacing any previous one)."""
    with ModelDir.build(Path(path)) as d:
        write_weights(model, d.file(WEIGHTS))
        atomic_write_json(d.file(CONFIG), config.to_dict())
        for name, data in (extra_files or {}).items():
            d.file(name).write_bytes(data)
    return Path(path)


# ----------------------------------------------------------------------------- reading


MAX_CONFIG_BYTES = 16 * 2**20


def read_config(path: Path) -> ModelConfig:
    p = Path(path) / CONFIG
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{p}: invalid config: larger than {MAX_CONFIG_BYTES >> 20} MiB")
        return ModelConfig.from_dict(read_json(p), where=str(p))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing {CONFIG}") from None
    except (ValueError, TypeError) as e:  # (UnicodeDecodeError is a ValueError)
        raise CheckpointError(f"{p}: invalid config: {str(e)[:200]}") from None
    except RecursionError:
        raise CheckpointError(f"{p}: invalid config: nested too deeply") from None
    except IsADirectoryError:
        raise CheckpointError(f"{p}: invalid config: a directory") from None


def read_weights(path: Path) -> dict:
    """Load tensors with safetensors only (never pickle); a non-safetensors file is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None


def check_safetensors(path: Path) -> None:
    """A header-only format check (no tensor is read, torch is not needed): a pickle or any
    other file in place of the weights is refused, e.g. before it is published."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None


def load_state_strict(model, tensors: dict, where: str) -> None:
    """Copy tensors into the model; missing, extra or mis-shaped tensors are an error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    bad = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:4]))
        if extra:
            parts.append("unexpected " + ", ".join(extra[:4]))
        if bad:
            k = bad[0]
            parts.append(
                f"{k} has shape {tuple(tensors[k].shape)}, expected {tuple(expected[k].shape)}"
            )
        raise CheckpointError(f"{where}: weights do not match config.json: " + "; ".join(parts))
    import torch

    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # NaN/inf weights would act silently wrong (every action NaN, or clipped)
        raise CheckpointError(
            f"{where}: weights are not finite (NaN or inf in "
            f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
        )
    model.load_state_dict(tensors, strict=True)


def load_model(path: Path, verify_files: bool = True, device: str = "cpu"):
    """Load a model directory: `model, config = load_model(path)`; the model is in eval mode.

    Verifies the files inference reads (weights and config) against the manifest. The extras
    (card, eval.json, plots) do not change what the model does: one left half-rewritten by a
    killed `dtzoo eval` must not make the model unusable (the next eval or publish re-hashes it)."""

    path = Path(path)
    if verify_files:
        verify(path, only=REQUIRED_FILES)
    config = read_config(path)
    model = config.build_model()
    load_state_strict(model, read_weights(path / WEIGHTS), str(path / WEIGHTS))
    model.config = config  # as transformers / TransformerLens users expect: model.config
    return model.to(device).eval(), config


def is_model_dir(path: Path) -> bool:
    return ModelDir(path).is_model_dir()
