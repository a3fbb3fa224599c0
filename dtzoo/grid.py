"""Running the cells of a grid: in this process, in local worker processes, on Ray or through
submitit (SLURM job arrays), with one set of rules for all of them.

`cell_job(kind, options)` says what a cell is: how a name becomes a cell, the work, the skip rule
and whether the run's lock is held (train: the run lock, skip finished runs; eval: `eval_model`
takes the lock and skips up-to-date reports itself). `run_cells` runs it over cells in this
process: a failing cell is recorded and the others go on; a cell locked by another process is
deferred to the end and then waited for, so two `dtzoo train --grid tiny` started together train
every cell exactly once. Every executor's worker runs `run_cell`, which is `run_cells` on one cell.

    >>> ex = make_executor("local", workers=4)
    >>> results = ex.run("train", ["pendulum-1L-seed0"], {"steps": 600})
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from dtzoo import paths
from dtzoo.errors import DtzooError, UsageError
from dtzoo.fsutil import LockBusy, file_lock, is_locked
from dtzoo.modeldir import RunDir
from dtzoo.registry import ModelSpec


@dataclass
class CellResult:
    model_id: str
    status: str  # done | resumed | skipped | failed
    detail: str = ""
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


SkipFn = Callable[[ModelSpec], "str | None"]  # a reason to skip, or None


def already_trained(steps: int | None = None) -> SkipFn:
    """Skip a finished run, unless `steps` asks for a different length (then train_model
    extends it, or says in one line why it cannot)."""

    def skip(spec: ModelSpec) -> str | None:
        run = RunDir.of(spec.model_id)
        if not run.is_trained():
            return None
        done = run.trained_steps()
        if done is None:
            return "already trained"
        return None if steps is not None and steps != done else f"already trained ({done} steps)"

    return skip


def _run_one(spec: ModelSpec | str, fn: Callable[[Any], Any], skip: SkipFn | None) -> CellResult:
    name = getattr(spec, "model_id", spec)
    reason = skip(spec) if skip else None
    if reason:
        return CellResult(name, "skipped", reason)
    try:
        value = fn(spec)
    except Exception as e:  # a bug in one cell must not cost the rest of the grid
        return CellResult(name, "failed", _describe(e))
    if getattr(value, "skipped", None):  # an EvalOutcome whose report was up to date
        return CellResult(name, "skipped", value.skipped, value.report)
    if hasattr(value, "report"):
        return CellResult(name, "done", "", value.report)
    resumed = getattr(value, "resumed_from", None)
    if resumed is None:  # (step 0 is a real resume point: a run killed before step 1)
        return CellResult(name, "done", "", value)
    return CellResult(name, "resumed", f"from step {resumed}", value)


OnDone = Callable[[CellResult], None]


def run_cells(
    specs: list[ModelSpec] | list[str],
    fn: Callable[[Any], Any],
    skip: SkipFn | None = None,
    lock: bool = False,
    on_done: OnDone | None = None,
) -> list[CellResult]:
    """Run `fn` over the cells (ModelSpecs, or plain names such as `ORG/ID` without `lock`)."""
    results: dict[str, CellResult] = {}
    deferred: list[ModelSpec] = []

    def record(spec) -> None:
        results[getattr(spec, "model_id", spec)] = result = _run_one(spec, fn, skip)
        on_done and on_done(result)

    for spec in specs:
        if not lock:
            record(spec)
            continue
        try:
            with file_lock(RunDir.of(spec.model_id).lock, blocking=False):
                record(spec)
        except LockBusy:
            deferred.append(spec)
    for spec in deferred:  # another process is on these: wait, then usually find them done
        with file_lock(RunDir.of(spec.model_id).lock, blocking=True):
            record(spec)
    return [results[getattr(s, "model_id", s)] for s in specs]


# ----------------------------------------------------------------------------- executors
#
# Every executor runs the same top-level, picklable cell function, `run_cell`, in a worker
# (a spawned process, a Ray task, a submitit/SLURM job). The worker re-loads the registry,
# takes the run's lock (waiting if another process holds it), skips a finished cell, resumes
# an unfinished one from its checkpoint and returns a CellResult; it never raises, so a failed
# cell does not stop the others. Results land in DTZOO_HOME, which every worker must see
# (on a cluster: a shared filesystem).

KINDS = ("train", "eval", "sweep", "publish")
# what a worker needs to find the runs, the registry and the datasets (no tokens)
FORWARDED_ENV = (
    "DTZOO_HUB",
    "DTZOO_ORG",
    "MINARI_REMOTE",
    "OMP_NUM_THREADS",
    "HF_ENDPOINT",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_HUB_DISABLE_XET",
)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def worker_env() -> dict[str, str]:
    """The environment a remote cell needs, as absolute paths resolved here."""
    from dtzoo.data import datasets_root
    from dtzoo.registry import default_registry_path

    env = {
        "DTZOO_HOME": str(paths.home().resolve()),
        "MINARI_DATASETS_PATH": str(datasets_root().resolve()),
        "DTZOO_REGISTRY": str(default_registry_path().resolve()),
    }
    env.update({k: os.environ[k] for k in FORWARDED_ENV if k in os.environ})
    return env


@dataclass
class CellJob:
    """What a cell of one kind is, the same in this process and in every worker."""

    resolve: Callable[[str], Any]  # a name -> the cell `work` takes (a ModelSpec, or the name)
    work: Callable[[Any], Any]
    skip: SkipFn | None
    lock: bool  # hold the run's lock around skip + work


StepProgress = Callable[[str], Callable[..., None]]  # model id -> progress(done, total, *info)


def cell_job(kind: str, options: dict[str, Any], progress: StepProgress | None = None) -> CellJob:
    """What `kind` ("train", "eval", "sweep", "publish") does to a cell, with `options`:
    registry (path) for all; steps, device, precision, checkpoints (train: a schedule override
    such as "log=16"); revision, episodes, hub, org (eval and sweep: any model `dtzoo.locate`
    finds), targets (sweep); hub, org, checkpoints (publish: the step<N> revisions too).
    `progress(name)` gives a cell's progress callback (in this process only)."""
    from dtzoo import zoo
    from dtzoo.registry import CheckpointSchedule, load_registry, with_checkpoints

    reg = load_registry(options.get("registry"))
    tick = progress or (lambda name: None)
    get = options.get
    where = {"hub": get("hub"), "org": get("org")}
    if kind == "train":
        override = get("checkpoints")
        schedule = CheckpointSchedule.parse_override(override) if override else None

        def resolve(name: str) -> ModelSpec:
            spec = reg.resolve(name)
            return with_checkpoints([spec], schedule)[0] if schedule else spec

        def train(spec: ModelSpec):
            return zoo.train_cell(
                spec,
                reg,
                steps=get("steps"),
                device=get("device", "auto"),
                progress=tick(spec.model_id),
                precision=get("precision"),
            )

        return CellJob(resolve, train, already_trained(get("steps")), lock=True)
    # eval and sweep take the run's lock themselves (eval skips up-to-date reports)
    if kind == "eval":

        def evaluate(name: str):
            revision, episodes = get("revision", "main"), get("episodes")
            return zoo.eval_model(name, reg, revision, episodes, progress=tick(name), **where)

        return CellJob(lambda name: name, evaluate, None, lock=False)
    if kind == "sweep":

        def sweep(name: str):
            targets, episodes, revision = get("targets"), get("episodes"), get("revision", "main")
            return zoo.sweep_model(
                name, reg, targets, episodes, revision, progress=tick(name), **where
            )

        return CellJob(lambda name: name, sweep, None, lock=False)
    if kind == "publish":

        def publish(spec: ModelSpec):
            return zoo.publish_cell(spec, reg, checkpoints=get("checkpoints", True), **where)

        return CellJob(reg.resolve, publish, None, lock=False)
    raise ValueError(f"unknown cell kind {kind!r}: use one of {KINDS}")


