"""The phases of a training step on one rank, each a table of rows, and the plan's text."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlvr.config import Config
from rlvr.errors import ConfigError
from rlvr.memory_plan.shape import ModelShape, load_model_shape, lora_parameters
from rlvr.memory_plan.terms import (
    FSDP_GATHERED_LAYERS,
    SAMPLING_LOGIT_COPIES,
    Precision,
    activation_bytes,
    format_size,
    kv_cache_bytes,
    logits_bytes,
    resolve_precision,
)
from rlvr.training.parallel import GRADIENT_BUCKET_ELEMENTS


@dataclass(frozen=True)
class MemoryRow:
    label: str
    bytes: int


@dataclass(frozen=True)
class Phase:
    name: str
    rows: tuple[MemoryRow, ...]

    @property
    def total(self) -> int:
        return sum(row.bytes for row in self.rows)

    def get(self, prefix: str) -> int:
        """Bytes of the rows whose label starts with ``prefix`` (0 if none)."""
        return sum(row.bytes for row in self.rows if row.label.startswith(prefix))


@dataclass(frozen=True)
class MemoryPlan:
    """Per-rank device bytes of each phase of a training step; the run needs the largest."""

    summary: tuple[str, ...]
    phases: tuple[Phase, ...]
    host_bytes: int = 0
    """Bytes per rank that parallel.cpu_offload keeps in CPU memory (not in the phases)."""
    device_memory: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda phase: phase.total)

    @property
    def fits(self) -> bool | None:
        return None if self.device_memory is None else self.peak.total <= self.device_memory

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)


@dataclass(frozen=True)
class Layout:
    """How the ranks hold the models (``parallel.*`` on ``nproc`` ranks)."""

    nproc: int
    strategy: str
    precision: Precision
    offload: bool
    mixed_precision: bool

    @property
    def shards(self) -> int:
        return self.nproc if self.strategy == "fsdp2" else 1


@dataclass(frozen=True)
class Workload:
    """One rank's share of a step, at the largest sizes the config allows."""

    prompts: int
    """Prompts this rank generates for: ceil(prompts_per_step / N)."""
    samples: int
    decoding: int
    """Sequences decoded at once: whole groups, at most max_batch_sequences (at least one group)."""
    prompt_len: int
    response_len: int
    micro_rows: int
    """Sequences in one micro-batch: as many of prompt_len + response_len tokens as
    micro_batch_tokens holds (at least one), at most this rank's rows of a mini-batch."""

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.response_len


