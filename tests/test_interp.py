"""Interpretability-ready checkpoints: the checkpoint schedule, revisions on the hub, the RTG
sweep, export/import through the CLI, TransformerLens and nnsight, and the example script.

One tiny pendulum-2L-seed0 (the test registry: 40 steps, d_model 32) is trained once for the
module through `zoo.train_cell`; the CLI runs in subprocesses against the same DTZOO_HOME.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dtzoo import paths, zoo
from dtzoo.checkpoint import CONFIG, WEIGHTS, load_model, read_config
from dtzoo.registry import load_registry
from tests.conftest import ROOT, TEST_STEPS, make_test_registry, run_cli

pytestmark = pytest.mark.slow

MID = "pendulum-2L-seed0"
SCHEDULE = [0, 1, 2, 4, 8, 16, 20, 40]  # the test registry: log_until 16, every 20, 40 steps
STEP = 8  # a training-time checkpoint that differs from the final model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minari_store):
    """pendulum-2L-seed0 trained with the test registry in its own DTZOO_HOME."""
    base = tmp_path_factory.mktemp("interp")
    env = {
        "DTZOO_HOME": str(base / "home"),
        "MINARI_DATASETS_PATH": str(minari_store),
        "DTZOO_REGISTRY": str(make_test_registry(base / "registry.yaml")),
        "DTZOO_HUB": "local",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("DTZOO_ORG", raising=False)
        reg = load_registry()
        result = zoo.train_cell(reg.resolve(MID), reg, device="cpu")
        yield {
            "env": env,
            "registry": reg,
            "result": result,
            "run": paths.run_dir(MID),
            "base": base,
        }


@pytest.fixture
def one_thread():
    """Exact comparisons between two forward passes: one intra-op thread, so a busy machine
    cannot change how a matmul's sum is split between threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / WEIGHTS))


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)  # a safetensors file stores its tensors sorted by name
    for k, v in a.items():
        assert v.dtype == b[k].dtype and torch.equal(v, b[k]), k


def inputs(cfg, batch: int = 3, seed: int = 0, padded: bool = True):
    g = torch.Generator().manual_seed(seed)
    T = cfg.context_len
    states = torch.randn(batch, T, cfg.state_dim, generator=g)
    actions = torch.rand(batch, T, cfg.act_dim, generator=g) * 2 - 1
    rtg = torch.randn(batch, T, 1, generator=g)
    timesteps = torch.randint(0, cfg.max_ep_len, (batch, T), generator=g)
    mask = torch.ones(batch, T, dtype=torch.bool)
    if padded:
        mask[0, :5] = False  # one left-padded row, as at the start of an episode
    return states, actions, rtg, timesteps, mask


RESID = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_schedule_is_exact_and_the_last_is_the_final_model(tiny):
    reg, run = tiny["registry"], tiny["run"]
    assert tiny["result"].steps == TEST_STEPS
    assert reg.checkpoints.steps(TEST_STEPS) == SCHEDULE
    ckpts = sorted((run / "checkpoints").iterdir(), key=lambda p: int(p.name[4:]))
    assert [p.name for p in ckpts] == [f"step{n}" for n in SCHEDULE]
    for p in ckpts:
        assert read_config(p).step == int(p.name[4:])
    last = run / "checkpoints" / f"step{TEST_STEPS}"
    assert (last / WEIGHTS).read_bytes() == (run / WEIGHTS).read_bytes()
    assert json.loads((last / CONFIG).read_text()) == json.loads((run / CONFIG).read_text())
    assert_bitwise(tensors(last), tensors(run))
    assert not torch.equal(
        tensors(run / "checkpoints" / f"step{STEP}")["embed_state.weight"],
        tensors(run)["embed_state.weight"],
    )


def test_list_revisions_json_lists_every_step_and_main(tiny):
    out = run_cli("list", MID, "--revisions", "--json", env=tiny["env"])
    revs = json.loads(out.stdout)
    assert list(revs) == ["main"] + [f"step{n}" for n in SCHEDULE]
    assert revs["main"]["local"] == str(tiny["run"])
    assert revs[f"step{STEP}"]["local"] == str(tiny["run"] / "checkpoints" / f"step{STEP}")


