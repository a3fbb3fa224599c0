"""Training one DT: the DT paper's recipe, resumable, with checkpoints on a fixed schedule.

    >>> result = train_model(registry.resolve("pendulum-1L-seed0"), registry.checkpoints)

The loop (AdamW, linear warm-up, gradient clipping, MSE or cross-entropy on the action
predicted from each state token) is `Trainer.run`. Resume state (weights, optimiser moments,
RNG and sampler state) lives in `runs/<id>/resume/state-<step>.safetensors` without pickle, so
a killed run continues bit-for-bit.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dtzoo.checkpoint import ModelConfig, save_model, write_weights
from dtzoo.data import SegmentSampler, Trajectories, check_matches_env, load_trajectories
from dtzoo.dynamics import episode_segments, held_out_episodes
from dtzoo.errors import TrainingError
from dtzoo.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from dtzoo.model import DecisionTransformer, DTConfig
from dtzoo.modeldir import CONFIG, CURVE, WEIGHTS, RunDir
from dtzoo.registry import MAX_STEPS, PRECISIONS, CheckpointSchedule, ModelSpec

LOG_FIELDS = ["step", "loss", "lr", "elapsed_s", "val_loss"]  # val_loss: empty if none held out
ProgressFn = Callable[[int, int, float], None]  # (step, total, loss)


@dataclass
class TrainResult:
    model_id: str
    path: Path
    steps: int
    resumed_from: int | None
    final_loss: float
    seconds: float


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(device)


def env_block(spec: ModelSpec, data: Trajectories) -> dict:
    """config.json's `env`: what an evaluation needs to rebuild and score the env (every
    family writes the same block)."""
    refs = spec.env.ref_scores or data.ref_scores
    if not refs:
        raise TrainingError(
            f"env {spec.env.key!r} takes its reference scores from dataset "
            f"{data.dataset_id!r}, which has none: set ref_scores in the registry"
        )
    env = {
        "key": spec.env.key,
        "gym_id": spec.env.gym_id,
        "max_ep_len": spec.env.max_ep_len,
        "ref_scores": dict(refs),
    }
    observation = data.kind.observation_block(spec.env.frame_stack)
    if observation is not None:  # vector envs keep their config.json exactly as before
        env["observation"] = observation
    if spec.env.max_episode_steps is not None:
        env["max_episode_steps"] = spec.env.max_episode_steps
    return env


def dataset_block(data: Trajectories, val_episodes: np.ndarray | None = None) -> dict:
    """config.json's `dataset`: which data, its fingerprint and returns (and held-out episodes)."""
    block = {
        "id": data.dataset_id,
        "minari_version": data.minari_version,
        "fingerprint": data.fingerprint,
        "episodes": int(len(data.lengths)),
        "steps": int(data.lengths.sum()),
        "return_min": float(data.returns.min()),
        "return_mean": float(data.returns.mean()),
        "return_max": float(data.returns.max()),
    }
    if val_episodes is not None:
        block["val_episodes"] = val_episodes.tolist()
    return block


def make_config(
    spec: ModelSpec, data: Trajectories, mean: np.ndarray, std: np.ndarray, steps: int, step: int
) -> ModelConfig:
    r = spec.recipe
    arch = DTConfig(
        state_dim=data.state_dim,
        act_dim=data.action_space.dim,
        n_layers=spec.n_layers,
        max_ep_len=spec.env.max_ep_len,
        **r.arch_settings(),
    ).architecture()
    arch.update(data.kind.state_encoder(spec.env.frame_stack))
    held_out = held_out_episodes(len(data.lengths), getattr(r, "val_fraction", 0.0), spec.seed)
    return ModelConfig(
        model_id=spec.model_id,
        architecture=arch,
        state_dim=data.state_dim,
        act_dim=data.action_space.dim,
        action_space=data.action_space.to_dict(),
        state_mean=mean.tolist(),
        state_std=std.tolist(),
        reward_scale=spec.env.reward_scale,
        target_returns=list(spec.env.target_returns),
        env=env_block(spec, data),
        dataset=dataset_block(data, held_out),
        recipe={**r.record(), "steps": steps},
        seed=spec.seed,
        step=step,
        total_steps=steps,
    )


