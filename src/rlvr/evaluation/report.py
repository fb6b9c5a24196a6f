"""An evaluation's outputs: a console table, ``results.json``, ``report.md`` and ``pass_at_k.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlvr.evaluation.estimators import k_values

TRAJECTORY_COLUMNS = ["turns_mean", "tool_calls_mean", "truncation_rate", "error_rate"]
"""The columns after pass@k for an evaluation of environments (trajectories have no maj@k)."""


def _columns(n: int, trajectories: bool = False) -> list[str]:
    ks = k_values(n)
    cols = [f"avg@{n}"] + [f"pass@{k}" for k in ks if k > 1]
    if trajectories:
        return cols + TRAJECTORY_COLUMNS
    return cols + ([f"maj@{n}"] if n > 1 else []) + ["length_mean", "format_rate", "truncation_rate"]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and key.startswith("length"):
        return f"{value:.0f}"
    if isinstance(value, float) and key.endswith("_mean"):  # turns, tool calls: counts per trajectory
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return str(value)


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one per benchmark and the macro average; rates in percent."""
    n = results["settings"]["samples_per_problem"]
    cols = _columns(n, trajectories=results["settings"].get("env") is not None)
    header = ["benchmark", "problems", *cols]
    rows = []
    for name, r in results["benchmarks"].items():
        rows.append([name, str(r["problems"]), *(_cell(c, r.get(c, float("nan"))) for c in cols)])
    if len(results["benchmarks"]) > 1:
        macro = results["macro"]
        rows.append(["macro average", "", *(_cell(c, macro.get(c, float("nan"))) for c in cols)])
    return header, rows


def format_table(results: dict[str, Any]) -> str:
    header, rows = table_rows(results)
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def markdown_report(results: dict[str, Any]) -> str:
    s = results["settings"]
    header, rows = table_rows(results)
    if s.get("completions"):
        title = f"# Re-scored completions of {s['completions']}"
        how = (
            f"{s['samples_per_problem']} completion(s) per problem read from the file; lengths in characters."
        )
    elif s.get("env") is not None:
        title = f"# Evaluation of {s['model']} in environment {s['env']['name']}"
        how = trajectory_settings_line(s)
    else:
        title = f"# Evaluation of {s['model']}"
        how = (
            f"{s['samples_per_problem']} sample(s) per problem, temperature {s['temperature']}, top-p {s['top_p']}, "
            f"template {s['template'] or 'per benchmark'}, at most {s['max_new_tokens']} new tokens, seed {s['seed']}."
        )
    lines = [
        title,
        "",
        how,
        "Accuracies in percent: avg@n is the mean over all samples (pass@1), pass@k the unbiased estimator "
        "of Chen et al. (2021), maj@k majority voting over equivalent answers.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    for name, r in results["benchmarks"].items():
        for key, table in r.items():
            if not key.startswith("by_"):
                continue
            cols = list(next(iter(table.values())))
            lines += ["", f"## {name}, by {key[3:]}", "", f"| {key[3:]} | " + " | ".join(cols) + " |"]
            lines.append("|" + "|".join("---" for _ in range(len(cols) + 1)) + "|")
            for value, metrics in table.items():
                lines.append(f"| {value} | " + " | ".join(_cell(c, metrics[c]) for c in cols) + " |")
        if s.get("env") is not None:
            lines += ["", trajectory_summary_line(name, r)]
            continue
        unit = s.get("length_unit", "tokens")
        lines += [
            "",
            f"{name}: mean length {_cell('length', r['length_mean'])} {unit} ({_cell('length', r['length_correct'])} "
            f"correct, {_cell('length', r['length_wrong'])} wrong); no answer in {100 * r['no_answer_rate']:.1f}% of samples.",
        ]
    return "\n".join(lines) + "\n"


def trajectory_settings_line(s: dict[str, Any]) -> str:
    """How an evaluation of environments played its trajectories, in a sentence."""
    n = s["samples_per_problem"]
    return (
        f"{n} {'trajectory' if n == 1 else 'trajectories'} per problem, temperature {s['temperature']}, "
        f"top-p {s['top_p']}, at most {s['env']['max_turns']} turns, seed {s['seed']}; a trajectory is "
        "correct when the environment's verdict says so, and one whose environment failed counts as wrong."
    )


def trajectory_summary_line(name: str, r: dict[str, Any]) -> str:
    """One set's trajectory behaviour in a sentence: means per trajectory, truncations, errors."""
    cut = ", ".join(
        f"{key[len('truncated_') :]} {_cell(key, v)}%"
        for key, v in r.items()
        if key.startswith("truncated_") and v is not None
    )
    return (
        f"{name}: per trajectory {_cell('turns_mean', r['turns_mean'])} turns, "
        f"{_cell('tool_calls_mean', r['tool_calls_mean'])} tool calls "
        f"({_cell('tool_errors_mean', r['tool_errors_mean'])} tool errors, "
        f"{_cell('timeouts_mean', r['timeouts_mean'])} timeouts), {_cell('length', r['length_mean'])} sampled tokens; "
        f"truncated: {cut or '-'}; environment errors: {r['errors']} "
        f"({_cell('error_rate', r['error_rate'])}% of trajectories, counted wrong)."
    )


def plot_pass_at_k(results: dict[str, Any], path: Path) -> Path | None:
    """pass@k against k (log2 axis) per benchmark; None when n = 1 (nothing to plot)."""
    n = results["settings"]["samples_per_problem"]
    if n < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = list(range(1, n + 1))
    for name, r in results["benchmarks"].items():
        ax.plot(ks, [100 * r[f"pass@{k}"] for k in ks], marker="o", markersize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k (%)")
    model = str(results["settings"]["model"])
    ax.set_title(f"pass@k of {model if len(model) <= 60 else '...' + model[-57:]}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(results: dict[str, Any], output_dir: Path) -> list[Path]:
    """results.json, report.md and pass_at_k.png (when n > 1) in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    written = [output_dir / "results.json", output_dir / "report.md"]
    written[0].write_text(json.dumps(results, indent=2) + "\n")
    written[1].write_text(markdown_report(results))
    png = plot_pass_at_k(results, output_dir / "pass_at_k.png")
    if png is not None:
        written.append(png)
    return written
