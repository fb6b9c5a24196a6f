"""A character-level tokenizer in Hugging Face format, built from nothing.

Every character of :data:`CHARACTERS` is one token; the R1 tags (``<think>``, ``</think>``,
``<answer>``, ``</answer>``) are single tokens too, so a completion in the R1 format costs a tiny
model few steps. ``<|endoftext|>`` is the end-of-sequence and padding token. Decoding joins the
pieces with nothing in between, so ``decode(encode(text)) == text`` for any text over the alphabet.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
UNK = "<unk>"
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
CHARACTERS = string.digits + "+-*/=()., :?\n" + string.ascii_letters


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The toy tokenizer: specials, then the R1 tags, then one token per character."""
    vocab = {tok: i for i, tok in enumerate([EOS, UNK, *TAGS, *CHARACTERS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([EOS, UNK])
    core.add_tokens(list(TAGS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, pad_token=EOS, unk_token=UNK, padding_side="left"
    )
