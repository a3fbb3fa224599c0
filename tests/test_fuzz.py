"""Property-based fuzzing (Hypothesis) of what users type and what files hold: model ids, orgs,
revisions, registry.yaml and config.json.

Every input ends one of two ways: it works, or the command prints one `error:` line, exits
non-zero and shows no traceback (the Python API raises a DtzooError, never TypeError/KeyError).
Either way nothing outside DTZOO_HOME changes, and a refused input creates no folder inside it.
The CLI runs in this process (`run_inproc`: dtzoo.cli.main with sys.argv set), ~50x cheaper
than a subprocess. Examples are derandomized, so CI sees the same inputs on every run; set
DTZOO_FUZZ_EXAMPLES=<n> to try more (e.g. 2000 before a release).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtzoo.errors import DtzooError
from tests.conftest import make_test_registry
from tests.test_bad_input import REPO, a_model_dir, fingerprint_tree, run_inproc

SCALE = int(os.environ.get("DTZOO_FUZZ_EXAMPLES", "0")) or None


def fuzz(n: int):
    """Hypothesis settings: `n` examples (DTZOO_FUZZ_EXAMPLES overrides), derandomized, no
    deadline (the machine is shared), no example database written into the repository."""
    return settings(
        max_examples=SCALE or n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


TRIED = {"cli": 0, "api": 0}  # inputs tried, reported by test_report_counts


class Zoo:
    """One DTZOO_HOME for the module: a model published to the local hub and pulled once, and
    an `outside` folder (beside the home, under the same tmp dir) that must never change."""

    def __init__(self, base: Path, minari: Path):
        from dtzoo.hub.local import LocalHub

        self.base, self.home, self.outside = base, base / "home", base / "outside"
        self.outside.mkdir()
        (self.outside / "precious.txt").write_text("outside DTZOO_HOME\n")
        (self.outside / ".stale.abc.tmp").mkdir()
        self.registry = make_test_registry(base / "registry.yaml")
        self.env = {
            "DTZOO_HOME": str(self.home),
            "DTZOO_REGISTRY": str(self.registry),
            "MINARI_DATASETS_PATH": str(minari),
            "DTZOO_HUB": "local",
            "DTZOO_ORG": "dtzoo",
        }
        with pytest.MonkeyPatch.context() as mp:
            for k, v in self.env.items():
                mp.setenv(k, v)
            self.model = a_model_dir(base / "model")
            LocalHub(self.home / "hub").publish(self.model, REPO)
            LocalHub(self.home / "hub").pull(REPO)
        self.before = self.outside_state()

    def outside_state(self) -> dict:
        """Every file outside DTZOO_HOME (under this module's tmp dir) and its hash."""
        return {
            k: v
            for k, v in fingerprint_tree(self.base).items()
            if not k.startswith(str(self.home) + os.sep) and "/fuzz-" not in k
        }

    def folders(self) -> set[str]:
        return {str(p) for p in self.home.rglob("*") if p.is_dir()}

    def cli(self, *args: str):
        """Run `dtzoo ARGS` and check the invariants; returns the CompletedProcess."""
        folders = self.folders()
        proc = run_inproc(*args, env=self.env, check=False)
        TRIED["cli"] += 1
        shown = f"dtzoo {args!r}: exit {proc.returncode}\n{proc.stderr}"[-3000:]
        assert "Traceback" not in proc.stderr + proc.stdout, shown
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), shown
            new = {f for f in self.folders() - folders if not Path(f).name.startswith(".")}
            assert not new, f"{shown}\nrefused, but made folders {sorted(new)}"
        assert self.outside_state() == self.before, f"{shown}\nchanged files outside DTZOO_HOME"
        return proc


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, minari_store) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("fuzz"), minari_store)


