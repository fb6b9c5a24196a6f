"""What the supervised stages (``rlvr sft``, ``rlvr dpo``) share around their step.

A stage builds its parts (data, tokenizer, model, optimizer) and a ``train_step``; this module gives
it the order of the rows of each step, a rank's share of them, the log-probs of a micro-batch's
trained tokens (:func:`target_logprobs`, without building the logits), and the run itself::

    run directory rules (new, --resume, --overwrite) -> resume from the newest checkpoint
      -> held-out metrics at step 0 -> steps: train_step, held-out metrics every eval.every steps,
         metrics to JSONL/TensorBoard, a console line, checkpoints every checkpoint.every steps
      -> a checkpoint at the end (or on Ctrl-C) -> RUN/final (unless interrupted)

The stage object passed to :func:`run_stage` follows :class:`Stage`.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from rlvr.config import (
    AT_LEAST_0,
    AT_LEAST_1,
    SETTING_RANGES,
    Range,
    merge_layers,
    parse_overrides,
    read_yaml,
    to_dict,
    validate_parallel,
)
from rlvr.distributed import all_reduce_max, broadcast_object, rank, world_size
from rlvr.errors import ConfigError

# --- settings the stages share --------------------------------------------------------------------


@dataclass
class StageEvalConfig:
    every: int = 0
    """Compute the held-out metrics every N steps (0: before and after training only)."""


@dataclass
class StageLoggingConfig:
    output_dir: str = "runs/stage"
    """Run directory: metrics.jsonl, TensorBoard events, checkpoints, the final model."""
    log_every: int = 1
    """Print a console line every N steps."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    wandb_project: str | None = None
    """Also log to Weights & Biases under this project (needs the wandb package)."""


def logging_section(output_dir: str) -> Any:
    """The ``logging`` field of a stage's config, with the stage's own default run directory."""
    return field(default_factory=lambda: StageLoggingConfig(output_dir=output_dir))


STAGE_SETTING_RANGES: dict[str, Range] = {
    **{
        key: value
        for key, value in SETTING_RANGES.items()
        if key.split(".")[0] in ("model", "optim", "checkpoint", "parallel")
    },
    "data.held_out_fraction": Range(0, 1, high_open=True),
    "data.max_tokens": Range(2),
    "training.micro_batch_tokens": AT_LEAST_1,
    "training.steps": AT_LEAST_1,
    "training.epochs": AT_LEAST_1,
    "training.seed": AT_LEAST_0,
    "training.cpu_threads": AT_LEAST_1,
    "eval.every": AT_LEAST_0,
    "logging.log_every": AT_LEAST_1,
}
"""The ranges of the settings every stage config has (the shared sections' from
:data:`rlvr.config.SETTING_RANGES`); a stage adds its own."""


def validate_stage_config(c: Any) -> None:
    """The checks of the settings every stage config has, beyond their ranges; errors name the key."""
    if c.data.held_out is not None and c.data.held_out_fraction > 0:
        raise ConfigError("settings 'data.held_out' and 'data.held_out_fraction' exclude each other; set one")
    if c.training.steps is not None and c.training.epochs is not None:
        raise ConfigError("settings 'training.steps' and 'training.epochs' exclude each other; set one")
    validate_parallel(c.parallel)
    if c.parallel.mixed_precision != "none" and c.model.dtype not in ("auto", "float32"):
        raise ConfigError(
            f"setting 'parallel.mixed_precision' ({c.parallel.mixed_precision}) keeps float32 shards; "
            f"model.dtype must be auto or float32, got {c.model.dtype}"
        )


