"""The model directory (docs/format.md): one type owns its layout, file names and manifest.

A model directory is a flat folder: `model.safetensors` (weights only), `config.json`
(everything inference needs), `manifest.json` (size and sha256 of every other top-level file)
and optional extras (card, evaluations, plots, replay video, training log). One format is used
everywhere: a run's final model, its `step<N>` checkpoints, hub snapshots, caches, staging.

A run directory (`RunDir`) is the final model directory of a training run, plus
`checkpoints/step<N>/` (model directories) and `resume/state-<N>.safetensors`.

    >>> with ModelDir.build(path) as d:        # written in a temporary folder, sealed, renamed
    ...     (d.path / WEIGHTS).write_bytes(...)
    >>> ModelDir(path).verify()                # every file the manifest lists: size and sha256
    >>> run = RunDir.of("pendulum-1L-seed0")
    >>> run.is_trained(), [s for s, _ in run.checkpoints()], run.newest_resume_state()

`ModelDir.seal` is the one writer of `manifest.json`: a directory is sealed when it is built,
when training completes a run, and when an evaluation adds its files. Hubs publish a sealed
directory as it is, without writing into it.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dtzoo import paths
from dtzoo.errors import CheckpointError
from dtzoo.fsutil import atomic_dir, atomic_write_json, read_json, remove_stale, sha256_file

FORMAT_VERSION = 1
WEIGHTS, CONFIG, MANIFEST = "model.safetensors", "config.json", "manifest.json"
REQUIRED_FILES = (WEIGHTS, CONFIG)  # what inference reads; everything else is optional
CARD, EVAL, SWEEP, LOG = "README.md", "eval.json", "rtg_sweep.json", "training_log.csv"
CURVE, SWEEP_PLOT, VIDEO = "learning_curve.png", "rtg_sweep.png", "replay.mp4"
PLOTS = (CURVE, SWEEP_PLOT)
SUBFOLDERS = ("transformers",)  # published beside the model: the transformers export

# revisions: `main` (the final model) and `step<N>` (training-time checkpoints, Pythia's names)
STEP_RE = re.compile(r"step(0|[1-9][0-9]{0,17})")
RESUME_RE = re.compile(r"state-(0|[1-9][0-9]{0,17})\.safetensors")


def revision_name(step: int) -> str:
    """`revision_name(512)` -> "step512"."""
    return f"step{step}"


def revision_step(revision: str) -> int | None:
    """The step of a `step<N>` revision name, None for anything else (`main`, "step01")."""
    m = STEP_RE.fullmatch(revision) if isinstance(revision, str) else None
    return int(m.group(1)) if m else None


def revision_order(revision: str) -> tuple[int, int]:
    """Sort key: `main` first, then `step<N>` by N."""
    step = revision_step(revision)
    return (0, 0) if revision == "main" else (1, step if step is not None else 0)


# ----------------------------------------------------------------------------- the manifest


def write_manifest(path: Path) -> dict[str, Any]:
    """Record size and sha256 of every top-level file of `path` (but the manifest itself and
    hidden files). Called by `ModelDir.seal`; tests call it to forge consistent damage."""
    files = {
        p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(Path(path).iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    manifest = {"format_version": FORMAT_VERSION, "files": files}
    atomic_write_json(Path(path) / MANIFEST, manifest)
    return manifest


def _read_manifest(path: Path) -> dict[str, Any]:
    """manifest.json, with a `files` object (else a one-line CheckpointError)."""
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{path}: missing {MANIFEST} (cannot verify the files)")
    try:
        manifest = read_json(mpath)
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{mpath}: unreadable manifest") from None
    if not isinstance(files, dict):
        raise CheckpointError(f"{mpath}: unreadable manifest")
    return manifest


def _entry_ok(meta: Any) -> bool:
    """A manifest entry holds an integer size and a sha256 string."""
    return (
        isinstance(meta, dict)
        and isinstance(meta.get("size"), int)
        and isinstance(meta.get("sha256"), str)
    )


def _check_against(p: Path, meta: dict[str, Any]) -> None:
    """`p` has the size and sha256 its manifest entry records."""
    if p.stat().st_size != meta["size"] or sha256_file(p) != meta["sha256"]:
        raise CheckpointError(f"{p}: sha256 mismatch (file is corrupt or was modified)")


def verify(path: Path, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Check every file the manifest lists (or just those in `only`): present, right size,
    right sha256; returns the manifest. `verify(run, only=REQUIRED_FILES)` checks what
    inference reads."""
    path = Path(path)
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}")
    manifest = _read_manifest(path)
    files = manifest["files"]
    for name, meta in files.items():
        if not _plain_name(name):  # "../x", "/etc/passwd", "a/b": never looked at
            raise CheckpointError(
                f"{path}: {name!r} listed in the manifest is not a file name inside the directory"
            )
        if only is not None and name not in only:  # (a malformed name is refused all the same)
            continue
        if not _entry_ok(meta):
            raise CheckpointError(f"{path / MANIFEST}: unreadable manifest entry for {name}")
        p = path / name
        if not p.is_file():
            raise CheckpointError(f"{path}: {name} listed in the manifest is missing")
        _check_against(p, meta)
    for name in REQUIRED_FILES:
        if name not in files:
            raise CheckpointError(f"{path}: {name} is not covered by the manifest")
    return manifest


