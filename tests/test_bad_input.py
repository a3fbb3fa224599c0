"""Bad input, as a table: each case runs the real `dtzoo` command and must end with a clear
error line on stderr, the expected non-zero exit, no traceback, and nothing lost (every file
that existed before, in DTZOO_HOME, the dataset store and outside them, is still there with the
same bytes).

Kinds of case:
- "line":  the whole of stderr is one line, `error: <message>` (a DtzooError caught by main()).
- "cell":  a grid command: one cell failed; its `<id> failed: <message>` line carries the error,
           the summary says `1 failed`.
- "usage": rejected by the option parser (typer): exit 2, one `error: Invalid value ...` line
           (`test_option_errors_are_one_line`).

Also here: disk full while saving (ENOSPC injected into a real subprocess, and in-process into a
publish and a pull), and the Python API (`dtzoo.load`) on bad directories.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from dtzoo.checkpoint import CONFIG, MANIFEST, WEIGHTS, save_model, verify, write_manifest
from dtzoo.errors import CheckpointError, UsageError
from tests.conftest import make_test_registry, run_cli, run_inproc
from tests.test_checkpoint import make_config, make_model

MID = "pendulum-2L-seed3"  # the id of tests.test_checkpoint.make_config's model
REPO = f"dtzoo/{MID}"


class Payload:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclass
class Ctx:
    home: Path
    tmp: Path
    outside: Path  # a directory outside DTZOO_HOME that nothing may touch
    env: dict[str, str] = field(default_factory=dict)
    marker: Path | None = None

    @property
    def run(self) -> Path:
        return self.home / "runs" / MID

    @property
    def model(self) -> Path:
        return self.tmp / "model"


# ----------------------------------------------------------------------------- state builders


def a_model_dir(path: Path) -> Path:
    import dataclasses

    from dtzoo.registry import Recipe

    config = dataclasses.replace(
        make_config(), recipe={**dataclasses.asdict(Recipe()), "steps": 40}
    )
    return save_model(make_model(config), config, path, extra_files={"README.md": b"# card\n"})


def a_trained_run(ctx: Ctx, card: bool = False) -> None:
    a_model_dir(ctx.run)
    if card:  # the card `dtzoo publish` writes, so that a failed publish changes no byte
        from dtzoo.registry import load_registry
        from dtzoo.zoo import write_card

        write_card(ctx.run, load_registry(ctx.env["DTZOO_REGISTRY"]))


def a_published_model(ctx: Ctx) -> Path:
    from dtzoo.hub.local import LocalHub

    a_trained_run(ctx)
    res = LocalHub(ctx.home / "hub").publish(ctx.run, REPO)
    return ctx.home / "hub" / REPO / "snapshots" / res.commit


def forged_snapshot(ctx: Ctx, edit: Callable[[Path], None]) -> Path:
    """A hub repo whose main snapshot was edited by someone else, manifest and commit made to
    agree (the hub is a directory anyone with write access can change)."""
    from dtzoo.hub.local import commit_of

    snap = a_published_model(ctx)
    shutil.rmtree(ctx.run)  # so `dtzoo export MID` has to pull it
    edit(snap)
    manifest = json.loads((snap / MANIFEST).read_text())
    commit = commit_of(manifest)
    new = snap.with_name(commit)
    snap.rename(new)
    (ctx.home / "hub" / REPO / "refs" / "main").write_text(commit + "\n")
    return new


def add_manifest_entry(snap: Path, name: str, target: Path) -> None:
    """List `name` in the manifest with the size and sha256 of `target`, so that a verifier
    that followed the name would find a match (it must refuse the name, not read it)."""
    data = target.read_bytes()
    m = json.loads((snap / MANIFEST).read_text())
    m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (snap / MANIFEST).write_text(json.dumps(m))


def outside_file(ctx: Ctx) -> Path:
    p = ctx.outside / "x"
    p.write_bytes(b"outside the model directory\n")
    return p


def pickle_weights(ctx: Ctx, path: Path) -> None:
    ctx.marker = ctx.tmp / "pwned"
    torch.save(
        {"embed_state.weight": torch.zeros(16, 3), "payload": Payload(ctx.marker)}, path / WEIGHTS
    )


def rewrite_weights(path: Path, edit: Callable[[dict], None]) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(path / WEIGHTS))
    write_manifest(path)  # a consistent manifest: only the strict load can catch it


def bad_model(edit: Callable[[Ctx, Path], None]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        a_model_dir(ctx.model)
        edit(ctx, ctx.model)

    return setup


def bad_registry(text: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        (ctx.tmp / "bad.yaml").write_text(textwrap.dedent(text))

    return setup


def bad_ref(ctx: Ctx) -> None:
    a_published_model(ctx)
    victim = ctx.outside / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("do not delete\n")
    rel = os.path.relpath(victim, ctx.home / "cache" / "dtzoo" / MID)
    (ctx.home / "hub" / REPO / "refs" / "main").write_text(rel + "\n")


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def set_json(path: Path, key: str, value) -> None:
    d = json.loads(path.read_text())
    d[key] = value
    path.write_text(json.dumps(d))


# ----------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    args: list[str]
    needle: str
    code: int = 2
    kind: str = "line"  # line | cell | usage
    setup: Callable[[Ctx], None] | None = None
    datasets: bool = False  # run against the bad-datasets store and registry
    skip: str | None = None
    inproc: bool = False  # dtzoo.cli.main in this process (run_inproc); False: a subprocess

    @property
    def one_line_later(self) -> bool:
        """An option error (usage), or one checked per cell that cli.py could check up front:
        one `error:` line once the proposed cli.py fix is in (test_option_errors_are_one_line)."""
        return self.kind == "usage" or self.id in ("device-cuda", "org-publish")


def drop(k):
    return lambda t: t.pop(k)


def edit_config(edit: Callable[[dict], object]) -> Callable[[Ctx, Path], None]:
    """Rewrite config.json (and the manifest, so that only the config check can catch it)."""

    def apply(ctx: Ctx, path: Path) -> None:
        d = json.loads((path / CONFIG).read_text())
        new = edit(d)
        (path / CONFIG).write_text(json.dumps(d if new is None else new))
        write_manifest(path)

    return apply


def victim(ctx: Ctx, name: str = "victim") -> Path:
    """A folder outside DTZOO_HOME that looks like one dtzoo owns: a hidden temp directory
    (what a stale-temp cleanup deletes) and a file. Nothing may change in it."""
    v = ctx.outside / name
    (v / ".stale.abc.tmp").mkdir(parents=True)
    (v / ".stale.abc.tmp" / "keep").write_text("outside DTZOO_HOME\n")
    (v / "precious.txt").write_text("do not delete\n")
    return v


def link_to_victim(ctx: Ctx, path: Path) -> None:
    """Replace the directory `path` (inside DTZOO_HOME) by a link to a victim folder."""
    if path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(victim(ctx), target_is_directory=True)


def pulled(ctx: Ctx) -> Path:
    from dtzoo.hub.local import LocalHub

    a_published_model(ctx)
    return LocalHub(ctx.home / "hub").pull(REPO)


ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")
    )
    + "grids:\n  g:\n    description: *i\n"
)
ENV = """\
    envs:
      p:
        gym_id: Pendulum-v1
        dataset: a/b-v0
        max_ep_len: {max_ep_len}
        reward_scale: 1
        target_returns: [1]
        ref_scores: {{random: 0, expert: 1}}
    """


CUDA = torch.cuda.is_available()
CASES = [
    # model ids
    Case("id-unknown-env", ["train", "pendulm-1L-seed0"], "did you mean pendulum-1L-seed0"),
    Case(
        "id-lowercase-l", ["train", "pendulum-1l-seed0"], "malformed model id 'pendulum-1l-seed0'"
    ),
    # (pull, export and eval take any [ORG/]ID of the hub, not only registry ids: issue 12)
    Case(
        "id-leading-zero",
        ["pull", "pendulum-01L-seed0"],
        "dtzoo/pendulum-01L-seed0 is not on the local hub",
        1,
    ),
    Case(
        "id-zero-layers",
        ["pull", "pendulum-0L-seed0"],
        "dtzoo/pendulum-0L-seed0 is not on the local hub",
        1,
    ),
    Case("id-path", ["eval", "../../etc/passwd"], "invalid repo id '../../etc/passwd'", 1, "cell"),
    Case(
        "id-path-suffix",
        ["pull", "pendulum-1L-seed0/../../x"],
        "invalid repo id 'pendulum-1L-seed0/../../x'",
    ),
    Case("id-empty", ["pull", ""], "invalid repo id 'dtzoo/'"),
    Case(
        "id-export-unknown",
        ["export", "nope-1L-seed0", "--out", "{tmp}/out"],
        "dtzoo/nope-1L-seed0 is not on the local hub",
        1,
    ),
    # revisions
    Case("rev-dotdot", ["pull", MID, "--revision", "../x"], "invalid revision '../x'"),
    Case("rev-negative", ["pull", MID, "--revision", "step-1"], "invalid revision"),
    Case("rev-shell", ["pull", MID, "--revision", "main;rm -rf ~"], "invalid revision"),
    Case("rev-refs", ["pull", MID, "--revision", "refs/heads/main"], "invalid revision"),
    Case(
        "rev-absent",
        ["pull", MID, "--revision", "step999"],
        "has no revision 'step999'",
        1,
        setup=a_published_model,
    ),
    Case("rev-not-published", ["pull", MID], "is not on the local hub", 1),
    # grids and selections
    Case("grid-unknown", ["train", "--grid", "huge"], "unknown grid 'huge'"),
    Case("grid-path", ["leaderboard", "--grid", "../x"], "unknown grid '../x'"),
    Case(
        "grid-and-ids",
        ["train", "--grid", "tiny", "pendulum-1L-seed0"],
        "either --grid or model ids",
    ),
    Case("nothing", ["train"], "nothing to do"),
    # env keys
    Case("env-typo", ["data", "prepare", "pendulm"], "did you mean pendulum"),
    Case("env-path", ["data", "prepare", "../x"], "unknown env '../x'"),
    Case(
        "env-collect",
        ["data", "collect", "nope", "--policy", "random", "--episodes", "1", "--out", "a/b-v0"],
        "unknown env 'nope'",
    ),
    Case(
        "env-import-mismatch",
        ["import", "{tmp}", "--env", "cartpole", "--name", MID],
        "belongs to env 'pendulum', not 'cartpole'",
    ),
    # hubs and orgs (repo ids the Hub would reject)
    Case("org-space", ["pull", MID, "--org", "bad org!"], "invalid org 'bad org!'"),
    Case("org-dotdot", ["pull", MID, "--org", "../../etc"], "invalid org '../../etc'"),
    Case("org-double-dash", ["pull", MID, "--org", "a--b"], "invalid org 'a--b'"),
    Case("hub-unknown", ["pull", MID, "--hub", "nowhere"], "'nowhere' is not one of 'hf', 'local'"),
    Case(
        "org-publish",
        ["publish", MID, "--org", "bad org!"],
        "invalid org 'bad org!'",
        1,
        "cell",
        setup=a_trained_run,
    ),
    # malformed registry.yaml: the message names the file and the line
    Case(
        "reg-missing",
        ["--registry", "{tmp}/absent.yaml", "list"],
        "cannot read registry {tmp}/absent.yaml",
    ),
    Case(
        "reg-yaml",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "{tmp}/bad.yaml:3: invalid YAML",
        setup=bad_registry("hub:\n  org: dtzoo\n  license: a: b\n"),
    ),
    Case(
        "reg-top-key",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "{tmp}/bad.yaml:2: unknown top-level key 'gridz'",
        setup=bad_registry("grids: {}\ngridz: {}\n"),
    ),
    Case(
        "reg-not-mapping",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "{tmp}/bad.yaml: the registry must be a mapping",
        setup=bad_registry("- just\n- a list\n"),
    ),
    Case(
        "reg-negative",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "{tmp}/bad.yaml:5: envs.p.max_ep_len must be a positive number",
        setup=bad_registry("""\
             envs:
               p:
                 gym_id: Pendulum-v1
                 dataset: a/b-v0
                 max_ep_len: -5
                 reward_scale: 1
                 target_returns: [1]
                 ref_scores: {random: 0, expert: 1}
             """),
    ),
    Case(
        "reg-lr-word",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "{tmp}/bad.yaml:2: recipe.lr must be a number",
        setup=bad_registry("recipe:\n  lr: fast\n"),
    ),
    Case(
        "reg-env-key",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "{tmp}/bad.yaml:2: env key 'Bad_Key' must match",
        setup=bad_registry("envs:\n  Bad_Key: {}\n"),
    ),
    Case(
        "reg-grid-env",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "{tmp}/bad.yaml:3: grids.g names unknown env 'ghost'",
        setup=bad_registry("grids:\n  g:\n    envs: [ghost]\n    layers: [1]\n    seeds: [0]\n"),
    ),
    # datasets: wrong shapes, NaNs, no episodes, absent
    Case(
        "data-3d-obs",
        ["data", "info", "badobs"],
        "dtzoo needs flat vector observations",
        1,
        datasets=True,
    ),
    Case(
        "data-2d-action", ["data", "info", "badact"], "unsupported action space", 1, datasets=True
    ),
    Case(
        "data-nan",
        ["data", "info", "nandata"],
        "'test/nan-v0': observations contain NaN or inf",
        1,
        datasets=True,
    ),
    Case("data-empty", ["data", "info", "emptydata"], "has no episodes", 1, datasets=True),
    Case("data-absent", ["data", "info", "ghost"], "is not in", 1, datasets=True),
    Case(
        "data-train-nan",
        ["train", "nandata-1L-seed0"],
        "observations contain NaN or inf",
        1,
        "cell",
        datasets=True,
    ),
    # checkpoints: missing / extra / mis-shaped tensors, not safetensors, broken config
    Case(
        "ckpt-missing-tensor",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "missing blocks.1.mlp.fc_out.weight",
        1,
        setup=bad_model(lambda c, p: rewrite_weights(p, drop("blocks.1.mlp.fc_out.weight"))),
    ),
    Case(
        "ckpt-extra-tensor",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "unexpected blocks.2.ln1.weight",
        1,
        setup=bad_model(
            lambda c, p: rewrite_weights(
                p, lambda t: t.update({"blocks.2.ln1.weight": torch.ones(16)})
            )
        ),
    ),
    Case(
        "ckpt-misshaped",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "embed_state.weight has shape (16, 4), expected (16, 3)",
        1,
        setup=bad_model(
            lambda c, p: rewrite_weights(
                p, lambda t: t.update({"embed_state.weight": torch.zeros(16, 4)})
            )
        ),
    ),
    Case(
        "ckpt-pickle",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "model.safetensors: not a valid safetensors file",
        1,
        setup=bad_model(lambda c, p: (pickle_weights(c, p), write_manifest(p))),
    ),
    Case(
        "ckpt-pickle-no-manifest-update",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "model.safetensors: sha256 mismatch",
        1,
        setup=bad_model(pickle_weights),
    ),
    Case(
        "ckpt-garbage",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "not a valid safetensors file",
        1,
        setup=bad_model(
            lambda c, p: (
                (p / WEIGHTS).write_bytes(b"\x08" + b"\x00" * 7 + b"{broken}"),
                write_manifest(p),
            )
        ),
    ),
    Case(
        "ckpt-no-weights",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "missing model.safetensors",
        1,
        setup=bad_model(lambda c, p: (p / WEIGHTS).unlink()),
    ),
    Case(
        "ckpt-config-json",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "config.json: invalid config",
        1,
        setup=bad_model(lambda c, p: ((p / CONFIG).write_text("{not json"), write_manifest(p))),
    ),
    Case(
        "ckpt-config-newer",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "format version 99 is newer",
        1,
        setup=bad_model(
            lambda c, p: (set_json(p / CONFIG, "format_version", 99), write_manifest(p))
        ),
    ),
    Case(
        "ckpt-manifest-dotdot",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "'../outside/x' listed in the manifest is not a file name",
        1,
        setup=bad_model(lambda c, p: add_manifest_entry(p, "../outside/x", outside_file(c))),
    ),
    Case(
        "ckpt-manifest-absolute",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "'/etc/hostname' listed in the manifest is not a file name",
        1,
        setup=bad_model(lambda c, p: add_manifest_entry(p, "/etc/hostname", Path("/etc/hostname"))),
    ),
    # the local hub: names that escape, refs that escape, pickles
    Case(
        "hub-manifest-dotdot",
        ["pull", MID],
        "'../../../../../../outside/x' listed in the manifest",
        1,
        setup=lambda c: add_manifest_entry(
            a_published_model(c), "../../../../../../outside/x", outside_file(c)
        ),
    ),
    Case(
        "hub-manifest-absolute",
        ["pull", MID],
        "'/etc/hostname' listed in the manifest",
        1,
        setup=lambda c: add_manifest_entry(
            a_published_model(c), "/etc/hostname", Path("/etc/hostname")
        ),
    ),
    Case(
        "hub-forged-absolute",
        ["pull", MID],
        "'/etc/hostname' listed in the manifest",
        1,
        setup=lambda c: forged_snapshot(
            c, lambda s: add_manifest_entry(s, "/etc/hostname", Path("/etc/hostname"))
        ),
    ),
    Case("hub-ref-escapes", ["pull", MID], "corrupt ref", 1, setup=bad_ref),
    Case(
        "hub-publish-pickle",
        ["publish", MID],
        "model.safetensors: not a valid safetensors file",
        1,
        "cell",
        setup=lambda c: (
            a_trained_run(c, card=True),
            pickle_weights(c, c.run),
            write_manifest(c.run),
        ),
    ),
    Case(
        "hub-forged-pickle",
        ["export", MID, "--out", "{tmp}/out"],
        "not a valid safetensors file",
        1,
        setup=lambda c: forged_snapshot(c, lambda s: (pickle_weights(c, s), write_manifest(s))),
    ),
    # options
    Case(
        "steps-0",
        ["train", "pendulum-1L-seed0", "--steps", "0"],
        "Invalid value for '--steps'",
        2,
        "usage",
    ),
    Case(
        "episodes-0",
        ["eval", "pendulum-1L-seed0", "--episodes", "0"],
        "Invalid value for '--episodes'",
        2,
        "usage",
    ),
    Case(
        "collect-episodes-0",
        ["data", "collect", "pendulum", "--policy", "random", "--episodes", "0", "--out", "a/b-v0"],
        "Invalid value for '--episodes'",
        2,
        "usage",
    ),
    Case(
        "device-tpu",
        ["train", "pendulum-1L-seed0", "--device", "tpu"],
        "'tpu' is not one of",
        2,
        "usage",
    ),
    Case(
        "device-cuda",
        ["train", "pendulum-1L-seed0", "--device", "cuda"],
        "no CUDA device is available",
        1,
        "cell",
        skip="this machine has CUDA" if CUDA else None,
    ),
    Case("format-html", ["leaderboard", "--format", "html"], "'html' is not one of", 2, "usage"),
    Case(
        "targets-word",
        ["eval", "pendulum-1L-seed0", "--rtg-sweep", "--targets", "a:b"],
        "--targets 'a:b'",
    ),
    Case(
        "import-not-dir",
        ["import", "{tmp}/absent", "--env", "pendulum", "--name", MID],
        "is not a directory",
        2,
        "usage",
    ),
    Case("eval-untrained", ["eval", "pendulum-1L-seed0"], "is not trained here", 1, "cell"),
    # ---- round two (issue 16), run in-process: dtzoo.cli.main with sys.argv set
    # model ids and orgs that end in a newline would be a second run or hub folder
    Case("id-newline", ["pull", "pendulum-1L-seed0\n", "--hub", "local"], "invalid", inproc=True),
    Case("id-train-newline", ["train", "pendulum-1L-seed0\n"], "malformed model id", inproc=True),
    Case(
        "org-newline", ["pull", MID, "--org", "dtzoo\n", "--hub", "local"], "invalid", inproc=True
    ),
    # sizes that would exhaust memory before the first step
    Case(
        "id-100000-layers",
        ["train", "pendulum-100000L-seed0"],
        "layers must be <= 128",
        inproc=True,
    ),
    Case(
        "id-5000-digit-layers",
        ["train", "pendulum-" + "9" * 5000 + "L-seed0"],
        "layers must be <= 128",
        inproc=True,
    ),
    Case("id-huge-seed", ["train", "pendulum-1L-seed99999999999"], "seed must be <=", inproc=True),
    Case(
        "steps-huge",
        ["train", "pendulum-1L-seed0", "--steps", "9" * 26],
        "must be from 1 to 1000000000",
        1,
        "cell",
        inproc=True,
    ),
    Case(
        "targets-nan",
        ["eval", "pendulum-1L-seed0", "--rtg-sweep", "--targets", "nan:0:2"],
        "LO and HI must be finite",
        inproc=True,
    ),
    Case(
        "targets-inf",
        ["eval", "pendulum-1L-seed0", "--rtg-sweep", "--targets", "0:inf:2"],
        "LO and HI must be finite",
        inproc=True,
    ),
    Case(
        "targets-billion",
        ["eval", "pendulum-1L-seed0", "--rtg-sweep", "--targets", "0:1:1000000000"],
        "at most 256 targets",
        inproc=True,
    ),
    Case(
        "reg-alias-bomb",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "an alias bomb",
        setup=bad_registry(ALIAS_BOMB),
        inproc=True,
    ),
    Case(
        "reg-recursive-alias",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "recursive alias",
        setup=bad_registry("grids: &g\n  g: [*g]\n"),
        inproc=True,
    ),
    Case(
        "reg-deep",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "invalid YAML",
        setup=bad_registry("grids: " + "[" * 5000 + "]" * 5000 + "\n"),
        inproc=True,
    ),
    # registry values of the wrong type
    Case(
        "reg-not-utf8",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "{tmp}/bad.yaml:2: not UTF-8",
        setup=lambda c: (c.tmp / "bad.yaml").write_bytes(b"hub:\n  org: \xff\xfe\n"),
        inproc=True,
    ),
    Case(
        "reg-nested-env",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "grids.g names unknown env <list>",
        setup=bad_registry(
            ENV.format(max_ep_len=5) + "grids: {g: {envs: [[p]], layers: [1], seeds: [0]}}\n"
        ),
        inproc=True,
    ),
    Case(
        "reg-int-key",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "{tmp}/bad.yaml:1: unknown key 1 in recipe",
        setup=bad_registry("recipe: {1: 2}\n"),
        inproc=True,
    ),
    Case(
        "reg-inf",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "envs.p.max_ep_len must be a positive number",
        setup=bad_registry(ENV.format(max_ep_len=".inf")),
        inproc=True,
    ),
    Case(
        "reg-nan",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "recipe.lr must be a finite number",
        setup=bad_registry("recipe: {lr: .nan}\n"),
        inproc=True,
    ),
    Case(
        "reg-huge-int",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "recipe.steps is too large",
        setup=bad_registry("recipe: {steps: 1" + "0" * 400 + "}\n"),
        inproc=True,
    ),
    Case(
        "reg-huge-d-model",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "recipe.d_model must be <= 8192",
        setup=bad_registry("recipe: {d_model: 1000000}\n"),
        inproc=True,
    ),
    Case(
        "reg-description-list",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "description must be a string",
        setup=bad_registry(
            ENV.format(max_ep_len=5)
            + "grids: {g: {envs: [p], layers: [1], seeds: [0], description: [1]}}\n"
        ),
        inproc=True,
    ),
    Case(
        "reg-prepare-episodes",
        ["--registry", "{tmp}/bad.yaml", "list"],
        "prepare.episodes must be",
        setup=bad_registry(ENV.format(max_ep_len=5) + "    prepare: {episodes: .inf}\n"),
        inproc=True,
    ),
    # config.json of the wrong shape or types: CheckpointError, never TypeError/KeyError
    Case(
        "config-list",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "a JSON object expected, got list",
        1,
        setup=bad_model(edit_config(lambda d: [])),
        inproc=True,
    ),
    Case(
        "config-arch-list",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "architecture must be an object",
        1,
        setup=bad_model(edit_config(lambda d: d.update(architecture=[]))),
        inproc=True,
    ),
    Case(
        "config-state-dim-str",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "state_dim must be an integer",
        1,
        setup=bad_model(edit_config(lambda d: d.update(state_dim="3"))),
        inproc=True,
    ),
    Case(
        "config-100000-layers",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "architecture.n_layers must be an integer from 1 to 128",
        1,
        setup=bad_model(edit_config(lambda d: d["architecture"].update(n_layers=100000))),
        inproc=True,
    ),
    Case(
        "config-unknown-arch-key",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "invalid architecture",
        1,
        setup=bad_model(edit_config(lambda d: d["architecture"].update(flash=True))),
        inproc=True,
    ),
    Case(
        "config-not-utf8",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "config.json: invalid config",
        1,
        setup=bad_model(lambda c, p: ((p / CONFIG).write_bytes(b"{\xff}"), write_manifest(p))),
        inproc=True,
    ),
    Case(
        "weights-nan",
        ["export", "{tmp}/model", "--out", "{tmp}/out"],
        "weights are not finite",
        1,
        setup=bad_model(
            lambda c, p: rewrite_weights(
                p, lambda t: t.update({k: torch.full_like(v, float("nan")) for k, v in t.items()})
            )
        ),
        inproc=True,
    ),
    # links inside DTZOO_HOME: nothing is written, locked or cleaned through them
    Case(
        "link-hub-snapshots",
        ["publish", MID],
        "is a symbolic link",
        1,
        "cell",
        setup=lambda c: (
            a_trained_run(c, card=True),
            a_published_model(c),
            link_to_victim(c, c.home / "hub" / REPO / "snapshots"),
        ),
        inproc=True,
    ),
    Case(
        "link-cache-repo",
        ["pull", MID, "--hub", "local"],
        "is a symbolic link",
        1,
        setup=lambda c: (pulled(c), link_to_victim(c, c.home / "cache" / REPO)),
        inproc=True,
    ),
    Case(
        "link-run-checkpoints",
        ["train", "pendulum-1L-seed0"],
        "is a symbolic link",
        1,
        "cell",
        setup=lambda c: link_to_victim(c, c.home / "runs" / "pendulum-1L-seed0" / "checkpoints"),
        inproc=True,
    ),
    # a dataset whose observations do not fit the env: refused before training
    Case(
        "data-env-mismatch",
        ["train", "mismatch-1L-seed0"],
        "has observations of size 3, but CartPole-v1 gives 4",
        1,
        "cell",
        datasets=True,
        inproc=True,
    ),
]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bad_datasets(tmp_path_factory, minari_store) -> tuple[Path, Path]:
    """A Minari store with broken datasets and a registry whose envs point at them."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    store = tmp_path_factory.mktemp("bad_store")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(store)
    rng = np.random.default_rng(0)

    def make(did, n=3, obs_shape=(3,), act_shape=(1,), obs_space=None, act_space=None, nan=False):
        env = gym.make("Pendulum-v1")
        bufs = []
        for i in range(n):
            T = 5
            obs = rng.normal(size=(T + 1, *obs_shape)).astype(np.float32)
            rews = rng.normal(size=T)
            if nan and i == n - 1:
                rews[2] = np.nan
                obs[1] = np.inf
            bufs.append(
                EpisodeBuffer(
                    id=i,
                    observations=obs,
                    rewards=rews,
                    actions=rng.uniform(-1, 1, size=(T, *act_shape)).astype(np.float32),
                    terminations=np.zeros(T, bool),
                    truncations=np.arange(T) == T - 1,
                    infos={},
                )
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            minari.create_dataset_from_buffers(
                dataset_id=did,
                buffer=bufs,
                env=env.spec,
                algorithm_name="test",
                data_format="arrow",
                observation_space=obs_space or env.observation_space,
                action_space=act_space or env.action_space,
            )

    try:
        make("test/badobs-v0", obs_shape=(3, 1), obs_space=gym.spaces.Box(-1, 1, shape=(3, 1)))
        make("test/badact-v0", act_shape=(2, 2), act_space=gym.spaces.Box(-1, 1, shape=(2, 2)))
        make("test/nan-v0", nan=True)
        make("test/empty-v0", n=0)
        make("test/good-v0")  # Pendulum-shaped: 3-d observations
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    reg_path = make_test_registry(tmp_path_factory.mktemp("badreg") / "registry.yaml")
    reg = yaml.safe_load(reg_path.read_text())
    pend = {k: v for k, v in reg["envs"]["pendulum"].items() if k != "prepare"}
    for key, did in (
        ("badobs", "test/badobs-v0"),
        ("badact", "test/badact-v0"),
        ("nandata", "test/nan-v0"),
        ("emptydata", "test/empty-v0"),
        ("ghost", "test/ghost-v0"),
    ):
        reg["envs"][key] = {**pend, "dataset": did}
    reg["envs"]["mismatch"] = {**pend, "dataset": "test/good-v0", "gym_id": "CartPole-v1"}
    reg_path.write_text(yaml.safe_dump(reg, sort_keys=False))
    return store, reg_path


def fingerprint_tree(*roots: Path) -> dict[str, bytes]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")) if root.is_dir() else []:
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).digest()
    return out


