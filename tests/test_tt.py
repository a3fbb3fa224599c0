"""The Trajectory Transformer core (dtzoo.tt): discretisation, windows, the model and its hook
points, training, and beam-search planning, on tiny Pendulum data made here."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from dtzoo.architecture import Architecture, field_of
from dtzoo.collect import collect_episodes
from dtzoo.data import ActionSpace, Trajectories
from dtzoo.errors import UsageError
from dtzoo.tt import (
    Discretizer,
    PlanSettings,
    TrajectoryTransformer,
    TTAgent,
    TTConfig,
    TTRecipe,
    WindowSampler,
    beam_plan,
    discounted_values,
    greedy_decode,
    rollout,
    tokenize,
    train_tt,
)
from dtzoo.tt.plan import KVCache, cached_logits

TINY = dict(n_bins=20, n_layers=2, n_heads=2, d_model=32, d_mlp=64, context_len=6)


def pendulum_trajectories(episodes: int = 8, seed: int = 0) -> Trajectories:
    """Scripted Pendulum-v1 episodes with a noise ladder, as dtzoo.data would load them."""
    eps = collect_episodes(
        "Pendulum-v1", "scripted", episodes, noise=[0.0, 0.5, 2.0], seed=seed, num_envs=episodes
    )
    space = ActionSpace.from_gym(gym.make("Pendulum-v1").action_space)
    lengths = np.array([len(e.rewards) for e in eps], np.int64)
    return Trajectories(
        observations=np.concatenate([e.observations[:-1] for e in eps]).astype(np.float32),
        actions=space.to_model(np.concatenate([e.actions for e in eps])),
        rewards=np.concatenate([e.rewards for e in eps]).astype(np.float32),
        starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        lengths=lengths,
        action_space=space,
        dataset_id="test/pendulum/scripted-v0",
        gym_id="Pendulum-v1",
        minari_version="",
        fingerprint="",
    )


@pytest.fixture(scope="module")
def pendulum() -> Trajectories:
    return pendulum_trajectories()


@pytest.fixture(scope="module")
def tiny_model() -> TrajectoryTransformer:
    torch.manual_seed(0)
    return TrajectoryTransformer(TTConfig(observation_dim=3, action_dim=1, **TINY)).eval()


@pytest.mark.parametrize("kind", ["uniform", "quantile"])
def test_discretizer_round_trip_within_half_a_bin(kind):
    rng = np.random.default_rng(0)
    data = np.stack(
        [rng.normal(size=5000), rng.exponential(size=5000), rng.integers(0, 3, 5000)], axis=1
    )  # a Gaussian, a long tail, and a dimension with repeated values
    disc = Discretizer.fit(data, n_bins=50, kind=kind)
    tokens = disc.encode(data)
    assert tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() <= 49
    err = np.abs(disc.decode(tokens) - data)
    half = np.take_along_axis(disc.widths, tokens, axis=0) / 2
    assert (err <= half + 1e-12).all()
    assert err[:, 0].max() > 0  # a real round trip, not an identity
    if kind == "quantile":  # every bin of a continuous dimension holds about 1/50 of the data
        counts = np.bincount(tokens[:, 0], minlength=50)
        assert counts.min() >= 80 and counts.max() <= 120
    # config.json round trip: plain lists, the same tokens after it
    back = Discretizer.from_dict(json.loads(json.dumps(disc.to_dict())))
    assert back.kind == kind and np.array_equal(back.encode(data), tokens)
    # one slice of the dimensions alone, and values out of range go to the end bins
    assert np.array_equal(disc.encode(data[:, 1:2], dims=slice(1, 2)), tokens[:, 1:2])
    assert disc.encode(np.array([[-1e9, 1e9, 7.0]])).tolist() == [[0, 49, 49]]


def test_values_and_windows(pendulum):
    assert np.allclose(
        discounted_values(np.array([1.0, 2.0, 4.0, 8.0]), np.array([0, 2]), np.array([2, 2]), 0.5),
        [2.0, 0.0, 8.0, 0.0],  # V_t sums the rewards after t, within its episode
    )
    tt = tokenize(pendulum, n_bins=20, kind="quantile", discount=0.99)
    assert tt.tokens.shape == (len(pendulum.rewards), 6) and tt.transition_dim == 6
    sampler = WindowSampler(tt, context_len=4, max_path_length=150, seed=0)
    batch = sampler.sample(32)
    assert {k: v.shape for k, v in batch.items()} == {k: (32, 23) for k in batch}
    again = WindowSampler(tt, context_len=4, max_path_length=150, seed=0).sample(32)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)  # seeded
    assert np.array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    # a window at the last-but-one step: one more step, then stop tokens; past step 150 no loss
    w = sampler.windows(np.array([0]), np.array([198]))
    full = np.concatenate([w["inputs"][0], w["targets"][0, -1:]]).reshape(4, 6)
    assert np.array_equal(full[:2], tt.tokens[198:200]) and (full[2:] == 20).all()
    assert not w["mask"].any()
    w = sampler.windows(np.array([0]), np.array([147]))
    assert w["mask"][0].sum() == 4 * 6 - 1 - 6  # the targets in step 150 are masked


def test_token_position_round_trip():
    cfg = TTConfig(observation_dim=3, action_dim=2)
    D = cfg.transition_dim
    assert D == 7 and cfg.block_size == 10 * 7 - 1
    kinds = [cfg.token_position(p) for p in range(2 * D)]
    assert kinds[:D] == [
        (0, "observation", 0),
        (0, "observation", 1),
        (0, "observation", 2),
        (0, "action", 0),
        (0, "action", 1),
        (0, "reward", 0),
        (0, "value", 0),
    ]
    assert kinds[D + 4] == (1, "action", 1)
    assert all(cfg.position(*cfg.token_position(p)) == p for p in range(3 * D))
    with pytest.raises(ValueError):
        cfg.position(0, "action", 2)
    assert TTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    arch = json.loads(json.dumps(cfg.architecture()))  # config.json keeps the dims apart
    assert "observation_dim" not in arch and TTConfig.from_architecture(arch, 3, 2) == cfg
    settings = PlanSettings(horizon=6, beam_width=32, k_act=None)
    assert PlanSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


def test_config_shares_the_architecture_settings_with_the_tt_paper_defaults():
    cfg = TTConfig(3, 1)
    assert isinstance(cfg, Architecture)  # the registry checks its fields like a Recipe's
    assert cfg.arch_settings() == dict(
        context_len=10, d_model=128, n_heads=4, d_mlp=512, activation="gelu_exact", dropout=0.1
    )
    assert (cfg.n_bins, cfg.n_layers, cfg.action_weight) == (100, 4, 5.0)
    assert field_of(TTConfig, "dropout").metadata == field_of(Architecture, "dropout").metadata
    for bad, message in (
        (dict(activation="swish"), "activation must be one of"),
        (dict(dropout=1.0), "dropout must be below 1"),
        (dict(context_len=0), "context_len must be positive"),
        (dict(d_model=30), "not divisible by n_heads 4"),
        (dict(n_bins=0), "n_bins must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            TTConfig(3, 1, **bad)
    with pytest.raises(TypeError):
        TTConfig(3, 1, 50)  # only the dims are positional


def hook_shapes(cfg: TTConfig, B: int, L: int) -> dict[str, tuple[int, ...]]:
    """The documented shape of every hook point's activation."""
    d, H = cfg.d_model, cfg.n_heads
    shapes = {"hook_embed": (B, L, d), "hook_pos_embed": (B, L, d)}
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        shapes |= {b + "hook_resid_pre": (B, L, d)}
        shapes |= {b + f"attn.hook_{x}": (B, L, H, d // H) for x in "qkv"}
        shapes |= {b + "attn.hook_attn_scores": (B, H, L, L), b + "attn.hook_pattern": (B, H, L, L)}
        shapes |= {b + "attn.hook_z": (B, L, H, d // H), b + "hook_attn_out": (B, L, d)}
        shapes |= {b + "hook_resid_mid": (B, L, d), b + "mlp.hook_pre": (B, L, cfg.d_mlp)}
        shapes |= {b + "mlp.hook_post": (B, L, cfg.d_mlp), b + "hook_mlp_out": (B, L, d)}
        shapes |= {b + "hook_resid_post": (B, L, d)}
    return shapes | {"hook_final": (B, L, d)}


def test_hook_names_and_cache_shapes(tiny_model):
    cfg = tiny_model.cfg
    tokens = torch.randint(0, cfg.n_bins, (2, 15))
    tokens[1, 12:] = cfg.stop_token
    want = hook_shapes(cfg, 2, 15)
    assert tiny_model.hook_names() == list(want)  # every hook, in forward order
    logits, cache = tiny_model.run_with_cache(tokens)
    assert {k: tuple(v.shape) for k, v in cache.items()} == want  # every hook fired
    assert logits.shape == (2, 15, cfg.n_bins + 1)
    assert torch.equal(logits, tiny_model(tokens))  # caching does not change the output
    # the residual stream starts at token + position embedding
    assert torch.allclose(
        cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"]
    )
    # the paper's mask: no query attends to a value token (position D - 1 of each step)
    D = cfg.transition_dim
    assert (cache["blocks.0.attn.hook_pattern"][..., D - 1 :: D] == 0).all()
    _, only = tiny_model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n)
    assert list(only) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]


def test_run_with_hooks_can_zero_an_activation(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.n_bins, (2, 15))
    plain = tiny_model(tokens)
    zero = lambda act, name: torch.zeros_like(act)
    ablated = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", zero)])
    assert not torch.allclose(ablated, plain)
    assert torch.equal(tiny_model(tokens), plain)  # the hook is gone afterwards
    # a hook that only reads leaves the output alone
    same = tiny_model.run_with_hooks(tokens, fwd_hooks=[(lambda n: True, lambda a, n: None)])
    assert torch.equal(same, plain)
    with pytest.raises(KeyError):
        tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.9.hook_mlp_out", zero)])


def test_value_tokens_are_read_only_at_their_own_position(tiny_model):
    D = tiny_model.cfg.transition_dim
    tokens = torch.randint(0, tiny_model.cfg.n_bins, (1, 15))
    other = tokens.clone()
    other[0, D - 1] = (tokens[0, D - 1] + 7) % tiny_model.cfg.n_bins  # another V_0
    a, b = tiny_model(tokens), tiny_model(other)
    changed = (a - b).abs().amax(-1)[0] > 0
    assert changed.tolist() == [p == D - 1 for p in range(15)]


def test_cached_decoding_matches_the_forward_and_width_one_is_greedy(tiny_model):
    cfg = tiny_model.cfg
    D = cfg.transition_dim
    tokens = torch.randint(0, cfg.n_bins, (3, cfg.block_size))
    cache = KVCache(tiny_model, 3, cfg.block_size)
    parts = [
        cached_logits(tiny_model, tokens[:, a:b], cache) for a, b in ((0, 9), (9, 10), (10, None))
    ]
    assert torch.allclose(torch.cat(parts, 1), tiny_model(tokens), atol=1e-5)
    disc = Discretizer(np.tile(np.linspace(-1.0, 1.0, cfg.n_bins + 1)[:, None], (1, D)))
    prefix = tokens[0, : 2 * D + 3]  # two transitions and an observation
    H = 3
    for window in (None, 3):  # the model's own window (one cache), or crops within the plan
        greedy = greedy_decode(tiny_model, prefix, H * D - 3, window)
        assert torch.equal(greedy_decode(tiny_model, prefix, H * D - 3, window, fast=True), greedy)
        settings = PlanSettings(
            horizon=H, beam_width=1, n_expand=1, k_act=1, k_obs=1, max_context_transitions=window
        )
        plan = beam_plan(tiny_model, prefix, disc, settings)
        assert plan.shape == (H, D)
        assert torch.equal(plan.reshape(-1), greedy[-H * D :])
    # a wider beam samples actions; a plan of valid tokens (never the stop token), the same
    # with a hook attached (then every token runs the reference forward, which hooks see)
    settings = PlanSettings(horizon=H, beam_width=3, k_act=5)
    plan = beam_plan(tiny_model, prefix, disc, settings, torch.Generator().manual_seed(0))
    assert plan.shape == (H, D) and plan.max() < cfg.n_bins
    seen = []
    with tiny_model.hooks([("hook_final", lambda act, name: seen.append(act.shape[1]))]):
        hooked = beam_plan(tiny_model, prefix, disc, settings, torch.Generator().manual_seed(0))
    assert torch.equal(hooked, plan) and max(seen) == len(prefix) + H * D - 3 - 1


def test_loss_falls_on_a_tiny_dataset(pendulum):
    tt = tokenize(pendulum, n_bins=20)
    cfg = TTConfig(observation_dim=3, action_dim=1, **TINY)
    recipe = TTRecipe(steps=60, batch_size=32, warmup_steps=5)
    result = train_tt(tt, recipe, cfg, seed=0)
    first, last = np.mean(result.history[:5]), np.mean(result.history[-5:])
    assert len(result.history) == 60 and last < 0.75 * first
    seen = []
    again = train_tt(
        tt, TTRecipe(steps=3, batch_size=8), cfg, seed=0, on_step=lambda n, m: seen.append(n)
    )
    assert seen == [0, 1, 2, 3]
    assert (
        again.history == train_tt(tt, TTRecipe(steps=3, batch_size=8), cfg, seed=0).history
    )  # seeded


def test_agent_acts_in_pendulum(pendulum, tiny_model):
    tt = tokenize(pendulum, n_bins=20)
    env = gym.make("Pendulum-v1")
    settings = PlanSettings(horizon=2, beam_width=2, context_transitions=3, plan_freq=2)
    agent = TTAgent(tiny_model, tiny_model.cfg, tt.discretizer, settings, pendulum.action_space)
    obs, _ = env.reset(seed=0)
    actions = []
    for _ in range(6):
        action = agent.act(obs)
        assert action.shape == (1,) and -2.0 <= action[0] <= 2.0  # the env's bounds
        obs, reward, *_ = env.step(action)
        agent.observe(reward)
        actions.append(action[0])
    assert len(agent.context) == 3 and all(row.shape == (6,) for row in agent.context)
    agent.reset()
    assert agent.context == [] and agent.act(env.reset(seed=0)[0])[0] == actions[0]  # seeded
    with pytest.raises(UsageError):
        agent.act(obs)  # observe(reward) first
    with pytest.raises(UsageError):
        TTAgent(tiny_model, TTConfig(observation_dim=4, action_dim=1, **TINY), tt.discretizer)


@pytest.mark.slow  # ~25 s on 2 shared cores: 300 training steps and 6 planned episodes
def test_training_beats_the_untrained_model_in_pendulum():
    data = pendulum_trajectories(episodes=24)
    tt = tokenize(data, n_bins=50)
    cfg = TTConfig(3, 1, n_bins=50, n_layers=2, n_heads=2, d_model=64, d_mlp=256, context_len=6)
    trained = train_tt(tt, TTRecipe(steps=300, batch_size=64, warmup_steps=20), cfg, seed=0)
    torch.manual_seed(0)  # train_tt's step-0 weights
    untrained = TrajectoryTransformer(cfg).eval()
    settings = PlanSettings(horizon=2, beam_width=2, context_transitions=3)

    def mean_return(model: TrajectoryTransformer) -> float:
        returns, lengths = rollout(
            model, tt.discretizer, "Pendulum-v1", [1000, 1001, 1002], settings, data.action_space
        )
        assert lengths.tolist() == [200, 200, 200]
        return float(returns.mean())

    # measured: trained about -850, untrained about -1130 (the data's mean is about -360)
    assert mean_return(trained.model) > mean_return(untrained) + 150