def _plain_name(name: object) -> bool:
    """A file name that stays inside the model directory: no separators, not hidden, not empty."""
    return (
        isinstance(name, str)
        and bool(name)
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
    )


# ----------------------------------------------------------------------------- the types


class ModelDir:
    """One model directory. `ModelDir(path).read_config().step`, `.verify()`, `.files()`."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def is_model_dir(self) -> bool:
        """Weights and config are there (whether they verify is `verify`'s business)."""
        return all((self.path / name).is_file() for name in REQUIRED_FILES)

    def config_dict(self) -> dict[str, Any]:
        """config.json as raw JSON (`read_config` checks and types it)."""
        return read_json(self.path / CONFIG)

    def step(self) -> int | None:
        """The training step config.json records, None when it is missing or unreadable."""
        try:
            return int(self.config_dict()["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def read_config(self):
        """The checked `dtzoo.checkpoint.ModelConfig`."""
        from dtzoo.checkpoint import read_config

        return read_config(self.path)

    def load(self, device: str = "cpu"):
        """`model, config = ModelDir(path).load()` (verified, strict; see checkpoint.load_model)."""
        from dtzoo.checkpoint import load_model

        return load_model(self.path, device=device)

    def files(self) -> list[Path]:
        """The files a hub publishes: the top-level ones and those of `transformers/` (other
        sub-directories, such as a run's checkpoints/, are not part of the model)."""
        dirs = [self.path] + [
            self.path / d
            for d in SUBFOLDERS
            if (self.path / d).is_dir() and not (self.path / d).is_symlink()
        ]
        return sorted(
            p
            for d in dirs
            for p in d.iterdir()
            if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
        )

    def seal(self, new_weights: bool = False) -> dict[str, Any]:
        """Write manifest.json over the directory's files. Unless the caller has just written
        new weights and config (training), those two must still match the previous manifest:
        they are only ever written together with it, so a mismatch is corruption, never
        sealed under a fresh hash."""
        if not new_weights:
            self.check_required_unchanged()
        return write_manifest(self.path)

    def verify(self, only: tuple[str, ...] | None = None) -> dict[str, Any]:
        return verify(self.path, only)

    def verify_sealed(self) -> dict[str, Any]:
        """`verify`, and every top-level file is in the manifest: the directory is exactly what
        was sealed (what a hub publishes). Returns the manifest."""
        if self.is_model_dir() and not (self.path / MANIFEST).is_file():
            raise CheckpointError(
                f"{self.path}: not sealed (no {MANIFEST}): call "
                f"dtzoo.modeldir.ModelDir(path).seal() once its files are written"
            )
        manifest = self.verify()
        for p in self.files():
            if p.parent == self.path and p.name != MANIFEST and p.name not in manifest["files"]:
                raise CheckpointError(
                    f"{p}: not covered by {MANIFEST} (the directory changed after it was sealed)"
                )
        return manifest

    def check_required_unchanged(self) -> None:
        """Weights and config match the manifest, where there is one."""
        if not (self.path / MANIFEST).is_file():
            return
        files = _read_manifest(self.path)["files"]
        for name in REQUIRED_FILES:
            meta, p = files.get(name), self.path / name
            if meta is None or not p.is_file():
                continue
            if not _entry_ok(meta):
                raise CheckpointError(f"{self.path / MANIFEST}: unreadable manifest")
            _check_against(p, meta)

    def content_hash(self) -> str:
        """A 40-hex id of the weights and config (their sha256 sums in the manifest)."""
        try:
            files = read_json(self.path / MANIFEST)["files"]
            key = f"{files[WEIGHTS]['sha256']}\n{files[CONFIG]['sha256']}"
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"{self.path}: missing or unreadable {MANIFEST}") from None
        return hashlib.sha1(key.encode()).hexdigest()

    @classmethod
    @contextmanager
    def build(cls, path: Path) -> Iterator["ModelDir"]:
        """Write a complete directory atomically: files go into a temporary folder, which is
        sealed and renamed into place (replacing any previous directory) when the block ends."""
        with atomic_dir(Path(path)) as tmp:
            d = cls(tmp)
            yield d
            d.seal(new_weights=True)  # a fresh directory: no earlier manifest to check


class RunDir(ModelDir):
    """A training run: the final model directory, checkpoints/step<N>/, resume/, the log."""

    @classmethod
    def of(cls, model_id: str) -> "RunDir":
        return cls(paths.run_dir(model_id))

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def lock(self) -> Path:
        """The run lock: held while the run trains (and while its final model is evaluated)."""
        return self.path / ".lock"

    @property
    def resume_dir(self) -> Path:
        return self.path / "resume"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def is_trained(self) -> bool:
        """Trained once the final config.json and manifest.json are both written (in that
        order), so a run killed between the two is resumed, not mistaken for finished."""
        return (self.path / CONFIG).is_file() and (self.path / MANIFEST).is_file()

    def trained_steps(self) -> int | None:
        """The step count of a finished run (its final config.json), None if not trained."""
        return self.step() if self.is_trained() else None

    def checkpoint(self, step: int) -> ModelDir:
        return ModelDir(self.checkpoints_dir / revision_name(step))

    def checkpoints(self) -> list[tuple[int, ModelDir]]:
        """The run's complete `step<N>` checkpoints, by step."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for p in self.checkpoints_dir.iterdir():
            step = revision_step(p.name)
            if step is not None and ModelDir(p).is_model_dir():
                found.append((step, ModelDir(p)))
        return sorted(found, key=lambda sd: sd[0])

    def revision(self, revision: str) -> ModelDir:
        """The run itself for `main`, else checkpoints/<revision> (which may not exist)."""
        return self if revision == "main" else ModelDir(self.checkpoints_dir / revision)

    def resume_state(self, step: int) -> Path:
        return self.resume_dir / f"state-{step}.safetensors"

    def resume_states(self) -> list[tuple[int, Path]]:
        """`resume/state-<N>.safetensors` files by step (a stray `state-foo` is not one)."""
        if not self.resume_dir.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.resume_dir.glob("state-*.safetensors")
            if (m := RESUME_RE.fullmatch(p.name))
        ]
        return sorted(found, key=lambda sp: sp[0])

    def newest_resume_state(self) -> Path | None:
        states = self.resume_states()
        return states[-1][1] if states else None

    def remove_stale_temps(self) -> None:
        """Temp files and directories a killed run left behind: `.<name>.<random>.tmp` (atomic
        writes) and `.<name>.old-<pid>` (a checkpoint directory being replaced). None is ever
        read. A linked `checkpoints/` or `resume/` is refused (fsutil.remove_stale)."""
        for d in (self.path, self.checkpoints_dir, self.resume_dir):
            remove_stale(
                d,
                lambda p: p.name.startswith(".") and (p.name.endswith(".tmp") or ".old-" in p.name),
            )
