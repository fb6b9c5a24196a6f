"""Settings of ``rlvr eval``: a typed dataclass, a YAML file, ``key=value`` overrides, flags.

Layers, later ones winning: the defaults below, the YAML file, ``key=value`` items, then the
command-line flags (``--n 16`` is ``n=16``). Unknown keys are errors naming the nearest valid one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlvr.config import AT_LEAST_0, AT_LEAST_1, POSITIVE, Range, TaskConfig, check_ranges
from rlvr.errors import ConfigError


@dataclass
class EvalEnvConfig:
    """The ``env`` section of ``rlvr eval``: the training config's ``env`` section, field by field.

    A field left unset (None) keeps the value of the training config (the run directory's or
    ``train_config``'s) when that names the same environment, else the training default.
    """

    name: str | None = None
    """Evaluate multi-turn trajectories in this environment (tool_math | calculator | guess_number |
    task, or 'module:Class'); 'none' evaluates single-turn even a run trained with one; None: the
    training config's environment, if any. Every env.* setting left unset takes the training
    config's value for the same environment, else the training default."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword parameters of the environment (added to the training config's for the same one)."""
    format: Literal["auto", "chat", "plain"] | None = None
    """How turns become tokens (auto | chat | plain; see docs/agents.md)."""
    max_turns: int | None = None
    """Policy turns per trajectory."""
    max_turn_tokens: int | None = None
    """Tokens the policy may sample in one turn (unset everywhere: max_new_tokens)."""
    max_context_tokens: int | None = None
    """Prompt + sampled + observation tokens of one trajectory."""
    max_observation_tokens: int | None = None
    """Longest observation appended, in tokens (a longer one is cut)."""
    workers: int | None = None
    """Environment steps run at once (in threads)."""
    step_timeout_s: float | None = None
    """An environment that takes longer to answer one step ends its trajectory with an error."""


@dataclass
class EvalRunConfig:
    model: str = "toy"
    """A model directory, hub name or 'toy', or the run directory of an `rlvr train` run."""
    checkpoint: str = "final"
    """Run directories only: 'final', 'latest', a step number, or 'all' (every checkpoint, then final)."""
    benchmarks: list[str] | None = None
    """Shipped benchmark names, local .jsonl/.json/.parquet files, or 'task' (the run's held-out split).
    None: 'task' for a run directory, math500 otherwise."""
    train_config: str | None = None
    """The training config (YAML) or run directory whose task the 'task' benchmark takes (None: the
    run directory being evaluated); evaluates a base model on a training task."""
    task: TaskConfig | None = None
    """The task the 'task' benchmark takes, as a training config's task section (task.name=countdown);
    None: train_config's or the run directory's."""
    env: EvalEnvConfig = field(default_factory=EvalEnvConfig)
    """Multi-turn evaluation: n trajectories per problem in an environment, scored by its verdict
    (docs/evaluation.md); by default the training config's env section, if it has one."""
    num_problems: int | None = None
    """Evaluate the first N problems of each benchmark (None: all)."""
    n: int = 1
    """Samples per problem; temperature 0 (greedy) always takes 1."""
    temperature: float = 0.0
    """Sampling temperature; 0 decodes greedily."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 disables)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 disables)."""
    template: str | None = None
    """Prompt template (r1 | r1_zero | r1_chat | qwen_boxed | chat | plain). None: the run's task template
    for a run directory, else qwen_boxed when the tokenizer has a chat template and r1_zero when not."""
    max_new_tokens: int = 1024
    """Generation budget per completion, in tokens."""
    max_prompt_tokens: int = 2048
    """Longest prompt accepted, in tokens; a longer one is an error naming the problem."""
    grade_truncated: bool = True
    """Grade completions cut at max_new_tokens (their answer, if any); false counts them wrong."""
    timeout_s: float = 5.0
    """Wall-clock limit of one answer check by math-verify."""
    extraction: Literal["answer", "last_number"] = "answer"
    """--completions only: 'answer' grades only a marked final answer (boxed, <answer>, ####, "the answer
    is"); 'last_number' also grades the last number of a completion that marks none, as the Qwen2.5-Math
    evaluation harness does, to reproduce numbers published with it."""
    seed: int = 0
    """Sampling seed; a batch of problems uses seed + the index of its first problem."""
    problems_per_batch: int = 32
    """Problems generated together; results are written (and resume) batch by batch."""
    max_batch_sequences: int = 256
    """Most sequences decoded at once."""
    engine: Literal["builtin", "vllm"] = "builtin"
    """The rollout engine (docs/rollout.md): builtin, or vllm (needs the vllm extra; single-turn
    benchmarks, full models, not LoRA adapter directories)."""
    question_field: str = "question"
    """Local files: the field holding the question ('a+b' joins two fields)."""
    answer_field: str = "answer"
    """Local files: the field holding the gold answer."""
    answer_format: Literal["plain", "gsm8k", "boxed", "first"] = "plain"
    """Local files: how the gold is read from the answer field (see docs/tasks.md)."""
    id_field: str | None = None
    """Local files: a field with a problem id (None: the row number)."""
    meta_fields: list[str] = field(default_factory=list)
    """Local files: fields to break results down by (for example level, subject)."""
    skip_bad_rows: bool = False
    """Local files: leave out rows that cannot be used (not UTF-8, not JSON, a missing or ungradable
    field), counted and listed in the results, instead of stopping at the first."""
    completions: str | None = None
    """Re-score this file of existing completions instead of generating (see docs/evaluation.md)."""
    completion_field: str = "response"
    """--completions: the field holding a completion, or a list of the problem's completions."""
    output_dir: str | None = None
    """Where results go. None: RUN_DIR/eval/<checkpoint> for a run, runs/eval/<model name> otherwise."""
    overwrite: bool = False
    """Start over in an output directory that holds an evaluation with other settings."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on a GPU that supports it, float32 on CPU."""
    cpu_threads: int | None = None
    """Intra-op CPU threads (None keeps torch's default)."""

    @property
    def samples_per_problem(self) -> int:
        return 1 if self.temperature == 0 else self.n


EVAL_SETTING_RANGES = {
    "n": AT_LEAST_1,
    "num_problems": AT_LEAST_1,
    "temperature": AT_LEAST_0,
    "top_p": Range(0, 1, low_open=True),
    "top_k": AT_LEAST_0,
    "max_new_tokens": AT_LEAST_1,
    "max_prompt_tokens": AT_LEAST_1,
    "timeout_s": POSITIVE,
    "seed": AT_LEAST_0,
    "problems_per_batch": AT_LEAST_1,
    "max_batch_sequences": AT_LEAST_1,
    "cpu_threads": AT_LEAST_1,
}
"""The range of every numeric setting of ``rlvr eval`` (None passes where a setting allows it)."""

EVAL_ENV_RANGES = {
    "env.max_turns": AT_LEAST_1,
    "env.max_turn_tokens": AT_LEAST_1,
    "env.max_context_tokens": AT_LEAST_1,
    "env.max_observation_tokens": AT_LEAST_1,
    "env.workers": AT_LEAST_1,
    "env.step_timeout_s": POSITIVE,
}
"""The range of every numeric setting of the ``env`` section of ``rlvr eval`` (None: unset)."""


def validate_eval_env(c: EvalRunConfig) -> None:
    """The ``env`` section: numbers in range, a known format, an environment that resolves."""
    check_ranges(c, EVAL_ENV_RANGES)
    e = c.env
    if e.format is not None and e.format not in ("auto", "chat", "plain"):
        raise ConfigError(f"setting 'env.format' must be auto, chat or plain, got {e.format!r}")
    if e.name is None or e.name == "none":
        return
    if c.completions is not None:
        raise ConfigError("setting 'env.name': re-scoring --completions is single-turn; leave env unset")
    from rlvr.envs.base import resolve_env

    resolve_env(e.name)  # an unknown name is an error naming env.name and the nearest valid one


def validate_eval_config(c: EvalRunConfig) -> None:
    check_ranges(c, EVAL_SETTING_RANGES)
    validate_eval_env(c)
    if c.extraction not in ("answer", "last_number"):
        raise ConfigError(f"setting 'extraction' must be answer or last_number, got {c.extraction!r}")
    if c.extraction != "answer" and c.completions is None:
        raise ConfigError(
            "setting 'extraction=last_number' re-scores other programs' outputs: it needs --completions"
        )
    if c.benchmarks is not None and not c.benchmarks:
        raise ConfigError("setting 'benchmarks' is empty; name at least one benchmark")
    if c.template is not None:
        from rlvr.tasks.templates import TEMPLATES

        try:
            TEMPLATES.get(c.template)
        except Exception as e:
            raise ConfigError(f"setting 'template': {e}") from None
    if c.checkpoint not in ("final", "latest", "all") and not c.checkpoint.isdigit():
        raise ConfigError(
            f"setting 'checkpoint' must be final, latest, all or a step number, got {c.checkpoint!r}"
        )


def load_eval_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> EvalRunConfig:
    """The validated evaluation settings from defaults, a YAML file, ``key=value`` items and flags."""
    from rlvr.config import merge_layers, parse_overrides, read_yaml

    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((str(path), read_yaml(path)))
    if overrides:
        layers.append(("command line", parse_overrides(list(overrides))))
    if flags:
        layers.append(("command-line flags", {k: v for k, v in flags.items() if v is not None}))
    config: EvalRunConfig = merge_layers(layers, EvalRunConfig)
    validate_eval_config(config)
    return config
