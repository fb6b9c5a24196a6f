"""``rlvr plan``'s estimates against the measured peak memory of real training steps (CPU).

Two randomly initialised Qwen2 models are saved in a temporary directory with the toy tokenizer:
32M parameters (hidden 512, 8 layers, 8 query and 4 key-value heads, MLP 1408, vocabulary 16,384,
tied embeddings) and, for the bfloat16 cases (this CPU multiplies bfloat16 matrices about 40x
slower than float32 ones), 4M (hidden 256, 4 layers, vocabulary 4,096). Each case is one real
``Trainer.train_step`` of ``rlvr train`` on the arithmetic task with the long ``r1_zero`` template
(306-token prompts, 128 new tokens), in fresh processes of its own (2 ranks under ``torchrun`` with
gloo for the ddp and fsdp2 cases). In each process:

* a warm-up step of the same config on the shipped toy model loads what the code paths import on
  first use (torch.optim pulls in torch._dynamo, the task its reward code: tens of MiB);
* the resident set size (VmRSS) is read: the baseline, before anything of the run is built;
* the trainer is built (model, optimizer, reference, critic; fsdp2 shards) and AdamW's state is
  created by one zero-gradient step (AdamW with zero moments and no weight decay moves no weight),
  so that the measured step holds the state as every step after the first does;
* the peak resident size (VmHWM, reset through /proc/self/clear_refs) is read over the rollout
  (``collector.collect``, inside the fsdp2 gathering of the whole model) and over the rest of the
  step (``Trainer.learn``: old and reference logprobs, the policy update with its optimizer step,
  the critic update). Measured = peak - baseline; for several ranks, the largest over the ranks.

The planner gets ``rollout.max_prompt_tokens`` = the task's longest prompt, so that its upper bound
(prompts of max_prompt_tokens, completions of max_new_tokens) is the real size here: a random model
over thousands of tokens almost never samples the end-of-sequence token or ``</answer>``, so
completions run to max_new_tokens. Micro-batches split every mini-batch into equal parts, so that
the gradients of the first are alive during the backward of the second, as the planner assumes.
The "update" estimate is the largest of the planner's update, optimizer step and critic update.

The children run with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc then serves every buffer over 128 KiB
with a mapping of its own and returns it when freed, so the resident size follows the live tensors
(as ``torch.cuda.memory_allocated`` does on a GPU) instead of keeping freed heap in the peak. One
thread per process (``OMP_NUM_THREADS=1``), one case at a time: about 9 minutes on 2 cores.

    python benchmarks/memory_plan_check.py [--cases base,lora,...] [--json FILE] [--append-results]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = {
    "32M": dict(
        hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1408, vocab=16384
    ),
    "4M": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=704, vocab=4096),
}
"""The 4M model serves the bfloat16 cases: this CPU multiplies bfloat16 matrices about 40x slower than
float32 ones."""

COMMON = [
    "preset=grpo",
    "algorithm.kl_coef=0",
    "task.name=arithmetic",
    "task.template=r1_zero",
    "task.params={num_train: 64, num_test: 8, digits: 2, ops: ['+'], seed: 0}",
    "rollout.prompts_per_step=2",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=128",
    "rollout.temperature=1.0",
    "training.steps=1",
    "training.updates_per_step=1",
    "training.micro_batch_tokens=1800",
    "training.device=cpu",
    "training.cpu_threads=1",
    "eval.num_problems=1",
    "checkpoint.every=0",
    "logging.tensorboard=false",
    "logging.sample_every=0",
]
"""2 prompts x 4 samples = 8 completions of 434 tokens: micro-batches of 4 sequences, 2 per optimizer step."""

SMALL = ["rollout.prompts_per_step=1", "training.micro_batch_tokens=900"]
"""The bfloat16 cases: 1 prompt x 4 samples, micro-batches of 2 sequences."""

CASES: dict[str, tuple[str, list[str]]] = {
    "base": ("float32, no reference, no checkpointing", []),
    "reference+entropy": (
        "+ reference model (kl_coef 0.04) and entropy bonus",
        ["algorithm.kl_coef=0.04", "algorithm.entropy_coef=0.001"],
    ),
    "big-microbatch": (
        "8 sequences per micro-batch",
        ["rollout.prompts_per_step=4", "training.micro_batch_tokens=3500"],
    ),
    "checkpointing": (
        "gradient checkpointing, 8 sequences per micro-batch",
        [
            "rollout.prompts_per_step=4",
            "training.micro_batch_tokens=3500",
            "model.gradient_checkpointing=true",
        ],
    ),
    "bf16": ("4M model, bfloat16 weights, 2 sequences per micro-batch", ["model.dtype=bfloat16", *SMALL]),
    "autocast": (
        "4M model, float32 weights, bfloat16 autocast, 2 per micro-batch",
        ["model.autocast=bfloat16", *SMALL],
    ),
    "lora": ("LoRA rank 16 + reference (the adapter off)", ["model.lora_rank=16", "algorithm.kl_coef=0.04"]),
    "critic": ("ppo preset: critic with its own AdamW", ["preset=ppo", "critic.updates_per_step=1"]),
    "ddp-2": (
        "2 ranks, ddp: 2 prompts x 4 samples per rank",
        ["rollout.prompts_per_step=4", "parallel.strategy=ddp"],
    ),
    "fsdp2-2": (
        "2 ranks, fsdp2: 2 prompts x 4 samples per rank",
        ["rollout.prompts_per_step=4", "parallel.strategy=fsdp2"],
    ),
    "rollout-heavy": (
        "64 sequences decoded at once (rollout only)",
        ["rollout.prompts_per_step=8", "rollout.samples_per_prompt=8"],
    ),
}
ROLLOUT_ONLY = {"rollout-heavy"}
RANKS = {"ddp-2": 2, "fsdp2-2": 2}
"""Cases run under torchrun (gloo on CPU): the planner gets --nproc 2, the measure is per rank."""
SMALL_MODEL = {"bf16", "autocast"}


def build_model(directory: Path, sizes: dict[str, int]) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlvr.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=sizes["vocab"],
        hidden_size=sizes["hidden_size"],
        intermediate_size=sizes["intermediate_size"],
        num_hidden_layers=sizes["num_layers"],
        num_attention_heads=sizes["num_heads"],
        num_key_value_heads=sizes["num_kv_heads"],
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def longest_prompt(model_dir: Path) -> int:
    from rlvr.config import load_config
    from rlvr.training.model import load_tokenizer
    from rlvr.training.setup import build_task, tokenize_prompts

    config = load_config(None, [*COMMON, f"model.path={model_dir}"])
    task = build_task(config)
    prompts = tokenize_prompts(task.train, task.template, load_tokenizer(config.model), 10**6)
    return max(len(p) for p in prompts)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def warm_up(overrides: list[str]) -> None:
    """One step of the same run on the tiny toy model, so that what the run's code paths import or
    initialise on first use (torch.optim pulls in torch._dynamo, the task its reward and grader
    libraries: tens of MiB) is resident before the baseline is read."""
    from rlvr.config import load_config
    from rlvr.training.trainer import Trainer

    config = load_config(None, [*overrides, "model.path=toy", "critic.path=null"])
    Trainer(config, log=lambda *a: None).train_step(0)


def child(case: str, overrides: list[str]) -> dict:
    """One case in this process (one rank under torchrun): the measured peaks and the plan, in bytes."""
    import torch

    from rlvr.config import load_config
    from rlvr.distributed import world_size
    from rlvr.memory_plan import plan_for_config
    from rlvr.training.trainer import Trainer

    config = load_config(None, overrides)
    warm_up(overrides)  # under torchrun this also joins the process group
    plan = plan_for_config(config, nproc=world_size(), device="cpu")
    gc.collect()
    base = _status_kib("VmRSS") * 1024
    trainer = Trainer(config, log=lambda *a: None)
    optimizers = [trainer.optimizer] + ([trainer.critic.optimizer] if trainer.critic is not None else [])
    for optimizer in optimizers:  # create AdamW's state as after a first step; no weight moves
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    built = _status_kib("VmRSS") * 1024 - base
    peaks: dict[str, int] = {}

    def measured(phase: str, fn):
        def run(*args, **kwargs):
            _reset_peak()
            out = fn(*args, **kwargs)
            peaks[phase] = _status_kib("VmHWM") * 1024 - base
            return out

        return run

    # The rollout runs inside the fsdp2 gathering of the whole model; the rest of the step after it.
    trainer.collector.collect = measured("rollout", trainer.collector.collect)
    trainer.learn = measured("update", trainer.learn)
    start = time.perf_counter()
    if case in ROLLOUT_ONLY:
        with trainer.parallel.gathered(trainer.model):
            trainer.collector.collect(0)
    else:
        trainer.train_step(0)
    return {
        "case": case,
        "rank": int(os.environ.get("RANK", "0")),
        "built": built,
        "measured": peaks,
        "plan": {phase.name: phase.total for phase in plan.phases},
        "plan_rows": {phase.name: [(row.label, row.bytes) for row in phase.rows] for phase in plan.phases},
        "seconds": time.perf_counter() - start,
    }


def run_case(case: str, overrides: list[str], nproc: int) -> dict:
    """The case in fresh processes: one, or ``nproc`` ranks under torchrun (the largest peak of any rank)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072", PYTHONHASHSEED="0")
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [*launcher, __file__, "--child", case, "--overrides", json.dumps(overrides), "--out", out],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise SystemExit(f"case {case} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        ranks = [json.loads(path.read_text()) for path in sorted(Path(out).glob("rank*.json"))]
    result = dict(ranks[0])
    result["measured"] = {phase: max(r["measured"][phase] for r in ranks) for phase in ranks[0]["measured"]}
    result["per_rank"] = [r["measured"] for r in ranks]
    return result


def comparison_table(results: list[dict]) -> str:
    mib = 2**20
    lines = [
        "| case | settings | phase | estimate (MiB) | measured (MiB) | estimate / measured |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in results:
        plan = r["plan"]
        for phase, measured in r["measured"].items():
            # The measured "update" window also holds the optimizer step and the critic update.
            names = ["update", "optimizer step", "critic update"] if phase == "update" else [phase]
            estimate = max(plan[name] for name in names if name in plan)
            lines.append(
                f"| {r['case']} | {CASES[r['case']][0]} | {phase} | {estimate / mib:.0f} | "
                f"{measured / mib:.0f} | {estimate / measured:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    parser.add_argument("--append-results", action="store_true", help="append the table to RESULTS.md")
    parser.add_argument("--json", default=None, help="also write the raw results to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, json.loads(args.overrides))
        (Path(args.out) / f"rank{result['rank']}.json").write_text(json.dumps(result))
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dirs = {}
        for name, sizes in MODELS.items():
            model_dirs[name] = Path(tmp) / name
            build_model(model_dirs[name], sizes)
        prompt_tokens = longest_prompt(model_dirs["32M"])
        for case in cases:
            overrides = [
                *COMMON,
                f"model.path={model_dirs['4M' if case in SMALL_MODEL else '32M']}",
                f"rollout.max_prompt_tokens={prompt_tokens}",
                f"logging.output_dir={Path(tmp) / case}",
                *CASES[case][1],
            ]
            results.append(run_case(case, overrides, RANKS.get(case, 1)))
            print(
                json.dumps({k: results[-1][k] for k in ("case", "measured", "plan", "seconds")}), flush=True
            )
    table = comparison_table(results)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.append_results:
        sys.path.insert(0, str(HERE))
        import torch
        from results_file import append_to_section

        machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
        entry = f"{time.strftime('%Y-%m-%d')}, {machine}: `python benchmarks/memory_plan_check.py`\n\n{table}"
        append_to_section("## Memory planner against measured peak memory", entry)


if __name__ == "__main__":
    main()
