"""SFT and DPO in rlvr and in TRL's ``SFTTrainer`` / ``DPOTrainer``: tokens per second, s/step, peak memory.

Both sides train the same model on the same rows with the same settings, each run in a fresh process:

* **Model.** ``--model toy``: the shipped toy model (``src/rlvr/toy/model``, 0.8M parameters, an 81-token
  character vocabulary). ``--model qwen2.5-0.5b``: random weights of Qwen2.5-0.5B's shape (hidden
  896, MLP 4864, 14 query / 2 key-value heads, tied embeddings, its 151,936-token vocabulary) with
  ``--layers`` decoder layers (24 in the real model; fewer keep a CPU run short), the toy
  tokenizer (its ids are the first 81 rows of the embedding). Float32 weights, no autocast, no
  gradient checkpointing, no LoRA, on the CPU.
* **Data.** Generated and written once per benchmark (``--rows`` rows, seed 0): prompts are sums of
  2 to 8 numbers (``17+25+4=``); an SFT completion is the running sum (``17+25=42, 42+4=46. So
  46``); a DPO pair's chosen completion is that, its rejected one has one step off by 1 or 10
  and the error carried on. Prompt plus completion is 16 to 115 tokens; nothing is truncated
  (``max_tokens`` / ``max_length`` = ``--max-tokens``, 128, the toy model's context).
* **What is trained.** The completion and the end-of-sequence token appended to it; prompt and
  padding are not in the loss (TRL: ``completion_only_loss=True``, prompt-completion rows). The
  token ids and loss masks of every row are checked equal on both sides before training.
* **One step.** ``--examples`` SFT examples (default 16) or ``--pairs`` DPO pairs (default 8, so 16
  sequences) in one forward and backward pass, padded to the longest (rlvr:
  ``training.micro_batch_tokens`` = rows x ``--max-tokens`` so the step is one micro-batch; TRL:
  ``per_device_train_batch_size`` = rows, ``gradient_accumulation_steps=1``, no packing, no
  padding-free); SFT loss = NLL summed over the step's completion tokens / their number; DPO loss =
  sigmoid DPO (Rafailov et al. 2023, eq. 7), beta 0.1, no label smoothing, sequence log-probs
  summed over completion tokens, against a frozen copy of the initial model run under no_grad on
  every step (TRL: ``loss_type=["sigmoid"]``, ``precompute_ref_log_probs=False``; its own
  reference copy); chosen and rejected in one forward on both sides.
* **Optimizer.** AdamW, lr ``--lr`` (1e-5), betas (0.9, 0.999), eps 1e-8, weight decay 0, constant
  learning rate without warm-up, gradient clipping at norm 1 (TRL: ``optim="adamw_torch"``,
  ``lr_scheduler_type="constant"``). Seed 0.
* **Threads.** ``torch.set_num_threads(--threads)`` (default 1) and the OpenMP/MKL variables.
* **TRL** does no logging, evaluation or saving (``report_to="none"``, ``logging_steps`` = 10^9,
  ``save_strategy="no"``, ``eval_strategy="no"``, ``disable_tqdm``). Its trainers always compute a
  few metrics per step (SFT: token accuracy and entropy; DPO: rewards and log-probs), and rlvr
  computes its own (loss, gradient norm, rewards and accuracy for DPO); both are counted.

Measured, per run, over ``--steps`` steps after ``--warmup``:

* **tokens/s**: training tokens processed per second = the non-padding tokens (prompt and
  completion; for DPO both sequences of a pair) of the step's rows, counted at the policy's
  decoder's forward pass with gradients (a forward pre-hook, the same on both sides; the
  reference's forward is not counted again), summed over the timed steps / their seconds;
* **tokens per CPU-second**: the same tokens / the process's CPU time over those steps
  (``time.process_time``): with one thread, less sensitive than wall time to other work on the
  machine taking the core away;
* **s/step**: the mean seconds of a timed step: rlvr's ``SFTRun.train_step`` / ``DPORun.train_step``
  (building the step's micro-batches, forward, backward, clipping, optimizer step); for TRL the time
  from one ``on_step_end`` callback to the next (fetching and collating the batch, forward, backward,
  clipping, optimizer step);
* **peak RSS**: the process's ``ru_maxrss``, which includes what each side imports (TRL also loads
  datasets, pandas, accelerate); the RSS before the first step is shown beside it.

Rounds alternate the order (rlvr first, then TRL first, ...); the table gives the median over
rounds of each run's tokens/s and s/step and the largest peak RSS, and every run's tokens/s is
printed. TRL is installed for the benchmark only (``pip install trl``; written against 1.16).

What still differs: each side draws a step's rows with its own sampler (both a permutation from
a torch generator seeded 0, so far the same rows: compare the tokens/step column), and tokens/s is
the number to compare; TRL's DPO collator left-pads the prompts and flushes the rows left, rlvr
lays out each sequence from position 0; rlvr deep-copies the policy for the DPO reference, TRL
loads it again from the model's directory. Both compute log-probs without keeping [rows, width,
vocabulary] logits; rlvr runs the output projection on the completion tokens only, TRL (on a CPU,
without Triton) on every position.

    python benchmarks/trl_sft_dpo.py --rounds 3
    python benchmarks/trl_sft_dpo.py --model qwen2.5-0.5b --layers 2 --examples 4 --pairs 2 --steps 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from results_file import RESULTS, append_to_section

REPO = Path(__file__).resolve().parents[1]
SECTION = "## SFT and DPO against TRL's SFTTrainer and DPOTrainer"
TRL_HINT = (
    "TRL is not installed. This benchmark compares rlvr with TRL's SFTTrainer and DPOTrainer, which rlvr "
    "does not depend on; install it for the benchmark only:  pip install trl"
)
QWEN25_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_attention_heads=14,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)
QWEN25_VOCAB = 151936


def require_trl() -> str:
    """TRL's version; exits with an install hint when it is missing."""
    try:
        import trl
    except ImportError:
        sys.exit(TRL_HINT)
    return trl.__version__


