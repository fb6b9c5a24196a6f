"""Supervised fine-tuning data: rows -> token ids with a target mask -> padded or packed micro-batches.

The path of one example::

    row (JSONL / JSON / Parquet)      {"prompt": ..., "completion": ...}  or  {"messages": [...]}
      -> SFTExample                   checked fields, located by file:line
      -> TokenizedExample             input_ids [L] and target_mask [L]: True on completion tokens
      -> SFTMicroBatch                input_ids, targets, loss_mask [b, T] (+ the attention layout)
      -> sft_loss                     NLL of the target tokens / the global target count

**Which tokens are trained.** Only what the model should learn to write: a completion and its end
(EOS for base models, the end-of-turn token for chat models). Base models: the prompt is rendered
with an rlvr template (:func:`~rlvr.tasks.templates.render_prompt`, tokenized as the rollout does),
the completion follows, then EOS. Chat models: the tokenizer's chat template renders the whole
conversation, and every assistant turn is trained (:func:`assistant_char_spans`).

**Batches.** Padded micro-batches sort the examples by length and fill each up to a token budget,
as :func:`rlvr.training.batch.micro_batches` does for rollouts. Packed micro-batches concatenate
whole examples into one row of at most the budget; positions restart at 0 for every example and a
4-D block-diagonal causal mask (:func:`packed_attention_mask`) lets a token see only earlier tokens
of its own example, so a packed row computes exactly what its examples would compute alone.

**Sums, not means.** The loss of a micro-batch is its target tokens' NLL summed and divided by the
target count of the whole optimizer step (all micro-batches and ranks), so the micro-batch losses
add up to the loss of the step whatever the split (tests/training/test_sft_data.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from rlvr.algorithms.aggregation import aggregate
from rlvr.algorithms.checks import check_mask
from rlvr.algorithms.entropy import token_logprobs
from rlvr.algorithms.outputs import LossOutput
from rlvr.errors import ConfigError, DataError, UnknownNameError
from rlvr.tasks.loading import BadRow, get_field, iter_rows
from rlvr.tasks.templates import TEMPLATES, Messages, render_prompt
from rlvr.training.model import autocast_context
from rlvr.training.stage_run import shuffled_steps as shuffled_steps  # the order of a step's examples

SFTFormat = Literal["prompt_completion", "messages"]
TooLong = Literal["error", "drop"]


@dataclass(frozen=True)
class SFTDataSettings:
    """How SFT rows are read and tokenized."""

    format: SFTFormat = "prompt_completion"
    """``prompt_completion``: a prompt and a completion field per row; ``messages``: a chat
    conversation per row (a list of {role, content}), every assistant turn trained."""
    prompt: str = "prompt"
    """Field of the prompt (dotted names reach into nested objects, as in task field maps)."""
    completion: str = "completion"
    """Field of the completion, the text the model learns to write after the prompt."""
    messages: str = "messages"
    """Field of the conversation (format ``messages``)."""
    template: str = "plain"
    """Prompt template of prompt/completion rows: a text template (``plain``, ``r1_zero``) for base
    models, or a chat template (``chat``, ``qwen_boxed``, ``r1_chat``) that puts the prompt in a
    user message and the completion in the assistant's answer."""
    max_tokens: int = 2048
    """Most tokens of one tokenized example (prompt and completion together)."""
    too_long: TooLong = "error"
    """An example over ``max_tokens``: ``error`` names it; ``drop`` leaves it out and counts it."""
    skip_bad_rows: bool = False
    """Skip rows that cannot be read or tokenized (listed in ``SFTDataset.skipped``) instead of failing."""

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise ConfigError(
                f"setting 'max_tokens' must be at least 2 (a prompt and a target), got {self.max_tokens}"
            )
        try:
            TEMPLATES.get(self.template)
        except UnknownNameError as e:
            raise ConfigError(f"setting 'template': {e}") from None


@dataclass(frozen=True)
class SFTExample:
    """One row, checked: a prompt/completion pair, or a conversation (``messages`` not None)."""

    where: str
    """'file:line' (JSONL) or 'file:row N' (JSON, Parquet)."""
    prompt: str = ""
    completion: str = ""
    messages: Messages | None = None


