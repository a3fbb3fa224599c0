"""Interop with transformers' `DecisionTransformerModel`, both ways.

Export a dtzoo model so that anyone with transformers can load it, and import a transformers DT
checkpoint (for example the Hub's `edbeeching/decision-transformer-gym-hopper-medium` layout) as
a dtzoo model with hook points:

    >>> from dtzoo.convert import export_transformers, load_transformers
    >>> export_transformers(model, Path("hopper-hf"))           # config.json + model.safetensors
    >>> hf = transformers.DecisionTransformerModel.from_pretrained("hopper-hf")
    >>> model2 = load_transformers("hopper-hf")  # back to a dtzoo DecisionTransformer

How the two models line up:

* Our `blocks.{i}` are transformers' `encoder.h.{i}`; GPT-2 stores its projections as `Conv1D`
  (weight of shape (in, out), the transpose of `nn.Linear`), so those weights are transposed.
  Transposition is exact, so dtzoo -> transformers -> dtzoo is bitwise lossless.
* transformers' `DecisionTransformerModel.forward` calls its GPT-2 with
  `position_ids=zeros`, so the GPT-2 adds `encoder.wpe.weight[0]` to every token right after
  `embed_ln`. LayerNorm(x) + c is LayerNorm(x) with bias `b + c`, so on import that row is
  folded into `embed_ln.bias` (exact up to one float rounding per element; when the row is all
  zeros, as in our exports, the bias is copied unchanged). On export `wpe` is all zeros. The other
  rows of `wpe` are never read by transformers' DT, so they are ignored.
* transformers' `predict_state` and `predict_return` heads (and the unused `encoder.wte`) have no
  dtzoo counterpart: they do not affect the action. Export writes zeros there, import ignores them.
* A discrete dtzoo model (one-hot actions in, logits out) is `action_tanh=False`; importing a
  checkpoint with `action_tanh=False` gives `discrete=True` (the same network: no tanh on the
  action head).
* transformers' config has no context length. Export records ours as `dtzoo_context_len` in
  config.json (transformers keeps unknown keys); import reads it, or takes `context_len`
  (default 20, the DT paper's K).

transformers is an optional dependency: only `to_transformers` and `export_transformers` need
it. Import (`from_transformers`, `load_transformers`) reads config.json and the weights with
safetensors / torch only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dtzoo.architecture import Architecture
from dtzoo.errors import CheckpointError, DtzooError
from dtzoo.model import DecisionTransformer, DTConfig

if TYPE_CHECKING:  # pragma: no cover - typing only
    import transformers

__all__ = [
    "MissingDependencyError",
    "export_transformers",
    "from_transformers",
    "from_transformers_state_dict",
    "load_transformers",
    "to_transformers",
]

# the DT paper's K (the recipe's default); transformers' config does not record it
DEFAULT_CONTEXT_LEN = Architecture().context_len
# the Architecture settings transformers' config expresses (to_transformers maps each); any
# other setting exports only at its default, where the network is transformers' GPT-2
_HF_SETTINGS = ("context_len", "d_model", "n_heads", "d_mlp", "activation", "dropout")

# dtzoo activation name -> transformers ACT2FN name (GPT-2's "gelu_new" is the tanh approximation)
_ACT_TO_HF = {"relu": "relu", "gelu": "gelu_new", "gelu_exact": "gelu", "tanh": "tanh"}
# transformers ACT2FN name -> dtzoo activation name (only functions our model computes)
_ACT_FROM_HF = {
    "relu": "relu",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu": "gelu_exact",
    "gelu_python": "gelu_exact",
    "tanh": "tanh",
}
# DecisionTransformerConfig defaults, for keys a config.json leaves out (as transformers does)
_HF_DEFAULTS: dict[str, Any] = {
    "state_dim": 17,
    "act_dim": 4,
    "hidden_size": 128,
    "max_ep_len": 4096,
    "action_tanh": True,
    "n_layer": 3,
    "n_head": 1,
    "n_inner": None,
    "activation_function": "relu",
    "resid_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}
_LN_EPS = 1e-5  # nn.LayerNorm default: what our model (and transformers' embed_ln) uses
# tensors in a transformers DT checkpoint that do not affect the predicted action
_IGNORED_PREFIXES = ("predict_state.", "predict_return.", "encoder.wte.")
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # old GPT-2 causal-mask buffers


class MissingDependencyError(DtzooError, ImportError):
    """An optional dependency (transformers) is not installed."""


def _import_transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - exercised only without transformers
        raise MissingDependencyError(
            "exporting to transformers needs the transformers package: pip install transformers"
        ) from e
    return transformers


# ---------------------------------------------------------------------------------- key mapping


def _key_pairs(cfg: DTConfig) -> list[tuple[str, str, bool]]:
    """(dtzoo key, transformers key, transposed) for every dtzoo weight."""
    pairs: list[tuple[str, str, bool]] = []

    def same(name: str, params=("weight", "bias")) -> None:
        pairs.extend((f"{name}.{p}", f"{name}.{p}", False) for p in params)

    same("embed_timestep", ("weight",))
    for name in ("embed_return", "embed_state", "embed_action", "embed_ln"):
        same(name)
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}", f"encoder.h.{i}"
        for a, b, t in (
            ("ln1", "ln_1", False),
            ("attn.qkv", "attn.c_attn", True),
            ("attn.out", "attn.c_proj", True),
            ("ln2", "ln_2", False),
            ("mlp.fc_in", "mlp.c_fc", True),
            ("mlp.fc_out", "mlp.c_proj", True),
        ):
            pairs.append((f"{ours}.{a}.weight", f"{theirs}.{b}.weight", t))
            pairs.append((f"{ours}.{a}.bias", f"{theirs}.{b}.bias", False))
    pairs += [
        ("ln_final.weight", "encoder.ln_f.weight", False),
        ("ln_final.bias", "encoder.ln_f.bias", False),
        ("predict_action.weight", "predict_action.0.weight", False),
        ("predict_action.bias", "predict_action.0.bias", False),
    ]
    return pairs


def _expected_shapes(cfg: DTConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the transformers tensors we read, for the given architecture."""
    d, m = cfg.d_model, cfg.d_mlp
    shapes = {
        "embed_timestep.weight": (cfg.max_ep_len, d),
        "embed_return.weight": (d, 1),
        "embed_return.bias": (d,),
        "embed_state.weight": (d, cfg.state_dim),
        "embed_state.bias": (d,),
        "embed_action.weight": (d, cfg.act_dim),
        "embed_action.bias": (d,),
        "embed_ln.weight": (d,),
        "embed_ln.bias": (d,),
        "encoder.ln_f.weight": (d,),
        "encoder.ln_f.bias": (d,),
        "predict_action.0.weight": (cfg.act_dim, d),
        "predict_action.0.bias": (cfg.act_dim,),
    }
    for i in range(cfg.n_layers):
        h = f"encoder.h.{i}"
        shapes.update(
            {
                f"{h}.ln_1.weight": (d,),
                f"{h}.ln_1.bias": (d,),
                f"{h}.attn.c_attn.weight": (d, 3 * d),
                f"{h}.attn.c_attn.bias": (3 * d,),
                f"{h}.attn.c_proj.weight": (d, d),
                f"{h}.attn.c_proj.bias": (d,),
                f"{h}.ln_2.weight": (d,),
                f"{h}.ln_2.bias": (d,),
                f"{h}.mlp.c_fc.weight": (d, m),
                f"{h}.mlp.c_fc.bias": (m,),
                f"{h}.mlp.c_proj.weight": (m, d),
                f"{h}.mlp.c_proj.bias": (d,),
            }
        )
    return shapes


