"""Does every preset learn? Train the embedded toy model with each and compare.

Each preset keeps its own algorithm (estimator, loss, aggregation, KL, filters, clip ranges); the
budget is the same for all and sized for the toy task, overriding the papers' batch sizes:
16 prompts x 8 samples per step, 48 new tokens, lr 1e-4 with 10 warmup steps, one optimizer step
per rollout step, one CPU thread. Greedy held-out accuracy (200 problems) before and after.

The critic-based presets (``ppo``, ``vapo``) also get a critic learning rate for this scale
(``CRITIC_BUDGET``): the papers' critic/actor ratios (Open-Reasoner-Zero 5e-6 / 1e-6, VAPO
2e-6 / 1e-6) applied to the toy budget's actor rate of 1e-4, i.e. 5e-4 and 2e-4. Everything else
stays the preset's: ``ppo``'s 12 critic updates per step, ``vapo``'s 50 value-pretraining steps
(their wall time is included in the run's time).

A run is a preset name, optionally followed by ``+key=value`` overrides applied last, so that an
ablation runs beside its preset with the same seed:

    python benchmarks/preset_learning.py --steps 100 [--presets grpo,dapo] [--output FILE.md]
    python benchmarks/preset_learning.py --steps 100 --presets ppo,vapo,vapo+critic.pretrain_steps=0
    python benchmarks/preset_learning.py --steps 100 --presets "grpo,spo_tree+algorithm.spo_tree=[4,4]"
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rlvr.algorithms.presets import PRESETS
from rlvr.algorithms.validation import needs_critic
from rlvr.config import load_config
from rlvr.training.trainer import train

TOY_BUDGET = [
    "model.path=toy",
    "task.name=arithmetic",
    "task.params.num_train=4000",
    "task.params.num_test=200",
    "task.params.digits=2",
    "task.params.seed=1000",
    "rollout.prompts_per_step=16",
    "rollout.samples_per_prompt=8",
    "rollout.max_new_tokens=48",
    "rollout.temperature=1.0",
    "rollout.top_p=1.0",
    "optim.lr=1e-4",
    "optim.warmup_steps=10",
    "optim.schedule=constant",
    "optim.weight_decay=0.0",
    "training.ppo_epochs=1",
    "training.updates_per_step=1",
    "training.cpu_threads=1",
    "eval.num_problems=200",
    "checkpoint.every=0",
    "logging.sample_every=0",
    "logging.tensorboard=false",
]

CRITIC_BUDGET = {
    "ppo": ["critic.lr=5e-4"],
    "vapo": ["critic.lr=2e-4"],
}
"""Critic learning rates for the toy budget: the papers' critic/actor ratios times the actor's 1e-4."""


def run_overrides(run: str, steps: int, output_dir: Path) -> list[str]:
    """The config overrides of ``run`` (``preset`` or ``preset+key=value+...``) on the toy budget."""
    name, *extra = run.split("+")
    return [
        f"preset={name}",
        *TOY_BUDGET,
        *CRITIC_BUDGET.get(name, []),
        f"training.steps={steps}",
        f"logging.output_dir={output_dir}",
        *extra,
    ]


def split_runs(text: str) -> list[str]:
    """The comma-separated runs of ``--presets``; a comma inside brackets belongs to a list value
    (``spo_tree+algorithm.spo_tree=[4,4]``)."""
    runs, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            runs.append(text[start:i])
            start = i + 1
    return [run for run in [*runs, text[start:]] if run]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--presets",
        default=None,
        help="comma-separated runs, each a preset name with optional +key=value overrides "
        "(default: every critic-free preset)",
    )
    parser.add_argument("--output", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    runs = (
        split_runs(args.presets)
        if args.presets
        else [n for n in PRESETS.names() if not needs_critic(PRESETS.get(n).algorithm)]
    )
    rows = []
    for run in runs:
        out = Path(tempfile.mkdtemp(prefix=f"rlvr-preset-{run.split('+')[0]}-"))
        config = load_config(None, run_overrides(run, args.steps, out))
        start = time.perf_counter()
        result = train(config, log=lambda *a: None)
        seconds = time.perf_counter() - start
        before, after = result.eval_before["eval/accuracy"], result.eval_after["eval/accuracy"]
        rows.append((run, before, after, seconds))
        print(
            json.dumps(
                {"run": run, "before": before, "after": after, "seconds": round(seconds, 1), "dir": str(out)}
            ),
            flush=True,
        )
    table = [
        f"| preset | held-out before | after {args.steps} steps | change | wall time |",
        "|---|---|---|---|---|",
    ]
    for run, before, after, seconds in rows:
        name = " ".join(f"`{part}`" for part in run.split("+"))
        table.append(
            f"| {name} | {before:.1%} | {after:.1%} | {100 * (after - before):+.1f} pts | {seconds:.0f} s |"
        )
    text = "\n".join(table)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
