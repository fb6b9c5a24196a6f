"""One GRPO step in rlvr and in TRL's ``GRPOTrainer``: seconds per step, tokens per second, peak memory.

Both sides train the shipped toy model (``src/rlvr/toy/model``: the same weights and tokenizer, float32
on CPU) on the ``arithmetic`` task's training split (prompts such as ``17+25=``, six tokens each,
drawn uniformly at random by each side's own sampler), with the same reward: rlvr's ``arithmetic``
verifier (1 when the last ``<answer>`` block holds the right integer), called through a small
adapter on the TRL side. One step is one GRPO step of either library:

* ``prompts`` prompts (default 32) x 8 completions, at most 64 new tokens, temperature 1, top-p 1,
  top-k off, generation ends at the end-of-sequence token or at the stop string ``</answer>``;
* group-normalised advantages (r - mean) / std over the 8 completions of a prompt (unbiased std);
* PPO-clip surrogate with eps 0.2, sequence-mean-of-token-mean loss (TRL ``loss_type="grpo"``),
  no KL term and no reference model (TRL ``beta=0``), no entropy bonus;
* one AdamW optimizer step over all 256 completions (TRL: ``per_device_train_batch_size=256``
  completions, ``gradient_accumulation_steps=1``, ``steps_per_generation=1``, ``num_iterations=1``),
  gradient clipping at norm 1; the optimizer and learning-rate schedule (the recipe's lr and
  warm-up) are the very ones rlvr builds, handed to TRL through ``GRPOTrainer(optimizers=...)``;
* float32, no gradient checkpointing, no mixed precision (TRL's defaults of ``bf16=True`` and
  ``gradient_checkpointing=True`` are turned off), ``torch.set_num_threads(threads)`` on both sides;
* TRL does no logging, evaluation or saving (``report_to="none"``, ``logging_steps`` = 10^9,
  ``save_strategy="no"``, ``eval_strategy="no"``, ``log_completions=False``).

The rlvr settings are ``recipes/quickstart.yaml`` with the overrides above; the TRL settings are
derived from that same config by :func:`trl_arguments`, which refuses a setting TRL cannot express.
TRL 1.x generates with ``model.generate`` unless vLLM is used (it is not here). It passes
``generation_kwargs`` to the ``GenerationConfig`` but does not give ``generate`` the tokenizer, which
transformers needs to match stop strings, so the tokenizer is bound to the model's ``generate``.

Each side runs in its own fresh process, so that peak resident memory (``ru_maxrss``) is its own;
the sides alternate in order run after run (``--rounds``). A step's time is rlvr's
``Trainer.train_step`` and, for TRL, the time from ``on_step_begin`` to ``on_step_end`` (generation,
reward, loss, backward, optimizer step); the median is over ``--steps`` steps after ``--warmup``.
Generated tokens count each completion's tokens up to and including the end-of-sequence token or
the last token of the stop string. TRL is installed for the benchmark only (``pip install trl``).

What still differs: each side draws its own prompts from the same pool, so completions (and their
lengths, reported per step) differ; rlvr splits the update into micro-batches of at most
``training.micro_batch_tokens`` padded tokens, TRL runs the 256 completions in one pass padded to
the longest; TRL keeps in its loss the pad token that follows a stop string; the std epsilon is
1e-6 in rlvr, 1e-4 in TRL; TRL's step time leaves out fetching the next prompts from its data
loader; peak RSS includes what each side imports (TRL also loads datasets, pandas, accelerate).

``--rlvr-set KEY=VALUE ...`` adds settings to the rlvr side only, for engine options TRL has no
counterpart of. With ``rollout.generate_ahead=true`` rlvr generates the next step's completions in a
second thread while the update runs (so it uses two cores at ``--threads 1``); its step time is
then the wall time of ``train_step``, waiting for that thread included, and "of which generation"
is the thread's time, which overlaps the update.

    python benchmarks/trl_step.py --threads 1 2 [--append-results]
    python benchmarks/trl_step.py --threads 1 --rlvr-set rollout.generate_ahead=true
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from results_file import RESULTS, append_to_section

REPO = Path(__file__).resolve().parents[1]
SECTION = "## rlvr against TRL's GRPOTrainer"
RECIPE = REPO / "recipes" / "quickstart.yaml"
TRL_HINT = (
    "TRL is not installed. This benchmark compares rlvr with TRL's GRPOTrainer, which rlvr does not "
    "depend on; install it for the benchmark only:  pip install trl"
)
LOSS_TYPES = {"seq-mean-token-mean": "grpo", "token-mean": "dapo", "seq-mean-token-sum-norm": "dr_grpo"}
SCALE_REWARDS = {"grpo": "group", "dr_grpo": "none"}


def require_trl() -> str:
    """TRL's version; exits with an install hint when it is missing."""
    try:
        import trl
    except ImportError:
        sys.exit(TRL_HINT)
    return trl.__version__