def fmt(s: str, ctx: Ctx) -> str:
    return s.replace("{tmp}", str(ctx.tmp)).replace("{home}", str(ctx.home))


def run_case(
    case: Case, zoo_env, tmp_path, bad_datasets
) -> tuple[subprocess.CompletedProcess, Ctx]:
    if case.skip:
        pytest.skip(case.skip)
    ctx = Ctx(
        home=Path(zoo_env["DTZOO_HOME"]),
        tmp=tmp_path,
        outside=tmp_path / "outside",
        env=dict(zoo_env),
    )
    ctx.outside.mkdir()
    if case.datasets:
        store, reg = bad_datasets
        ctx.env.update(MINARI_DATASETS_PATH=str(store), DTZOO_REGISTRY=str(reg))
    if case.setup:
        case.setup(ctx)
    watched = [ctx.home, ctx.tmp, Path(ctx.env["MINARI_DATASETS_PATH"])]
    before = fingerprint_tree(*watched)
    runner = run_inproc if case.inproc else run_cli
    proc = runner(*[fmt(a, ctx) for a in case.args], env=ctx.env, check=False)
    after = fingerprint_tree(*watched)
    lost = [p for p, h in before.items() if after.get(p) != h]
    assert not lost, f"files lost or changed: {lost}"
    if ctx.marker is not None:
        assert not ctx.marker.exists(), "a pickle was loaded"
    return proc, ctx


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, zoo_env, tmp_path, bad_datasets):
    proc, ctx = run_case(case, zoo_env, tmp_path, bad_datasets)
    err, needle = proc.stderr, fmt(case.needle, ctx)
    assert proc.returncode == case.code or (case.one_line_later and proc.returncode == 2), err
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err
    lines = err.strip().splitlines()
    if case.one_line_later and len(lines) == 1 and lines[0].startswith("error: "):
        assert needle in lines[0], err  # the cli.py fix is in: one line
    elif case.kind == "line":
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert needle in lines[0], err
    elif case.kind == "cell":
        failed = [line for line in lines if " failed: " in line]
        assert len(failed) == 1 and needle in failed[0], err
        assert lines[-1].endswith(", 1 failed"), err
    else:
        assert needle in err and "Usage:" in err, err  # typer's box
    if case.id == "hub-ref-escapes" or case.id.startswith("link-"):
        assert (ctx.outside / "victim" / "precious.txt").read_text() == "do not delete\n"
    if case.id.startswith("link-"):  # nothing cleaned, nothing written through the link
        v = next(ctx.outside.iterdir())
        assert sorted(p.name for p in v.iterdir()) == [".stale.abc.tmp", "precious.txt"]
        assert [p.name for p in (v / ".stale.abc.tmp").iterdir()] == ["keep"]
    if case.id.startswith("hub-") and case.code:
        snaps = ctx.home / "cache" / REPO
        assert not snaps.exists() or not [p for p in snaps.iterdir() if not p.name.startswith(".")]