def load_stage_config(
    cls: type, validate: Callable[[Any], None], path: str | Path | None, overrides: Sequence[str]
) -> Any:
    """The validated ``cls`` from its defaults, a YAML file, then ``key=value`` items."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((str(path), read_yaml(path)))
    if overrides:
        layers.append(("command line", parse_overrides(list(overrides))))
    config = merge_layers(layers, cls)
    validate(config)
    return config


# --- data -----------------------------------------------------------------------------------------


def split_held_out(rows: list[Any], fraction: float, seed: int, what: str) -> tuple[list[Any], list[Any]]:
    """``(train, held_out)``: ``fraction`` of ``rows`` held out by a draw from ``seed``, both in file
    order; ``what`` names a row in the error when nothing would be left to train on."""
    count = max(1, round(len(rows) * fraction))
    if count >= len(rows):
        raise ConfigError(
            f"setting 'data.held_out_fraction' ({fraction}) of {len(rows)} rows leaves no {what}"
        )
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in sorted(order[count:])], [rows[i] for i in sorted(order[:count])]


def micro_batch_to(mb: Any, device: torch.device) -> Any:
    """An SFT micro-batch with its tensors on ``device``."""
    tensors = ("input_ids", "targets", "loss_mask", "position_ids", "attention", "segment_ids")
    return replace(mb, **{k: getattr(mb, k).to(device) for k in tensors if getattr(mb, k) is not None})


# --- log-probabilities of the trained tokens ------------------------------------------------------

HEAD_BLOCK_ELEMENTS = 2**25
"""Logits per block of :class:`_HeadTargetLogprobs` (positions x vocabulary): 128 MiB in float32."""

_LOGIT_SCALES = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)
"""Config fields of models whose logits are not plain ``lm_head(hidden)``: they take the full-logits path."""


class _HeadTargetLogprobs(torch.autograd.Function):
    """log softmax(h W^T)[y] of n positions, in blocks of positions, without keeping the [n, V] logits.

    ``hidden`` [n, H], ``weight`` [V, H], ``targets`` [n] -> [n] in float32 (float64 for float64).
    Each block's logits are computed in ``dtype`` (the forward's compute dtype), upcast and reduced
    to log-probs; the backward recomputes them: d log p_y / dz = onehot(y) - p, then dh = dz W and
    dW = dz^T h, accumulated in float32. Memory beyond the inputs: one block of logits and its softmax.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype):  # type: ignore[override]
        rows = max(1, HEAD_BLOCK_ELEMENTS // weight.shape[0])
        out = torch.float64 if dtype == torch.float64 else torch.float32
        w = weight.to(dtype)
        logprobs = torch.empty(hidden.shape[0], dtype=out, device=hidden.device)
        lse = torch.empty_like(logprobs)
        for i in range(0, hidden.shape[0], rows):
            z = (hidden[i : i + rows].to(dtype) @ w.T).to(out)  # [rows, V]
            lse[i : i + rows] = torch.logsumexp(z, dim=-1)
            logprobs[i : i + rows] = z.gather(-1, targets[i : i + rows, None]).squeeze(-1) - lse[i : i + rows]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.dtype, ctx.rows = dtype, rows
        return logprobs

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        w = weight.to(ctx.dtype)
        grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
        grad_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device)
        for i in range(0, hidden.shape[0], ctx.rows):
            h, g = hidden[i : i + ctx.rows].to(ctx.dtype), grad[i : i + ctx.rows, None].to(lse.dtype)
            p = ((h @ w.T).to(lse.dtype) - lse[i : i + ctx.rows, None]).exp_()  # softmax [rows, V]
            dz = p.mul_(-g).scatter_add_(-1, targets[i : i + ctx.rows, None], g)  # d log p_y / dz
            grad_hidden[i : i + ctx.rows] = dz.to(ctx.dtype) @ w
            grad_weight.addmm_(dz.T, h.to(lse.dtype))
        return grad_hidden, grad_weight.to(weight.dtype), None, None