# --- the shared setup --------------------------------------------------------------------------


def rlvr_config(recipe: Path, overrides: list[str]) -> Any:
    from rlvr.config import load_config

    return load_config(recipe, ["training.device=cpu", "model.dtype=float32", *overrides])


def trl_arguments(config: Any) -> dict[str, Any]:
    """GRPOConfig keyword arguments equal to the rlvr ``config``; SystemExit for anything TRL lacks."""
    a, r, o, t = config.algorithm, config.rollout, config.optim, config.training
    unsupported = {
        "algorithm.advantage": a.advantage not in SCALE_REWARDS,
        "algorithm.std_unbiased": a.advantage == "grpo" and not a.std_unbiased,
        "algorithm.whiten_advantages": a.whiten_advantages,
        "algorithm.policy_loss": a.policy_loss != "ppo_clip",
        "algorithm.aggregation": a.aggregation not in LOSS_TYPES,
        "algorithm.loss_norm_length": a.loss_norm_length not in (None, r.max_new_tokens),
        "algorithm.clip_ratio_c": a.clip_ratio_c is not None,
        "algorithm.kl_estimator/kl_placement/kl_clamp": a.kl_coef > 0
        and (a.kl_estimator != "k3" or a.kl_placement != "loss" or a.kl_clamp is not None),
        "algorithm.entropy_coef": a.entropy_coef != 0,
        "algorithm.lm_coef": a.lm_coef != 0,
        "algorithm.filters": bool(a.filters),
        "algorithm.sampler": a.sampler != "uniform",
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        sys.exit(f"these rlvr settings have no TRL GRPOTrainer counterpart here: {', '.join(bad)}")
    completions = r.prompts_per_step * r.samples_per_prompt
    return {
        "num_generations": r.samples_per_prompt,
        "per_device_train_batch_size": completions // t.updates_per_step,  # completions per optimizer step
        "gradient_accumulation_steps": 1,
        "steps_per_generation": t.updates_per_step,
        "num_iterations": t.ppo_epochs,
        "max_completion_length": r.max_new_tokens,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": r.top_k,
        "scale_rewards": SCALE_REWARDS[a.advantage],
        "loss_type": LOSS_TYPES[a.aggregation],
        "epsilon": a.eps_low,
        "epsilon_high": a.eps_high,
        "beta": a.kl_coef,
        "mask_truncated_completions": False,
        "learning_rate": o.lr,  # for TRL's logs: the optimizer is rlvr's (see trl_optimizer)
        "max_grad_norm": o.max_grad_norm,
        "seed": t.seed,
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "logging_steps": 10**9,
        "save_strategy": "no",
        "eval_strategy": "no",
        "log_completions": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
    }


def trl_optimizer(model: Any, config: Any) -> tuple[Any, Any]:
    """The optimizer and schedule rlvr builds, for ``GRPOTrainer(optimizers=...)``.

    The same AdamW and learning-rate factor on both sides. TRL's own ``constant_with_warmup``
    schedule would differ by one step: it starts at lr 0, rlvr at lr / warmup_steps.
    """
    from rlvr.training.setup import build_optimizer

    return build_optimizer(model, config)


class TRLReward:
    """rlvr's task reward as a TRL reward function; also counts the generated tokens it sees.

    TRL calls it with the prompts, the decoded completions, their token ids and every dataset column
    as keyword lists; the ``problem_id`` column finds each completion's :class:`Problem`.
    """

    def __init__(self, task: Any, tokenizer: Any) -> None:
        from rlvr.rewards.composite import CompositeReward

        self.__name__ = "rlvr_" + "_".join(spec.name for spec in task.rewards)
        self.reward = CompositeReward(task.rewards)
        self.problems = {p.id: p for p in task.train + task.test}
        self.stops = task.stop_strings
        self.eos = tokenizer.eos_token_id
        self.tokens = 0

    def generated_tokens(self, text: str, ids: list[int]) -> int:
        # After a stop string, transformers pads the row with the pad token, which is this tokenizer's
        # end-of-sequence token, and TRL keeps the first one: it was not generated.
        if ids and ids[-1] == self.eos and any(text.endswith(s) for s in self.stops):
            return len(ids) - 1
        return len(ids)

    def __call__(
        self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **columns: Any
    ) -> list[float]:
        from rlvr.rewards.base import RewardBatch

        self.tokens += sum(
            self.generated_tokens(c, i) for c, i in zip(completions, completion_ids, strict=True)
        )
        problems = [self.problems[i] for i in columns["problem_id"]]
        return list(self.reward(RewardBatch(completions=list(completions), problems=problems)).values)


def trl_dataset(task: Any, problems: list[Any]) -> Any:
    """A ``datasets.Dataset`` of plain-text prompts (``prompt``) and problem ids (``problem_id``)."""
    from datasets import Dataset

    from rlvr.tasks.templates import render_prompt

    return Dataset.from_dict(
        {
            "prompt": [render_prompt(task.template, p.question) for p in problems],
            "problem_id": [p.id for p in problems],
        }
    )


class GenerateTimer:
    """Wraps ``model.generate``: binds the tokenizer (for stop strings) and sums the time spent in it."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.seconds = 0.0
        inner = functools.partial(model.generate, tokenizer=tokenizer)

        def generate(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        model.generate = generate


def provenance(recipe: Path) -> dict[str, str]:
    """What a result depends on besides the code: the recipe text and the toy model's weights."""
    import hashlib

    from rlvr.toy.build import SHIPPED_DIR

    weights = SHIPPED_DIR / "model.safetensors"
    return {
        "recipe": Path(recipe).read_text(),
        "toy_model_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()
        if weights.is_file()
        else "missing",
    }


def rss_mb() -> float:
    """Current resident memory of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_toy(config: Any) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr.training.model import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(config.model)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(config.model.path), dtype=torch.float32)
    return model, tokenizer


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONPATH"] = str(REPO / "benchmarks") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(script: Path, args: list[str], threads: int, timeout: float | None = None) -> dict[str, Any]:
    """Run ``script --child ...`` in a fresh process; its result is the JSON it writes to --result."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(script), *args, "--threads", str(threads), "--result", str(result)]
        proc = subprocess.run(cmd, env=child_env(threads), cwd=REPO, timeout=timeout)
        if proc.returncode != 0 or not result.is_file():
            sys.exit(f"child run failed (exit {proc.returncode}): {' '.join(cmd)}")
        return json.loads(result.read_text())


# --- the two sides -----------------------------------------------------------------------------


def step_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.samples_per_prompt={args.group}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.temperature=1.0",
        "algorithm.kl_coef=0.0",
        "training.updates_per_step=1",
        "training.ppo_epochs=1",
        f"training.steps={args.warmup + args.steps}",
        "eval.every=0",
        *([f"optim.lr={args.lr}"] if args.lr else []),
    ]


