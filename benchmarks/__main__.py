"""`python -m benchmarks [--quick] [--out docs/benchmarks.md]`: print and record the figures."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

from benchmarks import suite

QUICK = {
    "sample_calls": 5,
    "train_steps": 4,
    "curve_steps": 4,
    "eval_episodes": 2,
    "reps": 2,
    "memory_steps": 5,
    "eval_reps": 1,
    "random_steps": 20,
}
FULL = {
    "sample_calls": 50,
    "train_steps": 30,
    "curve_steps": 400,
    "eval_episodes": 10,
    "reps": 5,
    "memory_steps": 200,
    "eval_reps": 2,
    "random_steps": 1000,
}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    load = os.getloadavg()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {device}, Python {platform.python_version()}; "
        f"load average {load:.1f} when the run started"
    )


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def table(rows: list[suite.Row]) -> str:
    lines = [
        "| figure | dtzoo | reference | unit | ratio | goal | note |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        lines.append(
            f"| {r.figure} | {fmt(r.dtzoo)} | {fmt(r.reference)} | {r.unit} | {ratio} | "
            f"{r.goal} | {r.note} |"
        )
    return "\n".join(lines)


def run(quick: bool, dataset: str, gym_ids: list[str]) -> list[suite.Row]:
    sizes = QUICK if quick else FULL
    suite.seed_everything()
    data = suite.load_data(dataset)
    rows = []
    row, _ = suite.bench_sampling(data, sizes["reps"], sizes["sample_calls"])
    rows.append(row)
    train_rows, _ = suite.bench_training(
        data, sizes["train_steps"], sizes["reps"], sizes["curve_steps"]
    )
    rows += train_rows
    # 1L on every env; 3L on the last (each reference loop run takes minutes)
    for n_layers, ids in ((1, gym_ids), (3, gym_ids[-1:])):
        for gym_id in ids:
            eval_rows, _ = suite.bench_eval(
                gym_id, n_layers, sizes["eval_episodes"], sizes["eval_reps"], sizes["random_steps"]
            )
            rows += eval_rows
    cli_rows, _ = suite.bench_cli(sizes["reps"])
    rows += cli_rows
    rows.append(suite.bench_memory(dataset, sizes["memory_steps"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes; does not write the doc")
    ap.add_argument("--dataset", default=suite.REFERENCE_DATASET)
    ap.add_argument(
        "--gym-ids",
        default="Hopper-v5,HalfCheetah-v5",
        help="comma-separated gym ids for the evaluation rows",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads for both sides (default: torch's own)",
    )
    ap.add_argument("--out", default=str(suite.ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    if "MINARI_DATASETS_PATH" not in os.environ and suite.REFERENCE_STORE.is_dir():
        os.environ["MINARI_DATASETS_PATH"] = str(suite.REFERENCE_STORE)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    machine_line = machine()
    rows = run(args.quick, args.dataset, args.gym_ids.split(","))
    text = table(rows)
    print(text)
    if args.quick:
        return
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(args.out)
    # the analysis below the table is written by hand from measurements (profiles): kept as is
    old = out.read_text() if out.is_file() else ""
    analysis = old[old.index(ANALYSIS) :] if ANALYSIS in old else ANALYSIS + "\n"
    command = "python -m benchmarks" + (f" --threads {args.threads}" if args.threads else "")
    doc = f"""# Benchmarks

Written by `{command}` on {now} (`make bench` runs `python -m benchmarks`).

Machine: {machine_line}.

Each comparison runs both sides in the same process on the same data and the same number of
torch threads, and reports the median of several repetitions, the sides alternating so that
a change in machine load hits both. References: transformers' `DecisionTransformerModel`
(training), and faithful re-statements of the DT paper's `get_batch` and
`evaluate_episode_rtg` in `benchmarks/reference.py`. Ratio > 1 means dtzoo is better.
Dataset: `{args.dataset}`.

{text}

{analysis}"""
    out.write_text(doc)
    print(f"\nwrote {args.out}", file=sys.stderr)


ANALYSIS = "<!-- analysis: written by hand from measurements; make bench keeps it -->"


if __name__ == "__main__":
    main()
