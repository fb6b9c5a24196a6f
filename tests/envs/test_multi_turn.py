"""Multi-turn rollouts on real tiny models: KV continuation, token boundaries, budgets, faults."""

from __future__ import annotations

import time

import pytest
import torch
from env_fixtures import EchoEnv, FaultyEnv, chat_tokenizer, plain_tokenizer, problems, tiny_model

from rlvr.algorithms.entropy import token_logprobs
from rlvr.envs.base import StepResult
from rlvr.rollout import multi_turn
from rlvr.rollout.hf_engine import HFEngine
from rlvr.rollout.multi_turn import MultiTurnRunner, TurnLimits
from rlvr.rollout.turn_format import make_format
from rlvr.rollout.types import SamplingParams
from rlvr.tasks.base import Problem
from rlvr.training.batch import make_batch
from rlvr.training.update import compute_logprobs

LIMITS = TurnLimits(max_turns=4, max_turn_tokens=12, max_context_tokens=160)


def run(engine, env=EchoEnv, limits=LIMITS, n=2, count=3, temperature=1.0, seed=0, **kwargs):
    runner = MultiTurnRunner(
        lambda: env(**kwargs), limits, workers=4, step_timeout_s=kwargs.pop("timeout", 30)
    )
    return runner.run(engine, problems(count), SamplingParams(n=n, temperature=temperature, seed=seed))


@pytest.fixture(scope="module")
def plain():
    tok = plain_tokenizer()
    return tok, tiny_model(tok, eos_bias=-2.0)


@pytest.fixture(scope="module")
def chat():
    tok = chat_tokenizer()
    return tok, tiny_model(tok, eos_bias=2.0)


def full_forward_logprobs(model, traj, temperature):
    ids = torch.tensor([traj.prompt_ids + traj.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(traj.prompt_ids) - 1 : -1].float()
    return token_logprobs(logits[None], torch.tensor([traj.token_ids]), temperature=temperature)[0]


@pytest.mark.parametrize("decoder", ["auto", "transformers"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_kv_continuation_equals_full_reforward_and_trainer_logprobs(plain, decoder, temperature):
    tok, model = plain
    engine = HFEngine(model, tok, decoder=decoder)
    trajs = run(engine, temperature=temperature)
    assert any(t.turns >= 2 for t in trajs), [t.turns for t in trajs]
    assert any(0 in t.mask for t in trajs)  # observation tokens inside the response
    for t in trajs:
        mask = torch.tensor(t.mask, dtype=torch.bool)
        full = full_forward_logprobs(model, t, temperature)
        torch.testing.assert_close(full[mask], torch.tensor(t.logprobs)[mask], atol=1e-5, rtol=1e-5)
        assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.mask, strict=True) if not m)
    # The trainer's logprobs over the interleaved, padded batch: importance ratio 1 before any update.
    batch = make_batch(
        trajs, [t.reward for t in trajs], [t.correct for t in trajs], [0] * len(trajs), engine.pad_id
    )
    recomputed = compute_logprobs(model, batch, temperature, 4096)
    assert torch.equal(
        batch.response_mask == 0, (recomputed == 0) & (batch.old_logprobs == 0) | (batch.response_mask == 0)
    )
    ratio = (recomputed - batch.old_logprobs).exp()[batch.response_mask.bool()]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=1e-5)


class UnevenEnv(EchoEnv):
    """EchoEnv whose observations have a length of their own per trajectory (1 to 21 tokens)."""

    def reset(self, problem: Problem, seed: int):
        self.size = 5 * (seed % 5)
        return super().reset(problem, seed)

    def step(self, action: str) -> StepResult:
        _observation, *rest = super().step(action)
        return StepResult("7" * self.size + "\n", *rest)


