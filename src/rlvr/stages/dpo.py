"""``rlvr dpo``: preference optimisation on (prompt, chosen, rejected) rows: DPO, IPO, SimPO.

Kimi k1.5's long2short DPO (the shortest correct answer chosen, longer ones rejected) reads the
``pairs.jsonl`` that ``rlvr sample ... select=pairs`` writes, as it is. One step, top to bottom::

    the step's pairs (a seeded permutation per epoch; rank r takes every N-th)
      -> micro-batches of at most training.micro_batch_tokens, chosen and rejected of a pair together
      -> the reference's sequence log-probs under no_grad (a frozen copy; with LoRA the policy with
         its adapter off; none for a reference-free loss)
      -> the policy's sequence log-probs (sums, or per-token means where the loss says so)
      -> loss = the preference loss summed over pairs / the step's pairs over all ranks
      -> backward per micro-batch, gradients averaged over ranks, clipped -> one AdamW step

Tokenizing (prompt template, completion mask, EOS) is that of ``rlvr sft``
(:mod:`rlvr.training.sft_data`); the losses are :data:`rlvr.algorithms.preference.PREFERENCE_LOSSES`;
the run directory, checkpoints, resume and Ctrl-C are :mod:`rlvr.training.stage_run`'s.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from rlvr.algorithms.preference import PREFERENCE_LOSSES, PREFERENCE_TENSOR_ARGS, sequence_logprobs
from rlvr.config import (
    AT_LEAST_0,
    AT_LEAST_1,
    POSITIVE,
    CheckpointConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    Range,
    check_ranges,
)
from rlvr.distributed import all_reduce_max, all_reduce_sum, rank, world_size
from rlvr.errors import ConfigError, DataError, UnknownNameError
from rlvr.tasks.loading import BadRow, iter_rows
from rlvr.training.sft_data import (
    SFTDataSettings,
    SFTExample,
    SFTMicroBatch,
    TokenizedExample,
    example_from_row,
    pad_rows,
    tokenize_example,
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
    total_steps,
    validate_stage_config,
)

# --- settings -------------------------------------------------------------------------------------


@dataclass
class DPODataConfig:
    """The data of ``rlvr dpo``: files of (prompt, chosen, rejected) rows and how they are tokenized."""

    train: str = ""
    """The training file: .jsonl, .json or .parquet (required); rlvr sample's pairs.jsonl as it is."""
    held_out: str | None = None
    """A held-out file in the same format, whose preference loss and accuracy are logged as eval/*."""
    held_out_fraction: float = 0.0
    """Hold out this fraction of the training rows (a seeded draw) when no held_out file is given."""
    prompt: str = "prompt"
    """Field of the prompt (dotted names reach into nested objects)."""
    chosen: str = "chosen"
    """Field of the chosen (preferred) completion."""
    rejected: str = "rejected"
    """Field of the rejected completion."""
    template: str = "plain"
    """Prompt template, as for rlvr sft: a text template (plain, r1_zero) or a chat template."""
    max_tokens: int = 2048
    """Most tokens of one tokenized side (prompt and completion together)."""
    too_long: Literal["error", "drop"] = "error"
    """A pair with a side over max_tokens: error names it; drop leaves the pair out and counts it."""
    skip_bad_rows: bool = False
    """Skip rows that cannot be read or tokenized (counted and the first reported) instead of failing."""

    def side(self, completion: str) -> SFTDataSettings:
        """The SFT reading settings of one side of a pair: ``completion`` is its field."""
        return SFTDataSettings(
            prompt=self.prompt,
            completion=completion,
            template=self.template,
            max_tokens=self.max_tokens,
            too_long=self.too_long,
            skip_bad_rows=self.skip_bad_rows,
        )