class Trainer:
    """One run: model, optimiser, schedule and sampler, plus save/restore of all their state."""

    def __init__(
        self,
        spec: ModelSpec,
        data: Trajectories,
        steps: int,
        schedule: CheckpointSchedule,
        device: torch.device,
    ):
        self.spec, self.data, self.steps, self.device = spec, data, steps, device
        self.dir = RunDir.of(spec.model_id)
        self.run = self.dir.path
        r = spec.recipe
        self.mean, self.std = data.state_stats()
        self.config = make_config(spec, data, self.mean, self.std, steps, step=0)
        torch.manual_seed(spec.seed)  # fixes the initialisation and then dropout
        self.model = DecisionTransformer(self.config.dt_config()).to(device)
        self.optim = torch.optim.AdamW(
            self.model.parameters(), lr=r.lr, weight_decay=r.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.optim, lambda s: min((s + 1) / max(r.warmup_steps, 1), 1.0)
        )
        self.sampler = SegmentSampler(
            data,
            r.context_len,
            spec.env.max_ep_len,
            spec.env.reward_scale,
            seed=spec.seed,
            state_mean=self.mean,
            state_std=self.std,
            frame_stack=spec.env.frame_stack,
        )
        # lazy (`in` is O(1)): a run of 10**20 steps never lists its checkpoints
        self.checkpoint_steps = schedule.merged(spec.env.checkpoints).for_run(steps)
        # held-out episodes: never drawn for training, scored at every log row (val_loss)
        held = np.asarray(self.config.dataset.get("val_episodes", []), np.int64)
        if len(held):
            p = self.sampler.p.copy()
            p[held] = 0.0
            self.sampler.p = p / p.sum()
        self.val_segments = episode_segments(data.lengths, held, r.context_len)
        self.log: list[dict] = []
        self.flushed = 0  # log rows on disk
        self.pending: list[
            float
        ] = []  # losses since the last log row (saved with the resume state)
        self.step = 0

    # -------------------------------------------------------------- the recipe

    def loss(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """Masked MSE (or cross-entropy) of the actions predicted from the state tokens."""
        b = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.spec.recipe.precision == "bf16"
        ):
            # forward's predictions, skipping the last block's work for R and a tokens (the
            # loss reads state tokens only); the plain forward when a hook is attached
            pred = self.model.predict_actions(
                b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"]
            )
        pred, mask = pred.float(), b["mask"]
        if self.config.action_space["kind"] == "discrete":
            return F.cross_entropy(pred[mask], b["actions"][mask].argmax(-1))
        return F.mse_loss(pred[mask], b["actions"][mask])

    def run_steps(self, progress: ProgressFn | None = None) -> float:
        """Train from self.step to self.steps, checkpointing on the schedule."""
        r = self.spec.recipe
        t0 = time.time()
        log_every = max(1, self.steps // 100)
        if self.step == 0 and 0 in self.checkpoint_steps:
            self.save_checkpoint()
        self.model.train()
        while self.step < self.steps:
            loss = self.loss(self.sampler.sample(r.batch_size))
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{self.spec.model_id}: loss is {loss.item()} at step "
                    f"{self.step + 1}; the last good checkpoint is kept"
                )
            self.optim.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.grad_clip)
            if not torch.isfinite(norm):  # the step would turn every weight into NaN
                raise TrainingError(
                    f"{self.spec.model_id}: gradient norm is {norm.item()} at step "
                    f"{self.step + 1}; the last good checkpoint is kept"
                )
            self.optim.step()
            self.sched.step()
            self.step += 1
            self.pending.append(loss.item())
            if self.step % log_every == 0 or self.step == self.steps:
                self.log.append(
                    {
                        "step": self.step,
                        "loss": float(np.mean(self.pending)),
                        "lr": self.sched.get_last_lr()[0],
                        "elapsed_s": round(time.time() - t0, 3),
                        "val_loss": self.validation_loss(),
                    }
                )
                self.pending = []
            if self.step in self.checkpoint_steps:
                self.save_checkpoint()
            if progress:
                progress(self.step, self.steps, self.log[-1]["loss"] if self.log else float("nan"))
            if len(self.log) > self.flushed:  # readers see each row as it is logged
                self.write_log()
        return self.log[-1]["loss"] if self.log else float("nan")

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """The loss on the held-out episodes' fixed segments (eval mode: no dropout, so no RNG
        is drawn and training is unchanged); None when nothing is held out."""
        ep, si = self.val_segments
        if not len(ep):
            return None
        self.model.eval()
        total, weight = 0.0, 0
        bs = self.spec.recipe.batch_size
        for i in range(0, len(ep), bs):
            batch = self.sampler.segments(ep[i : i + bs], si[i : i + bs])
            n = int(batch["mask"].sum())
            total += float(self.loss(batch)) * n
            weight += n
        self.model.train()
        return total / weight

    def write_log(self) -> None:
        """training_log.csv, rewritten atomically (a reader never sees a half-written row)."""
        atomic_write_text(self.dir.log, log_csv(self.log))
        self.flushed = len(self.log)

    # -------------------------------------------------------------- state

    def save_checkpoint(self) -> None:
        """A full model directory for this step, the training log, and the resume state."""
        bad = [k for k, v in self.model.state_dict().items() if not torch.isfinite(v).all()]
        if bad:  # never write (or resume from) weights that are NaN or inf
            raise TrainingError(
                f"{self.spec.model_id}: weights are not finite after step "
                f"{self.step} ({', '.join(bad[:3])}); the last good checkpoint is kept"
            )
        self.model.eval()
        config = dataclasses.replace(self.config, step=self.step)
        save_model(self.model, config, self.dir.checkpoint(self.step).path)
        self.write_log()
        self.save_resume_state()
        self.model.train()

    def save_resume_state(self) -> None:
        meta = {
            "step": self.step,
            "sampler": self.sampler.state(),
            "scheduler": self.sched.state_dict(),  # plain numbers (the lambda is not saved)
            "dataset_fingerprint": self.data.fingerprint,
            "total_steps": self.steps,
            "pending_losses": self.pending,
            "log": self.log,
        }  # the rows so far: a damaged training_log.csv is rewritten
        save_training_state(self.dir, self.model, self.optim, meta, self.device)

    def restore(self) -> int | None:
        """Load the newest resume state, if any; returns the step resumed from."""
        state = self.dir.newest_resume_state()
        if state is None:
            return None
        meta = load_training_state(state, self.model, self.optim, self.sched, self.device)
        check_fingerprint(meta, self.data, self.spec.model_id, self.run)
        self.sampler.set_state(meta["sampler"])
        self.step = meta["step"]
        self.pending = list(meta.get("pending_losses", []))
        log_path = self.dir.log
        if "log" in meta:  # (states written before the log was part of them read the CSV)
            self.log = [dict(row) for row in meta["log"]]
            self.flushed = 0  # rewrite the CSV with the next row: it may be damaged
        elif log_path.is_file():
            try:
                self.log = [row for row in read_log(log_path) if row["step"] <= self.step]
            except (ValueError, KeyError, TypeError) as e:
                raise TrainingError(
                    f"{log_path}: damaged ({str(e)[:80]}); delete {self.run} to train from scratch"
                ) from None
            self.flushed = len(self.log)
        return self.step

    def finish(self) -> None:
        """Write the final model directory at the top of the run (config.json last = trained)."""
        from dtzoo.plots import learning_curve

        self.model.eval()
        config = dataclasses.replace(self.config, step=self.step)
        write_weights(self.model, self.dir.file(WEIGHTS))
        atomic_write_text(self.dir.log, log_csv(self.log))
        learning_curve(self.log, self.dir.file(CURVE), title=self.spec.model_id)
        atomic_write_json(self.dir.file(CONFIG), config.to_dict())
        self.dir.seal(new_weights=True)


