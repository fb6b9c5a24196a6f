"""vLLM as a server: ``rollout.engine: vllm`` with ``rollout.server: URL`` (docs/rollout.md).

:class:`VLLMServerEngine` samples through the OpenAI-compatible completions endpoint of a vLLM
server the user started (command in docs/rollout.md), with token ids in and out, and pushes weights
through the server's own endpoints: the policy is written as a safetensors model directory that
the server can read, then ``POST /collective_rpc`` runs vLLM's ``reload_weights`` from it and
``POST /reset_prefix_cache`` drops KV computed with the old weights (both need the server started
with ``VLLM_SERVER_DEV_MODE=1``). Filesystem reload works on CPU and GPU; a transfer over NCCL is
not implemented.

Every HTTP call has a timeout: a server that died or hangs is an error naming its URL, never a
hang. The prompts of a call go out as concurrent requests (one per prompt, ``workers`` at a
time), so the server's scheduler batches them. Conventions (logprobs, seeds, stop strings,
grouping) are those of :class:`~rlvr.rollout.vllm_engine.VLLMEngine`; the server must run with
``--logprobs-mode processed_logprobs`` for its logprobs to mean what rlvr's trainer recomputes.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from rlvr.errors import RLVRError
from rlvr.rollout.hf_engine import _check_prompts, _check_sampling
from rlvr.rollout.types import Completion, SamplingParams
from rlvr.rollout.vllm_engine import VLLMEngine, served_state_dict


class VLLMServerError(RLVRError):
    """The vLLM server did not answer, or answered with an error."""


class VLLMServerEngine(VLLMEngine):
    """Sampling and weight pushes through a running vLLM server at ``url``.

    ``weights_dir``: a directory the server can read (the same machine or a shared file system),
    where each push writes the policy; ``vocab_size``: the policy's embedding rows; ``dtype``: the
    precision the server was started with (for the tolerance of :meth:`check_weights`).
    """

    def __init__(
        self,
        url: str,
        tokenizer: Any,
        *,
        weights_dir: str | Path,
        vocab_size: int,
        eos_ids: set[int],
        dtype: torch.dtype = torch.float32,
        timeout_s: float = 600.0,
        workers: int = 16,
    ) -> None:
        self.url = url.rstrip("/")
        self.tokenizer = tokenizer
        self.weights_dir = Path(weights_dir)
        self.dtype = dtype
        self.device = torch.device("cpu")
        self.timeout_s = timeout_s
        self.workers = workers
        self.eos_ids = set(eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._vocab_size = vocab_size
        self.weight_version = 0
        models = self._request("GET", "/v1/models", timeout_s=min(timeout_s, 30.0))["data"]
        if not models:
            raise VLLMServerError(f"the vLLM server at {self.url} serves no model")
        self.model_name = models[0]["id"]
        self.max_model_len = int(models[0].get("max_model_len") or 1 << 30)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def _request(self, method: str, path: str, body: Any = None, *, timeout_s: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise VLLMServerError(
                f"the vLLM server at {self.url} refused {method} {path}: {e.code} {detail}"
            ) from None
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
            raise VLLMServerError(
                f"the vLLM server at {self.url} did not answer {method} {path} within {timeout:g} s "
                f"({getattr(e, 'reason', e)}): is it running?"
            ) from None
        return json.loads(text) if text else None

    # --- sampling -------------------------------------------------------------------------------

    def _body(self, prompt: list[int], sampling: SamplingParams, seed: int) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "prompt": list(prompt),
            "n": sampling.n,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "seed": seed,
            "stop": list(sampling.stop_strings) or None,
            "stop_token_ids": sorted(self.eos_ids),
            "include_stop_str_in_output": True,
            "logprobs": 0,
            "return_token_ids": True,
            "skip_special_tokens": True,
        }

    def close(self) -> None:
        """Nothing to shut down here: the server is its owner's."""

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """As :meth:`VLLMEngine.generate`, one request per prompt, sent concurrently."""
        _check_sampling(sampling)
        _check_prompts(prompts, self.vocab_size)
        if not prompts:
            return []
        n = sampling.n
        version = self.weight_version
        bodies = [self._body(p, sampling, sampling.seed + i * n) for i, p in enumerate(prompts)]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(bodies))) as pool:
            answers = list(pool.map(lambda b: self._request("POST", "/v1/completions", b), bodies))
        completions: list[Completion] = []
        for i, answer in enumerate(answers):
            choices = sorted(answer["choices"], key=lambda c: c["index"])
            if len(choices) != n:
                raise VLLMServerError(
                    f"the vLLM server at {self.url} returned {len(choices)} completions, expected {n}"
                )
            for choice in choices:
                ids = [int(t) for t in choice["token_ids"]]
                logprobs = [float(x) for x in choice["logprobs"]["token_logprobs"]]
                if len(logprobs) != len(ids) or choice["finish_reason"] not in ("stop", "length"):
                    raise VLLMServerError(
                        f"the vLLM server at {self.url} returned a completion of prompt {i} without a logprob "
                        f"per token or ended with {choice['finish_reason']!r}"
                    )
                completions.append(
                    Completion(
                        prompt_index=i,
                        prompt_ids=list(prompts[i]),
                        token_ids=ids,
                        logprobs=logprobs,
                        text=self.tokenizer.decode(ids, skip_special_tokens=True),
                        finish_reason=choice["finish_reason"],
                        weight_version=version,
                    )
                )
        return completions

    def probe_logprobs(self, ids: list[int]) -> torch.Tensor:
        body = {"model": self.model_name, "prompt": list(ids), "max_tokens": 1, "temperature": 0.0}
        body["prompt_logprobs"] = 0
        steps = self._request("POST", "/v1/completions", body)["choices"][0]["prompt_logprobs"][1:]
        return torch.tensor([float(step[str(t)]["logprob"]) for step, t in zip(steps, ids[1:], strict=True)])

    # --- weights ----------------------------------------------------------------------------------

    def load_weights(self, model: torch.nn.Module) -> int:
        """Write ``model``'s full ``state_dict()`` as ``model.safetensors`` in ``weights_dir``, have
        the server reload from it (vLLM's ``reload_weights``), reset its prefix cache; the new version.

        Every entry is written, the output layer too when it is tied to the embeddings (which
        ``save_pretrained`` leaves out): an in-place reload without it keeps the server's old output
        layer (tested). For a LoRA policy, the merged weights under the base model's names
        (:func:`~rlvr.rollout.vllm_engine.served_state_dict`).
        """
        from safetensors.torch import save_file

        self.weights_dir.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: t.detach().to("cpu").contiguous().clone() for name, t in served_state_dict(model).items()
        }
        partial = self.weights_dir / "model.safetensors.partial"
        save_file(tensors, str(partial), metadata={"format": "pt"})
        partial.replace(self.weights_dir / "model.safetensors")
        if hasattr(model, "config"):
            model.config.save_pretrained(self.weights_dir)
        self._request(
            "POST",
            "/collective_rpc",
            {"method": "reload_weights", "kwargs": {"weights_path": str(self.weights_dir.resolve())}},
        )
        self._request("POST", "/reset_prefix_cache")
        self.weight_version += 1
        return self.weight_version
