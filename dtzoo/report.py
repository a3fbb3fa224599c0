"""`dtzoo interp report`: one self-contained HTML page about one model (no server, no network).

    >>> path = write_report("pendulum-1L-seed0", Path("report.html"))

Panels: attention over R/s/a tokens on a real rollout (one heatmap per layer and head, hover
for the value), the RTG sweep (achieved vs target, with the data's best return and the expert
score), the activation-patching heatmap (dtzoo.interp.patch, when available), linear probes
across training (dtzoo.dynamics), and the training and validation loss. The data is inlined as
JSON and drawn as SVG by a small inline script; PNGs are inlined as base64. Nothing is fetched.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dtzoo.fsutil import atomic_write_text

Note = Callable[[str], None]


@torch.no_grad()
def rollout_window(model, target_return: float, seed: int = 0, at: int | None = None) -> dict:
    """The context window the model acted on at episode step `at` (default: its first full
    window) of a real rollout at `target_return`, as model inputs (batch of one)."""
    from dtzoo.agent import Agent
    from dtzoo.observations import kind_of, make_env

    config = model.config
    K = config.architecture["context_len"]
    at = K - 1 if at is None else at
    kind = kind_of(config)
    env = make_env(config.env["gym_id"], kind, config.env.get("max_episode_steps"))
    try:
        agent = Agent(model, config, target_return=target_return)
        obs, _ = env.reset(seed=seed)
        for t in range(at + 1):
            action = agent.act(obs)
            window = {
                "states": agent.states.copy(),
                "actions": agent.actions.copy(),
                "returns_to_go": agent.rtg.copy()[..., None],
                "timesteps": agent.timesteps.copy(),
                "mask": (np.arange(K) >= K - agent.filled)[None],
            }
            window["actions"][:, -1] = 0.0  # as the model saw it: a_t was not known yet
            obs, reward, terminated, truncated, _ = env.step(action)
            agent.observe(reward)
            if terminated or truncated:
                break
    finally:
        env.close()
    window["t"] = t
    return window


@torch.no_grad()
def attention_data(model, window: dict) -> dict:
    """Attention patterns of every layer and head on a window: labels R_t/s_t/a_t per token,
    and one (tokens x tokens) matrix per head, padding removed."""
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in window.items() if k != "t"}
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(
        t["states"], t["actions"], t["returns_to_go"], t["timesteps"], t["mask"], names_filter=names
    )
    mask = np.asarray(window["mask"][0])
    keep = np.repeat(mask, 3)  # token positions of real steps
    ts = np.asarray(window["timesteps"][0])
    labels = [
        f"{k}{ts[i // 3]}" for i, k in ((i, "Rsa"[i % 3]) for i in range(3 * len(mask))) if keep[i]
    ]
    heads = []
    for layer, name in enumerate(names):
        pat = cache[name][0].float().numpy()  # (heads, L, L)
        for h in range(pat.shape[0]):
            m = pat[h][np.ix_(keep, keep)]
            heads.append({"layer": layer, "head": h, "pattern": np.round(m, 4).tolist()})
    return {"labels": labels, "heads": heads, "episode_step": int(window["t"])}


def _finite(x):
    """JSON for a browser: NaN and inf (an undefined R^2, say) become null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _png_b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def build_report(
    model_ref: str | os.PathLike,
    hub: str | None = None,
    org: str | None = None,
    episodes: int = 3,
    targets: list[float] | None = None,
    seed: int = 0,
    probe_targets: tuple[str, ...] = ("rtg", "timestep"),
    probes: bool = True,
    patching: bool = True,
    workdir: Path | None = None,
    note: Note = print,
) -> dict:
    """Everything the page shows, as one JSON-able dict (the page inlines it)."""
    from dtzoo.dynamics import load_model_ref
    from dtzoo.evaluate import default_sweep_targets, rtg_sweep
    from dtzoo.plots import sweep_marks

    model = load_model_ref(model_ref, hub=hub, org=org)
    config = model.config
    target = config.target_returns[0]
    out: dict = {
        "model_id": config.model_id,
        "step": config.step,
        "gym_id": config.env["gym_id"],
        "dataset": config.dataset.get("id"),
        "target_return": target,
        "architecture": config.architecture,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "notes": [],
    }
    note("attention on a rollout")
    out["attention"] = attention_data(model, rollout_window(model, target, seed))
    note("rtg sweep")
    sweep = rtg_sweep(model, config, targets or default_sweep_targets(config), episodes=episodes)
    out["sweep"] = {
        "results": [
            {k: r[k] for k in ("target_return", "return_mean", "return_std")}
            for r in sweep["results"]
        ],
        "data_returns": sweep["data_returns"],
        **{k: v for k, v in sweep_marks(sweep).items()},
    }
    out["patching"] = _patching(model, config, workdir, seed, note) if patching else None
    if out["patching"] is None:
        out["notes"].append("activation patching: skipped (dtzoo.interp.patch unavailable)")
    out["probes"] = None
    if probes:
        from dtzoo.dynamics import probe_revisions, revision_dirs

        revs = revision_dirs(model_ref, hub, org)
        if len(revs) >= 2:
            note(f"probes across {len(revs)} revisions")
            out["probes"] = probe_revisions(model_ref, list(probe_targets), hub=hub, org=org)
        else:
            out["notes"].append("probes across training: skipped (one revision only)")
    out["log"] = _training_log(model_ref)
    return out