def child_rlvr(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rlvr.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        config = rlvr_config(
            args.recipe, [*step_overrides(args), *args.rlvr_set, f"logging.output_dir={tmp}"]
        )
        trainer = Trainer(config, log=lambda *a, **k: None)
        rss_start = rss_mb()
        steps = []
        for step in range(args.warmup + args.steps):
            m = trainer.train_step(step)
            n = args.prompts * args.group
            steps.append(
                {
                    "seconds": m["time/step"],
                    "generate_seconds": m["time/generate"],
                    "tokens": m["response/length_mean"] * n,
                }
            )
    return {
        "steps": steps,
        "rss_start_mb": rss_start,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def child_trl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.training.setup import build_task

    config = rlvr_config(args.recipe, step_overrides(args))
    task = build_task(config)
    model, tokenizer = load_toy(config)
    generate = GenerateTimer(model, tokenizer)
    reward = TRLReward(task, tokenizer)
    steps: list[dict[str, float]] = []
    rss_start: list[float] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            rss_start.append(rss_mb())

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0, self.g0, self.n0 = time.perf_counter(), generate.seconds, reward.tokens

        def on_step_end(self, *a: Any, **k: Any) -> None:
            steps.append(
                {
                    "seconds": time.perf_counter() - self.t0,
                    "generate_seconds": generate.seconds - self.g0,
                    "tokens": float(reward.tokens - self.n0),
                }
            )

    with tempfile.TemporaryDirectory() as tmp:
        trl_args = GRPOConfig(
            output_dir=tmp,
            max_steps=args.warmup + args.steps,
            generation_kwargs={"stop_strings": list(task.stop_strings)},
            **trl_arguments(config),
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=trl_args,
            train_dataset=trl_dataset(task, task.train),
            processing_class=tokenizer,
            callbacks=[StepTimer()],
            optimizers=trl_optimizer(model, config),
        )
        trainer.train()
    return {
        "steps": steps,
        "rss_start_mb": rss_start[0],
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


# --- the comparison ----------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    measured = [s for run in runs for s in run["steps"][warmup:]]
    return {
        "seconds_per_step": statistics.median(s["seconds"] for s in measured),
        "run_medians": [statistics.median(s["seconds"] for s in run["steps"][warmup:]) for run in runs],
        "generate_seconds": statistics.median(s["generate_seconds"] for s in measured),
        "tokens_per_step": statistics.median(s["tokens"] for s in measured),
        "tokens_per_s": statistics.median(s["tokens"] / s["seconds"] for s in measured),
        "rss_start_mb": max(run["rss_start_mb"] for run in runs),
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        "raw_steps": [run["steps"] for run in runs],
    }


def compare(args: argparse.Namespace, threads: int) -> dict[str, dict[str, Any]]:
    child_args = [
        "--recipe", str(args.recipe), "--prompts", str(args.prompts), "--group", str(args.group),
        "--max-new-tokens", str(args.max_new_tokens), "--warmup", str(args.warmup), "--steps", str(args.steps),
    ] + (["--lr", str(args.lr)] if args.lr else []) + (["--rlvr-set", *args.rlvr_set] if args.rlvr_set else [])  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {"rlvr": [], "trl": []}
    for round_ in range(args.rounds):
        for side in ("rlvr", "trl") if round_ % 2 == 0 else ("trl", "rlvr"):
            print(f"[threads {threads}] round {round_ + 1}/{args.rounds}: {side} ...", flush=True)
            runs[side].append(run_child(Path(__file__), ["--child", side, *child_args], threads))
    return {side: summarise(r, args.warmup) for side, r in runs.items()}


def table(results: dict[int, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| threads | library | s/step | of which generation | generated tokens/step | generated tokens/s "
        "| RSS before step 1 (MiB) | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for threads, sides in results.items():
        for side, s in sides.items():
            lines.append(
                f"| {threads} | {'rlvr' if side == 'rlvr' else 'TRL GRPOTrainer'} | {s['seconds_per_step']:.2f} "
                f"| {s['generate_seconds']:.2f} | {s['tokens_per_step']:.0f} | {s['tokens_per_s']:.0f} "
                f"| {s['rss_start_mb']:.0f} | {s['peak_rss_mb']:.0f} |"
            )
        r, t = sides["rlvr"], sides["trl"]
        lines.append(
            f"| {threads} | **TRL / rlvr** | **{t['seconds_per_step'] / r['seconds_per_step']:.2f}x** "
            f"| {t['generate_seconds'] / r['generate_seconds']:.2f}x | | "
            f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}x (rlvr / TRL) | | "
            f"{t['peak_rss_mb'] / r['peak_rss_mb']:.2f}x |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--threads", type=int, nargs="+", default=[1], help="torch threads (a comparison per value)"
    )
    p.add_argument("--prompts", type=int, default=32, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument("--warmup", type=int, default=1, help="steps run before timing")
    p.add_argument("--steps", type=int, default=5, help="timed steps per run")
    p.add_argument("--rounds", type=int, default=1, help="runs per side, alternating which side goes first")
    p.add_argument(
        "--rlvr-set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="settings for the rlvr side only, with no TRL counterpart (rollout.generate_ahead=true)",
    )
    p.add_argument("--recipe", type=Path, default=RECIPE)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--append-results", action="store_true", help=f"append the table to {RESULTS.name}")
    p.add_argument("--child", choices=("rlvr", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        import torch
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(args.threads[0])
        hf_logging.disable_progress_bar()
        out = child_rlvr(args) if args.child == "rlvr" else child_trl(args)
        args.result.write_text(json.dumps(out))
        return
    trl_version = require_trl()
    import torch
    import transformers

    results = {threads: compare(args, threads) for threads in args.threads}
    versions = f"TRL {trl_version}, transformers {transformers.__version__}, torch {torch.__version__}"
    print(f"\n{args.prompts} prompts x {args.group} completions, <= {args.max_new_tokens} new tokens; "
          f"median of {args.steps} step(s) x {args.rounds} run(s) after {args.warmup} warm-up; {versions}\n")  # fmt: skip
    print(table(results))
    for threads, sides in results.items():
        for side, s in sides.items():
            print(
                f"threads {threads}, {side}: median s/step of each run",
                [round(x, 2) for x in s["run_medians"]],
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"versions": versions, "args": vars(args), "results": results, **provenance(args.recipe)},
                default=str,
            )
        )
    if args.append_results:
        load = os.getloadavg()
        lr = rlvr_config(args.recipe, step_overrides(args)).optim.lr
        medians = "; ".join(
            f"{threads} thread(s) {side}: {', '.join(f'{x:.2f}' for x in s['run_medians'])}"
            for threads, sides in results.items()
            for side, s in sides.items()
        )
        entry = (
            f"`python benchmarks/trl_step.py --threads {' '.join(map(str, args.threads))} --steps {args.steps} "
            f"--rounds {args.rounds}{' --rlvr-set ' + ' '.join(args.rlvr_set) if args.rlvr_set else ''}`: "
            f"{args.prompts} prompts x {args.group}, <= {args.max_new_tokens} new "
            f"tokens, lr {lr:g}; {versions}; toy model sha256 {provenance(args.recipe)['toy_model_sha256'][:12]}; "
            f"{platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the end.\n\n"
            + table(results)
            + f"\n\nMedian s/step of each run: {medians}."
        )
        append_to_section(SECTION, entry)


if __name__ == "__main__":
    main()
