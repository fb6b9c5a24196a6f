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

A chat template that rewrites earlier turns when a message is added (the reasoning of past turns
dropped, as DeepSeek-R1's template does always and Qwen3's before a new user message) cannot be
continued token for token: the context the template shows the model at turn k is not the token
stream so far. :meth:`ChatFormat.rewrites` says so for an observation role (read once from the
template: an assistant message with a ``<think>`` block must render verbatim, and adding the
observation must only append). The rollout then renders the whole conversation again before each
turn (:meth:`ChatFormat.conversation_ids`) and samples the turn from that rendering, and the
trajectory is trained as one row per turn (:class:`rlvr.rollout.multi_turn.Segment`): the rendering
the turn was sampled from, then the turn's tokens as sampled.
"""

from __future__ import annotations

from typing import Any

from rlvr.errors import ConfigError

_ASSISTANT_MARK = "\u2063ASSISTANT\u2063"
_REASONING = "<think>\nreasoning\n</think>\n\n"
_OBS_MARK = "\u2063OBSERVATION\u2063"


def _messages(observation: Any) -> list[dict[str, str]]:
    if isinstance(observation, str):
        return [{"role": "user", "content": observation}]
    return [dict(m) for m in observation]


class PlainFormat:
    """Text in, text appended: for base models."""

    kind = "plain"

    def rewrites(self, role: str) -> bool:
        """Plain text is only ever appended to."""
        return False

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
        self._rewrites: dict[str, bool] = {}
        self._roles: dict[str, str] = {}
        self.eos_text = tokenizer.eos_token or ""

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def pieces(self, role: str) -> tuple[str, str, str]:
        """(closing of an assistant message, text before an observation, text after it) for ``role``."""
        if self.rewrites(role):
            raise ConfigError(
                f"the chat template rewrites earlier turns when a '{role}' message is added: the trajectory "
                "is rendered anew each turn, not continued with observation pieces"
            )
        return self._pieces[role]

    def rewrites(self, role: str) -> bool:
        """Whether the template renders the turns before an observation of ``role`` differently once
        it is added (or an assistant message other than verbatim): the trajectory is then rendered
        anew before each turn."""
        if role not in self._rewrites:
            self._read_template(role)
        return self._rewrites[role]

    def _read_template(self, role: str) -> None:
        assistant = _REASONING + _ASSISTANT_MARK
        base = [{"role": "user", "content": "question"}, {"role": "assistant", "content": assistant}]
        first = self._render(base, False)
        if _ASSISTANT_MARK not in first:
            raise ConfigError(
                "the tokenizer's chat template does not render the content of assistant messages"
            )
        closing = first[first.index(_ASSISTANT_MARK) + len(_ASSISTANT_MARK) :]
        for candidate in (role, "user") if role != "user" else ("user",):
            try:
                second = self._render([*base, {"role": candidate, "content": _OBS_MARK}], True)
            except Exception:  # a template that refuses the role raises
                continue
            if _OBS_MARK not in second:
                continue
            self._roles[role] = candidate
            appends = assistant in first and second.startswith(first)
            self._rewrites[role] = not appends
            if appends:
                before, after = second[len(first) :].split(_OBS_MARK)
                self._pieces[role] = (closing, before, after)
            return
        raise ConfigError(f"the tokenizer's chat template renders no '{role}' or 'user' message")

    def conversation_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The whole conversation rendered by the template with the generation prompt, as ids: the
        context of the next turn where the template rewrites earlier turns. An observation message
        takes the role the template renders (``tool``, else ``user``, as in :meth:`pieces`)."""
        rendered = []
        for m in messages:
            role = m["role"]
            if role not in ("system", "user", "assistant"):
                self.rewrites(role)
                role = self._roles[role]
            rendered.append({"role": role, "content": m["content"]})
        return list(self.tokenizer(self._render(rendered, True), add_special_tokens=False)["input_ids"])

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
