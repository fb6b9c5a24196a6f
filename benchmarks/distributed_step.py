"""Step time, throughput and peak memory of `rlvr train` on 1 process and on N ranks (ddp, fsdp2).

    python benchmarks/distributed_step.py [--nproc 2] [--steps 8] [--model PATH] [--strategies none,ddp,fsdp2]
        [key=value ...]

Each configuration is a real run (`rlvr train`, under torchrun for N ranks) of the same recipe with
the same global batch; the table reports the median of `time/step`, `time/generate` (the slowest
rank), `time/generate_spread` and `time/update` over the steps after the first, the tokens per second
of the whole step (all ranks), and the peak memory of the busiest rank (`memory/peak_gb`: CUDA
allocated on a GPU, the process's peak RSS on CPU).

`--model qwen2.5-0.5b` trains a randomly initialised model with Qwen2.5-0.5B's decoder (24 layers,
hidden 896, 14/2 heads, MLP 4864: 358M parameters; the real model's 151,936-token embedding adds
136M) and the toy tokenizer's vocabulary; it needs a GPU to be practical. The numbers are the
engine's, not a model's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QWEN25_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    max_position_embeddings=4096,
)


def build_random_model(directory: Path) -> str:
    """A randomly initialised Qwen2 model of Qwen2.5-0.5B's shape (vocabulary: the toy tokenizer's)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlvr.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=0, pad_token_id=0, **QWEN25_05B
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def run(nproc: int, strategy: str, out: Path, steps: int, overrides: list[str]) -> dict[str, float]:
    args = [
        "-m",
        "rlvr",
        "train",
        "recipes/quickstart.yaml",
        f"training.steps={steps}",
        f"logging.output_dir={out}",
        f"parallel.strategy={strategy}",
        "checkpoint.every=0",
        "logging.sample_every=0",
        "eval.num_problems=8",
        *overrides,
    ]
    launcher = [sys.executable]
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
        ]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    subprocess.run([*launcher, *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r][1:]  # the first step warms up
    median = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    return {
        "step_s": median("time/step"),
        "generate_s": median("time/generate"),
        "spread": median("time/generate_spread"),
        "update_s": median("time/update"),
        "tokens_per_s": median("throughput/tokens_per_s"),
        "peak_gb": max(r["memory/peak_gb"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model", default="toy", help="toy, qwen2.5-0.5b (random weights) or a model path")
    parser.add_argument(
        "--strategies",
        default="none,ddp,fsdp2",
        help="comma-separated; none runs on 1 process, the others on --nproc",
    )
    parser.add_argument("overrides", nargs="*", help="key=value settings for every run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model == "qwen2.5-0.5b":
            model = build_random_model(Path(tmp) / "model")
        overrides = [f"model.path={model}", *args.overrides]
        cases = [(1 if s == "none" else args.nproc, s) for s in args.strategies.split(",")]
        print(
            "| processes | strategy | step (s) | generate (s) | gen spread | update (s) | tokens/s | peak GB |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for nproc, strategy in cases:
            r = run(nproc, strategy, Path(tmp) / f"{nproc}-{strategy}", args.steps, overrides)
            print(
                f"| {nproc} | {strategy} | {r['step_s']:.2f} | {r['generate_s']:.2f} | {r['spread']:.2f} | "
                f"{r['update_s']:.2f} | {r['tokens_per_s']:.0f} | {r['peak_gb']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
