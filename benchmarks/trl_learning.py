"""Learning speed against TRL: held-out accuracy against training time, rlvr and TRL's ``GRPOTrainer``.

Both libraries train the shipped toy model on the ``arithmetic`` task of ``recipes/quickstart.yaml``
(train split of ``arithmetic_task(num_train=4000, num_test=200, digits=2, ops=["+"], seed=1000)``)
with the recipe's GRPO settings: the same prompts per step, group size, generation budget,
temperature, advantages, loss, optimizer and reward (rlvr's ``arithmetic`` verifier; on the TRL side
through the adapter of ``trl_step.py``, whose ``trl_arguments`` maps every setting and refuses one TRL
cannot express; see that file for the mapping and what is made equal). Each run uses one learning
rate of the sweep ``--lrs`` and trains for ``--minutes`` of training time in its own process.

``--rlvr-set KEY=VALUE ...`` adds settings to the rlvr side only, for engine options TRL has no
counterpart of: ``rollout.generate_ahead=true`` generates the next step's completions in a thread
while the update runs (two cores for rlvr's run: use ``--jobs 1``).

Training time is wall-clock time spent in training steps (rlvr: ``Trainer.train_step``; TRL: its
``Trainer.train`` loop), with evaluation excluded: the clock stops while the model is evaluated
(after a round generated ahead has finished, on the clock). Both
sides are evaluated by the same code: greedy decoding with ``model.generate`` (stop string
``</answer>``, the recipe's budget of new tokens) on the 200 held-out problems, scored by the task's
reward; at time 0, then after the first step that ends ``--eval-every`` seconds or more after the
previous evaluation, and at the end.

Writes ``curves.json`` (every evaluation of every run), ``accuracy.png`` (accuracy against training
seconds) and ``summary.md`` (the table, with the issue's target: rlvr reaches the accuracy TRL has
at the end of the budget within a third of it, and ends higher; see :func:`summarise` for the two
readings) into ``--out``::

    python benchmarks/trl_learning.py --minutes 10 --lrs 2.5e-4 5e-4 1e-3 [--append-results]
    python benchmarks/trl_learning.py --minutes 10 --lrs 1e-4 --jobs 1 --rlvr-set rollout.generate_ahead=true
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
from trl_step import (
    RECIPE,
    REPO,
    SECTION,
    TRLReward,
    load_toy,
    peak_rss_mb,
    provenance,
    require_trl,
    rlvr_config,
    run_child,
    trl_arguments,
    trl_dataset,
    trl_optimizer,
)

LIBRARIES = ("rlvr", "trl")
LABELS = {"rlvr": "rlvr", "trl": "TRL GRPOTrainer"}


def overrides(lr: float) -> list[str]:
    # A time budget, not a step count, ends the run (a cosine schedule would stay at its peak).
    return ["training.steps=1000000000", f"optim.lr={lr}", "eval.every=0", "checkpoint.every=0"]


class GreedyAccuracy:
    """Greedy held-out accuracy of a model, computed the same way for both libraries."""

    def __init__(self, config: Any, task: Any, tokenizer: Any) -> None:
        import torch
        from transformers import GenerationConfig

        from rlvr.rewards.composite import CompositeReward
        from rlvr.tasks.templates import render_prompt

        self.problems = task.test[: config.eval.num_problems] if config.eval.num_problems else task.test
        self.reward = CompositeReward(task.rewards)
        self.tokenizer = tokenizer
        ids = [tokenizer(render_prompt(task.template, p.question))["input_ids"] for p in self.problems]
        width = max(len(i) for i in ids)
        pad = tokenizer.pad_token_id
        self.input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])  # [N, P] left-padded
        self.attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        self.generation = GenerationConfig(
            do_sample=False,
            max_new_tokens=config.eval.max_new_tokens or config.rollout.max_new_tokens,
            stop_strings=list(task.stop_strings) or None,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )

    def __call__(self, model: Any) -> float:
        import torch

        from rlvr.rewards.base import RewardBatch

        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model.generate(
                input_ids=self.input_ids,
                attention_mask=self.attention,
                generation_config=self.generation,
                tokenizer=self.tokenizer,
            )
        model.train(was_training)
        texts = self.tokenizer.batch_decode(out[:, self.input_ids.shape[1] :], skip_special_tokens=True)
        result = self.reward(RewardBatch(completions=texts, problems=list(self.problems)))
        correct = result.correct if result.correct is not None else [v > 0 for v in result.values]
        return sum(correct) / len(correct)


class Clock:
    """Training seconds (evaluation excluded) and the evaluation schedule."""

    def __init__(self, budget: float, every: float) -> None:
        self.budget, self.every = budget, every
        self.start = time.perf_counter()
        self.paused = 0.0
        self.last_eval = 0.0
        self.curve: list[dict[str, float]] = []

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def done(self) -> bool:
        return self.seconds() >= self.budget

    def maybe_evaluate(
        self, step: int, evaluate: Any, model: Any, force: bool = False, settle: Any = None
    ) -> None:
        """Evaluate when due; ``settle`` first finishes, on the clock, work still running in the
        background (rlvr's round generated ahead), so that none of it is done while the clock stops."""
        if not (force or self.seconds() - self.last_eval >= self.every or self.seconds() >= self.budget):
            return
        if settle is not None:
            settle()
        now = self.seconds()
        t0 = time.perf_counter()
        accuracy = evaluate(model)
        spent = time.perf_counter() - t0
        self.paused += spent
        self.last_eval = now
        self.curve.append({"seconds": now, "step": step, "accuracy": accuracy, "eval_seconds": spent})
        print(f"  step {step:5d}  {now:7.1f} s  held-out accuracy {accuracy:.1%}", flush=True)


def child_rlvr(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from rlvr.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        config = rlvr_config(args.recipe, [*overrides(args.lr), *args.rlvr_set, f"logging.output_dir={tmp}"])
        trainer = Trainer(config, log=lambda *a, **k: None)

        def settle() -> None:
            if trainer.ahead is not None and trainer.ahead.pending is not None:
                trainer.ahead.pending[1].result()

        evaluate = GreedyAccuracy(config, trainer.task, trainer.tokenizer)
        setup = time.perf_counter() - t0
        clock = Clock(args.minutes * 60, args.eval_every)
        clock.maybe_evaluate(0, evaluate, trainer.model, force=True)
        step = 0
        while not clock.done():
            trainer.train_step(step)
            step += 1
            clock.maybe_evaluate(step, evaluate, trainer.model, settle=settle)
    return {"curve": clock.curve, "steps": step, "setup_seconds": setup, "peak_rss_mb": peak_rss_mb()}


def child_trl(args: argparse.Namespace) -> dict[str, Any]:
    import functools
    import tempfile

    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.training.setup import build_task

    t0 = time.perf_counter()
    config = rlvr_config(args.recipe, overrides(args.lr))
    task = build_task(config)
    model, tokenizer = load_toy(config)
    model.generate = functools.partial(model.generate, tokenizer=tokenizer)  # stop strings need it
    evaluate = GreedyAccuracy(config, task, tokenizer)
    state: dict[str, Any] = {}

    class TimeBudget(TrainerCallback):
        def on_train_begin(self, _args: Any, s: Any, control: Any, **kw: Any) -> None:
            state["setup"] = time.perf_counter() - t0
            state["clock"] = Clock(args.minutes * 60, args.eval_every)
            state["clock"].maybe_evaluate(0, evaluate, kw["model"], force=True)

        def on_step_end(self, _args: Any, s: Any, control: Any, **kw: Any) -> None:
            clock = state["clock"]
            clock.maybe_evaluate(s.global_step, evaluate, kw["model"])
            state["steps"] = s.global_step
            if clock.done():
                control.should_training_stop = True

    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[TRLReward(task, tokenizer)],
            args=GRPOConfig(
                output_dir=tmp,
                max_steps=10**9,
                generation_kwargs={"stop_strings": list(task.stop_strings)},
                **trl_arguments(config),
            ),
            train_dataset=trl_dataset(task, task.train),
            processing_class=tokenizer,
            callbacks=[TimeBudget()],
            optimizers=trl_optimizer(model, config),
        )
        trainer.train()
    return {
        "curve": state["clock"].curve,
        "steps": state.get("steps", 0),
        "setup_seconds": state["setup"],
        "peak_rss_mb": peak_rss_mb(),
    }


# --- the report ----------------------------------------------------------------------------------


SMOOTH = 3  # evaluations in a running mean: one evaluation of 200 problems is +-3 points of noise


def first_time_at(curve: list[dict[str, float]], accuracy: float, smooth: int = 1) -> float | None:
    """The first time the mean of the last ``smooth`` evaluations reaches ``accuracy``."""
    values = [p["accuracy"] for p in curve]
    for i in range(smooth - 1, len(curve)):
        if sum(values[i - smooth + 1 : i + 1]) / smooth >= accuracy:
            return curve[i]["seconds"]
    return None


def final_accuracy(curve: list[dict[str, float]], smooth: int = SMOOTH) -> float:
    """Accuracy at the end of the budget: the mean of the last ``smooth`` evaluations."""
    tail = [p["accuracy"] for p in curve[-smooth:]]
    return sum(tail) / len(tail)


def summarise(runs: list[dict[str, Any]], budget: float) -> tuple[str, dict[str, Any]]:
    """The markdown table and the verdict on the issue's target, read two ways.

    * at 10 minutes: TRL's accuracy at the end of the budget (mean of its last 3 evaluations, best
      learning rate), against the first time rlvr's mean of 3 consecutive evaluations reaches it;
    * strict: TRL's best single evaluation at any time, against rlvr's first single evaluation at it.
    """
    trl_runs = [r for r in runs if r["library"] == "trl"]
    rlvr_runs = [r for r in runs if r["library"] == "rlvr"]
    best = max(p["accuracy"] for r in trl_runs for p in r["curve"])  # TRL's best, any lr, any time
    at_end = max(final_accuracy(r["curve"]) for r in trl_runs)
    lines = [
        f"| library | lr | steps | s/step | accuracy at 0 | final accuracy (mean of last {SMOOTH}) "
        f"| best accuracy | time to TRL's final ({at_end:.1%}, mean of {SMOOTH}) | time to TRL's best ({best:.1%}) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        c = r["curve"]
        reach_end, reach_best = first_time_at(c, at_end, SMOOTH), first_time_at(c, best)
        lines.append(
            f"| {LABELS[r['library']]} | {r['lr']:g} | {r['steps']} | {c[-1]['seconds'] / max(r['steps'], 1):.2f} "
            f"| {c[0]['accuracy']:.1%} | {final_accuracy(c):.1%} | {max(p['accuracy'] for p in c):.1%} "
            f"| {'-' if reach_end is None else f'{reach_end:.0f} s'} "
            f"| {'-' if reach_best is None else f'{reach_best:.0f} s'} |"
        )

    def fastest(accuracy: float, smooth: int) -> float | None:
        times = [t for r in rlvr_runs if (t := first_time_at(r["curve"], accuracy, smooth)) is not None]
        return min(times) if times else None

    rlvr_final = max(final_accuracy(r["curve"]) for r in rlvr_runs)
    reach_end, reach_best = fastest(at_end, SMOOTH), fastest(best, 1)
    ends_higher = rlvr_final > at_end
    verdict = {
        "trl_final_accuracy": at_end,
        "trl_best_accuracy": best,
        "rlvr_seconds_to_trl_final": reach_end,
        "rlvr_seconds_to_trl_best": reach_best,
        "rlvr_best_final": rlvr_final,
        "target_met": reach_end is not None and reach_end <= budget / 3 and ends_higher,
        "strict_target_met": reach_best is not None and reach_best <= budget / 3 and ends_higher,
    }

    def when(t: float | None) -> str:
        return "never" if t is None else f"after {t:.0f} s"

    lines.append(
        f"\nTarget (rlvr reaches TRL's accuracy at the end of the budget within {budget / 3:.0f} s and ends "
        f"higher): rlvr's mean of {SMOOTH} evaluations reached TRL's final {at_end:.1%} {when(reach_end)}; "
        f"final accuracy (best lr) rlvr {rlvr_final:.1%}, TRL {at_end:.1%}: "
        f"**{'met' if verdict['target_met'] else 'not met'}**. Strictly, against TRL's best single evaluation "
        f"({best:.1%}): rlvr reached it {when(reach_best)}: **{'met' if verdict['strict_target_met'] else 'not met'}**."
    )
    return "\n".join(lines), verdict


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        xs = [p["seconds"] for p in r["curve"]]
        ys = [100 * p["accuracy"] for p in r["curve"]]
        style = "-" if r["library"] == "rlvr" else "--"
        ax.plot(xs, ys, style, marker=".", label=f"{LABELS[r['library']]}, lr {r['lr']:g}")
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("greedy held-out accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training time per run (evaluation excluded)")
    p.add_argument(
        "--lrs", type=float, nargs="+", default=None, help="learning rates (default: the recipe's)"
    )
    p.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    p.add_argument(
        "--eval-every", type=float, default=None, help="seconds between evaluations (default budget/20)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once (2 on 2 cores: rlvr and TRL side by side, 1 thread each)",
    )
    p.add_argument(
        "--rlvr-set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="settings for the rlvr side only, with no TRL counterpart (rollout.generate_ahead=true)",
    )
    p.add_argument("--recipe", type=Path, default=RECIPE)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "trl_learning")
    p.add_argument("--append-results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    p.add_argument("--child", choices=LIBRARIES, help=argparse.SUPPRESS)
    p.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.eval_every is None:
        args.eval_every = args.minutes * 60 / 20
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        import torch
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(args.threads)
        hf_logging.disable_progress_bar()
        out = child_rlvr(args) if args.child == "rlvr" else child_trl(args)
        args.result.write_text(json.dumps(out))
        return
    trl_version = require_trl() if "trl" in args.libraries else None
    lrs = args.lrs or [rlvr_config(args.recipe, []).optim.lr]
    budget = args.minutes * 60
    plan: list[tuple[str, float]] = []
    for i, lr in enumerate(lrs):
        plan += [(library, lr) for library in (args.libraries if i % 2 == 0 else args.libraries[::-1])]

    def run(library: str, lr: float) -> dict[str, Any]:
        print(f"{LABELS[library]}, lr {lr:g}, {args.minutes:g} min ...", flush=True)
        child = [
            "--child", library, "--lr", str(lr), "--minutes", str(args.minutes),
            "--eval-every", str(args.eval_every), "--recipe", str(args.recipe),
            *(["--rlvr-set", *args.rlvr_set] if args.rlvr_set else []),
        ]  # fmt: skip
        result = run_child(Path(__file__), child, args.threads, timeout=budget * 3 + 600)
        return {"library": library, "lr": lr, **result}

    # --jobs 2 on a 2-core machine: an rlvr run and a TRL run side by side, one core each.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda job: run(*job), plan))
    args.out.mkdir(parents=True, exist_ok=True)
    title = (
        f"toy model, arithmetic; {Path(args.recipe).name}; {args.threads} thread(s); "
        f"TRL {trl_version}; {args.minutes:g} min per run"
        + (f"; rlvr with {' '.join(args.rlvr_set)}" if args.rlvr_set else "")
    )
    plot(runs, args.out / "accuracy.png", title)
    if len(set(r["library"] for r in runs)) == 2:
        table, verdict = summarise(runs, budget)
    else:
        table, verdict = "(one library only: no comparison)", {}
    (args.out / "curves.json").write_text(
        json.dumps(
            {"title": title, "args": vars(args), "runs": runs, "verdict": verdict, **provenance(args.recipe)},
            indent=1,
            default=str,
        )
    )
    (args.out / "summary.md").write_text(f"{title}\n\n{table}\n")
    print(f"\n{title}\n\n{table}\n\nwritten: {args.out}/curves.json, accuracy.png, summary.md")
    if args.append_results and verdict:
        command = (
            f"`python benchmarks/trl_learning.py --minutes {args.minutes:g} --lrs {' '.join(f'{lr:g}' for lr in lrs)} "
            f"--threads {args.threads} --jobs {args.jobs}"
            + (f" --rlvr-set {' '.join(args.rlvr_set)}`" if args.rlvr_set else "`")
        )
        append_to_section(SECTION, f"Learning speed, {command} ({title}; {os.cpu_count()} cores):\n\n{table}")


if __name__ == "__main__":
    main()
