"""What both hub backends share: repo ids. (Kept apart so that neither backend imports the
other; the files a model directory publishes and the order of revisions are dtzoo.modeldir's.)"""

from __future__ import annotations

import re

from dtzoo.errors import UsageError

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
