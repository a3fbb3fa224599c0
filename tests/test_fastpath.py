"""The exact fast paths against the reference forward (docs/DESIGN: "Exactness of fast paths").

Inference (`dtzoo.model.InferenceCache`, used by `Agent`) and training
(`DecisionTransformer.predict_actions`, used by `Trainer.loss`) must compute what the full-window
`forward` computes, on whole episodes, and step aside whenever a hook is attached. Models are
tiny, with random weights spread wide enough that actions differ from step to step.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from dtzoo.agent import Agent
from dtzoo.checkpoint import ModelConfig
from dtzoo.evaluate import rollout
from dtzoo.model import DecisionTransformer, DTConfig, fast_path_ok

TOL = 1e-5  # max |action (or logit) difference| allowed, fast vs reference
CONTEXT = 5  # windows fill up after 5 steps, then slide: episodes cover both
ENVS = {  # gym id -> (state_dim, action space, target returns, episode cap)
    "Pendulum-v1": (3, {"kind": "box", "low": [-2.0], "high": [2.0]}, [-200.0, -800.0], 40),
    "CartPole-v1": (4, {"kind": "discrete", "n": 2}, [50.0, 500.0], 60),
}
FRAMES = (2, 36, 36)  # (frame_stack, H, W): the smallest frames the Nature-DQN convs take


def random_model(cfg: DTConfig, seed: int = 0) -> DecisionTransformer:
    """Random weights with std 0.3 (GPT-2's 0.02 makes every action nearly the same); the
    convolutions keep torch's default initialisation."""
    torch.manual_seed(seed)
    model = DecisionTransformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".conv" in name:
                continue
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
            elif name.endswith("bias"):  # LayerNorm gains stay 1
                p.normal_(0.0, 0.1)
    return model


def model_config(
    model: DecisionTransformer,
    gym_id: str,
    action_space: dict,
    targets: list[float],
    max_episode_steps: int | None = None,
) -> ModelConfig:
    cfg = model.cfg
    arch = cfg.architecture()
    env = {
        "key": "test",
        "gym_id": gym_id,
        "max_ep_len": cfg.max_ep_len,
        "ref_scores": {"random": 0.0, "expert": 1.0},
    }
    if max_episode_steps:
        env["max_episode_steps"] = max_episode_steps
    return ModelConfig(
        model_id="test-1L-seed0",
        architecture=arch,
        state_dim=cfg.state_dim,
        act_dim=cfg.act_dim,
        action_space=action_space,
        state_mean=[0.0] * cfg.state_dim,
        state_std=[1.0] * cfg.state_dim,
        reward_scale=100.0,
        target_returns=targets,
        env=env,
        dataset={"id": "none"},
        recipe={},
        seed=0,
        step=0,
        total_steps=0,
    )


def vector_case(gym_id: str, layers: int) -> tuple[DecisionTransformer, ModelConfig]:
    state_dim, space, targets, cap = ENVS[gym_id]
    discrete = space["kind"] == "discrete"
    cfg = DTConfig(
        state_dim=state_dim,
        act_dim=space.get("n", 1),
        discrete=discrete,
        n_layers=layers,
        d_model=32,
        n_heads=2,
        d_mlp=64,
        context_len=CONTEXT,
        max_ep_len=30,
    )  # < episode length: timesteps clamp, as the Agent does
    model = random_model(cfg, seed=layers)
    model.config = model_config(model, gym_id, space, targets, cap)
    return model, model.config


def lockstep(model, config, envs: list, seeds: list[int], targets: list[float]) -> dict:
    """Drive `envs` with a fast Agent while a reference Agent sees the same observations,
    rewards and actions; returns the largest |output difference| and the steps compared."""
    n = len(envs)
    fast = Agent(model, config, target_return=targets, num_envs=n)
    ref = Agent(model, config, target_return=targets, num_envs=n, fast=False)
    obs = np.stack([e.reset(seed=s)[0] for e, s in zip(envs, seeds)])
    worst, steps, alive = 0.0, 0, np.arange(n)
    while alive.size:
        action = fast.act(obs)
        ref.act(obs)
        assert fast.cache is not None and ref.cache is None  # each took its own path
        worst = max(worst, float(np.abs(fast.output - ref.output).max()))
        steps += 1
        # both go on from the same window (a 1e-6 action difference would otherwise feed back)
        ref.actions[:, -1] = fast.actions[:, -1]
        out = [envs[i].step(a) for i, a in zip(alive, action)]
        for agent in (fast, ref):
            agent.observe(np.array([o[1] for o in out]))
        going = np.flatnonzero([not (o[2] or o[3]) for o in out])
        if going.size < alive.size:  # finished episodes leave the batch (as in rollout)
            fast.keep(going), ref.keep(going)
            alive = alive[going]
        obs = np.stack([out[i][0] for i in going]) if going.size else None
    return {"max_diff": worst, "steps": steps}


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("gym_id", list(ENVS))
def test_agent_fast_path_equals_the_reference_forward(gym_id, layers):
    model, config = vector_case(gym_id, layers)
    cap = ENVS[gym_id][3]
    envs = [gym.make(gym_id, max_episode_steps=cap) for _ in range(3)]
    r = lockstep(model, config, envs, seeds=[0, 1, 2], targets=[*config.target_returns, 10.0])
    print(f"{gym_id} {layers}L: max |output diff| {r['max_diff']:.2e} over {r['steps']} steps")
    assert r["steps"] > 2 * CONTEXT  # windows not yet full, full, and sliding
    assert r["max_diff"] <= TOL


class FakeFrames(gym.Env):
    """A tiny pixel env: seeded random 36x36 uint8 frames, 3 actions, reward = the action's
    match with the frame's brightness, episodes of 12-20 steps."""

    observation_space = gym.spaces.Box(0, 255, FRAMES[1:], np.uint8)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(12, 21))
        return self._frame(), {}

    def _frame(self) -> np.ndarray:
        self.last = self.np_random.integers(0, 256, FRAMES[1:], dtype=np.uint8)
        return self.last

    def step(self, action):
        reward = float(int(action) == int(self.last.mean()) % 3)
        self.t += 1
        return self._frame(), reward, self.t >= self.length, False, {}


