"""Multi-turn rollout throughput: KV-cache continuation against re-prefilling the context every turn.

The same multi-turn workload runs two ways in one process:

* **kv-continuation**: :class:`rlvr.rollout.multi_turn.MultiTurnRunner`. All prompts are prefilled
  once; then every decode step appends one sampled token per trajectory to one KV cache, and after
  the environments answer, one forward appends each answering trajectory's last sampled token and
  whole observation at once (logits for the last token only); finished trajectories leave the
  batch.
* **re-prefill**: a naive agent loop over :meth:`rlvr.rollout.hf_engine.HFEngine.generate`. Each
  turn, the trajectories still running are generated from their prompt + everything so far (token
  ids, never re-tokenized text) up to the turn's stop string or budget; the environments step; the
  observations' ids are appended; the next turn prefills the whole context again. Turn, budget and
  ending rules are the runner's (a turn cut by its budget ends the trajectory, as in the runner).

The environment (``fixed_turns``, local to this benchmark) answers every turn with the same
``--observation-tokens``-token observation and ends the episode after T turns, so both methods do
exactly T turns per trajectory. Each trajectory has its own ``--prompt-tokens``-token prompt
(digits and ``+ =``; the toy tokenizer has one token per character). Decoding is greedy.

A random model decides nothing useful and ends no turn of its own accord, so by default the policy
is **scripted**: the model's whole forward pass runs as usual, and then the logit of a scripted
token is set to the largest logit of its row + 1, so that greedy decoding picks it. The script
depends only on the last input token: after ``letter k`` comes ``letter k+1``, after the last of
``--turn-tokens - 1`` letters comes ``</answer>`` (the environment's stop string), after anything
else (an observation or the prompt) comes the first letter. Every turn then has exactly
``--turn-tokens`` tokens, and the logprob of each sampled token still comes from the model's own
logits. ``--policy model`` drops the script: the model's own greedy tokens, turns ending at
``</answer>``, the end-of-sequence token or the budget (2 x ``--turn-tokens``). With the shipped toy
model this writes its usual ``<think>...</think><answer>..</answer>`` turns: a check that the two
methods give the same tokens up to float noise (the random model emits ids that have no text and
its first turn runs into the budget).

Models (``--models``):

* ``toy``: the shipped toy model (``src/rlvr/toy/model``, Qwen2, hidden 128, 4 layers, 81-token
  vocabulary). Default workload: 64 trajectories, 16-token prompts, 12-token turns, 6-token
  observations.
* ``qwen2.5-0.5b``: random float32 weights of Qwen2.5-0.5B's shape (hidden 896, 14 query / 2
  key-value heads, MLP 4864, its 151,936-token vocabulary, tied embeddings; the constants of
  ``trl_sft_dpo.py``) with ``--layers`` decoder layers (24 in the real model; fewer keep a CPU run
  short) over the toy tokenizer. Default workload: 8 trajectories, 256-token prompts, 16-token turns,
  32-token observations.

``--trajectories``, ``--prompt-tokens``, ``--turn-tokens`` and ``--observation-tokens`` replace the
defaults of every model run.

Measured per run (one call of a method on all trajectories of one case): wall time, from the
environments' first ``reset`` to the last trajectory. **Policy tokens/s** = the sampled tokens
(mask 1) of all trajectories / seconds; **trajectories/s** = trajectories / seconds. Rounds run
every case with both methods, alternating which goes first (and the order of the cases), so that
load from other work falls on both; the table gives the median over rounds of each method, and the
ratio is the median over rounds of (kv-continuation / re-prefill) in the same round. The forward
passes are timed by wrapping the decoder both methods build (:mod:`rlvr.rollout.decoders`):
**prefill** is the time in prompt / context encodings and the tokens they encode, **decode** the
time in one-token steps and their number, **append** the time in the runner's observation appends
(``Decoder.extend``) and their number; the rest of the run (sampling, stop-string checks,
environment steps, Python) is **other**.

Checked on every run: each trajectory has the same token ids, mask and number of turns under both
methods (and, with the scripted policy, ran its T turns to the environment's end); the largest
difference of the sampled tokens' logprobs between the methods is reported. Everything runs on
the CPU.

Run from the repository root::

    python benchmarks/multi_turn_throughput.py --threads 2 --rounds 3
    python benchmarks/multi_turn_throughput.py --models toy --policy model --turns 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from results_file import RESULTS, append_to_section
from trl_sft_dpo import QWEN25_05B, QWEN25_VOCAB, cpu_model

from rlvr.envs.base import Environment, StepResult
from rlvr.tasks.base import Problem

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Multi-turn rollouts: KV-cache continuation against re-prefilling every turn"
METHODS = ("kv-continuation", "re-prefill")
STOP = "</answer>"
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Workload:
    """The size of one model's runs."""

    trajectories: int
    prompt_tokens: int
    turn_tokens: int
    """Tokens of a scripted turn (``</answer>`` included); the turn budget is twice this."""
    observation_tokens: int