# --------------------------------------------------------------------------------------- export


def to_transformers(
    model: DecisionTransformer,
) -> tuple[transformers.DecisionTransformerConfig, dict[str, torch.Tensor]]:
    """The transformers config and state dict equivalent to `model` (needs transformers).

    >>> hf_config, hf_state = to_transformers(model)
    >>> hf = transformers.DecisionTransformerModel(hf_config)
    >>> hf.load_state_dict(hf_state, strict=True)

    `encoder.wpe` (whose row 0 transformers' DT adds to every token), `encoder.wte`,
    `predict_state` and `predict_return` are zeros: they do not affect the predicted action.
    """
    cfg = model.cfg
    if cfg.state_encoder != "linear":
        raise CheckpointError(
            f"state encoder {cfg.state_encoder!r} has no transformers equivalent: "
            "transformers' DecisionTransformerModel embeds states with one "
            "nn.Linear, so only vector-state models can be exported"
        )
    for f in dataclasses.fields(Architecture):
        value = getattr(cfg, f.name)
        if f.name not in _HF_SETTINGS and value != f.default:
            raise CheckpointError(
                f"{f.name} {value!r} has no transformers equivalent: transformers' "
                f"DecisionTransformerModel is the network with {f.name} {f.default!r}"
            )
    transformers = _import_transformers()
    if cfg.activation not in _ACT_TO_HF:
        raise CheckpointError(f"activation {cfg.activation!r} has no transformers equivalent")
    hf_config = transformers.DecisionTransformerConfig(
        state_dim=cfg.state_dim,
        act_dim=cfg.act_dim,
        hidden_size=cfg.d_model,
        max_ep_len=cfg.max_ep_len,
        action_tanh=not cfg.discrete,
        n_positions=3 * cfg.context_len,  # never read beyond row 0: the DT passes position_ids=0
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_mlp,
        activation_function=_ACT_TO_HF[cfg.activation],
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=_LN_EPS,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        add_cross_attention=False,
        # GPT-2's 50256 lies outside the DT's 1-token vocabulary; transformers warns about it
        bos_token_id=None,
        eos_token_id=None,
        dtzoo_context_len=cfg.context_len,
        architectures=["DecisionTransformerModel"],
    )
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for src, dst, transposed in _key_pairs(cfg):
        t = ours[src].detach().cpu()
        out[dst] = (t.t() if transposed else t).contiguous().clone()
    d, dtype = cfg.d_model, ours["embed_ln.bias"].dtype
    zeros = lambda *shape: torch.zeros(*shape, dtype=dtype)
    out["encoder.wte.weight"] = zeros(1, d)
    out["encoder.wpe.weight"] = zeros(3 * cfg.context_len, d)
    out["predict_state.weight"] = zeros(cfg.state_dim, d)
    out["predict_state.bias"] = zeros(cfg.state_dim)
    out["predict_return.weight"] = zeros(1, d)
    out["predict_return.bias"] = zeros(1)
    return hf_config, out


