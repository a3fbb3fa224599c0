"""Measured bounds for rows below their goal: where the time of one side goes, by op.

    python -m benchmarks.profile train      # fp32 3L training steps: dtzoo vs transformers
    python -m benchmarks.profile eval       # 1L and 3L Agent steps (20 envs) vs the simulator

Each prints torch.profiler's table (self CPU time by op) and the share spent in matrix
multiplications, which both sides of a comparison run with the same kernels.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from benchmarks import suite

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def profiled(fn, label: str) -> float:
    """Run fn under torch.profiler; print the top ops and return the matmul share."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(f"\n## {label}: {total / 1e3:.0f} ms self CPU, matmul {100 * mm / total:.0f}%")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    return mm / total


def block_flops(n_layers: int, tokens: int, state_tokens_only_last: bool) -> int:
    """Matrix-multiply FLOPs of the blocks per sequence, in units of d_model^2 per token:
    QKV 6, output 2, MLP 16 (d_mlp = 4 d_model); the last block on a third of the tokens
    skips Q, output and MLP (20 of 24)."""
    full = 24 * tokens * n_layers
    return full - (20 * tokens * 2 // 3 if state_tokens_only_last else 0)


def train(steps: int = 5) -> None:
    data = suite.load_data(suite.REFERENCE_DATASET)
    batches = suite.make_batches(data, steps)
    for n_layers in (1, 3):
        ours, theirs, theirs_fwd = suite.paired_models(data, n_layers)

        profiled(
            lambda m=ours: suite.train_loop(suite.ours_forward(m), m, batches),
            f"dtzoo fp32 {n_layers}L, {steps} steps",
        )
        profiled(
            lambda m=theirs, f=theirs_fwd: suite.train_loop(f, m, batches),
            f"transformers fp32 {n_layers}L, {steps} steps",
        )
        ratio = block_flops(n_layers, 60, False) / block_flops(n_layers, 60, True)
        print(f"block matmul FLOPs, reference / dtzoo ({n_layers}L): {ratio:.2f}")


def evaluation(steps: int = 200, n: int = 20) -> None:
    from dtzoo.agent import Agent
    from dtzoo.observations import make_vec_env

    for n_layers in (1, 3):
        model, config = suite.eval_model("HalfCheetah-v5", n_layers)
        agent = Agent(model, config, num_envs=n)
        obs = np.random.default_rng(0).normal(size=(n, config.state_dim)).astype(np.float32)

        def run(agent=agent, obs=obs):
            agent.reset()
            for _ in range(steps):
                agent.act(obs)
                agent.observe(np.ones(n))

        profiled(run, f"Agent.act, {n_layers}L, {n} envs, {steps} steps")
        t0 = time.process_time()
        run()
        print(
            f"{n_layers}L: {1e3 * (time.process_time() - t0) / steps:.2f} ms CPU per step "
            f"of {n} envs"
        )
    envs = make_vec_env("HalfCheetah-v5", "vector", n)
    envs.reset(seed=0)
    actions = [envs.action_space.sample() for _ in range(steps)]
    t0 = time.process_time()
    for a in actions:
        envs.step(a)
    print(
        f"simulator: {1e3 * (time.process_time() - t0) / steps:.2f} ms CPU per step of {n} "
        "envs (random actions)"
    )
    envs.close()


if __name__ == "__main__":
    if "MINARI_DATASETS_PATH" not in os.environ and suite.REFERENCE_STORE.is_dir():
        os.environ["MINARI_DATASETS_PATH"] = str(suite.REFERENCE_STORE)
    torch.set_num_threads(1)
    what = sys.argv[1] if len(sys.argv) > 1 else "train"
    {"train": train, "eval": evaluation}[what]()
