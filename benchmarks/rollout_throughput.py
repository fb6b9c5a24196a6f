"""Rollout throughput: rlvr's ``HFEngine`` against transformers' ``model.generate``.

Both engines sample ``samples`` completions for each of ``prompts`` arithmetic-task prompts
(``"17+25="``, ...) at temperature 1 with no truncation (top-p 1, top-k off), with the same
``max_new_tokens``. Throughput counts generated tokens up to and including the end-of-sequence
token; padding after it is not counted. ``HFEngine`` runs twice: with its default decoder (rlvr's
Llama-family decode loop for these Qwen2 models) and with ``decoder="transformers"`` (the model's own
forward). Each case runs in a fresh process in which the engines alternate run by run (A B C,
C B A, ...), so that all see the same machine load; the peak resident memory of an engine is
sampled while its runs are in progress.

Models:

* ``toy``: the shipped toy model when ``src/rlvr/toy/model`` exists; otherwise a randomly initialised
  model of the same shape (Qwen2, hidden 128, 4 layers, 4 heads, 2 kv heads, intermediate 352, tied
  embeddings) over the toy tokenizer. ``toy-random`` is always the random one.
* ``qwen2.5-0.5b-shape``: a randomly initialised model with Qwen2.5-0.5B's shape (hidden 896,
  24 layers, 14 heads, 2 kv heads, intermediate 4864, vocabulary 151936, tied embeddings). Prompts
  are toy-tokenizer ids; sampling is over the full vocabulary.

A random model ends a completion only when it happens to draw the end-of-sequence token, so its
end-of-sequence logit gets a constant bias b with P(eos) = e^b / (V - 1 + e^b) = 1 / ``eos_mean``
under its near-uniform logits: completion lengths are then geometric, cut at the budget, and
``eos_mean`` is chosen so that the longest completion of a batch is about twice the mean one, as
with the shipped toy model at temperature 1 (mean 20, longest 42 of 64 new tokens): mean about
32 of 64 for ``toy-random``, 8 of 16 for ``qwen2.5-0.5b-shape``.

Run from the repository root::

    python benchmarks/rollout_throughput.py --threads 2 [--append-results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from results_file import RESULTS, append_to_section

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Rollout engine throughput"
ENGINES = ("hf_engine", "hf_engine, transformers decoder", "model.generate")


@dataclass(frozen=True)
class Case:
    model: str
    prompts: int
    samples: int
    max_new_tokens: int
    repeats: int
    eos_mean: float  # random models only: 1 / P(eos) under near-uniform logits


CASES = (
    Case("toy", 8, 8, 64, 6, eos_mean=40),
    Case("toy", 16, 8, 64, 6, eos_mean=40),
    Case("toy-random", 16, 8, 64, 6, eos_mean=40),
    Case("qwen2.5-0.5b-shape", 4, 16, 16, 2, eos_mean=10),
)

MODEL_SHAPES = {
    "toy": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=None, max_position_embeddings=128),
    "toy-random": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=None, max_position_embeddings=128),
    "qwen2.5-0.5b-shape": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                               num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                               max_position_embeddings=32768),
}  # fmt: skip


def build(model_name: str, eos_mean: float):
    """(model, tokenizer, description); seeded, float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from rlvr.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    shipped = REPO / "src" / "rlvr" / "toy" / "model"
    if model_name == "toy" and (shipped / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(shipped, dtype=torch.float32)
        return model.eval(), tokenizer, "shipped toy model"
    shape = dict(MODEL_SHAPES[model_name])
    shape["vocab_size"] = shape["vocab_size"] or len(tokenizer)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = Qwen2Config(
        **shape, tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos
    )
    model = Qwen2ForCausalLM(config).float().eval()
    vocab = shape["vocab_size"]
    eos_bias = math.log((vocab - 1) / (eos_mean - 1))  # e^b / (vocab - 1 + e^b) = 1 / eos_mean
    bias = torch.zeros(vocab)
    bias[eos] = eos_bias
    model.lm_head.bias = torch.nn.Parameter(bias, requires_grad=False)
    return model, tokenizer, f"random init, eos logit bias {eos_bias:.2f}"


class PeakRSS:
    """Highest resident memory of this process (MB) while inside the ``with`` block, sampled every 5 ms."""

    def __enter__(self) -> PeakRSS:
        self.peak_mb = self._rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(case: Case, threads: int) -> dict:
    """Both engines on one case in one process, their runs interleaved so that they share the load."""
    import torch

    from rlvr.rollout.hf_engine import HFEngine
    from rlvr.rollout.types import SamplingParams
    from rlvr.tasks.arithmetic import arithmetic_task

    torch.set_num_threads(threads)
    model, tokenizer, description = build(case.model, case.eos_mean)
    eos = tokenizer.eos_token_id
    questions = [p.question for p in arithmetic_task(num_train=case.prompts, num_test=0, seed=0).train]
    prompt_ids = [tokenizer(q)["input_ids"] for q in questions]
    hf_engines = {
        "hf_engine": HFEngine(model, tokenizer, max_batch_sequences=case.prompts * case.samples),
        "hf_engine, transformers decoder": HFEngine(
            model, tokenizer, max_batch_sequences=case.prompts * case.samples, decoder="transformers"
        ),
    }

    def run(engine: str, prompts: list[list[int]], samples: int, max_new_tokens: int, seed: int) -> list[int]:
        """Lengths of the completions, end-of-sequence token included."""
        if engine in hf_engines:
            params = SamplingParams(n=samples, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
            return [len(c.token_ids) for c in hf_engines[engine].generate(prompts, params)]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, num_return_sequences=samples,
            max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
            pad_token_id=eos, eos_token_id=eos,
        )  # fmt: skip
        generated = out[:, width:]
        is_eos = generated == eos
        first_eos = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, generated.shape[1])
        return first_eos.tolist()

    results = {e: {"lengths": [], "seconds": 0.0, "peak_rss_mb": 0.0} for e in ENGINES}
    for engine in ENGINES:
        run(engine, prompt_ids[:2], 2, 4, seed=12345)  # warm-up
    for r in range(case.repeats):
        for engine in ENGINES if r % 2 == 0 else ENGINES[::-1]:  # A B C, C B A, ...
            with PeakRSS() as rss:
                start = time.perf_counter()
                lengths = run(engine, prompt_ids, case.samples, case.max_new_tokens, seed=r)
                seconds = time.perf_counter() - start
            m = results[engine]
            m["lengths"] += lengths
            m["seconds"] += seconds
            m["peak_rss_mb"] = max(m["peak_rss_mb"], rss.peak_mb)
    summary = {}
    for engine, m in results.items():
        lengths = m["lengths"]
        summary[engine] = {
            "description": description,
            "tokens": sum(lengths),
            "seconds": m["seconds"],
            "tokens_per_s": sum(lengths) / m["seconds"],
            "mean_length": sum(lengths) / len(lengths),
            "max_length": max(lengths),
            "peak_rss_mb": m["peak_rss_mb"],
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each run")
    default_models = list(dict.fromkeys(c.model for c in CASES))
    parser.add_argument("--models", nargs="*", default=default_models, choices=default_models)
    parser.add_argument(
        "--repeats", type=int, help="timed runs per engine and case (default: each case's own)"
    )
    parser.add_argument("--append-results", action="store_true", help=f"append the table to {RESULTS.name}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Case(**json.loads(args.worker)), args.threads)))
        return

    load_before = os.getloadavg()[0]
    rows = []
    for case in (c for c in CASES if c.model in args.models):
        case = replace(case, repeats=args.repeats or case.repeats)
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--worker", json.dumps(asdict(case))]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        measured = json.loads(out.strip().splitlines()[-1])
        print(f"{case}: {measured}", file=sys.stderr)
        rows.append((case, measured))

    header = (
        "| model | prompts x samples | max new | engine | tokens/s | ratio | mean len | max len | peak RSS MB |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for case, measured in rows:
        base = measured["model.generate"]["tokens_per_s"]
        for engine, m in measured.items():
            lines.append(
                f"| {case.model} ({m['description']}) | {case.prompts} x {case.samples} | {case.max_new_tokens} "
                f"| {engine} | {m['tokens_per_s']:.0f} | {m['tokens_per_s'] / base:.2f}x | {m['mean_length']:.1f} "
                f"| {m['max_length']} | {m['peak_rss_mb']:.0f} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.append_results:
        import torch
        import transformers

        options = f"--threads {args.threads}"
        options += "" if args.models == default_models else " --models " + " ".join(args.models)
        options += f" --repeats {args.repeats}" if args.repeats else ""
        command = f"python benchmarks/rollout_throughput.py {options} --append-results"
        entry = (
            f"`{command}` on {time.strftime('%Y-%m-%d')}: {platform.machine()} CPU with {os.cpu_count()} cores, "
            f"no GPU, load average {load_before:.1f} at the start (shared machine), torch {torch.__version__}, "
            f"transformers {transformers.__version__}, torch.set_num_threads({args.threads}):\n\n{table}\n"
        )
        append_to_section(SECTION, entry)


if __name__ == "__main__":
    main()
