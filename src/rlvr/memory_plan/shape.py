"""The sizes of a dense decoder-only transformer, read from its config.json, and its parameter counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlvr.errors import ConfigError


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a dense decoder-only transformer (Llama, Qwen2, Qwen3, Mistral families)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    """Biases on the query, key and value projections (Qwen2)."""
    o_bias: bool = False
    """A bias on the output projection too (Llama's attention_bias puts one on all four)."""
    mlp_bias: bool = False
    qk_norm: bool = False
    """RMSNorm of width head_dim on queries and keys (Qwen3)."""

    @property
    def query_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of a decoder layer, by module name."""
        h, q, kv, f = self.hidden_size, self.query_width, self.kv_width, self.intermediate_size
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, f),
            "up_proj": (h, f),
            "down_proj": (f, h),
        }

    @property
    def layer_norm_parameters(self) -> int:
        return 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)

    @property
    def layer_parameters(self) -> int:
        """Parameters of one decoder layer: q, k, v, o projections, gated MLP, norms, biases."""
        h, q, kv, f = self.hidden_size, self.query_width, self.kv_width, self.intermediate_size
        weights = sum(i * o for i, o in self.linear_dims().values())
        biases = (q + 2 * kv if self.qkv_bias or self.o_bias else 0) + (h if self.o_bias else 0)
        biases += 2 * f + h if self.mlp_bias else 0
        return weights + biases + self.layer_norm_parameters

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def root_parameters(self) -> int:
        """Parameters outside the decoder layers: embeddings, final norm and (untied) LM head."""
        head = 0 if self.tie_word_embeddings else self.embedding_parameters
        return self.embedding_parameters + self.hidden_size + head

    @property
    def total_parameters(self) -> int:
        """``V h + L layer + h (+ V h untied)``: what ``sum(p.numel())`` of the model gives."""
        return self.num_layers * self.layer_parameters + self.root_parameters

    @property
    def body_parameters(self) -> int:
        """Parameters of the transformer body without the LM head (the critic's trunk)."""
        return self.num_layers * self.layer_parameters + self.embedding_parameters + self.hidden_size

    @property
    def matmul_parameters(self) -> int:
        """Parameters autocast copies to bfloat16: every linear weight and bias, the LM head included
        (the input embedding and the norms stay float32)."""
        return self.total_parameters - self.num_layers * self.layer_norm_parameters - self.hidden_size


def model_shape(hf_config: Any) -> ModelShape:
    """The :class:`ModelShape` of a transformers config (its text config for multimodal models)."""
    cfg = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    if getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", None):
        raise ConfigError(
            f"rlvr plan estimates dense decoder models; '{cfg.model_type}' is a mixture of experts"
        )
    missing = [
        name
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        )
        if getattr(cfg, name, None) is None
    ]
    if missing:
        raise ConfigError(
            f"rlvr plan cannot read '{cfg.model_type}' configs: no {', '.join(missing)} (it knows "
            "Llama, Qwen2, Qwen3 and Mistral-style decoders)"
        )
    heads = cfg.num_attention_heads
    attention_bias = bool(getattr(cfg, "attention_bias", False))
    return ModelShape(
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        qkv_bias=cfg.model_type == "qwen2" or attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        qk_norm=cfg.model_type == "qwen3",
    )


def load_model_shape(path: str, *, key: str = "model.path", trust_remote_code: bool = False) -> ModelShape:
    """The shape of the model at ``path`` ('toy', a directory or a hub name), from its config.json."""
    from transformers import AutoConfig

    from rlvr.training.model import resolve_model_path

    try:
        hf_config = AutoConfig.from_pretrained(resolve_model_path(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"setting '{key}': cannot read the model config of '{path}' ({str(e).splitlines()[0]}); "
            "rlvr plan needs its config.json: pass a local model directory or download the model first"
            " (HF_HUB_OFFLINE=1 skips the download retries)"
        ) from None
    return model_shape(hf_config)


def lora_parameters(shape: ModelShape, rank: int, target_modules: tuple[str, ...]) -> int:
    """LoRA adds ``r (in + out)`` parameters (A: in x r, B: r x out) to each targeted linear layer."""
    dims = shape.linear_dims()
    return shape.num_layers * sum(rank * sum(dims[name]) for name in set(target_modules) if name in dims)
