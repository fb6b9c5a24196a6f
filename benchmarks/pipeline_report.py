"""The table and plot of a finished ``rlvr pipeline`` run: every eval stage's accuracy and mean length,
and the seconds every stage took.

    python benchmarks/pipeline_report.py runs/r1_toy --plot r1_toy.png
    python benchmarks/pipeline_report.py runs/kimi_long2short_toy --plot long2short.png --length-plot

Reads DIR/pipeline.json (each stage's settings, outputs and seconds) and each eval stage's
results.json. Prints a Markdown table of the models (the eval stage, the model it evaluated, avg@n
and mean completion length in tokens of each benchmark) and one of the stages (kind, seconds).
``--plot FILE`` draws accuracy per model as bars, or with ``--length-plot`` accuracy against mean
length (the long2short view: up and to the left is better).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_run(directory: Path) -> tuple[dict, list[dict]]:
    """The pipeline's stage records, and one row per eval stage with its headline numbers."""
    stages = json.loads((directory / "pipeline.json").read_text())["stages"]
    rows = []
    for name, record in stages.items():
        if record["run"] != "eval":
            continue
        results = json.loads(Path(record["outputs"]["results"]).read_text())
        n = results["settings"]["samples_per_problem"]
        for bench, numbers in results["benchmarks"].items():
            rows.append(
                {
                    "stage": name,
                    "model": record["settings"]["model"],
                    "benchmark": bench,
                    "problems": numbers["problems"],
                    "accuracy": 100 * numbers[f"avg@{n}"],
                    "length": numbers["length_mean"],
                }
            )
    return stages, rows


def format_tables(stages: dict, rows: list[dict]) -> str:
    lines = ["| eval stage | model | benchmark | accuracy | mean length (tokens) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| `{r['stage']}` | `{r['model']}` | {r['benchmark']} ({r['problems']}) | {r['accuracy']:.1f}% "
            f"| {r['length']:.1f} |"
        )
    lines += ["", "| stage | run | seconds |", "|---|---|---|"]
    for name, record in stages.items():
        seconds = record.get("seconds")
        lines.append(f"| `{name}` | {record['run']} | {'' if seconds is None else f'{seconds:.0f}'} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, *, against_length: bool, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels = [r["stage"].removeprefix("eval_") for r in rows]
    if against_length:
        ax.scatter([r["length"] for r in rows], [r["accuracy"] for r in rows])
        for label, r in zip(labels, rows, strict=True):
            ax.annotate(label, (r["length"], r["accuracy"]), textcoords="offset points", xytext=(5, 4))
        ax.set_xlabel("mean completion length (tokens)")
    else:
        ax.bar(labels, [r["accuracy"] for r in rows])
        for i, r in enumerate(rows):
            ax.text(i, r["accuracy"] + 1, f"{r['accuracy']:.1f}", ha="center")
        ax.tick_params(axis="x", labelrotation=20)
    ax.set_ylabel("greedy held-out accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="the pipeline's directory (its `dir:`)")
    parser.add_argument("--plot", type=Path, default=None, help="write the plot to this PNG file")
    parser.add_argument("--length-plot", action="store_true", help="accuracy against mean length")
    args = parser.parse_args()
    stages, rows = load_run(args.dir)
    print(format_tables(stages, rows))
    if args.plot:
        plot(rows, args.plot, against_length=args.length_plot, title=args.dir.name)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
