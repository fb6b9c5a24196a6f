"""The run configuration: typed dataclasses, YAML files, dotted overrides and presets.

Layers, later ones winning: the dataclass defaults, the preset (``preset: dapo``), the YAML file,
then ``key=value`` overrides from the command line (``algorithm.eps_high=0.28``). Every key is
checked against the dataclasses before anything loads: an unknown key names the nearest valid one,
a value of the wrong type names the key and the expected type.

Batch sizes carry their unit: ``rollout.prompts_per_step`` prompts are drawn per step, each is
sampled ``rollout.samples_per_prompt`` times, the resulting completions are split into
``training.updates_per_step`` optimizer steps per epoch, and each forward/backward pass holds at
most ``training.micro_batch_tokens`` tokens (prompt + completion, padding included).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlvr.algorithms.config import AlgorithmConfig
from rlvr.errors import ConfigError
from rlvr.registry import nearest_name_hint


@dataclass
class ModelConfig:
    path: str = "toy"
    """A Hugging Face model directory or hub name; 'toy' is the tiny model shipped with rlvr."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Parameter dtype: auto is bfloat16 on a GPU that supports it, float32 on CPU."""
    autocast: Literal["none", "bfloat16"] = "none"
    """Mixed precision: keep float32 weights and run every forward pass (rollouts, updates, critic)
    under torch.autocast in bfloat16 (model.dtype auto then means float32); none computes in the
    weights' dtype."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% more compute)."""
    lora_rank: int = 0
    """LoRA rank (through peft); 0 trains all weights."""
    lora_alpha: float = 32.0
    """LoRA scaling alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "up_proj",
        "down_proj",
        "gate_proj",
    )
    """Module names LoRA adapts."""
    trust_remote_code: bool = False
    """Allow model code from the model's repository (needed by some architectures)."""


@dataclass
class RewardConfig:
    name: str = "math"
    """A registered reward or a 'module:function' path."""
    weight: float = 1.0
    """Weight of this component in the total reward."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword parameters of the reward function."""


@dataclass
class TaskConfig:
    name: str = "arithmetic"
    """A registered task: arithmetic | countdown | math | gsm8k | knights_knaves | code."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword parameters of the task (data files, field names, levels, sizes; see docs/tasks.md)."""
    template: str | None = None
    """Prompt template override (r1_zero | r1_chat | qwen_boxed | chat | plain); None keeps the task's."""
    rewards: list[RewardConfig] | None = None
    """Reward components override; None keeps the task's."""


