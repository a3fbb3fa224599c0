"""`dtzoo interp report`: the self-contained HTML page, opened in a real headless browser.

Debian's chromium, driven by Playwright (`make test` installs chromium when missing): the page
loads from a file:// URL with the network off, logs no console errors, and every plot is there
and not empty; hovering an attention cell shows its value; a full-page screenshot is taken.
One tiny pendulum-1L-seed0 (test registry, 40 steps) is trained once for the module.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from dtzoo import paths, zoo
from dtzoo.registry import load_registry
from tests.conftest import make_test_registry, run_cli

MID = "pendulum-1L-seed0"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SWEEP = "-1200:0:4"


@pytest.fixture(scope="module")
def report(tmp_path_factory, minari_store) -> dict:
    """The model trained, then `dtzoo interp report` run as a user would."""
    base = tmp_path_factory.mktemp("report")
    env = {
        "DTZOO_HOME": str(base / "home"),
        "MINARI_DATASETS_PATH": str(minari_store),
        "DTZOO_REGISTRY": str(make_test_registry(base / "registry.yaml")),
        "DTZOO_HUB": "local",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        reg = load_registry()
        zoo.train_cell(reg.resolve(MID), reg, device="cpu")
        run = paths.run_dir(MID)
        n_revisions = len(list((run / "checkpoints").iterdir()))
    out = base / "report.html"
    proc = run_cli(
        "interp",
        "report",
        MID,
        "--out",
        str(out),
        "--episodes",
        "1",
        "--targets",
        SWEEP,
        "--probe-targets",
        "rtg,state[0]",
        env=env,
    )
    return {
        "path": out,
        "proc": proc,
        "base": base,
        "revisions": n_revisions,
        "env": env,
        "run": run,
    }


def page_data(path: Path) -> dict:
    html = path.read_text()
    blob = re.search(
        r'<script type="application/json" id="report-data">(.*?)</script>', html, re.DOTALL
    ).group(1)
    return json.loads(blob.replace("<\\/", "</"))


def test_the_page_is_self_contained(report):
    html = report["path"].read_text()
    assert report["proc"].stdout.strip().endswith(str(report["path"]))
    # nothing to fetch: no external scripts, styles, images or fonts
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "<script src" not in html and "@import" not in html
    data = page_data(report["path"])
    assert data["model_id"] == MID and data["step"] == 40
    heads = data["attention"]["heads"]
    n = len(data["attention"]["labels"])
    assert len(heads) == 1 and n == 60  # 1 layer x 1 head; a full window of 20 steps x R/s/a
    for h in heads:  # causal, rows sum to one
        assert all(abs(sum(row) - 1) < 1e-3 for row in h["pattern"])
        assert all(h["pattern"][q][k] == 0 for q in range(n) for k in range(q + 1, n))
    assert len(data["sweep"]["results"]) == 4 and data["sweep"]["data_best"] is not None
    assert data["probes"]["steps"] == sorted(data["probes"]["steps"])
    assert len(data["probes"]["steps"]) == report["revisions"]
    assert data["log"] and all(r["val_loss"] is not None for r in data["log"])


def test_the_page_renders_in_chromium(report):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (`make test` installs it: apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (the test extra)"
    )
    data = page_data(report["path"])
    shot = report["base"] / "report.png"
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1240, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "request",
                lambda r: (
                    None
                    if r.url.startswith(("file:", "data:"))
                    else errors.append(f"fetched {r.url}")
                ),
            )
            page.goto(report["path"].as_uri())
            page.wait_for_load_state("load")
            n_cells = sum(
                sum(v >= 1e-4 for v in row[: q + 1])
                for h in data["attention"]["heads"]
                for q, row in enumerate(h["pattern"])
            )
            # every plot present and drawn
            assert page.locator("svg.attn").count() == len(data["attention"]["heads"])
            assert page.locator("svg.attn rect.cell").count() == n_cells > 100
            assert page.locator("#sweep-chart circle.point").count() == 4
            assert page.locator("#sweep-chart line.mark").count() == 2  # data's best, expert
            assert "data's best return" in page.locator("#sweep-chart").text_content()
            assert page.locator("#probes svg.chart").count() == 2  # rtg, state[0]
            probe_points = page.locator("#probes svg.chart").first.locator("circle.point")
            assert probe_points.count() == 2 * report["revisions"]  # 2 hooks x revisions
            assert page.locator("#loss-chart path.series").count() == 2  # training, validation
            if data["patching"]:
                box = page.locator("#patching-img").bounding_box()
                assert box and box["width"] > 100 and box["height"] > 50
            else:
                assert "Skipped" in page.locator("#patching").inner_text()
            for svg in page.locator("svg.chart").all():
                box = svg.bounding_box()
                assert box and box["width"] > 200 and box["height"] > 200
            # hover an attention cell: the tooltip names the tokens and the weight
            page.locator("svg.attn rect.cell").nth(5).hover()
            tip = page.locator("#tip")
            assert tip.is_visible() and re.match(
                r"L0H0: query \w+ -> key \w+: \d\.\d{4}", tip.inner_text()
            )
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size[0] == 1240 and img.size[1] > 1500  # the whole page, every section
    assert len(img.getcolors(maxcolors=1 << 20) or []) > 200  # plots, not a blank page


def test_report_of_a_directory_without_revisions(report, tmp_path):
    """A lone model directory (one revision, no log): the page says what it skipped."""
    from dtzoo.checkpoint import CONFIG, WEIGHTS, write_manifest

    lone = tmp_path / "lone"
    lone.mkdir()
    for name in (CONFIG, WEIGHTS):  # the model alone, as a foreign directory would hold it
        shutil.copy2(report["run"] / name, lone / name)
    write_manifest(lone)
    out = tmp_path / "r.html"
    run_cli(
        "interp",
        "report",
        str(lone),
        "--out",
        str(out),
        "--episodes",
        "1",
        "--targets",
        SWEEP,
        env=report["env"],
    )
    data = page_data(out)
    assert data["probes"] is None and data["log"] is None
    assert any("one revision only" in n for n in data["notes"])
    html = out.read_text()
    assert "probes across training: skipped" in html