@dataclass(frozen=True)
class TokenizedExample:
    where: str
    input_ids: tuple[int, ...]  # [L]
    target_mask: tuple[bool, ...]  # [L] True: a completion (assistant) token the loss is on

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        """Trained tokens; the first token is never one (no position predicts it)."""
        return sum(self.target_mask[1:])


@dataclass
class SFTDataset:
    examples: list[TokenizedExample]
    skipped: list[str] = field(default_factory=list)
    """One message per row skipped as bad (file, line, field, reason)."""
    dropped: list[str] = field(default_factory=list)
    """One message per example left out for being longer than ``max_tokens``."""


# ---------------------------------------------------------------------------------------- reading


def _text(row: Any, name: str, where: str) -> str:
    value = get_field(row, name, where)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{name}' must be a non-empty string, got {value!r:.80}")
    return value


def _messages(row: Any, name: str, where: str) -> Messages:
    """The conversation of a row: a list of {role, content} with at least one assistant turn,
    which is not the first message (its prompt would be empty)."""
    value = get_field(row, name, where)
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{name}' must be a non-empty list of messages, got {value!r:.80}")
    out: Messages = []
    for i, message in enumerate(value):
        item = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{where}: field '{item}' must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise DataError(f"{where}: field '{item}.role' must be a non-empty string, got {role!r:.80}")
        if not isinstance(content, str) or (role == "assistant" and not content.strip()):
            raise DataError(
                f"{where}: field '{item}.content' must be a string (non-empty for the assistant), "
                f"got {content!r:.80}"
            )
        out.append(dict(message))
    roles = [m["role"] for m in out]
    if "assistant" not in roles:
        raise DataError(f"{where}: field '{name}' has no assistant message, so nothing to train on")
    if roles[0] == "assistant":
        raise DataError(
            f"{where}: field '{name}[0]' is an assistant message; a conversation starts with a prompt"
        )
    return out


def example_from_row(row: Any, where: str, settings: SFTDataSettings) -> SFTExample:
    """Check one row; a DataError names the file, line and field."""
    if settings.format == "messages":
        return SFTExample(where, messages=_messages(row, settings.messages, where))
    return SFTExample(
        where,
        prompt=_text(row, settings.prompt, where),
        completion=_text(row, settings.completion, where),
    )


def read_sft_examples(
    path: str | Path, settings: SFTDataSettings, *, prefix: str = ""
) -> tuple[list[SFTExample], list[str]]:
    """Every row of ``path`` (.jsonl, .json, .parquet) checked, and the messages of rows skipped.

    Reading follows the task loader: bytes that are not UTF-8, a line that is not JSON, a missing or
    ill-typed field are DataErrors naming the file, line and field, with a hint naming the setting
    ``{prefix}skip_bad_rows`` (``prefix``: where the stage's config keeps these settings, such as
    ``data.``); with ``settings.skip_bad_rows`` such rows are skipped and listed instead. A file
    with no rows, or none left, is a DataError.
    """
    examples: list[SFTExample] = []
    skipped: list[str] = []
    rows = 0
    for where, row in iter_rows(path):
        rows += 1
        try:
            if isinstance(row, BadRow):
                raise DataError(row.message)
            examples.append(example_from_row(row, where, settings))
        except DataError as e:
            if not settings.skip_bad_rows:
                raise DataError(f"{e} (set {prefix}skip_bad_rows=true to skip such rows)") from None
            skipped.append(str(e))
    if rows == 0:
        raise DataError(f"{path}: the file holds no rows")
    if not examples:
        raise DataError(f"{path}: no examples left of its {rows} rows (all skipped); first: {skipped[0]}")
    return examples, skipped


# ------------------------------------------------------------------------------------- tokenizing