# --- the shared data and model ------------------------------------------------------------------


def running_sum(rng: random.Random, error: int = 0) -> tuple[str, str]:
    """A prompt (a sum of 2 to 8 numbers) and its worked completion; ``error`` is added to the
    running total at one random step (and carried on), which makes a wrong completion."""
    terms = [rng.randint(1, 99) for _ in range(rng.randint(2, 8))]
    wrong_at = rng.randrange(1, len(terms))
    total, steps = terms[0], []
    for i, t in enumerate(terms[1:], start=1):
        new = total + t + (error if i == wrong_at else 0)
        steps.append(f"{total}+{t}={new}")
        total = new
    return "+".join(map(str, terms)) + "=", ", ".join(steps) + f". So {total}"


def write_rows(directory: Path, rows: int, seed: int = 0) -> dict[str, Path]:
    """``sft.jsonl`` (prompt, completion) and ``dpo.jsonl`` (prompt, chosen, rejected), ``rows`` each."""
    rng = random.Random(seed)
    sft, dpo = [], []
    for _ in range(rows):
        prompt, completion = running_sum(rng)
        sft.append({"prompt": prompt, "completion": completion})
    for _ in range(rows):
        error = rng.choice([-10, -1, 1, 10])
        state = rng.getstate()
        prompt, chosen = running_sum(rng)
        rng.setstate(state)  # the same numbers again, with one step wrong
        _, rejected = running_sum(rng, error)
        dpo.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    paths = {"sft": directory / "sft.jsonl", "dpo": directory / "dpo.jsonl"}
    for kind, data in (("sft", sft), ("dpo", dpo)):
        paths[kind].write_text("".join(json.dumps(r) + "\n" for r in data))
    return paths


