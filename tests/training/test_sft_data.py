"""SFT data: reading rows, the target mask (base and chat), padded and packed micro-batches, the loss.

The equivalences proved here, on tiny real Qwen2 models in float64:

* a prompt position's target changes neither the loss nor any gradient; a completion's does;
* a packed row gives every example the logits it has alone, and the loss and gradient of the same
  examples padded (so a packed example attends only within itself), with SDPA and eager attention;
* micro-batches cut by a token budget add up to the gradient of one big batch.
"""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from training_fixtures import tiny_model

from rlvr.algorithms.entropy import token_logprobs
from rlvr.config import ModelConfig
from rlvr.errors import ConfigError, DataError
from rlvr.tasks.templates import render_prompt
from rlvr.toy.tokenizer import build_tokenizer
from rlvr.training.model import load_tokenizer
from rlvr.training.sft_data import (
    SFTDataSettings,
    SFTExample,
    TokenizedExample,
    assistant_char_spans,
    count_targets,
    load_sft_dataset,
    pack_rows,
    packed_attention_mask,
    packed_micro_batches,
    padded_micro_batches,
    read_sft_examples,
    sft_logits,
    sft_loss,
    shuffled_steps,
    tokenize_example,
    tokenize_examples,
)

QWEN_STYLE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Like DeepSeek-R1's template: past assistant turns lose their reasoning.
DROPS_PAST_REASONING = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'].split('</think>')[-1] }}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_tokenizer(template: str = QWEN_STYLE):
    """The toy tokenizer with ChatML's turn tokens and a chat template."""
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = template
    return tok


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "1+1?"},
    {"role": "assistant", "content": "<think>one and one</think>2"},
    {"role": "user", "content": "and 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "thanks"},
]


# ------------------------------------------------------------------------------------------ reading


def test_prompt_completion_rows_from_jsonl_json_and_parquet(tmp_path):
    rows = [{"q": {"text": "1+1="}, "a": "2"}, {"q": {"text": "2+2="}, "a": "4"}]
    jl = write_jsonl(tmp_path / "d.jsonl", rows)
    js = tmp_path / "d.json"
    js.write_text(json.dumps(rows))
    pqf = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pqf)
    settings = SFTDataSettings(prompt="q.text", completion="a")
    for path in (jl, js, pqf):
        examples, skipped = read_sft_examples(path, settings)
        assert [(e.prompt, e.completion) for e in examples] == [("1+1=", "2"), ("2+2=", "4")]
        assert skipped == []
    assert read_sft_examples(jl, settings)[0][1].where.endswith("d.jsonl:2")


def test_messages_rows_from_parquet(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{"conv": CONVERSATION[:3]}]), path)
    examples, _ = read_sft_examples(path, SFTDataSettings(format="messages", messages="conv"))
    assert examples[0].messages == CONVERSATION[:3]


def test_bad_rows_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"prompt": "p", "completion": "c"}\n'  # a BOM is allowed
        b'{"prompt": "p"}\n'
        b'{"prompt": "p", "completion": 5}\n'
        b"{oops\n"
        b'{"prompt": "\xff", "completion": "c"}\n'
    )
    settings = SFTDataSettings()
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'completion' is missing .*skip_bad_rows=true"):
        read_sft_examples(path, settings)
    examples, skipped = read_sft_examples(path, SFTDataSettings(skip_bad_rows=True))
    assert [e.where.rsplit(":", 1)[1] for e in examples] == ["1"]
    assert "bad.jsonl:2: field 'completion' is missing" in skipped[0]
    assert "bad.jsonl:3: field 'completion' must be a non-empty string" in skipped[1]
    assert "bad.jsonl:4: not valid JSON" in skipped[2]
    assert "bad.jsonl:5: not valid UTF-8" in skipped[3]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="holds no rows"):
        read_sft_examples(empty, settings)


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ("not a list", r"field 'messages' must be a non-empty list"),
        ([{"role": "user", "content": "q"}], r"field 'messages' has no assistant message"),
        ([{"role": "assistant", "content": "a"}], r"field 'messages\[0\]' is an assistant message"),
        ([{"role": "user"}, {"role": "assistant", "content": "a"}], r"field 'messages\[0\]\.content'"),
        ([{"content": "q"}, {"role": "assistant", "content": "a"}], r"field 'messages\[0\]\.role'"),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}],
            r"field 'messages\[1\]\.content'",
        ),
    ],
)
def test_bad_conversations_name_the_message(tmp_path, messages, error):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}])
    with pytest.raises(DataError, match=r"c\.jsonl:1: " + error):
        read_sft_examples(path, SFTDataSettings(format="messages"))


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="'max_tokens' must be at least 2"):
        SFTDataSettings(max_tokens=1)
    with pytest.raises(ConfigError, match="setting 'template'.*r1_zer"):
        SFTDataSettings(template="r1_zer")


