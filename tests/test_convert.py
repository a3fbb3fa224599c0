"""dtzoo <-> transformers' DecisionTransformerModel: same actions, lossless round trip, errors."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from dtzoo.convert import (
    MissingDependencyError,
    export_transformers,
    from_transformers,
    from_transformers_state_dict,
    load_transformers,
    to_transformers,
)
from dtzoo.errors import CheckpointError, DtzooError
from dtzoo.model import DecisionTransformer, DTConfig

STATE_DIM, ACT_DIM, MAX_EP_LEN, T, B = 5, 3, 64, 6, 5
TOL = 1e-5


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def make_model(n_layers: int = 1, discrete: bool = False, activation: str = "relu", seed: int = 0):
    """A small DT whose every weight is random (LayerNorms included), so no term hides."""
    torch.manual_seed(seed)
    cfg = DTConfig(
        state_dim=STATE_DIM,
        act_dim=ACT_DIM,
        discrete=discrete,
        n_layers=n_layers,
        d_model=32,
        n_heads=2,
        d_mlp=48,
        context_len=T,
        max_ep_len=MAX_EP_LEN,
        activation=activation,
    )
    model = DecisionTransformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if name.endswith("bias") or ".ln" in name else 0.1))
    return model.eval()


def inputs(discrete: bool = False, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(B, T, STATE_DIM, generator=g)
    if discrete:
        idx = torch.randint(0, ACT_DIM, (B, T), generator=g)
        actions = torch.nn.functional.one_hot(idx, ACT_DIM).float()
    else:
        actions = torch.rand(B, T, ACT_DIM, generator=g) * 2 - 1
    rtg = torch.randn(B, T, 1, generator=g) * 3
    timesteps = torch.randint(0, MAX_EP_LEN, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for row, pad in enumerate([0, 1, 2, 4, T - 1]):  # left padding; row 0 has none
        mask[row, :pad] = 0
        states[row, :pad] = actions[row, :pad] = rtg[row, :pad] = 0
        timesteps[row, :pad] = 0
    return states, actions, rtg, timesteps, mask


def ours_vs_theirs(model, hf, discrete, mask_on: bool) -> float:
    s, a, r, t, mask = inputs(discrete)
    if not mask_on:
        mask = torch.ones_like(mask)
    with torch.no_grad():
        ours = model(s, a, r, t, mask)
        theirs = hf(
            states=s, actions=a, returns_to_go=r, timesteps=t, attention_mask=mask
        ).action_preds
    valid = mask.bool()
    assert torch.isfinite(theirs[valid]).all()
    return (ours - theirs)[valid].abs().max().item()


CASES = [
    pytest.param(1, False, "relu", id="continuous-1L"),
    pytest.param(2, False, "gelu", id="continuous-2L-gelu"),
    pytest.param(2, True, "relu", id="discrete-2L"),
]


@pytest.mark.parametrize("n_layers,discrete,activation", CASES)
def test_export_predicts_same_actions(
    transformers, tmp_path, capfd, n_layers, discrete, activation
):
    model = make_model(n_layers, discrete, activation)
    out = export_transformers(model, tmp_path / "hf")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    capfd.readouterr()
    hf, info = transformers.DecisionTransformerModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    err = capfd.readouterr().err
    for word in ("MISSING", "UNEXPECTED", "MISMATCH", "newly initialized", "bos_token_id"):
        assert word not in err, err
    assert hf.config.action_tanh is (not discrete)
    assert not hf.training
    assert ours_vs_theirs(model, hf, discrete, mask_on=False) < TOL
    assert ours_vs_theirs(model, hf, discrete, mask_on=True) < TOL


def test_export_matches_eager_attention(transformers, tmp_path):
    model = make_model(2)
    out = export_transformers(model, tmp_path / "hf")
    hf = transformers.DecisionTransformerModel.from_pretrained(out, attn_implementation="eager")
    assert ours_vs_theirs(model, hf, False, mask_on=True) < TOL


def test_to_transformers_loads_strictly(transformers):
    model = make_model(2, discrete=True)
    hf_config, state = to_transformers(model)
    hf = transformers.DecisionTransformerModel(hf_config).eval()
    hf.load_state_dict(state, strict=True)
    assert hf_config.n_inner == 48 and hf_config.n_head == 2 and hf_config.max_ep_len == MAX_EP_LEN
    assert not state["encoder.wpe.weight"].any()
    assert ours_vs_theirs(model, hf, True, mask_on=True) < TOL


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("n_layers,discrete,activation", CASES)
def test_round_trip_is_bitwise(transformers, tmp_path, n_layers, discrete, activation):
    model = make_model(n_layers, discrete, activation)
    with torch.no_grad():
        model.embed_ln.bias[0] = -0.0  # even the sign of zero survives
    cfg, state = from_transformers(export_transformers(model, tmp_path / "hf"))
    assert cfg == model.cfg
    ref = model.state_dict()
    assert set(state) == set(ref)
    for key, value in ref.items():
        assert value.dtype == state[key].dtype
        assert torch.equal(_bits(value), _bits(state[key])), key
    # in memory too, without the files
    cfg2, state2 = from_transformers_state_dict(*to_transformers(model))
    assert cfg2 == model.cfg
    assert all(torch.equal(_bits(ref[k]), _bits(state2[k])) for k in ref)


def hub_like_checkpoint(transformers, path, *, n_layer=2, action_tanh=True, activation="relu"):
    """A transformers-made random DT in the Hub's layout (nonzero wpe, GPT-2 init), saved."""
    torch.manual_seed(3)
    config = transformers.DecisionTransformerConfig(
        state_dim=STATE_DIM,
        act_dim=ACT_DIM,
        hidden_size=32,
        max_ep_len=MAX_EP_LEN,
        n_layer=n_layer,
        n_head=2,
        n_positions=1024,
        action_tanh=action_tanh,
        activation_function=activation,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = transformers.DecisionTransformerModel(config).eval()
    with torch.no_grad():  # make LayerNorms and biases nontrivial as in a trained model
        for name, p in hf.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    assert hf.encoder.wpe.weight[0].abs().max() > 0  # the fold is exercised
    hf.save_pretrained(path)
    return hf


@pytest.mark.parametrize("action_tanh,activation", [(True, "relu"), (False, "gelu_new")])
def test_import_transformers_model(transformers, tmp_path, action_tanh, activation):
    hf = hub_like_checkpoint(
        transformers, tmp_path / "hub", action_tanh=action_tanh, activation=activation
    )
    model = load_transformers(tmp_path / "hub")
    assert model.cfg.discrete is (not action_tanh)
    assert model.cfg.d_mlp == 4 * 32 and model.cfg.context_len == 20  # defaults: n_inner=None, K
    assert model.cfg.activation == {"relu": "relu", "gelu_new": "gelu"}[activation]
    assert ours_vs_theirs(model, hf, not action_tanh, mask_on=False) < TOL
    assert ours_vs_theirs(model, hf, not action_tanh, mask_on=True) < TOL
    _, state = from_transformers(tmp_path / "hub", context_len=7)
    expected = hf.embed_ln.bias.detach() + hf.encoder.wpe.weight[0].detach()
    assert torch.equal(state["embed_ln.bias"], expected)


def test_import_pytorch_model_bin(transformers, tmp_path):
    """Old Hub checkpoints: pytorch_model.bin with GPT-2's causal-mask buffers."""
    hf = hub_like_checkpoint(transformers, tmp_path / "hub")
    src = tmp_path / "bin"
    src.mkdir()
    shutil.copy(tmp_path / "hub" / "config.json", src / "config.json")
    state = dict(hf.state_dict())
    for i in range(2):
        state[f"encoder.h.{i}.attn.bias"] = torch.ones(1, 1, 1024, 1024, dtype=torch.bool).tril()
        state[f"encoder.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, src / "pytorch_model.bin")
    model = load_transformers(src)
    assert ours_vs_theirs(model, hf, False, mask_on=True) < TOL


class NotATensor:
    pass


def test_pickle_with_objects_is_refused(tmp_path):
    src = tmp_path / "evil"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "decision_transformer"}))
    torch.save({"x": NotATensor()}, src / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a plain tensor checkpoint"):
        from_transformers(src)


def _rewrite(path, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(path / "model.safetensors")
    edit(state)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})


