"""Multi-turn rollouts: the policy and one environment per trajectory take turns over one KV cache.

For a batch of trajectories (``n`` per problem), each environment's first observation is the prompt;
all prompts are prefilled together (left-padded), then decoding runs one sampled token per
trajectory per step, as in :class:`~rlvr.rollout.hf_engine.HFEngine`: the token comes from the
policy (with its logprob; mask 1). A turn ends on the end-of-sequence token, on one of the
environment's stop strings, or at the per-turn budget.

When turns end, the environments of those trajectories step together (in threads: a sandboxed tool
is a subprocess), and each answer is tokenized (:mod:`rlvr.rollout.turn_format`) and appended to its
trajectory (mask 0, logprob 0). The next forward appends to the KV cache, for such a trajectory, its
last sampled token and the whole observation in one chunk (:meth:`~rlvr.rollout.decoders.Decoder.extend`:
observations of unequal lengths in one forward, the logits of each chunk's last token only), and
for every other trajectory its one sampled token; every trajectory then samples its next token, the
first of the new turn for one that observed. Generation continues on the same KV cache: nothing is
prefilled twice, and no decode step is spent on an observation token. A trajectory that ends (the
environment terminates or truncates it, or a budget runs out) leaves the batch and the cache at
once.

Budgets (:class:`TurnLimits`): ``max_turns`` policy turns, ``max_turn_tokens`` sampled tokens per
turn, ``max_context_tokens`` for prompt + everything after it. A trajectory that hits one ends as
truncated with the reason in ``truncation`` (``max_turns``, ``turn_tokens``, ``context``); one the
environment truncates has ``env``. An environment that raises or does not answer within
``step_timeout_s`` ends its trajectory with ``error`` set (the trainer leaves it out).

Turn by turn through ``generate``: an engine that holds its own copy of the policy (vLLM) has no
decode loop to continue, so each turn is one batched ``generate`` call on every live trajectory's
token stream so far (vLLM's prefix cache then skips what it has already encoded), with the same
stream, masks and budgets as above. Chat templates that rewrite earlier turns
(:meth:`~rlvr.rollout.turn_format.ChatFormat.rewrites`) cannot be continued as a stream with any
engine: each turn is then sampled from the whole conversation rendered anew by the template, and the
trajectory keeps, per turn, the rendering it was sampled from (:class:`Segment`); the trainer makes
each turn a row of its own.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlvr.errors import ConfigError
from rlvr.rollout.decoders import make_decoder
from rlvr.rollout.sampling import sample_next_token
from rlvr.rollout.turn_format import make_format
from rlvr.rollout.types import Completion, SamplingParams

TRUNCATIONS = ("max_turns", "turn_tokens", "context", "env")


@dataclass(frozen=True)
class TurnLimits:
    max_turns: int = 4
    """Policy turns per trajectory."""
    max_turn_tokens: int = 64
    """Tokens the policy may sample in one turn."""
    max_context_tokens: int = 2048
    """Prompt + sampled + observation tokens of a trajectory."""
    max_observation_tokens: int = 256
    """An observation longer than this is cut to its first ``max_observation_tokens`` tokens."""

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_turn_tokens", "max_context_tokens", "max_observation_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"setting 'env.{name}' must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class Segment:
    """One turn of a trajectory whose chat template rewrites earlier turns: the turn's tokens are
    ``token_ids[start:end]`` of the trajectory, sampled after ``prompt_ids`` (the conversation up to
    the turn as the template renders it). The trainer makes it a row of its own."""

    prompt_ids: list[int]
    start: int
    end: int


@dataclass
class Trajectory(Completion):
    """A :class:`Completion` whose ``token_ids`` interleave turns and observations.

    ``mask`` is 1 on the tokens the policy sampled and 0 on observation tokens (their logprob is 0).
    ``finish_reason`` is ``stop`` when the environment terminated the episode, else ``length``.
    """

    reward: float = 0.0
    """The sum of the rewards of all steps."""
    correct: bool = False
    turn_rewards: list[float] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)
    """Per turn, the index in ``token_ids`` of its last sampled token (where a per-turn reward goes)."""
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    timeouts: int = 0
    truncation: str | None = None
    error: str | None = None
    conversation: list[dict[str, str]] = field(default_factory=list)
    """The whole exchange as messages (role, content, in order): prompt, turns, observations."""
    segments: list[Segment] | None = None
    """Where the chat template rewrites earlier turns: the turns, each with the context it was
    sampled from. ``token_ids`` then holds the sampled tokens of all turns in order (``mask`` all 1)
    and ``prompt_ids`` the first prompt. None for a trajectory that is one token stream."""
    observed_tokens: int | None = None
    """With ``segments``: the tokens of the observations' text (they are inside the renderings, not
    in ``token_ids``)."""


@dataclass
class _Row:
    """A trajectory being decoded."""

    index: int
    prompt_index: int
    env: Any
    prompt: list[int]
    conversation: list[dict[str, str]]
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    """Observation tokens appended to ``ids`` and not yet fed to the model."""
    turn_start: int = 0
    """Where the current turn's sampled tokens begin in ``ids``."""
    rewards: list[float] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    tool_calls: int = 0
    tool_errors: int = 0
    timeouts: int = 0
    correct: bool | None = None
    segments: list[Segment] | None = None
    """Set (a list) when the trajectory is rendered anew each turn."""
    observed: int = 0
    opening: int = 1
    """Messages of the first observation (the prompt) at the start of ``conversation``."""
    weight_version: int | None = None
    """The engine's weight version that sampled the first turn (engines with their own copy)."""

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.ids)


