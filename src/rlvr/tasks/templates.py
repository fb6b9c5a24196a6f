"""Prompt templates: how a problem's question becomes the text the model continues.

A template renders either a plain string (``r1_zero``, ``plain``) or chat messages, which the
tokenizer's own chat template turns into text (``qwen_boxed``, ``chat``, ``r1_chat``). It also says
where the answer goes (``answer_slot``), which is what the graders' strict mode reads.

* ``r1_zero``: the DeepSeek-R1-Zero training template (DeepSeek-R1, arXiv 2501.12948, Table 1),
  ending with ``Assistant: <think>`` so that generation starts inside the reasoning block, as in the
  R1-Zero reproductions. Answer slot: ``<answer>...</answer>``.
* ``qwen_boxed``: the Qwen2.5-Math chain-of-thought instruction as a system message, "Please reason
  step by step, and put your final answer within \\boxed{}." (Qwen2.5-Math report, arXiv 2409.12122).
  Answer slot: the last ``\\boxed{}``.
* ``r1_chat``: the R1 instruction as a system message, for chat models. Answer slot: ``<answer>``.
* ``chat``: the question alone as a user message. Answer slot: none (the grader looks anywhere).
* ``plain``: the question alone, as text.
* ``r1``: another name for ``r1_zero``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rlvr.errors import ConfigError
from rlvr.registry import Registry

Messages = list[dict[str, str]]
AnswerSlot = Literal["answer_tag", "boxed", "none"]

R1_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>."
)
QWEN_BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Template:
    name: str
    kind: Literal["text", "chat"]
    answer_slot: AnswerSlot
    think_opened: bool
    """True when the prompt itself opens the ``<think>`` block (the completion starts inside it)."""
    system: str | None = None
    prefix: str = ""
    suffix: str = ""

    def render(self, question: str) -> str | Messages:
        """The prompt for ``question``: a string (text templates) or chat messages."""
        if self.kind == "text":
            return f"{self.prefix}{question}{self.suffix}"
        messages: Messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": question})
        return messages


TEMPLATES: Registry[Template] = Registry("prompt template")
for _t in (
    Template(
        "r1_zero", "text", "answer_tag", True, prefix=f"{R1_INSTRUCTION} User: ", suffix=" Assistant: <think>"
    ),
    Template(
        "r1", "text", "answer_tag", True, prefix=f"{R1_INSTRUCTION} User: ", suffix=" Assistant: <think>"
    ),
    Template("r1_chat", "chat", "answer_tag", False, system=R1_INSTRUCTION),
    Template("qwen_boxed", "chat", "boxed", False, system=QWEN_BOXED_INSTRUCTION),
    Template("chat", "chat", "none", False),
    Template("plain", "text", "none", False),
):
    TEMPLATES.register(_t.name)(_t)


def stop_strings_for(template: str | Template) -> tuple[str, ...]:
    """Generation stops at ``</answer>`` for templates whose answer goes in the answer tag."""
    t = TEMPLATES.get(template) if isinstance(template, str) else template
    return ("</answer>",) if t.answer_slot == "answer_tag" else ()


def render_prompt(template: str | Template, question: str, tokenizer: Any = None) -> str:
    """The prompt text for ``question``; chat templates go through ``tokenizer.apply_chat_template``."""
    t = TEMPLATES.get(template) if isinstance(template, str) else template
    rendered = t.render(question)
    if isinstance(rendered, str):
        return rendered
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"prompt template '{t.name}' is a chat template and needs a tokenizer with a chat template; "
            "use 'r1_zero' or 'plain' for a base model without one"
        )
    return tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