# --------------------------------------------------------------------------------------- tokenizing


def test_base_model_example_is_template_prompt_then_completion_then_eos():
    tok = load_tokenizer(ModelConfig(path="toy"))
    for template in ("plain", "r1_zero"):
        ex = tokenize_example(SFTExample("f:1", prompt="12+34=", completion="46"), tok, template)
        prompt = tok(render_prompt(template, "12+34="))["input_ids"]
        completion = tok("46", add_special_tokens=False)["input_ids"]
        assert list(ex.input_ids) == prompt + completion + [tok.eos_token_id]
        assert list(ex.target_mask) == [False] * len(prompt) + [True] * (len(completion) + 1)
        assert ex.num_targets == len(completion) + 1


def test_chat_spans_cover_exactly_the_assistant_turns():
    tok = chat_tokenizer()
    text, spans = assistant_char_spans(CONVERSATION, tok)
    assert [text[a:b] for a, b in spans] == [
        "<think>one and one</think>2<|im_end|>",
        "4<|im_end|>",
    ]
    # Everything before is the prompt, and the trailing user turn (nothing to learn) is cut off.
    assert text == tok.apply_chat_template(CONVERSATION, tokenize=False)
    ex = tokenize_example(SFTExample("f:1", messages=CONVERSATION), tok, "plain")
    assert tok.decode(ex.input_ids) == text[: text.index("4<|im_end|>") + len("4<|im_end|>")]
    trained = "".join(tok.decode([i]) for i, m in zip(ex.input_ids, ex.target_mask, strict=True) if m)
    assert trained == "<think>one and one</think>2<|im_end|>4<|im_end|>"


def test_prompt_completion_rows_through_a_chat_template():
    tok = chat_tokenizer()
    ex = tokenize_example(SFTExample("f:1", prompt="2+2?", completion="4"), tok, "qwen_boxed")
    trained = [i for i, m in zip(ex.input_ids, ex.target_mask, strict=True) if m]
    assert tok.decode(trained) == "4<|im_end|>"
    assert tok.decode(ex.input_ids).startswith("<|im_start|>system\nPlease reason step by step")


def test_template_that_rewrites_earlier_turns_is_an_error():
    tok = chat_tokenizer(DROPS_PAST_REASONING)
    with pytest.raises(DataError, match=r"f:3: .*assistant turn messages\[2\].*rewrites earlier turns"):
        tokenize_example(SFTExample("f:3", messages=CONVERSATION), tok, "plain")
    # A single turn is fine: nothing follows it.
    ex = tokenize_example(SFTExample("f:3", messages=CONVERSATION[:3]), tok, "plain")
    assert ex.num_targets > 0


def test_generation_prompt_that_is_not_a_prefix_trains_the_header():
    # The generation prompt opens a <think> block: a turn that starts with it is found as usual, a
    # turn that does not is trained from its header on.
    tok = chat_tokenizer(QWEN_STYLE.replace("assistant\n{% endif %}", "assistant\n<think>{% endif %}"))
    text, spans = assistant_char_spans(CONVERSATION[1:5], tok)
    assert [text[a:b] for a, b in spans] == [
        "one and one</think>2<|im_end|>",
        "<|im_start|>assistant\n4<|im_end|>",
    ]


