"""Loading models and tokenizers."""

from rlvr.config import ModelConfig
from rlvr.evaluation.run import load_eval_tokenizer
from rlvr.toy.tokenizer import build_tokenizer
from rlvr.training.model import load_tokenizer


def test_the_toy_tokenizer_loads_as_it_was_built_whitespace_included():
    # The toy's config names a qwen2 model; its tokenizer must still split one token per character,
    # spaces and newlines included, and decode back to the text, as the tokenizer it was built with.
    text = "What is 12 + 30?\n<answer> 42 </answer>"
    built = build_tokenizer()
    for tokenizer in (load_tokenizer(ModelConfig(path="toy")), load_eval_tokenizer("toy")):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == built(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.padding_side == "left" and tokenizer.pad_token == tokenizer.eos_token
