"""HFEngine against real tiny transformers models (float32, random weights, the toy tokenizer)."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rlvr.errors import ConfigError, DataError
from rlvr.rollout.hf_engine import HFEngine
from rlvr.rollout.types import SamplingParams
from rlvr.toy.tokenizer import build_tokenizer

TOKENIZER = build_tokenizer()
EOS = TOKENIZER.eos_token_id
# Different lengths, not sorted by length: the engine sorts, pads on the left and must map back.
PROMPT_TEXTS = ["17+25=", "3+4=", "100*7=12", "9="]
PROMPTS = [TOKENIZER(p)["input_ids"] for p in PROMPT_TEXTS]


def tiny_model(seed: int = 0, eos_bias: float = 0.0, **config) -> Qwen2ForCausalLM:
    """A 2-layer Qwen2 over the toy vocabulary; a large init makes its greedy text varied.

    ``eos_bias`` is added to the end-of-sequence logit (through a real bias on the output layer)
    so that completions end at varied lengths.
    """
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(TOKENIZER),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.5,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
        **config,
    )
    model = Qwen2ForCausalLM(cfg).float().eval()
    if eos_bias:
        bias = torch.zeros(len(TOKENIZER))
        bias[EOS] = eos_bias
        model.lm_head.bias = torch.nn.Parameter(bias)
    return model


@pytest.fixture(scope="module")
def model() -> Qwen2ForCausalLM:
    return tiny_model(eos_bias=3.0)


def recomputed_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """log softmax(logits / T) at the completion tokens from one unpadded full-sequence forward."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()  # [L, V]
    scaled = logits / (temperature if temperature > 0 else 1.0)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)  # predict each new token
    return torch.log_softmax(scaled, dim=-1)[positions, torch.tensor(completion)]