DEFAULTS = {
    "toy": Workload(trajectories=64, prompt_tokens=16, turn_tokens=12, observation_tokens=6),
    "qwen2.5-0.5b": Workload(trajectories=8, prompt_tokens=256, turn_tokens=16, observation_tokens=32),
}


# --- the model and the scripted policy ----------------------------------------------------------


def build_model(name: str, layers: int) -> tuple[Any, Any, str]:
    """(model, tokenizer, description): float32, eval mode, seeded."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from rlvr.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    if name == "toy":
        model = AutoModelForCausalLM.from_pretrained(
            REPO / "src" / "rlvr" / "toy" / "model", dtype=torch.float32
        )
        return model.eval(), tokenizer, "toy (shipped)"
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=QWEN25_VOCAB, num_hidden_layers=layers, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        **QWEN25_05B,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).float().eval(), tokenizer, f"qwen2.5-0.5b shape, {layers} layers, random"


class _Script:
    """The scripted next token of every token id, and the last input token of each row of the forward
    pass in progress (written by :class:`_RecordingEmbedding`, read by :class:`_ScriptedHead`)."""

    def __init__(self, successor: torch.Tensor) -> None:
        self.successor = successor
        self.last: torch.Tensor | None = None


class _RecordingEmbedding(torch.nn.Module):
    """The model's input embedding, noting each row's last input token for the scripted head."""

    def __init__(self, embedding: torch.nn.Module, script: _Script) -> None:
        super().__init__()
        self.embedding = embedding
        self.script = script

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.script.last = input_ids[:, -1]
        return self.embedding(input_ids)


class _ScriptedHead(torch.nn.Module):
    """The model's output projection (all of it), then the scripted token's logit at the last
    position raised to the row's largest logit + 1."""

    def __init__(self, head: torch.nn.Module, script: _Script) -> None:
        super().__init__()
        self.head = head
        self.script = script

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        last = logits[:, -1] if logits.dim() == 3 else logits  # [rows, V], a view
        assert self.script.last is not None
        forced = self.script.successor[self.script.last][:, None]
        last.scatter_(-1, forced, last.amax(dim=-1, keepdim=True) + 1.0)
        return logits


def script_turns(model: Any, tokenizer: Any, turn_tokens: int) -> list[int]:
    """Make ``model``'s greedy choice follow the turn script (see the module docstring); the turn's ids."""
    if not 2 <= turn_tokens <= len(LETTERS) + 1:
        raise SystemExit(f"--turn-tokens must be in [2, {len(LETTERS) + 1}] for the scripted policy")
    turn = [tokenizer.convert_tokens_to_ids(c) for c in LETTERS[: turn_tokens - 1]]
    turn.append(tokenizer.convert_tokens_to_ids(STOP))
    vocab = model.get_input_embeddings().weight.shape[0]
    successor = torch.full((vocab,), turn[0], dtype=torch.long)
    successor[torch.tensor(turn[:-1])] = torch.tensor(turn[1:])
    script = _Script(successor)
    inner = model.model
    inner.embed_tokens = _RecordingEmbedding(inner.embed_tokens, script)
    model.lm_head = _ScriptedHead(model.lm_head, script)
    return turn