def build_random_model(directory: Path, layers: int) -> str:
    """Random float32 weights of Qwen2.5-0.5B's shape with ``layers`` decoder layers, and the toy tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlvr.toy.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=QWEN25_VOCAB, num_hidden_layers=layers, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        **QWEN25_05B,
    )  # fmt: skip
    Qwen2ForCausalLM(config).to(torch.float32).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


# --- the rlvr settings, and TRL's equal to them ---------------------------------------------------


def rlvr_config(args: argparse.Namespace, output_dir: str) -> Any:
    """The rlvr SFTConfig or DPOConfig of this benchmark (``--rlvr-set`` last)."""
    rows = args.examples if args.stage == "sft" else 2 * args.pairs
    common = [
        f"model.path={args.model_path}",
        "model.dtype=float32",
        f"data.train={args.data}",
        "data.template=plain",
        f"data.max_tokens={args.max_tokens}",
        f"training.micro_batch_tokens={rows * args.max_tokens}",  # the whole step in one pass
        f"training.steps={args.warmup + args.steps}",
        "training.seed=0",
        "training.device=cpu",
        f"training.cpu_threads={args.threads}",
        f"optim.lr={args.lr}",
        "optim.warmup_steps=0",
        "optim.schedule=constant",
        "optim.weight_decay=0.0",
        "optim.max_grad_norm=1.0",
        "eval.every=0",
        f"logging.output_dir={output_dir}",
        "logging.tensorboard=false",
    ]
    if args.stage == "sft":
        from rlvr.stages.sft import load_sft_config

        return load_sft_config(None, [*common, f"training.examples_per_step={args.examples}", *args.rlvr_set])
    from rlvr.stages.dpo import load_dpo_config

    return load_dpo_config(
        None,
        [*common, f"training.pairs_per_step={args.pairs}", "loss.name=dpo", "loss.beta=0.1", *args.rlvr_set],
    )


def refuse(unsupported: dict[str, bool], trainer: str) -> None:
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        sys.exit(f"these rlvr settings have no equal TRL {trainer} setting here: {', '.join(bad)}")


def shared_trl_arguments(c: Any, rows: int, trainer: str) -> dict[str, Any]:
    """TrainingArguments equal to the sections every rlvr stage has; SystemExit for anything else."""
    o, t = c.optim, c.training
    refuse(
        {
            "model.dtype (float32 only)": c.model.dtype != "float32",
            "model.autocast": c.model.autocast != "none",
            "model.lora_rank": c.model.lora_rank > 0,
            "data.template (plain only: TRL gets the rows as they are)": c.data.template != "plain",
            "training.micro_batch_tokens (a step must be one pass; TRL splits by rows)": t.micro_batch_tokens
            < rows * c.data.max_tokens,
            "training.device (cpu only)": t.device != "cpu",
            "optim.warmup_steps (TRL's warm-up starts at lr 0, rlvr's at lr / warmup_steps)": o.warmup_steps
            > 0,
            "optim.schedule (constant only)": o.schedule != "constant",
            "parallel.mixed_precision": c.parallel.mixed_precision != "none",
        },
        trainer,
    )
    return {
        "max_steps": t.steps,
        "per_device_train_batch_size": rows,
        "gradient_accumulation_steps": 1,
        "learning_rate": o.lr,
        "optim": "adamw_torch",
        "adam_beta1": o.betas[0],
        "adam_beta2": o.betas[1],
        "adam_epsilon": o.eps,
        "weight_decay": o.weight_decay,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_grad_norm": o.max_grad_norm,
        "gradient_checkpointing": c.model.gradient_checkpointing,
        "seed": t.seed,
        "max_length": c.data.max_tokens,
        "padding_free": False,
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "report_to": "none",
        "logging_steps": 10**9,
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def sft_trl_arguments(c: Any) -> dict[str, Any]:
    """SFTConfig keyword arguments equal to the rlvr SFTConfig ``c``."""
    refuse(
        {
            "training.packing (rlvr: block-diagonal rows; not TRL's packing)": c.training.packing,
            "data.format (prompt_completion only)": c.data.format != "prompt_completion",
        },
        "SFTTrainer",
    )
    return {
        **shared_trl_arguments(c, c.training.examples_per_step, "SFTTrainer"),
        "packing": False,
        "completion_only_loss": True,
        "loss_type": "nll",
    }


def dpo_trl_arguments(c: Any) -> dict[str, Any]:
    """DPOConfig keyword arguments equal to the rlvr DPOConfig ``c``."""
    refuse(
        {
            "loss.name (dpo only: TRL's ipo averages over tokens, simpo is not a DPOTrainer loss)": c.loss.name
            != "dpo",
            "loss.sft_coef": c.loss.sft_coef > 0,
        },
        "DPOTrainer",
    )
    return {
        **shared_trl_arguments(c, 2 * c.training.pairs_per_step, "DPOTrainer"),
        "per_device_train_batch_size": c.training.pairs_per_step,  # pairs; TRL runs 2 sequences each
        "loss_type": ["sigmoid"],
        "beta": 0.1 if c.loss.beta is None else c.loss.beta,
        "label_smoothing": c.loss.label_smoothing or 0.0,
        "precompute_ref_log_probs": False,
        "remove_unused_columns": False,
    }


# --- measuring ----------------------------------------------------------------------------------


class TokenCounter:
    """Counts the non-padding tokens of every forward pass of ``model``'s decoder that builds a graph
    (the decoder: both sides run it, and neither builds the full logits through ``model`` itself)."""

    def __init__(self, model: Any) -> None:
        self.tokens = 0
        model.get_decoder().register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        import torch

        if not (module.training and torch.is_grad_enabled()):
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += int(mask.sum()) if mask is not None and mask.dim() == 2 else ids.numel()


def rss_mb() -> float:
    """Current resident memory of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- the two sides ------------------------------------------------------------------------------


