"""How turns become tokens: the first prompt, and the tokens an observation adds after a turn.

The trajectory is one token stream: the prompt, then each turn's sampled tokens exactly as sampled,
then each observation's tokens. Earlier turns are never re-rendered or re-tokenized, so the ids the
policy sampled are the ids trained on.

* :class:`PlainFormat` (base models): an observation's text is tokenized as it is and appended.
* :class:`ChatFormat` (models with a chat template): an observation becomes a message of the
  environment's role (``tool``, or ``user`` where the template has no tool role) rendered by the
  tokenizer's chat template, preceded by what the template closes an assistant message with (less
  the end-of-turn token when the policy sampled it) and followed by the opening of the next
  assistant message. These pieces are read once from the template by rendering marker messages.
  A template that rewrites earlier turns when a message is added (some drop the reasoning of past
  turns) cannot be continued token for token; it is refused with a ConfigError.
"""

from __future__ import annotations

from typing import Any

from rlvr.errors import ConfigError

_ASSISTANT_MARK = "\u2063ASSISTANT\u2063"
_OBS_MARK = "\u2063OBSERVATION\u2063"


def _messages(observation: Any) -> list[dict[str, str]]:
    if isinstance(observation, str):
        return [{"role": "user", "content": observation}]
    return [dict(m) for m in observation]


class PlainFormat:
    """Text in, text appended: for base models."""

    kind = "plain"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def prompt_ids(self, observation: Any) -> list[int]:
        """The first observation (text, or messages joined by blank lines) as the prompt's ids."""
        text = observation if isinstance(observation, str) else "\n\n".join(m["content"] for m in observation)
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def observation_ids(self, text: str, role: str, ended_with_eos: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


class ChatFormat:
    """The tokenizer's chat template, continued one message at a time."""

    kind = "chat"

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("env.format 'chat' needs a tokenizer with a chat template; use 'plain'")
        self.tokenizer = tokenizer
        self._pieces: dict[str, tuple[str, str, str]] = {}
        self.eos_text = tokenizer.eos_token or ""

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def pieces(self, role: str) -> tuple[str, str, str]:
        """(closing of an assistant message, text before an observation, text after it) for ``role``."""
        if role not in self._pieces:
            base = [
                {"role": "user", "content": "question"},
                {"role": "assistant", "content": _ASSISTANT_MARK},
            ]
            first = self._render(base, False)
            closing = first[first.index(_ASSISTANT_MARK) + len(_ASSISTANT_MARK) :]
            found = None
            for candidate in (role, "user") if role != "user" else ("user",):
                try:
                    second = self._render([*base, {"role": candidate, "content": _OBS_MARK}], True)
                except Exception:  # a template that refuses the role raises
                    continue
                if _OBS_MARK in second[len(first) :]:
                    if not second.startswith(first):
                        raise ConfigError(
                            "the tokenizer's chat template rewrites earlier turns when a message is added, so "
                            "a trajectory cannot be continued token for token; use env.format 'plain'"
                        )
                    before, after = second[len(first) :].split(_OBS_MARK)
                    found = (closing, before, after)
                    break
            if found is None:
                raise ConfigError(f"the tokenizer's chat template renders no '{role}' or 'user' message")
            self._pieces[role] = found
        return self._pieces[role]

    def prompt_ids(self, observation: Any) -> list[int]:
        text = self._render(_messages(observation), True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def observation_ids(self, text: str, role: str, ended_with_eos: bool) -> list[int]:
        closing, before, after = self.pieces(role)
        if ended_with_eos and self.eos_text and closing.startswith(self.eos_text):
            closing = closing[len(self.eos_text) :]  # the policy sampled the end-of-turn token itself
        return list(self.tokenizer(closing + before + text + after, add_special_tokens=False)["input_ids"])


def make_format(kind: str, tokenizer: Any, first_observation: Any = None) -> PlainFormat | ChatFormat:
    """``kind``: plain | chat | auto (chat when the first observation is messages and the tokenizer
    has a chat template)."""
    if kind == "plain":
        return PlainFormat(tokenizer)
    if kind == "chat":
        return ChatFormat(tokenizer)
    if kind != "auto":
        raise ConfigError(f"setting 'env.format' must be auto, chat or plain, got {kind!r}")
    if not isinstance(first_observation, str) and getattr(tokenizer, "chat_template", None):
        return ChatFormat(tokenizer)
    return PlainFormat(tokenizer)
