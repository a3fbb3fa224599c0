"""The registry: envs, their datasets, the training recipe and the named grids, from YAML.

>>> reg = load_registry()                      # $DTZOO_REGISTRY or the bundled registry.yaml
>>> reg.grid("tiny")[0]
'pendulum-1L-seed0'
>>> reg.resolve("hopper-3L-seed2").env.gym_id
'Hopper-v5'
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dtzoo.architecture import (
    ARCHITECTURE_KEYS,
    Architecture,
    field_types,
    setting,
    value_problem,
)
from dtzoo.errors import DtzooError, RegistryError, UsageError, closest
from dtzoo.families import DT, FAMILIES, FAMILY_TAGS, TT

# always `fullmatch`: `$` also matches before a final newline, and "x-1L-seed0\n" would be a
# second name (and run, and hub folder) for x-1L-seed0
ENV_KEY_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
# no leading zeros: "hopper-01L-seed0" would be a second name (and run, and repo) for
# hopper-1L-seed0
# a family other than the DT shows in the id before the layers: hopper-tt-4L-seed0
MODEL_ID_RE = re.compile(
    r"(?P<env>[a-z0-9][a-z0-9-]*?)(?:-(?P<family>tt))?"
    r"-(?P<layers>0|[1-9][0-9]*)L-seed(?P<seed>0|[1-9][0-9]*)"
)

# Bounds that keep a typo from exhausting the machine before the first step (each is far above
# any DT in the literature; the model size is bounded as a whole by checkpoint.check_model_size)
MAX_LAYERS = 128
MAX_SEED = 2**31 - 1
MAX_STEPS = 10**9  # training steps (and warm-up, checkpoint spacing)
# (the recipe's bounds are on its fields: dtzoo.architecture.setting)
LIMITS = {
    "max_ep_len": 10**6,
    "max_episode_steps": 10**8,
    "frame_stack": 64,
    "episodes": 10**4,
    "ref_episodes": 10**6,
    "targets": 256,
    "log": 10**4,
    "evenly": 10**4,
    "noise": 256,
}
# the Trajectory Transformer's sizes (its dims come from the data; dtzoo.tt.cell bounds the
# whole model's size once they are known)
TT_LIMITS = {
    "n_bins": 1000,
    "n_heads": 64,
    "d_model": 4096,
    "d_mlp": 16384,
    "context_len": 1000,
    "batch_size": 65536,
    "horizon": 1000,
    "beam_width": 4096,
    "n_expand": 64,
    "k_obs": 1000,
    "k_act": 1000,
    "k_rew": 1000,
    "context_transitions": 1000,
    "max_context_transitions": 1000,
    "plan_freq": 1000,
}
PREPARE_KEYS = ("policy", "episodes", "noise", "seed", "ref_episodes")  # zoo.prepare_env's
MAX_YAML_NODES = 100_000  # a registry expanded (aliases followed) beyond this is refused
MAX_REGISTRY_BYTES = 10 * 2**20


PRECISIONS = ("fp32", "bf16")  # bf16: bfloat16 autocast for the forward pass


@dataclass(kw_only=True)
class Recipe(Architecture):
    """Architecture (dtzoo.architecture) and optimisation settings for one training run (the
    DT paper's by default); the registry checks each value against its field's `setting`."""

    lr: float = setting(1e-4, gt=0)
    weight_decay: float = setting(1e-4, ge=0)
    warmup_steps: int = setting(10_000, ge=0, le=MAX_STEPS)
    grad_clip: float = setting(0.25, ge=0)
    batch_size: int = setting(64, gt=0, le=65536)
    steps: int = setting(100_000, gt=0, le=MAX_STEPS)
    precision: str = setting("fp32", choices=PRECISIONS)
    # episodes held out (chosen by the seed) for the validation loss
    val_fraction: float = setting(0.05, ge=0, le=0.5)

    def record(self) -> dict[str, Any]:
        """config.json's `recipe` block: every field in order, except an architecture setting
        beyond ARCHITECTURE_KEYS left at its default (so a config.json that does not use a
        setting added later keeps its bytes): `Recipe().record()["lr"]` -> 0.0001."""
        out = dataclasses.asdict(self)
        for f in dataclasses.fields(Architecture):
            if f.name not in ARCHITECTURE_KEYS and out[f.name] == f.default:
                del out[f.name]
        return out


@dataclass
class CheckpointSchedule:
    """Which steps of a run keep a checkpoint (`step<N>`): the union of
    - 0, 1, 2, 4, ..., up to `log_until` (Pythia's powers of two),
    - every `every` steps,
    - `log` steps log-spaced over the whole run (1 ... total, geometric),
    - `evenly` steps evenly spaced over the whole run (total * i / evenly),
    - and the final step (so the last checkpoint is `main`).

    >>> CheckpointSchedule(log_until=16, every=1000, log=8, evenly=4).steps(1500)
    [0, 1, 2, 3, 4, 8, 16, 23, 65, 186, 375, 528, 750, 1000, 1125, 1500]

    Lazy: `is_checkpoint(step, total)` is O(1) and `iter_steps(total)` a generator, so a run of
    10**20 steps never builds a list of its checkpoints (the `log`/`evenly` parts are bounded).
    """

    log_until: int = 512
    every: int = 1000
    log: int = 0
    evenly: int = 0

    def _extra(self, total: int) -> tuple[int, ...]:
        """The bounded part: log-spaced and evenly spaced steps (at most log + evenly)."""
        return _extra_steps(self.log, self.evenly, total)

    def is_checkpoint(self, step: int, total: int) -> bool:
        """Whether `step` of a `total`-step run keeps a checkpoint, in O(1) for the unbounded
        parts."""
        if step in (0, total):
            return True
        if 0 < step <= self.log_until and step & (step - 1) == 0:  # a power of two
            return True
        if self.every > 0 and step % self.every == 0:
            return True
        return step in self._extra(total)

    def iter_steps(self, total: int):
        """The checkpoint steps of a `total`-step run in order, lazily (a generator)."""
        import heapq
        import itertools

        powers = itertools.takewhile(
            lambda s: s <= min(self.log_until, total), (2**i for i in itertools.count())
        )
        multiples = range(self.every, total, self.every) if self.every > 0 else ()
        last = None
        for s in heapq.merge([0], powers, multiples, self._extra(total), [total]):
            if s != last:
                yield s
            last = s

    def steps(self, total: int) -> list[int]:
        """All checkpoint steps of a run of `total` steps: `CheckpointSchedule().steps(3000)`."""
        return list(self.iter_steps(total))

    def for_run(self, total: int) -> "RunCheckpoints":
        """The steps of one run as a lazy container: `step in sched.for_run(1500)`."""
        return RunCheckpoints(self, total)

    @staticmethod
    def parse_override(text: str) -> dict[str, int]:
        """`dtzoo train --checkpoints log=16,evenly=20` -> {"log": 16, "evenly": 20}."""
        names = [f.name for f in dataclasses.fields(CheckpointSchedule)]
        out = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            if key not in names:
                raise UsageError(
                    f"--checkpoints {text!r}: unknown key {key!r}; keys: {', '.join(names)}"
                )
            if not re.fullmatch(r"[0-9]{1,19}", value):  # (isdigit() takes "²")
                raise UsageError(f"--checkpoints {text!r}: {key} must be an integer >= 0")
            out[key] = int(value)
            if key == "every" and out[key] < 1:
                raise UsageError(f"--checkpoints {text!r}: every must be >= 1")
        if not out:
            raise UsageError(
                f"--checkpoints {text!r}: expected KEY=N[,KEY=N], e.g. log=16,evenly=20"
            )
        return out

    def merged(self, override: dict[str, int] | None) -> "CheckpointSchedule":
        """This schedule with an env's (or the command line's) keys replaced."""
        return dataclasses.replace(self, **(override or {}))


def with_checkpoints(specs: list["ModelSpec"], override: dict[str, int]) -> list["ModelSpec"]:
    """The specs with `override` over their env's checkpoint keys (`dtzoo train --checkpoints`)."""
    return [
        dataclasses.replace(
            s, env=dataclasses.replace(s.env, checkpoints={**s.env.checkpoints, **override})
        )
        for s in specs
    ]


@dataclass(frozen=True)
class RunCheckpoints:
    """A run's checkpoint steps without a list: `in` is O(1), iteration is lazy."""

    schedule: CheckpointSchedule
    total: int

    def __contains__(self, step: object) -> bool:
        return isinstance(step, int) and self.schedule.is_checkpoint(step, self.total)

    def __iter__(self):
        return self.schedule.iter_steps(self.total)


@functools.lru_cache(maxsize=16)
def _extra_steps(log: int, evenly: int, total: int) -> tuple[int, ...]:
    out: set[int] = set()
    if log > 0 and total > 0:
        ratio = total ** (1.0 / max(log - 1, 1))
        out.update(min(total, round(ratio**i)) for i in range(log))
    if evenly > 0:
        out.update(total * i // evenly for i in range(1, evenly + 1))
    return tuple(sorted(out))


@dataclass
class EnvSpec:
    """One registry env: the gym task, its dataset and how to evaluate it."""

    key: str
    gym_id: str
    dataset: str
    max_ep_len: int
    reward_scale: float
    target_returns: list[float]
    ref_scores: dict[str, float] | None  # None: read from the dataset's metadata
    prepare: dict[str, Any] | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    eval_episodes: int = 10
    # observation kind: a name in dtzoo.observations.KINDS (vector, atari, minigrid-flat, ...)
    obs: str = "vector"
    frame_stack: int = 1  # frames per state for image kinds (stacked on the fly)
    max_episode_steps: int | None = (
        None  # TimeLimit for collection and eval (None: the gym default)
    )
    checkpoints: dict[str, int] = field(default_factory=dict)  # overrides of the global schedule

    def normalize(self, ret: float) -> float:
        """Normalised score: 100 * (return - random) / (expert - random)."""
        lo, hi = self.ref_scores["random"], self.ref_scores["expert"]
        return 100.0 * (ret - lo) / (hi - lo)


@dataclass
class ModelSpec:
    """Everything a model id resolves to: `reg.resolve("pendulum-1L-seed0")`."""

    model_id: str
    env: EnvSpec
    n_layers: int
    seed: int
    recipe: Recipe
    family: str = DT
    tt: dict[str, Any] = field(default_factory=dict)  # the registry's `tt:` block


@dataclass
class Grid:
    name: str
    envs: list[str]
    layers: list[int]
    seeds: list[int]
    description: str = ""
    family: str = DT

    def model_ids(self) -> list[str]:
        return [
            model_id(env, n, s, self.family)
            for env in self.envs
            for n in self.layers
            for s in self.seeds
        ]


def model_id(env: str, n_layers: int, seed: int, family: str = DT) -> str:
    """`model_id("hopper", 1, 0)` -> "hopper-1L-seed0";
    `model_id("hopper", 4, 0, TT)` -> "hopper-tt-4L-seed0"."""
    tag = FAMILY_TAGS[family]
    return f"{env}-{tag}-{n_layers}L-seed{seed}" if tag else f"{env}-{n_layers}L-seed{seed}"


def family_of(mid: str) -> str:
    """The model family a model id names: `family_of("hopper-tt-4L-seed0")` -> TT."""
    m = MODEL_ID_RE.fullmatch(mid) if isinstance(mid, str) else None
    return FAMILIES[m["family"]] if m and m["family"] else DT


def parse_model_id(mid: str) -> tuple[str, int, int]:
    """Split a model id from the right: "hopper-expert-3L-seed2" -> ("hopper-expert", 3, 2)."""
    m = MODEL_ID_RE.fullmatch(mid) if isinstance(mid, str) else None
    if not m:
        raise UsageError(
            f"malformed model id {shown(mid)}: expected <env>-<N>L-seed<K>, e.g. pendulum-1L-seed0 "
            "(a Trajectory Transformer: <env>-tt-<N>L-seed<K>)"
        )
    # digits are counted before int(): a 5000-digit number would raise ValueError in int()
    if len(m["layers"]) > 4 or int(m["layers"]) > MAX_LAYERS:
        raise UsageError(f"model id {shown(mid)}: layers must be <= {MAX_LAYERS}")
    if len(m["seed"]) > 10 or int(m["seed"]) > MAX_SEED:
        raise UsageError(f"model id {shown(mid)}: seed must be <= {MAX_SEED}")
    return m["env"], int(m["layers"]), int(m["seed"])


def shown(value: Any, limit: int = 80) -> str:
    """repr() cut to `limit` characters, for error messages that echo user input."""
    r = repr(value) if not isinstance(value, (list, dict)) else f"<{type(value).__name__}>"
    return r if len(r) <= limit else r[: limit - 5] + "...'"


@dataclass
class Registry:
    path: Path
    org: str
    license: str
    recipe: Recipe
    checkpoints: CheckpointSchedule
    eval_seed: int
    envs: dict[str, EnvSpec]
    grids: dict[str, Grid]
    eval_video: bool = (
        True  # record replay.mp4 (one episode) when a model trained here is evaluated
    )
    default_eval_episodes: int = 10  # for models whose env is not in this registry
    # Trajectory Transformer settings over dtzoo.tt's paper defaults: {"model": {...},
    # "train": {...}, "plan": {...}, "discretization": "quantile"} (docs/registry.md)
    tt: dict[str, Any] = field(default_factory=dict)

    def env(self, key: str) -> EnvSpec:
        if key not in self.envs:
            raise UsageError(
                f"unknown env {shown(key)}: {closest(str(key)[:200], sorted(self.envs))}"
            )
        return self.envs[key]

    def grid(self, name: str) -> list[str]:
        """The model ids of a named grid."""
        if name not in self.grids:
            names = ", ".join(sorted(self.grids))
            hint = closest(str(name)[:200], sorted(self.grids))
            if hint.startswith("did you mean"):
                raise UsageError(f"unknown grid {shown(name)}: {hint} (grids: {names})")
            raise UsageError(f"unknown grid {shown(name)}; grids: {names}")
        return self.grids[name].model_ids()

    def all_model_ids(self) -> list[str]:
        return list(dict.fromkeys(m for g in self.grids.values() for m in g.model_ids()))

    def resolve(self, mid: str) -> ModelSpec:
        """Parse and validate a model id against the registry."""
        if not isinstance(mid, str) or not MODEL_ID_RE.fullmatch(mid):
            hint = closest(str(mid)[:200], self.all_model_ids())
            raise UsageError(
                f"malformed model id {shown(mid)} (expected <env>-<N>L-seed<K>); {hint}"
            )
        env_key, n_layers, seed = parse_model_id(mid)
        if env_key not in self.envs:
            hint = closest(mid[:200], self.all_model_ids())
            raise UsageError(f"unknown model id {shown(mid)}: no env {shown(env_key)}; {hint}")
        if n_layers < 1:
            raise UsageError(f"model id {mid!r}: layers must be >= 1")
        env = self.envs[env_key]
        if family_of(mid) == TT:
            return ModelSpec(mid, env, n_layers, seed, self.recipe, family=TT, tt=self.tt)
        recipe = dataclasses.replace(self.recipe, **env.recipe)
        problem = recipe.arch_problem()
        if problem:
            raise RegistryError(f"{self.path}: env {env_key!r}: recipe {problem}")
        from dtzoo.checkpoint import check_model_size

        check_model_size(
            {**recipe.arch_settings(), "n_layers": n_layers, "max_ep_len": env.max_ep_len},
            where=mid,
            error=UsageError,
        )
        return ModelSpec(model_id=mid, env=env, n_layers=n_layers, seed=seed, recipe=recipe)

    def select(self, grid: str | None, ids: list[str]) -> list[ModelSpec]:
        """What a command acts on: a grid, or explicit ids (not both, not neither)."""
        if grid and ids:
            raise UsageError("give either --grid or model ids, not both")
        if not grid and not ids:
            raise UsageError("nothing to do: give --grid NAME or one or more model ids")
        return [self.resolve(m) for m in (self.grid(grid) if grid else ids)]


# ----------------------------------------------------------------------------- loading


class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: ~5x faster
    """A SafeLoader whose mappings remember the line each key sits on (for error messages)."""


class _Map(dict):
    lines: dict[str, int]
    line: int


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    m = _Map(loader.construct_mapping(node, deep=True))
    m.line = node.start_mark.line + 1
    m.lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if hasattr(k, "value")}
    return m


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


def default_registry_path() -> Path:
    """$DTZOO_REGISTRY, else the registry.yaml shipped with the package."""
    env = os.environ.get("DTZOO_REGISTRY")
    if env:
        return Path(env)
    return Path(str(resources.files("dtzoo") / "registry.yaml"))


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Load and validate a registry file; errors name the file and line."""
    path = Path(path) if path else default_registry_path()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_REGISTRY_BYTES + 1)
    except OSError as e:
        raise RegistryError(f"cannot read registry {path}: {e.strerror or e}") from None
    if len(data) > MAX_REGISTRY_BYTES:
        raise RegistryError(f"{path}: larger than {MAX_REGISTRY_BYTES >> 20} MiB; not a registry")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RegistryError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x})") from None
    try:
        raw = _load_yaml(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RegistryError(f"{where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:  # e.g. a control character (ReaderError)
        raise RegistryError(f"{path}: invalid YAML: {str(e).splitlines()[0][:200]}") from None
    except RecursionError:
        raise RegistryError(f"{path}: invalid YAML: nested too deeply") from None
    return _Parser(path).registry(raw)


def _load_yaml(text: str) -> Any:
    """yaml.load with aliases bounded: a few hundred bytes of nested aliases ("billion laughs")
    expand to gigabytes once anything walks or prints the tree, so the node graph is measured
    with every alias followed before anything is built, and recursive aliases are refused."""
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise yaml.YAMLError(
                f"more than {MAX_YAML_NODES} nodes once its aliases are expanded (an alias bomb?)"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the tree with aliases followed; memoised, so the cost is the graph's size."""
    key = id(node)
    if key in memo:
        if memo[key] < 0:
            raise yaml.YAMLError("a recursive alias (a node that contains itself)")
        return memo[key]
    memo[key] = -1  # in progress
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(c, memo) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[key] = min(size, MAX_YAML_NODES + 1)  # saturate: the sum stays small
    return memo[key]


class _Parser:
    """Turns the YAML tree into dataclasses, raising RegistryError with file:line."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, node: Any, key: str | None, msg: str) -> RegistryError:
        line = getattr(node, "lines", {}).get(key) if key else None
        line = line or getattr(node, "line", None)
        where = f"{self.path}:{line}" if line else str(self.path)
        return RegistryError(f"{where}: {msg}")

    def mapping(self, node: Any, what: str, parent: Any = None, key: str | None = None) -> _Map:
        if node is None:
            node = _Map()
        if not isinstance(node, dict):
            raise self.fail(parent, key, f"{what} must be a mapping")
        return node if isinstance(node, _Map) else _Map(node)

    def check_keys(self, node: _Map, allowed: list[str], what: str) -> None:
        for k in node:
            if k not in allowed:
                raise self.fail(
                    node, k, f"unknown key {shown(k)} in {what}; {closest(str(k), allowed)}"
                )

    def integer(
        self,
        node: _Map,
        key: str,
        what: str,
        default: int,
        minimum: int,
        maximum: int | None = None,
    ) -> int:
        v = node.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(
                node, key, f"{what}.{key} must be an integer >= {minimum}, got {shown(v)}"
            )
        maximum = maximum or LIMITS.get(key, MAX_STEPS)
        if v > maximum:
            raise self.fail(node, key, f"{what}.{key} must be <= {maximum}, got {shown(v)}")
        return v

    def string(self, node: _Map, key: str, what: str, default: str | None = None) -> str:
        v = node.get(key, default)
        if not isinstance(v, str):
            raise self.fail(node, key, f"{what}.{key} must be a string, got {shown(v)}")
        return v

    def numbers(self, node: _Map, key: str, what: str) -> list[float]:
        """A non-empty, bounded list of finite numbers."""
        v = node[key]
        if (
            not isinstance(v, list)
            or not v
            or len(v) > LIMITS["targets"]
            or not all(
                isinstance(x, (int, float))
                and not isinstance(x, bool)
                and abs(x) < 1e15
                and math.isfinite(x)
                for x in v
            )
        ):
            raise self.fail(
                node,
                key,
                f"{what}.{key} must be a list of numbers (finite, 1 to "
                f"{LIMITS['targets']} of them)",
            )
        return [float(x) for x in v]

    def number(self, node: _Map, key: str, what: str) -> float:
        """A finite number (not a bool, not .inf or .nan)."""
        v = node[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(node, key, f"{what}.{key} must be a number, got {shown(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise self.fail(node, key, f"{what}.{key} must be a finite number, got {v}")
        if isinstance(v, int) and abs(v) > 10**15:  # (float() of 10**400 would overflow)
            raise self.fail(node, key, f"{what}.{key} is too large: {shown(v)}")
        return v

    def dataclass_fields(self, node: _Map, cls: type, what: str) -> dict[str, Any]:
        """Keys of dataclass `cls`, each checked against its field's declared type (int, float,
        str or bool) and the bounds and choices of a `setting` field (else LIMITS)."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        for k in node:
            if k not in names:
                raise self.fail(
                    node, k, f"unknown key {shown(k)} in {what}; {closest(str(k), list(names))}"
                )
        types = field_types(cls)
        out = {}
        for k, v in node.items():
            want = types[k]
            if want is bool and not isinstance(v, bool):
                raise self.fail(node, k, f"{what}.{k} must be true or false, got {shown(v)}")
            if want in (int, float):
                v = self.number(node, k, what)  # (a number: .inf, .nan and 1e400 are refused)
                if want is int and not (isinstance(v, int) or v.is_integer()):
                    raise self.fail(node, k, f"{what}.{k} must be an integer, got {v!r}")
                top = names[k].metadata.get("le", LIMITS.get(k, MAX_STEPS))
                if want is int and v > top:
                    raise self.fail(node, k, f"{what}.{k} must be <= {top}, got {v}")
            if want is str and not isinstance(v, str):
                raise self.fail(node, k, f"{what}.{k} must be a string, got {shown(v)}")
            out[k] = int(v) if want is int else v
            problem = value_problem(names[k], out[k])
            if problem:
                raise self.fail(node, k, f"{what}.{k} {problem}")
        return out

    def recipe_fields(self, node: _Map, what: str) -> dict[str, Any]:
        """Recipe keys, with their values checked here rather than failing hours into training."""
        return self.dataclass_fields(node, Recipe, what)

    def checkpoint_fields(self, node: _Map, what: str) -> dict[str, int]:
        """CheckpointSchedule keys: integers >= 0 (`log: 0`, `evenly: 0`: that part is off),
        `every` >= 1."""
        out = self.dataclass_fields(node, CheckpointSchedule, what)
        for k, v in out.items():
            if v < 0:
                raise self.fail(node, k, f"{what}.{k} must be an integer >= 0, got {v!r}")
        if out.get("every", 1) < 1:
            raise self.fail(node, "every", f"{what}.every must be >= 1")
        return out

    def registry(self, raw: Any) -> Registry:
        root = self.mapping(raw, "the registry")
        for k in root:
            if k not in {"hub", "recipe", "checkpoints", "eval", "envs", "grids", "tt"}:
                raise self.fail(root, k, f"unknown top-level key {k!r}")
        hub = self.mapping(root.get("hub"), "hub", root, "hub")
        self.check_keys(hub, ["org", "license"], "hub")
        for k in hub:
            if not isinstance(hub[k], str):
                raise self.fail(hub, k, f"hub.{k} must be a string, got {shown(hub[k])}")
        recipe_node = self.mapping(root.get("recipe"), "recipe", root, "recipe")
        recipe = Recipe(**self.recipe_fields(recipe_node, "recipe"))
        ckpt_node = self.mapping(root.get("checkpoints"), "checkpoints", root, "checkpoints")
        ckpt = CheckpointSchedule(**self.checkpoint_fields(ckpt_node, "checkpoints"))
        evaln = self.mapping(root.get("eval"), "eval", root, "eval")
        self.check_keys(evaln, ["episodes", "seed", "video"], "eval")
        default_episodes = self.integer(evaln, "episodes", "eval", 10, 1)
        eval_seed = self.integer(evaln, "seed", "eval", 0, 0)
        eval_video = evaln.get("video", True)
        if not isinstance(eval_video, bool):
            raise self.fail(
                evaln, "video", f"eval.video must be true or false, got {shown(eval_video)}"
            )
        envs_node = self.mapping(root.get("envs"), "envs", root, "envs")
        envs = {k: self.env(k, v, envs_node, default_episodes) for k, v in envs_node.items()}
        grids_node = self.mapping(root.get("grids"), "grids", root, "grids")
        grids = {k: self.grid(k, v, grids_node, envs) for k, v in grids_node.items()}
        tt = self.tt_settings(root) if "tt" in root else {}
        return Registry(
            path=self.path,
            org=str(hub.get("org", "dtzoo")),
            license=str(hub.get("license", "mit")),
            recipe=recipe,
            checkpoints=ckpt,
            eval_seed=eval_seed,
            envs=envs,
            grids=grids,
            eval_video=eval_video,
            default_eval_episodes=default_episodes,
            tt=tt,
        )

    def tt_settings(self, root: _Map) -> dict[str, Any]:
        """The `tt:` block: `model` (TTConfig), `train` (TTRecipe), `plan` (PlanSettings) keys
        and `discretization` (quantile | uniform) over the paper's defaults, each
        checked against its dataclass field (dtzoo.tt.settings: no torch) and bounded before
        anything is sized by it."""
        from dtzoo.tt.discretize import KINDS as DISCRETIZATIONS
        from dtzoo.tt.settings import PlanSettings, TTConfig, TTRecipe

        node = self.mapping(root.get("tt"), "tt", root, "tt")
        blocks = {"model": TTConfig, "train": TTRecipe, "plan": PlanSettings}
        self.check_keys(node, [*blocks, "discretization"], "tt")
        out = {}
        if "discretization" in node:
            if node["discretization"] not in DISCRETIZATIONS:
                raise self.fail(
                    node,
                    "discretization",
                    f"tt.discretization must be one of {', '.join(DISCRETIZATIONS)}, "
                    f"got {shown(node['discretization'])}",
                )
            out["discretization"] = node["discretization"]
        for name, cls in blocks.items():
            sub = self.mapping(node.get(name), f"tt.{name}", node, name)
            fixed = {"observation_dim", "action_dim", "n_layers", "betas"}  # from the data and id
            for k in sub:
                if k in fixed:
                    raise self.fail(sub, k, f"tt.{name}.{k} cannot be set in the registry")
            out[name] = self.dataclass_fields(sub, cls, f"tt.{name}")
            for k, v in out[name].items():
                top, low = TT_LIMITS.get(k), int(k != "context_transitions")
                if top is not None and isinstance(v, (int, float)) and not low <= v <= top:
                    raise self.fail(sub, k, f"tt.{name}.{k} must be from {low} to {top}, got {v}")
            try:  # what the settings check together (d_model / n_heads, plan_freq <= horizon)
                dims = {"observation_dim": 1, "action_dim": 1} if cls is TTConfig else {}
                cls(**dims, **out[name])
            except (DtzooError, TypeError, ValueError) as e:
                raise self.fail(node, name, f"tt.{name}: {e}") from None
        return out

    def env(self, key: str, node: Any, parent: _Map, default_episodes: int) -> EnvSpec:
        if not isinstance(key, str) or not ENV_KEY_RE.fullmatch(key):
            raise self.fail(parent, key, f"env key {shown(key)} must match [a-z0-9-]")
        if any(key.endswith(f"-{tag}") for tag in FAMILIES):  # hopper-tt-1L-seed0 is a TT's id
            raise self.fail(parent, key, f"env key {shown(key)} cannot end with a family tag (-tt)")
        node = self.mapping(node, f"envs.{key}", parent, key)
        required = [
            "gym_id",
            "dataset",
            "max_ep_len",
            "reward_scale",
            "target_returns",
            "ref_scores",
        ]
        for r in required:
            if r not in node:
                raise self.fail(parent, key, f"envs.{key} is missing required key {r!r}")
        allowed = set(required) | {
            "prepare",
            "recipe",
            "eval",
            "description",
            "obs",
            "frame_stack",
            "max_episode_steps",
            "checkpoints",
        }
        for k in node:
            if k not in allowed:
                raise self.fail(
                    node,
                    k,
                    f"unknown key {shown(k)} in envs.{key}; {closest(str(k), sorted(allowed))}",
                )
        for k in ("gym_id", "dataset"):
            self.string(node, k, f"envs.{key}")
        self.string(node, "description", f"envs.{key}", "")
        tr = self.numbers(node, "target_returns", f"envs.{key}")
        refs = node["ref_scores"]
        if refs == "dataset":  # the Minari dataset's ref_min_score / ref_max_score
            refs = None
        elif (
            not isinstance(refs, dict)
            or set(refs) != {"random", "expert"}
            or not all(
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and abs(v) < 1e15
                and math.isfinite(v)
                for v in refs.values()
            )
            or refs["random"] == refs["expert"]
        ):
            raise self.fail(
                node,
                "ref_scores",
                f"envs.{key}.ref_scores needs distinct numbers 'random' and 'expert' "
                "(finite), or the word 'dataset'",
            )
        for k in ("max_ep_len", "reward_scale"):
            v = node[k]
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not 0 < v < 1e15
                or not math.isfinite(v)
            ):
                raise self.fail(
                    node, k, f"envs.{key}.{k} must be a positive number, got {shown(v)}"
                )
        self.integer(node, "max_ep_len", f"envs.{key}", 1, 1)
        recipe_node = self.mapping(node.get("recipe"), f"envs.{key}.recipe", node, "recipe")
        recipe = self.recipe_fields(recipe_node, f"envs.{key}.recipe")
        evaln = self.mapping(node.get("eval"), f"envs.{key}.eval", node, "eval")
        self.check_keys(evaln, ["episodes"], f"envs.{key}.eval")
        episodes = self.integer(evaln, "episodes", f"envs.{key}.eval", default_episodes, 1)
        from dtzoo.observations import DEFAULT_KIND, KINDS

        obs = node.get("obs", DEFAULT_KIND)
        if not isinstance(obs, str) or obs not in KINDS:
            raise self.fail(
                node,
                "obs",
                f"envs.{key}.obs must be one of {', '.join(KINDS)}, got {shown(obs)}",
            )
        kind = KINDS[obs]
        frame_stack = self.integer(node, "frame_stack", f"envs.{key}", kind.default_frame_stack, 1)
        if frame_stack > 1 and not kind.image:
            raise self.fail(
                node, "frame_stack", f"envs.{key}.frame_stack applies to image observations only"
            )
        max_steps = node.get("max_episode_steps")
        if max_steps is not None:
            max_steps = self.integer(node, "max_episode_steps", f"envs.{key}", 1, 1)
        prepare = node.get("prepare")
        if prepare is not None:
            self.check_prepare(
                self.mapping(prepare, f"envs.{key}.prepare", node, "prepare"), f"envs.{key}.prepare"
            )
        return EnvSpec(
            key=key,
            gym_id=str(node["gym_id"]),
            dataset=str(node["dataset"]),
            max_ep_len=int(node["max_ep_len"]),
            reward_scale=float(node["reward_scale"]),
            target_returns=tr,
            ref_scores=None if refs is None else {k: float(v) for k, v in refs.items()},
            prepare=dict(prepare) if prepare else None,
            recipe=recipe,
            eval_episodes=episodes,
            obs=obs,
            frame_stack=frame_stack,
            max_episode_steps=max_steps,
            checkpoints=self.checkpoint_fields(
                self.mapping(
                    node.get("checkpoints"), f"envs.{key}.checkpoints", node, "checkpoints"
                ),
                f"envs.{key}.checkpoints",
            ),
        )

    def check_prepare(self, node: _Map, what: str) -> None:
        """The arguments zoo.prepare_env passes to collect.prepare_dataset."""
        self.check_keys(node, list(PREPARE_KEYS), what)
        if "policy" in node:
            self.string(node, "policy", what)
        self.integer(node, "episodes", what, 1, 1, maximum=10**6)
        self.integer(node, "seed", what, 0, 0, maximum=MAX_SEED)
        if node.get("ref_episodes") is not None:
            self.integer(node, "ref_episodes", what, 1, 1)
        if "noise" in node:
            self.numbers(node, "noise", what)

    def grid(self, name: str, node: Any, parent: _Map, envs: dict[str, EnvSpec]) -> Grid:
        if not isinstance(name, str):
            raise self.fail(parent, name, f"grid name {shown(name)} must be a string")
        node = self.mapping(node, f"grids.{name}", parent, name)
        self.check_keys(node, ["envs", "layers", "seeds", "description", "family"], f"grids.{name}")
        family = node.get("family", "dt")
        if family not in FAMILIES:
            raise self.fail(
                node,
                "family",
                f"grids.{name}.family must be one of {', '.join(FAMILIES)}, got {shown(family)}",
            )
        for r in ("envs", "layers", "seeds"):
            if not isinstance(node.get(r), list) or not node[r]:
                raise self.fail(
                    node if r in node else parent,
                    r if r in node else name,
                    f"grids.{name}.{r} must be a non-empty list",
                )
        for e in node["envs"]:
            if not isinstance(e, str) or e not in envs:
                raise self.fail(
                    node,
                    "envs",
                    f"grids.{name} names unknown env {shown(e)}; "
                    f"{closest(str(e)[:200], sorted(envs))}",
                )
        for r, top in (("layers", MAX_LAYERS), ("seeds", MAX_SEED)):
            if not all(
                isinstance(x, int) and not isinstance(x, bool) and (r == "layers") <= x <= top
                for x in node[r]
            ):
                raise self.fail(
                    node,
                    r,
                    f"grids.{name}.{r} must be a list of non-negative integers "
                    f"(from {int(r == 'layers')} to {top})",
                )
        if len(node["envs"]) * len(node["layers"]) * len(node["seeds"]) > 10**5:
            raise self.fail(node, "envs", f"grids.{name} has more than 100000 cells")
        return Grid(
            name,
            list(node["envs"]),
            list(node["layers"]),
            list(node["seeds"]),
            self.string(node, "description", f"grids.{name}", ""),
            FAMILIES[family],
        )