def _patching(model, config, workdir: Path | None, seed: int, note: Note) -> dict | None:
    """The other half of the toolkit: dtzoo.interp.patch's heatmap between the highest and
    lowest target return, as an inlined PNG (None when TransformerLens is absent)."""
    try:
        from dtzoo import interp
        from dtzoo.interp import to_transformer_lens
    except ImportError:
        return None
    patch = getattr(interp, "patch", None)
    if patch is None:
        return None
    import tempfile

    hi, lo = max(config.target_returns), min(config.target_returns)
    if hi == lo:
        lo = config.env["ref_scores"]["random"]
    note(f"activation patching {hi:g} -> {lo:g}")
    with tempfile.TemporaryDirectory() as tmp:
        r = patch(to_transformer_lens(model), hi, lo, seed=seed, out_dir=Path(workdir or tmp))
        png = (r.get("files") or {}).get("png")
        return {
            "from": hi,
            "to": lo,
            "top": (r.get("top") or [])[:8],
            "png": _png_b64(png) if png and Path(png).is_file() else None,
        }


def _training_log(model_ref) -> list[dict] | None:
    from dtzoo import paths
    from dtzoo.train import read_log

    p = Path(os.path.expanduser(str(model_ref)))
    if not p.is_dir():
        p = paths.run_dir(str(model_ref))
    log = p / "training_log.csv"
    return read_log(log) if log.is_file() else None


def write_report(model_ref: str | os.PathLike, out: Path, note: Note = print, **kwargs) -> Path:
    """Build the report data and write the page (atomically). Returns `out`."""
    data = build_report(model_ref, note=note, **kwargs)
    atomic_write_text(Path(out), render(data))
    return Path(out)


