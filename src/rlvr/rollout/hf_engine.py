"""The built-in rollout engine for any transformers causal LM, on CPU or GPU.

Faster than ``model.generate`` for RL sampling because it does less work:

* the ``n`` samples of a prompt share one prefill: prompts are encoded once and their KV cache
  is repeated ``n`` times;
* finished sequences leave the batch: their rows are dropped from the KV cache at once, so no
  step is spent on a sequence that has ended;
* prompts are sorted by length before batching, so left padding stays small;
* the prefill computes logits for the last position only.

The engine holds the policy module itself, not a copy: an optimizer step on the policy is seen by
the next ``generate`` call with no transfer of weights.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from rlvr.rollout.sampling import sample_next_token
from rlvr.rollout.types import Completion, SamplingParams


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id and the model's generation config names none")
    return ids


class HFEngine:
    """Batched sampling with a KV cache from a transformers model.

    ``max_batch_sequences`` bounds the sequences decoded at once (prompts are processed in chunks
    of ``max_batch_sequences // n`` prompts).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_sequences: int = 512) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_sequences = max_batch_sequences
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._pieces: list[str] | None = None

    def _token_pieces(self) -> list[str]:
        """The text of every token id on its own (for stop-string checks), built once."""
        if self._pieces is None:
            vocab = self.model.get_input_embeddings().weight.shape[0]
            known = len(self.tokenizer)
            self._pieces = [self.tokenizer.decode([i]) if i < known else "" for i in range(vocab)]
        return self._pieces

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """``sampling.n`` completions per prompt, returned grouped by prompt in prompt order."""
        if sampling.n < 1 or sampling.max_new_tokens < 1:
            raise ValueError(f"n and max_new_tokens must be positive, got {sampling.n} and {sampling.max_new_tokens}")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
        results: list[Completion | None] = [None] * (len(prompts) * sampling.n)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        per_chunk = max(1, self.max_batch_sequences // sampling.n)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), per_chunk):
                chunk = order[start : start + per_chunk]
                completions = self._generate_chunk([prompts[i] for i in chunk], chunk, sampling, generator, device)
                for r, c in enumerate(completions):  # row r is sample r % n of its prompt
                    results[c.prompt_index * sampling.n + r % sampling.n] = c
        finally:
            self.model.train(was_training)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _generate_chunk(
        self,
        prompts: list[list[int]],
        prompt_indices: list[int],
        sampling: SamplingParams,
        generator: torch.Generator,
        device: torch.device,
    ) -> list[Completion]:
        n = sampling.n
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding
            input_ids[row, width - len(p) :] = torch.tensor(p)
            attention[row, width - len(p) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)

        cache = DynamicCache()
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1, :].repeat_interleave(n, dim=0)
        cache.batch_repeat_interleave(n)
        attention = attention.repeat_interleave(n, dim=0)
        next_position = attention.sum(-1, keepdim=True)

        total = len(prompts) * n
        rows = list(range(total))  # which completion each active row is
        tokens: list[list[int]] = [[] for _ in range(total)]
        logprobs: list[list[float]] = [[] for _ in range(total)]
        finish: list[str] = ["length"] * total
        stops = sampling.stop_strings
        pieces = self._token_pieces() if stops else None
        tails = [""] * total
        keep_chars = max((len(s) for s in stops), default=0) + 16
        eos = torch.tensor(sorted(self.eos_ids), device=device)

        for step in range(sampling.max_new_tokens):
            token, logp = sample_next_token(
                logits,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                generator=generator,
            )
            done = torch.isin(token, eos)
            token_list, logp_list, done_list = token.tolist(), logp.tolist(), done.tolist()
            for a, r in enumerate(rows):
                tokens[r].append(token_list[a])
                logprobs[r].append(logp_list[a])
                if done_list[a]:
                    finish[r] = "stop"
                elif pieces is not None:
                    tails[r] = (tails[r] + pieces[token_list[a]])[-keep_chars:]
                    if any(s in tails[r] for s in stops):
                        finish[r] = "stop"
                        done_list[a] = True
            if step == sampling.max_new_tokens - 1:
                break
            keep = [a for a, d in enumerate(done_list) if not d]
            if not keep:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention, next_position, token = attention[index], next_position[index], token[index]
                rows = [rows[a] for a in keep]
            attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=-1)
            out = self.model(
                input_ids=token[:, None],
                attention_mask=attention,
                position_ids=next_position,
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            logits = out.logits[:, -1, :]
            next_position = next_position + 1

        completions = []
        for r in range(total):
            prompt_row = r // n
            completions.append(
                Completion(
                    prompt_index=prompt_indices[prompt_row],
                    prompt_ids=list(prompts[prompt_row]),
                    token_ids=tokens[r],
                    logprobs=logprobs[r],
                    text=self.tokenizer.decode(tokens[r], skip_special_tokens=True),
                    finish_reason=finish[r],  # type: ignore[arg-type]
                )
            )
        return completions