def test_a_token_across_the_start_of_a_turn_is_trained_with_the_turn():
    tok = chat_tokenizer()
    tok.add_tokens(["\n\n"])  # merges the header's newline with a content's leading newline
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\nok"}]
    ex = tokenize_example(SFTExample("f:1", messages=messages), tok, "plain")
    trained = [i for i, m in zip(ex.input_ids, ex.target_mask, strict=True) if m]
    assert tok.decode(trained) == "\n\nok<|im_end|>"
    assert tok.decode(ex.input_ids) == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n\nok<|im_end|>"


def test_messages_need_a_chat_template():
    with pytest.raises(DataError, match="need a tokenizer with a chat template"):
        tokenize_example(SFTExample("f:1", messages=CONVERSATION), build_tokenizer(), "plain")


def test_too_long_examples_are_an_error_or_dropped(tmp_path):
    tok = build_tokenizer()
    rows = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "1+1=", "completion": "2" * 50}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.raises(
        DataError, match=r"long\.jsonl:2: 55 tokens, more than max_tokens = 20; .*too_long=drop"
    ):
        load_sft_dataset(path, SFTDataSettings(max_tokens=20), tok)
    data = load_sft_dataset(path, SFTDataSettings(max_tokens=20, too_long="drop"), tok)
    assert [e.where[-1] for e in data.examples] == ["1"]
    assert len(data.dropped) == 1 and "long.jsonl:2: 55 tokens" in data.dropped[0]
    with pytest.raises(DataError, match=r"no SFT examples left of 2 \(0 bad, 2 too long\)"):
        tokenize_examples(
            read_sft_examples(path, SFTDataSettings())[0], tok, SFTDataSettings(max_tokens=3, too_long="drop")
        )


def test_rows_the_template_cannot_render_are_skipped_when_asked(tmp_path):
    tok = chat_tokenizer(DROPS_PAST_REASONING)
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION[:3]}, {"messages": CONVERSATION}])
    with pytest.raises(DataError, match=r"c\.jsonl:2: .*set data\.skip_bad_rows=true"):
        load_sft_dataset(path, SFTDataSettings(format="messages"), tok, prefix="data.")
    data = load_sft_dataset(path, SFTDataSettings(format="messages", skip_bad_rows=True), tok)
    assert len(data.examples) == 1 and "c.jsonl:2" in data.skipped[0]


# ------------------------------------------------------------------------------------------ batches

VOCAB = 40


def random_examples(n: int, seed: int = 0) -> list[TokenizedExample]:
    """Examples of varied prompt and completion lengths (the prompt untrained)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p, c = rng.randint(2, 8), rng.randint(1, 10)
        ids = tuple(rng.randrange(2, VOCAB) for _ in range(p + c))
        out.append(TokenizedExample(f"f:{i}", ids, (False,) * p + (True,) * c))
    return out


def float64_model(attention: str = "sdpa"):
    model = tiny_model(VOCAB).double().eval()
    model.set_attn_implementation(attention)
    return model


def loss_and_grads(model, micro_batches, num_tokens):
    """The step's loss and gradient accumulated over ``micro_batches``."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for mb in micro_batches:
        out = sft_loss(
            logits=sft_logits(model, mb), targets=mb.targets, loss_mask=mb.loss_mask, num_tokens=num_tokens
        )
        out.loss.backward()
        total += float(out.loss.detach())
    return total, [p.grad.clone() for p in model.parameters()]


def test_sft_loss_hand_value():
    # Logits (0, log 3) over 2 tokens: log p = log(1/4) for id 0 and log(3/4) for id 1.
    logits = torch.tensor([[[0.0, 3.0], [0.0, 3.0], [0.0, 3.0]]], dtype=torch.float64).log()
    logits = torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits))
    targets = torch.tensor([[0, 1, 0]])
    mask = torch.tensor([[True, True, False]])
    out = sft_loss(logits=logits, targets=targets, loss_mask=mask)
    expected = -(torch.tensor(0.25).log() + torch.tensor(0.75).log()).double() / 2
    assert torch.allclose(out.loss, expected, atol=1e-12)
    assert float(
        sft_loss(logits=logits, targets=targets, loss_mask=mask, num_tokens=4).loss
    ) == pytest.approx(float(expected) / 2)


