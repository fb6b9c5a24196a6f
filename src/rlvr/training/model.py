"""Loading the policy, its tokenizer, the reference model and a distillation teacher."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rlvr.config import ModelConfig
from rlvr.errors import ConfigError


def resolve_model_path(path: str) -> str:
    """``toy``, ``toy-long`` and ``toy-tool`` are the tiny models shipped with rlvr
    (:data:`rlvr.toy.build.TOYS`); anything else is passed to ``from_pretrained``."""
    from rlvr.toy.build import TOYS

    toy = TOYS.get(path)
    if toy is None:
        return path
    if not (toy.directory / "config.json").is_file():
        raise ConfigError(
            f"the shipped {path} model is missing from {toy.directory}; rebuild it with `rlvr toy build {path}`"
        )
    return str(toy.directory)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("setting 'training.device' is 'cuda' but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def autocast_dtype(cfg: ModelConfig) -> torch.dtype | None:
    """The dtype forward passes autocast to (``model.autocast``), or None."""
    return torch.bfloat16 if cfg.autocast == "bfloat16" else None


def weights_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """The parameter dtype: ``model.dtype``, except that autocast keeps float32 weights."""
    if cfg.autocast != "none":
        if cfg.dtype not in ("auto", "float32"):
            raise ConfigError(
                f"setting 'model.autocast' ({cfg.autocast}) keeps float32 weights; model.dtype must be auto or "
                f"float32, got {cfg.dtype}"
            )
        return torch.float32
    return resolve_dtype(cfg.dtype, device)


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` in ``dtype``; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
"""``tokenizer_class`` values of a tokenizer saved as a plain ``tokenizer.json`` (the toy's)."""


def tokenizer_from_pretrained(path: str | Path, *, trust_remote_code: bool = False) -> Any:
    """``AutoTokenizer.from_pretrained(path)``, except for a tokenizer saved as the generic tokenizers
    backend (``tokenizer_class`` in :data:`GENERIC_TOKENIZER_CLASSES`), which is loaded as it was saved.

    Given a model config of a known type (the toy's ``qwen2``), ``AutoTokenizer`` builds that type's
    tokenizer class from ``tokenizer.json`` and replaces its pre-tokenizer: the toy's one-token-per-
    character split then loses every space and newline, and ``decode(encode(text))`` is not ``text``.
    """
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(path) / "tokenizer_config.json"
    try:
        saved_class = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        saved_class = None
    if saved_class in GENERIC_TOKENIZER_CLASSES and (Path(path) / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_tokenizer(cfg: ModelConfig) -> Any:
    path = resolve_model_path(cfg.path)
    try:
        tokenizer = tokenizer_from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise ConfigError(f"setting 'model.path': cannot load a tokenizer from '{cfg.path}' ({e})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(cfg: ModelConfig, device: torch.device) -> Any:
    """The trainable policy: full weights, or a LoRA adapter on frozen weights when lora_rank > 0."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=weights_dtype(cfg, device), trust_remote_code=cfg.trust_remote_code
        )
    except OSError as e:
        raise ConfigError(f"setting 'model.path': cannot load a model from '{cfg.path}' ({e})") from None
    model.to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora_rank > 0:
        model = with_lora(model, cfg, cfg.lora_rank, "model.lora_rank", task_type="CAUSAL_LM")
    return model


def with_lora(module: Any, cfg: ModelConfig, rank: int, key: str, task_type: str | None = None) -> Any:
    """``module`` with LoRA adapters of rank ``rank`` (alpha, dropout and target modules from
    ``cfg``), through peft; ``key`` names the setting that asked for them."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError(f"setting '{key}' > 0 needs peft: pip install 'rlvr[lora]'") from None
    lora = LoraConfig(
        r=rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        task_type=task_type,
    )
    return get_peft_model(module, lora)


class ReferenceModel:
    """The frozen reference policy for the KL term.

    A full copy of the initial weights, or, for a LoRA policy, the policy itself with its adapter
    disabled (no second copy of the base weights).
    """

    def __init__(self, policy: Any) -> None:
        self._lora = hasattr(policy, "disable_adapter")
        if self._lora:
            self._model = policy
        else:
            self._model = copy.deepcopy(policy)
            self._model.requires_grad_(False)
            self._model.eval()

    @property
    def shares_policy(self) -> bool:
        """True for a LoRA policy, whose base weights with the adapter off are the reference."""
        return self._lora

    @property
    def model(self) -> Any:
        return self._model

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        """The reference model, ready for a no-grad forward."""
        if self._lora:
            was_training = self._model.training
            self._model.eval()
            with self._model.disable_adapter(), torch.no_grad():
                yield self._model
            self._model.train(was_training)
        else:
            with torch.no_grad():
                yield self._model


def load_teacher(cfg: ModelConfig, teacher: str, device: torch.device, student_tokenizer: Any) -> Any:
    """The frozen teacher of on-policy distillation (``distill.teacher``), in eval mode.

    Loaded with the policy's dtype, autocast and device settings (``model.*``: the same weights
    dtype as the reference model, which is a copy of the policy). Its tokenizer must be the
    student's: token ids are scored by the teacher as they are, so another vocabulary (or the same
    tokens under other ids) is refused here, naming both models.
    """
    from transformers import AutoModelForCausalLM

    teacher_cfg = dataclasses.replace(cfg, path=teacher, lora_rank=0, gradient_checkpointing=False)
    try:
        tokenizer = load_tokenizer(teacher_cfg)
    except ConfigError as e:
        raise ConfigError(str(e).replace("'model.path'", "'distill.teacher'")) from None
    check_same_vocabulary(tokenizer, student_tokenizer, teacher=teacher, student=cfg.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(teacher),
            dtype=weights_dtype(cfg, device),
            trust_remote_code=cfg.trust_remote_code,
        )
    except OSError as e:
        raise ConfigError(f"setting 'distill.teacher': cannot load a model from '{teacher}' ({e})") from None
    model.to(device)
    model.requires_grad_(False)
    model.eval()
    return model


def check_same_vocabulary(
    teacher_tokenizer: Any, student_tokenizer: Any, *, teacher: str, student: str
) -> None:
    """ConfigError naming both models unless the two tokenizers map the same tokens to the same ids."""
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab == s_vocab:
        return
    if len(t_vocab) != len(s_vocab):
        detail = f"{len(t_vocab)} tokens vs {len(s_vocab)}"
    else:
        token = sorted(set(t_vocab.items()) ^ set(s_vocab.items()))[0][0]
        detail = f"token {token!r} has id {t_vocab.get(token)} vs {s_vocab.get(token)}"
    raise ConfigError(
        f"setting 'distill.teacher': the teacher '{teacher}' has another tokenizer than the student "
        f"model.path '{student}' ({detail}); on-policy distillation scores the student's token ids with the "
        "teacher, so both must share one vocabulary"
    )


def count_parameters(model: Any) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def save_model_dir(
    model: Any, tokenizer: Any, output: str | Path, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """A Hugging Face model directory of the policy (safetensors); ``state_dict`` gives the weights
    of a sharded model, gathered beforehand."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        model.save_pretrained(output, safe_serialization=True)
    else:
        model.save_pretrained(output, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(output)