def run_length(run: RunDir, steps: int | None, extendable: bool = True) -> int | None:
    """How long `train` of `run` goes: `--steps`, else an unfinished run's own length, else None
    (the recipe's). Cleans an unfinished run's stale temps first, and refuses in one line a
    `--steps` that does not fit: out of bounds, other than an unfinished run's, or other than a
    finished run's where it cannot be extended (`extendable=False`: a family whose learning
    rate schedule spans the run's length)."""
    if steps is not None and not 1 <= steps <= MAX_STEPS:  # before anything sized by it
        raise TrainingError(f"--steps {str(steps)[:30]}: must be from 1 to {MAX_STEPS}")
    trained = run.trained_steps()
    if trained is None:  # (nothing else writes to an unfinished run)
        run.remove_stale_temps()
    state = run.newest_resume_state()
    started = read_resume_state(state, tensors=False)[0]["total_steps"] if state else None
    if trained is not None and steps and steps != trained:
        if not extendable:
            raise TrainingError(
                f"{run.name} is trained for {trained} steps; its learning rate decays over its "
                f"whole run, so it is not extended: delete {run.path} to train it with "
                f"--steps {steps}"
            )
        check_extendable(run.name, trained, steps, state)
    elif state is not None:  # an unfinished run keeps the length it was started with
        if steps and steps != started:
            raise TrainingError(
                f"{run.name}: this run was started with {started} steps; "
                f"resume it with --steps {started}, or delete {run.path} to start over"
            )
        return started
    return steps


def check_extendable(model_id: str, trained: int, steps: int, state: Path | None) -> None:
    """`train --steps N` on a finished run continues it from its final resume state when
    N is larger (the same weights as training N steps at once: the learning-rate schedule does
    not depend on the run's length); anything else is refused in one line."""
    run = RunDir.of(model_id).path
    if steps < trained:
        raise TrainingError(
            f"{model_id} is already trained for {trained} steps, more than --steps {steps}: "
            f"use a training-time checkpoint (`dtzoo list {model_id} --revisions`), or delete "
            f"{run} to train it again with {steps} steps"
        )
    step = int(state.stem.split("-")[1]) if state is not None else None
    if step is None or step < trained:
        raise TrainingError(
            f"{model_id} is trained for {trained} steps but its resume state is gone, so it "
            f"cannot be extended to {steps}: delete {run} to train it again with --steps {steps}"
        )


