"""Pytest fixtures pointing the real ``huggingface_hub`` client at ``tests/hub_server.py``.

Enable them from ``tests/conftest.py`` with ``pytest_plugins = ["tests.hub_fixtures"]``.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_DISABLE_XET``,
``HF_HUB_OFFLINE``... once, when it is imported, and the module-level ``HfApi`` behind
``huggingface_hub.upload_folder`` & co. freezes the endpoint too. The server's port is only known
once it runs, so the fixtures do both:

* set the environment variables (for subprocesses, which import ``huggingface_hub`` afresh), and
* patch the already-imported constants and the module-level ``HfApi`` (for this process),

all through ``monkeypatch``, so everything is restored after each test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hub_server import HubServer

ORG = "dtzoo"
WRITE_TOKEN = "hf_dtzoo_write"  # user "alice", member of "dtzoo", write access
READ_TOKEN = "hf_dtzoo_read"  # user "bob", member of "dtzoo", read-only
OUTSIDER_TOKEN = "hf_outsider_write"  # user "mallory", write access to her own namespace only

_UNSET_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HUGGINGFACE_CO_STAGING",
    "HUGGINGFACE_HUB_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
)

HUB_TOKENS: dict[str, dict[str, Any]] = {
    WRITE_TOKEN: {"user": "alice", "orgs": [ORG], "write": True},
    READ_TOKEN: {"user": "bob", "orgs": [ORG], "write": False},
    OUTSIDER_TOKEN: {"user": "mallory", "orgs": [], "write": True},
}

__all__ = [
    "HUB_TOKENS",
    "ORG",
    "OUTSIDER_TOKEN",
    "READ_TOKEN",
    "WRITE_TOKEN",
    "hub_server",
    "hub_server_factory",
    "point_huggingface_hub_at",
    "set_hub_offline",
]


def point_huggingface_hub_at(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: Path, token: str | None = WRITE_TOKEN
) -> None:
    """Point ``huggingface_hub`` (this process and its future subprocesses) at ``endpoint``.

    Uses an isolated ``hf_home`` (cache, token file, xet cache), disables Xet (not servable
    offline), telemetry and progress bars, and authenticates with ``token`` through ``HF_TOKEN``
    (unset if ``None``).
    """
    import huggingface_hub
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    hub_cache, assets_cache, xet_cache = hf_home / "hub", hf_home / "assets", hf_home / "xet"
    token_path = hf_home / "token"
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(assets_cache),
        "HF_XET_CACHE": str(xet_cache),
        "HF_TOKEN_PATH": str(token_path),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in _UNSET_ENV:
        monkeypatch.delenv(name, raising=False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)

    patched_constants = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(assets_cache),
        "HUGGINGFACE_ASSETS_CACHE": str(assets_cache),
        "HF_XET_CACHE": str(xet_cache),
        "HF_TOKEN_PATH": str(token_path),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    for name, value in patched_constants.items():
        monkeypatch.setattr(constants, name, value)
    # The module-level HfApi behind huggingface_hub.upload_folder & co. froze the endpoint.
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)})
    # Cached HfFileSystem instances keep the endpoint they were built with.
    huggingface_hub.HfFileSystem.clear_instance_cache()


def set_hub_offline(monkeypatch: pytest.MonkeyPatch, offline: bool = True) -> None:
    """Switch ``HF_HUB_OFFLINE`` on or off, in the environment and in the imported client."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def hub_server_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., HubServer]]:
    """Start a fake Hub with custom settings and point ``huggingface_hub`` at it.

    ``hub_server_factory(lfs_threshold=0, token=READ_TOKEN)``: keyword arguments go to
    :class:`HubServer` (``tokens`` defaults to :data:`HUB_TOKENS`), except ``token``, the
    ``HF_TOKEN`` to use (default :data:`WRITE_TOKEN`; ``None`` for anonymous). Calling it again
    stops the previous server and starts another, with a fresh ``HF_HOME``.
    """
    from huggingface_hub.utils import close_session

    servers: list[HubServer] = []

    def start(token: str | None = WRITE_TOKEN, **kwargs: Any) -> HubServer:
        for previous in servers:
            previous.stop()
        kwargs.setdefault("tokens", HUB_TOKENS)
        server = HubServer(**kwargs).start()
        servers.append(server)
        point_huggingface_hub_at(
            monkeypatch, server.url, tmp_path / f"hf_home_{len(servers)}", token
        )
        return server

    yield start
    close_session()  # drop pooled keep-alive connections to the servers
    for server in servers:
        server.stop()
    errors = [e for s in servers for e in s.errors]
    assert not errors, "The fake Hub server crashed:\n" + "\n".join(errors)


@pytest.fixture
def hub_server(hub_server_factory: Callable[..., HubServer]) -> HubServer:
    """A fresh fake Hub (default settings, :data:`HUB_TOKENS`), ``huggingface_hub`` pointed at it.

    ``HF_TOKEN`` is :data:`WRITE_TOKEN` (user "alice", write access to the "dtzoo" org); ``HF_HOME``
    and the caches live in ``tmp_path``; Xet is disabled. Environment variables are set too, so
    subprocesses started by the test use the fake Hub as well.
    """
    return hub_server_factory()