def child_rlvr(args: argparse.Namespace) -> dict[str, Any]:
    """Build rlvr's stage from its config and time ``train_step`` step by step."""
    from rlvr.stages.dpo import DPORun
    from rlvr.stages.sft import SFTRun
    from rlvr.training.stage_run import silent

    with tempfile.TemporaryDirectory() as tmp:
        config = rlvr_config(args, tmp)
        run = (SFTRun if args.stage == "sft" else DPORun)(config, log=silent)
        counter = TokenCounter(run.model)
        rss_start, steps = rss_mb(), []
        for step in range(args.warmup + args.steps):
            t0, c0, n0 = time.perf_counter(), time.process_time(), counter.tokens
            run.train_step(step)
            steps.append({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                          "tokens": counter.tokens - n0})  # fmt: skip
    return {"steps": steps, "rss_start_mb": rss_start, "peak_rss_mb": peak_rss_mb()}


def check_same_tokens(args: argparse.Namespace, config: Any, tokenizer: Any, dataset: Any) -> None:
    """Exit unless TRL's tokenized rows hold rlvr's ids, with the loss on the same tokens."""
    from rlvr.training.sft_data import read_sft_examples, tokenize_examples

    def trained(mask: list[int] | tuple[bool, ...]) -> list[bool]:
        return [bool(m) for m in mask[1:]]  # no position predicts the first token

    if args.stage == "sft":
        ours = tokenize_examples(read_sft_examples(config.data.train, config.data.settings())[0], tokenizer,
                                 config.data.settings()).examples  # fmt: skip
        theirs = [(row["input_ids"], [label != -100 for label in row["labels"]]) for row in dataset]
    else:
        from rlvr.stages.dpo import read_pairs, tokenize_pairs

        pairs = tokenize_pairs(read_pairs(config.data.train, config.data)[0], tokenizer, config.data)[0]
        ours = [side for p in pairs for side in (p.chosen, p.rejected)]
        theirs = [
            (row["prompt_ids"] + row[key], [0] * len(row["prompt_ids"]) + [1] * len(row[key]))
            for row in dataset
            for key in ("chosen_ids", "rejected_ids")
        ]
    for ex, (ids, mask) in zip(ours, theirs, strict=True):
        if list(ex.input_ids) != list(ids) or trained(ex.target_mask) != trained(mask):
            sys.exit(f"rlvr and TRL tokenize {ex.where} differently: {ex.input_ids} vs {ids}")


