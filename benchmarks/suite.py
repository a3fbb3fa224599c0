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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    ref = median_time(lambda: [reference.get_batch(trajs, 64, 20, 1000, mean, std, 1000.0)
                               for _ in range(calls)], reps) / calls
    row = Row("batch sampling (64 x 20 steps)", ours * 1e3, ref * 1e3, "ms/batch", ">= 20x",
              higher_is_better=False, note=f"{int(data.lengths.sum())}-step dataset")
    return row, {}


# ----------------------------------------------------------------------------- training


def paper_config(data, n_layers: int = 3):
    from dtzoo.model import DTConfig

    return DTConfig(state_dim=data.state_dim, act_dim=data.action_space.dim, n_layers=n_layers,
                    d_model=128, n_heads=1, d_mlp=512, context_len=20, max_ep_len=1000,
                    activation="relu", dropout=0.1)


def make_batches(data, n: int, batch_size: int = 64) -> list[dict[str, torch.Tensor]]:
    from dtzoo.data import SegmentSampler

    sampler = SegmentSampler(data, 20, 1000, 1000.0, seed=0)
    return [{k: torch.from_numpy(v) for k, v in sampler.sample(batch_size).items()} for _ in range(n)]


def train_loop(forward: Callable, model: torch.nn.Module, batches, autocast: bool = False) -> list[float]:
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


