"""vLLM as a rollout engine, in this process (``rollout.engine: vllm``; docs/rollout.md).

:class:`VLLMEngine` has the interface of :class:`~rlvr.rollout.hf_engine.HFEngine`:
``generate(prompt_ids, SamplingParams) -> list[Completion]``, ``n`` completions per prompt grouped
by prompt in prompt order, token ids exactly as sampled (the end-of-sequence token included when
generation stopped on it), one logprob per token, ``finish_reason`` ``stop`` or ``length``.

The engine holds its own copy of the weights. The trainer pushes the policy's full state dict
(:func:`served_state_dict`: for a LoRA policy, each adapted layer's merged weight, computed into a
new tensor) after every update through vLLM's in-place reload (``collective_rpc("reload_weights")``), which
increments :attr:`VLLMEngine.weight_version` (every completion carries the version that sampled it)
and resets the prefix cache, so no KV computed with older weights is reused. :meth:`check_weights`
compares the served weights with the trainer's through the logprobs of a fixed probe sequence.

Logprobs. The engine runs with vLLM's ``logprobs_mode="processed_logprobs"``: the log-probability
of the sampled token after temperature and top-k / top-p, that is ``log softmax(logits /
temperature)`` (``log softmax(logits)`` when greedy) without truncation, rlvr's convention
(:class:`~rlvr.rollout.types.SamplingParams`). With top-k / top-p they are those of the truncated,
renormalised distribution the token was drawn from, which is what
``SamplingParams.truncated_logprobs`` asks for; vLLM does not return the untruncated ones as well,
so ``untruncated_logprobs`` stays None and the trainer recomputes them. (vLLM's default,
``raw_logprobs``, is ``log softmax(logits)`` before temperature: equal only at temperature 1.)

vLLM is imported when an engine is built, never at module import: rlvr works without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rlvr.distributed import before_leaving
from rlvr.errors import ConfigError, RLVRError
from rlvr.rollout.hf_engine import _check_prompts, _check_sampling, _eos_ids
from rlvr.rollout.types import Completion, SamplingParams

VLLM_EXTRA_HINT = (
    'install the vllm extra: pip install -e ".[vllm]" (on a CPU-only machine install the CPU build '
    "instead, see docs/rollout.md)"
)


class WeightSyncError(RLVRError):
    """The weights vLLM serves are not the trainer's (a push was skipped or did not take)."""


def import_vllm() -> Any:
    """The ``vllm`` module, or a :class:`ConfigError` naming the extra to install."""
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(
            f"rollout engine 'vllm' needs vLLM, which is not importable ({e}): {VLLM_EXTRA_HINT}"
        ) from None
    return vllm


def vllm_available() -> bool:
    try:
        import_vllm()
    except ConfigError:
        return False
    return True


def _dtype_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if dtype not in names:
        raise ConfigError(f"rollout engine 'vllm' cannot serve weights of dtype {dtype}")
    return names[dtype]


PROBE_TOKENS = 64
"""Length of the fixed token sequence whose logprobs fingerprint the served weights."""


def probe_ids(vocab_size: int, length: int = PROBE_TOKENS) -> list[int]:
    """A fixed sequence of token ids spread over the vocabulary (the same on every call)."""
    return [(i * 7919 + 1) % vocab_size for i in range(length)]