@pytest.mark.parametrize("layers", [1, 3])
def test_image_encoder_fast_path_equals_the_reference_forward(layers):
    cfg = DTConfig(
        state_dim=int(np.prod(FRAMES)),
        act_dim=3,
        discrete=True,
        n_layers=layers,
        d_model=32,
        n_heads=2,
        d_mlp=64,
        context_len=CONTEXT,
        max_ep_len=100,
        state_encoder="nature_cnn",
        obs_shape=FRAMES,
    )
    model = random_model(cfg, seed=10 + layers)
    config = model_config(model, "FakeFrames", {"kind": "discrete", "n": 3}, [5.0])
    r = lockstep(model, config, [FakeFrames(), FakeFrames()], seeds=[0, 1], targets=[5.0, 1.0])
    print(f"nature_cnn {layers}L: max |logit diff| {r['max_diff']:.2e} over {r['steps']} steps")
    assert r["steps"] > 2 * CONTEXT and r["max_diff"] <= TOL


@pytest.mark.parametrize("gym_id", list(ENVS))
def test_rollout_returns_equal_the_reference_paths(gym_id):
    """evaluate's rollout, fast vs reference Agent, over the same seeds and targets."""
    model, config = vector_case(gym_id, layers=2)
    targets = [t for t in config.target_returns for _ in range(3)]
    seeds = list(range(len(targets)))
    # the fast path with the envs in a worker process, the reference in this one
    fast, lengths = rollout(model, config, targets, seeds, overlap=True)
    slow, slow_lengths = rollout(model, config, targets, seeds, fast=False, overlap=False)
    diff = float(np.abs(fast - slow).max())
    print(f"{gym_id}: returns {np.round(fast, 3).tolist()}, max |return diff| {diff:.2e}")
    assert np.array_equal(lengths, slow_lengths)
    assert len(set(lengths.tolist())) > 1 or gym_id == "Pendulum-v1"  # CartPole: rows drop out
    assert diff <= 1e-3 * max(1.0, float(np.abs(slow).max()))


def test_hooks_see_the_reference_forward_and_the_fast_path_resumes():
    model, config = vector_case("Pendulum-v1", layers=2)
    env = gym.make("Pendulum-v1")
    fast = Agent(model, config, num_envs=1)
    ref = Agent(model, config, num_envs=1, fast=False)
    seen: list[tuple[int, ...]] = []
    obs, _ = env.reset(seed=0)
    for t in range(3 * CONTEXT):
        hooked = CONTEXT <= t < 2 * CONTEXT  # a hook on for a while, mid-episode
        with model.hooks(
            [("blocks.1.hook_resid_pre", lambda x, name: seen.append(x.shape))] if hooked else []
        ):
            assert fast_path_ok(model) is not hooked
            action = fast.act(obs)
            assert (fast.cache is None) is hooked
        ref.act(obs)
        assert np.abs(fast.output - ref.output).max() <= TOL  # also right after the hook went
        ref.actions[:, -1] = fast.actions[:, -1]
        obs, reward, *_ = env.step(action)
        fast.observe(reward), ref.observe(reward)
    # the hook saw the whole padded window (3 tokens x K steps), every hooked step
    assert seen == [(1, 3 * CONTEXT, 32)] * CONTEXT


