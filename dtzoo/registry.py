"""The registry: envs, their datasets, the training recipe and the named grids, from YAML.

    >>> reg = load_registry()                      # $DTZOO_REGISTRY or the bundled registry.yaml
    >>> reg.grid("tiny")[0]
    'pendulum-1L-seed0'
    >>> reg.resolve("hopper-3L-seed2").env.gym_id
    'Hopper-v5'
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dtzoo.errors import RegistryError, UsageError, closest

ENV_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# no leading zeros: "hopper-01L-seed0" would be a second name (and run, and repo) for hopper-1L-seed0
MODEL_ID_RE = re.compile(
    r"^(?P<env>[a-z0-9][a-z0-9-]*)-(?P<layers>0|[1-9]\d*)L-seed(?P<seed>0|[1-9]\d*)$")


@dataclass
class Recipe:
    """Architecture and optimisation settings for one training run (the DT paper's by default)."""

    context_len: int = 20
    d_model: int = 128
    n_heads: int = 1
    d_mlp: int = 512
    activation: str = "relu"
    dropout: float = 0.1
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 10_000
    grad_clip: float = 0.25
    batch_size: int = 64
    steps: int = 100_000
    precision: str = "fp32"  # or "bf16": bfloat16 autocast for the forward pass


@dataclass
class CheckpointSchedule:
    """Steps 0, 1, 2, 4, ..., log_until, then every `every` steps, and the final step."""

    log_until: int = 512
    every: int = 1000

    def steps(self, total: int) -> list[int]:
        """All checkpoint steps of a run of `total` steps: `CheckpointSchedule().steps(3000)`."""
        out = {0, total}
        s = 1
        while s <= min(self.log_until, total):
            out.add(s)
            s *= 2
        out.update(range(self.every, total, self.every))
        return sorted(out)


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
    obs: str = "vector"  # observation kind (dtzoo.observations): vector | atari | minigrid-flat | minigrid-onehot
    frame_stack: int = 1  # frames per state for image kinds (stacked on the fly)
    max_episode_steps: int | None = None  # TimeLimit for collection and eval (None: the gym default)

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


@dataclass
class Grid:
    name: str
    envs: list[str]
    layers: list[int]
    seeds: list[int]
    description: str = ""

    def model_ids(self) -> list[str]:
        return [
            model_id(env, n, s) for env in self.envs for n in self.layers for s in self.seeds
        ]


def model_id(env: str, n_layers: int, seed: int) -> str:
    """`model_id("hopper", 1, 0)` -> "hopper-1L-seed0"."""
    return f"{env}-{n_layers}L-seed{seed}"


def parse_model_id(mid: str) -> tuple[str, int, int]:
    """Split a model id from the right: "hopper-expert-3L-seed2" -> ("hopper-expert", 3, 2)."""
    m = MODEL_ID_RE.match(mid)
    if not m:
        raise UsageError(
            f"malformed model id {mid!r}: expected <env>-<N>L-seed<K>, e.g. pendulum-1L-seed0"
        )
    return m["env"], int(m["layers"]), int(m["seed"])


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

    def env(self, key: str) -> EnvSpec:
        if key not in self.envs:
            raise UsageError(f"unknown env {key!r}: {closest(key, sorted(self.envs))}")
        return self.envs[key]

    def grid(self, name: str) -> list[str]:
        """The model ids of a named grid."""
        if name not in self.grids:
            names = ", ".join(sorted(self.grids))
            hint = closest(name, sorted(self.grids))
            if hint.startswith("did you mean"):
                raise UsageError(f"unknown grid {name!r}: {hint} (grids: {names})")
            raise UsageError(f"unknown grid {name!r}; grids: {names}")
        return self.grids[name].model_ids()

    def all_model_ids(self) -> list[str]:
        return list(dict.fromkeys(m for g in self.grids.values() for m in g.model_ids()))

    def resolve(self, mid: str) -> ModelSpec:
        """Parse and validate a model id against the registry."""
        if not MODEL_ID_RE.match(mid):
            hint = closest(mid, self.all_model_ids())
            raise UsageError(f"malformed model id {mid!r} (expected <env>-<N>L-seed<K>); {hint}")
        env_key, n_layers, seed = parse_model_id(mid)
        if env_key not in self.envs:
            hint = closest(mid, self.all_model_ids())
            raise UsageError(f"unknown model id {mid!r}: no env {env_key!r}; {hint}")
        if n_layers < 1:
            raise UsageError(f"model id {mid!r}: layers must be >= 1")
        env = self.envs[env_key]
        recipe = dataclasses.replace(self.recipe, **env.recipe)
        if recipe.d_model % recipe.n_heads:
            raise RegistryError(f"{self.path}: env {env_key!r}: recipe d_model {recipe.d_model} is "
                                f"not divisible by n_heads {recipe.n_heads}")
        return ModelSpec(model_id=mid, env=env, n_layers=n_layers, seed=seed, recipe=recipe)

    def select(self, grid: str | None, ids: list[str]) -> list[ModelSpec]:
        """What a command acts on: a grid, or explicit ids (not both, not neither)."""
        if grid and ids:
            raise UsageError("give either --grid or model ids, not both")
        if not grid and not ids:
            raise UsageError("nothing to do: give --grid NAME or one or more model ids")
        return [self.resolve(m) for m in (self.grid(grid) if grid else ids)]


# ----------------------------------------------------------------------------- loading


class _LineLoader(yaml.SafeLoader):
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
        text = path.read_text()
    except OSError as e:
        raise RegistryError(f"cannot read registry {path}: {e.strerror}") from None
    try:
        raw = yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RegistryError(f"{where}: invalid YAML: {e.problem or e.context}") from None
    return _Parser(path).registry(raw)


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
                raise self.fail(node, k, f"unknown key {k!r} in {what}; {closest(str(k), allowed)}")

    def integer(self, node: _Map, key: str, what: str, default: int, minimum: int) -> int:
        v = node.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(node, key, f"{what}.{key} must be an integer >= {minimum}, got {v!r}")
        return v

    def dataclass_fields(self, node: _Map, cls: type, what: str) -> dict[str, Any]:
        names = {f.name: f for f in dataclasses.fields(cls)}
        for k in node:
            if k not in names:
                raise self.fail(node, k, f"unknown key {k!r} in {what}; {closest(k, list(names))}")
        out = {}
        for k, v in node.items():
            want = type(names[k].default)
            if want in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise self.fail(node, k, f"{what}.{k} must be a number, got {v!r}")
            if want is str and not isinstance(v, str):
                raise self.fail(node, k, f"{what}.{k} must be a string, got {v!r}")
            out[k] = int(v) if want is int and float(v).is_integer() else v
            if want is int and not float(v).is_integer():
                raise self.fail(node, k, f"{what}.{k} must be an integer, got {v!r}")
        return out

    def recipe_fields(self, node: _Map, what: str) -> dict[str, Any]:
        """Recipe keys, with their values checked here rather than failing hours into training."""
        out = self.dataclass_fields(node, Recipe, what)
        choices = {"activation": ("relu", "gelu", "gelu_exact", "tanh"), "precision": ("fp32", "bf16")}
        for k, allowed in choices.items():
            if k in out and out[k] not in allowed:
                raise self.fail(node, k, f"{what}.{k} must be one of {', '.join(allowed)}, got {out[k]!r}")
        for k in ("context_len", "d_model", "n_heads", "d_mlp", "batch_size", "steps", "lr"):
            if k in out and out[k] <= 0:
                raise self.fail(node, k, f"{what}.{k} must be positive, got {out[k]!r}")
        for k in ("dropout", "weight_decay", "warmup_steps", "grad_clip"):
            if k in out and out[k] < 0:
                raise self.fail(node, k, f"{what}.{k} must be >= 0, got {out[k]!r}")
        if "dropout" in out and out["dropout"] >= 1:
            raise self.fail(node, "dropout", f"{what}.dropout must be below 1, got {out['dropout']!r}")
        return out

    def registry(self, raw: Any) -> Registry:
        root = self.mapping(raw, "the registry")
        for k in root:
            if k not in {"hub", "recipe", "checkpoints", "eval", "envs", "grids"}:
                raise self.fail(root, k, f"unknown top-level key {k!r}")
        hub = self.mapping(root.get("hub"), "hub", root, "hub")
        self.check_keys(hub, ["org", "license"], "hub")
        for k in hub:
            if not isinstance(hub[k], str):
                raise self.fail(hub, k, f"hub.{k} must be a string, got {hub[k]!r}")
        recipe_node = self.mapping(root.get("recipe"), "recipe", root, "recipe")
        recipe = Recipe(**self.recipe_fields(recipe_node, "recipe"))
        ckpt_node = self.mapping(root.get("checkpoints"), "checkpoints", root, "checkpoints")
        ckpt = CheckpointSchedule(**self.dataclass_fields(ckpt_node, CheckpointSchedule, "checkpoints"))
        if ckpt.every < 1:
            raise self.fail(ckpt_node, "every", "checkpoints.every must be >= 1")
        evaln = self.mapping(root.get("eval"), "eval", root, "eval")
        self.check_keys(evaln, ["episodes", "seed"], "eval")
        default_episodes = self.integer(evaln, "episodes", "eval", 10, 1)
        eval_seed = self.integer(evaln, "seed", "eval", 0, 0)
        envs_node = self.mapping(root.get("envs"), "envs", root, "envs")
        envs = {k: self.env(k, v, envs_node, default_episodes) for k, v in envs_node.items()}
        grids_node = self.mapping(root.get("grids"), "grids", root, "grids")
        grids = {k: self.grid(k, v, grids_node, envs) for k, v in grids_node.items()}
        return Registry(
            path=self.path,
            org=str(hub.get("org", "dtzoo")),
            license=str(hub.get("license", "mit")),
            recipe=recipe,
            checkpoints=ckpt,
            eval_seed=eval_seed,
            envs=envs,
            grids=grids,
        )

    def env(self, key: str, node: Any, parent: _Map, default_episodes: int) -> EnvSpec:
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise self.fail(parent, key, f"env key {key!r} must match [a-z0-9-]")
        node = self.mapping(node, f"envs.{key}", parent, key)
        required = ["gym_id", "dataset", "max_ep_len", "reward_scale", "target_returns", "ref_scores"]
        for r in required:
            if r not in node:
                raise self.fail(parent, key, f"envs.{key} is missing required key {r!r}")
        allowed = set(required) | {"prepare", "recipe", "eval", "description", "obs", "frame_stack",
                                   "max_episode_steps"}
        for k in node:
            if k not in allowed:
                raise self.fail(node, k, f"unknown key {k!r} in envs.{key}; {closest(k, sorted(allowed))}")
        tr = node["target_returns"]
        if not isinstance(tr, list) or not tr or not all(isinstance(x, (int, float)) for x in tr):
            raise self.fail(node, "target_returns", f"envs.{key}.target_returns must be a list of numbers")
        refs = node["ref_scores"]
        if refs == "dataset":  # the Minari dataset's ref_min_score / ref_max_score
            refs = None
        elif (not isinstance(refs, dict) or set(refs) != {"random", "expert"}
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in refs.values())
                or refs["random"] == refs["expert"]):
            raise self.fail(node, "ref_scores",
                            f"envs.{key}.ref_scores needs distinct numbers 'random' and 'expert', "
                            "or the word 'dataset'")
        for k in ("max_ep_len", "reward_scale"):
            if isinstance(node[k], bool) or not isinstance(node[k], (int, float)) or node[k] <= 0:
                raise self.fail(node, k, f"envs.{key}.{k} must be a positive number")
        recipe_node = self.mapping(node.get("recipe"), f"envs.{key}.recipe", node, "recipe")
        recipe = self.recipe_fields(recipe_node, f"envs.{key}.recipe")
        evaln = self.mapping(node.get("eval"), f"envs.{key}.eval", node, "eval")
        self.check_keys(evaln, ["episodes"], f"envs.{key}.eval")
        episodes = self.integer(evaln, "episodes", f"envs.{key}.eval", default_episodes, 1)
        from dtzoo.observations import OBS_KINDS, is_image

        obs = node.get("obs", "vector")
        if obs not in OBS_KINDS:
            raise self.fail(node, "obs", f"envs.{key}.obs must be one of {', '.join(OBS_KINDS)}, got {obs!r}")
        frame_stack = self.integer(node, "frame_stack", f"envs.{key}", 4 if is_image(obs) else 1, 1)
        if frame_stack > 1 and not is_image(obs):
            raise self.fail(node, "frame_stack", f"envs.{key}.frame_stack applies to image observations only")
        max_steps = node.get("max_episode_steps")
        if max_steps is not None:
            max_steps = self.integer(node, "max_episode_steps", f"envs.{key}", 1, 1)
        prepare = node.get("prepare")
        if prepare is not None and not isinstance(prepare, dict):
            raise self.fail(node, "prepare", f"envs.{key}.prepare must be a mapping")
        return EnvSpec(
            key=key,
            gym_id=str(node["gym_id"]),
            dataset=str(node["dataset"]),
            max_ep_len=int(node["max_ep_len"]),
            reward_scale=float(node["reward_scale"]),
            target_returns=[float(x) for x in tr],
            ref_scores=None if refs is None else {k: float(v) for k, v in refs.items()},
            prepare=dict(prepare) if prepare else None,
            recipe=recipe,
            eval_episodes=episodes,
            obs=obs,
            frame_stack=frame_stack,
            max_episode_steps=max_steps,
        )

    def grid(self, name: str, node: Any, parent: _Map, envs: dict[str, EnvSpec]) -> Grid:
        node = self.mapping(node, f"grids.{name}", parent, name)
        self.check_keys(node, ["envs", "layers", "seeds", "description"], f"grids.{name}")
        for r in ("envs", "layers", "seeds"):
            if not isinstance(node.get(r), list) or not node[r]:
                raise self.fail(node if r in node else parent, r if r in node else name,
                                f"grids.{name}.{r} must be a non-empty list")
        for e in node["envs"]:
            if e not in envs:
                raise self.fail(node, "envs", f"grids.{name} names unknown env {e!r}; {closest(str(e), sorted(envs))}")
        for r in ("layers", "seeds"):
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= (r == "layers") for x in node[r]):
                raise self.fail(node, r, f"grids.{name}.{r} must be a list of non-negative integers")
        return Grid(name, list(node["envs"]), list(node["layers"]), list(node["seeds"]),
                    str(node.get("description", "")))
