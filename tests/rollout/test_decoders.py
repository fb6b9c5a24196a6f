"""The Llama-family decoder against the models' own transformers forward (float32, random weights)."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from rlvr.errors import ConfigError
from rlvr.rollout.decoders import (
    LlamaFamilyDecoder,
    TransformersDecoder,
    llama_family_unsupported,
    make_decoder,
)
from rlvr.rollout.hf_engine import HFEngine
from rlvr.rollout.types import SamplingParams
from rlvr.toy.tokenizer import build_tokenizer

TOKENIZER = build_tokenizer()
VOCAB = len(TOKENIZER)
SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.3,
)
FAMILIES = {
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SHAPE, tie_word_embeddings=True)),
    "llama": lambda: LlamaForCausalLM(
        LlamaConfig(
            **SHAPE, attention_bias=True, rope_parameters={"rope_type": "default", "rope_theta": 500.0}
        )
    ),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**SHAPE, head_dim=16)),
}


def build(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return FAMILIES[family]().float().eval()


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    if all(len(p) == width for p in prompts):
        return ids, None, torch.arange(width).expand(len(prompts), width)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, attention, (attention.cumsum(-1) - 1).clamp(min=0)


def full_forward_logits(model, tokens: list[int]) -> torch.Tensor:
    """Logits after every position of one unpadded sequence, no cache: [L, V]."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("prompt_lengths", [(5, 5, 5), (3, 7, 1)])