def _decoder_and_head(model: Any) -> tuple[Any, torch.Tensor] | None:
    """The backbone and the output projection's weight of a causal LM whose logits are
    ``hidden @ W^T``; None where that is not known to hold (a bias, scaled or capped logits, an
    adapter on the head, FSDP2's sharded root, whose parameters only its own forward gathers)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: the wrapped model
    get_decoder, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    head = get_head() if get_head else None
    decoder = get_decoder() if get_decoder else None
    if type(head) is not torch.nn.Linear or head.bias is not None or decoder is None or decoder is base:
        return None
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if any(getattr(config, key, None) not in (None, 1.0) for key in _LOGIT_SCALES):
        return None
    return decoder, head.weight


def target_logprobs(model: Any, mb: Any, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """log pi(targets) [b, T] (float32) of an SFT micro-batch ``mb`` at its trained positions, 0 elsewhere.

    The output projection runs on the ``loss_mask`` positions only, in blocks
    (:class:`_HeadTargetLogprobs`): no [b, T, V] logits exist, and prompt and padding positions cost no
    vocabulary-sized work. Models this cannot read (see :func:`_decoder_and_head`) go through their
    full logits (:func:`rlvr.training.sft_data.sft_logits`), with the same result.
    """
    from rlvr.algorithms.entropy import token_logprobs
    from rlvr.training.model import autocast_context
    from rlvr.training.sft_data import packed_attention_mask, sft_logits

    parts = _decoder_and_head(model)
    mask = mb.loss_mask.bool()
    if parts is None:
        logprobs = token_logprobs(sft_logits(model, mb, autocast_dtype), mb.targets)
        return torch.where(mask, logprobs, torch.zeros_like(logprobs))
    decoder, weight = parts
    attention = mb.attention
    if mb.segment_ids is not None:
        attention = packed_attention_mask(mb.segment_ids, autocast_dtype or weight.dtype)
    with autocast_context(mb.input_ids.device, autocast_dtype):
        hidden = decoder(
            input_ids=mb.input_ids, attention_mask=attention, position_ids=mb.position_ids, use_cache=False
        ).last_hidden_state  # [b, T, H]
    picked = _HeadTargetLogprobs.apply(hidden[mask], weight, mb.targets[mask], autocast_dtype or weight.dtype)
    return torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(mask, picked)


# --- the rows of a step ----------------------------------------------------------------------------


def total_steps(steps: int | None, epochs: int | None, num_rows: int, rows_per_step: int) -> int:
    """``steps``, or ``epochs`` (None: 1) x the steps of one pass over ``num_rows``."""
    if steps is not None:
        return steps
    return (epochs or 1) * math.ceil(num_rows / rows_per_step)


def shuffled_steps(num_rows: int, rows_per_step: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch's optimizer steps: a permutation of the rows drawn from ``generator``, cut into
    steps of ``rows_per_step`` (the last may be shorter). The same seed gives the same steps."""
    order = torch.randperm(num_rows, generator=generator).tolist()
    return [order[i : i + rows_per_step] for i in range(0, num_rows, rows_per_step)]


def step_rows(step: int, num_rows: int, rows_per_step: int, seed: int) -> list[int]:
    """The rows of optimizer step ``step`` (over all ranks): epoch e's order is a permutation drawn
    from seed + e (:func:`shuffled_steps`), so a step's rows depend on nothing else and a resumed run
    needs no generator state."""
    per_epoch = math.ceil(num_rows / rows_per_step)
    epoch, index = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed + epoch)
    return shuffled_steps(num_rows, rows_per_step, generator)[index]


def rank_rows(rows: Sequence[int]) -> list[int]:
    """This rank's share of a step's rows: every N-th, from its rank on."""
    return list(rows[rank() :: world_size()])


def silent(*args: Any, **kwargs: Any) -> None:
    """The log of ranks other than 0."""


# --- the run ---------------------------------------------------------------------------------------


class Stage(Protocol):
    """What :func:`run_stage` reads of a stage's parts."""

    config: Any  # .logging (output_dir, log_every, tensorboard, wandb_project), .eval.every, .checkpoint
    given_config: Any  # the settings as written: what config.json records and --resume compares
    out: Path
    log: Callable[..., Any]
    model: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    steps: int

    def train_step(self, step: int) -> dict[str, float]: ...

    def evaluate(self) -> dict[str, float]: ...

    def describe(self) -> str: ...


@dataclass
class StageResult:
    output_dir: Path
    steps: int
    interrupted: bool = False