def test_prompt_targets_change_no_loss_and_no_gradient():
    examples = random_examples(4)
    model = float64_model()
    rows = list(range(len(examples)))
    [mb] = padded_micro_batches(examples, rows, 10_000, pad_id=0)
    assert mb.num_targets == count_targets(examples, rows) == sum(sum(e.target_mask) for e in examples)
    base_loss, base_grads = loss_and_grads(model, [mb], mb.num_targets)
    prompt = (~mb.loss_mask & mb.attention.bool()).nonzero()[0]
    completion = mb.loss_mask.nonzero()[0]
    for position, changes in ((prompt, False), (completion, True)):
        changed = padded_micro_batches(examples, rows, 10_000, pad_id=0)[0]
        b, t = position.tolist()
        changed.targets[b, t] = (changed.targets[b, t] + 1) % VOCAB
        loss, grads = loss_and_grads(model, [changed], mb.num_targets)
        same = loss == base_loss and all(torch.equal(g, h) for g, h in zip(grads, base_grads, strict=True))
        assert same is not changes


# Eager attention computes its softmax in float32 whatever the model's dtype, hence its tolerance.
@pytest.mark.parametrize(("attention", "atol"), [("sdpa", 1e-10), ("eager", 1e-6)])
def test_packed_rows_compute_each_example_as_if_alone(attention, atol):
    examples = random_examples(6, seed=1)
    model = float64_model(attention)
    rows = list(range(len(examples)))
    [packed] = packed_micro_batches(examples, rows, 10_000, pad_id=0)
    assert packed.input_ids.shape == (1, sum(e.length for e in examples))  # no padding in a packed row
    logits = sft_logits(model, packed)
    offset = 0
    for r in packed.rows:
        [alone] = padded_micro_batches(examples, [r], 10_000, pad_id=0)
        n = examples[r].length
        torch.testing.assert_close(
            logits[0, offset : offset + n], sft_logits(model, alone)[0], atol=atol, rtol=0
        )
        offset += n
    # The same loss and gradient as the examples padded into one batch.
    num_tokens = count_targets(examples, rows)
    padded_loss, padded_grads = loss_and_grads(
        model, padded_micro_batches(examples, rows, 10_000, pad_id=0), num_tokens
    )
    packed_loss, packed_grads = loss_and_grads(model, [packed], num_tokens)
    assert packed_loss == pytest.approx(padded_loss, abs=atol / 100)
    for g, h in zip(packed_grads, padded_grads, strict=True):
        torch.testing.assert_close(g, h, atol=atol, rtol=atol)
    # The test has teeth: under a plain causal mask the later examples see the earlier ones.
    packed.segment_ids = torch.zeros_like(packed.segment_ids)
    assert (sft_logits(model, packed) - logits).abs().max() > 1e-3


@pytest.mark.parametrize("packed", [False, True])
def test_target_logprobs_equal_the_full_logits(packed, monkeypatch):
    """The stages' output projection on the trained positions only, in blocks of 3 positions, gives
    the log-probs and gradients of the full [b, T, V] logits."""
    import rlvr.training.stage_run as stage_run

    monkeypatch.setattr(stage_run, "HEAD_BLOCK_ELEMENTS", 3 * VOCAB)
    examples = random_examples(5, seed=4)
    model = float64_model()
    cut = packed_micro_batches if packed else padded_micro_batches
    [mb] = cut(examples, list(range(len(examples))), 10_000, pad_id=0)
    results = []
    for logprobs_of in (
        lambda: stage_run.target_logprobs(model, mb),
        lambda: torch.where(mb.loss_mask, token_logprobs(sft_logits(model, mb), mb.targets), 0.0),
    ):
        model.zero_grad(set_to_none=True)
        logprobs = logprobs_of()
        (logprobs * torch.linspace(0.5, 1.5, logprobs.numel()).view_as(logprobs)).sum().backward()
        results.append((logprobs.detach(), [p.grad.clone() for p in model.parameters()]))
    (ours, our_grads), (full, full_grads) = results
    assert stage_run._decoder_and_head(model) is not None  # the blocked path, not the fallback
    torch.testing.assert_close(ours, full, atol=1e-12, rtol=0)
    for g, h in zip(our_grads, full_grads, strict=True):
        torch.testing.assert_close(g, h, atol=1e-12, rtol=1e-10)