def bench_training(data, steps: int, reps: int, curve_steps: int) -> tuple[list[Row], dict]:
    from transformers import DecisionTransformerModel

    from dtzoo.convert import to_transformers
    from dtzoo.model import DecisionTransformer

    torch.manual_seed(0)
    ours = DecisionTransformer(paper_config(data))
    hf_config, hf_state = to_transformers(ours)
    theirs = DecisionTransformerModel(hf_config)
    theirs.load_state_dict(hf_state, strict=True)
    batches = make_batches(data, steps)

    def ours_fwd(b):
        return ours(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])

    def theirs_fwd(b):
        return theirs(states=b["states"], actions=b["actions"], rewards=None,
                      returns_to_go=b["returns_to_go"], timesteps=b["timesteps"],
                      attention_mask=b["mask"].long(), return_dict=True).action_preds

    t_ours = median_time(lambda: train_loop(ours_fwd, ours, batches), reps) / steps
    t_theirs = median_time(lambda: train_loop(theirs_fwd, theirs, batches), reps) / steps
    t_amp = median_time(lambda: train_loop(ours_fwd, ours, batches, autocast=True), reps) / steps

    # loss curves from the same initialisation and batches: fp32 vs bf16 autocast
    curve_batches = make_batches(data, curve_steps)
    curves = {}
    for autocast in (False, True):
        torch.manual_seed(0)
        fresh = DecisionTransformer(paper_config(data))
        curves[autocast] = train_loop(lambda b: fresh(b["states"], b["actions"], b["returns_to_go"],
                                                      b["timesteps"], b["mask"]),
                                      fresh, curve_batches, autocast=autocast)
    curve_fp32, curve_bf16 = curves[False], curves[True]
    tail = max(1, curve_steps // 4)
    fp32_end, bf16_end = float(np.mean(curve_fp32[-tail:])), float(np.mean(curve_bf16[-tail:]))
    noise = float(np.std(curve_fp32[-tail:]))
    rows = [
        Row("training steps/s, fp32 (3L, d128, K20, batch 64)", 1 / t_ours, 1 / t_theirs,
            "steps/s", ">= 1.3x", note="reference: transformers DecisionTransformerModel"),
        Row("training steps/s, bf16 autocast vs reference fp32", 1 / t_amp, 1 / t_theirs,
            "steps/s", ">= 2x",
            note=f"loss over the last {tail} of {curve_steps} steps: fp32 {fp32_end:.4f}, bf16 "
                 f"{bf16_end:.4f} (step-to-step std {noise:.4f})"),
    ]
    return rows, {"loss_fp32": fp32_end, "loss_bf16": bf16_end, "loss_noise": noise}


# ----------------------------------------------------------------------------- evaluation


def bench_eval(data, gym_id: str, episodes: int, reps: int) -> tuple[Row, dict]:
    import gymnasium as gym

    from dtzoo.checkpoint import ModelConfig
    from dtzoo.evaluate import episode_seeds, evaluate
    from dtzoo.model import DecisionTransformer

    torch.manual_seed(0)
    cfg = paper_config(data)
    model = DecisionTransformer(cfg).eval()
    mean, std = data.state_stats()
    config = ModelConfig(
        model_id="bench-3L-seed0", architecture={k: getattr(cfg, k) for k in (
            "n_layers", "d_model", "n_heads", "d_mlp", "context_len", "max_ep_len", "activation", "dropout")},
        state_dim=cfg.state_dim, act_dim=cfg.act_dim, action_space=data.action_space.to_dict(),
        state_mean=mean.tolist(), state_std=std.tolist(), reward_scale=1000.0,
        target_returns=[6000.0], env={"key": "bench", "gym_id": gym_id, "max_ep_len": 1000,
                                      "ref_scores": {"random": 0.0, "expert": 1.0}},
        dataset={"id": data.dataset_id}, recipe={}, seed=0, step=0, total_steps=0)
    seeds = episode_seeds(0, episodes)
    result: dict = {}

    def ours():
        result["ours"] = evaluate(model, config, episodes=episodes, targets=[6000.0])["results"][0]

    def theirs():
        env = gym.make(gym_id)
        out = [reference.evaluate_episode_rtg(env, model, 1000, 1000.0, mean, std, 6000.0, s, 20)
               for s in seeds]
        result["theirs"] = out

    t_ours = median_time(ours, reps, warmup=0)
    t_theirs = median_time(theirs, max(1, reps // 2), warmup=0)
    steps = sum(result["ours"]["lengths"])
    ref_returns = [r for r, _ in result["theirs"]]
    diff = float(np.max(np.abs(np.array(result["ours"]["returns"]) - np.array(ref_returns))))
    row = Row(f"evaluation env-steps/s, {episodes} episodes, {gym_id}", steps / t_ours,
              sum(n for _, n in result["theirs"]) / t_theirs, "env-steps/s", ">= 8x",
              note=f"max |return difference| over the same seeds: {diff:.3g}")
    return row, {"return_diff": diff, "ours": result["ours"]["returns"], "theirs": ref_returns}


# ----------------------------------------------------------------------------- CLI


def dtzoo_exe() -> str:
    exe = Path(sys.executable).parent / "dtzoo"
    return str(exe) if exe.exists() else shutil.which("dtzoo") or "dtzoo"


def wall(cmd: list[str], env: dict, reps: int) -> float:
    return median_time(lambda: subprocess.run(cmd, env=env, capture_output=True, check=True),
                       reps, warmup=1)


def bench_cli(reps: int) -> tuple[list[Row], dict]:
    """`dtzoo --help`, `dtzoo list` and a cached `dtzoo pull` (local hub), whole processes."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DTZOO_HOME": tmp, "MINARI_DATASETS_PATH": str(Path(tmp) / "minari")}
        exe = dtzoo_exe()
        help_s = wall([exe, "--help"], env, reps)
        list_s = wall([exe, "list"], env, reps)
        pull_s = bench_cached_pull(Path(tmp), env, reps)
    rows = [Row("`dtzoo --help` wall time", help_s, None, "s", "<= 0.3 s", higher_is_better=False),
            Row("`dtzoo list` wall time", list_s, None, "s", "<= 0.5 s", higher_is_better=False),
            Row("cached `dtzoo pull` wall time (local hub)", pull_s, None, "s", "<= 0.5 s",
                higher_is_better=False)]
    return rows, {}


def bench_cached_pull(home: Path, env: dict, reps: int) -> float:
    """Publish a step-0 model to the local hub of `home`, pull it once, then time cached pulls."""
    from dtzoo.checkpoint import ModelConfig, save_model
    from dtzoo.hub.local import LocalHub
    from dtzoo.model import DecisionTransformer, DTConfig

    cfg = DTConfig(state_dim=3, act_dim=1, d_model=32, d_mlp=64, max_ep_len=200)
    config = ModelConfig(
        model_id="pendulum-1L-seed0", architecture={"n_layers": 1, "d_model": 32, "n_heads": 1,
        "d_mlp": 64, "context_len": 20, "max_ep_len": 200, "activation": "relu", "dropout": 0.1},
        state_dim=3, act_dim=1, action_space={"kind": "box", "low": [-2.0], "high": [2.0]},
        state_mean=[0.0] * 3, state_std=[1.0] * 3, reward_scale=100.0, target_returns=[-150.0],
        env={"key": "pendulum", "gym_id": "Pendulum-v1", "max_ep_len": 200,
             "ref_scores": {"random": -1227.7, "expert": -147.8}},
        dataset={"id": "none"}, recipe={}, seed=0, step=0, total_steps=0)
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
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, dataset_id, str(steps)],
                             env=env, capture_output=True, text=True, check=True)
    peak_mb = int(out.stdout.strip().splitlines()[-1]) / 1024
    return Row(f"peak memory, training {steps} steps on {dataset_id}", peak_mb, None, "MB",
               "<= 2 GB", higher_is_better=False, note="whole process (ru_maxrss)")


def seed_everything(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