@torch.no_grad()
def policy_probe_logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """``log softmax(logits)`` of each token of ``ids`` after the first under ``model`` (a
    transformers causal LM), in float32 on the CPU: [len(ids) - 1]."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits = model(torch.tensor([ids], device=device)).logits[0].float()
    finally:
        model.train(was_training)
    target = torch.tensor(ids[1:], device=device)
    return logits[:-1].log_softmax(-1).gather(-1, target[:, None]).squeeze(-1).cpu()


_PEFT_WRAPPER_PARTS = frozenset({"base_layer", "modules_to_save", "original_module", "token_adapter"})


def served_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights to push into vLLM for ``model``, under the names of the model vLLM loaded.

    A full model: its ``state_dict()``, every entry (with tied embeddings the output layer too,
    which ``named_parameters()`` would leave out).

    A peft LoRA model: the base model's state dict, in which every LoRA-wrapped linear layer's
    ``weight`` is a new tensor ``W + scaling * B @ A`` (summed over the active adapters), computed in
    the dtype of ``W``, under the base model's name (``...q_proj.weight``, without peft's
    ``base_model.model.`` prefix and ``base_layer``); the adapters are left out. Neither the base
    weights nor the adapters are modified, so there is nothing to unmerge afterwards: the trainer's
    model is bit-identical before and after (tested). Only plain LoRA on linear layers is handled;
    DoRA, LoRA biases, LoRA on embeddings and peft's ``modules_to_save`` are errors.

    A model sharded by FSDP2: each tensor gathered whole (a collective: every rank pushes at once).
    """
    if not hasattr(model, "peft_config"):
        return {k: _whole(v) for k, v in model.state_dict().items()}
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    lora_layers = {name: m for name, m in inner.named_modules() if isinstance(m, LoraLayer)}
    state: dict[str, torch.Tensor] = {}
    for key, tensor in inner.state_dict().items():
        parts = key.split(".")
        prefixes = (".".join(parts[:i]) for i in range(1, len(parts)))
        owner = next((p for p in prefixes if p in lora_layers), None)
        if owner is None:
            if _PEFT_WRAPPER_PARTS.intersection(parts):
                raise RLVRError(
                    f"cannot push {key!r} into vLLM: only LoRA adapters on linear layers are merged for it"
                )
            state[key] = _whole(tensor)
            continue
        if owner + ".weight" in state:
            continue  # this layer's entries were all written at its first key
        state.update(_merged_lora_linear(owner, lora_layers[owner], LoraLinear))
    return state