# --- the workload -------------------------------------------------------------------------------


def arithmetic_text(rng: random.Random, tokens: int, start: str = "") -> str:
    """``start`` then sums (``17+25=``) cut at the front to exactly ``tokens`` characters, ending in ``=``."""
    text, body = "", tokens - len(start)
    while len(text) < body:
        text += f"{rng.randint(1, 99)}+{rng.randint(1, 99)}="
    return start + text[len(text) - body :]


class FixedTurnsEnv(Environment):
    """Answers every turn with the same observation and ends the episode after ``turns`` turns."""

    name = "fixed_turns"
    stop_strings = (STOP,)
    observation_role = "user"

    def __init__(self, turns: int, observation: str) -> None:
        self.turns, self.observation, self.done = turns, observation, 0

    def reset(self, problem: Problem, seed: int) -> str:
        self.done = 0
        return problem.question

    def step(self, action: str) -> StepResult:
        self.done += 1
        return StepResult(self.observation, 0.0, self.done >= self.turns, False, {})


@dataclass
class Case:
    """One model at one number of turns."""

    model: str
    turns: int
    workload: Workload
    problems: list[Problem]
    observation: str

    def make_env(self) -> FixedTurnsEnv:
        return FixedTurnsEnv(self.turns, self.observation)

    def limits(self) -> Any:
        from rlvr.rollout.multi_turn import TurnLimits

        w = self.workload
        budget = 2 * w.turn_tokens
        return TurnLimits(
            max_turns=self.turns,
            max_turn_tokens=budget,
            max_context_tokens=w.prompt_tokens + self.turns * (budget + w.observation_tokens) + 1,
            max_observation_tokens=w.observation_tokens,
        )


def make_case(model: str, turns: int, workload: Workload, tokenizer: Any) -> Case:
    """The case's prompts (one per trajectory) and observation, checked to have their token counts."""
    rng = random.Random(0)
    problems = [
        Problem(f"p{i}", arithmetic_text(rng, workload.prompt_tokens), "")
        for i in range(workload.trajectories)
    ]
    observation = arithmetic_text(rng, workload.observation_tokens, start="\n")
    for text, tokens in (
        (problems[0].question, workload.prompt_tokens),
        (observation, workload.observation_tokens),
    ):
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == tokens, text
    return Case(model, turns, workload, problems, observation)


# --- timing the forward passes ------------------------------------------------------------------


@dataclass
class ForwardTimes:
    """Seconds in forward passes and what they processed, added up over one run."""

    prefill_s: float = 0.0
    prefill_tokens: int = 0
    decode_s: float = 0.0
    decode_steps: int = 0
    decode_rows: int = 0
    append_s: float = 0.0
    append_calls: int = 0
    append_tokens: int = 0


class _TimedDecoder:
    """A :class:`rlvr.rollout.decoders.Decoder` that adds the time of its calls to ``times``."""

    def __init__(self, decoder: Any, times: ForwardTimes) -> None:
        self.decoder, self.times = decoder, times

    def prefill(
        self, input_ids: torch.Tensor, attention: torch.Tensor | None, positions: torch.Tensor
    ) -> Any:
        start = time.perf_counter()
        out = self.decoder.prefill(input_ids, attention, positions)
        self.times.prefill_s += time.perf_counter() - start
        self.times.prefill_tokens += int(attention.sum()) if attention is not None else input_ids.numel()
        return out

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> Any:
        start = time.perf_counter()
        out = self.decoder.step(tokens, positions)
        self.times.decode_s += time.perf_counter() - start
        self.times.decode_steps += 1
        self.times.decode_rows += len(tokens)
        return out

    def extend(self, chunks: list[list[int]], positions: torch.Tensor) -> Any:
        start = time.perf_counter()
        out = self.decoder.extend(chunks, positions)
        self.times.append_s += time.perf_counter() - start
        self.times.append_calls += 1
        self.times.append_tokens += sum(len(c) for c in chunks)
        return out

    def repeat(self, n: int, room: int) -> None:
        self.decoder.repeat(n, room)

    def keep(self, rows: torch.Tensor) -> None:
        self.decoder.keep(rows)