def _ids(tokenizer: Any, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def tokenize_completion(prompt_text: str, completion: str, tokenizer: Any) -> tuple[list[int], list[bool]]:
    """Base models: the prompt's ids (with the tokenizer's special tokens, as the rollout encodes a
    text prompt), the completion's ids, then EOS (unless the completion already ends with it).

    Prompt and completion are tokenized apart, so the ids are those the model sees when it
    generates the completion after the prompt. Targets: the completion and EOS.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token, so an SFT completion cannot be ended")
    prompt_ids = _ids(tokenizer, prompt_text, add_special_tokens=True)
    completion_ids = _ids(tokenizer, completion)
    if not completion_ids or completion_ids[-1] != eos:
        completion_ids.append(eos)
    return prompt_ids + completion_ids, [False] * len(prompt_ids) + [True] * len(completion_ids)


def _render(tokenizer: Any, messages: Messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_char_spans(
    messages: Messages, tokenizer: Any, where: str = ""
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation rendered by the tokenizer's chat template, and the [start, end) character
    span of every assistant turn: its content and end-of-turn text, not its header.

    Found by rendering the conversation prefix by prefix (the prefix property). For assistant turn
    i, the messages before it rendered with the generation prompt end where the turn's content
    starts; the messages through it end after its end-of-turn text; and each rendering must be a
    prefix of the next and of the whole conversation. A template that rewrites earlier turns (one
    that drops the reasoning of past assistant turns, say) breaks this and is a DataError naming
    the turn: the turn would be trained on text the template never shows. Where the generation
    prompt is not a prefix of the turn (one that opens a ``<think>`` block the content lacks), the
    turn starts after the messages before it without the generation prompt, so its header is
    trained too. Whitespace after the end-of-turn text (the newline a template writes after an
    end-of-turn token, which generation never produces) is not in the span.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{where}: chat messages need a tokenizer with a chat template (this one has none); "
            "use prompt/completion rows with a text template for a base model"
        )
    text = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        through = _render(tokenizer, messages[: i + 1], False)
        before = _render(tokenizer, messages[:i], True)
        if not through.startswith(before):
            before = _render(tokenizer, messages[:i], False)
        if not (text.startswith(through) and through.startswith(before)) or len(before) == len(through):
            raise DataError(
                f"{where}: the chat template renders assistant turn messages[{i}] differently once later "
                "messages follow (it rewrites earlier turns), so its tokens cannot be found; use a "
                "template that keeps past turns as they are, or one conversation per final turn"
            )
        turn = through[len(before) :]
        spans.append((len(before), len(before) + len(turn.rstrip() or turn)))
    return text, spans


def tokenize_messages(messages: Messages, tokenizer: Any, where: str = "") -> tuple[list[int], list[bool]]:
    """Chat models: the conversation's ids (tokenized whole, as it is when it is the context of a
    later turn) and a target mask True on every token that overlaps an assistant span of
    :func:`assistant_char_spans`; nothing after the last assistant turn is kept.

    Tokens are matched to characters through the tokenizer's offsets, so a token that merges the
    end of a header with the start of the content (a newline after a newline, say) is trained
    with the content instead of breaking the match. Needs a fast (Rust) tokenizer.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{where}: chat messages need a fast tokenizer (for character offsets)")
    text, spans = assistant_char_spans(messages, tokenizer, where)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    mask = [any(s < end and e > start for start, end in spans) for s, e in offsets]
    if not any(mask):
        raise DataError(f"{where}: no token of the tokenized conversation falls in an assistant turn")
    keep = max(j for j, m in enumerate(mask) if m) + 1
    return ids[:keep], mask[:keep]


def tokenize_example(example: SFTExample, tokenizer: Any, template: str) -> TokenizedExample:
    """Token ids and target mask of one example (see the module doc for which tokens are trained).

    Prompt/completion pairs go through ``template``: a text template renders the prompt for a base
    model; a chat template puts the prompt in a user message (after its system message, if any)
    and the completion in the assistant turn, rendered by the tokenizer's chat template.
    """
    if example.messages is not None:
        ids, mask = tokenize_messages(example.messages, tokenizer, example.where)
    elif TEMPLATES.get(template).kind == "text":
        ids, mask = tokenize_completion(
            render_prompt(template, example.prompt), example.completion, tokenizer
        )
    else:
        messages = TEMPLATES.get(template).render(example.prompt)
        assert isinstance(messages, list)
        messages = [*messages, {"role": "assistant", "content": example.completion}]
        ids, mask = tokenize_messages(messages, tokenizer, example.where)
    mask[0] = False  # nothing predicts the first token
    return TokenizedExample(example.where, tuple(ids), tuple(mask))