def trl_trainer(args: argparse.Namespace, config: Any, tokenizer: Any, callback: Any, out: str) -> Any:
    """TRL's SFTTrainer or DPOTrainer with the arguments equal to ``config``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from rlvr.tasks.loading import iter_rows
    from rlvr.training.model import resolve_model_path

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(config.model.path), dtype=torch.float32)
    rows = Dataset.from_list([row for _, row in iter_rows(config.data.train)])
    if args.stage == "sft":
        from trl import SFTConfig, SFTTrainer

        trl_args, cls = SFTConfig(output_dir=out, **sft_trl_arguments(config)), SFTTrainer
    else:
        from trl import DPOConfig, DPOTrainer

        trl_args, cls = DPOConfig(output_dir=out, **dpo_trl_arguments(config)), DPOTrainer
    return cls(
        model=model, args=trl_args, train_dataset=rows, processing_class=tokenizer, callbacks=[callback]
    )


def child_trl(args: argparse.Namespace) -> dict[str, Any]:
    """Build TRL's trainer from the same config and time its steps between ``on_step_end`` callbacks."""
    from transformers import TrainerCallback

    from rlvr.training.model import load_tokenizer

    steps: list[dict[str, float]] = []
    marks: dict[str, float] = {}

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            marks.update(rss_start=rss_mb(), t=time.perf_counter(), c=time.process_time(), n=counter.tokens)

        def on_step_end(self, *a: Any, **k: Any) -> None:
            now, cpu = time.perf_counter(), time.process_time()
            steps.append({"seconds": now - marks["t"], "cpu_seconds": cpu - marks["c"],
                          "tokens": counter.tokens - marks["n"]})  # fmt: skip
            marks.update(t=now, c=cpu, n=counter.tokens)

    with tempfile.TemporaryDirectory() as tmp:
        config = rlvr_config(args, tmp)
        tokenizer = load_tokenizer(config.model)
        trainer = trl_trainer(args, config, tokenizer, StepTimer(), tmp)
        check_same_tokens(args, config, tokenizer, trainer.train_dataset)
        counter = TokenCounter(trainer.model)
        trainer.train()
    return {"steps": steps, "rss_start_mb": marks["rss_start"], "peak_rss_mb": peak_rss_mb()}


