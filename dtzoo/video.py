"""The replay video on a model's card: one episode at the first target return.

    >>> record_replay(model, config, run / "replay.mp4", seed=0)   # True, or False: no renderer

Recorded with gymnasium's `RecordVideo` (moviepy + the ffmpeg binary of imageio-ffmpeg).
MuJoCo tasks render headless through EGL, so MUJOCO_GL defaults to `egl` here; classic-control
tasks render with pygame. Where no renderer works, nothing is written and the card says why.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from dtzoo.fsutil import atomic_write_bytes, make_temp_dir

LOG = logging.getLogger(__name__)
_last_failure: dict[str, str] = {}  # gym id -> why it could not be rendered (for the card)


def record_replay(
    model, config, path: Path, seed: int = 0, target_return: float | None = None
) -> bool:
    """Roll out one episode with frames and write it to `path` as MP4 (atomically).

    Returns False (and writes nothing) where the env cannot be rendered here."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from gymnasium.wrappers import RecordVideo

        from dtzoo.agent import make_agent
        from dtzoo.observations import kind_of, make_env
    except ImportError as e:
        return _fail(config, f"missing package: {e.name}")
    tmp = make_temp_dir(Path(path))  # beside the target (a dot folder): never outside DTZOO_HOME
    try:
        env = make_env(
            config.env["gym_id"],
            kind_of(config),
            max_episode_steps=config.env.get("max_episode_steps"),
            render_mode="rgb_array",
        )
        env = RecordVideo(
            env,
            str(tmp / "video"),
            episode_trigger=lambda _: True,
            name_prefix="replay",
            disable_logger=True,
        )
        agent = make_agent(model, config, target_return)
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
            agent.observe(reward)
            done = terminated or truncated
        env.close()
        videos = sorted(tmp.glob("video/*.mp4"))
        if not videos:
            return _fail(config, "the recorder wrote no video")
        atomic_write_bytes(Path(path), videos[0].read_bytes())
        return True
    except Exception as e:  # noqa: BLE001 - no display, no GL, no pygame: the card says so
        return _fail(
            config, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fail(config, why: str) -> bool:
    _last_failure[config.env["gym_id"]] = why
    LOG.warning("no replay video for %s: %s", config.model_id, why)
    return False


def renderer_note(config) -> str:
    """What the card says where there is no video."""
    why = _last_failure.get(config.env["gym_id"])
    if why:
        return (
            f"No replay video: this environment could not be rendered where the model was "
            f"evaluated ({why}). `dtzoo eval` records `replay.mp4` where a renderer is "
            "available (MuJoCo: MUJOCO_GL=egl; classic control: pygame)."
        )
    return (
        "No replay video was recorded (the registry's `eval.video` is off, or the model "
        "was not evaluated where it was trained)."
    )
