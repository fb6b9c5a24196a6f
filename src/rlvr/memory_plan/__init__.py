"""``rlvr plan``: the device memory one rank of a training run needs, phase by phase, from the config.

Nothing is loaded but the model's ``config.json``. The run is cut into the phases whose memory
does not overlap, each a sum of rows; the run needs the largest (the peak)::

    rollout         weights (+ the whole model gathered under fsdp2) + optimizer state + reference
                    + critic + KV cache of the sequences decoded at once + prefill/sampling scratch
    update          weights + gradients + optimizer state + reference + critic + the activations of
                    one micro-batch + its logits, log-softmax and entropy
    optimizer step  weights + gradients + optimizer state + AdamW's temporaries
    critic update   (gae, vapo) the policy at rest + the critic's gradients and activations

With ``rollout.generate_ahead`` a whole float32 copy of the policy is at rest in every phase, and
its KV cache and scratch join the update and the optimizer step, which run while it generates.

**Bytes per parameter** (ZeRO, Rajbhandari et al. 2019, arXiv 1910.02054 sec. 3.1, counts 16 for
mixed-precision Adam: 2 + 2 for fp16 weights and gradients, 4 + 4 + 4 for the fp32 master weights,
momentum and variance). rlvr keeps no separate master copy: torch's AdamW keeps its two states in
the parameters' own dtype, so a trained parameter of ``w`` bytes costs ``w`` (weight) + ``w``
(gradient) + ``2w`` (states): 16 bytes with float32 weights (also under ``model.autocast``, whose
weights are float32), 8 with bfloat16 weights. Under fsdp2 all three are divided by the number of
ranks N; with ``model.dtype: float32`` and ``parallel.mixed_precision: bfloat16`` the float32
shards play ZeRO's master weights (16/N bytes) and the forward uses bfloat16 parameters gathered
from them (``model.dtype: auto`` on a GPU gives bfloat16 shards). A LoRA adapter (peft)
is float32 whatever the base dtype (peft's ``autocast_adapter_dtype``), and only it has gradients
and optimizer state. A frozen reference model costs ``w`` per parameter (nothing with LoRA: the
policy with its adapter off is the reference).

**Activations** follow Korthikanti et al. 2022 (arXiv 2205.05198) eq. 1, ``s b h (34 + 5 a s / h)``
bytes per layer with 16-bit activations, adapted to the decoder layers rlvr trains (RMSNorm,
rotary embeddings, grouped-query attention, a gated SiLU MLP of width f, no dropout) and to SDPA
attention kernels, which keep no ``s x s`` score matrix (the ``5 a s / h`` term is gone). The bytes
each token keeps per layer for the backward pass (``terms.ACTIVATION_BYTES``) were counted with
``torch.autograd.graph.saved_tensors_hooks`` on transformers' Qwen2 layer, with ``q`` the query
width (heads x head_dim)::

    float32 weights                24 h + 20 q + 16 f
    bfloat16 weights               16 h +  8 q +  8 f
    float32 weights + autocast     26 h +  8 q +  8 f

The paper's 34 h (MLP of width 4h, with dropout) compares with 56 h for bfloat16 here: the gated
MLP keeps four f-wide tensors instead of two, RMSNorm keeps a float32 copy of its input, and the
keys and values are repeated to every head when a padding mask is present. Each layer also keeps
the padding mask SDPA builds (``b s^2`` elements in the attention dtype) and the softmax
normaliser (4 bytes per head and token). With gradient checkpointing each layer keeps only its
input (``s b h`` in the residual dtype) and one layer at a time is recomputed.

Every estimate is an upper bound of its kind: prompts of ``rollout.max_prompt_tokens`` and
completions of ``rollout.max_new_tokens``, no sequence finishing early, a micro-batch of as many
such sequences as ``training.micro_batch_tokens`` holds. Measured against real runs in
benchmarks/memory_plan_check.py (results in benchmarks/RESULTS.md).
"""

from rlvr.memory_plan.plan import MemoryPlan, MemoryRow, Phase, format_plan, plan_for_config, plan_memory
from rlvr.memory_plan.shape import ModelShape, load_model_shape, lora_parameters, model_shape
from rlvr.memory_plan.terms import (
    ACTIVATION_BYTES,
    Precision,
    activation_bytes,
    format_size,
    kv_cache_bytes,
    layer_activation_bytes,
    logits_bytes,
    parse_memory_size,
    resolve_precision,
)

__all__ = [
    "ACTIVATION_BYTES",
    "MemoryPlan",
    "MemoryRow",
    "ModelShape",
    "Phase",
    "Precision",
    "activation_bytes",
    "format_plan",
    "format_size",
    "kv_cache_bytes",
    "layer_activation_bytes",
    "load_model_shape",
    "logits_bytes",
    "lora_parameters",
    "model_shape",
    "parse_memory_size",
    "plan_for_config",
    "plan_memory",
    "resolve_precision",
]