# --- the comparison ----------------------------------------------------------------------------


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONPATH"] = str(REPO / "benchmarks") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(args: argparse.Namespace, side: str, stage: str, data: Path, model_path: str) -> dict[str, Any]:
    """One side's run in a fresh process; its result is the JSON it writes to --result."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "--child", side, "--stage", stage, "--data", str(data),
            "--model-path", model_path, "--threads", str(args.threads), "--examples", str(args.examples),
            "--pairs", str(args.pairs), "--max-tokens", str(args.max_tokens), "--lr", str(args.lr),
            "--warmup", str(args.warmup), "--steps", str(args.steps), "--result", str(result),
            *(["--rlvr-set", *args.rlvr_set] if args.rlvr_set else []),
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=child_env(args.threads), cwd=REPO)
        if proc.returncode != 0 or not result.is_file():
            sys.exit(f"child run failed (exit {proc.returncode}): {' '.join(cmd)}")
        return json.loads(result.read_text())


def per_run(run: dict[str, Any], warmup: int) -> dict[str, float]:
    timed = run["steps"][warmup:]
    seconds = sum(s["seconds"] for s in timed)
    cpu_seconds = sum(s["cpu_seconds"] for s in timed)
    tokens = sum(s["tokens"] for s in timed)
    return {"tokens_per_s": tokens / seconds, "tokens_per_cpu_s": tokens / cpu_seconds,
            "seconds_per_step": seconds / len(timed), "tokens_per_step": tokens / len(timed)}  # fmt: skip


def summarise(runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    each = [per_run(r, warmup) for r in runs]
    return {
        **{k: statistics.median(e[k] for e in each) for k in each[0]},
        "run_tokens_per_s": [e["tokens_per_s"] for e in each],
        "run_tokens_per_cpu_s": [e["tokens_per_cpu_s"] for e in each],
        "rss_start_mb": max(r["rss_start_mb"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


def compare(args: argparse.Namespace, stage: str, data: Path, model_path: str) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {"rlvr": [], "trl": []}
    for round_ in range(args.rounds):
        for side in ("rlvr", "trl") if round_ % 2 == 0 else ("trl", "rlvr"):
            print(f"[{stage}] round {round_ + 1}/{args.rounds}: {side} ...", flush=True)
            runs[side].append(run_child(args, side, stage, data, model_path))
    return {side: summarise(r, args.warmup) for side, r in runs.items()}


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    names = {"sft": "TRL SFTTrainer", "dpo": "TRL DPOTrainer"}
    lines = [
        "| stage | library | tokens/s | tokens per CPU-second | s/step | tokens/step | RSS before step 1 (MiB) "
        "| peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for stage, sides in results.items():
        for side, s in sides.items():
            lines.append(
                f"| {stage.upper()} | {'rlvr' if side == 'rlvr' else names[stage]} | {s['tokens_per_s']:.0f} "
                f"| {s['tokens_per_cpu_s']:.0f} "
                f"| {s['seconds_per_step']:.3f} | {s['tokens_per_step']:.0f} | {s['rss_start_mb']:.0f} "
                f"| {s['peak_rss_mb']:.0f} |"
            )
        r, t = sides["rlvr"], sides["trl"]
        lines.append(
            f"| {stage.upper()} | **rlvr / TRL** | **{r['tokens_per_s'] / t['tokens_per_s']:.2f}x** "
            f"| {r['tokens_per_cpu_s'] / t['tokens_per_cpu_s']:.2f}x "
            f"| {r['seconds_per_step'] / t['seconds_per_step']:.2f}x | | "
            f"{r['rss_start_mb'] / t['rss_start_mb']:.2f}x | **{r['peak_rss_mb'] / t['peak_rss_mb']:.2f}x** |"
        )
    return "\n".join(lines)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", nargs="+", choices=("sft", "dpo"), default=["sft", "dpo"])
    p.add_argument("--model", default="toy", help="toy, or qwen2.5-0.5b (random weights, --layers layers)")
    p.add_argument(
        "--layers", type=int, default=2, help="decoder layers of --model qwen2.5-0.5b (24 is the real one)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of each side")
    p.add_argument("--examples", type=int, default=16, help="SFT examples per step")
    p.add_argument("--pairs", type=int, default=8, help="DPO pairs per step")
    p.add_argument("--rows", type=int, default=512, help="rows of the generated SFT and DPO data")
    p.add_argument(
        "--max-tokens", type=int, default=128, help="most tokens of a sequence (no row reaches it)"
    )
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--warmup", type=int, default=1, help="steps run before timing")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--rounds", type=int, default=3, help="runs per side, alternating which side goes first")
    p.add_argument("--rlvr-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="more rlvr settings (TRL gets their equal, or the run stops)")  # fmt: skip
    p.add_argument("--append-results", action="store_true", help=f"append the table to {RESULTS.name}")
    p.add_argument("--child", choices=("rlvr", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--stage", choices=("sft", "dpo"), help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child_main(args: argparse.Namespace) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)  # gradient_checkpointing's new name
    if args.child == "trl":
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    out = child_rlvr(args) if args.child == "rlvr" else child_trl(args)
    args.result.write_text(json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    trl_version = require_trl()
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        data = write_rows(Path(tmp), args.rows)
        model_path = "toy" if args.model == "toy" else build_random_model(Path(tmp) / "model", args.layers)
        results = {stage: compare(args, stage, data[stage], model_path) for stage in args.stages}
    versions = f"TRL {trl_version}, transformers {transformers.__version__}, torch {torch.__version__}"
    model = "toy model" if args.model == "toy" else f"random {args.model} shape, {args.layers} layers"
    print(f"\n{model}; {args.examples} SFT examples or {args.pairs} DPO pairs per step; {args.threads} thread(s); "
          f"median of {args.rounds} run(s) of {args.steps} step(s) after {args.warmup}; {versions}\n")  # fmt: skip
    print(table(results))
    for stage, sides in results.items():
        for side, s in sides.items():
            print(f"{stage} {side}: tokens/s of each run", [round(x) for x in s["run_tokens_per_s"]],
                  "per CPU-second", [round(x) for x in s["run_tokens_per_cpu_s"]])  # fmt: skip
    if args.append_results:
        command = "python benchmarks/trl_sft_dpo.py " + " ".join(argv if argv is not None else sys.argv[1:])
        each = "; ".join(
            f"{stage.upper()} {side}: {', '.join(f'{x:.0f}' for x in s['run_tokens_per_s'])}"
            for stage, sides in results.items()
            for side, s in sides.items()
        )
        entry = (
            f"`{command.replace(' --append-results', '')}`: {model}, {args.examples} SFT examples or "
            f"{args.pairs} DPO pairs per step, lr {args.lr:g}, {args.threads} torch thread(s); {versions}; "
            f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end. "
            f"Medians over {args.rounds} runs per side of {args.steps} timed steps each.\n\n"
            + table(results)
            + f"\n\nTokens/s of each run: {each}."
        )
        append_to_section(SECTION, entry)


if __name__ == "__main__":
    main()
