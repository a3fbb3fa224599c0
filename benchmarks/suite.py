"""The benchmark rows. Each compares dtzoo with a reference on the same data, same process,
warm-up first, median of several repetitions.

    python -m benchmarks            # full sizes, rewrites docs/benchmarks.md
    python -m benchmarks --quick    # tiny sizes (what the test suite runs)
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import reference

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DATASET = "reference/halfcheetah/mixed-v0"
REFERENCE_STORE = ROOT.parent / "shared" / "datasets"


@dataclass
class Row:
    figure: str
    dtzoo: float
    reference: float | None
    unit: str
    goal: str
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference is None or not self.reference or not self.dtzoo:
            return None
        return self.dtzoo / self.reference if self.higher_is_better else self.reference / self.dtzoo


def median_time(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------------- data


def load_data(dataset_id: str):
    from dtzoo.data import load_trajectories

    return load_trajectories(dataset_id)


def bench_sampling(data, reps: int, calls: int) -> tuple[Row, dict]:
    from dtzoo.data import SegmentSampler

    mean, std = data.state_stats()
    sampler = SegmentSampler(data, 20, 1000, 1000.0, seed=0)
    trajs = reference.split_trajectories(data)
    ours = median_time(lambda: [sampler.sample(64) for _ in range(calls)], reps) / calls
    ref = (
        median_time(
            lambda: [
                reference.get_batch(trajs, 64, 20, 1000, mean, std, 1000.0) for _ in range(calls)
            ],
            reps,
        )
        / calls
    )
    row = Row(
        "batch sampling (64 x 20 steps)",
        ours * 1e3,
        ref * 1e3,
        "ms/batch",
        ">= 20x",
        higher_is_better=False,
        note=f"{int(data.lengths.sum())}-step dataset",
    )
    return row, {}


# ----------------------------------------------------------------------------- training


def paper_config(
    data=None, n_layers: int = 3, state_dim: int | None = None, act_dim: int | None = None
):
    """The DT paper's gym architecture, for a dataset's dims (or the given ones)."""
    from dtzoo.model import DTConfig

    return DTConfig(
        state_dim=state_dim or data.state_dim,
        act_dim=act_dim or data.action_space.dim,
        n_layers=n_layers,
        d_model=128,
        n_heads=1,
        d_mlp=512,
        context_len=20,
        max_ep_len=1000,
        activation="relu",
        dropout=0.1,
    )


def make_batches(data, n: int, batch_size: int = 64) -> list[dict[str, torch.Tensor]]:
    from dtzoo.data import SegmentSampler

    sampler = SegmentSampler(data, 20, 1000, 1000.0, seed=0)
    return [
        {k: torch.from_numpy(v) for k, v in sampler.sample(batch_size).items()} for _ in range(n)
    ]


def train_loop(
    forward: Callable, model: torch.nn.Module, batches, autocast: bool = False
) -> list[float]:
    """The DT paper's step: AdamW(1e-4, wd 1e-4), masked MSE on actions, clip 0.25."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    model.train()
    losses = []
    for b in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            pred = forward(b)
        mask = b["mask"]
        loss = F.mse_loss(pred.float()[mask], b["actions"][mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        losses.append(loss.item())
    return losses


def ours_forward(model) -> Callable:
    """What dtzoo's Trainer.loss runs: the training fast path (`predict_actions`)."""
    return lambda b: model.predict_actions(
        b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"]
    )


def paired_models(data, n_layers: int):
    """(ours, theirs, theirs_forward): a paper-config DT and transformers'
    DecisionTransformerModel with the same weights; `theirs_forward(batch)` -> actions."""
    from transformers import DecisionTransformerModel

    from dtzoo.convert import to_transformers
    from dtzoo.model import DecisionTransformer

    torch.manual_seed(0)
    ours = DecisionTransformer(paper_config(data, n_layers))
    hf_config, hf_state = to_transformers(ours)
    theirs = DecisionTransformerModel(hf_config)
    theirs.load_state_dict(hf_state, strict=True)

    def theirs_forward(b):
        return theirs(
            states=b["states"],
            actions=b["actions"],
            rewards=None,
            returns_to_go=b["returns_to_go"],
            timesteps=b["timesteps"],
            attention_mask=b["mask"].long(),
            return_dict=True,
        ).action_preds

    return ours, theirs, theirs_forward


def bench_training(data, steps: int, reps: int, curve_steps: int) -> tuple[list[Row], dict]:
    """fp32 1L and 3L, and bf16 autocast 3L, against transformers' DecisionTransformerModel
    (fp32) with the same config, weights and batches; both sides alternate repetitions."""
    from dtzoo.model import DecisionTransformer

    batches = make_batches(data, steps)
    rows, times = [], {}
    for n_layers in (1, 3):
        ours, theirs, theirs_fwd = paired_models(data, n_layers)

        sides = {
            "ours": lambda m=ours: train_loop(ours_forward(m), m, batches),
            "theirs": lambda m=theirs, f=theirs_fwd: train_loop(f, m, batches),
        }
        if n_layers == 3:
            sides["bf16"] = lambda m=ours: train_loop(ours_forward(m), m, batches, autocast=True)
        t = {k: v / steps for k, v in median_times(sides, reps).items()}
        times[n_layers] = t
        rows.append(
            Row(
                f"training steps/s, fp32, {n_layers}L (d128, K20, batch 64)",
                1 / t["ours"],
                1 / t["theirs"],
                "steps/s",
                ">= 1.8x" if n_layers == 1 else ">= 1.3x",
                note="reference: transformers DecisionTransformerModel, same config",
            )
        )

    # loss curves from the same initialisation and batches: fp32 vs bf16 autocast
    curve_batches = make_batches(data, curve_steps)
    curves = {}
    for autocast in (False, True):
        torch.manual_seed(0)
        fresh = DecisionTransformer(paper_config(data))
        curves[autocast] = train_loop(ours_forward(fresh), fresh, curve_batches, autocast=autocast)
    curve_fp32, curve_bf16 = curves[False], curves[True]
    tail = max(1, curve_steps // 4)
    fp32_end, bf16_end = float(np.mean(curve_fp32[-tail:])), float(np.mean(curve_bf16[-tail:]))
    noise = float(np.std(curve_fp32[-tail:]))
    rows.append(
        Row(
            "training steps/s, bf16 autocast 3L vs reference fp32 3L",
            1 / times[3]["bf16"],
            1 / times[3]["theirs"],
            "steps/s",
            ">= 2.2x",
            note=f"loss over the last {tail} of {curve_steps} steps: fp32 {fp32_end:.4f}, "
            f"bf16 {bf16_end:.4f} (step-to-step std {noise:.4f})",
        )
    )
    return rows, {"loss_fp32": fp32_end, "loss_bf16": bf16_end, "loss_noise": noise}


def median_times(
    sides: dict[str, Callable[[], object]], reps: int, warmup: bool = True
) -> dict[str, float]:
    """Median wall time of each side; a warm-up run each, then the sides alternate, so a
    change in machine load hits all of them alike."""
    for fn in sides.values() if warmup else ():
        fn()
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(reps):
        for k, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- evaluation

# two target returns per env, as the DT paper evaluates (Pendulum: for the tiny test run)
EVAL_TARGETS = {
    "Hopper-v5": [3600.0, 1800.0],
    "HalfCheetah-v5": [12000.0, 6000.0],
    "Pendulum-v1": [-150.0, -300.0],
}


def eval_model(gym_id: str, n_layers: int):
    """A random-weight paper-config model for `gym_id` (dims from its spaces), with its
    ModelConfig. The action head is scaled down (x0.1) so Hopper stands ~100 steps instead of
    falling at step 12: closer to a trained model's long episodes, and the same network work."""
    import gymnasium as gym

    from dtzoo.checkpoint import ModelConfig
    from dtzoo.model import DecisionTransformer

    env = gym.make(gym_id)
    sd, ad = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low.tolist(), env.action_space.high.tolist()
    env.close()
    torch.manual_seed(0)
    cfg = paper_config(n_layers=n_layers, state_dim=sd, act_dim=ad)
    model = DecisionTransformer(cfg).eval()
    with torch.no_grad():
        model.predict_action.weight.mul_(0.1)
    arch = cfg.architecture()
    config = ModelConfig(
        model_id=f"bench-{n_layers}L-seed0",
        architecture=arch,
        state_dim=sd,
        act_dim=ad,
        action_space={"kind": "box", "low": low, "high": high},
        state_mean=[0.0] * sd,
        state_std=[1.0] * sd,
        reward_scale=1000.0,
        target_returns=EVAL_TARGETS.get(gym_id, [1000.0, 500.0]),
        env={
            "key": "bench",
            "gym_id": gym_id,
            "max_ep_len": 1000,
            "ref_scores": {"random": 0.0, "expert": 1.0},
        },
        dataset={"id": "none"},
        recipe={},
        seed=0,
        step=0,
        total_steps=0,
    )
    return model, config


def bench_eval(
    gym_id: str, n_layers: int, episodes: int, reps: int, random_steps: int
) -> tuple[list[Row], dict]:
    """dtzoo's evaluate (episodes x 2 targets, one batch) against the DT paper's
    one-episode-at-a-time loop on the same model and seeds; for 1L also against stepping the
    same vector env with random actions (what the simulator alone allows)."""
    import gymnasium as gym

    from dtzoo.evaluate import episode_seeds, evaluate, rollout

    model, config = eval_model(gym_id, n_layers)
    targets = config.target_returns
    seeds = episode_seeds(0, episodes)
    result: dict = {}
    zeros = np.zeros(config.state_dim, np.float32)
    ones = np.ones(config.state_dim, np.float32)

    def ours():
        result["ours"] = evaluate(model, config, episodes=episodes)["results"]

    def ours_overlap():  # the envs in a worker process, overlapping the model
        rollout(
            model, config, [t for t in targets for _ in seeds], seeds * len(targets), overlap=True
        )

    def theirs():
        env = gym.make(gym_id)
        result["theirs"] = [
            reference.evaluate_episode_rtg(env, model, 1000, 1000.0, zeros, ones, target, s, 20)
            for target in targets
            for s in seeds
        ]
        env.close()

    sides = {"ours": ours, "theirs": theirs}
    if n_layers == 1:
        sides["overlap"] = ours_overlap
    ours()  # warm-up: evaluate makes its vector env once per process and reuses it
    t = median_times(sides, reps, warmup=False)  # the reference loop takes minutes
    steps = sum(sum(r["lengths"]) for r in result["ours"])
    ref_steps = sum(n for _, n in result["theirs"])
    ours_returns = np.concatenate([r["returns"] for r in result["ours"]])
    diff = float(np.max(np.abs(ours_returns - np.array([r for r, _ in result["theirs"]]))))
    label = f"{n_layers}L, {episodes} episodes x {len(targets)} targets, {gym_id}"
    rows = [
        Row(
            f"evaluation env-steps/s, {label}",
            steps / t["ours"],
            ref_steps / t["theirs"],
            "env-steps/s",
            ">= 10x" if n_layers == 1 else ">= 4x",
            note=f"reference: the DT paper's loop; max |return difference| over the same "
            f"seeds {diff:.3g}; mean episode {steps / len(ours_returns):.0f} steps",
        )
    ]
    if n_layers == 1:
        sim = random_action_steps_per_s(gym_id, len(ours_returns), random_steps, reps)
        rows.append(
            Row(
                f"evaluation env-steps/s vs the simulator, {label}",
                steps / t["ours"],
                sim,
                "env-steps/s",
                ">= 0.6x",
                note=f"reference: the same {len(ours_returns)}-env vector env stepped "
                f"with random actions; with the env worker process (overlap) "
                f"{steps / t['overlap']:.0f} env-steps/s",
            )
        )
    return rows, {"return_diff": diff}


def random_action_steps_per_s(gym_id: str, n: int, steps: int, reps: int) -> float:
    """Env-steps/s of an n-env synchronous vector env (what evaluate uses) on random actions."""
    from dtzoo.observations import make_vec_env

    envs = make_vec_env(gym_id, "vector", n)
    try:
        envs.reset(seed=0)
        actions = [envs.action_space.sample() for _ in range(steps)]

        def run():
            for a in actions:
                envs.step(a)

        return n * steps / median_times({"sim": run}, reps)["sim"]
    finally:
        envs.close()


# ----------------------------------------------------------------------------- CLI


def dtzoo_exe() -> str:
    exe = Path(sys.executable).parent / "dtzoo"
    return str(exe) if exe.exists() else shutil.which("dtzoo") or "dtzoo"


def wall(cmd: list[str], env: dict, reps: int) -> float:
    return median_time(
        lambda: subprocess.run(cmd, env=env, capture_output=True, check=True), reps, warmup=1
    )


def bench_cli(reps: int) -> tuple[list[Row], dict]:
    """`dtzoo --help`, `dtzoo list` and a cached `dtzoo pull` (local hub), whole processes."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DTZOO_HOME": tmp, "MINARI_DATASETS_PATH": str(Path(tmp) / "minari")}
        exe = dtzoo_exe()
        help_s = wall([exe, "--help"], env, reps)
        list_s = wall([exe, "list"], env, reps)
        pull_s = bench_cached_pull(Path(tmp), env, reps)
    rows = [
        Row("`dtzoo --help` wall time", help_s, None, "s", "<= 0.3 s", higher_is_better=False),
        Row("`dtzoo list` wall time", list_s, None, "s", "<= 0.5 s", higher_is_better=False),
        Row(
            "cached `dtzoo pull` wall time (local hub)",
            pull_s,
            None,
            "s",
            "<= 0.5 s",
            higher_is_better=False,
        ),
    ]
    return rows, {}


def bench_cached_pull(home: Path, env: dict, reps: int) -> float:
    """Publish a step-0 model to the local hub of `home`, pull it once, then time cached pulls."""
    from dtzoo.checkpoint import ModelConfig, save_model
    from dtzoo.hub.local import LocalHub
    from dtzoo.model import DecisionTransformer, DTConfig

    cfg = DTConfig(state_dim=3, act_dim=1, d_model=32, d_mlp=64, max_ep_len=200)
    config = ModelConfig(
        model_id="pendulum-1L-seed0",
        architecture={
            "n_layers": 1,
            "d_model": 32,
            "n_heads": 1,
            "d_mlp": 64,
            "context_len": 20,
            "max_ep_len": 200,
            "activation": "relu",
            "dropout": 0.1,
        },
        state_dim=3,
        act_dim=1,
        action_space={"kind": "box", "low": [-2.0], "high": [2.0]},
        state_mean=[0.0] * 3,
        state_std=[1.0] * 3,
        reward_scale=100.0,
        target_returns=[-150.0],
        env={
            "key": "pendulum",
            "gym_id": "Pendulum-v1",
            "max_ep_len": 200,
            "ref_scores": {"random": -1227.7, "expert": -147.8},
        },
        dataset={"id": "none"},
        recipe={},
        seed=0,
        step=0,
        total_steps=0,
    )
    src = save_model(DecisionTransformer(cfg), config, home / "model")
    hub = LocalHub(home / "hub")
    hub.publish(src, "dtzoo/pendulum-1L-seed0")
    cmd = [dtzoo_exe(), "pull", "pendulum-1L-seed0", "--hub", "local", "--org", "dtzoo"]
    return wall(cmd, env, reps)


# ----------------------------------------------------------------------------- memory


MEMORY_SCRIPT = """
import resource, sys, torch
from dtzoo.data import load_trajectories
from dtzoo.registry import load_registry
from dtzoo.train import Trainer
reg = load_registry()
spec = reg.resolve("halfcheetah-3L-seed0")
spec.env.dataset = sys.argv[1]
data = load_trajectories(sys.argv[1])
trainer = Trainer(spec, data, int(sys.argv[2]), reg.checkpoints, torch.device("cpu"))
trainer.checkpoint_steps = set()
trainer.run_steps()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_memory(dataset_id: str, steps: int) -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DTZOO_HOME": tmp}
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, dataset_id, str(steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    peak_mb = int(out.stdout.strip().splitlines()[-1]) / 1024
    return Row(
        f"peak memory, training {steps} steps on {dataset_id}",
        peak_mb,
        None,
        "MB",
        "<= 2 GB",
        higher_is_better=False,
        note="whole process (ru_maxrss)",
    )


def seed_everything(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