def test_decoding_with_dropped_rows_equals_the_full_forward(family, prompt_lengths):
    """Prefill, repeat, then steps in which rows leave: every row's logits are those of a plain
    forward over its own unpadded tokens, and those of the transformers decoder."""
    model = build(family)
    assert llama_family_unsupported(model) is None
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in prompt_lengths]
    ids, attention, positions = left_padded(prompts)
    n = 3
    ours, theirs = LlamaFamilyDecoder(model), TransformersDecoder(model)
    with torch.no_grad():
        logits = [d.prefill(ids, attention, positions) for d in (ours, theirs)]
        torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
        for d in (ours, theirs):
            d.repeat(n, room=3)  # fewer than the steps below: the cache must grow
        sequences = [list(prompts[r // n]) for r in range(len(prompts) * n)]
        rows = list(range(len(sequences)))  # the sequence each cache row holds
        next_position = positions[:, -1].repeat_interleave(n) + 1
        for step in range(6):
            if step in (2, 4):  # drop every third remaining row, then the first
                keep = torch.tensor([i for i in range(len(rows)) if (i % 3 != 1 if step == 2 else i > 0)])
                for d in (ours, theirs):
                    d.keep(keep)
                rows = [rows[i] for i in keep.tolist()]
                next_position = next_position[keep]
            tokens = torch.randint(1, VOCAB, (len(rows),), generator=generator)
            for r, t in zip(rows, tokens.tolist(), strict=True):
                sequences[r].append(t)
            logits = [d.step(tokens, next_position) for d in (ours, theirs)]
            torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
            for a, r in enumerate(rows):
                expected = full_forward_logits(model, sequences[r])[-1]
                torch.testing.assert_close(logits[0][a], expected, atol=1e-5, rtol=1e-5)
            next_position = next_position + 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("prompt_lengths", [(4, 4), (3, 7, 1)])
def test_chunks_of_unequal_lengths_equal_the_full_forward(family, prompt_lengths):
    """``extend`` with chunks of unequal lengths (some rows one token, some several), between
    one-token steps and dropped rows: every row's logits are those of a plain forward over its own
    tokens, with both decoders."""
    model = build(family)
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in prompt_lengths]
    ids, attention, positions = left_padded(prompts)
    n = 2
    ours, theirs = LlamaFamilyDecoder(model), TransformersDecoder(model)
    # per call, the tokens appended to each row (cycled over the rows): 1 is a plain step's token
    plan = [[1], [3, 1, 6], [4, 6, 1, 4], [1], [2, 2, 2], [1, 5], [1], [4, 1, 1, 7], [1]]
    with torch.no_grad():
        for d in (ours, theirs):
            d.prefill(ids, attention, positions)
            d.repeat(n, room=4)  # fewer than the tokens below: the cache must grow
        sequences = [list(prompts[r // n]) for r in range(len(prompts) * n)]
        rows = list(range(len(sequences)))
        next_position = positions[:, -1].repeat_interleave(n) + 1
        for call, lengths in enumerate(plan):
            if call == 6:  # drop the first row
                keep = torch.arange(1, len(rows))
                for d in (ours, theirs):
                    d.keep(keep)
                rows, next_position = rows[1:], next_position[keep]
            counts = [lengths[a % len(lengths)] for a in range(len(rows))]
            chunks = [torch.randint(1, VOCAB, (c,), generator=generator).tolist() for c in counts]
            for r, chunk in zip(rows, chunks, strict=True):
                sequences[r] += chunk
            logits = [d.extend(chunks, next_position) for d in (ours, theirs)]
            torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
            for a, r in enumerate(rows):
                expected = full_forward_logits(model, sequences[r])[-1]
                torch.testing.assert_close(logits[0][a], expected, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(logits[1][a], expected, atol=1e-5, rtol=1e-5)
            next_position = next_position + torch.tensor(counts)
            if call == 2 and len(rows) == 4:  # the rows are of one length again
                assert ours.lengths is None
            if call == 1:
                assert ours.lengths is not None


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_engine_gives_the_same_completions_with_either_decoder(family):
    model = build(family, seed=3)
    prompts = [TOKENIZER(p)["input_ids"] for p in ("17+25=", "3+4=", "100*7=12")]
    for sampling in (
        SamplingParams(n=4, max_new_tokens=12, temperature=0.0),
        SamplingParams(n=4, max_new_tokens=12, temperature=1.0, seed=5),
    ):
        ours = HFEngine(model, TOKENIZER).generate(prompts, sampling)
        theirs = HFEngine(model, TOKENIZER, decoder="transformers").generate(prompts, sampling)
        assert [c.token_ids for c in ours] == [c.token_ids for c in theirs]
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(
                torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5
            )


def test_lora_adapters_are_applied():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        build("qwen2"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"])
    )
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapter change the outputs
            param.data.normal_(0, 0.5)
    model.eval()
    assert llama_family_unsupported(model) is None
    prompts = [[5, 6, 7, 8], [9, 10]]
    ids, attention, positions = left_padded(prompts)
    with torch.no_grad():
        ours = LlamaFamilyDecoder(model).prefill(ids, attention, positions)
        theirs = TransformersDecoder(model).prefill(ids, attention, positions)
        with model.disable_adapter():
            base = TransformersDecoder(model).prefill(ids, attention, positions)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert (ours - base).abs().max() > 1e-2


def test_other_architectures_use_the_transformers_decoder():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    assert "gpt2" in llama_family_unsupported(gpt2)
    assert isinstance(make_decoder(gpt2), TransformersDecoder)
    with pytest.raises(ConfigError, match="gpt2"):
        LlamaFamilyDecoder(gpt2)
    sliding = Qwen2ForCausalLM(Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=8))
    assert "sliding" in llama_family_unsupported(sliding)
    assert isinstance(make_decoder(sliding), TransformersDecoder)
    assert isinstance(make_decoder(build("qwen2")), LlamaFamilyDecoder)
    assert isinstance(make_decoder(build("qwen2"), "transformers"), TransformersDecoder)


def test_a_bad_decoder_name_is_a_config_error():
    with pytest.raises(ConfigError, match="decoder must be 'auto' or 'transformers', got 'fast'"):
        HFEngine(build("qwen2"), TOKENIZER, decoder="fast")
    with pytest.raises(ConfigError, match="got 'fast'"):
        make_decoder(build("qwen2"), "fast")
