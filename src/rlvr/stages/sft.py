"""``rlvr sft``: supervised fine-tuning on prompt/completion pairs or chat conversations.

The cold-start stage of DeepSeek-R1 (a few thousand long chain-of-thought answers before RL) and its
distillation stage (a small model trained on a large one's answers) are both this loop. One step,
top to bottom::

    the step's examples (a seeded permutation per epoch; rank r takes every N-th)
      -> micro-batches of at most training.micro_batch_tokens (padded and length-sorted, or packed)
      -> loss = NLL of the completion tokens / the step's target tokens over all ranks (the output
         projection runs on those tokens only, in blocks: no [b, T, V] logits)
      -> backward per micro-batch, gradients averaged over ranks, clipped -> one AdamW step

The data side (reading rows, which tokens are trained, micro-batches, the loss) is
:mod:`rlvr.training.sft_data`; model loading, the optimizer, ranks, checkpoints and the run
directory are those of ``rlvr train``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch

from rlvr.config import (
    AT_LEAST_1,
    CheckpointConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    Range,
    check_ranges,
)
from rlvr.distributed import all_reduce_max, all_reduce_sum, rank, world_size
from rlvr.errors import ConfigError
from rlvr.training.sft_data import (
    SFTDataSettings,
    SFTExample,
    TokenizedExample,
    count_targets,
    packed_micro_batches,
    padded_micro_batches,
    read_sft_examples,
    sft_loss,
    tokenize_examples,
)
from rlvr.training.stage_run import (
    STAGE_SETTING_RANGES,
    StageEvalConfig,
    StageLoggingConfig,
    StageResult,
    load_stage_config,
    logging_section,
    micro_batch_to,
    rank_rows,
    run_stage,
    silent,
    split_held_out,
    step_rows,
    target_logprobs,
    validate_stage_config,
)

# --- settings -------------------------------------------------------------------------------------


@dataclass
class SFTDataConfig:
    """The data of ``rlvr sft``: files, and how their rows are read and tokenized."""

    train: str = ""
    """The training file: .jsonl, .json or .parquet (required)."""
    held_out: str | None = None
    """A held-out file in the same format, whose loss is logged as eval/loss; None: none, or a
    held_out_fraction of the training file."""
    held_out_fraction: float = 0.0
    """Hold out this fraction of the training rows (a seeded draw) when no held_out file is given."""
    format: Literal["prompt_completion", "messages"] = "prompt_completion"
    """prompt_completion: a prompt and a completion field per row; messages: a chat conversation per
    row (a list of {role, content}), every assistant turn trained."""
    prompt: str = "prompt"
    """Field of the prompt (dotted names reach into nested objects, as in task field maps)."""
    completion: str = "completion"
    """Field of the completion, the text the model learns to write after the prompt."""
    messages: str = "messages"
    """Field of the conversation (format messages)."""
    template: str = "plain"
    """Prompt template of prompt/completion rows: a text template (plain, r1_zero) for base models, or
    a chat template (chat, qwen_boxed, r1_chat) rendered by the tokenizer's chat template."""
    max_tokens: int = 2048
    """Most tokens of one tokenized example (prompt and completion together)."""
    too_long: Literal["error", "drop"] = "error"
    """An example over max_tokens: error names it; drop leaves it out and counts it."""
    skip_bad_rows: bool = False
    """Skip rows that cannot be read or tokenized (counted and the first reported) instead of failing."""

    def settings(self) -> SFTDataSettings:
        """The reading and tokenizing settings (:class:`SFTDataSettings` checks them)."""
        return SFTDataSettings(**{f.name: getattr(self, f.name) for f in fields(SFTDataSettings)})


