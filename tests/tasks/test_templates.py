import pytest

from rlvr.errors import ConfigError, UnknownNameError
from rlvr.tasks.templates import TEMPLATES, render_prompt


def test_r1_zero_opens_the_think_block_and_asks_for_answer_tags():
    prompt = render_prompt("r1_zero", "What is 2+3?")
    assert prompt.endswith("User: What is 2+3? Assistant: <think>")
    assert "<answer> answer here </answer>" in prompt
    t = TEMPLATES.get("r1_zero")
    assert t.answer_slot == "answer_tag" and t.think_opened


def test_chat_templates_render_messages_and_need_a_tokenizer():
    msgs = TEMPLATES.get("qwen_boxed").render("1+1?")
    assert msgs[0]["role"] == "system" and "\\boxed{}" in msgs[0]["content"]
    assert msgs[1] == {"role": "user", "content": "1+1?"}
    with pytest.raises(ConfigError, match="needs a tokenizer with a chat template"):
        render_prompt("qwen_boxed", "1+1?")


def test_chat_template_goes_through_the_tokenizer():
    class Tok:  # the smallest object with the tokenizer's chat-template interface
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"

    assert render_prompt("chat", "hi", Tok()) == "user:hi|assistant:"


def test_unknown_template_lists_valid_names():
    with pytest.raises(UnknownNameError, match="did you mean 'r1_zero'"):
        render_prompt("r1-zero", "q")