MID = REPO.split("/")[1]
# characters that matter: separators, dots, a final newline, unicode look-alikes, shell
# metacharacters, digits and the letters of an id (so near-valid ids come up often)
TRICKY = st.sampled_from(
    list("-/.\n\r\t ~$;*?'\"\\_LS") + ["seed", "step", "..", "\u0130", "\uff0d"]
)
ID_PARTS = st.one_of(
    st.sampled_from(["pendulum", "cartpole", "hopper", "Pendulum", "pendulum-x"]),
    st.from_regex(r"[0-9]{1,6}", fullmatch=True),
    TRICKY,
    st.text(st.characters(exclude_characters="\x00"), max_size=4),
)
NEAR_IDS = st.lists(ID_PARTS, min_size=1, max_size=8).map("".join)
IDS = st.one_of(
    NEAR_IDS,
    st.builds(
        lambda e, n, s, tail: f"{e}-{n}L-seed{s}{tail}",
        st.sampled_from(["pendulum", "cartpole", "nope", "pendulum-2l"]),
        st.integers(0, 10**12),
        st.integers(0, 10**40),
        st.sampled_from(["", "\n", " ", "/", "/..", "\x0b", "L"]),
    ),
)


@fuzz(60)
@given(mid=IDS)
def test_any_model_id_is_refused_in_one_line_or_pulled(zoo, mid):
    if mid.startswith("-"):
        mid = "x" + mid  # (an option to typer, not an id)
    proc = zoo.cli("pull", mid, "--hub", "local")
    if proc.returncode == 0:  # only the published model, however it was spelled, and no alias
        assert Path(proc.stdout.strip().splitlines()[-1]).parent.name == MID, (mid, proc.stdout)
        assert mid in (MID, REPO), mid


@fuzz(30)
@given(mid=IDS)
def test_any_model_id_to_train_is_refused_before_any_work(zoo, mid):
    """Ids that are not in the registry (or are too big) never reach training."""
    if mid.startswith("-"):
        mid = "x" + mid
    proc = zoo.cli("train", mid, "--steps", "1", "--device", "cpu")
    assert proc.returncode != 0 or mid.startswith(("pendulum-", "cartpole-")), (mid, proc.stderr)
    assert not (zoo.home / "runs").exists() or all(
        p.name.startswith(("pendulum-", "cartpole-")) for p in (zoo.home / "runs").iterdir()
    )


ORGS = st.one_of(
    NEAR_IDS,
    st.sampled_from(
        [
            "dtzoo",
            "dtzoo\n",
            "dtzoo/",
            "../dtzoo",
            "a--b",
            "a..b",
            "-",
            ".",
            "a" * 97,
            "DTZOO",
            "dtzoo.",
            " ",
        ]
    ),
)


@fuzz(40)
@given(org=ORGS)
def test_any_org_is_refused_in_one_line_or_pulled(zoo, org):
    if org.startswith("-"):
        org = "x" + org
    proc = zoo.cli("pull", MID, "--org", org, "--hub", "local")
    assert proc.returncode != 0 or org in ("dtzoo", ""), (org, proc.stdout)  # "": the default


REVISIONS = st.one_of(
    st.sampled_from(
        [
            "main",
            "main\n",
            "step",
            "stepabc",
            "step-1",
            "step01",
            "step 4",
            "../..",
            "../../..",
            "step4/../..",
            "refs/heads/main",
            "0" * 40,
            "0" * 40 + "\n",
            "f" * 64,
            "step" + "9" * 5000,
            "HEAD",
            "~",
            "main~1",
            "step4\n",
        ]
    ),
    st.builds(
        lambda n, tail: f"step{n}{tail}",
        st.integers(0, 10**30),
        st.sampled_from(["", "\n", "/", "x", ".."]),
    ),
    NEAR_IDS,
)


@fuzz(50)
@given(rev=REVISIONS)
def test_any_revision_is_refused_in_one_line_or_pulled(zoo, rev):
    if rev.startswith("-"):
        rev = "x" + rev
    proc = zoo.cli("pull", MID, "--revision", rev, "--hub", "local")
    assert proc.returncode != 0 or rev == "main", (rev, proc.stdout)


@fuzz(40)
@given(rev=REVISIONS)
def test_any_revision_of_a_directory_loads_or_raises_a_dtzoo_error(zoo, rev):
    import dtzoo

    TRIED["api"] += 1
    try:
        model = dtzoo.load(zoo.model, revision=rev)
    except DtzooError:
        return
    assert rev == "main" and model.config.model_id == MID


# ----------------------------------------------------------------------------- files

JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**30), 10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths_of(doc, prefix=()) -> list[tuple]:
    """Every key path in a nested dict/list (where a fuzzed value can go)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            out += paths_of(v, (*prefix, i))
    return out


def mutate(doc, path: tuple, value, delete: bool):
    """A deep copy of `doc` with the value at `path` replaced (or removed)."""
    if not path:
        return value
    doc = copy.deepcopy(doc)
    node = doc
    for k in path[:-1]:
        node = node[k]
    if delete and isinstance(node, dict):
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    return doc


@st.composite
def mutated(draw, base):
    path = draw(st.sampled_from(paths_of(base)))
    value = draw(
        st.one_of(
            JSON,
            st.sampled_from(
                [float("inf"), float("nan"), -1, 0, 10**9, 10**400, "", [], {}, "3", True, [[1]]]
            ),
        )
    )
    return mutate(base, path, value, draw(st.booleans())), path


REGISTRY_SNIPPETS = st.sampled_from(
    [
        "\xff\xfe",
        "a: &a [1, 2]\nb: [*a, *a]\n",
        "grids: &g\n  g: [*g]\n",
        "envs: .inf\n",
        "recipe: {lr: .nan}\n",
        "recipe: {steps: 1e400}\n",
        "recipe:\n  steps: !!python/object:os.system x\n",
        'hub: {org: "dtzoo\\n"}\n',
        "%YAML 9.9\n---\n",
        "--- a\n--- b\n",
        "\t\x00",
        "[" * 300,
        "grids: {g: {envs: [pendulum], layers: [100000], seeds: [0]}}\n",
        "grids: {g: {envs: [pendulum], layers: [1], seeds: [99999999999]}}\n",
    ]
)


def registry_text(draw_doc) -> str:
    try:
        return yaml.safe_dump(draw_doc, sort_keys=False, allow_unicode=True)
    except (yaml.YAMLError, ValueError, OverflowError):
        return repr(draw_doc)


@fuzz(60)
@given(data=st.data())
def test_any_registry_loads_or_is_refused_in_one_line(zoo, data):
    base = yaml.safe_load(zoo.registry.read_text())
    kind = data.draw(st.sampled_from(["mutated", "snippet", "text"]))
    if kind == "mutated":
        doc, _ = data.draw(mutated(base))
        text = registry_text(doc)
    elif kind == "snippet":
        text = registry_text(base) + data.draw(REGISTRY_SNIPPETS)
    else:
        text = data.draw(st.text(max_size=200))
    path = zoo.base / "fuzz-registry.yaml"
    path.write_bytes(
        text.encode("utf-8", "surrogateescape")
        if kind != "snippet"
        else text.encode("latin-1", "replace")
    )
    proc = zoo.cli("--registry", str(path), "list")
    if proc.returncode == 0:  # a registry that loads resolves every id of its grids, or says why
        from dtzoo.registry import load_registry

        reg = load_registry(path)
        TRIED["api"] += 1
        for mid in reg.all_model_ids()[:50]:
            try:
                reg.resolve(mid)
            except DtzooError:
                pass


@fuzz(150)
@given(data=st.data())
def test_any_config_json_loads_or_raises_a_checkpoint_error(zoo, data):
    """`dtzoo.load` of a directory whose config.json was changed (with a matching manifest):
    a model, or a DtzooError naming config.json (never TypeError, KeyError, ValueError...)."""
    import shutil

    import dtzoo
    from dtzoo.checkpoint import CONFIG, write_manifest

    base = json.loads((zoo.model / CONFIG).read_text())
    doc, where = data.draw(mutated(base))
    d = zoo.base / "fuzz-model"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(zoo.model, d)
    try:
        text = json.dumps(doc, allow_nan=True)
    except (ValueError, OverflowError):
        return
    (d / CONFIG).write_text(text)
    write_manifest(d)
    TRIED["api"] += 1
    try:
        model = dtzoo.load(d)
    except DtzooError as e:
        assert "\n" not in str(e) and len(str(e)) < 2000, (where, str(e)[:300])
        return
    assert model.config.model_id == doc["model_id"], where


def test_report_counts(zoo):
    """(Runs last in this file) How many inputs the fuzzer tried; DTZOO_FAULT_LOG records it."""
    path = os.environ.get("DTZOO_FAULT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(
                json.dumps({"fault": "fuzzed inputs", "cli": TRIED["cli"], "api": TRIED["api"]})
                + "\n"
            )
    assert zoo.outside_state() == zoo.before
