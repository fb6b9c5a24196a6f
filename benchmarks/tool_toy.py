"""A toy that learns to use a tool: GRPO with the calculator against GRPO without it, for the same time.

Both runs start from the embedded ``toy-tool`` model (``rlvr toy build toy-tool``), which cannot add
4- and 5-digit numbers in its head and calls the calculator in about one sampled answer in ten, and
train with ``recipes/tool_toy.yaml``:

* ``with the tool``: the recipe as it is: multi-turn rollouts in the ``calculator`` environment (a
  turn that ends with ``=`` gets the value of the expression before it), reward 1 for a correct
  final answer;
* ``without the tool``: the same recipe with ``env.name=null``: single-turn rollouts, the same
  reward, so the model can only get better at adding in its head.

Each run trains for ``--seconds`` of training time in its own process with ``--threads`` torch
threads; ``--jobs 2`` (the default) runs the two at once so that they share the machine's load
equally. The clock stops while the model is evaluated: at time 0, then after the first step that
ends ``--eval-every`` seconds or more after the previous evaluation, and at the end. An evaluation
measures, on the recipe's 200 held-out problems:

* with the calculator (a multi-turn rollout, at most one call, two turns): greedy accuracy and the
  fraction of trajectories that call it; at the end also 4 samples per problem at temperature 1;
* without it (single-turn, greedy): accuracy from the model's head.

Writes ``curves.json``, ``tool_toy.png`` (accuracy and tool-call rate against training seconds)
and ``summary.md`` (the before/after table) into ``--out``::

    python benchmarks/tool_toy.py --seconds 60 [--append-results]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from results_file import append_to_section
from trl_step import REPO, peak_rss_mb, rlvr_config, run_child

RECIPE = REPO / "recipes" / "tool_toy.yaml"
SECTION = "## A toy that learns to use a tool"
ARMS = {"tool": "with the tool", "no_tool": "without the tool"}


def arm_overrides(arm: str) -> list[str]:
    # A time budget, not a step count, ends the run.
    extra = ["env.name=null"] if arm == "no_tool" else []
    return ["training.steps=1000000000", "eval.every=0", "checkpoint.every=0", *extra]


def measure(model: Any, tokenizer: Any, problems: list[Any], sampled: bool) -> dict[str, float]:
    """Accuracy and tool-call rate with the calculator (greedy; sampled too when ``sampled``) and
    greedy accuracy without it."""
    from rlvr.toy.build import TOYS, greedy_accuracy, tool_use_check

    cfg = TOYS["toy-tool"].config
    with_tool = tool_use_check(model, tokenizer, problems, cfg, sampled=sampled)
    head = greedy_accuracy(model, tokenizer, problems, cfg.max_new_tokens)
    return {**with_tool, "without_calculator_greedy_accuracy": head}


def child(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from rlvr.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        config = rlvr_config(RECIPE, [*arm_overrides(args.child), f"logging.output_dir={tmp}"])
        trainer = Trainer(config, log=lambda *a, **k: None)
        problems = list(trainer.task.test)
        curve: list[dict[str, Any]] = []
        start, paused, last = time.perf_counter(), 0.0, -1e9
        step = 0

        def seconds() -> float:
            return time.perf_counter() - start - paused

        while True:
            now = seconds()
            done = now >= args.seconds
            if done or now - last >= args.eval_every:
                t0 = time.perf_counter()
                point = {
                    "seconds": now,
                    "step": step,
                    **measure(trainer.model, trainer.tokenizer, problems, done),
                }
                paused += time.perf_counter() - t0
                last = now
                curve.append(point)
                print(
                    f"  {ARMS[args.child]}: step {step:4d}  {now:6.1f} s  with the calculator "
                    f"{point['with_calculator_greedy_accuracy']:.1%} (calls "
                    f"{point['with_calculator_greedy_tool_call_rate']:.1%}), without "
                    f"{point['without_calculator_greedy_accuracy']:.1%}",
                    flush=True,
                )
            if done:
                break
            trainer.train_step(step)
            step += 1
    return {"arm": args.child, "curve": curve, "steps": step, "peak_rss_mb": peak_rss_mb()}


def before_training() -> dict[str, float]:
    """The shipped model, measured like the end points (sampled included)."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr.training.model import load_tokenizer, resolve_model_path
    from rlvr.training.setup import build_task

    config = rlvr_config(RECIPE, [])
    task = build_task(config)
    tokenizer = load_tokenizer(config.model)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(config.model.path), dtype=torch.float32)
    return measure(model, tokenizer, list(task.test), True)


