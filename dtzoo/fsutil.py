"""Crash-safe file operations: atomic writes, atomic directories, sha256 and run locks.

Everything written under $DTZOO_HOME stays inside it: below its top-level folders (`runs/`,
`hub/`, `cache/`, which may themselves be links to a bigger disk), a symbolic link is never
written, locked or cleaned through (`check_owned`), so a link planted at, say,
`hub/<org>/<id>/snapshots` cannot make dtzoo write or delete files elsewhere.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout, lock_descriptor, unlock_descriptor

from dtzoo.errors import DtzooError


class LinkRefused(DtzooError):
    """A symbolic link (or a non-directory) where dtzoo owns a directory."""


def check_owned(path: Path) -> Path:
    """Refuse `path` when, below a top-level folder of $DTZOO_HOME, it or one of its parents is
    a symbolic link (or a file where a directory belongs). Paths outside $DTZOO_HOME pass.

    >>> check_owned(paths.run_dir("pendulum-1L-seed0") / "checkpoints")
    """
    from dtzoo import paths

    path, home = Path(os.path.abspath(path)), Path(os.path.abspath(paths.home()))
    try:
        rel = path.relative_to(home)
    except ValueError:
        return path
    p = home / rel.parts[0] if rel.parts else home
    for part in rel.parts[1:]:
        p = p / part
        if p.is_symlink():
            raise LinkRefused(
                f"{p} is a symbolic link: dtzoo does not write, lock or clean "
                f"through links inside {home} (remove the link)"
            )
        if p != path and p.exists() and not p.is_dir():
            raise LinkRefused(f"{p} is not a directory (remove it)")
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(target: Path) -> Path:
    """A hidden temporary sibling of `target`, with normal permissions (mkdtemp makes 0700,
    which would lock other users out of a shared DTZOO_HOME once it is renamed into place)."""
    check_owned(Path(target).parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    check_owned(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if (
            isinstance(e, OSError) and e.errno and e.filename is None
        ):  # ENOSPC from write(): say where
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it into place only on success.

    >>> with atomic_dir(run / "checkpoints" / "step4") as tmp:
    ...     (tmp / "config.json").write_text("{}")
    """
    target = Path(target)
    check_owned(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(target)
    try:
        yield tmp
        for p in tmp.iterdir():
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        if target.exists():
            # rename the old one aside first: os.replace cannot replace a non-empty directory
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LockBusy(Exception):
    pass


@contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[None]:
    """An advisory lock held for the duration of the block (released if the process dies); the
    lock file stays in place. It is never opened through a symbolic link. Non-blocking: raises
    LockBusy when another holder has it.

    >>> with file_lock(paths.run_dir("pendulum-1L-seed0") / ".lock", blocking=False):
    ...     pass
    """
    path = check_owned(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(blocking=blocking)
    except Timeout:  # an OSError itself: caught first
        raise LockBusy(str(path)) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LinkRefused(f"{path} is a symbolic link: remove it") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise DtzooError(
                f"cannot lock {path}: {e.strerror} (is DTZOO_HOME read-only?)"
            ) from None
        raise
    try:
        yield
    finally:
        lock.release()


def is_locked(path: Path) -> bool:
    """Whether some process (this one included) holds the lock at `path` now. Never creates
    the lock file: a missing one is free.

    >>> is_locked(paths.run_dir("pendulum-1L-seed0") / ".lock")
    False
    """
    if not Path(path).is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # removed meanwhile
        return False
    try:
        if not lock_descriptor(fd, blocking=False):
            return True
        unlock_descriptor(fd)
        return False
    finally:
        os.close(fd)


def remove_stale(parent: Path, is_stale) -> int:
    """Remove the entries of `parent` for which `is_stale(path)` holds: temp files and
    directories a killed writer left. Never follows a link: a linked `parent` is refused, and
    a link among the entries is removed as a link. Call it holding the lock every writer of
    `parent` takes. Returns how many entries went."""
    parent = check_owned(Path(parent))
    if parent.is_symlink() or not parent.is_dir():
        return 0
    n = 0
    for p in parent.iterdir():
        if is_stale(p):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n
