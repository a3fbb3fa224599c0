"""Atari (pixels) and MiniGrid (symbolic grids) in the zoo: tiny datasets made here, the same
commands as the vector envs (train, checkpoints, eval, RTG sweep, card, publish, pull)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("ale_py")
pytest.importorskip("cv2")
pytest.importorskip("minigrid")

from dtzoo import paths
from dtzoo.checkpoint import load_model
from dtzoo.data import SegmentSampler, load_trajectories
from dtzoo.model import DecisionTransformer, DTConfig
from dtzoo.observations import get_kind, make_env
from tests.conftest import ROOT, run_cli

TINY = {
    "context_len": 4,
    "d_model": 32,
    "n_heads": 2,
    "d_mlp": 64,
    "batch_size": 4,
    "steps": 6,
    "warmup_steps": 2,
}


def pixel_registry(path: Path) -> Path:
    """The bundled registry with test-sized Atari and MiniGrid envs."""
    reg = yaml.safe_load((ROOT / "registry.yaml").read_text())
    reg["checkpoints"] = {"log_until": 4, "every": 100}
    sea = reg["envs"]["seaquest"]
    sea.update(max_ep_len=200, max_episode_steps=12, recipe=dict(TINY), eval={"episodes": 2})
    bab = reg["envs"]["babyai-gotoredball"]
    bab["prepare"].update(episodes=8, noise=[0.0, 0.5], ref_episodes=4)
    bab.update(recipe=dict(TINY), eval={"episodes": 2})
    four = reg["envs"]["minigrid-fourrooms"]
    four.update(
        recipe=dict(TINY),
        eval={"episodes": 2},
        max_episode_steps=10,
        ref_scores={"random": 0.0, "expert": 1.0},
    )
    path.write_text(yaml.safe_dump(reg, sort_keys=False))
    return path


def minigrid_dict_dataset(dataset_id: str, gym_id: str, episodes: int, steps: int) -> None:
    """A Minari dataset with MiniGrid's Dict observations (image, direction), as Minari's
    minigrid datasets store them (the mission text, which dtzoo ignores, is left out: gymnasium's
    MissionSpace has no Minari serialisation), from a random policy."""
    import minari
    from gymnasium import spaces
    from minari.data_collector import EpisodeBuffer

    env = make_env(gym_id, "vector", max_episode_steps=steps)
    rng = np.random.default_rng(0)
    buffers = []
    for i in range(episodes):
        obs, _ = env.reset(seed=i)
        imgs, dirs, acts, rews, terms, truncs = [obs["image"]], [obs["direction"]], [], [], [], []
        done = False
        while not done:
            a = int(rng.integers(env.action_space.n))
            obs, r, te, tr, _ = env.step(a)
            imgs.append(obs["image"]), dirs.append(obs["direction"])
            acts.append(a), rews.append(r), terms.append(te), truncs.append(tr)
            done = te or tr
        buffers.append(
            EpisodeBuffer(
                id=None,
                seed=i,
                observations={"image": np.stack(imgs), "direction": np.array(dirs)},
                actions=np.array(acts, np.int64),
                rewards=np.array(rews, np.float64),
                terminations=np.array(terms),
                truncations=np.array(truncs),
                infos={},
            )
        )
    space = spaces.Dict(
        {"image": env.observation_space["image"], "direction": env.observation_space["direction"]}
    )
    minari.create_dataset_from_buffers(
        dataset_id,
        buffers,
        env=env.spec,
        observation_space=space,
        action_space=env.action_space,
        data_format="arrow",
        algorithm_name="random",
    )


@pytest.fixture(scope="module")
def pix(tmp_path_factory):
    """A Minari store with tiny stand-ins for atari/seaquest/expert-v0 and
    D4RL/minigrid/fourrooms-v0 (raw observations, as Minari stores them; random policy), and
    the locally prepared BabyAI-bot dataset, plus an isolated home and registry."""
    from dtzoo.collect import prepare_dataset
    from dtzoo.registry import load_registry
    from dtzoo.zoo import prepare_env

    base = tmp_path_factory.mktemp("pix")
    env = {
        "DTZOO_HOME": str(base / "home"),
        "MINARI_DATASETS_PATH": str(base / "minari"),
        "DTZOO_REGISTRY": str(pixel_registry(base / "registry.yaml")),
        "DTZOO_HUB": "local",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("DTZOO_ORG", raising=False)
        prepare_dataset(
            "atari/seaquest/expert-v0",
            "ALE/Seaquest-v5",
            policy="random",
            episodes=2,
            seed=0,
            max_episode_steps=60,
        )  # raw 210x160x3 RGB frames
        minigrid_dict_dataset(
            "D4RL/minigrid/fourrooms-v0", "MiniGrid-FourRooms-v0", episodes=3, steps=20
        )
        reg = load_registry()
        prepare_env(reg.env("babyai-gotoredball"))
        yield {"env": env, "registry": reg}


# ----------------------------------------------------------------------------- observations


def test_atari_env_and_dataset_preprocessing_are_identical():
    """The env's frames equal the dataset transform of the raw RGB frames Minari stores, at
    every step, the one that ends the episode included (gymnasium's AtariPreprocessing
    returns the previous frame there)."""
    atari = get_kind("atari")
    pre = make_env("ALE/Seaquest-v5", "atari", max_episode_steps=60)  # no-ops count too
    o_pre, _ = pre.reset(seed=3)
    rng = np.random.default_rng(0)
    done, t = False, 0
    while not done:
        o_raw = pre.unwrapped.ale.getScreenRGB()  # the raw frame a Minari dataset would store
        assert np.array_equal(atari.transform(o_raw[None])[0], o_pre), f"step {t}"
        o_pre, _, terminated, truncated, _ = pre.step(int(rng.integers(pre.action_space.n)))
        done, t = terminated or truncated, t + 1
    o_raw = pre.unwrapped.ale.getScreenRGB()
    assert t >= 30 and np.array_equal(atari.transform(o_raw[None])[0], o_pre)
    assert o_raw.shape == (210, 160, 3) and o_pre.shape == (84, 84) and o_pre.dtype == np.uint8
    assert pre.observation_space.shape == (84, 84)
    assert np.array_equal(atari.transform(o_pre[None]), o_pre[None])  # idempotent
    # no-op starts drawn from the reset seed: seeded episodes differ, and replay exactly
    starts = [pre.reset(seed=s)[0] for s in (0, 1, 2, 3, 0)]
    assert np.array_equal(starts[0], starts[4])
    assert len({x.tobytes() for x in starts[:4]}) > 1


def test_minigrid_flat_and_onehot_views():
    env = make_env("BabyAI-GoToRedBallNoDists-v0", "vector")
    obs, _ = env.reset(seed=0)
    batch = {"image": obs["image"][None], "direction": np.array([obs["direction"]])}
    flat = get_kind("minigrid-flat").transform(batch)
    onehot = get_kind("minigrid-onehot").transform(batch)
    assert flat.shape == (1, 148) and flat.dtype == np.uint8
    assert (
        np.array_equal(flat[0, :147], obs["image"].reshape(-1)) and flat[0, 147] == obs["direction"]
    )
    assert onehot.shape == (1, 49 * 20 + 4) and set(np.unique(onehot)) <= {0, 1}
    assert onehot[0, :-4].sum() == 49 * 3 and onehot[0, -4:].argmax() == obs["direction"]
    wrapped = make_env("BabyAI-GoToRedBallNoDists-v0", "minigrid-onehot")
    assert np.array_equal(wrapped.reset(seed=0)[0], onehot[0])


# ----------------------------------------------------------------------------- model and hooks


def cnn_config(**kw) -> DTConfig:
    return DTConfig(
        state_dim=84 * 84,
        act_dim=18,
        discrete=True,
        d_model=32,
        n_heads=2,
        d_mlp=64,
        context_len=3,
        max_ep_len=50,
        state_encoder="nature_cnn",
        obs_shape=(4, 84, 84),
        **kw,
    )


def test_conv_encoder_hook_points_and_ablation():
    torch.manual_seed(0)
    model = DecisionTransformer(cnn_config()).eval()
    names = model.hook_names()
    for n in (
        "hook_state_encoder_conv0",
        "hook_state_encoder_conv1",
        "hook_state_encoder_conv2",
        "hook_state_encoder_out",
        "hook_embed_state",
        "blocks.0.attn.hook_pattern",
    ):
        assert n in names
    assert not any(k.startswith("hook_") for k in model.state_dict())
    s = torch.randint(0, 256, (2, 3, 4, 84, 84), dtype=torch.uint8)
    a = torch.zeros(2, 3, 18)
    R, t = torch.ones(2, 3, 1), torch.arange(3).repeat(2, 1)
    out, cache = model.run_with_cache(s, a, R, t)
    assert out.shape == (2, 3, 18)
    assert cache["hook_state_encoder_conv0"].shape == (6, 32, 20, 20)
    assert cache["hook_state_encoder_conv1"].shape == (6, 64, 9, 9)
    assert cache["hook_state_encoder_conv2"].shape == (6, 64, 7, 7)
    assert cache["hook_state_encoder_out"].shape == (2, 3, 32)
    assert torch.equal(model(s, a, R, t), out)
    zero = lambda act, name: torch.zeros_like(act)
    ablated = model.run_with_hooks(s, a, R, t, fwd_hooks=[("hook_state_encoder_conv2", zero)])
    assert not torch.allclose(ablated, out)


def test_linear_models_keep_their_weight_names():
    model = DecisionTransformer(DTConfig(state_dim=3, act_dim=1))
    assert "embed_state.weight" in model.state_dict()
    assert not any("state_encoder" in n for n in model.hook_names())


def test_export_refuses_image_models():
    pytest.importorskip("transformers")
    from dtzoo.convert import to_transformers
    from dtzoo.errors import CheckpointError

    with pytest.raises(CheckpointError, match="only vector-state models"):
        to_transformers(DecisionTransformer(cnn_config()))


# ----------------------------------------------------------------------------- data


def test_frames_are_stored_as_uint8_and_stacked_on_the_fly(pix):
    data = load_trajectories("atari/seaquest/expert-v0", "atari")
    n = int(data.lengths.sum())
    assert data.observations.shape == (n, 84, 84) and data.observations.dtype == np.uint8
    assert data.observations.nbytes == n * 7056  # 7.056 MB per 1000 stored frames
    assert data.state_stats()[0].size == 0
    sampler = SegmentSampler(
        data, context_len=4, max_ep_len=200, reward_scale=1000, seed=0, frame_stack=4
    )
    assert sampler.norm_obs is data.observations  # no float copy of the frames
    last = int(data.lengths[0]) - 1
    b = sampler.segments(np.array([0, 1]), np.array([last, 0]))
    assert b["states"].shape == (2, 4, 4, 84, 84) and b["states"].dtype == np.uint8
    # episode 0 from its last step: 3 padded steps, then the stack of its 4 latest frames
    assert not b["states"][0, :3].any()
    end = data.starts[0] + last
    assert np.array_equal(b["states"][0, 3], data.observations[end - 3 : end + 1])
    # episode 1 from its first step: frame indices clamped at the episode start
    s1 = data.starts[1]
    for k in range(4):
        want = [data.observations[max(s1 + k - 3 + j, s1)] for j in range(4)]
        assert np.array_equal(b["states"][1, k], np.stack(want))


def test_agent_stacks_frames_as_the_sampler_does(pix):
    from dtzoo.agent import Agent
    from dtzoo.checkpoint import ModelConfig

    data = load_trajectories("atari/seaquest/expert-v0", "atari")
    sampler = SegmentSampler(data, 3, 200, 1000, seed=0, frame_stack=4)
    cfg = cnn_config()
    model = DecisionTransformer(cfg).eval()
    arch = cfg.architecture()
    config = ModelConfig(
        model_id="x",
        architecture=arch,
        state_dim=7056,
        act_dim=18,
        action_space={"kind": "discrete", "n": 18},
        state_mean=[],
        state_std=[],
        reward_scale=1000,
        target_returns=[100],
        env={},
        dataset={},
        recipe={},
        seed=0,
        step=0,
        total_steps=0,
    )
    agent = Agent(model, config, num_envs=1)
    s0 = data.starts[0]
    for t in range(6):
        agent.act(data.observations[s0 + t][None])
        agent.observe(0.0)
        si = max(0, t - 2)
        want = sampler.segments(np.array([0]), np.array([si]))["states"][0]
        n = t - si + 1  # the agent's window ends at step t; the segment starts at si
        assert np.array_equal(agent.states[0, -n:], want[:n])


def test_minigrid_datasets_load_flat(pix):
    four = load_trajectories("D4RL/minigrid/fourrooms-v0", "minigrid-onehot")
    assert four.observations.shape[1] == 984 and four.observations.dtype == np.uint8
    bot = load_trajectories("dtzoo/babyai-gotoredball/bot-v0", "minigrid-flat")
    assert bot.observations.shape[1] == 148 and bot.action_space.n == 7
    assert bot.ref_scores["expert"] > bot.ref_scores["random"]


# ----------------------------------------------------------------------------- the zoo commands


@pytest.mark.parametrize(
    "mid", ["seaquest-1L-seed0", "babyai-gotoredball-1L-seed0", "minigrid-fourrooms-1L-seed0"]
)
def test_train_eval_sweep_publish_pull(pix, mid):
    from dtzoo import zoo
    from dtzoo.leaderboard import leaderboard_rows

    reg = pix["registry"]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in pix["env"].items():
            mp.setenv(k, v)
        spec = reg.resolve(mid)
        result = zoo.train_cell(spec, reg, device="cpu")
        assert result.steps == 6 and np.isfinite(result.final_loss)
        run = paths.run_dir(mid)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
            "step0",
            "step1",
            "step2",
            "step4",
            "step6",
        ]
        model, config = load_model(run)
        if spec.env.obs == "atari":
            assert config.architecture["state_encoder"] == "nature_cnn"
            assert config.env["observation"]["frame_stack"] == 4 and config.state_mean == []
        report = zoo.eval_cell(spec, reg)
        assert len(report["results"]) == len(spec.env.target_returns)
        assert all(np.isfinite(r["normalized_mean"]) for r in report["results"])
        sweep = zoo.sweep_cell(spec, reg, targets=[0.0, 1.0], episodes=2)
        assert [r["target_return"] for r in sweep["results"]] == [0.0, 1.0]
        card = (run / "README.md").read_text()
        assert spec.env.gym_id in card
        zoo.publish_cell(spec, reg, hub="local")
        pulled = zoo.pull(mid, reg, hub="local")
        m2, _ = load_model(pulled)
        for k, v in model.state_dict().items():
            assert torch.equal(v, m2.state_dict()[k])
        assert leaderboard_rows([report])


def test_cli_data_info_on_an_atari_env(pix):
    proc = run_cli("data", "info", "seaquest", "--json", env=pix["env"])
    assert '"episodes": 2' in proc.stdout