ROWS = [
    ("with_calculator_greedy_accuracy", "accuracy with the calculator, greedy"),
    ("with_calculator_greedy_tool_call_rate", "tool-call rate, greedy"),
    ("with_calculator_sampled_accuracy", "accuracy with the calculator, T=1 (4 samples)"),
    ("with_calculator_sampled_tool_call_rate", "tool-call rate, T=1"),
    ("without_calculator_greedy_accuracy", "accuracy without the calculator (single-turn, greedy)"),
]


def summarise(before: dict[str, float], runs: list[dict[str, Any]], budget: float) -> str:
    by_arm = {r["arm"]: r for r in runs}
    header = "| | before | " + " | ".join(
        f"after {budget:g} s {ARMS[a]} ({by_arm[a]['steps']} steps)" for a in ARMS if a in by_arm
    )
    lines = [header + " |", "|---|---|" + "---|" * len(by_arm)]
    for key, label in ROWS:
        cells = [f"{100 * before[key]:.1f}%"]
        cells += [f"{100 * by_arm[a]['curve'][-1][key]:.1f}%" for a in ARMS if a in by_arm]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, calls) = plt.subplots(1, 2, figsize=(10, 4))
    for r in runs:
        xs = [p["seconds"] for p in r["curve"]]
        style = "-" if r["arm"] == "tool" else "--"
        acc.plot(
            xs,
            [100 * p["with_calculator_greedy_accuracy"] for p in r["curve"]],
            style,
            marker=".",
            label=f"{ARMS[r['arm']]}: with the calculator",
        )
        acc.plot(
            xs,
            [100 * p["without_calculator_greedy_accuracy"] for p in r["curve"]],
            style,
            marker="x",
            alpha=0.6,
            label=f"{ARMS[r['arm']]}: without it",
        )
        calls.plot(
            xs,
            [100 * p["with_calculator_greedy_tool_call_rate"] for p in r["curve"]],
            style,
            marker=".",
            label=ARMS[r["arm"]],
        )
    acc.set_ylabel("greedy held-out accuracy (%)")
    calls.set_ylabel("greedy trajectories that call the calculator (%)")
    for ax in (acc, calls):
        ax.set_xlabel("training seconds (evaluation excluded)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"toy-tool, GRPO for {budget:g} s: trained with the calculator and without it", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="training time per run (evaluation excluded)")
    p.add_argument(
        "--eval-every",
        type=float,
        default=None,
        help="seconds between evaluations (default: 1/10 of --seconds)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument(
        "--jobs", type=int, default=2, help="runs at once (2: both arms share the machine equally)"
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "tool_toy")
    p.add_argument("--append-results", action="store_true", help="add the table to benchmarks/RESULTS.md")
    p.add_argument("--child", choices=list(ARMS), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.eval_every is None:
        args.eval_every = args.seconds / 10
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        args.result.write_text(json.dumps(child(args)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    before = before_training()

    def run(arm: str) -> dict[str, Any]:
        print(f"{ARMS[arm]}, {args.seconds:g} s ...", flush=True)
        child_args = ["--child", arm, "--seconds", str(args.seconds), "--eval-every", str(args.eval_every)]
        return run_child(Path(__file__), child_args, args.threads)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(run, ARMS))
    (args.out / "curves.json").write_text(json.dumps({"before": before, "runs": runs}, indent=1))
    plot(runs, args.out / "tool_toy.png", args.seconds)
    table = summarise(before, runs, args.seconds)
    command = f"python benchmarks/tool_toy.py --seconds {args.seconds:g} --threads {args.threads} --jobs {args.jobs}"
    summary = f"`{command}` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs):\n\n{table}\n"
    (args.out / "summary.md").write_text(summary)
    print(summary)
    if args.append_results:
        append_to_section(SECTION, summary)


if __name__ == "__main__":
    main()