def rank_workload(config: Config, nproc: int) -> Workload:
    r, t = config.rollout, config.training
    n, seq_len = r.samples_per_prompt, r.max_prompt_tokens + r.max_new_tokens
    prompts = math.ceil(r.prompts_per_step / nproc)
    minibatch_rows = math.ceil(r.prompts_per_step * n / (nproc * t.updates_per_step))
    return Workload(
        prompts=prompts,
        samples=n,
        decoding=min(prompts, max(1, r.max_batch_sequences // n)) * n,
        prompt_len=r.max_prompt_tokens,
        response_len=r.max_new_tokens,
        micro_rows=min(minibatch_rows, max(1, t.micro_batch_tokens // seq_len)),
    )


@dataclass(frozen=True)
class Trained:
    """One trained transformer's bytes on one rank (the policy or the critic)."""

    weights: int
    gradients: int
    optimizer: int
    gathered: int
    """fsdp2: full parameters and unsharded gradients of 2 layers and the root, in forward/backward."""
    autocast_copies: int
    """autocast: the bfloat16 copies of the matmul weights the backward pass keeps."""
    offloaded: int
    """Bytes parallel.cpu_offload moves to CPU memory (weights, gradients, optimizer state)."""


def trained_bytes(
    shape: ModelShape,
    layout: Layout,
    *,
    params: int,
    root: int,
    matmul: int,
    lora: int,
    float32_trained: int = 0,
) -> Trained:
    """``params`` in the weights' dtype (trained unless ``lora`` > 0), a LoRA adapter of ``lora``
    and ``float32_trained`` (a value head) parameters in float32, sharded over the fsdp2 ranks."""
    w, shards = layout.precision.weight_bytes, layout.shards
    trained = (lora + float32_trained) * 4 + (0 if lora else params * w)
    weights = (params * w + (lora + float32_trained) * 4) // shards
    gradients = trained // shards
    optimizer = 2 * trained // shards  # AdamW's two states in the trained parameters' dtypes
    gathered = 0
    if layout.strategy == "fsdp2":
        compute = layout.precision.compute_param_bytes
        full = FSDP_GATHERED_LAYERS * shape.layer_parameters + root
        grads = FSDP_GATHERED_LAYERS * (lora // shape.num_layers if lora else shape.layer_parameters)
        grads += 0 if lora else root
        # unsharded gradients in the compute dtype, and a float32 copy to reduce under mixed precision
        gathered = full * compute + grads * (compute + (4 if layout.mixed_precision else 0))
    kept = 0 if layout.offload else 1
    return Trained(
        weights=kept * weights,
        gradients=kept * gradients,
        optimizer=kept * optimizer,
        gathered=gathered,
        autocast_copies=2 * matmul if layout.precision.mode == "autocast" else 0,
        offloaded=(1 - kept) * (weights + gradients + optimizer),
    )


def resolve_layout(config: Config, nproc: int, device: str) -> Layout:
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    p = config.parallel
    strategy = p.strategy if nproc > 1 else "none"  # one process ignores parallel.strategy
    if strategy == "none" and nproc > 1:
        raise ConfigError(f"setting 'parallel.strategy' is none, which allows one rank; --nproc is {nproc}")
    fsdp = strategy == "fsdp2"
    if fsdp and p.cpu_offload and device != "cuda":
        raise ConfigError(
            "setting 'parallel.cpu_offload' needs GPUs; a CPU run keeps everything in CPU memory"
        )
    precision = resolve_precision(config, device, strategy)
    return Layout(
        nproc, strategy, precision, fsdp and p.cpu_offload, fsdp and p.mixed_precision == "bfloat16"
    )


def plan_memory(
    config: Config,
    shape: ModelShape,
    *,
    nproc: int = 1,
    device: str = "cuda",
    critic_shape: ModelShape | None = None,
    device_memory: int | None = None,
) -> MemoryPlan:
    """Per-rank memory of ``config`` on ``nproc`` ranks of ``device`` (cpu or cuda), by phase.

    ``shape`` is the policy's; ``critic_shape`` the critic's transformer (default: the policy's),
    used only when the algorithm needs a critic. The formulas are in :mod:`rlvr.memory_plan`.
    """
    from rlvr.algorithms.validation import needs_critic, needs_reference_model

    layout = resolve_layout(config, nproc, device)
    work = rank_workload(config, nproc)
    m, w = config.model, layout.precision.weight_bytes
    lora = lora_parameters(shape, m.lora_rank, m.lora_target_modules) if m.lora_rank > 0 else 0
    policy = trained_bytes(
        shape,
        layout,
        params=shape.total_parameters,
        root=shape.root_parameters,
        matmul=shape.matmul_parameters,
        lora=lora,
    )
    reference = 0  # a LoRA policy with its adapter off is the reference
    if needs_reference_model(config.algorithm) and not lora:
        reference = shape.total_parameters * w // layout.shards
    critic = None
    if needs_critic(config.algorithm):
        c, rank = critic_shape or shape, config.critic.lora_rank
        critic = trained_bytes(
            c,
            layout,
            params=c.body_parameters,
            root=c.embedding_parameters + c.hidden_size,
            matmul=c.matmul_parameters - (0 if c.tie_word_embeddings else c.embedding_parameters),
            lora=lora_parameters(c, rank, m.lora_target_modules) if rank > 0 else 0,
            float32_trained=c.hidden_size + 1,  # the value head, trained in full
        )

    of_n = f", 1/{layout.shards}" if layout.shards > 1 else ""
    at_rest = [MemoryRow(f"policy weights ({'float32' if w == 4 else 'bfloat16'}{of_n})", policy.weights)]
    if policy.optimizer:
        at_rest.append(MemoryRow(f"policy AdamW state{of_n}", policy.optimizer))
    if reference and not layout.offload:
        at_rest.append(MemoryRow(f"reference model{of_n}", reference))
    if critic is not None:
        at_rest.append(MemoryRow(f"critic weights + AdamW state{of_n}", critic.weights + critic.optimizer))
    generating: list[MemoryRow] = []  # rollout.generate_ahead: a generation runs beside the update
    if config.rollout.generate_ahead:
        at_rest.append(
            MemoryRow("generating copy (generate_ahead, float32, whole)", (shape.total_parameters + lora) * 4)
        )
        generating = [
            MemoryRow(f"{row.label}, generated ahead", row.bytes)
            for row in _rollout_rows(shape, layout, work, policy, lora)
            if row.label.startswith(("KV cache", "prefill"))
        ]
    grads = MemoryRow(f"policy gradients{of_n}", policy.gradients)
    phases = [
        Phase("rollout", tuple(at_rest + _rollout_rows(shape, layout, work, policy, lora))),
        Phase(
            "update", tuple(at_rest + _update_rows(config, shape, layout, work, policy, grads) + generating)
        ),
        Phase("optimizer step", tuple(at_rest + _step_rows(shape, layout, device, grads, lora) + generating)),
    ]
    if critic is not None:
        rows = [*at_rest]
        if layout.strategy == "fsdp2":
            rows.append(MemoryRow("critic gathered layers + unsharded gradients", critic.gathered))
        if critic.autocast_copies:
            rows.append(MemoryRow("critic bfloat16 weight copies (autocast)", critic.autocast_copies))
        rows.append(MemoryRow(f"critic gradients{of_n}", critic.gradients))
        checkpointing = m.gradient_checkpointing
        critic_activations = activation_bytes(
            critic_shape or shape, work.micro_rows, work.seq_len, layout.precision.mode, checkpointing
        )
        rows.append(
            MemoryRow(f"critic activations ({work.micro_rows} x {work.seq_len} tokens)", critic_activations)
        )
        phases.append(Phase("critic update", tuple(rows)))

    host = (
        policy.offloaded
        + (critic.offloaded if critic is not None else 0)
        + (reference if layout.offload else 0)
    )
    notes = []
    unknown = sorted(set(m.lora_target_modules) - set(shape.linear_dims())) if lora else []
    if unknown:
        notes.append(f"LoRA target modules not counted: {', '.join(unknown)}")
    summary = _summary(config, shape, layout, work, lora, device)
    return MemoryPlan(summary, tuple(phases), host, device_memory, tuple(notes))


def _rollout_rows(
    shape: ModelShape, layout: Layout, work: Workload, policy: Trained, lora: int
) -> list[MemoryRow]:
    act = layout.precision.activation_bytes
    rows = []
    if layout.strategy == "fsdp2":  # the whole policy is gathered for generation
        gathered = shape.total_parameters * layout.precision.compute_param_bytes + lora * 4
        rows.append(MemoryRow("policy gathered for generation", gathered))
    if policy.autocast_copies:  # generation runs in one autocast context: its weight cache lives throughout
        rows.append(MemoryRow("bfloat16 weight copies (autocast cache)", policy.autocast_copies))
    kv = kv_cache_bytes(shape, work.decoding, work.seq_len, act)
    rows.append(MemoryRow(f"KV cache ({work.decoding} sequences x {work.seq_len} tokens)", kv))
    # The prefill (no grad) holds one layer's MLP (3 f-wide tensors) and attention (4 h-wide) at a
    # time; each drawn token, SAMPLING_LOGIT_COPIES float32 [A, V] tensors.
    prefill = (
        work.decoding
        // work.samples
        * work.prompt_len
        * (3 * shape.intermediate_size + 4 * shape.hidden_size)
        * act
    )
    sampling = SAMPLING_LOGIT_COPIES * work.decoding * shape.vocab_size * 4
    rows.append(MemoryRow("prefill and sampling scratch", prefill + sampling))
    return rows


def _update_rows(
    config: Config, shape: ModelShape, layout: Layout, work: Workload, policy: Trained, grads: MemoryRow
) -> list[MemoryRow]:
    rows = []
    if layout.strategy == "fsdp2":
        rows.append(MemoryRow("gathered layers + unsharded gradients", policy.gathered))
    if policy.autocast_copies:
        rows.append(MemoryRow("bfloat16 weight copies (autocast)", policy.autocast_copies))
    rows.append(grads)
    mode, checkpointing = layout.precision.mode, config.model.gradient_checkpointing
    how = "checkpointed" if checkpointing else f"{shape.num_layers} layers"
    rows.append(
        MemoryRow(
            f"activations ({work.micro_rows} x {work.seq_len} tokens, {how})",
            activation_bytes(shape, work.micro_rows, work.seq_len, mode, checkpointing),
        )
    )
    entropy_grad = config.algorithm.entropy_coef > 0
    act = layout.precision.activation_bytes
    rows.append(
        MemoryRow(
            f"logits + log-softmax/entropy ({work.micro_rows} x {work.response_len + 1} x {shape.vocab_size})",
            logits_bytes(work.micro_rows, work.response_len, shape.vocab_size, act, mode, entropy_grad),
        )
    )
    return rows


def _step_rows(
    shape: ModelShape, layout: Layout, device: str, grads: MemoryRow, lora: int
) -> list[MemoryRow]:
    rows = [grads]
    trained, size = (lora, 4) if lora else (shape.total_parameters, layout.precision.weight_bytes)
    if layout.strategy == "ddp":  # gradients are averaged in flat buckets, one at a time
        rows.append(MemoryRow("gradient all-reduce bucket", min(trained, GRADIENT_BUCKET_ELEMENTS) * size))
    if not layout.offload:
        # Foreach AdamW (torch's default on GPUs) takes sqrt(exp_avg_sq) of every tensor at once; the
        # per-tensor loop on CPU makes two temporaries of one tensor at a time.
        biggest = lora if lora else max(shape.embedding_parameters, shape.layer_parameters)
        temporaries = trained if device == "cuda" else 2 * biggest
        rows.append(MemoryRow("AdamW step temporaries", temporaries * size // layout.shards))
    return rows


def _summary(
    config: Config, shape: ModelShape, layout: Layout, work: Workload, lora: int, device: str
) -> tuple[str, ...]:
    m, n = config.model, config.rollout.samples_per_prompt
    mode = {
        "float32": "float32",
        "bfloat16": "bfloat16",
        "autocast": "float32 weights under bfloat16 autocast",
    }
    model = f"model {m.path}: {shape.total_parameters / 1e6:.1f}M parameters ({shape.num_layers} layers, "
    model += f"hidden {shape.hidden_size}, vocab {shape.vocab_size})"
    if lora:
        model += f"; LoRA rank {m.lora_rank}: {lora / 1e6:.2f}M trained"
    ranks = f"{layout.nproc} rank{'s' if layout.nproc > 1 else ''} on {device}, strategy {layout.strategy}"
    if layout.nproc == 1:
        ranks += " (one process: parallel.strategy unused)"
    ranks += f"; compute in {mode[layout.precision.mode]}"
    ranks += ", bfloat16 mixed precision" if layout.mixed_precision else ""
    ranks += ", CPU offload" if layout.offload else ""
    work_line = (
        f"per rank: {work.prompts} prompts x {n} samples ({work.decoding} decoded at once); micro-batches "
        f"of {work.micro_rows} sequences x ({work.prompt_len} + {work.response_len}) tokens"
    )
    return model, ranks, work_line


def plan_for_config(
    config: Config, *, nproc: int = 1, device: str | None = None, device_memory: int | None = None
) -> MemoryPlan:
    """:func:`plan_memory` with the shapes read from the configs of model.path and critic.path.

    ``device`` None takes ``training.device``, where auto counts as cuda: the planner plans GPU runs
    (auto then means bfloat16 weights); pass ``cpu`` to plan a CPU run.
    """
    from rlvr.algorithms.validation import needs_critic

    if device is None:
        device = "cuda" if config.training.device == "auto" else config.training.device
    m = config.model
    shape = load_model_shape(m.path, trust_remote_code=m.trust_remote_code)
    critic_shape = None
    if needs_critic(config.algorithm) and config.critic.path is not None:
        critic_shape = load_model_shape(
            config.critic.path, key="critic.path", trust_remote_code=m.trust_remote_code
        )
    return plan_memory(
        config, shape, nproc=nproc, device=device, critic_shape=critic_shape, device_memory=device_memory
    )


def format_plan(plan: MemoryPlan) -> str:
    """One table per phase, the peak, and whether it fits in the device memory."""
    width = max(len(row.label) for phase in plan.phases for row in phase.rows) + 4
    lines = list(plan.summary)
    for phase in plan.phases:
        lines += ["", f"{phase.name} (per rank)"]
        lines += [f"  {row.label:<{width}}{format_size(row.bytes):>12}" for row in phase.rows]
        lines.append(f"  {'total':<{width}}{format_size(phase.total):>12}")
    peak = plan.peak
    lines += ["", f"peak: {format_size(peak.total)} per rank, in the {peak.name} phase"]
    if plan.host_bytes:
        lines.append(f"CPU memory per rank for the offloaded shards: {format_size(plan.host_bytes)}")
    if plan.device_memory is None:
        lines.append("pass --device-memory (for example 80GB) to check that it fits")
    elif plan.fits:
        spare = format_size(plan.device_memory - peak.total)
        lines.append(f"fits in {format_size(plan.device_memory)} ({spare} to spare)")
    else:
        lines.append(f"does not fit (needs {format_size(peak.total)}, has {format_size(plan.device_memory)})")
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)