def test_malformed_checkpoints_name_the_tensor(transformers, tmp_path):
    export_transformers(make_model(2), tmp_path / "hf")
    src = tmp_path / "hf"

    _rewrite(src, lambda s: s.pop("encoder.h.1.mlp.c_fc.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'encoder\.h\.1\.mlp\.c_fc\.bias'"):
        from_transformers(src)

    _rewrite(src, lambda s: s.__setitem__("encoder.h.1.mlp.c_fc.bias", torch.zeros(47)))
    with pytest.raises(
        CheckpointError, match=r"'encoder\.h\.1\.mlp\.c_fc\.bias' has shape \(47,\)"
    ):
        from_transformers(src)

    # a Linear-shaped (untransposed) Conv1D weight is caught too
    _rewrite(
        src,
        lambda s: s.update(
            {
                "encoder.h.1.mlp.c_fc.bias": torch.zeros(48),
                "encoder.h.0.mlp.c_fc.weight": s["encoder.h.0.mlp.c_fc.weight"].t().contiguous(),
            }
        ),
    )
    with pytest.raises(CheckpointError, match=r"encoder\.h\.0\.mlp\.c_fc\.weight"):
        from_transformers(src)

    _rewrite(
        src,
        lambda s: s.update(
            {
                "encoder.h.0.mlp.c_fc.weight": s["encoder.h.0.mlp.c_fc.weight"].t().contiguous(),
                "encoder.h.2.attn.c_attn.weight": torch.zeros(32, 96),
            }
        ),
    )
    with pytest.raises(
        CheckpointError, match=r"does not know: encoder\.h\.2\.attn\.c_attn\.weight"
    ):
        from_transformers(src)

    _rewrite(src, lambda s: s.pop("encoder.h.2.attn.c_attn.weight"))
    from_transformers(src)  # repaired: loads again

    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "activation_function": "silu"}))
    with pytest.raises(CheckpointError, match="activation_function 'silu'"):
        from_transformers(src)

    (src / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        from_transformers(src)
    with pytest.raises(CheckpointError, match="no config.json"):
        from_transformers(tmp_path / "nowhere")


def test_missing_transformers_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(MissingDependencyError, match="pip install transformers") as info:
        to_transformers(make_model())
    assert isinstance(info.value, ImportError) and isinstance(info.value, DtzooError)