@dataclass
class DPOLossConfig:
    name: str = "dpo"
    """The preference loss: dpo (Rafailov 2023, eq. 7), ipo (Azar 2023, eq. 17) or simpo (Meng 2024,
    reference-free, length-normalised); see docs/algorithms.md."""
    beta: float | None = None
    """dpo, simpo: the inverse temperature of the implicit reward (None: the loss's default, 0.1 / 2.0)."""
    label_smoothing: float | None = None
    """dpo: the assumed probability in [0, 0.5) that a label is flipped (conservative DPO; None: 0)."""
    ipo_tau: float | None = None
    """ipo: the regulariser tau; the target margin is 1 / (2 tau) (None: 0.1)."""
    simpo_gamma: float | None = None
    """simpo: the target reward margin gamma (None: 1.0)."""
    sft_coef: float = 0.0
    """Weight of the per-token NLL of the chosen answer added to each pair's loss (RPO)."""

    def function(self) -> Callable[..., Any]:
        try:
            return PREFERENCE_LOSSES.get(self.name)
        except UnknownNameError as e:
            raise ConfigError(f"setting 'loss.name': {e}") from None

    def hyperparameters(self) -> dict[str, float]:
        """The keywords of the loss: the settings given; one the loss does not take is an error."""
        takes = [p for p in inspect.signature(self.function()).parameters if p not in PREFERENCE_TENSOR_ARGS]
        out: dict[str, float] = {"sft_coef": self.sft_coef}
        for key in ("beta", "label_smoothing", "ipo_tau", "simpo_gamma"):
            value = getattr(self, key)
            if value is None:
                continue
            if key not in takes:
                raise ConfigError(
                    f"setting 'loss.{key}' is not a hyperparameter of loss '{self.name}' "
                    f"(it takes: {', '.join(takes)}); leave it unset"
                )
            out[key] = value
        return out


