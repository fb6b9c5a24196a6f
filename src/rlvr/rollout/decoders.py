"""Forward passes over a KV cache for the rollout engine: the prefill of a batch of prompts, then
one new token per row at a time, with rows leaving the batch as their completions end, and (for
multi-turn rollouts) chunks of several tokens appended to some rows at once.

Two implementations with one interface (:class:`Decoder`):

* :class:`TransformersDecoder` calls the model's own ``forward`` with a ``DynamicCache``. It runs
  any transformers causal LM.
* :class:`LlamaFamilyDecoder` runs the layers of a Llama, Qwen2 or Qwen3 model itself, reading
  the weights of the model's modules (no copy), over a KV cache it holds in preallocated tensors.
  The arithmetic is the model's: the same projections, RMSNorm, rotary embedding (the model's own
  ``rotary_emb``), grouped-query attention by ``scaled_dot_product_attention`` with scale
  ``head_dim ** -0.5``, SwiGLU MLP. It skips what a general forward does on every call (mask
  construction, cache bookkeeping, attention dispatch, output objects): on the toy model a decode
  step of one row takes about 1.2 ms instead of 3 ms on one CPU core, and whole generation calls
  gain 6-19% (``benchmarks/RESULTS.md``), since larger batches are mostly real arithmetic. It
  agrees with the model's forward to float32 rounding (the tests compare logits, greedy tokens and
  logprobs). A projection or MLP that is not a plain ``torch.nn.Linear`` (a LoRA layer, for one) is
  called as a module, so adapters are applied.

:func:`make_decoder` picks one: ``"auto"`` the Llama-family decoder when
:func:`llama_family_unsupported` finds nothing against the model, else the transformers one.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from rlvr.errors import ConfigError

DecoderChoice = Literal["auto", "transformers"]
DECODER_CHOICES = ("auto", "transformers")
LLAMA_FAMILY = ("llama", "qwen2", "qwen3")
_RMS_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
_SILU = ("SiLU", "SiLUActivation")
_ROOM = 64  # cache positions added at a time when a cache runs out of room


class Decoder(Protocol):
    def prefill(
        self, input_ids: torch.Tensor, attention: torch.Tensor | None, positions: torch.Tensor
    ) -> torch.Tensor:
        """Encode left-padded prompts ``input_ids`` [P, T] (``attention`` [P, T]: 1 on real tokens,
        None when nothing is padded; ``positions`` [P, T]); logits of the last position [P, V]."""
        ...

    def repeat(self, n: int, room: int) -> None:
        """Repeat every row of the cache ``n`` times (row ``i`` becomes rows ``i*n .. i*n+n-1``);
        ``room``: the new positions expected."""
        ...

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the cache rows ``rows`` [A'] (ascending), in that order."""
        ...

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append one token per row (``tokens`` [A] at ``positions`` [A]); logits [A, V]."""
        ...

    def extend(self, chunks: list[list[int]], positions: torch.Tensor) -> torch.Tensor:
        """Append ``chunks[a]`` (one or more tokens; rows may differ in length) to row ``a``, its
        first token at ``positions[a]`` and the next ones after it; the logits of each row's last
        token [A, V] (no other position goes through the output projection)."""
        ...


def _causal_lm(model: Any) -> Any:
    """The transformers causal LM inside ``model`` (a peft wrapper gives its base model)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def llama_family_unsupported(model: Any) -> str | None:
    """Why :class:`LlamaFamilyDecoder` cannot run ``model``, or None when it can."""
    lm = _causal_lm(model)
    config = getattr(lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LLAMA_FAMILY:
        return f"model_type {model_type!r} is not one of {', '.join(LLAMA_FAMILY)}"
    inner = getattr(lm, "model", None)
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(inner, name):
            return f"the model has no model.{name}"
    if not hasattr(lm, "lm_head"):
        return "the model has no lm_head"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "some layers use sliding-window attention"
    if getattr(config, "use_sliding_window", False):
        return "use_sliding_window is set"
    if type(inner.norm).__name__ not in _RMS_NORMS:
        return f"model.norm is a {type(inner.norm).__name__}, not an RMSNorm of this family"
    for i, layer in enumerate(inner.layers):
        attn = getattr(layer, "self_attn", None)
        if not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")):
            return f"layer {i} has no self_attn with q/k/v/o projections"
        if abs(getattr(attn, "scaling", 0.0) - attn.head_dim**-0.5) > 1e-12:
            return f"layer {i} scales attention by {getattr(attn, 'scaling', None)}, not head_dim ** -0.5"
        if getattr(attn, "sliding_window", None) is not None:
            return f"layer {i} uses sliding-window attention"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            if type(getattr(layer, norm, None)).__name__ not in _RMS_NORMS:
                return f"layer {i}'s {norm} is not an RMSNorm of this family"
        if hasattr(attn, "q_norm") != hasattr(attn, "k_norm"):
            return f"layer {i} normalises only one of queries and keys"
        if not hasattr(layer, "mlp"):
            return f"layer {i} has no mlp"
    return None


def check_decoder_choice(choice: Any) -> None:
    """Raise :class:`ConfigError` unless ``choice`` is one of :data:`DECODER_CHOICES`."""
    if choice not in DECODER_CHOICES:
        raise ConfigError(f"decoder must be 'auto' or 'transformers', got {choice!r}")


def make_decoder(model: Any, choice: DecoderChoice = "auto") -> Decoder:
    """The decoder ``choice`` names for ``model`` (``"auto"``: the Llama-family one where it applies)."""
    check_decoder_choice(choice)
    if choice == "transformers":
        return TransformersDecoder(model)
    return TransformersDecoder(model) if llama_family_unsupported(model) else LlamaFamilyDecoder(model)


class TransformersDecoder:
    """The model's own forward over a transformers ``DynamicCache``: any causal LM."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: Any = None
        self.attention: torch.Tensor | None = None

    def prefill(
        self, input_ids: torch.Tensor, attention: torch.Tensor | None, positions: torch.Tensor
    ) -> torch.Tensor:
        self.cache, self.attention = DynamicCache(config=self.model.config), attention
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1, :]

    def repeat(self, n: int, room: int) -> None:
        self.cache.batch_repeat_interleave(n)
        if self.attention is not None:
            self.attention = self.attention.repeat_interleave(n, dim=0)

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        if self.attention is not None:
            self.attention = self.attention[rows]

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.attention is not None:
            self.attention = torch.cat([self.attention, self.attention.new_ones((len(tokens), 1))], dim=-1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.attention,
            position_ids=positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1, :]

    def extend(self, chunks: list[list[int]], positions: torch.Tensor) -> torch.Tensor:
        """One forward of the chunks left-padded to the longest: a ``DynamicCache`` grows by the same
        number of positions in every row, so a shorter chunk's padding stays in the cache as
        positions the attention mask hides, as a prompt's left padding does."""
        width = max(len(c) for c in chunks)
        if width == 1:
            return self.step(torch.tensor([c[0] for c in chunks], device=positions.device), positions)
        device = positions.device
        pad = [width - len(c) for c in chunks]
        input_ids = torch.tensor(
            [[c[0]] * p + list(c) for c, p in zip(chunks, pad, strict=True)], device=device
        )
        new = torch.tensor([[0] * p + [1] * (width - p) for p in pad], device=device)
        if self.attention is None:
            self.attention = new.new_ones((len(chunks), self.cache.get_seq_length()))
        self.attention = torch.cat([self.attention, new], dim=-1)
        offsets = torch.arange(width, device=device)[None, :] - torch.tensor(pad, device=device)[:, None]
        out = self.model(
            input_ids=input_ids,
            attention_mask=self.attention,
            position_ids=positions[:, None] + offsets.clamp(min=0),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1, :]


def _linear(module: Any, x: torch.Tensor) -> torch.Tensor:
    if type(module) is torch.nn.Linear:
        return F.linear(x, module.weight, module.bias)
    return module(x)  # a LoRA or otherwise wrapped layer applies itself


def _rms_norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    """The family's RMSNorm, y = w * x / sqrt(mean(x^2) + eps), in one fused call (float32 inside)."""
    dtype = x.dtype
    y = F.rms_norm(x.float(), x.shape[-1:], eps=module.variance_epsilon).to(dtype)
    return module.weight * y


def _mlp(module: Any, x: torch.Tensor) -> torch.Tensor:
    """SwiGLU, down(silu(gate(x)) * up(x)); a module of another kind is called as it is."""
    parts = (
        getattr(module, "gate_proj", None),
        getattr(module, "up_proj", None),
        getattr(module, "down_proj", None),
    )
    if (
        all(type(p) is torch.nn.Linear for p in parts)
        and type(getattr(module, "act_fn", None)).__name__ in _SILU
    ):
        gate, up, down = parts
        return F.linear(
            F.silu(F.linear(x, gate.weight, gate.bias)) * F.linear(x, up.weight, up.bias),
            down.weight,
            down.bias,
        )
    return module(x)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, x cos + rotate_half(x) sin (Su et al. 2021, arXiv:2104.09864, Eq. 34),
    with the halves convention of Llama and Qwen: rotate_half(x1, x2) = (-x2, x1)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class LlamaFamilyDecoder:
    """The layers of a Llama / Qwen2 / Qwen3 model run over a KV cache held in preallocated tensors.

    After :meth:`repeat`, each layer's keys and values live in a buffer ``[rows, kv_heads,
    capacity, head_dim]`` allocated once for the whole batch; the cache of the ``A`` active rows is
    its first ``A`` rows, positions ``[0, length)`` (every row has the same length: prompts are
    left-padded). Writing a new position is an in-place copy (transformers' ``DynamicCache``
    concatenates, copying the whole layer at every step). Dropping rows moves the kept ones to the
    front through a scratch tensor the size of one layer, so that decoding allocates no large
    tensor (on a CPU, fresh memory costs a page fault per 4 KiB on first touch, more than the copy
    itself). Memory: the cache at full capacity for every layer, plus that one-layer scratch (what
    ``rlvr plan`` counts). When a row is padded, ``key_mask`` [rows, capacity] marks its real
    positions and attention skips the others; with no padding no mask is built at all.

    :meth:`extend` appends chunks of unequal lengths (a multi-turn rollout's observations): from
    then on, until the rows are of one length again, each row has its own length (``lengths``
    [rows]; None while they are all ``length``). A row's new keys and values are written right
    after its own last position, so its cache has no gap; a shorter chunk is right-padded, and the
    padding's keys and values land past the row's end, where the mask (keys up to the query's own
    position) hides them and the row's next tokens overwrite them. Rows with one token and rows
    with a longer chunk go through separate forwards, so a row in mid-turn computes no padding.
    """

    def __init__(self, model: Any) -> None:
        reason = llama_family_unsupported(model)
        if reason is not None:
            raise ConfigError(f"this model cannot use the Llama-family decoder: {reason}")
        lm = _causal_lm(model)
        self.inner, self.head = lm.model, lm.lm_head
        self.layers = list(self.inner.layers)
        self.heads = lm.config.num_attention_heads
        self.kv_heads = getattr(lm.config, "num_key_value_heads", None) or self.heads
        self.keys: list[torch.Tensor] = []  # per layer [A, kv_heads, capacity or length, head_dim]
        self.values: list[torch.Tensor] = []
        self.key_mask: torch.Tensor | None = None  # [A, capacity or length] bool
        self.length = 0  # positions in use: those of every row, or of the longest (see lengths)
        self.lengths: torch.Tensor | None = None  # [A] long: each row's positions, when they differ
        self._buffers: list[torch.Tensor] = []  # keys then values of every layer, [rows, ...]
        self._scratch: dict[torch.dtype, torch.Tensor] = {}  # under autocast keys are float32, values not

    def prefill(
        self, input_ids: torch.Tensor, attention: torch.Tensor | None, positions: torch.Tensor
    ) -> torch.Tensor:
        width = input_ids.shape[1]
        self.keys, self.values, self.length, self.lengths = [], [], 0, None
        self._buffers, self._scratch = [], {}
        mask: torch.Tensor | None = None
        self.key_mask = None
        if attention is not None:
            self.key_mask = attention.bool()
            causal = torch.ones(width, width, dtype=torch.bool, device=input_ids.device).tril()
            # a padding query sees itself too, so that no row of the softmax is empty (its output is unused)
            mask = (causal & self.key_mask[:, None, None, :]) | torch.eye(
                width, dtype=torch.bool, device=input_ids.device
            )
        return self._forward(input_ids, positions, mask, causal=attention is None)

    @property
    def rows(self) -> int:
        """Rows of the cache: the sequences being decoded."""
        return self.keys[0].shape[0]

    def repeat(self, n: int, room: int) -> None:
        self._allocate(self.rows * n, self.length + room, lambda t: t.repeat_interleave(n, dim=0))

    def keep(self, rows: torch.Tensor) -> None:
        if not self._buffers:  # before repeat: the prefill's cache moves into buffers first
            self._allocate(self.rows, self.length, lambda t: t)
        count, length = len(rows), self.length
        caches = self.keys + self.values
        for i, (cache, buffer) in enumerate(zip(caches, self._buffers, strict=True)):
            heads, dim = cache.shape[1], cache.shape[3]
            moved = self._scratch[cache.dtype][: count * heads * length * dim].view(count, heads, length, dim)
            torch.index_select(cache[:, :, :length], 0, rows, out=moved)
            buffer[:count, :, :length] = moved
            caches[i] = buffer[:count]
        half = len(caches) // 2
        self.keys, self.values = caches[:half], caches[half:]
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, rows)
        if self.lengths is not None:
            self._set_lengths(self.lengths.index_select(0, rows))

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if not self._buffers or self.length + 1 > self.keys[0].shape[2]:
            self._allocate(self.rows, self.length + _ROOM, lambda t: t)
        if self.lengths is not None:
            ones = torch.ones_like(self.lengths)
            logits, lengths = self._append(None, tokens[:, None], positions[:, None], self.lengths, ones)
            self._set_lengths(lengths)
            return logits
        mask = None if self.key_mask is None else self.key_mask[:, None, None, : self.length + 1]
        return self._forward(tokens[:, None], positions[:, None], mask, causal=False)

    def extend(self, chunks: list[list[int]], positions: torch.Tensor) -> torch.Tensor:
        device = positions.device
        width = max(len(c) for c in chunks)
        if width == 1:
            return self.step(torch.tensor([c[0] for c in chunks], device=device), positions)
        if not self._buffers or self.length + width > self.keys[0].shape[2]:
            self._allocate(self.rows, self.length + width + _ROOM, lambda t: t)
        if self.lengths is None:  # rows of unequal lengths from now on
            for buffer in self._buffers:  # past the end: zeros, never uninitialised memory (NaN)
                buffer[:, :, self.length :].zero_()
            self.lengths = torch.full((self.rows,), self.length, dtype=torch.long, device=device)
        counts = torch.tensor([len(c) for c in chunks], device=device)
        longer = [a for a, c in enumerate(chunks) if len(c) > 1]
        single = [a for a, c in enumerate(chunks) if len(c) == 1]
        lengths, out = self.lengths, None
        for group, w in ((longer, width), (single, 1)):  # the two groups touch disjoint rows
            if not group:
                continue
            index = torch.tensor(group, device=device)
            rows = None if len(group) == len(chunks) else index
            ids = torch.tensor(
                [chunks[a] + [chunks[a][-1]] * (w - len(chunks[a])) for a in group], device=device
            )
            count = counts[index]
            offsets = torch.minimum(torch.arange(w, device=device)[None, :], (count - 1)[:, None])
            starts = self.lengths if rows is None else self.lengths.index_select(0, rows)
            logits, grown = self._append(rows, ids, positions[index][:, None] + offsets, starts, count)
            lengths = grown if rows is None else lengths.index_copy(0, rows, grown)
            if out is None:
                out = logits.new_empty((len(chunks), logits.shape[-1]))
            out[index] = logits
        assert out is not None
        self._set_lengths(lengths)
        return out

    def _append(
        self,
        rows: torch.Tensor | None,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        starts: torch.Tensor,
        counts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``input_ids`` [R, W] (row ``r``'s first ``counts[r]`` tokens are real, the rest
        padding) into cache rows ``rows`` [R] (None: every row) from position ``starts[r]`` on; the
        logits of each row's last real token [R, V] and the rows' new lengths [R]. The buffers have
        room for ``max(starts) + W``; the caller records the lengths."""
        width = input_ids.shape[1]
        slots = starts[:, None] + torch.arange(width, device=starts.device)  # [R, W]
        end = int(starts.max()) + width
        # a query sees its row's keys up to its own position: the row's past and its chunk so far
        mask = torch.arange(end, device=starts.device)[None, None, :] <= slots[:, :, None]  # [R, W, end]
        if self.key_mask is not None:  # and not the padding of its prompt
            key_mask = (
                self.key_mask[:, :end] if rows is None else self.key_mask[:, :end].index_select(0, rows)
            )
            mask = mask & key_mask[:, None, :]
        logits = self._forward(
            input_ids, positions, mask[:, None], causal=False, rows=rows, slots=slots, last=counts - 1
        )
        return logits, starts + counts

    def _set_lengths(self, lengths: torch.Tensor) -> None:
        """Each row's length; back to one length for all when they agree."""
        self.length = int(lengths.max())
        self.lengths = None if int(lengths.min()) == self.length else lengths

    def _allocate(self, rows: int, capacity: int, spread: Any) -> None:
        """New buffers of ``rows`` x ``capacity``, holding ``spread`` of the current cache."""
        length = self.length
        caches = self.keys + self.values
        self._buffers = []
        for cache in caches:
            heads, dim = cache.shape[1], cache.shape[3]
            buffer = cache.new_empty((rows, heads, capacity, dim))
            buffer[:, :, :length] = spread(cache[:, :, :length])
            if self.lengths is not None:  # rows shorter than length attend up to their own end only
                buffer[:, :, length:].zero_()
            self._buffers.append(buffer)
        half = len(caches) // 2
        self.keys, self.values = self._buffers[:half], self._buffers[half:]
        self._scratch = {}
        for buffer in self._buffers:  # one layer's worth per dtype
            if buffer.dtype not in self._scratch:
                self._scratch[buffer.dtype] = buffer.new_empty(buffer.numel())
        if self.key_mask is not None:
            mask = self.key_mask.new_ones((rows, capacity))
            mask[:, :length] = spread(self.key_mask[:, :length])
            self.key_mask = mask
        if self.lengths is not None:
            self.lengths = spread(self.lengths)

    @torch.no_grad()
    def _forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
        *,
        rows: torch.Tensor | None = None,
        slots: torch.Tensor | None = None,
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The layers over ``input_ids`` [R, T]; the logits of column ``last[r]`` of each row (None:
        the last column) [R, V]. The new keys and values go to positions ``[length, length + T)`` of
        every row, or with ``slots`` [R, T] to those positions of cache rows ``rows`` [R] (None: all)."""
        count, width = input_ids.shape
        start, end = self.length, self.length + width
        if slots is not None:
            end = int(slots.max()) + 1
            index = (rows if rows is not None else torch.arange(count, device=slots.device))[:, None]
        x = self.inner.embed_tokens(input_ids)  # [A, T, H]
        cos, sin = self.inner.rotary_emb(x, positions)  # [A, T, head_dim]
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        first = not self.keys
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            dim = attn.head_dim
            h = _rms_norm(layer.input_layernorm, x)
            q = _linear(attn.q_proj, h).view(count, width, self.heads, dim)
            k = _linear(attn.k_proj, h).view(count, width, self.kv_heads, dim)
            v = _linear(attn.v_proj, h).view(count, width, self.kv_heads, dim).transpose(1, 2)
            if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm of each head's query and key
                q, k = _rms_norm(attn.q_norm, q), _rms_norm(attn.k_norm, k)
            q = _rotate(q.transpose(1, 2), cos, sin)  # [A, heads, T, dim]
            k = _rotate(k.transpose(1, 2), cos, sin)
            if first:  # the prefill: the cache is exactly the prompt
                self.keys.append(k.contiguous())
                self.values.append(v.contiguous())
            elif slots is None:
                self.keys[i][:, :, start:end] = k
                self.values[i][:, :, start:end] = v
            else:  # indexed by [R, 1] and [R, T] around the heads: [R, T, kv_heads, dim]
                self.keys[i][index, :, slots] = k.transpose(1, 2).to(self.keys[i].dtype)
                self.values[i][index, :, slots] = v.transpose(1, 2).to(self.values[i].dtype)
            keys, values = self.keys[i][:, :, :end], self.values[i][:, :, :end]
            if rows is not None:
                keys, values = keys.index_select(0, rows), values.index_select(0, rows)
            o = F.scaled_dot_product_attention(
                q,
                keys,
                values,
                attn_mask=mask,
                is_causal=causal and width > 1,
                enable_gqa=self.heads != self.kv_heads,
            )
            x = x + _linear(attn.o_proj, o.transpose(1, 2).reshape(count, width, self.heads * dim))
            x = x + _mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, x))
        if slots is None:
            self.length = end
        h = x[:, -1] if last is None else x[torch.arange(count, device=x.device), last]
        return _linear(self.head, _rms_norm(self.inner.norm, h))