@pytest.mark.parametrize("decoder", ["auto", "transformers"])
def test_observations_of_unequal_lengths_are_appended_in_one_forward(plain, decoder, monkeypatch):
    """Observations of different lengths reach the cache in one forward per environment step, beside
    rows still sampling: the logprobs equal a full re-forward, and the same seed gives the same
    trajectories."""
    tok, model = plain
    calls = []

    def recording(model, choice="auto"):
        inner = make_decoder(model, choice)
        extend = inner.extend

        def record(chunks, positions):
            calls.append([len(c) for c in chunks])
            return extend(chunks, positions)

        inner.extend = record
        return inner

    make_decoder = multi_turn.make_decoder
    monkeypatch.setattr(multi_turn, "make_decoder", recording)
    engine = HFEngine(model, tok, decoder=decoder)
    trajs = run(engine, env=UnevenEnv, n=3, count=4, seed=1)
    # one call with observations of several lengths, and one that also steps rows in mid-turn
    assert any(len({c for c in counts if c > 1}) > 1 for counts in calls), calls
    assert any(1 in counts and max(counts) > 1 for counts in calls), calls
    fmt = make_format("plain", tok)
    for t in trajs:
        fed = [m["content"] for m in t.conversation if m["role"] == "tool"]
        segments = _observation_segments(t)
        assert segments == [fmt.observation_ids(o, "tool", False) for o in fed[: len(segments)]]
        mask = torch.tensor(t.mask, dtype=torch.bool)
        full = full_forward_logprobs(model, t, 1.0)
        torch.testing.assert_close(full[mask], torch.tensor(t.logprobs)[mask], atol=1e-5, rtol=1e-5)
    assert len({len(s) for t in trajs for s in _observation_segments(t)}) > 2
    again = run(engine, env=UnevenEnv, n=3, count=4, seed=1)
    assert [(t.token_ids, t.mask, t.logprobs, t.truncation) for t in again] == [
        (t.token_ids, t.mask, t.logprobs, t.truncation) for t in trajs
    ]


def _observation_segments(traj):
    """The runs of observation tokens (mask 0) of a trajectory."""
    segments, current = [], []
    for token, m in zip(traj.token_ids, traj.mask, strict=True):
        if m == 0:
            current.append(token)
        elif current:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def test_plain_boundaries_keep_every_token(plain):
    tok, model = plain
    trajs = run(HFEngine(model, tok))
    fmt = make_format("plain", tok)
    for t in trajs:
        observations = [m["content"] for m in t.conversation if m["role"] == "tool"]
        segments = _observation_segments(t)
        # an episode's last observation (after the final turn) is recorded but never fed
        assert len(segments) in (len(observations), len(observations) - 1)
        fed = observations[: len(segments)]
        assert segments == [fmt.observation_ids(o, "tool", False) for o in fed]
        # the text trained on is exactly the actions and observations in order: nothing dropped
        actions = [m["content"] for m in t.conversation if m["role"] == "assistant"]
        assert tok.decode(t.token_ids, skip_special_tokens=True) == "".join(
            a + o for a, o in zip(actions, fed + [""], strict=False)
        )


def test_chat_boundaries_close_the_turn_and_open_the_next(chat):
    tok, model = chat
    engine = HFEngine(model, tok)
    trajs = run(engine, chat=True, seed=3)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert trajs[0].prompt_ids[-1] != end and tok.decode(trajs[0].prompt_ids).endswith(
        "<|im_start|>assistant\n"
    )
    seen_eos_turn = seen_stop_turn = False
    for t in trajs:
        for segment, boundary in zip(_observation_segments(t), _boundaries(t), strict=True):
            text = tok.decode(segment)
            assert text.endswith("<|im_end|>\n<|im_start|>assistant\n") and "<|im_start|>tool\ngot " in text
            if boundary == end:  # the policy closed its message: the separator after it is kept
                seen_eos_turn = True
                assert text.startswith("\n<|im_start|>tool")
            else:  # a stop string ended the turn: the template's closing is added
                seen_stop_turn = True
                assert text.startswith("<|im_end|>\n<|im_start|>tool")
    assert seen_eos_turn and seen_stop_turn
    for t in trajs:  # every sampled id is trained as sampled: the full forward agrees to 1e-5
        mask = torch.tensor(t.mask, dtype=torch.bool)
        torch.testing.assert_close(
            full_forward_logprobs(model, t, 1.0)[mask], torch.tensor(t.logprobs)[mask], atol=1e-5, rtol=0
        )