@dataclass
class DPOTrainingConfig:
    pairs_per_step: int = 16
    """Pairs (rows) in one optimizer step, over all ranks."""
    micro_batch_tokens: int = 4096
    """Most tokens in one forward/backward pass: sequences (2 per pair) x padded width."""
    steps: int | None = None
    """Optimizer steps; None: epochs passes over the training pairs."""
    epochs: int | None = None
    """Passes over the training pairs (when steps is None; None then means 1)."""
    seed: int = 0
    """Seed of the pair order, the held-out draw and new weights (LoRA)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    cpu_threads: int | None = None
    """Intra-op CPU threads of this process (None keeps torch's default)."""


@dataclass
class DPOConfig:
    """Settings of ``rlvr dpo``: defaults, then a YAML file, then ``key=value`` items."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DPODataConfig = field(default_factory=DPODataConfig)
    loss: DPOLossConfig = field(default_factory=DPOLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6))
    training: DPOTrainingConfig = field(default_factory=DPOTrainingConfig)
    eval: StageEvalConfig = field(default_factory=StageEvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: StageLoggingConfig = logging_section("runs/dpo")
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


DPO_SETTING_RANGES: dict[str, Range] = {
    **STAGE_SETTING_RANGES,
    "loss.beta": POSITIVE,
    "loss.label_smoothing": Range(0, 0.5, high_open=True),
    "loss.ipo_tau": POSITIVE,
    "loss.simpo_gamma": AT_LEAST_0,
    "loss.sft_coef": AT_LEAST_0,
    "training.pairs_per_step": AT_LEAST_1,
}
"""The range of every numeric setting of :class:`DPOConfig`."""


def validate_dpo_config(c: DPOConfig) -> None:
    """Every number in range and the settings that need more than one field; errors name the key."""
    check_ranges(c, DPO_SETTING_RANGES)
    if not c.data.train.strip():
        raise ConfigError("setting 'data.train' is required: the pairs file (.jsonl, .json, .parquet)")
    validate_stage_config(c)
    try:
        c.data.side(c.data.chosen)
    except ConfigError as e:
        raise ConfigError(str(e).replace("setting '", "setting 'data.", 1)) from None
    c.loss.hyperparameters()


def load_dpo_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DPOConfig:
    """The validated settings from defaults, a YAML file, then ``key=value`` items."""
    return load_stage_config(DPOConfig, validate_dpo_config, path, overrides)


# --- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceRow:
    """One row, checked: the chosen and rejected sides, each an SFT example of the same prompt."""

    where: str
    chosen: SFTExample
    rejected: SFTExample


@dataclass(frozen=True)
class TokenizedPair:
    where: str
    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def length(self) -> int:
        return max(self.chosen.length, self.rejected.length)


def read_pairs(path: str | Path, c: DPODataConfig) -> tuple[list[PreferenceRow], list[str]]:
    """Every row of ``path`` checked (a DataError names the file, line and field), and the messages of
    rows skipped with ``data.skip_bad_rows``."""
    rows: list[PreferenceRow] = []
    skipped: list[str] = []
    count = 0
    for where, row in iter_rows(path):
        count += 1
        try:
            if isinstance(row, BadRow):
                raise DataError(row.message)
            chosen = example_from_row(row, where, c.side(c.chosen))
            rows.append(PreferenceRow(where, chosen, example_from_row(row, where, c.side(c.rejected))))
        except DataError as e:
            if not c.skip_bad_rows:
                raise DataError(f"{e} (set data.skip_bad_rows=true to skip such rows)") from None
            skipped.append(str(e))
    if not rows:
        raise DataError(
            f"{path}: no pairs among its {count} rows" + (f"; first: {skipped[0]}" if skipped else "")
        )
    return rows, skipped


def read_data(c: DPODataConfig, seed: int) -> tuple[list[PreferenceRow], list[PreferenceRow], list[str]]:
    """Training and held-out rows, checked before any tokenizer or model loads, and the rows skipped."""
    train, skipped = read_pairs(c.train, c)
    held: list[PreferenceRow] = []
    if c.held_out is not None:
        held, more = read_pairs(c.held_out, c)
        skipped += more
    elif c.held_out_fraction > 0:
        train, held = split_held_out(train, c.held_out_fraction, seed, "pair")
    return train, held, skipped


def tokenize_pairs(
    rows: Sequence[PreferenceRow], tokenizer: Any, c: DPODataConfig
) -> tuple[list[TokenizedPair], list[str], list[str]]:
    """Both sides of every row tokenized as ``rlvr sft`` tokenizes a prompt and completion; returns the
    pairs, the rows skipped as bad and the pairs dropped for a side over ``data.max_tokens``."""
    pairs: list[TokenizedPair] = []
    skipped: list[str] = []
    dropped: list[str] = []
    for row in rows:
        try:
            sides = [tokenize_example(side, tokenizer, c.template) for side in (row.chosen, row.rejected)]
        except DataError as e:
            if not c.skip_bad_rows:
                raise DataError(f"{e} (set data.skip_bad_rows=true to skip such rows)") from None
            skipped.append(str(e))
            continue
        longest = max(s.length for s in sides)
        if longest > c.max_tokens:
            message = f"{row.where}: {longest} tokens, more than data.max_tokens = {c.max_tokens}"
            if c.too_long == "error":
                raise DataError(f"{message}; raise it, or set data.too_long=drop to leave such pairs out")
            dropped.append(message)
            continue
        pairs.append(TokenizedPair(row.where, *sides))
    if not pairs:
        raise DataError(f"no pairs left of {len(rows)} ({len(skipped)} bad, {len(dropped)} too long)")
    return pairs, skipped, dropped


def pair_micro_batches(
    pairs: Sequence[TokenizedPair], rows: Sequence[int], max_tokens: int, pad_id: int
) -> list[SFTMicroBatch]:
    """Right-padded micro-batches of at most ``max_tokens`` tokens (sequences x width) holding both
    sides of each pair: sequence 2j is the chosen and 2j + 1 the rejected side of the j-th pair of
    ``mb.rows[0::2] // 2``. Pairs are sorted by length (then index); one longer than the budget
    gets a micro-batch of its own."""
    chunks: list[list[int]] = []
    for r in sorted(rows, key=lambda r: (pairs[r].length, r)):
        if chunks and 2 * (len(chunks[-1]) + 1) * pairs[r].length <= max_tokens:
            chunks[-1].append(r)
        else:
            chunks.append([r])
    sides = [side for p in pairs for side in (p.chosen, p.rejected)]  # pair r: sequences 2r, 2r + 1
    return [pad_rows(sides, [s for r in chunk for s in (2 * r, 2 * r + 1)], pad_id) for chunk in chunks]


# --- one step -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairBatchSettings:
    micro_batch_tokens: int
    pad_id: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None


def pair_logprobs(
    model: Any, mb: SFTMicroBatch, average: bool, autocast_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of the chosen [n] and rejected [n] sides of a micro-batch's n pairs, over
    their completion tokens only (sums, or per-token means with ``average``); the output projection
    runs on those tokens only (:func:`rlvr.training.stage_run.target_logprobs`)."""
    logprobs = target_logprobs(model, mb, autocast_dtype)  # [2n, T], 0 off the completions
    sequence = sequence_logprobs(logprobs, mb.loss_mask, average=average)  # [2n]
    return sequence[0::2], sequence[1::2]


@dataclass(frozen=True)
class PreferenceLoss:
    """The loss of the run: the registered function and its hyperparameters."""

    fn: Callable[..., Any]
    hyperparameters: dict[str, float]

    @property
    def average(self) -> bool:
        return bool(self.fn.average_logprobs)

    def metric_keys(self) -> list[str]:
        """The metrics the loss reports, sorted (from a call on no pairs)."""
        empty = torch.zeros(0, dtype=torch.float64)
        reference = (empty, empty) if self.fn.needs_reference else None
        return sorted(self((empty, empty), reference, empty, 1.0).metrics)

    def __call__(
        self,
        policy: tuple[torch.Tensor, torch.Tensor],
        reference: tuple[torch.Tensor, torch.Tensor] | None,
        chosen_lengths: torch.Tensor,
        num_pairs: float,
    ) -> Any:
        """The loss of n pairs from their policy and reference (chosen [n], rejected [n]) log-probs."""
        ref_chosen, ref_rejected = reference if reference is not None else (None, None)
        return self.fn(
            policy_chosen=policy[0],
            policy_rejected=policy[1],
            reference_chosen=ref_chosen,
            reference_rejected=ref_rejected,
            chosen_lengths=chosen_lengths,
            num_pairs=num_pairs,
            **self.hyperparameters,
        )


def _chosen_lengths(mb: SFTMicroBatch) -> torch.Tensor:
    """Completion tokens of each chosen side [n]."""
    return mb.loss_mask.sum(-1)[0::2]


def _reference_logprobs(
    reference: Any, batches: Sequence[SFTMicroBatch], loss: PreferenceLoss, s: PairBatchSettings
) -> list[Any]:
    """The frozen reference's sequence log-probs of every micro-batch (Nones without a reference)."""
    if reference is None:
        return [None] * len(batches)
    with reference.active() as model:  # no_grad; with LoRA, the policy with its adapter off
        return [pair_logprobs(model, mb, loss.average, s.autocast_dtype) for mb in batches]


def accumulate_gradients(
    model: Any,
    reference: Any,
    pairs: Sequence[TokenizedPair],
    rows: list[int],
    loss: PreferenceLoss,
    s: PairBatchSettings,
    parallel: Any = None,
) -> dict[str, float]:
    """Forward and backward over this rank's ``rows`` of one step; returns the step's metrics
    (``preference/*`` means over the step's pairs of all ranks).

    Each micro-batch's loss is its pairs' losses summed / the step's pairs over all ranks, times the
    world size because data parallelism averages gradients: the accumulated gradient is that of the
    mean loss per pair of the step, whatever the split. Every rank runs as many passes as the
    busiest (idle ones, loss x 0), so the collectives of a sharded model stay in step.
    """
    num_pairs = float(all_reduce_sum(torch.tensor(float(len(rows)), dtype=torch.float64)))
    batches = [
        micro_batch_to(mb, s.device) for mb in pair_micro_batches(pairs, rows, s.micro_batch_tokens, s.pad_id)
    ]
    ref_model = reference.model if reference is not None and not reference.shares_policy else None
    gathered = parallel.gathered(ref_model) if parallel and ref_model else contextlib.nullcontext()
    with gathered:
        references = _reference_logprobs(reference, batches, loss, s)
    passes = int(all_reduce_max(torch.tensor(float(len(batches)))).item())
    sums: dict[str, torch.Tensor] = {}
    for i in range(passes):
        if i >= len(batches):  # idle: keeps the ranks' forward and backward passes aligned
            idle = torch.full((1, 1), s.pad_id, dtype=torch.long, device=s.device)
            (model(input_ids=idle, use_cache=False).logits.sum() * 0.0).backward()
            continue
        mb = batches[i]
        policy = pair_logprobs(model, mb, loss.average, s.autocast_dtype)
        out = loss(policy, references[i], _chosen_lengths(mb), num_pairs)
        (out.loss * world_size()).backward()
        _add_metrics(sums, out.metrics, len(mb.rows) // 2)
    return _global_means(sums, loss, num_pairs)


def _add_metrics(sums: dict[str, torch.Tensor], metrics: dict[str, torch.Tensor], n: int) -> None:
    """Add a loss call's per-pair means, times its ``n`` pairs, to ``sums``."""
    for key, value in metrics.items():
        sums[key] = sums.get(key, torch.zeros((), dtype=torch.float64)) + value.detach().double().cpu() * n


def _global_means(sums: dict[str, torch.Tensor], loss: PreferenceLoss, num_pairs: float) -> dict[str, float]:
    """Per-pair means over every rank: the sums of the loss's metrics (a rank without pairs adds 0s)."""
    keys = loss.metric_keys()
    zero = torch.zeros((), dtype=torch.float64)
    totals = all_reduce_sum(torch.stack([sums.get(k, zero) for k in keys]))
    out = {k: float(v) / max(num_pairs, 1.0) for k, v in zip(keys, totals, strict=True)}
    out["preference/pairs"] = num_pairs
    return out


@torch.no_grad()
def held_out_metrics(
    model: Any, reference: Any, pairs: Sequence[TokenizedPair], loss: PreferenceLoss, s: PairBatchSettings
) -> dict[str, float]:
    """The preference loss, accuracy and reward margin of ``pairs`` (split over ranks), as eval/*."""
    rows = rank_rows(range(len(pairs)))
    num_pairs = float(all_reduce_sum(torch.tensor(float(len(rows)), dtype=torch.float64)))
    batches = [
        micro_batch_to(mb, s.device) for mb in pair_micro_batches(pairs, rows, s.micro_batch_tokens, s.pad_id)
    ]
    references = _reference_logprobs(reference, batches, loss, s)
    sums: dict[str, torch.Tensor] = {}
    for mb, ref in zip(batches, references, strict=True):
        policy = pair_logprobs(model, mb, loss.average, s.autocast_dtype)
        out = loss(policy, ref, _chosen_lengths(mb), num_pairs)
        _add_metrics(sums, out.metrics, len(mb.rows) // 2)
    means = _global_means(sums, loss, num_pairs)
    return {f"eval/{k.split('/', 1)[1]}": v for k, v in means.items()}


# --- the run --------------------------------------------------------------------------------------

PROGRESS_FIELDS = (
    ("loss", ("preference/loss",), "{:.4f}"),
    ("acc", ("preference/accuracy",), "{:.2f}"),
    ("margin", ("preference/reward_margin",), "{:.3f}"),
    ("held-out", ("eval/loss",), "{:.4f}"),
    ("lr", ("optim/lr",), "{:.2e}"),
)


class DPORun:
    """The parts of one run, built top to bottom: data, tokenizer, policy, reference, optimizer."""

    def __init__(self, config: DPOConfig, *, log: Any = print) -> None:
        from rlvr.distributed import init_from_environment
        from rlvr.training.model import (
            ReferenceModel,
            autocast_dtype,
            load_policy,
            load_tokenizer,
            resolve_device,
        )
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
        if c.training.pairs_per_step < world_size():
            raise ConfigError(
                f"setting 'training.pairs_per_step' ({c.training.pairs_per_step}) is smaller than the "
                f"{world_size()} ranks: every rank needs at least one pair per step"
            )
        if c.training.cpu_threads is not None:
            torch.set_num_threads(c.training.cpu_threads)
        torch.manual_seed(c.training.seed)
        self.loss = PreferenceLoss(c.loss.function(), c.loss.hyperparameters())
        # The data first (every row checked), then the tokenizer, then the weights.
        train, held, self.skipped = read_data(c.data, c.training.seed)
        self.tokenizer = load_tokenizer(c.model)
        self.train, bad, self.dropped = tokenize_pairs(train, self.tokenizer, c.data)
        self.skipped += bad
        self.held = tokenize_pairs(held, self.tokenizer, c.data)[0] if held else None
        self.steps = total_steps(
            c.training.steps, c.training.epochs, len(self.train), c.training.pairs_per_step
        )
        self.model = load_policy(c.model, self.device)
        # DPO's pi_ref: the initial policy, frozen (with LoRA the base with the adapter off, no copy).
        self.reference = ReferenceModel(self.model) if self.loss.fn.needs_reference else None
        if self.reference is not None and not self.reference.shares_policy:
            self.parallel.prepare(self.reference.model)  # sharded too, with no optimizer state
        self.parallel.prepare(self.model)  # before the optimizer: FSDP2 replaces the parameters
        self.optimizer, self.scheduler = build_adamw(self.model, c.optim, self.steps)
        self.batching = PairBatchSettings(
            micro_batch_tokens=c.training.micro_batch_tokens,
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
            autocast_dtype=autocast_dtype(c.model),
        )

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on the pairs of ``step``; returns its metrics."""
        from rlvr.training.parallel import clip_grad_norm

        t0 = time.perf_counter()
        c = self.config
        rows = step_rows(step, len(self.train), c.training.pairs_per_step, c.training.seed)
        self.model.train()
        metrics = accumulate_gradients(
            self.model, self.reference, self.train, rank_rows(rows), self.loss, self.batching, self.parallel
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.parallel.reduce_gradients(params)
        grad_norm = clip_grad_norm(params, c.optim.max_grad_norm)
        bad = torch.tensor(
            float(not (math.isfinite(metrics["preference/loss"]) and torch.isfinite(grad_norm)))
        )
        skipped = all_reduce_max(bad).item() > 0  # every rank skips a non-finite step together
        if not skipped:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        return {
            **metrics,
            "optim/lr": self.scheduler.get_last_lr()[0],
            "optim/grad_norm": float(grad_norm),
            "optim/skipped_updates": float(skipped),
            "time/step": elapsed,
        }

    def evaluate(self) -> dict[str, float]:
        """The held-out preference metrics (nothing without held-out data)."""
        if self.held is None:
            return {}
        self.model.eval()
        ref_model = self.reference.model if self.reference and not self.reference.shares_policy else None
        modules = [m for m in (self.model, ref_model) if m is not None]
        with self.parallel.gathered(*modules):  # forward passes only: ranks may run different numbers
            return held_out_metrics(self.model, self.reference, self.held, self.loss, self.batching)

    def describe(self) -> str:
        from rlvr.training.model import count_parameters

        c, t = self.config, self.config.training
        total, trainable = count_parameters(self.model)
        held = f"{len(self.held)} held-out" if self.held else "no held-out"
        if self.reference is None:
            reference = "no reference (reference-free loss)"
        elif self.reference.shares_policy:
            reference = "reference: the policy with its LoRA adapter off"
        else:
            reference = "reference: a frozen copy of the initial policy"
        hyper = ", ".join(f"{k}={v:g}" for k, v in self.loss.hyperparameters.items())
        return (
            f"model {c.model.path}: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable) on "
            f"{self.device}; {reference}; loss {c.loss.name} ({hyper}); data {c.data.train}: "
            f"{len(self.train)} training pairs, {held}; {t.pairs_per_step} pairs per step, {self.steps} "
            f"steps, micro-batches of at most {t.micro_batch_tokens} tokens; {self.parallel.describe()}"
        )

    def run(self, *, resume: bool = False, overwrite: bool = False) -> StageResult:
        """Train from step 0, or with ``resume`` from the latest checkpoint; write ``RUN/final``
        (:func:`rlvr.training.stage_run.run_stage`: run directory, checkpoints, logging, Ctrl-C)."""
        return run_stage(
            self,
            resume=resume,
            overwrite=overwrite,
            progress_fields=PROGRESS_FIELDS,
            notes=(("bad row(s) skipped", self.skipped), ("pair(s) too long dropped", self.dropped)),
            evaluate_first=self.held is not None,
        )


def train_dpo(
    config: DPOConfig, *, resume: bool = False, overwrite: bool = False, log: Any = print
) -> StageResult:
    """Preference-optimise with ``config`` in the run directory ``logging.output_dir`` (new or empty;
    ``resume`` continues its run from the latest checkpoint, ``overwrite`` deletes it first)."""
    return DPORun(config, log=log).run(resume=resume, overwrite=overwrite)