@torch.no_grad()
def _merged_lora_linear(name: str, layer: Any, linear_type: type) -> dict[str, torch.Tensor]:
    """``{name.weight: W + sum scaling * B @ A, name.bias: b}`` of one peft LoRA linear layer, the
    weight a new tensor (``torch.addmm``) in the dtype of ``W``; the layer itself is not modified."""
    if not isinstance(layer, linear_type):
        raise RLVRError(
            f"cannot push layer {name!r} into vLLM: LoRA on a {type(layer).__name__} is not merged for it "
            "(only linear layers are)"
        )
    if layer.merged:
        raise RLVRError(f"cannot push layer {name!r} into vLLM: its adapter is merged into the base weights")
    base = layer.get_base_layer()
    weight = _whole(base.weight.detach())
    merged = weight
    adapters = [] if layer.disable_adapters else [a for a in layer.active_adapters if a in layer.lora_A]
    for adapter in adapters:
        if getattr(layer, "use_dora", {}).get(adapter) or getattr(layer, "lora_bias", {}).get(adapter):
            raise RLVRError(
                f"cannot push layer {name!r} into vLLM: DoRA and LoRA biases are not merged for it"
            )
        a = _whole(layer.lora_A[adapter].weight.detach()).to(weight.dtype)  # [rank, in]
        b = _whole(layer.lora_B[adapter].weight.detach()).to(weight.dtype)  # [out, rank]
        scaling = float(layer.scaling[adapter])
        if layer.fan_in_fan_out:  # the base weight is stored [in, out]
            merged = torch.addmm(merged, a.T, b.T, alpha=scaling)
        else:
            merged = torch.addmm(merged, b, a, alpha=scaling)
    out = {f"{name}.weight": merged}
    if getattr(base, "bias", None) is not None:
        out[f"{name}.bias"] = _whole(base.bias.detach())
    return out


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor sharded over the ranks (a DTensor of FSDP2) gathered whole; any other as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class VLLMEngine:
    """A vLLM ``LLM`` in this process, sampling with rlvr's conventions.

    ``model_path``: the directory (or hub name) vLLM loads the architecture, tokenizer and first
    weights from; ``dtype``: the precision it serves in. ``memory_fraction`` is vLLM's
    ``gpu_memory_utilization`` (on CPU a fraction of host memory, default 0.1; on a GPU shared with
    the trainer, default 0.3); ``cpu_kv_cache_gb`` (whole GiB) sets ``VLLM_CPU_KVCACHE_SPACE`` on
    CPU. Building one sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` for the process.
    ``max_model_len`` bounds prompt + completion (None: the model's own limit). ``eager`` skips
    vLLM's torch.compile and CUDA graphs: it starts in seconds instead of tens of seconds, and on a
    GPU decodes more slowly.
    """

    autocast_dtype: torch.dtype | None = None  # the interface of HFEngine: vLLM computes in ``dtype``

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        memory_fraction: float | None = None,
        cpu_kv_cache_gb: int = 1,
        max_model_len: int | None = None,
        eager: bool = False,
        seed: int = 0,
        eos_ids: set[int] | None = None,
    ) -> None:
        device = torch.device(device)
        # Weights are pushed as tensors through collective_rpc, which needs the engine core in this
        # process; on CPU, the KV cache would otherwise take most of the machine's memory.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if device.type == "cpu":
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(cpu_kv_cache_gb))
        vllm = import_vllm()
        if memory_fraction is None:
            memory_fraction = 0.1 if device.type == "cpu" else 0.3
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.device = device
        kwargs: dict[str, Any] = {
            "model": str(model_path),
            "dtype": _dtype_name(dtype),
            "seed": seed,
            "gpu_memory_utilization": memory_fraction,
            "enable_prefix_caching": True,
            "logprobs_mode": "processed_logprobs",
            "max_logprobs": 0,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if eager:
            kwargs["enforce_eager"] = True
            kwargs["compilation_config"] = {"mode": 0}
        set_num_threads = torch.set_num_threads
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as e:
            raise RLVRError(f"vLLM could not start on {model_path!r} ({type(e).__name__}: {e})") from e
        finally:
            # vLLM's CPU worker replaces torch.set_num_threads for the whole process with a function
            # that only warns; the trainer's training.cpu_threads (and everything else) keeps its own.
            torch.set_num_threads = set_num_threads
        self._vllm_sampling_params = vllm.SamplingParams
        self.eos_ids = (
            eos_ids if eos_ids is not None else _eos_ids(_GenerationConfigOf(model_path), tokenizer)
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.weight_version = 0
        """Weight pushes so far: 0 serves the weights it was built from."""
        # Under torchrun vLLM builds its groups on the trainer's process group and, when it shuts
        # down at exit, destroys that group too: shut it down before the trainer leaves the group.
        before_leaving(self.close)

    def close(self) -> None:
        """Shut the engine down (its memory and its process groups); it cannot generate afterwards."""
        self.llm.llm_engine.engine_core.shutdown()

    @classmethod
    def for_policy(cls, model: torch.nn.Module, tokenizer: Any, model_path: str, **kwargs: Any) -> VLLMEngine:
        """An engine serving ``model`` (a transformers causal LM loaded from ``model_path``), in its
        dtype, with its end-of-sequence ids."""
        dtype = kwargs.pop("dtype", None) or next(model.parameters()).dtype
        return cls(model_path, tokenizer, dtype=dtype, eos_ids=_eos_ids(model, tokenizer), **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.llm.llm_engine.model_config.get_vocab_size()

    # --- sampling -------------------------------------------------------------------------------

    def _params(self, sampling: SamplingParams, seed: int) -> Any:
        return self._vllm_sampling_params(
            n=sampling.n,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            seed=seed,
            stop=list(sampling.stop_strings) or None,
            stop_token_ids=sorted(self.eos_ids),
            include_stop_str_in_output=True,
            logprobs=0,  # the sampled token's only
            skip_special_tokens=True,
        )

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """``sampling.n`` completions per prompt, grouped by prompt in prompt order (completion
        ``i * n + j`` is sample ``j`` of ``prompts[i]``).

        Prompt ``i`` is sampled with seed ``sampling.seed + i * n`` (vLLM gives its sample ``j`` the
        seed ``+ j``), so results do not depend on how prompts are batched.
        """
        _check_sampling(sampling)
        _check_prompts(prompts, self.vocab_size)
        if not prompts:
            return []
        n = sampling.n
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        params = [self._params(sampling, sampling.seed + i * n) for i in range(len(prompts))]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        completions: list[Completion] = []
        for i, out in enumerate(outputs):
            samples = sorted(out.outputs, key=lambda o: o.index)
            if len(samples) != n:
                raise RLVRError(f"vLLM returned {len(samples)} completions of prompt {i}, expected {n}")
            for s in samples:
                ids = list(s.token_ids)
                if s.logprobs is None or len(s.logprobs) != len(ids):
                    raise RLVRError(f"vLLM returned no logprob for some sampled tokens of prompt {i}")
                logprobs = [float(step[t].logprob) for step, t in zip(s.logprobs, ids, strict=True)]
                if s.finish_reason not in ("stop", "length"):
                    raise RLVRError(f"vLLM ended a completion of prompt {i} with {s.finish_reason!r}")
                completions.append(
                    Completion(
                        prompt_index=i,
                        prompt_ids=list(prompts[i]),
                        token_ids=ids,
                        logprobs=logprobs,
                        text=self.tokenizer.decode(ids, skip_special_tokens=True),
                        finish_reason=s.finish_reason,
                        weight_version=self.weight_version,
                    )
                )
        return completions

    # --- weights ----------------------------------------------------------------------------------

    def load_weights(self, model: torch.nn.Module) -> int:
        """Push ``model``'s full state dict into the engine (vLLM's in-place reload), reset the
        prefix cache and return the new :attr:`weight_version`.

        The full state dict, not ``named_parameters()``: with tied embeddings the latter names the
        shared matrix once, and the engine's output layer would keep its old weights. For a LoRA
        policy, the merged weights under the base model's names (:func:`served_state_dict`).
        """
        state = served_state_dict(model)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
        self.llm.reset_prefix_cache()
        self.weight_version += 1
        return self.weight_version

    def probe_logprobs(self, ids: list[int]) -> torch.Tensor:
        """The served model's ``log softmax(logits)`` of each token of ``ids`` after the first
        (vLLM's prompt logprobs): [len(ids) - 1]."""
        params = self._vllm_sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        out = self.llm.generate([{"prompt_token_ids": list(ids)}], sampling_params=params, use_tqdm=False)[0]
        steps = out.prompt_logprobs[1:]
        return torch.tensor([float(step[t].logprob) for step, t in zip(steps, ids[1:], strict=True)])

    def check_weights(self, model: torch.nn.Module, *, tolerance: float | None = None) -> float:
        """Raise :class:`WeightSyncError` unless the engine serves ``model``'s weights; returns the
        measured difference.

        The fingerprint of the weights is the logprobs of a fixed probe sequence
        (:func:`probe_ids`): the engine's (:meth:`probe_logprobs`) and the trainer's
        (:func:`policy_probe_logprobs`) must agree to ``tolerance`` in mean absolute difference
        (default 1e-3 in float32, 5e-2 in half precision, far above the kernels' rounding: 3e-5 in
        float32 on the toy model, and far below what a stale layer gives). vLLM's CPU build packs
        the linear layers' weights into oneDNN handles, so they cannot be read back and summed;
        their effect on the logits can.
        """
        if tolerance is None:
            tolerance = 1e-3 if self.dtype == torch.float32 else 5e-2
        ids = probe_ids(self.vocab_size)[: self.max_model_len]
        served = self.probe_logprobs(ids)
        trained = policy_probe_logprobs(model, ids)
        diff = float((served - trained).abs().mean())
        if not diff <= tolerance:
            raise WeightSyncError(
                f"the weights vLLM serves (version {self.weight_version}) are not the trainer's: the logprobs "
                f"of a fixed probe of {len(ids)} tokens differ by {diff:.3g} on average (mean |difference|, "
                f"tolerance {tolerance:g}; max {float((served - trained).abs().max()):.3g}); a weight push "
                "was skipped or did not take"
            )
        return diff


class _GenerationConfigOf:
    """Stands for a model in :func:`_eos_ids`: the generation config stored beside its weights."""

    def __init__(self, path: str) -> None:
        try:
            from transformers import GenerationConfig

            self.generation_config = GenerationConfig.from_pretrained(path)
        except (OSError, ValueError):
            self.generation_config = None


def model_path_of(model: torch.nn.Module, fallback: str) -> str:
    """The directory the policy was loaded from (its ``name_or_path``), else ``fallback``."""
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or fallback
    return str(Path(name)) if Path(name).exists() else str(name)