def save_training_state(run: RunDir, model, optim, meta: dict, device: torch.device) -> None:
    """`resume/state-<step>.safetensors` (no pickle): the model's and the optimiser's tensors,
    torch's RNG, and `meta` (JSON: at least "step"; the scheduler, sampler and log), with a
    digest of it all so a flipped bit is caught; older states are removed after."""
    from safetensors.torch import save as save_tensors

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for pid, state in optim.state_dict()["state"].items():
        for k, v in state.items():
            tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    meta_json = json.dumps(meta)
    data = save_tensors(
        tensors, metadata={"resume": meta_json, "sha256": resume_digest(meta_json, tensors)}
    )
    atomic_write_bytes(run.resume_state(meta["step"]), data)
    for step, old in run.resume_states():
        if step != meta["step"]:
            old.unlink(missing_ok=True)


def load_training_state(path: Path, model, optim, sched, device: torch.device) -> dict:
    """Restore the model, optimiser, scheduler and torch RNG from a resume state (checked
    against its digest); returns its meta for the rest (sampler, log)."""
    meta, tensors = read_resume_state(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt = optim.state_dict()
    for pid in (p for group in opt["param_groups"] for p in group["params"]):
        opt["state"][pid] = {
            k.split(".", 2)[2]: v.to(device)
            for k, v in tensors.items()
            if k.startswith(f"optim.{pid}.")
        }
    optim.load_state_dict(opt)
    sched.load_state_dict(meta["scheduler"])
    for group, lr in zip(optim.param_groups, sched.get_last_lr()):
        group["lr"] = lr
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    return meta


def check_fingerprint(meta: dict, data: Trajectories, model_id: str, run: Path) -> None:
    """A run resumes only on the data it started with."""
    if meta["dataset_fingerprint"] != data.fingerprint:
        raise TrainingError(
            f"{model_id}: the dataset {data.dataset_id!r} changed since this run started "
            f"(fingerprint differs); delete {run} to train from scratch"
        )


def resume_digest(meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over a resume state's metadata and every tensor's name, dtype, shape and bytes
    (safetensors orders its header at random, so the file's own bytes cannot be re-made)."""
    h = hashlib.sha256(meta_json.encode())
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"\0{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def read_resume_state(path: Path, tensors: bool = True) -> tuple[dict, dict]:
    """(metadata, tensors) of a resume state file; safetensors only, never pickle. With the
    tensors, the state is checked against the digest it was saved with: a damaged state is a
    TrainingError, never resumed from (states from before the digest are read unchecked)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    hint = f"delete {path.parent.parent} to train from scratch"
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            meta = json.loads(header["resume"])
            if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
                raise ValueError("no step")
            out = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise TrainingError(f"{path}: unreadable resume state ({str(e)[:80]}); {hint}") from None
    if tensors and "sha256" in header and resume_digest(header["resume"], out) != header["sha256"]:
        raise TrainingError(f"{path}: resume state is corrupt (its sha256 does not match); {hint}")
    return meta, out


def log_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n", restval="")
    w.writeheader()
    w.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return buf.getvalue()


def read_log(path: Path) -> list[dict]:
    """Rows of training_log.csv; `val_loss` is None where the run held nothing out (or the
    log predates validation)."""
    with open(path) as f:
        return [
            {
                "step": int(r["step"]),
                "loss": float(r["loss"]),
                "lr": float(r["lr"]),
                "elapsed_s": float(r["elapsed_s"]),
                "val_loss": float(r["val_loss"]) if r.get("val_loss") else None,
            }
            for r in csv.DictReader(f)
        ]


def train_model(
    spec: ModelSpec,
    schedule: CheckpointSchedule,
    steps: int | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
    precision: str | None = None,
) -> TrainResult:
    """Train (or resume) one model. `precision` ("fp32" or "bf16") overrides the recipe's."""
    if precision:
        if precision not in PRECISIONS:
            raise TrainingError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
        spec = dataclasses.replace(
            spec, recipe=dataclasses.replace(spec.recipe, precision=precision)
        )
    run = RunDir.of(spec.model_id)
    t0 = time.time()
    steps = run_length(run, steps) or spec.recipe.steps
    data = load_trajectories(spec.env.dataset, spec.env.obs)
    check_matches_env(data, spec.env.gym_id, spec.env.obs)  # before any step, not at eval
    trainer = Trainer(spec, data, steps, schedule, pick_device(device))
    resumed = trainer.restore()
    final_loss = trainer.run_steps(progress)
    trainer.finish()
    return TrainResult(spec.model_id, run.path, steps, resumed, final_loss, time.time() - t0)