def export_transformers(model: DecisionTransformer, out_dir: Path) -> Path:
    """Write `model` as a transformers DT directory (config.json + model.safetensors).

    >>> path = export_transformers(model, Path("hopper-1L-seed0-hf"))
    >>> transformers.DecisionTransformerModel.from_pretrained(path)

    The loaded model predicts the same actions (float32 differences around 1e-7). Returns
    `out_dir`. Needs transformers.
    """
    transformers = _import_transformers()
    hf_config, state = to_transformers(model)
    hf = transformers.DecisionTransformerModel(hf_config)
    result = hf.load_state_dict(state, strict=True)
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict raises first
        raise CheckpointError(f"export does not match transformers' layout: {result}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------- import


def _config_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):  # a transformers DecisionTransformerConfig
        return config.to_dict()
    raise TypeError(f"expected a config dict or DecisionTransformerConfig, got {type(config)!r}")


def from_transformers_state_dict(
    config: Mapping[str, Any] | transformers.DecisionTransformerConfig,
    state_dict: Mapping[str, torch.Tensor],
    *,
    context_len: int | None = None,
    dropout: float | None = None,
) -> tuple[DTConfig, dict[str, torch.Tensor]]:
    """Convert an in-memory transformers DT (config, state dict) to dtzoo (DTConfig, state dict).

    >>> cfg, state = from_transformers_state_dict(hf.config, hf.state_dict())
    >>> model = DecisionTransformer(cfg); model.load_state_dict(state, strict=True)

    `encoder.wpe.weight[0]` is folded into `embed_ln.bias` (see the module docstring);
    `predict_state`, `predict_return` and `encoder.wte` are ignored. Raises CheckpointError
    naming the tensor when one is missing, mis-shaped or unknown, or when the config describes an
    architecture dtzoo cannot express.
    """
    c = {**_HF_DEFAULTS, **{k: v for k, v in _config_dict(config).items() if v is not None}}
    if c.get("n_inner") is None:
        c["n_inner"] = 4 * c["hidden_size"]
    model_type = c.get("model_type", "decision_transformer")
    if model_type != "decision_transformer":
        raise CheckpointError(
            f"config.json has model_type {model_type!r}, not 'decision_transformer'"
        )
    act = c["activation_function"]
    if act not in _ACT_FROM_HF:
        raise CheckpointError(
            f"activation_function {act!r} is not supported; dtzoo supports {sorted(_ACT_FROM_HF)}"
        )
    if abs(float(c["layer_norm_epsilon"]) - _LN_EPS) > 1e-12:
        raise CheckpointError(f"layer_norm_epsilon {c['layer_norm_epsilon']} is not {_LN_EPS}")
    if not c["scale_attn_weights"] or c["scale_attn_by_inverse_layer_idx"]:
        raise CheckpointError(
            "only scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False is supported"
        )
    if c["add_cross_attention"]:
        raise CheckpointError("add_cross_attention=True is not a Decision Transformer layout")
    if context_len is None:
        context_len = int(c.get("dtzoo_context_len") or DEFAULT_CONTEXT_LEN)
    try:
        cfg = DTConfig(
            state_dim=int(c["state_dim"]),
            act_dim=int(c["act_dim"]),
            discrete=not bool(c["action_tanh"]),
            n_layers=int(c["n_layer"]),
            d_model=int(c["hidden_size"]),
            n_heads=int(c["n_head"]),
            d_mlp=int(c["n_inner"]),
            context_len=context_len,
            max_ep_len=int(c["max_ep_len"]),
            activation=_ACT_FROM_HF[act],
            dropout=float(c["resid_pdrop"] if dropout is None else dropout),
        )
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"config.json describes an invalid model: {e}") from e

    shapes = _expected_shapes(cfg)
    for key, shape in shapes.items():
        if key not in state_dict:
            raise CheckpointError(f"checkpoint is missing tensor {key!r} (expected shape {shape})")
        got = tuple(state_dict[key].shape)
        if got != shape:
            raise CheckpointError(
                f"tensor {key!r} has shape {got}, expected {shape} from config.json"
            )
    wpe = state_dict.get("encoder.wpe.weight")
    if wpe is None:
        raise CheckpointError("checkpoint is missing tensor 'encoder.wpe.weight'")
    if wpe.dim() != 2 or wpe.shape[0] < 1 or wpe.shape[1] != cfg.d_model:
        raise CheckpointError(
            f"tensor 'encoder.wpe.weight' has shape {tuple(wpe.shape)}, expected (n_positions, "
            f"{cfg.d_model})"
        )
    unknown = sorted(
        k
        for k in state_dict
        if k not in shapes
        and k != "encoder.wpe.weight"
        and not k.startswith(_IGNORED_PREFIXES)
        and not k.endswith(_IGNORED_SUFFIXES)
    )
    if unknown:
        raise CheckpointError(
            f"checkpoint has tensors dtzoo does not know: {', '.join(unknown[:5])}"
            + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        )

    out: dict[str, torch.Tensor] = {}
    for ours, theirs, transposed in _key_pairs(cfg):
        t = state_dict[theirs].detach().cpu().to(torch.float32)
        out[ours] = (t.t() if transposed else t).contiguous().clone()
    pos0 = wpe[0].detach().cpu().to(torch.float32)
    if bool(pos0.any()):  # all-zero row: keep the bias bit for bit (also -0.0)
        out["embed_ln.bias"] = out["embed_ln.bias"] + pos0
    return cfg, out