@dataclass
class RolloutConfig:
    prompts_per_step: int = 16
    """Prompts drawn per training step (before dynamic-sampling refills)."""
    samples_per_prompt: int = 8
    """Completions sampled per prompt: the group size of GRPO-style estimators."""
    max_new_tokens: int = 64
    """Generation budget per completion, in tokens."""
    max_prompt_tokens: int = 1024
    """Longest prompt accepted, in tokens; a longer one is an error naming the problem."""
    temperature: float = 1.0
    """Sampling temperature; logprobs are those of softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 disables)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 disables)."""
    max_batch_sequences: int = 512
    """Most sequences decoded at once by the built-in engine."""
    decoder: Literal["auto", "transformers"] = "auto"
    """Forward passes of the built-in engine: auto runs Llama, Qwen2 and Qwen3 models through rlvr's
    own layer loop over a preallocated KV cache (same numbers, less overhead per token) and other
    models through their transformers forward; transformers always uses the latter."""
    generate_ahead: bool = False
    """Generate the next step's completions in a background thread, with a copy of the weights, while
    this step's update runs: the batch is one update off-policy; one more copy of the weights in memory
    (float32 only)."""
    autocast: Literal["none", "bfloat16"] = "none"
    """Precision of the trainer's engine (rollouts, in-training evaluation, samples): bfloat16 runs its
    forward passes under torch.autocast in bfloat16 even when training computes in float32 (a
    half-precision sampler against a float32 trainer; the old logprobs are then recomputed in the
    trainer's precision); none computes as model.dtype and model.autocast say."""
    engine: Literal["builtin", "vllm"] = "builtin"
    """Which engine samples (docs/rollout.md): builtin is rlvr's own decode loop over the policy
    module itself; vllm runs a vLLM engine in this process (one per rank) whose weights are pushed
    after every update (needs the vllm extra: pip install -e ".[vllm]")."""
    vllm_memory_fraction: float | None = None
    """engine=vllm: vLLM's gpu_memory_utilization, the fraction of the device's memory it may take
    (on CPU a fraction of host memory). None: 0.3 on a GPU (the trainer shares it), 0.1 on CPU."""
    vllm_cpu_kv_cache_gb: int = 1
    """engine=vllm on CPU: GiB of host memory for vLLM's KV cache (VLLM_CPU_KVCACHE_SPACE)."""
    vllm_eager: bool = False
    """engine=vllm: skip vLLM's torch.compile and CUDA graphs: starts in seconds instead of tens of
    seconds; decodes more slowly on a GPU (on CPU with the toy model it was faster)."""
    vllm_max_model_len: int | None = None
    """engine=vllm: longest prompt + completion vLLM makes room for (None: the model's own limit)."""
    server: str | None = None
    """engine=vllm: the URL of a running vLLM server (OpenAI-compatible, started with
    VLLM_SERVER_DEV_MODE=1 and --logprobs-mode processed_logprobs; docs/rollout.md) to sample from
    instead of an engine in this process; weights are pushed as a model directory under
    logging.output_dir that the server must be able to read. None: in process."""
    server_timeout_s: float = 600.0
    """engine=vllm with a server: longest wait for any one request; a server that does not answer in
    time is an error naming it."""
    vllm_check_every: int = 1
    """engine=vllm: compare a checksum of the served weights with the trainer's every this many weight
    pushes (0: never); a difference is an error."""
    vllm_max_first_kl: float = 1e-3
    """engine=vllm: largest k3 KL between the rollout's and the trainer's logprobs of the same weights
    allowed at the first update (mismatch/k3_kl); more is an error (the served policy is not the
    trained one)."""


@dataclass
class EnvConfig:
    name: str | None = None
    """An environment for multi-turn rollouts (tool_math | calculator | guess_number | task, or a
    user class as 'module:Class'; docs/agents.md); None trains single-turn on the task. The task
    still supplies the problems."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword parameters of the environment."""
    format: Literal["auto", "chat", "plain"] = "auto"
    """How turns become tokens: chat uses the tokenizer's chat template, plain appends observation
    text as it is (base models); auto is chat when the environment's first observation is chat
    messages and the tokenizer has a template."""
    max_turns: int = 4
    """Policy turns per trajectory."""
    max_turn_tokens: int | None = None
    """Tokens the policy may sample in one turn; None: rollout.max_new_tokens."""
    max_context_tokens: int = 2048
    """Prompt + sampled + observation tokens of one trajectory."""
    max_observation_tokens: int = 256
    """Longest observation appended, in tokens (a longer one is cut)."""
    turn_rewards: bool = False
    """Give each step's reward at the last token of its turn (token rewards) instead of the sum of
    all steps' rewards at the end of the trajectory."""
    workers: int = 8
    """Environment steps run at once (in threads)."""
    step_timeout_s: float = 60.0
    """An environment that takes longer to answer one step ends its trajectory with an error."""