def test_publish_checkpoints_then_pull_and_load_a_step(tiny, monkeypatch):
    env, run = tiny["env"], tiny["run"]
    pub = run_cli("publish", MID, "--checkpoints", env=env)
    assert pub.returncode == 0
    revs = json.loads(run_cli("list", MID, "--revisions", "--json", env=env).stdout)
    assert all(revs[r]["hub_commit"] for r in ["main"] + [f"step{n}" for n in SCHEDULE])

    pulled = run_cli("pull", MID, "--revision", f"step{STEP}", env=env)
    path = Path(pulled.stdout.strip().splitlines()[-1])
    ckpt = run / "checkpoints" / f"step{STEP}"
    assert (path / WEIGHTS).read_bytes() == (ckpt / WEIGHTS).read_bytes()
    assert read_config(path).step == STEP
    assert not torch.equal(tensors(path)["embed_state.weight"], tensors(run)["embed_state.weight"])

    import dtzoo

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    model = dtzoo.load(MID, revision=f"step{STEP}")
    config = model.config
    assert config.step == STEP
    assert_bitwise(dict(model.state_dict()), tensors(ckpt))
    final = dtzoo.load(MID)
    fconfig = final.config
    assert fconfig.step == TEST_STEPS
    assert_bitwise(dict(final.state_dict()), tensors(run))


# ----------------------------------------------------------------------------- RTG sweep


def test_rtg_sweep_through_the_cli(tiny):
    env, run = tiny["env"], tiny["run"]
    out = run_cli(
        "eval",
        MID,
        "--rtg-sweep",
        "--targets",
        "-1200:-200:3",
        "--episodes",
        "1",
        "--json",
        env=env,
    )
    report = json.loads((run / "rtg_sweep.json").read_text())
    assert json.loads(out.stdout)[0]["results"] == report["results"]
    assert report["kind"] == "rtg_sweep" and report["model_id"] == MID
    assert [r["target_return"] for r in report["results"]] == [-1200.0, -700.0, -200.0]
    for r in report["results"]:
        assert np.isfinite(r["return_mean"]) and len(r["returns"]) == 1
    assert (run / "rtg_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (run / "README.md").read_text()
    assert "rtg_sweep.png" in card and "-700" in card


# ----------------------------------------------------------------------------- export / import


def test_export_import_round_trip_through_the_cli_is_bitwise(tiny):
    pytest.importorskip("transformers")
    env, run, base = tiny["env"], tiny["run"], tiny["base"]
    out_dir = base / "exported"
    run_cli("export", MID, "--out", str(out_dir), env=env)
    assert (out_dir / "config.json").is_file()
    name = "pendulum-2L-seed1"  # a free id with the same layer count
    imported = Path(
        run_cli("import", str(out_dir), "--env", "pendulum", "--name", name, env=env)
        .stdout.strip()
        .splitlines()[-1]
    )
    assert imported == paths.run_dir(name)
    assert_bitwise(tensors(imported), tensors(run))
    a, b = read_config(imported).to_dict(), read_config(run).to_dict()
    assert a.pop("model_id") == name and b.pop("model_id") == MID
    assert a == b  # state statistics, env, recipe, step: all survive the trip


# ----------------------------------------------------------------------------- TransformerLens


def test_transformer_lens_residual_stream_equals_ours_at_every_layer(tiny, one_thread):
    pytest.importorskip("transformer_lens")
    from transformer_lens import ActivationCache, HookedRootModule

    from dtzoo.interp import HookedDecisionTransformer, load_hooked, to_transformer_lens

    ours, _ = load_model(tiny["run"])
    hooked = load_hooked(tiny["run"])
    config = hooked.config
    assert isinstance(hooked, HookedRootModule) and isinstance(hooked, HookedDecisionTransformer)
    assert config.model_id == MID and not hooked.training
    assert hooked.hook_names() == list(hooked.hook_dict)
    # ours, in the same order, plus TransformerLens's hook_embed / hook_scale / hook_normalized
    # / hook_result (tests/test_interp_tl.py checks those)
    ours_names = set(ours.hook_names())
    assert [n for n in hooked.hook_names() if n in ours_names] == ours.hook_names()
    assert_bitwise(dict(hooked.state_dict()), dict(ours.state_dict()))
    assert to_transformer_lens(hooked) is hooked

    x = inputs(ours.cfg)
    preds, cache = ours.run_with_cache(*x)
    tl_preds, tl_cache = hooked.run_with_cache(*x)
    assert isinstance(tl_cache, ActivationCache)
    assert torch.equal(tl_preds, preds)
    assert set(cache) <= set(tl_cache.keys())
    n_layers = ours.cfg.n_layers
    assert n_layers == 2
    for i in range(n_layers):
        for h in RESID:
            name = f"blocks.{i}.{h}"
            assert torch.equal(tl_cache[name], cache[name]), name
        # TransformerLens's shorthand names reach the same tensors
        assert torch.equal(tl_cache["resid_pre", i], cache[f"blocks.{i}.hook_resid_pre"])
        assert torch.equal(tl_cache["resid_post", i], cache[f"blocks.{i}.hook_resid_post"])
        assert torch.equal(tl_cache["pattern", i], cache[f"blocks.{i}.attn.hook_pattern"])
    for name in cache:
        assert torch.equal(tl_cache[name], cache[name]), name
    resid, labels = tl_cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "final_post"] and resid.shape[0] == 3
    assert torch.equal(resid[-1], cache[f"blocks.{n_layers - 1}.hook_resid_post"])

    # a plain dict on request, and names_filter as in TransformerLens
    _, d = hooked.run_with_cache(
        *x, names_filter=lambda n: n.endswith("resid_post"), return_cache_object=False
    )
    assert isinstance(d, dict) and list(d) == [f"blocks.{i}.hook_resid_post" for i in range(2)]