class MultiTurnRunner:
    """Runs environments against a policy: on the KV cache of an
    :class:`~rlvr.rollout.hf_engine.HFEngine`, or turn by turn through any engine's ``generate``.

    ``make_env`` makes one environment (see :func:`rlvr.envs.base.env_factory`); ``format`` is
    plain | chat | auto (:mod:`rlvr.rollout.turn_format`); ``workers`` environment steps run at
    once; ``step_timeout_s`` bounds one step.
    """

    def __init__(
        self,
        make_env: Callable[[], Any],
        limits: TurnLimits = TurnLimits(),
        *,
        format: str = "auto",
        workers: int = 8,
        step_timeout_s: float = 60.0,
        env_name: str | None = None,
    ) -> None:
        self.make_env, self.limits, self.format = make_env, limits, format
        self.workers, self.step_timeout_s = workers, step_timeout_s
        self.env_name = env_name or getattr(make_env, "env_name", None) or "environment"

    def run(self, engine: Any, problems: Sequence[Any], sampling: SamplingParams) -> list[Trajectory]:
        """``sampling.n`` trajectories per problem, grouped by problem in order (like ``generate``).

        ``sampling.max_new_tokens`` is not used: the turn budgets are ``limits``'. The environments'
        stop strings end turns, with ``sampling.stop_strings`` besides.
        """
        total = len(problems) * sampling.n
        pool = futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="rlvr-env")
        try:
            if getattr(engine, "model", None) is None:  # its own copy of the policy: turn by turn
                return self._run_chunk(engine, problems, list(range(total)), sampling, None, pool)
            return self._run_on_cache(engine, problems, total, sampling, pool)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _run_on_cache(
        self, engine: Any, problems: Sequence[Any], total: int, sampling: SamplingParams, pool: Any
    ) -> list[Trajectory]:
        """The trajectories in chunks of ``engine.max_batch_sequences``, on the policy module the
        engine holds (in eval mode, without gradients, under the engine's autocast)."""
        model, out, per_chunk = engine.model, [], max(1, engine.max_batch_sequences)
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
        was_training = model.training
        model.eval()
        autocast = (
            torch.autocast(device_type=device.type, dtype=engine.autocast_dtype)
            if engine.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        try:
            with torch.no_grad(), autocast:
                for start in range(0, total, per_chunk):
                    indices = list(range(start, min(total, start + per_chunk)))
                    out += self._run_chunk(engine, problems, indices, sampling, generator, pool)
        finally:
            model.train(was_training)
        return out

    # --- one chunk -------------------------------------------------------------------------------

    def _error(self, index: int, problem: Any, what: str) -> str:
        pid = getattr(problem, "id", "?")
        return f"environment '{self.env_name}' failed on trajectory {index} (problem {pid}): {what}"

    def _start(self, index: int, problem: Any, seed: int, pool: Any) -> tuple[Any, Any]:
        env = self.make_env()
        future = pool.submit(env.reset, problem, seed)
        return env, future.result(timeout=self.step_timeout_s)

    def _run_chunk(
        self,
        engine: Any,
        problems: Sequence[Any],
        indices: list[int],
        sampling: SamplingParams,
        generator: torch.Generator,
        pool: Any,
    ) -> list[Trajectory]:
        n, limits = sampling.n, self.limits
        tokenizer = self._tokenizer = engine.tokenizer
        done: dict[int, Trajectory] = {}
        rows: list[_Row] = []
        fmt = None
        for i in indices:
            problem = problems[i // n]
            try:
                env, first = self._start(i, problem, sampling.seed + i, pool)
                fmt = fmt or make_format(self.format, tokenizer, first)
                prompt = fmt.prompt_ids(first)
                if not prompt or len(prompt) >= limits.max_context_tokens:
                    raise ConfigError(
                        f"the first observation has {len(prompt)} tokens; env.max_context_tokens is "
                        f"{limits.max_context_tokens}"
                    )
            except Exception as e:  # noqa: BLE001 (reported with the trajectory; the rest go on)
                what = "no answer from reset" if isinstance(e, futures.TimeoutError) else repr(e)
                done[i] = _failed(i // n, self._error(i, problem, what))
                continue
            conversation = (
                [{"role": "user", "content": first}] if isinstance(first, str) else [dict(m) for m in first]
            )
            rows.append(_Row(i, i // n, env, prompt, conversation, opening=len(conversation)))
        if rows:
            rendered = fmt.rewrites(getattr(rows[0].env, "observation_role", "user"))
            if rendered or generator is None:
                self._decode_by_turns(engine, rows, fmt, sampling, pool, problems, done, indices[0], rendered)
            else:
                self._decode(engine, rows, fmt, sampling, generator, pool, problems, done)
        return [done[i] for i in indices]

    def _decode(self, engine, rows, fmt, sampling, generator, pool, problems, done) -> None:
        limits, device, tokenizer = self.limits, generator.device, engine.tokenizer
        stops = tuple(dict.fromkeys((*getattr(rows[0].env, "stop_strings", ()), *sampling.stop_strings)))
        window = max((len(s.encode()) for s in stops), default=0) + 2
        may_end_stop = engine._may_end_stop(stops) if stops else None
        width = max(len(r.prompt) for r in rows)
        input_ids = torch.tensor(
            [[engine.pad_id] * (width - len(r.prompt)) + r.prompt for r in rows], device=device
        )
        attention = None
        if any(len(r.prompt) < width for r in rows):
            attention = torch.tensor(
                [[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows], device=device
            )
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
        else:
            positions = torch.arange(width, device=device).expand(len(rows), width)
        decoder = make_decoder(engine.model, engine.decoder)
        logits = decoder.prefill(input_ids, attention, positions).float()
        decoder.repeat(1, room=min(limits.max_context_tokens, 4096))
        next_position = positions[:, -1] + 1
        active = list(rows)
        eos = engine.eos_ids
        while active:
            sampled, logp = sample_next_token(
                logits,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                generator=generator,
            )
            sampled, logp = sampled.tolist(), logp.tolist()
            feed: list[list[int]] = []  # per row, the tokens the next forward appends to its cache
            ended: list[tuple[_Row, bool, bool]] = []  # (row, ended on eos, cut by the turn budget)
            finished: set[int] = set()
            for a, row in enumerate(active):
                token = sampled[a]
                row.ids.append(token), row.mask.append(1), row.logprobs.append(logp[a])
                feed.append([token])
                turn_tokens = len(row.ids) - row.turn_start
                if token in eos:
                    ended.append((row, True, False))
                elif (
                    may_end_stop is not None
                    and bool(may_end_stop[token])
                    and any(
                        s in tokenizer.decode(row.ids[max(row.turn_start, len(row.ids) - window) :])
                        for s in stops
                    )
                ):
                    ended.append((row, False, False))
                elif turn_tokens >= limits.max_turn_tokens:
                    ended.append((row, False, True))
                elif row.length >= limits.max_context_tokens:
                    self._finish(row, "context", done)
                    finished.add(row.index)
            for row, result, cut in self._step_envs(ended, pool, tokenizer, problems, sampling.n):
                if self._after_step(row, result, cut, fmt, done):
                    finished.add(row.index)
            if finished:
                keep = [a for a, row in enumerate(active) if row.index not in finished]
                if not keep:
                    break
                decoder.keep(torch.tensor(keep, device=device))
                active = [active[a] for a in keep]
                feed = [feed[a] for a in keep]
                next_position = next_position[torch.tensor(keep, device=device)]
            for chunk, row in zip(feed, active, strict=True):
                chunk += row.pending  # a new observation goes in after the turn's last token
                row.pending = []
            if any(len(chunk) > 1 for chunk in feed):
                logits = decoder.extend(feed, next_position).float()
                next_position = next_position + torch.tensor([len(c) for c in feed], device=device)
            else:
                logits = decoder.step(
                    torch.tensor([c[0] for c in feed], device=device), next_position
                ).float()
                next_position = next_position + 1

    def _decode_by_turns(
        self, engine, rows, fmt, sampling, pool, problems, done, first_index, rendered
    ) -> None:
        """Turn by turn through ``engine.generate``: every live trajectory's context (its token
        stream so far, or with ``rendered`` its conversation rendered anew by the template), one
        turn sampled for each in one call, the environments stepped together; repeat."""
        limits, tokenizer = self.limits, engine.tokenizer
        stops = tuple(dict.fromkeys((*getattr(rows[0].env, "stop_strings", ()), *sampling.stop_strings)))
        # an engine with a length limit of its own (vLLM's max_model_len) bounds the context too
        most = min(
            limits.max_context_tokens, getattr(engine, "max_model_len", None) or limits.max_context_tokens
        )
        if rendered:
            for row in rows:
                row.segments = []
        active, turn = list(rows), 0
        while active:
            contexts = []
            for row in list(active):
                if rendered:
                    context = row.prompt if turn == 0 else fmt.conversation_ids(row.conversation)
                else:
                    context, row.pending = row.prompt + row.ids, []
                if len(context) + 1 > most:
                    self._finish(row, "context", done)
                    active.remove(row)
                else:
                    contexts.append(context)
            if not active:
                break
            turn_sampling = dataclasses.replace(
                sampling,
                n=1,
                max_new_tokens=limits.max_turn_tokens,
                stop_strings=stops,
                seed=_turn_seed(sampling.seed, turn, first_index),
            )
            completions = engine.generate(contexts, turn_sampling)
            ended = []
            for row, context, c in zip(active, contexts, completions, strict=True):
                row.weight_version = c.weight_version if row.weight_version is None else row.weight_version
                tokens, logprobs = list(c.token_ids), list(c.logprobs)
                room = most - len(context)
                over = len(tokens) > room or (
                    len(tokens) == room and c.finish_reason == "length" and room < limits.max_turn_tokens
                )
                tokens, logprobs = tokens[:room], logprobs[:room]
                start = len(row.ids)
                if rendered:
                    row.segments.append(Segment(list(context), start, start + len(tokens)))
                row.ids += tokens
                row.mask += [1] * len(tokens)
                row.logprobs += logprobs
                row.turn_start = start
                if over:
                    self._finish(row, "context", done)
                else:
                    eos = bool(tokens) and tokens[-1] in engine.eos_ids
                    ended.append((row, eos, c.finish_reason == "length"))
            for row, result, how in self._step_envs(ended, pool, tokenizer, problems, sampling.n):
                self._after_step(row, result, how, fmt, done)
            active = [row for row in active if row.index not in done]
            turn += 1

    def _step_envs(self, ended, pool, tokenizer, problems, n):
        """Step the environments of the turns that just ended, together; (row, result or error, cut)."""
        if not ended:
            return []
        submitted = []
        for row, _eos, cut in ended:
            action = tokenizer.decode(row.ids[row.turn_start :], skip_special_tokens=True)
            row.conversation.append({"role": "assistant", "content": action})
            row.env.action_truncated = cut
            submitted.append(pool.submit(row.env.step, action))
        deadline = time.monotonic() + self.step_timeout_s
        out = []
        for (row, eos, cut), future in zip(ended, submitted, strict=True):
            try:
                result = future.result(timeout=max(0.0, deadline - time.monotonic()))
                observation, reward, terminated, truncated, info = result
                result = (
                    str(observation or ""),
                    float(reward),
                    bool(terminated),
                    bool(truncated),
                    dict(info or {}),
                )
            except futures.TimeoutError:
                result = self._error(
                    row.index, problems[row.index // n], f"step gave no answer in {self.step_timeout_s:g} s"
                )
            except Exception as e:  # noqa: BLE001
                result = self._error(row.index, problems[row.index // n], f"step raised {e!r}")
            out.append((row, result, (eos, cut)))
        return out

    def _after_step(self, row: _Row, result: Any, how: tuple[bool, bool], fmt: Any, done: dict) -> bool:
        """Record one step; queue its observation or end the trajectory. True when it ended."""
        ended_with_eos, cut = how
        if isinstance(result, str):  # the environment failed
            self._finish(row, None, done, error=result)
            return True
        observation, reward, terminated, truncated, info = result
        row.rewards.append(reward)
        row.ends.append(len(row.ids) - 1)
        row.tool_calls += bool(info.get("tool_call"))
        row.tool_errors += bool(info.get("tool_error"))
        row.timeouts += bool(info.get("timeout"))
        if "correct" in info:
            row.correct = bool(info["correct"])
        if terminated:
            self._finish(row, None, done, stop=True)
        elif truncated:
            self._finish(row, "env", done)
        elif cut:
            self._finish(row, "turn_tokens", done)
        elif len(row.rewards) >= self.limits.max_turns:
            self._finish(row, "max_turns", done)
        elif row.segments is not None:  # rendered anew before the next turn
            role = getattr(row.env, "observation_role", "user")
            ids = self._tokenizer(observation, add_special_tokens=False)["input_ids"]
            if len(ids) > self.limits.max_observation_tokens:
                observation = self._tokenizer.decode(ids[: self.limits.max_observation_tokens])
            row.conversation.append({"role": role, "content": observation})
            row.observed += min(len(ids), self.limits.max_observation_tokens)
            row.turn_start = len(row.ids)
            return False
        else:
            role = getattr(row.env, "observation_role", "user")
            ids = fmt.observation_ids(observation, role, ended_with_eos)[: self.limits.max_observation_tokens]
            if row.length + len(ids) + 1 > self.limits.max_context_tokens:
                self._finish(row, "context", done)
                return True
            row.conversation.append({"role": role, "content": observation})
            row.ids += ids
            row.mask += [0] * len(ids)
            row.logprobs += [0.0] * len(ids)
            row.pending = list(ids)
            row.turn_start = len(row.ids)
            return False
        if observation:
            row.conversation.append(
                {"role": getattr(row.env, "observation_role", "user"), "content": observation}
            )
        return True

    def _finish(
        self, row: _Row, truncation: str | None, done: dict, *, stop: bool = False, error: str | None = None
    ) -> None:
        """Make ``row`` a :class:`Trajectory` in ``done`` and close its environment."""
        reward = float(sum(row.rewards))
        in_turn = bool(row.ids) and row.turn_start < len(row.ids)
        open_turn = in_turn and (not row.ends or row.ends[-1] < row.turn_start)
        done[row.index] = Trajectory(
            prompt_index=row.prompt_index,
            prompt_ids=list(row.prompt),
            token_ids=list(row.ids),
            logprobs=list(row.logprobs),
            text=self._tokenizer.decode(row.ids, skip_special_tokens=True)
            if row.segments is None
            else "\n".join(m["content"] for m in row.conversation[row.opening :]),
            finish_reason="stop" if stop else "length",
            mask=list(row.mask),
            reward=reward,
            correct=row.correct if row.correct is not None else reward > 0,
            turn_rewards=list(row.rewards),
            turn_ends=list(row.ends),
            turns=len(row.rewards) + int(open_turn),
            tool_calls=row.tool_calls,
            tool_errors=row.tool_errors,
            timeouts=row.timeouts,
            truncation=truncation,
            error=error,
            conversation=row.conversation,
            segments=list(row.segments) if row.segments is not None else None,
            weight_version=row.weight_version,
            observed_tokens=row.observed if row.segments is not None else None,
        )
        with contextlib.suppress(Exception):
            close = getattr(row.env, "close", None)
            if close is not None:
                close()


def runner_from_env_config(env: Any, task: Any, *, default_turn_tokens: int) -> MultiTurnRunner:
    """The runner an ``env`` config section (:class:`rlvr.config.EnvConfig`) describes.

    Its environments are ``env.name`` made with ``env.params`` (and ``task`` for a constructor that
    takes one; :func:`rlvr.envs.base.env_factory` checks the parameters now); its budgets are the
    section's, ``max_turn_tokens`` None taking ``default_turn_tokens`` (the run's generation budget).
    """
    from rlvr.envs.base import env_factory

    assert env.name is not None, "the env section names no environment"
    limits = TurnLimits(
        max_turns=env.max_turns,
        max_turn_tokens=env.max_turn_tokens or default_turn_tokens,
        max_context_tokens=env.max_context_tokens,
        max_observation_tokens=env.max_observation_tokens,
    )
    return MultiTurnRunner(
        env_factory(env.name, env.params, task=task),
        limits,
        format=env.format,
        workers=env.workers,
        step_timeout_s=env.step_timeout_s,
        env_name=env.name,
    )


def _turn_seed(seed: int, turn: int, first: int) -> int:
    """The seed of one turn-by-turn ``generate`` call: distinct for every (seed, turn, first
    trajectory) while turns < 2**12 and trajectories < 2**20, so that no two calls of a run share
    their random draws (the callers' seeds differ by small steps: a step, a round, a rank)."""
    return (seed * 2**32 + turn * 2**20 + first) % 2**62


def _failed(prompt_index: int, error: str) -> Trajectory:
    return Trajectory(prompt_index, [], [], [], "", "length", mask=[], error=error)


def trajectory_sums(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Per-batch sums of what multi-turn rollouts report (add them over ranks, then divide by
    ``trajectories``): turns, tool calls, tool errors and timeouts, tokens generated and observed,
    truncations by reason, environment errors."""
    sums = dict.fromkeys(
        [
            "trajectories",
            "turns",
            "tool_calls",
            "tool_errors",
            "tool_timeouts",
            "tokens_generated",
            "tokens_observed",
            "errors",
            *(f"truncated_{r}" for r in TRUNCATIONS),
        ],
        0.0,
    )
    for t in trajectories:
        sums["trajectories"] += 1
        if t.error is not None:
            sums["errors"] += 1
            continue
        generated = sum(t.mask) if t.mask is not None else len(t.token_ids)
        sums["turns"] += t.turns
        sums["tool_calls"] += t.tool_calls
        sums["tool_errors"] += t.tool_errors
        sums["tool_timeouts"] += t.timeouts
        sums["tokens_generated"] += generated
        sums["tokens_observed"] += (
            t.observed_tokens if t.observed_tokens is not None else len(t.token_ids) - generated
        )
        if t.truncation is not None:
            sums[f"truncated_{t.truncation}"] += 1
    return sums


def trajectory_metrics(sums: dict[str, float]) -> dict[str, float]:
    """``env/*`` metrics from :func:`trajectory_sums` (possibly added over ranks): means per
    trajectory (environment errors left out), and ``env/errors`` as a count."""
    count = max(sums["trajectories"] - sums["errors"], 1.0)
    out = {f"env/{k}": v / count for k, v in sums.items() if k not in ("trajectories", "errors")}
    out["env/errors"] = sums["errors"]
    return out