@contextlib.contextmanager
def timed_decoders(times: ForwardTimes) -> Iterator[None]:
    """Within the block, the decoders both methods build add their forward times to ``times``."""
    from rlvr.rollout import decoders, hf_engine, multi_turn

    def make(model: Any, choice: Any = "auto") -> _TimedDecoder:
        return _TimedDecoder(decoders.make_decoder(model, choice), times)

    saved = hf_engine.make_decoder, multi_turn.make_decoder
    hf_engine.make_decoder = multi_turn.make_decoder = make
    try:
        yield
    finally:
        hf_engine.make_decoder, multi_turn.make_decoder = saved


# --- the two methods ----------------------------------------------------------------------------


@dataclass
class Result:
    """One trajectory as both methods report it."""

    token_ids: list[int]
    mask: list[int]
    logprobs: list[float]
    turns: int
    truncation: str | None


def kv_continuation(engine: Any, case: Case, sampling: Any) -> list[Result]:
    """The multi-turn runner: one KV cache per batch, continued across turns."""
    from rlvr.rollout.multi_turn import MultiTurnRunner

    runner = MultiTurnRunner(case.make_env, case.limits(), format="plain", env_name="fixed_turns")
    return [
        Result(t.token_ids, list(t.mask or []), t.logprobs, t.turns, t.truncation)
        for t in runner.run(engine, case.problems, sampling)
    ]


@dataclass
class _Running:
    """A trajectory of the re-prefill loop that has not ended yet."""

    index: int
    env: FixedTurnsEnv
    prompt: list[int]
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: int = 0


def re_prefill(engine: Any, case: Case, sampling: Any) -> list[Result]:
    """A loop calling ``engine.generate`` once per turn on prompt + everything so far."""
    from rlvr.rollout.turn_format import PlainFormat
    from rlvr.rollout.types import SamplingParams

    limits, tokenizer = case.limits(), engine.tokenizer
    fmt = PlainFormat(tokenizer)
    running = []
    for i, problem in enumerate(case.problems):
        env = case.make_env()
        running.append(_Running(i, env, fmt.prompt_ids(env.reset(problem, sampling.seed + i))))
    turn = SamplingParams(
        n=1,
        max_new_tokens=limits.max_turn_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        stop_strings=tuple(dict.fromkeys((*FixedTurnsEnv.stop_strings, *sampling.stop_strings))),
        seed=sampling.seed,
    )
    done: dict[int, Result] = {}
    while running:
        completions = engine.generate([r.prompt + r.ids for r in running], turn)
        still = []
        for row, c in zip(running, completions, strict=True):
            row.ids += c.token_ids
            row.mask += [1] * len(c.token_ids)
            row.logprobs += c.logprobs
            row.turns += 1
            ended_with_eos = bool(c.token_ids) and c.token_ids[-1] in engine.eos_ids
            action = tokenizer.decode(c.token_ids, skip_special_tokens=True)
            cut = c.finish_reason == "length"
            row.env.action_truncated = cut
            observation, _reward, terminated, truncated, _info = row.env.step(action)
            truncation = None if terminated else "env" if truncated else "turn_tokens" if cut else None
            if truncation is None and not terminated and row.turns >= limits.max_turns:
                truncation = "max_turns"
            if terminated or truncation is not None:
                done[row.index] = Result(row.ids, row.mask, row.logprobs, row.turns, truncation)
                continue
            ids = fmt.observation_ids(observation, FixedTurnsEnv.observation_role, ended_with_eos)
            ids = ids[: limits.max_observation_tokens]
            assert len(row.prompt) + len(row.ids) + len(ids) + 1 <= limits.max_context_tokens
            row.ids += ids
            row.mask += [0] * len(ids)
            row.logprobs += [0.0] * len(ids)
            still.append(row)
        running = still
    return [done[i] for i in range(len(case.problems))]