@dataclass
class _Loop:
    """The state of one run: the step reached, the last step saved, and whether Ctrl-C was pressed."""

    stage: Any
    step: int = 0
    saved_step: int | None = None
    stop_requested: bool = False

    def save(self) -> None:
        from rlvr.training.checkpoint import save_checkpoint

        s = self.stage
        save_checkpoint(
            s.out,
            self.step,
            model=s.model,
            tokenizer=s.tokenizer,
            optimizer=s.optimizer,
            scheduler=s.scheduler,
            trainer_state={"step": self.step},
            keep_last=s.config.checkpoint.keep_last,
        )
        self.saved_step = self.step

    def resume(self) -> bool:
        """Load the newest intact checkpoint; False when there is none."""
        from rlvr.training.checkpoint import load_latest_checkpoint

        s = self.stage
        loaded = load_latest_checkpoint(
            s.out, log=s.log, model=s.model, optimizer=s.optimizer, scheduler=s.scheduler
        )
        if loaded is None:
            return False
        path, state = loaded
        self.step = self.saved_step = int(state["step"])
        s.log(f"resumed from {path} at step {self.step}")
        return True

    def start(self, *, resume: bool, overwrite: bool) -> bool:
        """Rank 0 applies the run-directory rules (:mod:`rlvr.training.run_dir`) and every rank gets
        the verdict; then, with ``resume``, every rank loads the latest checkpoint. True if it did."""
        from rlvr.training.run_dir import prepare_run_dir, write_config

        s = self.stage
        verdict: tuple[str, Any] = ("start", [])
        if rank() == 0:
            try:
                notes = prepare_run_dir(s.out, to_dict(s.given_config), resume=resume, overwrite=overwrite)
                s.out.mkdir(parents=True, exist_ok=True)
                verdict = ("start", notes)
            except (ConfigError, OSError) as err:
                verdict = ("refuse", str(err))
        kind, value = broadcast_object(verdict)  # type: ignore[misc]
        if kind == "refuse":
            raise ConfigError(value)
        for note in value:
            s.log(note)
        resumed = self.resume() if resume else False
        if rank() == 0:
            write_config(s.out, to_dict(s.given_config))
        return resumed

    def train_steps(self, logger: Any, progress: Any) -> bool:
        """The steps up to the last, with held-out metrics and checkpoints; True when Ctrl-C stopped them."""
        s = self.stage
        c = s.config
        while self.step < s.steps:
            metrics = s.train_step(self.step)
            self.step += 1
            if self.step == s.steps or (c.eval.every and self.step % c.eval.every == 0):
                metrics.update(s.evaluate())
            logger.log(self.step, metrics)
            progress.update(self.step, metrics)
            if c.checkpoint.every and self.step % c.checkpoint.every == 0:
                self.save()
            if all_reduce_max(torch.tensor(float(self.stop_requested))).item() > 0:
                return True
        return False

    def request_stop(self, signum: int, frame: Any) -> None:
        """SIGINT: stop after the step in progress and save; a second one stops at once."""
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True


def write_final(model: Any, tokenizer: Any, out: Path) -> None:
    """``out/final``: the model (a LoRA adapter as peft saves it) and tokenizer, for ``from_pretrained``."""
    from rlvr.training.model import save_model_dir
    from rlvr.training.sharded_state import export_state

    state = export_state(model)  # every rank: gathering a sharded model is collective
    if rank() == 0:
        save_model_dir(model, tokenizer, out / "final", state_dict=state)


def run_stage(
    stage: Stage,
    *,
    resume: bool,
    overwrite: bool,
    progress_fields: Sequence[tuple[str, tuple[str, ...], str]],
    notes: Sequence[tuple[str, list[str]]] = (),
    evaluate_first: bool = False,
) -> StageResult:
    """Run ``stage`` from step 0, or with ``resume`` from the latest checkpoint; write ``RUN/final``.

    ``notes`` are (what, messages) lines logged at the start (rows skipped, examples dropped);
    ``evaluate_first`` logs the held-out metrics at step 0 of a new run.
    """
    from rlvr.logging import ConsoleProgress, MetricsLogger

    c = stage.config
    loop = _Loop(stage)
    resumed = loop.start(resume=resume, overwrite=overwrite)
    stage.log(stage.describe())
    for what, lines in notes:
        if lines:
            stage.log(f"{len(lines)} {what}; first: {lines[0]}")
    logger = MetricsLogger(
        stage.out,
        tensorboard=c.logging.tensorboard,
        wandb_project=c.logging.wandb_project,
        config=to_dict(stage.given_config),
    )
    if resumed:
        logger.truncate_after(loop.step)
    elif evaluate_first:
        logger.log(0, stage.evaluate())
    progress = ConsoleProgress(
        stage.steps, start_step=loop.step, every=c.logging.log_every, fields=progress_fields, timings=()
    )
    previous = signal.signal(signal.SIGINT, loop.request_stop)
    try:
        interrupted = loop.train_steps(logger, progress)
        if loop.saved_step != loop.step:
            loop.save()
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        stage.log(f"interrupted: the state at step {loop.step} is saved; --resume continues it")
    else:
        write_final(stage.model, stage.tokenizer, stage.out)
    logger.close()
    return StageResult(stage.out, loop.step, interrupted)