def test_weights_edited_mid_episode_rebuild_the_cache():
    """An in-place weight edit (an ablation without hooks) is seen at the next step."""
    model, config = vector_case("Pendulum-v1", layers=2)
    fast, ref = Agent(model, config), Agent(model, config, fast=False)
    obs = np.ones(3, np.float32)
    for t in range(2 * CONTEXT):
        if t == CONTEXT:
            with torch.no_grad():
                model.blocks[0].attn.qkv.weight.mul_(0.5)  # changes every cached K/V
        fast.act(obs), ref.act(obs)
        assert np.abs(fast.output - ref.output).max() <= TOL, t
        ref.actions[:, -1] = fast.actions[:, -1]
        fast.observe(-1.0), ref.observe(-1.0)


def test_transformer_lens_hooks_get_the_reference_forward():
    pytest.importorskip("transformer_lens")
    from dtzoo.interp import to_transformer_lens

    model, config = vector_case("Pendulum-v1", layers=1)
    hooked = to_transformer_lens(model)
    seen: list[tuple[int, ...]] = []
    hooked.add_hook("blocks.0.attn.hook_pattern", lambda x, hook: seen.append(tuple(x.shape)))
    agent = Agent(hooked, config, num_envs=2)
    agent.act(np.zeros((2, 3), np.float32))
    agent.act(np.ones((2, 3), np.float32))
    # the whole window's attention pattern (padding included), every step
    assert seen == [(2, 2, 3 * CONTEXT, 3 * CONTEXT)] * 2 and agent.cache is None


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("discrete", [False, True])
def test_training_fast_path_equals_forward_with_the_same_gradients(layers, discrete):
    cfg = DTConfig(
        state_dim=3,
        act_dim=2,
        discrete=discrete,
        n_layers=layers,
        d_model=32,
        n_heads=2,
        d_mlp=64,
        context_len=6,
        max_ep_len=50,
        dropout=0.0,
    )
    model = random_model(cfg, seed=layers).train()
    g = torch.Generator().manual_seed(0)
    B, T = 5, cfg.context_len
    states, rtg = torch.randn(B, T, 3, generator=g), torch.randn(B, T, 1, generator=g)
    actions = torch.randn(B, T, 2, generator=g)
    timesteps = torch.randint(0, 50, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:3, :2] = False  # left padding, as the sampler pads short segments

    def loss_and_grads(fn):
        model.zero_grad()
        pred = fn(states, actions, rtg, timesteps, mask)
        if discrete:
            loss = torch.nn.functional.cross_entropy(pred[mask], actions[mask].argmax(-1))
        else:
            loss = torch.nn.functional.mse_loss(pred[mask], actions[mask])
        loss.backward()
        return pred.detach(), loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    pred_ref, loss_ref, grads_ref = loss_and_grads(model.forward)
    pred_fast, loss_fast, grads_fast = loss_and_grads(model.predict_actions)
    assert torch.allclose(pred_fast, pred_ref, atol=1e-6, rtol=0)  # padded rows too
    assert loss_fast == pytest.approx(loss_ref, rel=1e-6, abs=1e-7)
    for name, g_ref in grads_ref.items():
        assert torch.allclose(grads_fast[name], g_ref, atol=1e-6, rtol=1e-5), name


def test_training_fast_path_steps_aside_for_hooks():
    cfg = DTConfig(
        state_dim=3,
        act_dim=1,
        n_layers=2,
        d_model=32,
        n_heads=2,
        d_mlp=64,
        context_len=4,
        max_ep_len=50,
    )
    model = random_model(cfg).eval()
    s, a, r = torch.randn(2, 4, 3), torch.randn(2, 4, 1), torch.randn(2, 4, 1)
    t = torch.arange(4).expand(2, 4)
    seen = []
    with model.hooks([("blocks.1.hook_mlp_out", lambda x, name: seen.append(x.shape))]):
        hooked = model.predict_actions(s, a, r, t)
    assert seen == [(2, 12, 32)]  # every token of the last block, as forward computes them
    assert torch.equal(hooked, model(s, a, r, t))


def test_trainer_loss_uses_the_training_fast_path(registry, monkeypatch):
    from dtzoo.data import load_trajectories
    from dtzoo.train import Trainer

    spec = registry.resolve("pendulum-2L-seed0")
    trainer = Trainer(
        spec, load_trajectories(spec.env.dataset), 1, registry.checkpoints, torch.device("cpu")
    )
    calls = []
    original = DecisionTransformer.predict_actions
    monkeypatch.setattr(
        DecisionTransformer,
        "predict_actions",
        lambda self, *a: calls.append(1) or original(self, *a),
    )
    batch = trainer.sampler.sample(8)
    trainer.model.eval()  # no dropout: the two losses are comparable number for number
    fast = trainer.loss(batch)
    b = {k: torch.from_numpy(v) for k, v in batch.items()}
    pred = trainer.model(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])
    ref = torch.nn.functional.mse_loss(pred[b["mask"]], b["actions"][b["mask"]])
    assert calls == [1] and fast.item() == pytest.approx(ref.item(), rel=1e-6)