METHOD_FUNCTIONS: dict[str, Callable[[Any, Case, Any], list[Result]]] = {
    "kv-continuation": kv_continuation,
    "re-prefill": re_prefill,
}


# --- runs and rounds ----------------------------------------------------------------------------


@dataclass
class Run:
    """One method's run of one case."""

    seconds: float
    policy_tokens: int
    observation_tokens: int
    times: ForwardTimes
    results: list[Result]


def timed_run(method: str, engine: Any, case: Case, sampling: Any) -> Run:
    """Run ``method`` on ``case`` once, timing it and its forward passes."""
    times = ForwardTimes()
    with timed_decoders(times):
        start = time.perf_counter()
        results = METHOD_FUNCTIONS[method](engine, case, sampling)
        seconds = time.perf_counter() - start
    policy = sum(sum(r.mask) for r in results)
    observed = sum(len(r.mask) - sum(r.mask) for r in results)
    return Run(seconds, policy, observed, times, results)


def compare(case: Case, kv: list[Result], rp: list[Result], scripted: bool) -> dict[str, Any]:
    """Whether both methods gave the same trajectories (token ids and mask; token and turn counts), the
    largest difference of a sampled token's logprob, and (scripted policy) whether every trajectory
    ran the case's turns to the environment's end; the mean turns per trajectory."""
    same_tokens = all(a.token_ids == b.token_ids and a.mask == b.mask for a, b in zip(kv, rp, strict=True))
    same_counts = all(
        sum(a.mask) == sum(b.mask) and len(a.mask) == len(b.mask) and a.turns == b.turns
        for a, b in zip(kv, rp, strict=True)
    )
    diff = 0.0
    for a, b in zip(kv, rp, strict=True):
        if a.token_ids == b.token_ids:
            diff = max(
                [diff, *(abs(x - y) for x, y, m in zip(a.logprobs, b.logprobs, a.mask, strict=True) if m)]
            )
    turns_ok = all(r.turns == case.turns and r.truncation is None for r in (*kv, *rp)) if scripted else True
    return {
        "same_tokens": same_tokens,
        "same_counts": same_counts,
        "logprob_diff": diff,
        "turns_ok": turns_ok,
        "mean_turns": statistics.mean(r.turns for r in kv),
    }