def run_job(job: CellJob, names: list[str], on_done: OnDone | None = None) -> list[CellResult]:
    """`run_cells` over names: a name that does not resolve is one failed cell."""
    cells, failed = [], {}
    for name in names:
        try:
            cells.append(job.resolve(name))
        except Exception as e:  # an unknown id: still one failed cell, not a crash
            failed[name] = CellResult(name, "failed", _describe(e))
            on_done and on_done(failed[name])
    done = run_cells(cells, job.work, job.skip, job.lock, on_done)
    results = {r.model_id: r for r in done} | failed
    return [results[n] for n in names]


def run_cell(
    kind: str,
    model_id: str,
    options: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> CellResult:
    """Train or evaluate one cell, idempotently; the function every executor's worker runs.

    `options`: see `cell_job`. `env`: variables to set first (DTZOO_HOME,
    MINARI_DATASETS_PATH, ...), for workers that do not inherit the submitting process's
    environment."""
    options = dict(options or {})
    if env:
        os.environ.update(env)
        options["registry"] = options.get("registry") or env.get("DTZOO_REGISTRY")
    try:
        return run_job(cell_job(kind, options), [model_id])[0]
    except Exception as e:  # the registry, the lock: still one failed cell, not a crash
        return CellResult(model_id, "failed", _describe(e))


def _describe(e: BaseException) -> str:
    text = str(e) if isinstance(e, DtzooError) else f"{type(e).__name__}: {e}"
    return last_line(text) or type(e).__name__


class Executor(Protocol):
    """Runs `run_cell(kind, id, options)` for every id; results in the order of `model_ids`.
    `progress` (per-cell progress callbacks) is used where cells run in this process."""

    name: str
    in_process: bool  # cells run in this process (one after another)

    def run(
        self,
        kind: str,
        model_ids: list[str],
        options: dict[str, Any],
        on_done: OnDone | None = None,
        progress: StepProgress | None = None,
    ) -> list[CellResult]: ...


class MissingExtra(DtzooError):
    """`--executor ray|slurm` without the extra installed."""

    exit_code = 2


class ExecutorError(DtzooError):
    """The executor itself cannot start: no Ray cluster at the address, no submitit."""


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"the {extra} executor needs {module}: pip install 'dtzoo[{extra}]'"
        ) from None


