"""Exceptions a user can act on. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class DtzooError(Exception):
    """Base class: a problem the user can fix. `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(DtzooError):
    """Bad input on the command line: an unknown id, env, grid or revision."""

    exit_code = 2


class RegistryError(DtzooError):
    """registry.yaml is malformed; the message names the file and line."""

    exit_code = 2


class DatasetError(DtzooError):
    """A dataset is missing, cannot be downloaded, or holds data we cannot train on."""


class CheckpointError(DtzooError):
    """A model directory is missing a file, fails verification, or has the wrong tensors."""


class HubError(DtzooError):
    """A hub refused or failed a request (auth, missing repo or revision, network)."""


class TrainingError(DtzooError):
    """Training stopped: a non-finite loss, or a run that cannot be resumed safely."""


def closest(name: str, choices: list[str], n: int = 3) -> str:
    """A 'did you mean' fragment for error messages: `closest("hoper", ["hopper"])`."""
    import difflib

    near = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if near:
        return "did you mean " + ", ".join(near) + "?"
    shown = ", ".join(choices[:8]) + (", ..." if len(choices) > 8 else "")
    return f"valid: {shown}"