def run_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every round of every turn count on one model; one summary per turn count."""
    from rlvr.rollout.hf_engine import HFEngine
    from rlvr.rollout.types import SamplingParams

    model, tokenizer, description = build_model(name, args.layers)
    workload = replace(
        DEFAULTS[name],
        **{
            k: v
            for k in ("trajectories", "prompt_tokens", "turn_tokens", "observation_tokens")
            if (v := getattr(args, k)) is not None
        },
    )
    scripted = args.policy == "script"
    if scripted:
        script_turns(model, tokenizer, workload.turn_tokens)
    engine = HFEngine(
        model, tokenizer, max_batch_sequences=max(512, workload.trajectories), decoder=args.decoder
    )
    sampling = SamplingParams(n=1, temperature=0.0, seed=0)
    cases = [make_case(name, t, workload, tokenizer) for t in args.turns]
    warm = make_case(name, 1, replace(workload, trajectories=2), tokenizer)
    for method in METHODS:
        timed_run(method, engine, warm, sampling)
    runs: dict[int, dict[str, list[Run]]] = {c.turns: {m: [] for m in METHODS} for c in cases}
    checks: dict[int, list[dict[str, Any]]] = {c.turns: [] for c in cases}
    for r in range(args.rounds):
        for case in cases if r % 2 == 0 else cases[::-1]:
            order = METHODS if (r + case.turns) % 2 == 0 else METHODS[::-1]
            done = {m: timed_run(m, engine, case, sampling) for m in order}
            for m in METHODS:
                runs[case.turns][m].append(done[m])
            checks[case.turns].append(
                compare(case, done["kv-continuation"].results, done["re-prefill"].results, scripted)
            )
            print(
                f"{name} T={case.turns} round {r + 1}: "
                + ", ".join(f"{m} {done[m].seconds:.2f} s" for m in METHODS),
                flush=True,
            )
    return [
        summarise(name, description, workload, case, runs[case.turns], checks[case.turns]) for case in cases
    ]


def summarise(
    name: str,
    description: str,
    workload: Workload,
    case: Case,
    runs: dict[str, list[Run]],
    checks: list[dict[str, Any]],
) -> dict[str, Any]:
    """Medians over the rounds of one case, the median ratio, and the checks of every round."""
    out: dict[str, Any] = {
        "model": name,
        "description": description,
        "workload": workload,
        "turns": case.turns,
    }
    for m, rs in runs.items():
        out[m] = {
            "tokens_per_s": statistics.median(r.policy_tokens / r.seconds for r in rs),
            "trajectories_per_s": statistics.median(len(r.results) / r.seconds for r in rs),
            "seconds": statistics.median(r.seconds for r in rs),
            "prefill_s": statistics.median(r.times.prefill_s for r in rs),
            "decode_s": statistics.median(r.times.decode_s for r in rs),
            "append_s": statistics.median(r.times.append_s for r in rs),
            "other_s": statistics.median(
                r.seconds - r.times.prefill_s - r.times.decode_s - r.times.append_s for r in rs
            ),
            "prefill_tokens": rs[0].times.prefill_tokens,
            "decode_steps": rs[0].times.decode_steps,
            "decode_rows": rs[0].times.decode_rows,
            "append_calls": rs[0].times.append_calls,
            "policy_tokens": rs[0].policy_tokens,
            "observation_tokens": rs[0].observation_tokens,
            "each_tokens_per_s": [r.policy_tokens / r.seconds for r in rs],
        }
    kv, rp = runs["kv-continuation"], runs["re-prefill"]
    out["ratio"] = statistics.median(
        (a.policy_tokens / a.seconds) / (b.policy_tokens / b.seconds) for a, b in zip(kv, rp, strict=True)
    )
    out["same_tokens"] = all(c["same_tokens"] for c in checks)
    out["same_counts"] = all(c["same_counts"] for c in checks)
    out["turns_ok"] = all(c["turns_ok"] for c in checks)
    out["mean_turns"] = checks[-1]["mean_turns"]
    out["logprob_diff"] = max(c["logprob_diff"] for c in checks)
    return out


# --- the report ---------------------------------------------------------------------------------


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """The markdown table: per model and turn count, one row per method."""
    lines = [
        "| model | turns | method | policy tokens/s | trajectories/s | s/run | prefill s (tokens) "
        "| decode s (steps) | append s (calls) | other s | KV / re-prefill |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        for m in METHODS:
            x = s[m]
            ratio = f"**{s['ratio']:.2f}x**" if m == METHODS[0] else ""
            lines.append(
                f"| {s['model']} | {s['turns']} | {m} | {x['tokens_per_s']:.0f} | {x['trajectories_per_s']:.2f} "
                f"| {x['seconds']:.2f} | {x['prefill_s']:.2f} ({x['prefill_tokens']}) "
                f"| {x['decode_s']:.2f} ({x['decode_steps']}) | {x['append_s']:.2f} ({x['append_calls']}) "
                f"| {x['other_s']:.2f} | {ratio} |"
            )
    return "\n".join(lines)


def workloads_line(summaries: Sequence[dict[str, Any]], scripted: bool) -> str:
    """Each model's workload, in one sentence."""
    seen: dict[str, str] = {}
    for s in summaries:
        w = s["workload"]
        turns = f"{w.turn_tokens}-token turns" if scripted else f"turns of at most {2 * w.turn_tokens} tokens"
        seen[s["model"]] = (
            f"{s['description']}: {w.trajectories} trajectories, {w.prompt_tokens}-token prompts, "
            f"{turns}, {w.observation_tokens}-token observations"
        )
    return "; ".join(seen.values())


