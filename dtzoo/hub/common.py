"""What both hub backends share: repo ids, the files a model directory publishes, the
order of revisions. (Kept apart so that neither backend imports the other.)"""

from __future__ import annotations

import re
from pathlib import Path

from dtzoo.checkpoint import MANIFEST, REQUIRED_FILES
from dtzoo.errors import CheckpointError, UsageError
from dtzoo.fsutil import read_json, sha256_file

# an ORG or NAME as the Hugging Face Hub accepts it; always `fullmatch` (`$` would let a final
# newline through: a second repo folder), and "../x" or "a/b/c" never becomes a path
NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")


def check_repo_id(repo_id: str) -> str:
    """`org/name` as the Hub accepts it (huggingface_hub's `validate_repo_id`, part by part),
    else a UsageError saying why; no request is made. dtzoo asks more: exactly one org, and
    each part a plain folder name (NAME_RE), so a repo id stays one folder pair under the local
    hub and caches with any huggingface_hub version.

    >>> check_repo_id("dtzoo/pendulum-1L-seed0")
    'dtzoo/pendulum-1L-seed0'
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    shown = repr(repo_id) if len(str(repo_id)) < 120 else repr(str(repo_id)[:115]) + "..."
    if len(parts) != 2:
        raise UsageError(f"invalid repo id {shown}: expected <org>/<model id>")
    for part in parts:
        try:
            validate_repo_id(part)
        except HFValidationError as e:  # its message ends with the id: keep the reason only
            why = str(e).split(f"'{part}'")[0].rstrip(": ")
        else:  # dtzoo's own rule, whichever huggingface_hub version is installed
            why = None if NAME_RE.fullmatch(part) else "ASCII only, a letter or digit at each end"
        if why:
            part = part if len(part) < 60 else part[:55] + "..."
            raise UsageError(f"invalid repo id {shown}: the Hub rejects {part!r} ({why})")
    return repo_id


SUBFOLDERS = ("transformers",)  # published beside the model: the transformers export


def model_files(src: Path) -> list[Path]:
    """The files of a model directory, and of its `transformers/` folder where it has one
    (other sub-directories, such as a run's checkpoints/, are not part of it)."""
    src = Path(src)
    dirs = [src] + [
        src / d for d in SUBFOLDERS if (src / d).is_dir() and not (src / d).is_symlink()
    ]
    return sorted(
        p
        for d in dirs
        for p in d.iterdir()
        if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
    )


def check_required_files(src: Path) -> None:
    """Before re-writing a manifest: the weights and config must still match the old one.

    Extras (README.md, eval.json, plots) may be edited by hand and are re-hashed on publish,
    but model.safetensors and config.json are only ever written together with the manifest,
    so a mismatch there means corruption, which must not be published under a fresh hash.
    """
    mpath = Path(src) / MANIFEST
    if not mpath.is_file():
        return
    try:
        files = read_json(mpath)["files"]
        metas = {
            name: (files[name]["size"], files[name]["sha256"])
            for name in REQUIRED_FILES
            if name in files
        }
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{mpath}: unreadable manifest") from None
    for name, (size, sha) in metas.items():
        p = Path(src) / name
        if p.is_file() and (p.stat().st_size != size or sha256_file(p) != sha):
            raise CheckpointError(f"{p}: sha256 mismatch (file is corrupt or was modified)")


def revision_order(rev: str) -> tuple[int, int]:
    """Sort key: `main` first, then `step<N>` by N."""
    return (0, 0) if rev == "main" else (1, int(rev[4:]) if rev[4:].isdigit() else 0)