def _ordered(model_ids: list[str], results: dict[str, CellResult]) -> list[CellResult]:
    return [results[m] for m in model_ids]


@dataclass
class LocalExecutor:
    """workers=1: in this process, one cell after another; workers>1: that many spawned
    processes (concurrent.futures), each cell in one of them."""

    workers: int = 1
    name: str = "local"

    @property
    def in_process(self) -> bool:
        return self.workers <= 1

    def run(self, kind, model_ids, options, on_done=None, progress=None):
        if self.in_process:  # the same job as a worker's, with deferral of locked cells
            return run_job(cell_job(kind, options, progress), model_ids, on_done)
        results: dict[str, CellResult] = {}
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        env = worker_env()
        with ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = {pool.submit(run_cell, kind, m, options, env): m for m in model_ids}
            for fut in as_completed(futures):
                m = futures[fut]
                try:
                    results[m] = fut.result()
                except Exception as e:  # the worker process died (killed, out of memory)
                    results[m] = CellResult(m, "failed", _describe(e))
                on_done and on_done(results[m])
        return _ordered(model_ids, results)


@dataclass
class RayExecutor:
    """Each cell is a Ray task asking for `cpus_per_cell` CPUs and `gpus_per_cell` GPUs (a
    fraction shares a GPU). `address`: None starts (or finds) a local Ray, "auto" joins the
    running cluster, "ray://host:10001" a remote one through Ray Client. If Ray is already
    initialised in this process, it is used as it is."""

    address: str | None = None
    cpus_per_cell: float = 1
    gpus_per_cell: float = 0
    name: str = "ray"
    in_process = False  # cells run in workers: no per-cell progress here

    def run(self, kind, model_ids, options, on_done=None, progress=None):
        ray = _require("ray", "ray")
        env = worker_env()
        started = False
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env={"env_vars": env},
                    logging_level="ERROR",
                )
            except Exception as e:  # no cluster there, refused, auth token: one line
                cause = f" ({last_line(str(e.__cause__))[:300]})" if e.__cause__ else ""
                raise ExecutorError(
                    f"cannot start or reach Ray at {self.address or 'a local runtime'}: "
                    f"{_describe(e)}{cause}"
                ) from None
            started = True
        try:
            task = ray.remote(_ray_cell).options(
                num_cpus=self.cpus_per_cell,
                num_gpus=self.gpus_per_cell,
                runtime_env={"env_vars": env},
                max_retries=0,
            )
            refs = {task.remote(kind, m, options, env): m for m in model_ids}
            results: dict[str, CellResult] = {}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    m = refs[ref]
                    try:
                        results[m] = ray.get(ref)
                    except Exception as e:  # the task's worker died: Ray says why
                        results[m] = CellResult(m, "failed", _describe(e))
                    on_done and on_done(results[m])
            return _ordered(model_ids, results)
        finally:
            if started:
                ray.shutdown()


def _ray_cell(kind: str, model_id: str, options: dict, env: dict) -> CellResult:
    return run_cell(kind, model_id, options, env)


