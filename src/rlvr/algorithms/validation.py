"""Load-time checks of an :class:`AlgorithmConfig`, and what a config asks of the training loop.

:func:`validate_algorithm_config` raises :class:`~rlvr.errors.ConfigError` naming the key
(``algorithm.<field>``) for: a component name no registry knows (with the nearest valid name), a
hyperparameter a chosen function takes that is not a config field, a value out of range, and a
combination that cannot work. :func:`needs_critic`, :func:`needs_reference_model` and
:func:`needs_correctness` tell the loop which models and labels to prepare.

Who reads each field (:func:`field_readers`): the registered functions (estimators, policy losses,
filters) by their keyword names, the loop-level functions of the KL, value and LM terms, the prompt
sampler, and the loop itself (:data:`LOOP_LEVEL_FIELDS`). A field nobody reads is a bug: a setting
accepted and ignored.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from rlvr.algorithms.config import ALGORITHM_FIELDS, AlgorithmConfig
from rlvr.errors import ConfigError, UnknownNameError
from rlvr.registry import hyperparameters

LOOP_LEVEL_FIELDS: dict[str, str] = {
    "advantage": "the loop looks the estimator up in ADVANTAGES",
    "policy_loss": "the loop looks the surrogate up in POLICY_LOSSES",
    "kl_coef": "weight of the KL term, or of the KL folded into the rewards; > 0 loads the reference model",
    "kl_placement": "the loop adds the KL to the loss or folds it into the token rewards",
    "whiten_advantages": "the loop whitens the estimator's advantages over the global batch",
    "entropy_coef": "weight of the entropy bonus",
    "lm_coef": "weight of the positive-example LM loss",
    "filters": "the loop runs these group filters (rlvr.algorithms.filters.apply_filters)",
    "loss_norm_length": "the loop passes it (or rollout.max_new_tokens) as norm_length to every aggregation",
    "replay_sampling_support": "the rollout records truncated logprobs and the update replays rollout.top_k "
    "/ top_p on the policy's logprobs (rlvr.algorithms.sampling_support)",
    "spo_continuations": "the loop samples this many continuations of each SPO cut point "
    "(rlvr.training.segment_values)",
    "spo_tree_segment_tokens": "SPO-tree's collector cuts the tree into segments of this many tokens "
    "(rlvr.training.spo_tree)",
}
"""Fields the training loop reads itself, with what it does with them."""

TOKEN_LEVEL_ESTIMATORS: frozenset[str] = frozenset({"reinforce_pp", "gae", "vapo", "spo"})
"""Estimators whose advantages vary along a sequence (CPPO ranks one advantage per completion)."""

GROUP_RELATIVE_ESTIMATORS: frozenset[str] = frozenset(
    {"grpo", "dr_grpo", "rloo", "kimi", "maxrl", "passk", "pkpo"}
)
"""Estimators that subtract a group baseline: a group of equal rewards gets zero advantage."""

KL_PLACEMENTS: tuple[str, ...] = ("loss", "reward")


# --- component lookup ---------------------------------------------------------------------------------


def _registries() -> dict[str, tuple[Any, tuple[str, ...]]]:
    """Config key -> (registry, tensor arguments of its functions). Imported here, not at module load."""
    from rlvr.algorithms.advantages import ADVANTAGE_TENSOR_ARGS, ADVANTAGES
    from rlvr.algorithms.filters import FILTER_TENSOR_ARGS, FILTERS
    from rlvr.algorithms.losses import POLICY_LOSS_TENSOR_ARGS, POLICY_LOSSES

    return {
        "advantage": (ADVANTAGES, ADVANTAGE_TENSOR_ARGS),
        "policy_loss": (POLICY_LOSSES, POLICY_LOSS_TENSOR_ARGS),
        "filters": (FILTERS, FILTER_TENSOR_ARGS),
    }


def _lookup(key: str, registry: Any, name: object) -> Callable[..., Any]:
    try:
        return registry.get(name)
    except UnknownNameError as e:
        raise ConfigError(f"algorithm.{key}: {e}") from None


def _loop_functions() -> list[tuple[str, Callable[..., Any], tuple[str, ...]]]:
    """(label, function, tensor arguments) of the loop-level terms that read config fields."""
    from rlvr.algorithms import kl, lm_loss, mismatch, value

    return [
        ("mismatch.mismatch_correction", mismatch.mismatch_correction, mismatch.MISMATCH_TENSOR_ARGS),
        ("kl.kl_penalty", kl.kl_penalty, kl.KL_TENSOR_ARGS),
        ("kl.kl_loss", kl.kl_loss, kl.KL_TENSOR_ARGS),
        ("kl.fold_kl_into_rewards", kl.fold_kl_into_rewards, kl.FOLD_KL_TENSOR_ARGS),
        ("value.value_loss_fn", value.value_loss_fn, value.VALUE_TENSOR_ARGS),
        ("lm_loss.positive_lm_loss", lm_loss.positive_lm_loss, lm_loss.LM_TENSOR_ARGS),
    ]


def _check_hyperparameters(what: str, fn: Callable[..., Any], tensor_args: Iterable[str]) -> None:
    for name in hyperparameters(fn, tensor_args):
        if name not in ALGORITHM_FIELDS:
            raise ConfigError(
                f"{what} takes hyperparameter '{name}', which is not a field of AlgorithmConfig; "
                "add the field so that a config can set it"
            )


def field_readers() -> dict[str, list[str]]:
    """Every AlgorithmConfig field -> who reads it (registered functions, loop terms, sampler, loop)."""
    from rlvr.algorithms.samplers import SAMPLER_FIELDS

    readers: dict[str, list[str]] = {name: [] for name in sorted(ALGORITHM_FIELDS)}

    def add(name: str, reader: str) -> None:
        readers.setdefault(name, []).append(reader)

    for registry, tensor_args in _registries().values():
        for component in registry.names():
            for name in hyperparameters(registry.get(component), tensor_args):
                add(name, f"{registry.kind} '{component}'")
    for label, fn, tensor_args in _loop_functions():
        for name in hyperparameters(fn, tensor_args):
            add(name, label)
    for name in SAMPLER_FIELDS:
        add(name, "PromptSampler.from_config")
    for name in LOOP_LEVEL_FIELDS:
        add(name, "training loop")
    return readers


# --- value checks ----------------------------------------------------------------------------------------


def _number(cfg: AlgorithmConfig, name: str) -> float:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"algorithm.{name} must be a finite number, got {value!r}")
    return float(value)


def _at_least(cfg: AlgorithmConfig, name: str, low: float, *, strict: bool = False) -> None:
    value = _number(cfg, name)
    if value < low or (strict and value == low):
        raise ConfigError(f"algorithm.{name} must be {'>' if strict else '>='} {low}, got {value}")


def _between(cfg: AlgorithmConfig, name: str, low: float, high: float, *, high_open: bool = False) -> None:
    value = _number(cfg, name)
    if not low <= value <= high or (high_open and value == high):
        raise ConfigError(
            f"algorithm.{name} must be in [{low}, {high}{')' if high_open else ']'}, got {value}"
        )


def _optional_above(cfg: AlgorithmConfig, name: str, low: float) -> None:
    if getattr(cfg, name) is not None:
        _at_least(cfg, name, low, strict=True)


def _check_ranges(cfg: AlgorithmConfig) -> None:
    from rlvr.algorithms.samplers import check_sampler_settings

    _at_least(cfg, "std_eps", 0.0)
    for name in ("gamma", "lam", "lam_critic"):
        _between(cfg, name, 0.0, 1.0)
    _at_least(cfg, "lam_alpha", 0.0, strict=True)
    _between(cfg, "eps_low", 0.0, 1.0)  # the ratio's lower clip 1 - eps_low stays in [0, 1]
    _at_least(cfg, "eps_high", 0.0)
    _optional_above(cfg, "clip_ratio_c", 1.0)
    _at_least(cfg, "kimi_tau", 0.0, strict=True)
    _between(cfg, "clip_cov_ratio", 0.0, 1.0)
    if _number(cfg, "clip_cov_ub") < _number(cfg, "clip_cov_lb"):
        raise ConfigError(
            f"algorithm.clip_cov_ub ({cfg.clip_cov_ub}) must be >= algorithm.clip_cov_lb ({cfg.clip_cov_lb})"
        )
    _between(cfg, "kl_cov_ratio", 0.0, 1.0)
    _at_least(cfg, "kl_cov_coef", 0.0)
    _at_least(cfg, "kl_coef", 0.0)
    _optional_above(cfg, "kl_clamp", 0.0)
    _number(cfg, "entropy_coef")
    _at_least(cfg, "lm_coef", 0.0)
    _at_least(cfg, "value_clip", 0.0, strict=True)
    for name in ("dppo_delta_low", "dppo_delta_high", "gmpo_eps_low", "gmpo_eps_high"):
        _at_least(cfg, name, 0.0)
    _at_least(cfg, "dppo_ratio_cap", 1.0)
    for name in ("sapo_tau_pos", "sapo_tau_neg"):
        _at_least(cfg, name, 0.0, strict=True)
    for name in ("vespo_c1_pos", "vespo_c2_pos", "vespo_c1_neg", "vespo_c2_neg"):
        _at_least(cfg, name, 0.0, strict=True)
    _between(cfg, "luspo_eps_low", 0.0, 1.0)  # the lower clip 1 - luspo_eps_low stays in [0, 1]
    _at_least(cfg, "luspo_eps_high", 0.0)
    if not isinstance(cfg.replay_sampling_support, bool):
        raise ConfigError(
            f"algorithm.replay_sampling_support must be true or false, got {cfg.replay_sampling_support!r}"
        )
    if isinstance(cfg.passk_k, bool) or not isinstance(cfg.passk_k, int):
        raise ConfigError(f"algorithm.passk_k must be an integer, got {cfg.passk_k!r}")
    _at_least(cfg, "passk_k", 1)
    _check_spo(cfg)
    if cfg.loss_norm_length is not None:
        if isinstance(cfg.loss_norm_length, bool) or not isinstance(cfg.loss_norm_length, int):
            raise ConfigError(
                f"algorithm.loss_norm_length must be an integer or None, got {cfg.loss_norm_length!r}"
            )
        _at_least(cfg, "loss_norm_length", 0, strict=True)
    _between(cfg, "cppo_pruning_rate", 0.0, 1.0, high_open=True)
    _check_mismatch(cfg)
    check_sampler_settings(cfg.sampler, cfg.sampler_momentum, cfg.curriculum_start, cfg.curriculum_steps)


def _check_spo(cfg: AlgorithmConfig) -> None:
    from rlvr.algorithms.spo import check_spo_settings

    check_spo_settings(cfg.spo_threshold, cfg.spo_interval, cfg.spo_max_cuts)
    k = cfg.spo_continuations
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"algorithm.spo_continuations must be an integer >= 1, got {k!r}")
    if not isinstance(cfg.spo_prob_mask, bool):
        raise ConfigError(f"algorithm.spo_prob_mask must be true or false, got {cfg.spo_prob_mask!r}")
    tree = cfg.spo_tree
    if isinstance(tree, str) or not isinstance(tree, (tuple, list)):
        raise ConfigError(f"algorithm.spo_tree must be a list of branch factors, got {tree!r}")
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in tree):
        raise ConfigError(
            f"algorithm.spo_tree: every branch factor must be an integer >= 2 (a node's advantage compares "
            f"it with its siblings), got {list(tree)}"
        )
    m = cfg.spo_tree_segment_tokens
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"algorithm.spo_tree_segment_tokens must be an integer >= 1, got {m!r}")
    if tree and cfg.advantage != "spo":
        raise ConfigError(
            f"algorithm.spo_tree samples SPO-tree's segments for algorithm.advantage 'spo', not "
            f"'{cfg.advantage}'; set algorithm.advantage=spo or leave spo_tree empty"
        )
    if tree and cfg.filters:
        raise ConfigError(
            "algorithm.filters: SPO-tree (algorithm.spo_tree) runs no group filters; its groups are the "
            "children of one tree node"
        )


def _check_mismatch(cfg: AlgorithmConfig) -> None:
    from rlvr.algorithms.mismatch import WEIGHTABLE_LOSSES, check_mismatch_settings, mismatch_enabled

    for name in ("mismatch_is", "mismatch_mask"):
        _choice(cfg, name, ("none", "token", "sequence", "geometric"), "mismatch correction level")
    check_mismatch_settings(
        cfg.mismatch_is,
        cfg.mismatch_is_cap,
        cfg.mismatch_mask,
        cfg.mismatch_mask_low,
        cfg.mismatch_mask_high,
        cfg.mismatch_opsm_delta,
    )
    if mismatch_enabled(cfg.mismatch_is, cfg.mismatch_mask, cfg.mismatch_opsm_delta) and (
        cfg.policy_loss not in WEIGHTABLE_LOSSES
    ):
        key = next(
            k
            for k, on in (
                ("mismatch_is", cfg.mismatch_is != "none"),
                ("mismatch_mask", cfg.mismatch_mask != "none"),
                ("mismatch_opsm_delta", True),
            )
            if on
        )
        raise ConfigError(
            f"algorithm.{key}: the rollout/trainer mismatch corrections weight each token's advantage, "
            f"which weights the loss only for {', '.join(sorted(WEIGHTABLE_LOSSES))}; "
            f"algorithm.policy_loss '{cfg.policy_loss}' is not one of them"
        )


def _choice(cfg: AlgorithmConfig, name: str, valid: Iterable[str], what: str) -> None:
    from rlvr.registry import nearest_name_hint

    valid = tuple(valid)
    value = getattr(cfg, name)
    if value not in valid:
        raise ConfigError(
            f"algorithm.{name}: unknown {what} {value!r}{nearest_name_hint(str(value), valid)} "
            f"(valid: {', '.join(valid)})"
        )


# --- the checks ------------------------------------------------------------------------------------------


def validate_algorithm_config(cfg: AlgorithmConfig) -> None:
    """Raise ConfigError, naming the ``algorithm.*`` key, for anything that cannot run as configured."""
    from rlvr.algorithms.aggregation import AGGREGATIONS
    from rlvr.algorithms.filters import FILTERS_NEEDING_ADVANTAGES
    from rlvr.algorithms.kl import KL_ESTIMATORS
    from rlvr.algorithms.value import VALUE_LOSSES

    if not isinstance(cfg, AlgorithmConfig):
        raise ConfigError(f"expected an AlgorithmConfig, got {type(cfg).__name__}")
    registries = _registries()

    for key in ("advantage", "policy_loss"):
        registry, tensor_args = registries[key]
        fn = _lookup(key, registry, getattr(cfg, key))
        _check_hyperparameters(f"algorithm.{key}: {registry.kind} '{getattr(cfg, key)}'", fn, tensor_args)
    _lookup("aggregation", AGGREGATIONS, cfg.aggregation)
    _lookup("kl_estimator", KL_ESTIMATORS, cfg.kl_estimator)
    _lookup("value_loss", VALUE_LOSSES, cfg.value_loss)
    _choice(cfg, "kl_placement", KL_PLACEMENTS, "KL placement")
    _choice(cfg, "dynamic_sampling_criterion", ("reward", "correct"), "dynamic sampling criterion")

    filters = cfg.filters
    if isinstance(filters, str) or not isinstance(filters, (tuple, list)):
        raise ConfigError(f"algorithm.filters must be a list of filter names, got {filters!r}")
    filter_registry, filter_args = registries["filters"]
    for name in filters:
        fn = _lookup("filters", filter_registry, name)
        _check_hyperparameters(f"algorithm.filters: group filter '{name}'", fn, filter_args)
    duplicates = sorted({n for n in filters if list(filters).count(n) > 1})
    if duplicates:
        raise ConfigError(f"algorithm.filters lists {', '.join(map(repr, duplicates))} more than once")
    for label, fn, tensor_args in _loop_functions():
        _check_hyperparameters(label, fn, tensor_args)

    _check_ranges(cfg)
    _check_combinations(cfg, tuple(filters), FILTERS_NEEDING_ADVANTAGES)


def _check_combinations(cfg: AlgorithmConfig, filters: tuple[str, ...], after_estimator: set[str]) -> None:
    for i, name in enumerate(filters):
        later = [n for n in filters[i + 1 :] if n not in after_estimator]
        if name in after_estimator and later:
            raise ConfigError(
                f"algorithm.filters: '{name}' ranks completions by their advantage, so it runs after the "
                f"advantage estimator; list it after {', '.join(map(repr, later))}, which run before it"
            )
    if "cppo" in filters and cfg.advantage in TOKEN_LEVEL_ESTIMATORS:
        raise ConfigError(
            f"algorithm.filters: 'cppo' keeps the completions with the largest group-relative advantage, one "
            f"per completion; algorithm.advantage '{cfg.advantage}' gives token-level advantages. Use a "
            f"group-relative estimator ({', '.join(sorted(GROUP_RELATIVE_ESTIMATORS))})"
        )
    if "raft_pp" in filters and cfg.advantage in GROUP_RELATIVE_ESTIMATORS:
        raise ConfigError(
            f"algorithm.filters: 'raft_pp' keeps only the correct completions, so with 0/1 rewards every kept "
            f"group has equal rewards and algorithm.advantage '{cfg.advantage}' gives them all zero advantage; "
            "RAFT++ uses the reward itself as the advantage (preset raft_pp)"
        )


# --- what the loop must prepare ----------------------------------------------------------------------------


def needs_critic(cfg: AlgorithmConfig) -> bool:
    """True when the advantage estimator needs critic values (gae, vapo): load and train a critic."""
    from rlvr.algorithms.advantages import ESTIMATORS_NEEDING_VALUES

    return cfg.advantage in ESTIMATORS_NEEDING_VALUES


def needs_reference_model(cfg: AlgorithmConfig) -> bool:
    """True when a KL to the reference model is used (kl_coef > 0), in the loss or in the reward."""
    return cfg.kl_coef > 0


def needs_correctness(cfg: AlgorithmConfig) -> bool:
    """True when something reads per-completion correctness labels (filters, the LM loss)."""
    from rlvr.algorithms.filters import FILTERS_NEEDING_CORRECT

    if any(name in FILTERS_NEEDING_CORRECT for name in cfg.filters):
        return True
    if "dynamic_sampling" in cfg.filters and cfg.dynamic_sampling_criterion == "correct":
        return True
    return cfg.lm_coef > 0


# --- rlvr presets ------------------------------------------------------------------------------------------

_TABLE_COLUMNS = ("preset", "estimator", "loss", "aggregation", "KL", "filters", "paper", "key settings")
_ARXIV_ID = re.compile(r"\d{4}\.\d{4,5}")
_SHOWN = {"advantage", "policy_loss", "aggregation", "kl_coef", "kl_estimator", "kl_placement", "filters"}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "-"
    return str(value)


def preset_row(preset: Any) -> tuple[str, ...]:
    """One row of :func:`describe_presets` for ``preset``."""
    cfg = preset.algorithm
    defaults = AlgorithmConfig()
    kl = f"{cfg.kl_estimator} {cfg.kl_coef:g} in {cfg.kl_placement}" if cfg.kl_coef > 0 else "none"
    changed = [
        f"{f.name}={_short(getattr(cfg, f.name))}"
        for f in dataclasses.fields(AlgorithmConfig)
        if f.name not in _SHOWN and getattr(cfg, f.name) != getattr(defaults, f.name)
    ]
    changed += [f"{key}={_short(value)}" for key, value in preset.settings.items()]
    arxiv = _ARXIV_ID.search(preset.citation)
    return (
        preset.name,
        cfg.advantage,
        cfg.policy_loss,
        cfg.aggregation,
        kl,
        _short(cfg.filters),
        f"arXiv {arxiv.group()}" if arxiv else "-",
        " ".join(changed) or "-",
    )


def describe_presets() -> str:
    """A plain-text table of every registered preset, for ``rlvr presets``."""
    from rlvr.algorithms.presets import PRESETS

    rows = [_TABLE_COLUMNS] + [preset_row(PRESETS.get(name)) for name in PRESETS.names()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_TABLE_COLUMNS) - 1)]
    lines = []
    for row in rows:
        head = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        lines.append(f"{head}  {row[-1]}".rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