def generate_reference(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy model.generate, cut after the first end-of-sequence token."""
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=EOS,
            pad_token_id=EOS,
        )
    tokens = out[0, len(prompt) :].tolist()
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(0.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 0, 1.0), (1.5, 0, 1.0), (1.0, 5, 0.8)],
)
def test_logprobs_equal_full_sequence_recomputation(model, temperature, top_k, top_p):
    n = 3
    sampling = SamplingParams(
        n=n, max_new_tokens=12, temperature=temperature, top_k=top_k, top_p=top_p, seed=1
    )
    completions = HFEngine(model, TOKENIZER).generate(PROMPTS, sampling)
    assert len(completions) == len(PROMPTS) * n
    for i, c in enumerate(completions):
        # The prompt comes from the requested grouping (i // n), so a misplaced completion fails here too.
        expected = recomputed_logprobs(model, PROMPTS[i // n], c.token_ids, temperature)
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=2e-5, rtol=0)


def test_truncated_logprobs_are_those_of_the_distribution_the_tokens_came_from(model):
    from rlvr.algorithms.sampling_support import truncated_token_logprobs

    plain = SamplingParams(n=3, max_new_tokens=12, temperature=0.9, top_k=5, top_p=0.8, seed=1)
    truncated = SamplingParams(**{**plain.__dict__, "truncated_logprobs": True})
    engine = HFEngine(model, TOKENIZER)
    before, after = engine.generate(PROMPTS, plain), engine.generate(PROMPTS, truncated)
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        assert b.token_ids == a.token_ids and b.untruncated_logprobs == a.logprobs  # the same draws
        assert a.untruncated_logprobs is None
        prompt = PROMPTS[i // 3]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + b.token_ids])).logits.float()
        positions = slice(len(prompt) - 1, len(prompt) + len(b.token_ids) - 1)
        expected = truncated_token_logprobs(
            logits[:, positions], torch.tensor([b.token_ids]), temperature=0.9, top_k=5, top_p=0.8
        )[0]
        torch.testing.assert_close(torch.tensor(b.logprobs), expected, atol=2e-5, rtol=0)
        assert all(t <= u + 1e-6 for t, u in zip(b.untruncated_logprobs, b.logprobs, strict=True))


SLIDING = {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}  # layer 1 sees 4 tokens


@pytest.mark.parametrize(("eos_bias", "config"), [(0.0, {}), (4.5, {}), (4.5, SLIDING)])
def test_greedy_equals_model_generate_token_for_token(eos_bias, config):
    model = tiny_model(eos_bias=eos_bias, **config)
    completions = HFEngine(model, TOKENIZER).generate(
        PROMPTS, SamplingParams(n=2, max_new_tokens=16, temperature=0)
    )
    for i, c in enumerate(completions):
        assert c.token_ids == generate_reference(model, PROMPTS[i // 2], 16)
        expected = recomputed_logprobs(model, PROMPTS[i // 2], c.token_ids, 0.0)
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=2e-5, rtol=0)
    if eos_bias:  # the case is meant to cover greedy stops on the end-of-sequence token
        assert any(c.finish_reason == "stop" for c in completions)
        assert any(c.finish_reason == "length" for c in completions)


def test_same_seed_same_completions_and_different_seed_different(model):
    engine = HFEngine(model, TOKENIZER)
    first = engine.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=10, seed=7))
    again = engine.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=10, seed=7))
    other = engine.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=10, seed=8))
    assert first == again
    assert [c.token_ids for c in first] != [c.token_ids for c in other]


def test_samples_grouped_by_prompt_in_prompt_order(model):
    n = 3
    completions = HFEngine(model, TOKENIZER).generate(PROMPTS, SamplingParams(n=n, max_new_tokens=6))
    assert [c.prompt_index for c in completions] == [i // n for i in range(len(PROMPTS) * n)]
    assert [c.prompt_ids for c in completions] == [PROMPTS[i // n] for i in range(len(PROMPTS) * n)]
    # The n samples of one prompt are drawn independently, not copies of one another.
    assert len({tuple(c.token_ids) for c in completions[:n]}) > 1


def test_finish_reasons_on_eos_and_on_length(model):
    budget = 8
    completions = HFEngine(model, TOKENIZER).generate(PROMPTS, SamplingParams(n=8, max_new_tokens=budget))
    reasons = {c.finish_reason for c in completions}
    assert reasons == {"stop", "length"}  # the eos bias makes both happen
    for c in completions:
        assert len(c.logprobs) == len(c.token_ids)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == EOS and EOS not in c.token_ids[:-1]
            assert "<|endoftext|>" not in c.text  # the eos id is in token_ids, not in text
            assert c.text == TOKENIZER.decode(c.token_ids[:-1], skip_special_tokens=True)
        else:
            assert len(c.token_ids) == budget and EOS not in c.token_ids
            assert c.text == TOKENIZER.decode(c.token_ids, skip_special_tokens=True)


def _cut_at_first_stop(token_ids: list[int], stops: tuple[str, ...]) -> list[int]:
    for k in range(1, len(token_ids) + 1):
        if any(s in TOKENIZER.decode(token_ids[:k]) for s in stops):
            return token_ids[:k]
    return token_ids


def test_stop_strings_halt_right_after_they_appear():
    model = tiny_model()
    engine = HFEngine(model, TOKENIZER)
    free = engine.generate(PROMPTS, SamplingParams(n=1, max_new_tokens=20, temperature=0))
    assert all(c.finish_reason == "length" for c in free)
    # A two-character string across two tokens taken from inside completion 0, three characters
    # from completion 2, part of a multi-character tag, and "=" which ends most prompts (the
    # prompt's text must not count).
    stops = (free[0].text[5:7], free[2].text[3:6], "ink>", "=")
    stopped = engine.generate(
        PROMPTS, SamplingParams(n=1, max_new_tokens=20, temperature=0, stop_strings=stops)
    )
    cut_any = False
    for base, c in zip(free, stopped, strict=True):
        expected = _cut_at_first_stop(base.token_ids, stops)
        assert c.token_ids == expected
        assert c.logprobs == pytest.approx(base.logprobs[: len(expected)], abs=2e-5)
        if len(expected) < len(base.token_ids) or any(s in c.text for s in stops):
            cut_any = True
            assert c.finish_reason == "stop"
            assert any(c.text.endswith(s) for s in stops)
        else:
            assert c.finish_reason == "length"
    assert cut_any
    # The stop strings spanning several tokens were hit, not only the one-token ones.
    assert any(c.text.endswith(stops[0]) or c.text.endswith(stops[1]) for c in stopped)


def byte_level_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer (as GPT-2 / Qwen use) trained on the spot: multi-character
    tokens, and tokens that are only part of a multi-byte character."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(
        ["<think>7+8=15 4+3+1=8</think><answer>85</answer> so the answer is 85, é ü"] * 20, trainer
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def test_stop_strings_across_multi_character_tokens():
    tokenizer = byte_level_bpe_tokenizer()
    assert tokenizer.tokenize("</answer>") == ["</", "answer", ">"]
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, initializer_range=0.5,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = Qwen2ForCausalLM(cfg).eval()
    engine = HFEngine(model, tokenizer)
    prompts = [tokenizer(t)["input_ids"] for t in ("7+8=", "so the answer is", "é")]
    free = engine.generate(prompts, SamplingParams(n=1, max_new_tokens=24, temperature=0))
    # Stop strings cut out of the free texts: they start and end inside tokens and span several.
    stops = tuple(c.text[4:9] for c in free)
    assert all(len(tokenizer(s)["input_ids"]) > 1 for s in stops)
    stopped = engine.generate(
        prompts, SamplingParams(n=1, max_new_tokens=24, temperature=0, stop_strings=stops)
    )
    for base, c in zip(free, stopped, strict=True):
        expected = base.token_ids
        for k in range(1, len(base.token_ids) + 1):
            if any(s in tokenizer.decode(base.token_ids[:k]) for s in stops):
                expected = base.token_ids[:k]
                break
        assert c.token_ids == expected
        assert c.finish_reason == "stop" and any(s in c.text for s in stops)


def test_top_k_one_equals_greedy(model):
    engine = HFEngine(model, TOKENIZER)
    greedy = engine.generate(PROMPTS, SamplingParams(n=1, max_new_tokens=12, temperature=0))
    top1 = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=12, temperature=1.0, top_k=1, seed=3))
    for i, c in enumerate(top1):
        assert c.token_ids == greedy[i // 2].token_ids
        # At temperature 1 the logprobs of both are those of softmax(logits).
        assert c.logprobs == pytest.approx(greedy[i // 2].logprobs, abs=1e-6)


@pytest.mark.parametrize("max_batch_sequences", [1, 2, 5])
def test_chunking_gives_the_same_greedy_results(model, max_batch_sequences):
    sampling = SamplingParams(n=2, max_new_tokens=12, temperature=0)
    one_chunk = HFEngine(model, TOKENIZER, max_batch_sequences=512).generate(PROMPTS, sampling)
    chunked = HFEngine(model, TOKENIZER, max_batch_sequences=max_batch_sequences).generate(PROMPTS, sampling)
    assert [c.token_ids for c in chunked] == [c.token_ids for c in one_chunk]
    assert [c.finish_reason for c in chunked] == [c.finish_reason for c in one_chunk]
    assert [c.prompt_index for c in chunked] == [c.prompt_index for c in one_chunk]
    for a, b in zip(chunked, one_chunk, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=2e-5)


def test_training_mode_is_restored_and_dropout_is_off_during_generation():
    model = tiny_model(attention_dropout=0.5)
    sampling = SamplingParams(n=2, max_new_tokens=10, temperature=0)
    in_eval = HFEngine(model, TOKENIZER).generate(PROMPTS, sampling)
    model.train()
    in_train = HFEngine(model, TOKENIZER).generate(PROMPTS, sampling)
    assert model.training and all(m.training for m in model.modules())
    assert in_train == in_eval  # with dropout active the logprobs would differ
    model.eval()
    HFEngine(model, TOKENIZER).generate(PROMPTS, sampling)
    assert not any(m.training for m in model.modules())


def test_engine_sees_weight_updates_between_calls():
    model = tiny_model()
    engine = HFEngine(model, TOKENIZER)
    sampling = SamplingParams(n=1, max_new_tokens=8, temperature=0)
    before = engine.generate(PROMPTS, sampling)
    # Two real optimizer steps that make "<answer>" the most likely token after every prompt.
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    target = TOKENIZER.convert_tokens_to_ids("<answer>")
    for _ in range(2):
        optimizer.zero_grad()
        for prompt in PROMPTS:
            logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
            torch.nn.functional.cross_entropy(logits[None], torch.tensor([target])).backward()
        optimizer.step()
    model.eval()
    after = engine.generate(PROMPTS, sampling)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    assert all(c.token_ids[0] == target for c in after)
    assert [c.token_ids for c in after] == [generate_reference(model, p, 8) for p in PROMPTS]


def test_empty_prompt_raises_a_clear_error(model):
    with pytest.raises(DataError, match=r"prompts\[1\] is empty"):
        HFEngine(model, TOKENIZER).generate([PROMPTS[0], []], SamplingParams())


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ([[3, 10_000]], r"prompts\[0\] holds 10000"),
        ([[3, -1]], r"prompts\[0\] holds -1"),
        ([[3], "17+25="], r"prompts\[1\] must be a list of token ids"),
        (torch.tensor([[3, 4]]), "prompts must be a list"),
    ],
)
def test_bad_prompts_raise_data_error(model, prompts, message):
    with pytest.raises(DataError, match=message):
        HFEngine(model, TOKENIZER).generate(prompts, SamplingParams())


@pytest.mark.parametrize(
    ("sampling", "name"),
    [
        (SamplingParams(n=0), "n"),
        (SamplingParams(max_new_tokens=0), "max_new_tokens"),
        (SamplingParams(temperature=-0.5), "temperature"),
        (SamplingParams(top_p=0.0), "top_p"),
        (SamplingParams(top_k=-2), "top_k"),
        (SamplingParams(stop_strings="</answer>"), "stop_strings"),  # a str, not a tuple of str
        (SamplingParams(stop_strings=("",)), "stop_strings"),
    ],
)
def test_bad_sampling_params_raise_config_error(model, sampling, name):
    with pytest.raises(ConfigError, match=name):
        HFEngine(model, TOKENIZER).generate(PROMPTS, sampling)


def test_bad_max_batch_sequences_raises(model):
    with pytest.raises(ConfigError, match="max_batch_sequences"):
        HFEngine(model, TOKENIZER, max_batch_sequences=0)


def test_no_prompts_give_no_completions(model):
    assert HFEngine(model, TOKENIZER).generate([], SamplingParams(n=4)) == []