def test_transformer_lens_hooks_patch_like_ours(tiny, one_thread):
    pytest.importorskip("transformer_lens")
    from dtzoo.interp import load_hooked

    ours, _ = load_model(tiny["run"])
    hooked = load_hooked(tiny["run"])
    x = inputs(ours.cfg, seed=1)
    clean = ours(*x)

    seen = []

    def zero_tl(act, hook):  # TransformerLens's hook signature
        seen.append(hook.name)
        return torch.zeros_like(act)

    patched = hooked.run_with_hooks(*x, fwd_hooks=[("hook_embed_rtg", zero_tl)])
    expected = ours.run_with_hooks(
        *x, fwd_hooks=[("hook_embed_rtg", lambda a, n: torch.zeros_like(a))]
    )
    assert seen == ["hook_embed_rtg"]
    assert torch.equal(patched, expected) and not torch.equal(patched, clean)
    assert hooked.list_hooks() == {}  # temporary hooks are gone afterwards
    assert torch.equal(hooked(*x), clean)

    # activation patching across runs: layer-1 resid_pre from a corrupted input into a clean run
    corrupt = (x[0], x[1], x[2] * 10 + 3, x[3], x[4])
    _, corrupt_cache = hooked.run_with_cache(*corrupt)
    name = "blocks.1.hook_resid_pre"
    out = hooked.run_with_hooks(*x, fwd_hooks=[(name, lambda a, hook: corrupt_cache[hook.name])])
    assert torch.equal(out, ours(*corrupt))


# ----------------------------------------------------------------------------- nnsight


def test_nnsight_reads_and_patches_the_residual_stream(tiny, one_thread):
    pytest.importorskip("nnsight")
    import nnsight
    from nnsight import NNsight

    ours, _ = load_model(tiny["run"])
    x = inputs(ours.cfg, seed=2)
    preds, cache = ours.run_with_cache(*x)
    model = NNsight(ours)
    with model.trace(*x):
        saved = nnsight.save({})
        for i in range(ours.cfg.n_layers):  # nnsight wants the forward order
            block = model.blocks[i]
            saved[f"blocks.{i}.hook_resid_pre"] = block.hook_resid_pre.output.save()
            saved[f"blocks.{i}.hook_resid_mid"] = block.hook_resid_mid.output.save()
            saved[f"blocks.{i}.hook_resid_post"] = block.output.save()
        out = model.output.save()
    assert torch.equal(out, preds)
    assert len(saved) == 3 * ours.cfg.n_layers
    for name, act in saved.items():
        assert torch.equal(act, cache[name]), name

    with model.trace(*x):
        model.hook_embed_rtg.output[:] = 0
        patched = model.output.save()
    expected = ours.run_with_hooks(
        *x, fwd_hooks=[("hook_embed_rtg", lambda a, n: torch.zeros_like(a))]
    )
    assert torch.equal(patched, expected)


# ----------------------------------------------------------------------------- the example


