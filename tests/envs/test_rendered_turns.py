"""Chat templates that rewrite earlier turns: each turn is sampled from the conversation rendered
anew, kept with that rendering (a Segment), and trained as a row of its own; the estimators still see
whole trajectories."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from env_fixtures import CALCULATOR_RUN, EchoEnv, chat_tokenizer, problems, split_into_turns, tiny_model

from rlvr.config import load_config
from rlvr.rollout.hf_engine import HFEngine
from rlvr.rollout.multi_turn import MultiTurnRunner, TurnLimits, trajectory_sums
from rlvr.rollout.turn_format import make_format
from rlvr.rollout.types import SamplingParams
from rlvr.training.batch import make_batch, training_rows
from rlvr.training.rollouts import ScoredGroup, StepRollouts
from rlvr.training.trainer import Trainer
from rlvr.training.update import compute_logprobs

# Past answers are cut to their last 3 characters: it stands in for dropping past reasoning and
# shows on the random text of a tiny model.
TRIMMING = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{% set c = m['content'] %}"
    "{% if not loop.last %}{% set c = c.split('</think>')[-1][-3:] %}{% endif %}"
    "<|im_start|>assistant\n{{ c }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# DeepSeek-R1's rule: every assistant message loses what precedes </think>.
R1_LIKE = TRIMMING.replace(
    "{% if not loop.last %}{% set c = c.split('</think>')[-1][-3:] %}{% endif %}", ""
).replace("{% set c = m['content'] %}", "{% set c = m['content'].split('</think>')[-1] %}")
# Qwen3's rule: reasoning is dropped only from answers before the last user message.
QWEN3_LIKE = (
    "{% set ns = namespace(last=-1) %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{% set c = m['content'] %}"
    "{% if loop.index0 < ns.last %}{% set c = c.split('</think>')[-1].lstrip() %}{% endif %}"
    "<|im_start|>assistant\n{{ c }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LIMITS = TurnLimits(max_turns=4, max_turn_tokens=12, max_context_tokens=200)


def _tokenizer(template):
    tok = chat_tokenizer()
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def trimming():
    tok = _tokenizer(TRIMMING)
    return tok, tiny_model(tok, eos_bias=2.0)


def _run(engine, limits=LIMITS, n=2, count=3, seed=0, steps=3):
    runner = MultiTurnRunner(lambda: EchoEnv(steps=steps, chat=True), limits, workers=4)
    return runner.run(engine, problems(count), SamplingParams(n=n, temperature=1.0, seed=seed))


def test_the_template_is_read_for_whether_it_rewrites_earlier_turns():
    from env_fixtures import CHAT_TEMPLATE

    assert not make_format("chat", _tokenizer(CHAT_TEMPLATE)).rewrites("tool")
    assert make_format("chat", _tokenizer(R1_LIKE)).rewrites("tool")
    assert make_format("chat", _tokenizer(TRIMMING)).rewrites("user")
    qwen3 = make_format("chat", _tokenizer(QWEN3_LIKE))
    assert not qwen3.rewrites("tool")  # a tool answer keeps the reasoning before it
    assert qwen3.rewrites("user")  # a new user message drops it
    assert qwen3.pieces("tool")[1] == "<|im_start|>tool\n"
    with pytest.raises(Exception, match="rendered anew each turn"):
        qwen3.pieces("user")
    assert not make_format("plain", _tokenizer(TRIMMING)).rewrites("tool")


@pytest.mark.parametrize("decoder", ["auto", "transformers"])
def test_each_turn_is_sampled_from_the_conversation_rendered_anew_and_trained_as_sampled(trimming, decoder):
    tok, model = trimming
    engine = HFEngine(model, tok, decoder=decoder)
    fmt = make_format("chat", tok)
    trajs = _run(engine)
    rewritten = False
    for t in trajs:
        assert t.segments and t.mask == [1] * len(t.token_ids) and t.error is None
        assert t.segments[0].prompt_ids == t.prompt_ids
        answers = [i for i, m in enumerate(t.conversation) if m["role"] == "assistant"]
        assert len(answers) == len(t.segments) == t.turns
        previous = None
        for k, (s, at) in enumerate(zip(t.segments, answers, strict=True)):
            # the context of turn k is the template's rendering of everything before it
            assert s.prompt_ids == fmt.conversation_ids(t.conversation[:at])
            assert (
                tok.decode(t.token_ids[s.start : s.end], skip_special_tokens=True)
                == t.conversation[at]["content"]
            )
            assert s.start == (t.segments[k - 1].end if k else 0)
            if previous is not None and s.prompt_ids[: len(previous)] != previous:
                rewritten = True  # the earlier turn reads differently now
            previous = s.prompt_ids + t.token_ids[s.start : s.end]
        assert t.segments[-1].end == len(t.token_ids)
        # the answers and the observations between them (the one after the last answer is never fed)
        assert t.text == "\n".join(m["content"] for m in t.conversation[1 : answers[-1] + 1])
        assert t.turn_ends == [s.end - 1 for s in t.segments][: len(t.turn_ends)]
    assert rewritten and any(t.turns >= 3 for t in trajs)
    # one row per turn; the trainer's logprobs equal the rollout's: importance ratio 1
    rows, layout = training_rows(trajs)
    assert len(rows) == sum(len(t.segments) for t in trajs) and layout is not None
    batch = make_batch(rows, [0.0] * len(rows), [False] * len(rows), [0] * len(rows), engine.pad_id)
    recomputed = compute_logprobs(model, batch, 1.0, 4096)
    ratio = (recomputed - batch.old_logprobs).exp()[batch.response_mask.bool()]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        layout.gather_tokens(batch.old_logprobs)[0, : len(trajs[0].logprobs)], torch.tensor(trajs[0].logprobs)
    )
    sums = trajectory_sums(trajs)
    assert sums["tokens_generated"] == sum(len(t.token_ids) for t in trajs)
    assert sums["tokens_observed"] == sum(t.observed_tokens for t in trajs) > 0
    again = _run(engine)
    assert [(t.token_ids, t.segments) for t in again] == [(t.token_ids, t.segments) for t in trajs]


def test_budgets_hold_for_rendered_turns(trimming):
    tok, model = trimming
    engine = HFEngine(model, tok)
    trajs = _run(engine, TurnLimits(max_turns=2, max_turn_tokens=12, max_context_tokens=200), steps=10, n=3)
    assert any(t.truncation == "max_turns" for t in trajs) and all(t.turns <= 2 for t in trajs)
    trajs = _run(engine, TurnLimits(max_turns=8, max_turn_tokens=2, max_context_tokens=300), steps=10)
    assert any(t.truncation == "turn_tokens" for t in trajs)
    assert all(s.end - s.start <= 2 for t in trajs for s in t.segments)
    trajs = _run(engine, TurnLimits(max_turns=20, max_turn_tokens=12, max_context_tokens=70), steps=50)
    assert all(len(s.prompt_ids) + s.end - s.start <= 70 for t in trajs for s in t.segments)
    assert all(t.truncation in ("context", "turn_tokens") and t.finish_reason == "length" for t in trajs)
    assert any(t.truncation == "context" for t in trajs)


# --- training: a trajectory split into its turns trains like the trajectory -----------------------

AGENT = [
    *CALCULATOR_RUN,
    "rollout.prompts_per_step=3",
    "rollout.samples_per_prompt=4",
    "training.updates_per_step=1",
    "training.micro_batch_tokens=96",
    "training.cpu_threads=1",
    "optim.lr=1e-2",
    "optim.warmup_steps=0",
    "critic.pretrain_steps=0",
    "critic.lr=1e-3",
    "logging.tensorboard=false",
]


@pytest.fixture(scope="module")
def agent_groups(tmp_path_factory):
    out = tmp_path_factory.mktemp("split")
    trainer = Trainer(load_config(None, [*AGENT, f"logging.output_dir={out / 'make'}"]), log=lambda s: None)
    sampling = dataclasses.replace(trainer.sampling, n=4, temperature=1.0, seed=3)
    trajs = trainer.episodes.run(trainer.engine, list(trainer.task.train)[:3], sampling)
    assert any(0 in t.mask for t in trajs), "no observation: the tool was never called"
    rewards = [[1, 0, 0, 1], [0, 1, 1, 1], [1, 0, 0, 0]]
    groups = []
    for g in range(3):
        mine = trajs[4 * g : 4 * g + 4]
        for t, r in zip(mine, rewards[g], strict=True):
            t.reward, t.correct = float(r), bool(r)
            t.turn_rewards = [0.1] * (len(t.turn_ends) - 1) + [float(r)]
        groups.append(
            ScoredGroup(g, mine, [float(r) for r in rewards[g]], [bool(r) for r in rewards[g]], ["x"] * 4, g)
        )
    split = [dataclasses.replace(g, completions=[split_into_turns(t) for t in g.completions]) for g in groups]
    assert sum(len(t.segments) for g in split for t in g.completions) > 12  # some trajectory has 2+ turns
    return out, groups, split


def _trainer(out, preset, name, *more):
    config = load_config(None, [*AGENT, f"preset={preset}", *more, f"logging.output_dir={out / name}"])
    return Trainer(config, log=lambda s: None)


TURN_REWARDS = ["env.turn_rewards=true"]
KL_IN_REWARD = ["algorithm.kl_coef=0.05", "algorithm.kl_placement=reward"]  # the toy as its own reference


@pytest.mark.parametrize(
    "preset, more",
    [
        ("grpo", []),
        ("rloo", []),
        ("reinforce_pp", TURN_REWARDS),
        ("reinforce_pp", KL_IN_REWARD),  # the outcome folded with the KL: on the last turn only
        ("ppo", TURN_REWARDS),
        ("ppo", KL_IN_REWARD),
        ("vapo", []),
        ("dapo", []),
    ],
    ids=lambda v: "+".join(x.split("=")[0].split(".")[-1] for x in v) if isinstance(v, list) else v,
)
def test_a_trajectory_split_into_turns_gets_the_advantages_of_the_whole(agent_groups, preset, more):
    out, whole_groups, split_groups = agent_groups
    trainer = _trainer(out, preset, f"adv-{preset}-{len(more)}", *more)
    whole = trainer._make_batch(copy.deepcopy(whole_groups))
    split = trainer._make_batch(copy.deepcopy(split_groups))
    assert whole.layout is None and split.size > whole.size
    trainer.prepare_advantages(whole)
    trainer.prepare_advantages(split)
    for name in ("advantages", "returns"):
        if name not in whole.extra:
            assert name not in split.extra
            continue
        assert name in split.extra
        rows = split.layout.gather_tokens(split.extra[name] * split.response_mask)
        for i in range(whole.size):
            keep = whole.response_mask[i].bool()
            expected = whole.extra[name][i][keep]
            torch.testing.assert_close(rows[i, : len(expected)], expected, atol=1e-5, rtol=1e-5)
    assert split.extra["advantages"].abs().sum() > 0


def test_cppo_keeps_or_drops_a_split_trajectory_whole_as_it_would_the_trajectory(agent_groups):
    out, whole_groups, split_groups = agent_groups
    trainer = _trainer(out, "cppo", "cppo", "algorithm.cppo_pruning_rate=0.5")
    kept = []
    for groups in (whole_groups, split_groups):
        batch = trainer._make_batch(copy.deepcopy(groups))
        trainer.prepare_advantages(batch)
        metrics = {}
        batch = trainer._apply_completion_filters(batch, ("cppo",), metrics)
        kept.append(([tuple(k[:2]) for k in batch.row_keys], metrics))
    (whole, whole_metrics), (split, split_metrics) = kept
    assert sorted(set(split)) == sorted(whole) and len(whole) < 12  # the same trajectories, some dropped
    turns = {key: sum(1 for k in split if k == key) for key in whole}
    expected = {(g.position, j): len(t.segments) for g in split_groups for j, t in enumerate(g.completions)}
    assert all(turns[key] == expected[key] for key in whole)  # every turn of a kept trajectory
    assert split_metrics == whole_metrics


@pytest.mark.parametrize("preset", ["dapo", "vapo"])
def test_with_token_mean_aggregation_a_split_trajectory_makes_the_same_update(agent_groups, preset):
    out, whole_groups, split_groups = agent_groups
    results = []
    for name, groups in (("whole", whole_groups), ("split", split_groups)):
        # AdamW with a large epsilon moves each weight in proportion to its gradient (no division
        # of a float-noise gradient by its own size)
        trainer = _trainer(out, preset, f"learn-{preset}-{name}", "optim.eps=1.0", "critic.lr=1e-2")
        initial = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        metrics = trainer.learn(StepRollouts(groups=copy.deepcopy(groups)))
        moved = torch.cat([p.detach().flatten() for p in trainer.model.parameters()]) - initial
        results.append((moved.double(), metrics))
    (a, ma), (b, mb) = results
    assert a.norm() > 1e-4
    assert (a - b).norm() / a.norm() < 1e-4
    assert mb["policy/ratio_mean"] == pytest.approx(ma["policy/ratio_mean"], abs=1e-5)


@pytest.mark.parametrize("preset", ["grpo", "ppo"])
def test_a_chat_model_whose_template_rewrites_earlier_turns_trains_in_an_environment(tmp_path, preset):
    tok = _tokenizer(TRIMMING)
    model_dir = tmp_path / "model"
    tiny_model(tok, eos_bias=2.0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    config = load_config(
        None,
        [
            *AGENT,
            f"preset={preset}",
            f"model.path={model_dir}",
            "env.format=chat",
            "rollout.max_new_tokens=8",
            "training.steps=2",
            "logging.sample_every=1",
            "eval.num_problems=2",
            "checkpoint.every=0",
            f"logging.output_dir={tmp_path / 'run'}",
        ],
    )
    trainer = Trainer(config, log=lambda s: None)
    result = trainer.run()
    assert result.steps == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "env/turns" in r]
    assert len(steps) == 2 and all(r["env/turns"] >= 1 and r["env/errors"] == 0 for r in steps)
    assert max(r["env/turns"] for r in steps) > 1 and max(r["env/tokens_observed"] for r in steps) > 0
    assert all(r["optim/updates"] >= 1 for r in steps)
    sample = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in sample["conversation"]][:2] == ["user", "assistant"]