def tokenize_examples(
    examples: Sequence[SFTExample],
    tokenizer: Any,
    settings: SFTDataSettings,
    *,
    prefix: str = "",
) -> SFTDataset:
    """Tokenize ``examples`` and apply ``settings.max_tokens``.

    An example over the limit is a DataError naming its row (``too_long: error``) or is left out
    and listed in ``dropped`` (``too_long: drop``). An example the chat template cannot render is a
    bad row (skipped with ``skip_bad_rows``). Error hints name the settings as ``{prefix}max_tokens``.
    """
    from jinja2 import TemplateError

    out = SFTDataset([])
    for example in examples:
        try:
            try:
                tokenized = tokenize_example(example, tokenizer, settings.template)
            except TemplateError as e:  # a chat template that refuses a role or an order of roles
                raise DataError(f"{example.where}: the chat template cannot render this row ({e})") from None
        except DataError as e:
            if not settings.skip_bad_rows:
                raise DataError(f"{e} (set {prefix}skip_bad_rows=true to skip such rows)") from None
            out.skipped.append(str(e))
            continue
        if tokenized.length > settings.max_tokens:
            limit = f"{prefix}max_tokens = {settings.max_tokens}"
            message = f"{example.where}: {tokenized.length} tokens, more than {limit}"
            if settings.too_long == "error":
                raise DataError(
                    f"{message}; raise it, or set {prefix}too_long=drop to leave such examples out"
                )
            out.dropped.append(message)
            continue
        out.examples.append(tokenized)
    if not out.examples:
        raise DataError(
            f"no SFT examples left of {len(examples)} ({len(out.skipped)} bad, {len(out.dropped)} too long)"
        )
    return out


def load_sft_dataset(
    path: str | Path, settings: SFTDataSettings, tokenizer: Any, *, prefix: str = ""
) -> SFTDataset:
    """:func:`read_sft_examples` then :func:`tokenize_examples`: the training examples of a file.
    Bad rows are reported before anything is tokenized."""
    examples, skipped = read_sft_examples(path, settings, prefix=prefix)
    dataset = tokenize_examples(examples, tokenizer, settings, prefix=prefix)
    dataset.skipped[:0] = skipped
    return dataset


# ---------------------------------------------------------------------------------------- batches