def test_the_example_script_runs(tiny):
    env, base = tiny["env"], tiny["base"]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        zoo.publish_cell(tiny["registry"].resolve(MID), tiny["registry"], checkpoints=True)
    out_dir = base / "example"
    proc = subprocess.run(
        [
            sys.executable,
            "examples/interpretability.py",
            MID,
            "--out-dir",
            str(out_dir),
            "--segments",
            "24",
            "--episodes",
            "1",
            "--revisions",
            f"step0,step{STEP},main",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for needle in (
        "== 1. attention",
        "== 2. ablating",
        "zero-ablate R embeddings",
        "rollouts at target",
        "== 3. probe",
        "R^2 =",
        "== 4.",
        f"step{STEP}",
        "== 5.",
        "sum - final residual",
        "patch RTG",
        "rtg scan over",
    ):
        assert needle in text, needle
    assert (out_dir / f"{MID}_interp" / "patch.png").is_file()
    assert (out_dir / f"{MID}_interp" / "rtg_scan.json").is_file()
    png = out_dir / f"{MID}_attention.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dump = np.load(out_dir / f"{MID}_probe.npz")
    n = 24 * 20  # segments x state tokens per segment
    assert dump["rtg"].shape == (n,) and dump["resid_2"].shape == (n, 32)
    assert list(dump["layer_names"]) == [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_post",
    ]
    assert np.isfinite(dump["resid_2"]).all() and np.isfinite(dump["rtg"]).all()


# ----------------------------------------------------------------------------- dtzoo.interp helpers


@pytest.fixture(scope="module")
def hooked_tiny(tiny):
    pytest.importorskip("transformer_lens")
    from dtzoo.interp import load_hooked

    return load_hooked(tiny["run"])


def test_patch_recovers_the_whole_change_at_the_read_token_and_nothing_after(
    hooked_tiny, tmp_path, one_thread
):
    from dtzoo import interp
    from dtzoo.model import token_position

    model = hooked_tiny
    r = interp.patch(model, -150, -1200, at=25, out_dir=tmp_path)
    K, L = model.cfg.context_len, model.cfg.n_layers
    rec = np.asarray(r["recovered"])
    assert r["hooks"][-1] == f"blocks.{L - 1}.hook_resid_post" and rec.shape == (3 * L + 1, 3 * K)
    read = token_position(K - 1, "state")
    # the whole last residual at the newest state token is what the head reads: all of it
    assert rec[-1, read] == pytest.approx(1.0, abs=1e-4)
    # the newest action token comes after it: no effect anywhere
    assert np.abs(rec[:, -1]).max() < 1e-6
    # one cell by hand: R token of the newest step, layer-0 residual
    window = interp.rollout_window(model, target=-150, at=25)
    assert window.step == 25 and r["episode_step"] == 25
    src = window.inputs([-150.0], model.config.reward_scale)
    dst = window.inputs([-1200.0], model.config.reward_scale)
    _, cache = model.run_with_cache(*src)
    pos = token_position(K - 1, "rtg")

    def put(act, hook):
        act = act.clone()
        act[:, pos] = cache[hook.name][:, pos]
        return act

    with torch.no_grad():
        a = model.run_with_hooks(*dst, fwd_hooks=[("blocks.0.hook_resid_pre", put)])[0, -1]
    a_src, a_dst = torch.tensor(r["action_from"]), torch.tensor(r["action_to"])
    d = a_src - a_dst
    assert rec[0, pos] == pytest.approx(float((a - a_dst) @ d / (d @ d)), abs=1e-5)
    assert torch.allclose(a_src, model(*src)[0, -1].detach())
    # the helper's resid_pre rows are what transformer_lens.patching computes
    from transformer_lens import patching

    def recovered(out):
        return (out[0, -1] - a_dst) @ d / (d @ d)

    tl = patching.get_act_patch_resid_pre(model, model.to_tokens(*dst), cache, recovered)
    for layer in range(L):
        assert np.allclose(tl[layer].numpy(), rec[3 * layer], atol=1e-5)
    saved = json.loads((tmp_path / "patch.json").read_text())
    assert saved["recovered"] == r["recovered"] and saved["tokens"][pos] == "R25"
    from dtzoo.errors import UsageError

    with pytest.raises(UsageError, match="give the same action"):
        interp.patch(model, -150, -150, at=25)
    # by default: the full window of the episode where the two targets move the action most
    auto = interp.patch(model, -150, -1200)
    assert auto["episode_step"] >= K - 1 and auto["action_change"] >= r["action_change"]
    assert (tmp_path / "patch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rtg_scan_actions_are_the_models_and_attention_sums_to_one(hooked_tiny, tmp_path):
    from dtzoo import interp

    model = hooked_tiny
    r = interp.rtg_scan(model, targets="-1200:0:5", at=25, target=-600, out_dir=tmp_path)
    assert r["targets"] == [-1200.0, -900.0, -600.0, -300.0, 0.0]
    window = interp.rollout_window(model, target=-600, at=25)
    own = model(*window.inputs())[0, -1].detach()
    assert torch.allclose(torch.tensor(r["actions"][2]), own, atol=1e-6)  # its own target
    assert len(set(map(tuple, np.round(r["actions"], 6)))) > 1  # the RTG moves the action
    assert set(r["attention"]) == {f"L{i}H0" for i in range(model.cfg.n_layers)}
    for att in r["attention"].values():
        total = np.asarray(att["R"]) + np.asarray(att["s"]) + np.asarray(att["a"])
        assert np.allclose(total, 1.0, atol=1e-5)
    assert r["data_return_max"] is not None
    assert (tmp_path / "rtg_scan.png").is_file() and (tmp_path / "rtg_scan.json").is_file()


def test_attribution_sums_to_the_pre_tanh_action(hooked_tiny, tmp_path):
    from dtzoo import interp

    model = hooked_tiny
    r = interp.attribute(model, at=25, out_dir=tmp_path)
    L = model.cfg.n_layers
    assert r["labels"] == (
        [f"L{i}H0" for i in range(L)]
        + [f"{i}_mlp_out" for i in range(L)]
        + ["embed", "bias", "ln_final.b+b_U"]
    )
    parts = np.asarray(r["attribution"])
    assert np.allclose(parts.sum(0), r["total"]) and np.allclose(
        r["total"], r["pre_tanh"], atol=1e-4
    )
    window = interp.rollout_window(model, at=25)
    assert np.allclose(
        np.tanh(r["pre_tanh"]), model(*window.inputs())[0, -1].detach().numpy(), atol=1e-5
    )
    for i in range(L):  # a head's split by source kind sums to its attribution
        split = r["by_source_kind"][f"L{i}H0"]
        assert np.allclose(np.sum([split[k] for k in "Rsa"], axis=0), parts[i], atol=1e-5)
    assert (tmp_path / "attribution.png").is_file()


def test_attention_summary_by_kind(hooked_tiny, tmp_path):
    from dtzoo import interp

    model = hooked_tiny
    r = interp.attention(model, at=5, out_dir=tmp_path)  # a partly padded window
    K = model.cfg.context_len
    n_real = 6 * 3
    assert sum(r["mask"]) == 6 and len(r["heads"]) == model.cfg.n_layers
    for head in r["heads"]:
        p = np.asarray(head["pattern"])
        assert p.shape == (n_real, n_real)
        assert np.allclose(p.sum(1), 1, atol=1e-5) and np.allclose(np.triu(p, 1), 0)
        for q, row in head["by_kind"].items():
            assert sum(row.values()) == pytest.approx(1, abs=1e-5)
        # by hand: mean mass of real state queries on R keys
        s_rows = p[1::3]
        assert head["by_kind"]["s"]["R"] == pytest.approx(s_rows[:, 0::3].sum(1).mean(), abs=1e-6)
        assert head["own_step"]["R"] == pytest.approx(np.diag(p)[0::3].mean(), abs=1e-6)
    assert len(r["tokens"]) == 3 * K and r["tokens"][-1] == "a5"
    assert (tmp_path / "attention.png").is_file()


def test_interp_cli_writes_json_and_png_and_errors_are_one_line(tiny, tmp_path):
    env = tiny["env"]
    out = run_cli(
        "interp",
        "patch",
        MID,
        "--from",
        "-150",
        "--to",
        "-1200",
        "--at",
        "25",
        "--out",
        str(tmp_path),
        "--json",
        env=env,
    )
    r = json.loads(out.stdout)
    assert r["kind"] == "patch" and r["files"]["png"] == str(tmp_path / "patch.png")
    assert (tmp_path / "patch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = run_cli(
        "interp", "rtg-scan", MID, "--targets", "-1200:0:3", "--out", str(tmp_path), env=env
    ).stdout
    assert "target    -1200.0  action" in text and str(tmp_path / "rtg_scan.png") in text
    assert (
        str(tmp_path / "attribution.json")
        in run_cli("interp", "attribute", MID, "--out", str(tmp_path), env=env).stdout
    )
    att = json.loads(
        run_cli(
            "interp",
            "attention",
            MID,
            "--revision",
            f"step{STEP}",
            "--json",
            "--out",
            str(tmp_path / "rev"),
            env=env,
        ).stdout
    )
    assert att["step"] == STEP and (tmp_path / "rev" / "attention.png").is_file()
    bad = [
        ("interp", "patch", "nosuch-1L-seed0", "--from", "-1", "--to", "-2"),
        ("interp", "patch", MID, "--from", "-150", "--to", "-150"),
        ("interp", "rtg-scan", MID, "--targets", "3:1:2"),
        ("interp", "patch", MID, "--to", "-150"),
    ]
    for args in bad:
        proc = run_cli(*args, env=env, check=False)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, proc.stderr)