def checks_line(summaries: Sequence[dict[str, Any]], scripted: bool) -> str:
    """The checks of all runs, in one sentence."""
    same = all(s["same_tokens"] for s in summaries)
    counts = all(s["same_counts"] for s in summaries)
    diff = max(s["logprob_diff"] for s in summaries)
    line = (
        f"same token ids and masks in every trajectory: {'yes' if same else 'NO'}; same token and turn "
        f"counts: {'yes' if counts else 'NO'}; largest logprob difference of a sampled token: {diff:.2e}; "
    )
    if scripted:
        turns = all(s["turns_ok"] for s in summaries)
        return line + f"every trajectory ran its T turns: {'yes' if turns else 'NO'}"
    return (
        line
        + "mean turns per trajectory: "
        + ", ".join(f"{s['model']} T={s['turns']} {s['mean_turns']:.2f}" for s in summaries)
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=tuple(DEFAULTS), default=list(DEFAULTS))
    p.add_argument("--turns", nargs="+", type=int, default=[1, 2, 4, 8], help="turns per trajectory (T)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each method per case (median reported)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument(
        "--layers", type=int, default=2, help="decoder layers of qwen2.5-0.5b (24 in the real one)"
    )
    p.add_argument("--policy", choices=("script", "model"), default="script", help="see the docstring")
    p.add_argument("--decoder", choices=("auto", "transformers"), default="auto", help="HFEngine's decoder")
    p.add_argument("--trajectories", type=int, help="trajectories per run (default: the model's)")
    p.add_argument("--prompt-tokens", type=int, help="prompt tokens (default: the model's)")
    p.add_argument("--turn-tokens", type=int, help="tokens of a scripted turn (default: the model's)")
    p.add_argument("--observation-tokens", type=int, help="tokens of an observation (default: the model's)")
    p.add_argument("--append-results", action="store_true", help=f"append the table to {RESULTS.name}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    summaries = [s for name in args.models for s in run_model(name, args)]
    scripted = args.policy == "script"
    minutes = (time.perf_counter() - started) / 60
    command = "python benchmarks/multi_turn_throughput.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--append-results"
    )
    header = (
        f"`{command.strip()}` on {time.strftime('%Y-%m-%d')}: {cpu_model()} ({platform.machine()}), "
        f"{os.cpu_count()} cores, on the CPU, torch.set_num_threads({args.threads}), load average "
        f"{load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; {minutes:.1f} min. Policy: {args.policy}, decoder "
        f"{args.decoder}, greedy. {workloads_line(summaries, scripted)}. Medians of {args.rounds} rounds."
    )
    entry = f"{header}\n\n{table(summaries)}\n\nChecks: {checks_line(summaries, scripted)}."
    print()
    print(entry)
    print()
    for s in summaries:
        print(
            f"{s['model']} T={s['turns']}: policy tokens/s of each round: "
            + "; ".join(f"{m} " + ", ".join(f"{x:.0f}" for x in s[m]["each_tokens_per_s"]) for m in METHODS)
        )
    if args.append_results:
        append_to_section(SECTION, entry)


if __name__ == "__main__":
    main()