@dataclass
class SFTTrainingConfig:
    examples_per_step: int = 32
    """Examples (rows) in one optimizer step, over all ranks."""
    micro_batch_tokens: int = 4096
    """Most tokens in one forward/backward pass: rows x padded width, or one packed row."""
    steps: int | None = None
    """Optimizer steps; None: epochs passes over the training examples."""
    epochs: int | None = None
    """Passes over the training examples (when steps is None; None then means 1)."""
    packing: bool = False
    """Pack whole examples into rows of micro_batch_tokens (block-diagonal attention) instead of
    length-sorted padded micro-batches; the loss is the same either way."""
    seed: int = 0
    """Seed of the example order and of new weights (LoRA)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    cpu_threads: int | None = None
    """Intra-op CPU threads of this process (None keeps torch's default)."""


@dataclass
class SFTConfig:
    """Settings of ``rlvr sft``: defaults, then a YAML file, then ``key=value`` items."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5))
    training: SFTTrainingConfig = field(default_factory=SFTTrainingConfig)
    eval: StageEvalConfig = field(default_factory=StageEvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: StageLoggingConfig = logging_section("runs/sft")
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


SFT_SETTING_RANGES: dict[str, Range] = {
    **STAGE_SETTING_RANGES,
    "training.examples_per_step": AT_LEAST_1,
}
"""The range of every numeric setting of :class:`SFTConfig` (the shared sections' from
:data:`rlvr.config.SETTING_RANGES`)."""


def validate_sft_config(c: SFTConfig) -> None:
    """Every number in range and the settings that need more than one field; errors name the key."""
    check_ranges(c, SFT_SETTING_RANGES)
    if not c.data.train.strip():
        raise ConfigError("setting 'data.train' is required: the training file (.jsonl, .json, .parquet)")
    validate_stage_config(c)
    try:
        c.data.settings()
    except ConfigError as e:
        raise ConfigError(str(e).replace("setting '", "setting 'data.", 1)) from None


def load_sft_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> SFTConfig:
    """The validated settings from defaults, a YAML file, then ``key=value`` items."""
    return load_stage_config(SFTConfig, validate_sft_config, path, overrides)


# --- data -----------------------------------------------------------------------------------------


def read_data(c: SFTDataConfig, seed: int) -> tuple[list[SFTExample], list[SFTExample], list[str]]:
    """Training and held-out examples, checked row by row (before any tokenizer or model loads), and
    the messages of rows skipped. ``held_out_fraction`` splits the training rows by a draw from ``seed``."""
    settings = c.settings()
    train, skipped = read_sft_examples(c.train, settings, prefix="data.")
    held: list[SFTExample] = []
    if c.held_out is not None:
        held, more = read_sft_examples(c.held_out, settings, prefix="data.")
        skipped += more
    elif c.held_out_fraction > 0:
        train, held = split_held_out(train, c.held_out_fraction, seed, "training example")
    return train, held, skipped


def total_steps(c: SFTTrainingConfig, num_examples: int) -> int:
    """``training.steps``, or ``epochs`` x the steps of one pass over ``num_examples``."""
    from rlvr.training.stage_run import total_steps as steps_of

    return steps_of(c.steps, c.epochs, num_examples, c.examples_per_step)


# --- one step -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSettings:
    micro_batch_tokens: int
    packing: bool
    pad_id: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None


def _micro_batches(examples: Sequence[TokenizedExample], rows: list[int], s: BatchSettings) -> list[Any]:
    cut = packed_micro_batches if s.packing else padded_micro_batches
    return (
        [micro_batch_to(mb, s.device) for mb in cut(examples, rows, s.micro_batch_tokens, s.pad_id)]
        if rows
        else []
    )


def accumulate_gradients(
    model: Any, examples: Sequence[TokenizedExample], rows: list[int], s: BatchSettings
) -> tuple[float, float]:
    """Forward and backward over this rank's ``rows`` of one step; returns (the step's loss summed
    over ranks, its target tokens over ranks).

    Each micro-batch's loss is its NLL sum / the step's target count over all ranks, times the world
    size because data parallelism averages gradients: the accumulated gradient is that of the mean
    NLL over every target token of the step, whatever the split into micro-batches and ranks. Every
    rank runs as many passes as the busiest (a rank short of work runs idle ones, loss x 0), so the
    collectives of a sharded model stay in step.
    """
    num_tokens = all_reduce_sum(torch.tensor(float(count_targets(examples, rows)), dtype=torch.float64))
    batches = _micro_batches(examples, rows, s)
    passes = int(all_reduce_max(torch.tensor(float(len(batches)))).item())
    loss_sum = 0.0
    for i in range(passes):
        if i >= len(batches):  # idle: keeps the ranks' forward and backward passes aligned
            idle = torch.full((1, 1), s.pad_id, dtype=torch.long, device=s.device)
            (model(input_ids=idle, use_cache=False).logits.sum() * 0.0).backward()
            continue
        mb = batches[i]
        out = sft_loss(
            logprobs=target_logprobs(model, mb, s.autocast_dtype),
            targets=mb.targets,
            loss_mask=mb.loss_mask,
            num_tokens=num_tokens.item(),
        )
        (out.loss * world_size()).backward()
        loss_sum += float(out.loss.detach())
    return float(all_reduce_sum(torch.tensor(loss_sum, dtype=torch.float64))), float(num_tokens)


@torch.no_grad()
def held_out_loss(model: Any, examples: Sequence[TokenizedExample], s: BatchSettings) -> tuple[float, float]:
    """Mean NLL per target token of ``examples`` (split over ranks) and their target count."""
    rows = rank_rows(range(len(examples)))
    num_tokens = all_reduce_sum(torch.tensor(float(count_targets(examples, rows)), dtype=torch.float64))
    loss_sum = 0.0
    for mb in _micro_batches(examples, rows, s):
        out = sft_loss(
            logprobs=target_logprobs(model, mb, s.autocast_dtype),
            targets=mb.targets,
            loss_mask=mb.loss_mask,
            num_tokens=num_tokens.item(),
        )
        loss_sum += float(out.loss)
    return float(all_reduce_sum(torch.tensor(loss_sum, dtype=torch.float64))), float(num_tokens)


# --- the run --------------------------------------------------------------------------------------


SFTResult = StageResult


PROGRESS_FIELDS = (
    ("loss", ("sft/loss",), "{:.4f}"),
    ("held-out", ("eval/loss",), "{:.4f}"),
    ("lr", ("optim/lr",), "{:.2e}"),
    ("tok/s", ("throughput/tokens_per_s",), "{:.0f}"),
)


class SFTRun:
    """The parts of one run, built top to bottom: data, tokenizer, model, optimizer."""

    def __init__(self, config: SFTConfig, *, log: Any = print) -> None:
        from rlvr.distributed import init_from_environment
        from rlvr.training.model import autocast_dtype, load_policy, load_tokenizer, resolve_device
        from rlvr.training.parallel import Parallel
        from rlvr.training.setup import build_adamw

        self.given_config = config  # as written: what config.json records and --resume compares
        if config.parallel.mixed_precision != "none":  # float32 shards; FSDP2 gathers them in bfloat16
            config = replace(config, model=replace(config.model, dtype="float32"))
        c = self.config = config
        self.log = log if rank() == 0 else silent
        self.out = Path(c.logging.output_dir)
        self.device = resolve_device(c.training.device)
        init_from_environment(timeout_s=c.parallel.timeout_s, use_cuda=self.device.type == "cuda")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.parallel = Parallel(c.parallel, self.device)
        if c.training.examples_per_step < world_size():
            raise ConfigError(
                f"setting 'training.examples_per_step' ({c.training.examples_per_step}) is smaller than the "
                f"{world_size()} ranks: every rank needs at least one example per step"
            )
        if c.training.cpu_threads is not None:
            torch.set_num_threads(c.training.cpu_threads)
        torch.manual_seed(c.training.seed)
        # The data first (every row checked), then the tokenizer, then the weights.
        train, held, self.skipped = read_data(c.data, c.training.seed)
        self.tokenizer = load_tokenizer(c.model)
        settings = c.data.settings()
        self.train = tokenize_examples(train, self.tokenizer, settings, prefix="data.")
        self.held = tokenize_examples(held, self.tokenizer, settings, prefix="data.") if held else None
        self.steps = total_steps(c.training, len(self.train.examples))
        self.model = load_policy(c.model, self.device)
        self.parallel.prepare(self.model)  # before the optimizer: FSDP2 replaces the parameters
        self.optimizer, self.scheduler = build_adamw(self.model, c.optim, self.steps)
        self.batching = BatchSettings(
            micro_batch_tokens=c.training.micro_batch_tokens,
            packing=c.training.packing,
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
            autocast_dtype=autocast_dtype(c.model),
        )

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on the examples of ``step``; returns its metrics."""
        from rlvr.training.parallel import clip_grad_norm

        t0 = time.perf_counter()
        c = self.config
        rows = step_rows(step, len(self.train.examples), c.training.examples_per_step, c.training.seed)
        mine = rank_rows(rows)
        self.model.train()
        loss, targets = accumulate_gradients(self.model, self.train.examples, mine, self.batching)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.parallel.reduce_gradients(params)
        grad_norm = clip_grad_norm(params, c.optim.max_grad_norm)
        bad = torch.tensor(float(not (math.isfinite(loss) and torch.isfinite(grad_norm))))
        skipped = all_reduce_max(bad).item() > 0  # every rank skips a non-finite step together
        if not skipped:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        tokens = all_reduce_sum(torch.tensor(float(sum(self.train.examples[r].length for r in mine))))
        return {
            "sft/loss": loss,
            "sft/tokens": targets,
            "sft/examples": float(len(rows)),
            "optim/lr": self.scheduler.get_last_lr()[0],
            "optim/grad_norm": float(grad_norm),
            "optim/skipped_updates": float(skipped),
            "throughput/tokens_per_s": tokens.item() / max(elapsed, 1e-9),
            "time/step": elapsed,
        }

    def evaluate(self) -> dict[str, float]:
        """The held-out loss (nothing without held-out data)."""
        if self.held is None:
            return {}
        self.model.eval()
        with self.parallel.gathered(self.model):  # forward passes only: ranks may run different numbers
            loss, tokens = held_out_loss(self.model, self.held.examples, self.batching)
        return {"eval/loss": loss, "eval/tokens": tokens}

    def describe(self) -> str:
        from rlvr.training.model import count_parameters

        c, t = self.config, self.config.training
        total, trainable = count_parameters(self.model)
        held = f"{len(self.held.examples)} held-out" if self.held else "no held-out"
        targets = count_targets(self.train.examples, range(len(self.train.examples)))
        return (
            f"model {c.model.path}: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable) on "
            f"{self.device}; data {c.data.train}: {len(self.train.examples)} training examples "
            f"({targets} target tokens), {held}; {t.examples_per_step} examples per step, {self.steps} steps, "
            f"{'packed' if t.packing else 'padded'} micro-batches of at most {t.micro_batch_tokens} tokens; "
            f"{self.parallel.describe()}"
        )

    def run(self, *, resume: bool = False, overwrite: bool = False) -> SFTResult:
        """Train from step 0, or with ``resume`` from the latest checkpoint; write ``RUN/final``
        (:func:`rlvr.training.stage_run.run_stage`: run directory, checkpoints, logging, Ctrl-C)."""
        return run_stage(
            self,
            resume=resume,
            overwrite=overwrite,
            progress_fields=PROGRESS_FIELDS,
            notes=(("bad row(s) skipped", self.skipped), ("example(s) too long dropped", self.train.dropped)),
            evaluate_first=self.held is not None,
        )


def train_sft(
    config: SFTConfig, *, resume: bool = False, overwrite: bool = False, log: Any = print
) -> SFTResult:
    """Fine-tune with ``config`` in the run directory ``logging.output_dir`` (new or empty; ``resume``
    continues its run from the latest checkpoint, ``overwrite`` deletes it first)."""
    return SFTRun(config, log=log).run(resume=resume, overwrite=overwrite)