def _read_weights(src: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = src / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_file(src / shard))
        return state
    pickle = src / "pytorch_model.bin"
    if pickle.is_file():
        # weights_only=True: tensors and plain containers only, never arbitrary objects
        try:
            state = torch.load(pickle, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{pickle} is not a plain tensor checkpoint: {e}") from e
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{pickle} does not hold a state dict")
        return dict(state)
    raise CheckpointError(
        f"{src} has no model.safetensors (or model.safetensors.index.json, pytorch_model.bin)"
    )


def from_transformers(
    src: str | Path, *, context_len: int | None = None
) -> tuple[DTConfig, dict[str, torch.Tensor]]:
    """Read a transformers DT checkpoint directory into (DTConfig, dtzoo state dict).

    >>> cfg, state = from_transformers("decision-transformer-gym-hopper-medium")
    >>> model = DecisionTransformer(cfg); model.load_state_dict(state, strict=True)

    `src` holds config.json and model.safetensors (preferred) or pytorch_model.bin (read with
    `torch.load(weights_only=True)`). `context_len` overrides the context length, which
    transformers does not record (default: config.json's `dtzoo_context_len`, else 20).
    `predict_state` and `predict_return` are ignored; `encoder.wpe.weight[0]` is folded into
    `embed_ln.bias`. Does not need transformers.
    """
    src = Path(src)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{src} has no config.json")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from e
    return from_transformers_state_dict(config, _read_weights(src), context_len=context_len)


def load_transformers(src: str | Path, *, context_len: int | None = None) -> DecisionTransformer:
    """A ready dtzoo model (eval mode) from a transformers DT checkpoint directory.

    >>> model = load_transformers("decision-transformer-gym-hopper-medium")
    >>> actions, cache = model.run_with_cache(states, actions, returns_to_go, timesteps)
    """
    cfg, state = from_transformers(src, context_len=context_len)
    model = DecisionTransformer(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()