def test_packed_rows_with_padding_have_no_nan():
    examples = random_examples(3, seed=2)
    from rlvr.training.sft_data import _layout

    mb = _layout(examples, [[0, 1], [2]], pad_id=0, packed=True)  # two packed rows: the second padded
    assert (mb.segment_ids[1] == -1).any()
    model = float64_model()
    logits = sft_logits(model, mb)
    assert torch.isfinite(logits).all()
    [alone] = padded_micro_batches(examples, [2], 10_000, pad_id=0)
    n = examples[2].length
    torch.testing.assert_close(logits[1, :n], sft_logits(model, alone)[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("packed", [False, True])
def test_micro_batches_by_token_budget_equal_one_big_batch(packed):
    examples = random_examples(10, seed=3)
    model = float64_model()
    rows = list(range(len(examples)))
    split = packed_micro_batches if packed else padded_micro_batches
    whole = split(examples, rows, 10_000, pad_id=0)
    parts = split(examples, rows, 24, pad_id=0)
    assert len(whole) == 1 and len(parts) > 3
    assert all(mb.num_tokens <= 24 for mb in parts)
    assert sorted(r for mb in parts for r in mb.rows) == rows
    num_tokens = count_targets(examples, rows)
    whole_loss, whole_grads = loss_and_grads(model, whole, num_tokens)
    parts_loss, parts_grads = loss_and_grads(model, parts, num_tokens)
    assert parts_loss == pytest.approx(whole_loss, abs=1e-12)
    for g, h in zip(parts_grads, whole_grads, strict=True):
        torch.testing.assert_close(g, h, atol=1e-10, rtol=1e-8)


def test_padded_micro_batches_are_length_sorted_and_trimmed():
    examples = random_examples(12, seed=4)
    mbs = padded_micro_batches(examples, range(12), 40, pad_id=0)
    lengths = [[examples[r].length for r in mb.rows] for mb in mbs]
    flat = [n for group in lengths for n in group]
    assert flat == sorted(flat)
    for mb, group in zip(mbs, lengths, strict=True):
        assert mb.input_ids.shape == (len(group), max(group))
        assert mb.position_ids[0, : group[0]].tolist() == list(range(group[0]))


def test_pack_rows_fills_bins_within_capacity():
    lengths = [7, 3, 5, 2, 9, 4, 12]
    bins = pack_rows(lengths, range(len(lengths)), 10)
    assert sorted(r for b in bins for r in b) == list(range(len(lengths)))
    assert [b for b in bins if sum(lengths[r] for r in b) > 10] == [[6]]  # too long: a bin of its own
    assert len(bins) == 5  # 12 | 9 | 7+3 | 5+4 | 2 ... first fit decreasing
    assert pack_rows(lengths, range(len(lengths)), 10) == bins


def test_packed_attention_mask_is_block_diagonal_causal():
    mask = packed_attention_mask(torch.tensor([[0, 0, 1, 1, 1, -1]]), torch.float64)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    assert mask.dtype == torch.float64 and torch.isinf(mask[mask != 0]).all()


def test_shuffled_steps_are_deterministic_given_the_seed():
    first = shuffled_steps(10, 4, torch.Generator().manual_seed(7))
    assert first == shuffled_steps(10, 4, torch.Generator().manual_seed(7))
    assert [len(s) for s in first] == [4, 4, 2] and sorted(sum(first, [])) == list(range(10))
    assert first != shuffled_steps(10, 4, torch.Generator().manual_seed(8))