@dataclass
class OptimConfig:
    lr: float = 1e-6
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from 0."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule after warmup."""
    min_lr_ratio: float = 0.0
    """cosine: final learning rate as a fraction of lr."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""


@dataclass
class CriticConfig:
    path: str | None = None
    """Initial weights of the value model: a causal LM directory or hub name; None: model.path (the policy's)."""
    lr: float = 5e-6
    """Peak learning rate of the critic's own AdamW (betas, eps, weight decay and min_lr_ratio are optim's)."""
    warmup_steps: int = 0
    """Critic optimizer steps of linear warmup from 0 (value pretraining steps count)."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Critic learning-rate schedule after warmup."""
    max_grad_norm: float = 1.0
    """Clip the critic's gradient norm to this (0 disables)."""
    updates_per_step: int | None = None
    """Critic optimizer steps per epoch; None: one on each of the policy's mini-batches (the same rows)."""
    pretrain_steps: int = 0
    """Value pretraining (VAPO sec. 3.1): rollout steps of the initial policy that train only the critic first."""
    lora_rank: int = 0
    """LoRA rank of the critic's transformer (alpha, dropout, modules: model.lora_*); 0 trains all weights."""


@dataclass
class TrainingConfig:
    steps: int = 100
    """Training steps (one step = one batch of rollouts and its updates)."""
    ppo_epochs: int = 1
    """Passes over each step's rollouts."""
    updates_per_step: int = 1
    """Optimizer steps per epoch: the step's completions are split into this many mini-batches."""
    micro_batch_tokens: int = 16384
    """Most tokens (padded, prompt + completion) in one forward/backward pass."""
    skip_zero_advantage: bool = True
    """Leave out of the update's forward and backward the completions whose advantage is 0 on
    every token (a group whose rewards are all equal, under grpo/dr_grpo/rloo), when nothing else
    in the loss reads them: the policy loss is a multiple of the advantage (ppo_clip, gspo, cispo,
    clip_cov), no KL or entropy term is in the loss, and, with an LM loss, the completion is wrong.
    The gradient is the same up to float summation order (the loss keeps the whole mini-batch's
    token and sequence counts); update metrics (entropy, ratios, clip fractions) are then over the
    completions that were computed."""
    max_sampling_rounds: int = 4
    """Dynamic sampling: most generation rounds per step to fill the batch with kept groups."""
    seed: int = 0
    """Seed of every random choice (sampling, prompt order, initialisation of new weights)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    cpu_threads: int | None = None
    """Intra-op CPU threads of this process (None keeps torch's default). Tiny models run fastest
    with 1: a second thread only adds synchronisation, and on a busy machine it costs far more."""


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate every N steps (0: only before and after training)."""
    benchmarks: list[str] = field(default_factory=lambda: ["task"])
    """What is evaluated: 'task' (the task's held-out split, with its template and rewards), shipped
    benchmarks (math500, gsm8k, aime24, ...) or local .jsonl/.json/.parquet files in the math format."""
    num_problems: int | None = 200
    """Problems evaluated per benchmark: the first N (None: all)."""
    samples_per_problem: int = 1
    """Completions per problem; temperature 0 always takes 1 (greedy accuracy)."""
    temperature: float = 0.0
    """0 decodes greedily."""
    max_new_tokens: int | None = None
    """None uses rollout.max_new_tokens."""
    template: str | None = None
    """Prompt template of the benchmarks; None: the task's."""
    skip_bad_rows: bool = False
    """Local benchmark files: leave out the rows that cannot be used (not UTF-8, not JSON, a missing
    or ungradable field), reported on the console, instead of stopping at the first."""
    best_metric: str | None = None
    """Keep the model with the best value of this logged metric in RUN_DIR/best (for example
    eval/accuracy or eval/math500/avg@1); None keeps none."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a higher or a lower best_metric is better."""


@dataclass
class CheckpointConfig:
    every: int = 50
    """Save every N steps (0: only at the end and on Ctrl-C)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted."""


@dataclass
class LoggingConfig:
    output_dir: str = "runs/latest"
    """Run directory: metrics.jsonl, TensorBoard events, samples, checkpoints, plots."""
    log_every: int = 1
    """Print a console line every N steps."""
    sample_every: int = 10
    """Write sample completions every N steps (0 disables)."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    wandb_project: str | None = None
    """Also log to Weights & Biases under this project (needs the wandb package)."""


@dataclass
class ParallelConfig:
    strategy: Literal["none", "ddp", "fsdp2"] = "ddp"
    """How ranks share the model under torchrun (a single process ignores it): ddp keeps a full
    replica per rank and all-reduces gradients; fsdp2 shards parameters, gradients and optimizer
    state over the ranks (fully_shard per decoder layer and the root); none allows one rank only."""
    mixed_precision: Literal["none", "bfloat16"] = "none"
    """fsdp2 only: keep float32 shards (model.dtype auto then means float32), compute with bfloat16
    parameters gathered from them, and reduce gradients in float32 (FSDP2's MixedPrecisionPolicy)."""
    cpu_offload: bool = False
    """fsdp2 only: keep parameter shards, gradients and optimizer state in CPU memory between uses."""
    timeout_s: float = 600.0
    """Seconds a collective waits for the other ranks before the job fails with an error (a dead
    rank ends the run instead of hanging it)."""


@dataclass
class DistillConfig:
    teacher: str | None = None
    """On-policy distillation (docs/algorithms.md, 'On-policy distillation'): the teacher model, a
    model directory or hub name ('toy': the shipped one), loaded frozen like the reference model. Its
    tokenizer must be the student's. None: no teacher, no distillation."""
    mode: Literal["advantage", "reward"] = "advantage"
    """advantage: each token's advantage is log pi_teacher - log pi_student of its sampled token (plus
    reward_weight times the task's advantage); reward: that log-ratio times coef is added to the token
    rewards before algorithm.advantage's estimator."""
    coef: float = 1.0
    """mode reward: the weight of the teacher's log-ratio in the token rewards."""
    reward_weight: float = 0.0
    """mode advantage: the weight of the task's advantage (algorithm.advantage on the task reward)
    added to the distillation advantage; 0 trains on the teacher's signal alone."""


@dataclass
class Config:
    preset: str | None = None
    """A named recipe (rlvr presets) applied before the file's own settings."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


# --- key checking --------------------------------------------------------------------------


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field type refers to (through Optional / list), if any."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    for arg in getattr(tp, "__args__", ()) or ():
        found = _dataclass_of(arg)
        if found is not None:
            return found
    return None


def _resolved_fields(cls: type) -> dict[str, Any]:
    import typing

    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_keys(data: Any, cls: type = Config, prefix: str = "", origin: str = "") -> None:
    """Raise ConfigError for the first key of ``data`` that is not a field of ``cls`` (recursively)."""
    if not isinstance(data, dict):
        return
    fields = _resolved_fields(cls)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            valid = [f"{prefix}{name}" for name in fields]
            where = f" ({origin})" if origin else ""
            raise ConfigError(f"unknown setting '{full}'{where}{nearest_name_hint(full, valid)}")
        sub = _dataclass_of(fields[key])
        if sub is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                check_keys(item, sub, f"{full}[{i}].", origin)
        else:
            check_keys(value, sub, f"{full}.", origin)


# --- loading -------------------------------------------------------------------------------


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(
                f"override '{item}' must look like key=value (for example algorithm.eps_high=0.28)"
            )
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=True)  # type: ignore[return-value]


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _preset_layer(name: str) -> dict[str, Any]:
    from rlvr.algorithms.presets import get_preset

    preset = get_preset(name)
    defaults = AlgorithmConfig()
    layer: dict[str, Any] = {"algorithm": {}}
    for f in dataclasses.fields(AlgorithmConfig):
        value = getattr(preset.algorithm, f.name)
        if value != getattr(defaults, f.name):
            layer["algorithm"][f.name] = list(value) if isinstance(value, tuple) else value
    for dotted, value in preset.settings.items():
        node = layer
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return layer


def merge_layers(layers: list[tuple[str, dict[str, Any]]], cls: type = Config) -> Any:
    """The ``cls`` instance made of its defaults and ``layers`` (origin, nested dict), later ones winning."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    merged = OmegaConf.structured(cls)
    for origin, layer in layers:
        check_keys(layer, cls, "", origin)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            msg = str(e).splitlines()[0]
            raise ConfigError(f"setting '{key}' ({origin}): {msg}") from None
    return OmegaConf.to_object(merged)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The validated run config from defaults, the preset, the YAML file and the overrides."""
    file_layer = read_yaml(path) if path is not None else {}
    cli_layer = parse_overrides(list(overrides))
    preset = cli_layer.get("preset", file_layer.get("preset"))
    layers: list[tuple[str, dict[str, Any]]] = []
    if preset:
        if not isinstance(preset, str):
            raise ConfigError(f"setting 'preset' must be a preset name, got {preset!r}")
        layers.append((f"preset {preset}", _preset_layer(preset)))
    if file_layer:
        layers.append((str(path), file_layer))
    if cli_layer:
        layers.append(("command line", cli_layer))
    config = merge_layers(layers)
    validate_config(config)
    return config


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: ``low <= v <= high``, each bound open or closed, finite.

    ``None`` passes where the field's type allows it (``int | None``): None means "off" or "derived".
    """

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            if self.low == 0 and self.low_open:
                return "positive"
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return (
            f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        )


POSITIVE = Range(0, low_open=True)
AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1)
"""[0, 1]."""

SETTING_RANGES: dict[str, Range] = {
    "model.lora_rank": AT_LEAST_0,
    "model.lora_alpha": POSITIVE,
    "model.lora_dropout": Range(0, 1, high_open=True),
    "rollout.prompts_per_step": AT_LEAST_1,
    "rollout.samples_per_prompt": AT_LEAST_1,
    "rollout.max_new_tokens": AT_LEAST_1,
    "rollout.max_prompt_tokens": AT_LEAST_1,
    "rollout.temperature": AT_LEAST_0,
    "rollout.top_p": Range(0, 1, low_open=True),
    "rollout.top_k": AT_LEAST_0,
    "rollout.max_batch_sequences": AT_LEAST_1,
    "rollout.vllm_memory_fraction": Range(0, 1, low_open=True),
    "rollout.vllm_cpu_kv_cache_gb": AT_LEAST_1,
    "rollout.vllm_check_every": AT_LEAST_0,
    "rollout.server_timeout_s": POSITIVE,
    "rollout.vllm_max_model_len": AT_LEAST_1,
    "rollout.vllm_max_first_kl": AT_LEAST_0,
    "env.max_turns": AT_LEAST_1,
    "env.max_turn_tokens": AT_LEAST_1,
    "env.max_context_tokens": AT_LEAST_1,
    "env.max_observation_tokens": AT_LEAST_1,
    "env.workers": AT_LEAST_1,
    "env.step_timeout_s": POSITIVE,
    "optim.lr": POSITIVE,
    "optim.weight_decay": AT_LEAST_0,
    "optim.betas": Range(0, 1, high_open=True),
    "optim.eps": POSITIVE,
    "optim.warmup_steps": AT_LEAST_0,
    "optim.min_lr_ratio": FRACTION,
    "optim.max_grad_norm": AT_LEAST_0,
    "critic.lr": POSITIVE,
    "critic.warmup_steps": AT_LEAST_0,
    "critic.max_grad_norm": AT_LEAST_0,
    "critic.updates_per_step": AT_LEAST_1,
    "critic.pretrain_steps": AT_LEAST_0,
    "critic.lora_rank": AT_LEAST_0,
    "training.steps": AT_LEAST_1,
    "training.ppo_epochs": AT_LEAST_1,
    "training.updates_per_step": AT_LEAST_1,
    "training.micro_batch_tokens": AT_LEAST_1,
    "training.max_sampling_rounds": AT_LEAST_1,
    "training.seed": AT_LEAST_0,
    "training.cpu_threads": AT_LEAST_1,
    "eval.every": AT_LEAST_0,
    "eval.num_problems": AT_LEAST_1,
    "eval.samples_per_problem": AT_LEAST_1,
    "eval.temperature": AT_LEAST_0,
    "eval.max_new_tokens": AT_LEAST_1,
    "checkpoint.every": AT_LEAST_0,
    "checkpoint.keep_last": AT_LEAST_1,
    "logging.log_every": AT_LEAST_1,
    "logging.sample_every": AT_LEAST_0,
    "parallel.timeout_s": POSITIVE,
    "distill.coef": POSITIVE,
    "distill.reward_weight": AT_LEAST_0,
}
"""The range of every numeric setting outside ``algorithm.*`` (whose ranges
:func:`rlvr.algorithms.validation.validate_algorithm_config` checks). A tuple's range applies to each
element. A test checks that every numeric field of the config has an entry."""


def check_setting_range(key: str, value: Any, allowed: Range) -> None:
    """ConfigError naming ``key`` unless ``value`` (a number, a tuple of numbers, or None) is in range."""
    for item in value if isinstance(value, (tuple, list)) else (value,):
        if item is None:
            continue
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not allowed.admits(float(item)):
            raise ConfigError(f"setting '{key}' must be {allowed}, got {value!r}")


def check_ranges(config: Any, ranges: dict[str, Range]) -> None:
    """Check each dotted key of ``ranges`` on ``config`` (see :data:`SETTING_RANGES`)."""
    for key, allowed in ranges.items():
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        check_setting_range(key, node, allowed)


def validate_config(config: Config) -> None:
    """Every numeric setting in its range, and the checks that need more than one field or a registry;
    raises ConfigError naming the key."""
    from rlvr.algorithms.validation import GROUP_RELATIVE_ESTIMATORS, validate_algorithm_config

    check_ranges(config, SETTING_RANGES)
    _validate_distill(config.distill, config.algorithm, config.preset)
    r, t = config.rollout, config.training
    if (
        r.samples_per_prompt < 2
        and config.algorithm.advantage in GROUP_RELATIVE_ESTIMATORS
        and not distills_without_task_advantage(config.distill)
    ):
        raise ConfigError(
            f"setting 'rollout.samples_per_prompt' is {r.samples_per_prompt}: algorithm.advantage "
            f"'{config.algorithm.advantage}' compares the completions of a prompt with each other, so one "
            "completion per prompt has zero advantage and trains nothing; sample 2 or more (R1 uses 16)"
        )
    if config.algorithm.replay_sampling_support:
        _validate_replay_sampling_support(config)
    if config.algorithm.advantage == "spo":
        _validate_spo(config)
    if config.algorithm.advantage == "pkpo" and config.algorithm.passk_k > r.samples_per_prompt:
        raise ConfigError(
            f"setting 'algorithm.passk_k' is {config.algorithm.passk_k}: algorithm.advantage 'pkpo' estimates "
            f"pass@k from the k-subsets of each group of rollout.samples_per_prompt = {r.samples_per_prompt} "
            "completions, so k must not exceed it"
        )
    if r.samples_per_prompt < 2 and "dynamic_sampling" in config.algorithm.filters:
        raise ConfigError(
            "setting 'rollout.samples_per_prompt' is 1: algorithm.filters 'dynamic_sampling' drops every "
            "group of one completion (its rewards are all equal); sample 2 or more"
        )
    completions = r.prompts_per_step * r.samples_per_prompt
    if completions % t.updates_per_step:
        raise ConfigError(
            f"setting 'training.updates_per_step' ({t.updates_per_step}) must divide the "
            f"{completions} completions of a step (rollout.prompts_per_step x rollout.samples_per_prompt)"
        )
    if config.task.template is not None:
        from rlvr.tasks.templates import TEMPLATES

        try:
            TEMPLATES.get(config.task.template)
        except Exception as e:
            raise ConfigError(f"setting 'task.template': {e}") from None
    if r.generate_ahead:
        half = {
            "model.dtype": config.model.dtype if config.model.dtype in ("bfloat16", "float16") else None,
            "model.autocast": config.model.autocast if config.model.autocast != "none" else None,
            "rollout.autocast": r.autocast if r.autocast != "none" else None,
            "parallel.mixed_precision": config.parallel.mixed_precision
            if config.parallel.mixed_precision != "none"
            else None,
        }
        for key, value in half.items():
            if value is not None:
                raise ConfigError(
                    f"setting 'rollout.generate_ahead' needs float32 compute, but {key} is {value}: the old "
                    "logprobs must be those of the weights that sampled, and in half precision they are "
                    "recomputed with the current ones"
                )
    if r.engine == "vllm":
        _validate_vllm_engine(config)
    validate_eval_settings(config.eval)
    validate_algorithm_config(config.algorithm)
    _validate_critic(config.critic)
    validate_parallel(config.parallel)
    if config.parallel.mixed_precision != "none" and config.model.dtype not in ("auto", "float32"):
        raise ConfigError(
            f"setting 'parallel.mixed_precision' ({config.parallel.mixed_precision}) keeps float32 shards and "
            f"computes in bfloat16; model.dtype must be auto or float32, got {config.model.dtype}"
        )


def _validate_spo(config: Config) -> None:
    """algorithm.advantage 'spo' continues each completion from its cut points with the policy that
    sampled it and grades the continuations with the task's rewards (rlvr.training.segment_values)."""
    r, alg = config.rollout, config.algorithm
    if config.env.name is not None:
        raise ConfigError(
            f"setting 'algorithm.advantage' is 'spo', which is not supported with multi-turn environments "
            f"(env.name = {config.env.name!r}): continuing a trajectory from a cut point would need the "
            "environment's state at that point"
        )
    if r.samples_per_prompt < 2 and not alg.spo_tree:
        raise ConfigError(
            "setting 'rollout.samples_per_prompt' is 1: algorithm.advantage 'spo' takes the value of the "
            "prompt as its group's mean reward; sample 2 or more"
        )
    if r.temperature == 0:
        raise ConfigError(
            "setting 'rollout.temperature' is 0: algorithm.advantage 'spo' estimates values from sampled "
            "continuations, and greedy decoding samples the same one every time"
        )
    if r.generate_ahead:
        raise ConfigError(
            "setting 'rollout.generate_ahead' is on: algorithm.advantage 'spo' continues the completions with "
            "the policy that sampled them, but generated-ahead completions come from the weights of the step "
            "before"
        )
    if alg.kl_coef > 0 and alg.kl_placement == "reward":
        raise ConfigError(
            "setting 'algorithm.kl_placement' is 'reward': algorithm.advantage 'spo' compares the completion's "
            "reward with Monte Carlo values of continuations that carry no KL term; put the KL in the loss"
        )


def _validate_vllm_engine(config: Config) -> None:
    """rollout.engine 'vllm' (docs/rollout.md): what the in-process vLLM engine does not cover yet."""
    r = config.rollout
    refused = {
        "rollout.generate_ahead": "the vLLM engine samples with the weights of the last push, so there is "
        "nothing to overlap in this process; turn it off"
        if r.generate_ahead
        else None,
        "parallel.cpu_offload": "every push gathers the policy's shards whole, and shards offloaded to "
        "host memory cannot be gathered over NCCL; keep them on the device"
        if config.parallel.cpu_offload
        else None,
    }
    if r.server is not None and not r.server.startswith(("http://", "https://")):
        raise ConfigError(f"setting 'rollout.server' must be an http:// or https:// URL, got {r.server!r}")
    for key, why in refused.items():
        if why is not None:
            raise ConfigError(f"setting '{key}' cannot be used with rollout.engine 'vllm': {why}")


def _validate_replay_sampling_support(config: Config) -> None:
    """algorithm.replay_sampling_support needs a truncation to replay, sampling rather than greedy
    decoding, and the single-turn engine (the one that records truncated logprobs)."""
    r = config.rollout
    if r.top_p == 1.0 and r.top_k == 0:
        raise ConfigError(
            "setting 'algorithm.replay_sampling_support' is on but rollout.top_p is 1 and rollout.top_k is 0: "
            "the rollout samples from the whole distribution, so there is no truncation to replay; set "
            "rollout.top_p < 1 or rollout.top_k > 0, or turn it off"
        )
    if r.temperature == 0:
        raise ConfigError(
            "setting 'algorithm.replay_sampling_support' needs sampling (rollout.temperature > 0); greedy "
            "decoding has no sampling distribution to replay"
        )
    if config.env.name is not None:
        raise ConfigError(
            "setting 'algorithm.replay_sampling_support' is not supported with multi-turn environments "
            f"(env.name = {config.env.name!r}): their rollouts record untruncated logprobs"
        )


def validate_parallel(p: ParallelConfig) -> None:
    if p.strategy != "fsdp2":
        for key, value, default in (
            ("parallel.mixed_precision", p.mixed_precision, "none"),
            ("parallel.cpu_offload", p.cpu_offload, False),
        ):
            if value != default:
                raise ConfigError(
                    f"setting '{key}' ({value}) needs parallel.strategy fsdp2, got {p.strategy}"
                )


def validate_eval_settings(e: EvalConfig) -> None:
    """The eval section: benchmarks known, template known, best_metric an eval metric (its numbers are
    checked with the others, :data:`SETTING_RANGES`)."""
    if not e.benchmarks:
        raise ConfigError("setting 'eval.benchmarks' is empty; use [task] for the task's held-out split")
    from rlvr.evaluation.sets import check_benchmark_name

    for name in e.benchmarks:
        check_benchmark_name(name, "eval.benchmarks")
    if e.template is not None:
        from rlvr.tasks.templates import TEMPLATES

        try:
            TEMPLATES.get(e.template)
        except Exception as err:
            raise ConfigError(f"setting 'eval.template': {err}") from None
    if e.best_metric is not None and not e.best_metric.startswith("eval/"):
        raise ConfigError(
            f"setting 'eval.best_metric' must name an evaluation metric (eval/accuracy, eval/<benchmark>/avg@1, ...), "
            f"got {e.best_metric!r}"
        )


def distills_without_task_advantage(d: DistillConfig) -> bool:
    """True when the advantage is the teacher's signal alone (distill.mode advantage, reward_weight 0):
    the task's estimator is then computed for its metrics only."""
    return d.teacher is not None and d.mode == "advantage" and d.reward_weight == 0


def _validate_distill(d: DistillConfig, algorithm: AlgorithmConfig, preset: str | None) -> None:
    """The distill section: a teacher named (also when the preset distils), and no setting given that
    its mode does not read."""
    from rlvr.algorithms.distill import check_distill_mode

    check_distill_mode(d.mode)
    defaults = DistillConfig()
    if d.teacher is None and preset is not None:
        from rlvr.algorithms.presets import get_preset

        if any(key.startswith("distill.") for key in get_preset(preset).settings):
            raise ConfigError(
                f"preset '{preset}' distils from a teacher: set distill.teacher to a model that shares "
                "model.path's tokenizer (a larger model of the same family)"
            )
    if d.teacher is None:
        for key in ("mode", "coef", "reward_weight"):
            if getattr(d, key) != getattr(defaults, key):
                raise ConfigError(
                    f"setting 'distill.{key}' ({getattr(d, key)!r}) is set but distill.teacher is None: "
                    "name a teacher model to distil from, or leave the distill section out"
                )
        return
    if not d.teacher.strip():
        raise ConfigError(
            "setting 'distill.teacher' is empty; name a model, or leave it unset (no distillation)"
        )
    unread = {"advantage": "coef", "reward": "reward_weight"}[d.mode]
    if getattr(d, unread) != getattr(defaults, unread):
        raise ConfigError(
            f"setting 'distill.{unread}' ({getattr(d, unread)!r}) is not read by distill.mode '{d.mode}' "
            f"(distill.coef weighs the signal in mode reward, distill.reward_weight the task's advantage "
            "in mode advantage)"
        )
    if d.mode == "advantage" and "cppo" in algorithm.filters:
        raise ConfigError(
            "algorithm.filters: 'cppo' ranks completions by one advantage each; distill.mode 'advantage' "
            "gives token-level advantages. Use distill.mode reward, or leave cppo out"
        )


def _validate_critic(c: CriticConfig) -> None:
    if c.path is not None and not c.path.strip():
        raise ConfigError("setting 'critic.path' is empty; leave it unset to start from model.path")


# --- help ----------------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (read from its source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:] + [None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if (
                isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(config: Any = None, cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, value, meaning) for every setting; values from ``config`` or the defaults."""
    obj = config if config is not None else cls()
    docs = field_docs(cls)
    rows: list[tuple[str, Any, str]] = []
    for name, tp in _resolved_fields(cls).items():
        value = getattr(obj, name)
        sub = _dataclass_of(tp)
        if sub is not None and dataclasses.is_dataclass(value):
            rows.extend(describe(value, sub, f"{prefix}{name}."))
        else:
            rows.append((f"{prefix}{name}", value, docs.get(name, "")))
    return rows


def format_config(config: Config | None = None) -> str:
    """Every setting as ``key: value  # meaning`` lines, grouped by section."""
    lines: list[str] = []
    section = None
    for key, value, doc in describe(config):
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            if head:
                lines.append(f"\n[{head}]")
        shown = list(value) if isinstance(value, tuple) else value
        lines.append(f"{key} = {shown!r}" + (f"    # {doc}" if doc else ""))
    return "\n".join(lines).lstrip("\n")


def to_dict(config: Config) -> dict[str, Any]:
    """A plain nested dict (for saving beside a run and for logging)."""
    return dataclasses.asdict(config)