def render(data: dict) -> str:
    """The page: static HTML, the data as inline JSON, and the inline script that draws it."""
    blob = json.dumps(_finite(data), allow_nan=False).replace("</", "<\\/")
    title = html.escape(f"{data['model_id']} (step {data['step']})")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.get("notes", []))
    return (
        PAGE.replace("%TITLE%", title)
        .replace("%NOTES%", notes)
        .replace("%DATA%", blob)
        .replace("%SCRIPT%", SCRIPT)
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dtzoo report: %TITLE%</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#222;
padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#555} .grid{display:flex;flex-wrap:wrap;gap:18px} figure{margin:0}
figcaption{font-size:12px;color:#444;text-align:center} svg{background:#fff}
#tip{position:fixed;pointer-events:none;background:#222;color:#fff;font-size:12px;
padding:3px 6px;border-radius:3px;display:none;z-index:9}
.note{color:#8a4b00} img{max-width:100%}
</style></head><body>
<h1>dtzoo model report: %TITLE%</h1>
<div class="meta" id="meta"></div>
<ul class="note">%NOTES%</ul>
<h2>Attention over R / s / a tokens on a real rollout</h2>
<p class="meta" id="attn-caption"></p><div class="grid" id="attention"></div>
<h2>RTG sweep: achieved vs target return</h2><div id="sweep"></div>
<p class="meta" id="sweep-caption"></p>
<h2>Activation patching</h2><div id="patching"></div>
<h2>Linear probes across training</h2><div class="grid" id="probes"></div>
<h2>Training and validation loss</h2><div id="loss"></div>
<div id="tip"></div>
<script type="application/json" id="report-data">%DATA%</script>
<script>%SCRIPT%</script>
</body></html>
"""

SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("report-data").textContent);
const NS = "http://www.w3.org/2000/svg";
const tip = document.getElementById("tip");
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function hover(e, text) {
  e.addEventListener("mousemove", ev => {
    tip.textContent = text; tip.style.display = "block";
    tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px"; });
  e.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  el("title", {}, e).textContent = text;
}
function fmt(v) { return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(3); }
function tickFmt(v) { return Math.abs(v) >= 1000 || Number.isInteger(v) ? String(Math.round(v))
                                                                      : String(+v.toPrecision(3)); }
function niceTicks(lo, hi) {  // about five round numbers covering [lo, hi]
  const raw = (hi - lo) / 5, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(v);
  return out;
}
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];

function heatmap(parent, h, labels) {
  const n = labels.length, cell = Math.max(4, Math.min(9, Math.floor(430 / n))), pad = 34;
  const fig = document.createElement("figure"); parent.appendChild(fig);
  const svg = el("svg", {width: pad + n * cell + 4, height: pad + n * cell + 4,
                         class: "attn", "data-layer": h.layer, "data-head": h.head}, fig);
  for (let q = 0; q < n; q++) for (let k = 0; k <= q; k++) {
    const v = h.pattern[q][k];
    if (v < 1e-4) continue;
    const r = el("rect", {x: pad + k * cell, y: pad + q * cell, width: cell, height: cell,
      fill: `rgba(31,119,180,${Math.min(1, Math.sqrt(v)).toFixed(3)})`, class: "cell"}, svg);
    hover(r, `L${h.layer}H${h.head}: query ${labels[q]} -> key ${labels[k]}: ${v.toFixed(4)}`);
  }
  el("rect", {x: pad, y: pad, width: n * cell, height: n * cell, fill: "none",
              stroke: "#999"}, svg);
  labels.forEach((lab, i) => {
    if (lab[0] !== "s" || i % 6 !== 1) return;  // every other step's state token
    el("text", {x: pad - 3, y: pad + i * cell + cell, "font-size": 9, "text-anchor": "end"},
       svg).textContent = lab;
    el("text", {x: pad + i * cell, y: pad - 4, "font-size": 9}, svg).textContent = lab;
  });
  const cap = document.createElement("figcaption");
  cap.textContent = `layer ${h.layer}, head ${h.head} (rows: queries, columns: keys)`;
  fig.appendChild(cap);
}

function lineChart(parent, o) {
  const W = o.width || 520, H = o.height || 320, L = 58, R = 26, T = 22, B = 42;
  const pts = o.series.flatMap(s => s.points);
  const ys = pts.flatMap(p => [p[1] - (p[2] || 0), p[1] + (p[2] || 0)])
                .concat((o.hlines || []).map(h => h.y)).filter(Number.isFinite);
  const tx = x => o.xlog ? Math.log10(x) : x;
  const xs = pts.map(p => tx(p[0]));
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = o.ymin ?? Math.min(...ys),
      y1 = o.ymax ?? Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1; if (y1 === y0) y1 = y0 + 1;
  const sx = x => L + (tx(x) - x0) / (x1 - x0) * (W - L - R);
  const sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const fig = document.createElement("figure"); parent.appendChild(fig);
  fig.style.width = W + "px";
  const svg = el("svg", {width: W, height: H, class: "chart", id: o.id}, fig);
  el("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#bbb"}, svg);
  niceTicks(y0, y1).forEach(yv => {
    el("line", {x1: L, x2: W - R, y1: sy(yv), y2: sy(yv), stroke: "#eee"}, svg);
    el("text", {x: L - 5, y: sy(yv) + 3, "font-size": 10, "text-anchor": "end"}, svg)
      .textContent = tickFmt(yv);
  });
  const xt = o.xlog ? niceTicks(x0, x1).filter(Number.isInteger).map(k => Math.pow(10, k))
                    : niceTicks(x0, x1);
  xt.forEach(xv => {
    el("line", {x1: sx(xv), x2: sx(xv), y1: T, y2: H - B, stroke: "#eee"}, svg);
    el("text", {x: sx(xv), y: H - B + 14, "font-size": 10, "text-anchor": "middle"}, svg)
      .textContent = tickFmt(xv);
  });
  el("text", {x: (L + W - R) / 2, y: H - 8, "font-size": 11, "text-anchor": "middle"}, svg)
    .textContent = o.xlabel;
  el("text", {x: 12, y: (T + H - B) / 2, "font-size": 11, "text-anchor": "middle",
              transform: `rotate(-90 12 ${(T + H - B) / 2})`}, svg).textContent = o.ylabel;
  (o.hlines || []).forEach(h => {
    if (!Number.isFinite(h.y)) return;
    const line = el("line", {x1: L, x2: W - R, y1: sy(h.y), y2: sy(h.y), stroke: h.color,
                             "stroke-dasharray": h.dash || "", "stroke-width": 1.5,
                             class: "mark"}, svg);
    hover(line, `${h.label}: ${fmt(h.y)}`);
    el("text", {x: W - R - 4, y: sy(h.y) - 4, "font-size": 10, "text-anchor": "end",
                fill: h.color}, svg).textContent = `${h.label} ${fmt(h.y)}`;
  });
  o.series.forEach((s, i) => {
    const c = s.color || COLORS[i % COLORS.length];
    const good = s.points.filter(p => Number.isFinite(p[1]));
    el("path", {d: good.map((p, j) => `${j ? "L" : "M"}${sx(p[0])},${sy(p[1])}`).join(""),
                fill: "none", stroke: c, "stroke-width": 1.8, "stroke-dasharray": s.dash || "",
                class: "series"}, svg);
    good.forEach(p => {
      if (p[2]) el("line", {x1: sx(p[0]), x2: sx(p[0]), y1: sy(p[1] - p[2]),
                            y2: sy(p[1] + p[2]), stroke: c}, svg);
      if (s.markers === false) return;
      const dot = el("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 3.2, fill: c, class: "point"}, svg);
      hover(dot, `${s.name}: ${o.xlabel} ${fmt(p[0])} -> ${fmt(p[1])}` +
                 (p[2] ? ` ± ${fmt(p[2])}` : ""));
    });
    el("rect", {x: L + 8, y: T + 6 + 14 * i, width: 10, height: 3, fill: c}, svg);
    el("text", {x: L + 22, y: T + 10 + 14 * i, "font-size": 10}, svg).textContent = s.name;
  });
  if (o.caption) {
    const cap = document.createElement("figcaption"); cap.textContent = o.caption;
    fig.appendChild(cap);
  }
}

document.getElementById("meta").textContent =
  `${D.gym_id} · dataset ${D.dataset} · ${D.architecture.n_layers} layer(s), ` +
  `d_model ${D.architecture.d_model}, ${D.architecture.n_heads} head(s) · ` +
  `generated ${D.generated}`;

const A = D.attention;
document.getElementById("attn-caption").textContent =
  `Context window at episode step ${A.episode_step} of a rollout at target return ` +
  `${D.target_return}: ${A.labels.length} tokens. Hover a cell for its weight.`;
A.heads.forEach(h => heatmap(document.getElementById("attention"), h, A.labels));

const S = D.sweep;
const diag = S.results.map(r => [r.target_return, r.target_return]);
lineChart(document.getElementById("sweep"), {id: "sweep-chart",
  series: [{name: "achieved (mean ± std)",
            points: S.results.map(r => [r.target_return, r.return_mean, r.return_std])},
           {name: "achieved = target", points: diag, color: "#999", dash: "4 3", markers: false}],
  hlines: [{y: S.data_best, label: "data's best return", color: "#2ca02c"},
           {y: S.expert, label: "expert score", color: "#d62728", dash: "2 3"}],
  xlabel: "target return", ylabel: "achieved return"});
document.getElementById("sweep-caption").textContent = S.above_data_best != null
  ? `Best achieved ${fmt(S.best_achieved.return_mean)} ` +
    `(target ${fmt(S.best_achieved.target_return)}): ` +
    `${fmt(S.above_data_best)} above the data's best return ${fmt(S.data_best)}.`
  : "No target reaches above the data's best return " +
    `(${S.data_best == null ? "unknown" : fmt(S.data_best)}).`;

const P = D.patching, pdiv = document.getElementById("patching");
if (P && P.png) {
  const img = document.createElement("img");
  img.src = "data:image/png;base64," + P.png; img.id = "patching-img";
  img.alt = `activation patching from target ${P.from} to ${P.to}`; pdiv.appendChild(img);
} else {
  pdiv.innerHTML = '<p class="note">Skipped: dtzoo.interp.patch is not available here.</p>';
}

const Q = D.probes, qdiv = document.getElementById("probes");
if (Q) {
  Q.targets.forEach((t, ti) => lineChart(qdiv, {id: `probe-${ti}`, xlog: true, width: 460,
    ymin: Q.metric[t] === "r2" ? Math.min(0, ...Q.hooks.flatMap(h => Q.scores[h][t])) : 0, ymax: 1,
    series: Q.hooks.map(h => ({name: h,
                               points: Q.steps.map((s, i) => [s + 1, Q.scores[h][t][i]])})),
    xlabel: "training step + 1", ylabel: Q.metric[t] === "r2" ? "R² (held-out)" : "accuracy",
    caption: `probe target ${t}, ${Q.steps.length} revisions, token ${Q.token}; ${Q.source}`}));
} else {
  qdiv.innerHTML = '<p class="note">Skipped: the model has one revision only.</p>';
}

const G = D.log, gdiv = document.getElementById("loss");
if (G && G.length) {
  const series = [{name: "training", points: G.map(r => [r.step, r.loss]), markers: false}];
  if (G.some(r => r.val_loss != null))
    series.push({name: "validation (held-out episodes)", markers: false,
                 points: G.filter(r => r.val_loss != null).map(r => [r.step, r.val_loss])});
  lineChart(gdiv, {id: "loss-chart", series, xlabel: "step", ylabel: "loss"});
} else {
  gdiv.innerHTML = '<p class="note">No training log (a pulled model without one).</p>';
}
"""