@dataclass
class SFTMicroBatch:
    """Examples ``rows`` in one forward pass, padded or packed.

    ``targets[:, t]`` is the token position t predicts (``input_ids`` shifted left by one), and
    ``loss_mask[:, t]`` says whether that prediction is trained, so ``logits`` [b, T, V] pair with
    ``targets`` without a shift. ``segment_ids`` is None for padded rows (``attention`` is the 2-D
    padding mask); for packed rows it numbers the examples of each row (-1 on padding) and the
    model gets the 4-D mask :func:`packed_attention_mask` builds from it.
    """

    rows: list[int]  # the examples, in the order they are laid out
    input_ids: torch.Tensor  # [b, T] long
    targets: torch.Tensor  # [b, T] long: input_ids[:, t + 1] (the pad id past each example's end)
    loss_mask: torch.Tensor  # [b, T] bool
    position_ids: torch.Tensor  # [b, T] long: restart at 0 for every example
    attention: torch.Tensor  # [b, T] long: 1 on real tokens
    segment_ids: torch.Tensor | None = None  # [b, T] long for packed rows

    @property
    def num_targets(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def num_tokens(self) -> int:
        """Tokens in the forward pass, padding included."""
        return self.input_ids.numel()


def _layout(
    examples: Sequence[TokenizedExample], lines: list[list[int]], pad_id: int, packed: bool
) -> SFTMicroBatch:
    """Lay out ``lines`` (each a list of example indices sharing one row) into [b, T] tensors."""
    width = max(sum(examples[r].length for r in line) for line in lines)
    shape = (len(lines), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, pad_id, dtype=torch.long)
    loss_mask = torch.zeros(shape, dtype=torch.bool)
    positions = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    for b, line in enumerate(lines):
        offset = 0
        for s, r in enumerate(line):
            ex = examples[r]
            n = ex.length
            span = slice(offset, offset + n)
            ids[b, span] = torch.tensor(ex.input_ids)
            targets[b, offset : offset + n - 1] = torch.tensor(ex.input_ids[1:], dtype=torch.long)
            loss_mask[b, offset : offset + n - 1] = torch.tensor(ex.target_mask[1:], dtype=torch.bool)
            positions[b, span] = torch.arange(n)
            segments[b, span] = s
            offset += n
    return SFTMicroBatch(
        rows=[r for line in lines for r in line],
        input_ids=ids,
        targets=targets,
        loss_mask=loss_mask,
        position_ids=positions,
        attention=(segments >= 0).long(),
        segment_ids=segments if packed else None,
    )


def padded_micro_batches(
    examples: Sequence[TokenizedExample], rows: Sequence[int], max_tokens: int, pad_id: int
) -> list[SFTMicroBatch]:
    """Split ``rows`` into right-padded micro-batches of at most ``max_tokens`` tokens (rows x width).

    Examples are sorted by length (then index, so the split is a function of ``rows`` alone) and a
    micro-batch is filled while its padded size stays within the budget: similar lengths share a
    micro-batch and little compute goes to padding. An example longer than ``max_tokens`` still
    gets a micro-batch of its own.
    """
    order = sorted(rows, key=lambda r: (examples[r].length, r))
    chunks: list[list[int]] = []
    for r in order:
        # Sorted ascending, so the newest example is the widest of its chunk.
        if chunks and (len(chunks[-1]) + 1) * examples[r].length <= max_tokens:
            chunks[-1].append(r)
        else:
            chunks.append([r])
    return [_layout(examples, [[r] for r in chunk], pad_id, packed=False) for chunk in chunks]


def pad_rows(examples: Sequence[TokenizedExample], rows: Sequence[int], pad_id: int) -> SFTMicroBatch:
    """One right-padded micro-batch of ``rows``, in the order given (no sorting, no budget)."""
    return _layout(examples, [[r] for r in rows], pad_id, packed=False)


def pack_rows(lengths: Sequence[int], rows: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of ``rows`` whose ``lengths`` sum to at most ``capacity``: first fit, longest first.

    Deterministic (ties by index). An example longer than ``capacity`` gets a bin of its own.
    First-fit decreasing uses at most 11/9 of the fewest bins possible (plus one).
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for r in sorted(rows, key=lambda r: (-lengths[r], r)):
        fit = next((i for i, free in enumerate(room) if lengths[r] <= free), None)
        if fit is None:
            bins.append([r])
            room.append(capacity - lengths[r])
        else:
            bins[fit].append(r)
            room[fit] -= lengths[r]
    return bins


def packed_micro_batches(
    examples: Sequence[TokenizedExample], rows: Sequence[int], max_tokens: int, pad_id: int
) -> list[SFTMicroBatch]:
    """Pack ``rows`` into rows of at most ``max_tokens`` tokens, one packed row per micro-batch.

    Each packed row holds whole examples back to back, with no padding; position ids restart at
    0 for each, and the forward pass gets the block-diagonal causal mask of
    :func:`packed_attention_mask`, so every example is computed as if alone.
    """
    lengths = [ex.length for ex in examples]
    return [_layout(examples, [line], pad_id, packed=True) for line in pack_rows(lengths, rows, max_tokens)]


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive 4-D mask [b, 1, T, T] of packed rows: 0 where query t may attend key s (same
    segment and s <= t), -inf elsewhere.

    ``segment_ids`` [b, T] numbers the examples of each row; padding (-1) attends only to padding
    before it, so every query has a finite entry (its own key) and softmax never sees a row of
    -inf. ``dtype`` is the attention's compute dtype (SDPA wants the query's dtype).

    transformers (5.x) passes a 4-D ``attention_mask`` to the attention functions as it is: SDPA
    uses it as ``attn_mask`` and eager attention adds it to the scores; both mask exactly. Flash
    attention 2 does not take a 4-D mask. Size: b * T * T elements, 64 MiB at T = 4096 in float32.

    >>> packed_attention_mask(torch.tensor([[0, 0, 1]]), torch.float32)[0, 0]
    tensor([[0., -inf, -inf],
            [0., 0., -inf],
            [-inf, -inf, 0.]])
    """
    T = segment_ids.shape[1]
    causal = torch.ones((T, T), dtype=torch.bool, device=segment_ids.device).tril()  # [T, T]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [b, T, T]: query, key
    allowed = (same & causal)[:, None]  # [b, 1, T, T]
    zero = torch.zeros((), dtype=dtype, device=segment_ids.device)
    return torch.where(allowed, zero, torch.tensor(float("-inf"), dtype=dtype, device=segment_ids.device))


def count_targets(examples: Sequence[TokenizedExample], rows: Sequence[int]) -> int:
    """Trained tokens of ``rows``: the loss denominator of a step (sum it over ranks)."""
    return sum(examples[r].num_targets for r in rows)


# ------------------------------------------------------------------------------------------- loss


def sft_logits(model: Any, mb: SFTMicroBatch, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits [b, T, V] of a micro-batch (float32 under autocast); packed rows get their 4-D mask in
    the dtype the attention computes in."""
    device = mb.input_ids.device
    attention = mb.attention
    if mb.segment_ids is not None:
        dtype = autocast_dtype or next(model.parameters()).dtype
        attention = packed_attention_mask(mb.segment_ids, dtype)
    with autocast_context(device, autocast_dtype):
        out = model(
            input_ids=mb.input_ids, attention_mask=attention, position_ids=mb.position_ids, use_cache=False
        )
    return out.logits.float() if autocast_dtype is not None else out.logits


def sft_loss(
    *,
    logits: torch.Tensor | None = None,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    logprobs: torch.Tensor | None = None,
) -> LossOutput:
    """Token-mean NLL of the trained tokens::

        L = - 1 / N_tok * sum_{b,t} m_bt log pi(targets_bt | tokens of the example before t + 1)

    ``logits`` [b, T, V] predict ``targets`` [b, T] position by position (no shift here: the
    micro-batch already holds the shifted targets), ``loss_mask`` [b, T] marks trained predictions.
    Instead of ``logits``, ``logprobs`` [b, T] may give log pi(targets) directly (the stages pass
    :func:`rlvr.training.stage_run.target_logprobs`, which never builds the logits).
    ``num_tokens`` is N_tok, the trained tokens of the whole optimizer step summed over micro-batches
    and ranks (:func:`count_targets`), so the micro-batch losses add up to the step's loss; None
    counts this micro-batch's. Prompt positions are excluded with ``torch.where``: no value there,
    not even -inf, reaches the loss or its gradient. Conventions as in
    :func:`rlvr.algorithms.lm_loss.positive_lm_loss`.

    Worked example: one row whose trained positions have log-probs (-1, -3), its other positions
    anything: L = (1 + 3) / 2 = 2.

    Metrics: ``sft/nll`` (this micro-batch's share of the loss) and ``sft/tokens`` (its trained tokens).
    """
    mask = check_mask(loss_mask, "loss_mask", tuple(targets.shape)).bool()
    if (logits is None) == (logprobs is None):
        raise ValueError("sft_loss takes one of logits [b, T, V] and logprobs [b, T]")
    if logprobs is None:
        logprobs = token_logprobs(logits, targets)  # [b, T]
    elif tuple(logprobs.shape) != tuple(targets.shape):
        raise ValueError(f"logprobs has shape {tuple(logprobs.shape)}, targets {tuple(targets.shape)}")
    nll = torch.where(mask, -logprobs, torch.zeros_like(logprobs))
    loss = aggregate(nll, mask, "token-mean", num_tokens=num_tokens)
    return LossOutput(loss=loss, metrics={"sft/nll": loss.detach(), "sft/tokens": mask.sum().double()})
