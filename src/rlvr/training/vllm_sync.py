"""The trainer's side of ``rollout.engine: vllm``: build the engine, push weights, verify them.

The policy served must be the policy trained (docs/rollout.md):

* after every update the trainer pushes the full state dict (:meth:`VLLMSync.push`; with LoRA the
  merged weights, :func:`rlvr.rollout.vllm_engine.served_state_dict`), which
  increments the engine's weight version and resets its prefix cache; the trainer counts its own
  updates (:attr:`VLLMSync.policy_version`), and every completion must carry the version the
  trainer holds when it samples (:meth:`VLLMSync.check_rollouts`), so a skipped push is an error;
* every ``rollout.vllm_check_every`` pushes the served weights are compared with the trainer's
  through the logprobs of a fixed probe (:meth:`rlvr.rollout.vllm_engine.VLLMEngine.check_weights`);
* every step the rollout's logprobs are compared with the trainer's recomputation of the same
  weights (``mismatch/*`` metrics, :func:`rlvr.algorithms.mismatch.mismatch_metrics`), and at the
  first update a k3 KL above ``rollout.vllm_max_first_kl`` is an error.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rlvr.algorithms.mismatch import mismatch_log_ratio, mismatch_metrics
from rlvr.config import Config
from rlvr.distributed import world_size
from rlvr.errors import ConfigError
from rlvr.rollout.vllm_engine import VLLMEngine, WeightSyncError
from rlvr.training.model import resolve_model_path


def served_dtype(config: Config, model: torch.nn.Module) -> torch.dtype:
    """The precision vLLM serves in: bfloat16 when rollouts or the model compute under bfloat16
    autocast, else the policy's parameter dtype."""
    if config.rollout.autocast == "bfloat16" or config.model.autocast == "bfloat16":
        return torch.bfloat16
    return next(model.parameters()).dtype


def build_vllm_engine(
    config: Config, model: torch.nn.Module, tokenizer: Any, device: torch.device
) -> VLLMEngine:
    """One in-process vLLM engine for this rank, serving ``model`` (loaded from ``model.path``), or
    the client of the vLLM server ``rollout.server``."""
    c = config
    if c.rollout.server is not None:
        return _server_engine(c, model, tokenizer)
    return VLLMEngine.for_policy(
        model,
        tokenizer,
        str(resolve_model_path(c.model.path)),
        dtype=served_dtype(c, model),
        device=device,
        memory_fraction=c.rollout.vllm_memory_fraction,
        cpu_kv_cache_gb=c.rollout.vllm_cpu_kv_cache_gb,
        max_model_len=c.rollout.vllm_max_model_len,
        eager=c.rollout.vllm_eager,
        seed=c.training.seed,
    )


def _server_engine(config: Config, model: torch.nn.Module, tokenizer: Any) -> VLLMEngine:
    from pathlib import Path

    from rlvr.rollout.hf_engine import _eos_ids
    from rlvr.rollout.vllm_server import VLLMServerEngine

    if world_size() > 1:
        raise ConfigError(
            "setting 'rollout.server' is for one process: with several ranks each would push its weights "
            "to the same server (use the in-process engine, one per rank)"
        )
    return VLLMServerEngine(
        config.rollout.server,
        tokenizer,
        weights_dir=Path(config.logging.output_dir) / "vllm_weights",
        vocab_size=model.get_input_embeddings().weight.shape[0],
        eos_ids=_eos_ids(model, tokenizer),
        dtype=served_dtype(config, model),
        timeout_s=config.rollout.server_timeout_s,
    )


class VLLMSync:
    """Weight pushes and their verification for one trainer and its engine."""

    def __init__(self, config: Config, engine: VLLMEngine, log: Any = print) -> None:
        self.engine = engine
        self.check_every = config.rollout.vllm_check_every
        self.max_first_kl = config.rollout.vllm_max_first_kl
        self.log = log
        self.policy_version = 0
        """Updates the trainer has made to the weights the engine was built from (+1 on resume)."""
        self.first_update_checked = False
        r = config.rollout
        self.truncated_unreplayed = (
            (r.top_p < 1 or r.top_k > 0)
            and r.temperature > 0
            and not (config.algorithm.replay_sampling_support)
        )
        if self.truncated_unreplayed:
            log(
                "rollout.engine 'vllm' with top_p/top_k: vLLM records the logprobs of the truncated "
                "distribution the tokens were drawn from, the trainer's ratio uses the untruncated one, so "
                "the ratio is biased by the kept mass and the rollout/trainer check at the first update "
                "is skipped; set algorithm.replay_sampling_support to replay the truncation"
            )

    def push(self, model: torch.nn.Module, *, check: bool | None = None) -> dict[str, float]:
        """The trainer changed the weights: push them, then verify them on schedule; the metrics."""
        self.policy_version += 1
        t0 = time.perf_counter()
        version = self.engine.load_weights(model)
        metrics = {"vllm/weight_version": float(version), "time/weight_sync": time.perf_counter() - t0}
        if check if check is not None else (self.check_every and version % self.check_every == 0):
            metrics["vllm/probe_abs_diff"] = self.verify(model)
        return metrics

    def verify(self, model: torch.nn.Module) -> float:
        """The engine's version and its served weights against the trainer's; raises
        :class:`WeightSyncError` when either differs."""
        if self.engine.weight_version != self.policy_version:
            raise WeightSyncError(
                f"the trainer's policy is at version {self.policy_version} but vLLM serves version "
                f"{self.engine.weight_version}: a weight push was skipped"
            )
        return self.engine.check_weights(model)

    def check_rollouts(self, completions: list[Any]) -> None:
        """Every completion sampled by the weights the trainer holds now."""
        stale = [c.weight_version for c in completions if c.weight_version != self.policy_version]
        if stale:
            raise WeightSyncError(
                f"{len(stale)} of {len(completions)} completions were sampled with weight version "
                f"{stale[0]}, but the trainer's policy is at version {self.policy_version}: a weight push "
                "was skipped"
            )

    def mismatch(
        self, rollout_logprobs: torch.Tensor, trainer_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, float]:
        """``mismatch/*`` metrics of the rollout's logprobs against the trainer's recomputation of the
        same weights; the first time, a k3 KL above ``rollout.vllm_max_first_kl`` is an error."""
        log_ratio = mismatch_log_ratio(trainer_logprobs, rollout_logprobs, mask)
        metrics = {k: float(v) for k, v in mismatch_metrics(log_ratio, mask).items()}
        if not self.first_update_checked and not self.truncated_unreplayed:
            self.first_update_checked = True
            kl = metrics["mismatch/k3_kl"]
            if not kl <= self.max_first_kl:
                raise WeightSyncError(
                    f"at the first update the rollout's logprobs (vLLM) and the trainer's of the same weights "
                    f"differ: k3 KL {kl:.3g} > rollout.vllm_max_first_kl {self.max_first_kl:g} (max |log "
                    f"ratio| {metrics['mismatch/abs_log_ratio_max']:.3g}); the policy served is not the "
                    "policy trained (different weights, dtype or logprob convention)"
                )
        return metrics