@dataclass
class SlurmExecutor:
    """One submitit job array over the cells: `partition`, `time` (HH:MM, or minutes),
    `gpus_per_cell`, `cpus_per_cell`, at most `parallel` cells at once (0: no limit). Job logs
    go to `folder` (default $DTZOO_HOME/slurm/). `cluster`: None picks SLURM when sbatch is
    there and local subprocesses otherwise (submitit.AutoExecutor); "local" forces subprocesses,
    as does DTZOO_SUBMITIT_CLUSTER=local."""

    partition: str | None = None
    time: str | None = None
    gpus_per_cell: float = 0
    cpus_per_cell: float = 1
    parallel: int = 0
    folder: str | None = None
    cluster: str | None = None
    name: str = "slurm"
    in_process = False  # cells run in workers: no per-cell progress here

    def cluster_name(self) -> str:
        """ "slurm" where sbatch is available, else "local" (or what `cluster` forces)."""
        _require("submitit", "slurm")
        from submitit.auto.auto import AutoExecutor

        return self.cluster or os.environ.get("DTZOO_SUBMITIT_CLUSTER") or AutoExecutor.which()

    def executor(self):
        submitit = _require("submitit", "slurm")
        folder = Path(self.folder) if self.folder else paths.home() / "slurm"
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster_name())
        params: dict[str, Any] = {
            "name": "dtzoo",
            "timeout_min": parse_minutes(self.time),
            "cpus_per_task": max(1, int(self.cpus_per_cell)),
        }
        if ex.cluster == "slurm":
            if self.partition:
                params["slurm_partition"] = self.partition
            if self.gpus_per_cell:
                params["slurm_gpus_per_task"] = math.ceil(self.gpus_per_cell)
            if self.parallel:
                params["slurm_array_parallelism"] = self.parallel
        elif self.gpus_per_cell:
            params["gpus_per_node"] = math.ceil(self.gpus_per_cell)
        ex.update_parameters(**params)
        return ex

    def run(self, kind, model_ids, options, on_done=None, progress=None):
        ex = self.executor()
        env = worker_env()
        if ex.cluster == "slurm":  # one job array; SLURM runs at most `parallel` at once
            n = len(model_ids)
            jobs = ex.map_array(run_cell, [kind] * n, model_ids, [options] * n, [env] * n)
            queue: list[str] = []
            waiting = dict(zip(model_ids, jobs))
        else:  # local subprocesses: at most `parallel` (default: one per core) at a time
            queue, waiting = list(model_ids), {}
        limit = self.parallel or os.cpu_count() or 1
        results: dict[str, CellResult] = {}
        while queue or waiting:
            while queue and len(waiting) < limit:
                m = queue.pop(0)
                waiting[m] = ex.submit(run_cell, kind, m, options, env)
            for m, job in list(waiting.items()):
                if not job.done():
                    continue
                try:
                    results[m] = job.result()
                except Exception as e:  # the job itself failed: timeout, preempted, killed
                    results[m] = CellResult(
                        m, "failed", f"{_describe(e)} (log: {job.paths.stderr})"
                    )
                del waiting[m]
                on_done and on_done(results[m])
            if waiting:
                time.sleep(0.5)
        return _ordered(model_ids, results)


def parse_minutes(value: str | None, default: int = 60) -> int:
    """`--time` as minutes: "90", "01:30", "1-00:00" (days-hours:minutes)."""
    if not value:
        return default
    try:
        days, _, rest = value.rpartition("-")
        parts = [int(p) for p in rest.split(":")]
        if len(parts) == 1:
            minutes = parts[0]
        elif len(parts) == 2:
            minutes = parts[0] * 60 + parts[1]
        elif len(parts) == 3:
            minutes = parts[0] * 60 + parts[1] + (parts[2] > 0)
        else:
            raise ValueError
        minutes += int(days or 0) * 24 * 60
    except ValueError:
        raise UsageError(f"--time {value!r}: use HH:MM, minutes, or D-HH:MM") from None
    if minutes <= 0:
        raise UsageError(f"--time {value!r} must be positive")
    return minutes


def make_executor(
    name: str,
    workers: int = 1,
    address: str | None = None,
    cpus_per_cell: float = 1,
    gpus_per_cell: float = 0,
    partition: str | None = None,
    time: str | None = None,
) -> Executor:
    if name == "local":
        return LocalExecutor(workers=workers)
    if name == "ray":
        _require("ray", "ray")
        return RayExecutor(
            address=address, cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell
        )
    if name == "slurm":
        _require("submitit", "slurm")
        parse_minutes(time)
        return SlurmExecutor(
            partition=partition,
            time=time,
            gpus_per_cell=gpus_per_cell,
            cpus_per_cell=cpus_per_cell,
            parallel=workers if workers > 1 else 0,
        )
    raise UsageError(f"unknown executor {name!r}: use local, ray or slurm")


# ----------------------------------------------------------------------------- status


def lock_held(model_id: str) -> bool:
    """Whether another process holds the run's lock now (never creates the lock file).

    >>> lock_held("pendulum-1L-seed0")
    False
    """
    return is_locked(RunDir.of(model_id).lock)