ONE_LINE_LATER = [c for c in CASES if c.one_line_later]


@pytest.mark.parametrize("case", ONE_LINE_LATER, ids=[c.id for c in ONE_LINE_LATER])
def test_option_errors_are_one_line(case: Case, zoo_env, tmp_path, bad_datasets):
    proc, ctx = run_case(case, zoo_env, tmp_path, bad_datasets)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ")
    assert fmt(case.needle, ctx) in lines[0]


def test_the_table_is_big_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


# ----------------------------------------------------------------------------- disk full

SITECUSTOMIZE = textwrap.dedent("""
    # test-only: make fsync fail with ENOSPC for files whose path contains $DTZOO_TEST_ENOSPC
    import errno, os
    _real_fsync, _pattern = os.fsync, os.environ.get("DTZOO_TEST_ENOSPC")

    def fsync(fd):
        if _pattern:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if _pattern in target:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _real_fsync(fd)

    os.fsync = fsync
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize(
    "where, resumes_from",
    [
        ("/checkpoints/.step20.", 16),  # the step-20 checkpoint directory
        ("/runs/pendulum-1L-seed0/.model.safetensors.", 40),  # the final model
    ],
    ids=["checkpoint", "final-model"],
)
def test_disk_full_while_saving_keeps_the_last_checkpoint(zoo_env, tmp_path, where, resumes_from):
    from dtzoo.modeldir import RunDir

    mid = "pendulum-1L-seed0"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**zoo_env, "PYTHONPATH": str(hook), "DTZOO_TEST_ENOSPC": where}
    proc = run_cli("train", mid, env=env, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if " failed: " in line]
    assert len(failed) == 1 and "No space left on device" in failed[0], proc.stderr
    assert "model.safetensors" in failed[0]  # names the file
    run = Path(zoo_env["DTZOO_HOME"]) / "runs" / mid
    assert not (run / CONFIG).exists()
    for ckpt in (run / "checkpoints").iterdir():  # what is there is whole; nothing half-written
        assert not ckpt.name.startswith("."), ckpt
        verify(ckpt)
    assert RunDir(run).newest_resume_state().name == f"state-{resumes_from}.safetensors"
    assert not [p for p in run.rglob(".*") if p.name != ".lock"]
    done = run_cli("train", mid, env=zoo_env)  # space again: the same command finishes
    assert f"{mid}: resumed (from step {resumes_from})" in done.stderr
    verify(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        f"step{n}" for n in (0, 1, 2, 4, 8, 16, 20, 40)
    )


def enospc_on(n: int):
    """A shutil.copy2 that fails with ENOSPC on its n-th call."""
    real, calls = shutil.copy2, {"n": 0}

    def copy2(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *a, **k)

    return copy2


def test_disk_full_while_publishing_keeps_the_hub_as_it_was(zoo_env, tmp_path, monkeypatch):
    from dtzoo.hub.local import LocalHub, verify_commit
    from dtzoo.modeldir import ModelDir

    hub = LocalHub()
    src = a_model_dir(tmp_path / "model")
    first = hub.publish(src, REPO)
    (src / "README.md").write_text("# a new card\n")
    ModelDir(src).seal()
    with pytest.MonkeyPatch.context() as mp, pytest.raises(OSError) as e:
        mp.setattr(shutil, "copy2", enospc_on(2))
        hub.publish(src, REPO)
    assert e.value.errno == errno.ENOSPC
    snaps = hub.repo(REPO) / "snapshots"
    assert [p.name for p in snaps.iterdir()] == [first.commit]  # no partial snapshot, no temp dir
    assert hub.revisions(REPO) == {"main": first.commit}
    verify_commit(snaps / first.commit, first.commit)
    second = hub.publish(src, REPO)  # space again
    assert not second.skipped and hub.revisions(REPO) == {"main": second.commit}


def test_disk_full_while_pulling_leaves_no_cache_entry(zoo_env, tmp_path):
    import dtzoo
    from dtzoo.hub.local import LocalHub

    hub = LocalHub()
    src = a_model_dir(tmp_path / "model")
    commit = hub.publish(src, REPO).commit
    with pytest.MonkeyPatch.context() as mp, pytest.raises(OSError):
        mp.setattr(shutil, "copy2", enospc_on(3))
        hub.pull(REPO)
    cache = Path(zoo_env["DTZOO_HOME"]) / "cache" / REPO
    assert [p.name for p in cache.iterdir() if p.name != ".lock"] == []
    path = hub.pull(REPO)
    assert path == cache / commit
    dtzoo.load(path)


# ----------------------------------------------------------------------------- the Python API


API_CASES = {
    "flipped-weights": (lambda c, p: flip(p / WEIGHTS, 100), "model.safetensors: sha256 mismatch"),
    "truncated-config": (
        lambda c, p: (p / CONFIG).write_bytes((p / CONFIG).read_bytes()[:50]),
        "config.json: (sha256 mismatch|invalid config)",
    ),
    "pickle": (
        lambda c, p: (pickle_weights(c, p), write_manifest(p)),
        "not a valid safetensors file",
    ),
    "missing-tensor": (
        lambda c, p: rewrite_weights(p, drop("ln_final.bias")),
        "missing ln_final.bias",
    ),
    "manifest-absolute": (
        lambda c, p: add_manifest_entry(p, "/etc/hostname", Path("/etc/hostname")),
        "listed in the manifest",
    ),
    "manifest-list": (
        lambda c, p: (p / MANIFEST).write_text('{"files": [1, 2]}'),
        "unreadable manifest",
    ),
    "manifest-entry": (
        lambda c, p: (p / MANIFEST).write_text('{"files": {"config.json": 5}}'),
        "unreadable manifest( entry|.json)",
    ),
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_dtzoo_load_refuses_a_bad_directory(name, tmp_path):
    import dtzoo

    edit, needle = API_CASES[name]
    ctx = Ctx(home=tmp_path / "home", tmp=tmp_path, outside=tmp_path / "outside")
    path = a_model_dir(ctx.model)
    edit(ctx, path)
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")) as e:
        dtzoo.load(path)
    assert str(path) in str(e.value)
    assert ctx.marker is None or not ctx.marker.exists()


def test_a_cache_dir_listing_outside_files_is_refused_and_replaced(zoo_env, tmp_path):
    """A cache entry whose manifest names '/etc/hostname' and '../x': load refuses it, pull
    replaces it with a clean copy, and nothing outside the cache is read or written."""
    import dtzoo
    from dtzoo.hub.local import LocalHub

    hub = LocalHub()
    commit = hub.publish(a_model_dir(tmp_path / "model"), REPO).commit
    path = hub.pull(REPO)
    outside = path.parent / "x"
    outside.write_text("outside\n")
    hostname = Path("/etc/hostname").read_bytes()
    for name, target in (("/etc/hostname", Path("/etc/hostname")), ("../x", outside)):
        add_manifest_entry(path, name, target)
        with pytest.raises(CheckpointError, match="listed in the manifest is not a file name"):
            dtzoo.load(path)
        assert hub.pull(REPO) == path == Path(zoo_env["DTZOO_HOME"]) / "cache" / REPO / commit
        dtzoo.load(path)
        assert name not in json.loads((path / MANIFEST).read_text())["files"]
    assert outside.read_text() == "outside\n" and Path("/etc/hostname").read_bytes() == hostname
    with pytest.raises(UsageError, match="invalid revision"):
        hub.resolve(REPO, "../x")


# ----------------------------------------------------------------------------- round two: the API


def test_returns_to_go_are_summed_per_episode():
    """Before: suffix sums over the whole dataset minus the sum after each episode; one episode
    with rewards of 1e18 left every earlier episode's returns-to-go at 0."""
    from dtzoo.data import _returns_to_go

    rewards = np.array([1, 2, 3, 1e18, 1e18, 5, 7], np.float32)
    rtg = _returns_to_go(rewards, np.array([0, 3, 5]), np.array([3, 2, 2]))
    assert rtg[:3].tolist() == [6, 5, 3] and rtg[5:].tolist() == [12, 7]
    assert rtg[3] == np.float32(2e18)


@pytest.mark.parametrize(
    "text",
    [
        "pendulum-1L-seed0\n",
        "pendulum-1L-seed0\r",
        "pendulum\n-1L-seed0",
        "pendulum-1L-seed0 ",
        "pendulum-1L-seed0\x00",
    ],
)
def test_a_model_id_with_a_trailing_newline_is_not_a_model_id(text, zoo_env):
    """`$` matches before a final newline: "x-1L-seed0\\n" was a second run and hub folder."""
    from dtzoo.hub.local import check_repo_id
    from dtzoo.registry import load_registry, parse_model_id

    with pytest.raises(UsageError):
        parse_model_id(text)
    with pytest.raises(UsageError):
        load_registry().resolve(text)
    with pytest.raises(UsageError):
        check_repo_id(f"dtzoo/{text}")
    with pytest.raises(UsageError):
        check_repo_id(f"dtzoo\n/{text.strip()}")


def test_an_env_key_with_a_trailing_newline_is_refused(tmp_path):
    from dtzoo.errors import RegistryError
    from dtzoo.registry import load_registry

    reg = yaml.safe_load(make_test_registry(tmp_path / "ok.yaml").read_text())
    reg["envs"]["pendulum\n"] = reg["envs"].pop("pendulum")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(reg))
    with pytest.raises(RegistryError, match=r"env key 'pendulum\\n' must match"):
        load_registry(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda d: d.update(act_dim=True), "act_dim must be an integer"),
        (
            lambda d: d["action_space"].update(kind="box", low=[float("nan")], high=[1.0]),
            "action_space low",
        ),
        (lambda d: d.update(state_mean=[0.0]), "state_mean must be a list of state_dim"),
        (lambda d: d["env"].update(ref_scores={"random": 1, "expert": 1}), "env.ref_scores"),
        (lambda d: d.update(target_returns=[float("inf")]), "target_returns"),
        (
            lambda d: d["architecture"].update(d_model=4096, d_mlp=32768, n_layers=128),
            "parameters, above",
        ),
        (lambda d: d["architecture"].update(n_heads=5), "invalid architecture"),
        (lambda d: d.__delitem__("env"), "missing keys env"),
        # found by tests/test_fuzz.py (DTZOO_FUZZ_EXAMPLES=400): an OverflowError and torch's
        # ValueError
        (lambda d: d["action_space"].update(low=[10**400]), "action_space low"),
        (lambda d: d["architecture"].update(dropout=-1), "dropout must be a number in"),
        (lambda d: d["architecture"].update(activation="swish"), "unknown activation"),
    ],
)
def test_dtzoo_load_raises_a_checkpoint_error_for_a_config_of_the_wrong_shape(
    edit, needle, tmp_path
):
    """Never TypeError, KeyError or a torch error from the model; nothing is built first."""
    import dtzoo

    path = a_model_dir(tmp_path / "model")
    edit_config(edit)(None, path)
    with pytest.raises(CheckpointError, match=needle):
        dtzoo.load(path)