def _boundaries(traj):
    """The last sampled token before each observation segment."""
    out = []
    for i in range(1, len(traj.token_ids)):
        if traj.mask[i] == 0 and traj.mask[i - 1] == 1:
            out.append(traj.token_ids[i - 1])
    return out


def test_budgets_end_trajectories_as_truncated_with_the_reason(plain):
    tok, model = plain
    engine = HFEngine(model, tok)
    trajs = run(
        engine, limits=TurnLimits(max_turns=2, max_turn_tokens=12, max_context_tokens=200), steps=10, n=3
    )
    assert {t.truncation for t in trajs} <= {"max_turns", "turn_tokens", "context", None}
    assert any(t.truncation == "max_turns" for t in trajs)
    assert all(t.turns <= 2 for t in trajs)
    trajs = run(engine, limits=TurnLimits(max_turns=8, max_turn_tokens=2, max_context_tokens=200), steps=10)
    assert any(t.truncation == "turn_tokens" for t in trajs)
    for t in trajs:  # no turn samples more than its budget
        run_length = 0
        for m in t.mask:
            run_length = run_length + 1 if m else 0
            assert run_length <= 2
    trajs = run(engine, limits=TurnLimits(max_turns=20, max_turn_tokens=12, max_context_tokens=40), steps=50)
    assert all(len(t.prompt_ids) + len(t.token_ids) <= 40 for t in trajs)
    assert all(t.truncation in ("context", "turn_tokens") and t.finish_reason == "length" for t in trajs)
    assert any(t.truncation == "context" for t in trajs)


def test_environment_faults_drop_only_their_trajectory(plain):
    tok, model = plain
    engine = HFEngine(model, tok)
    batch = [
        Problem("ok0", "Count 1", "1"),
        Problem("crash", "Count 2", "2"),
        Problem("hang", "Count 3", "3"),
        Problem("ok1", "Count 4", "4"),
    ]
    runner = MultiTurnRunner(
        lambda: FaultyEnv(steps=2), LIMITS, workers=8, step_timeout_s=1.0, env_name="faulty"
    )
    t0 = time.monotonic()
    trajs = runner.run(engine, batch, SamplingParams(n=2, seed=0))
    assert time.monotonic() - t0 < 10
    errors = [t.error for t in trajs]
    assert all(e is None for e in errors[0:2] + errors[6:8])
    assert all("environment 'faulty'" in e and "crash" in e and "tool exploded" in e for e in errors[2:4])
    assert all("hang" in e and "no answer" in e for e in errors[4:6])
    assert all(t.turns >= 1 and t.reward > 0 for t in trajs[0:2] + trajs[6:8])


class GenerateOnly:
    """An engine that offers only ``generate`` (as vLLM does): the runner plays turn by turn."""

    def __init__(self, inner):
        self.inner, self.tokenizer, self.eos_ids, self.pad_id = (
            inner,
            inner.tokenizer,
            inner.eos_ids,
            inner.pad_id,
        )
        self.calls = 0

    def generate(self, prompts, sampling):
        self.calls += 1
        return self.inner.generate(prompts, sampling)


@pytest.mark.parametrize("fixture", ["plain", "chat"])
def test_turn_by_turn_through_generate_plays_the_same_trajectories_as_the_kv_cache(fixture, request):
    tok, model = request.getfixturevalue(fixture)
    engine = HFEngine(model, tok)
    chat = fixture == "chat"
    kv = run(engine, temperature=0.0, chat=chat, n=1, count=4)
    by_turns_engine = GenerateOnly(engine)
    by_turns = run(by_turns_engine, temperature=0.0, chat=chat, n=1, count=4)
    assert by_turns_engine.calls == max(t.turns for t in by_turns) >= 2  # one generate call per turn
    assert any(0 in t.mask for t in by_turns)  # observations as holes of the stream
    for a, b in zip(kv, by_turns, strict=True):
        assert (a.token_ids, a.mask, a.turns, a.truncation, a.turn_ends) == (
            b.token_ids,
            b.mask,
            b.turns,
            b.truncation,
            b.turn_ends,
        )
        assert b.segments is None  # one stream
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
