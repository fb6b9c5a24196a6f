"""``rlvr pipeline FILE``: named stages run in order, each one's outputs the next one's inputs.

A pipeline file (YAML)::

    dir: runs/pipeline_toy            # the pipeline's root: stage NAME runs in DIR/NAME
    stages:
      - name: sample                  # unique; [A-Za-z0-9_-]
        run: sample                   # sft | train | sample | dpo | merge | eval
        config: {model: toy, n: 4}    # inline settings, or the path of the stage's YAML config
        overrides: {num_problems: 8}  # optional: dotted keys applied over `config`
      - name: sft
        run: sft
        config: recipes/sft_toy.yaml
        overrides: {data.train: "${stages.sample.sft_data}"}

The run, top to bottom::

    read the file -> resolve ${stages.NAME.KEY} references and load every stage's settings with the
    loader its command uses (an unknown stage, output or setting is an error before anything runs)
    -> compare with what DIR/pipeline.json records of the stages already done (a change is refused)
    -> --from NAME: delete what the pipeline wrote for NAME and the stages after it
    -> each stage: skipped when done, else run (resuming what an interrupted run left) and recorded
    -> the table of what each stage produced, with the accuracy of the eval stages

A stage never imports another: this module hands each stage the paths the earlier ones wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlvr.errors import ConfigError

STATE_FILE = "pipeline.json"
"""DIR/pipeline.json: the settings and outputs of every stage done, written after each one."""

KINDS = ("sft", "train", "sample", "dpo", "merge", "eval")

OUTPUT_KEYS: dict[str, tuple[str, ...]] = {
    "sft": ("dir", "final"),
    "train": ("dir", "final"),
    "dpo": ("dir", "final"),
    "merge": ("dir", "final"),
    "sample": ("dir", "data", "sft_data", "pairs", "summary"),
    "eval": ("dir", "results"),
}
"""The names a later stage may refer to, ``${stages.NAME.KEY}``, by kind of stage (see
:func:`stage_outputs`)."""

OWNED_KEY = {
    "sft": "logging.output_dir",
    "train": "logging.output_dir",
    "dpo": "logging.output_dir",
    "sample": "output_dir",
    "eval": "output_dir",
    "merge": "output",
}
"""The setting that places a stage's output: the pipeline sets it to DIR/NAME, a stage may not."""

SAMPLE_FILES = ("eval_settings.json", "samples", "sft.jsonl", "pairs.jsonl", "summary.json")
EVAL_FILES = ("eval_settings.json", "samples", "results.json", "report.md", "pass_at_k.png")
"""What ``rlvr sample`` and ``rlvr eval`` write into their output directory: all that ``--from``
deletes there."""

_REFERENCE = re.compile(r"\$\{stages\.([^.}]+)\.([^.}]+)\}")
_NAME = re.compile(r"[A-Za-z0-9_-]+")


# --- the file -------------------------------------------------------------------------------------


@dataclass
class StageSpec:
    """One stage as the file gives it, references not yet resolved."""

    name: str
    run: str
    config: str | dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pipeline:
    path: Path
    dir: Path
    stages: list[StageSpec]


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _stage_spec(item: Any, index: int, origin: str) -> StageSpec:
    """One entry of ``stages``, its keys and values checked."""
    entry = _mapping(item, f"{origin}: stages[{index}]")
    unknown = sorted(set(entry) - {"name", "run", "config", "overrides"})
    if unknown:
        raise ConfigError(
            f"{origin}: stages[{index}] has unknown key {unknown[0]!r} (keys: name, run, config, overrides)"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{origin}: stages[{index}] needs a 'name' of letters, digits, '_' or '-'")
    where = f"{origin}: stage {name!r}"
    if entry.get("run") not in KINDS:
        raise ConfigError(f"{where}: 'run' must be one of {', '.join(KINDS)}, got {entry.get('run')!r}")
    config = entry.get("config", {})
    if not isinstance(config, (str, dict)):
        raise ConfigError(f"{where}: 'config' must be a mapping of settings or the path of a config file")
    overrides = _mapping(entry.get("overrides") or {}, f"{where}: 'overrides'")
    return StageSpec(name, entry["run"], config, overrides)


def read_pipeline(path: str | Path, root: str | Path | None = None) -> Pipeline:
    """The pipeline file ``path``, checked; ``root`` replaces its ``dir``."""
    from rlvr.config import read_yaml

    data = read_yaml(path)
    origin = str(path)
    unknown = sorted(set(data) - {"dir", "stages"})
    if unknown:
        raise ConfigError(f"{origin}: unknown key {unknown[0]!r} (keys: dir, stages)")
    if root is None and not isinstance(data.get("dir"), str):
        raise ConfigError(f"{origin}: 'dir' (the directory the stages run in) is required")
    items = data.get("stages")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{origin}: 'stages' must be a non-empty list")
    stages = [_stage_spec(item, i, origin) for i, item in enumerate(items)]
    names = [s.name for s in stages]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{origin}: stage name {repeated[0]!r} is used twice")
    return Pipeline(Path(path), Path(root if root is not None else data["dir"]), stages)


# --- references -----------------------------------------------------------------------------------


def resolve_references(value: Any, outputs: dict[str, dict[str, str]], where: str) -> Any:
    """``value`` with every ``${stages.NAME.KEY}`` replaced by the output KEY of the earlier stage NAME
    (``outputs``: the earlier stages' outputs); an unknown stage or key is an error naming both."""
    if isinstance(value, dict):
        return {k: resolve_references(v, outputs, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_references(v, outputs, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace_one(match: re.Match[str]) -> str:
        stage, key = match.group(1), match.group(2)
        if stage not in outputs:
            earlier = ", ".join(outputs) or "none"
            raise ConfigError(
                f"{where}: ${{stages.{stage}.{key}}} names no earlier stage {stage!r} (earlier stages: {earlier})"
            )
        if key not in outputs[stage]:
            raise ConfigError(
                f"{where}: ${{stages.{stage}.{key}}}: stage {stage!r} has no output {key!r} "
                f"(its outputs: {', '.join(outputs[stage])})"
            )
        return outputs[stage][key]

    return _REFERENCE.sub(replace_one, value)


def stage_outputs(kind: str, out: Path, config: Any) -> dict[str, str]:
    """What a stage of ``kind`` in directory ``out`` produces, by the names of :data:`OUTPUT_KEYS`:
    ``dir`` (its directory); ``final`` (the model directory of sft, train, dpo and merge); ``data``,
    ``sft_data`` or ``pairs``, and ``summary`` (sample's dataset file, named by its ``select``); and
    ``results`` (eval's results.json)."""
    names = {"dir": str(out)}
    if kind in ("sft", "train", "dpo"):
        names["final"] = str(out / "final")
    elif kind == "merge":
        names["final"] = str(out)
    elif kind == "sample":
        pairs = config.select == "pairs"
        data = str(out / ("pairs.jsonl" if pairs else "sft.jsonl"))
        names.update({"data": data, "pairs" if pairs else "sft_data": data})
        names["summary"] = str(out / "summary.json")
    elif kind == "eval":
        names["results"] = str(out / "results.json")
    return names


# --- settings -------------------------------------------------------------------------------------


def _dotlist(settings: dict[str, Any]) -> list[str]:
    """``{"a": {"b": 1}}`` -> ``["a.b=1"]``, each value as JSON (which the loaders read back as it was)."""
    from rlvr.training.run_dir import flatten

    return [f"{key}={json.dumps(value)}" for key, value in flatten(settings).items() if key]


def _load_train(path: str | None, items: list[str]) -> Any:
    from rlvr.config import load_config

    return load_config(path, items)


def _load_sft(path: str | None, items: list[str]) -> Any:
    from rlvr.stages.sft import load_sft_config

    return load_sft_config(path, items)


def _load_dpo(path: str | None, items: list[str]) -> Any:
    from rlvr.stages.dpo import load_dpo_config

    return load_dpo_config(path, items)


def _load_sample(path: str | None, items: list[str]) -> Any:
    from rlvr.stages.sample import load_sample_config

    return load_sample_config(path, items)


def _load_eval(path: str | None, items: list[str]) -> Any:
    from rlvr.evaluation.config import load_eval_config

    config = load_eval_config(path, items)
    if config.checkpoint == "all" or config.completions:
        raise ConfigError(
            "an eval stage evaluates one model: 'checkpoint: all' and 'completions' are refused"
        )
    return config


def _load_merge(path: str | None, items: list[str]) -> Any:
    from rlvr.stages.merge import load_merge_config

    return load_merge_config(path, items)


LOADERS: dict[str, Callable[[str | None, list[str]], Any]] = {
    "train": _load_train,
    "sft": _load_sft,
    "dpo": _load_dpo,
    "sample": _load_sample,
    "eval": _load_eval,
    "merge": _load_merge,
}
"""Each kind's settings loader: the one its command uses (defaults, a YAML file, ``key=value`` items)."""


def settings_of(config: Any) -> dict[str, Any]:
    """A stage's settings as DIR/pipeline.json records them (JSON types)."""
    from rlvr.config import to_dict
    from rlvr.training.run_dir import as_saved

    return as_saved(to_dict(config))


@dataclass
class Planned:
    """One stage ready to run: its settings loaded, its directory and outputs known."""

    spec: StageSpec
    config: Any
    out: Path
    outputs: dict[str, str]


def plan_stage(spec: StageSpec, root: Path, outputs: dict[str, dict[str, str]], origin: str) -> Planned:
    """Resolve ``spec``'s references against the earlier stages' ``outputs`` and load its settings."""
    where = f"{origin}: stage {spec.name!r}"
    config = resolve_references(spec.config, outputs, f"{where}: config")
    overrides = resolve_references(spec.overrides, outputs, f"{where}: overrides")
    path = config if isinstance(config, str) else None
    inline = {} if isinstance(config, str) else config
    owned = OWNED_KEY[spec.run]
    from rlvr.training.run_dir import flatten

    if owned in flatten(inline) or owned in flatten(overrides) or owned in overrides:
        raise ConfigError(f"{where}: '{owned}' is set by the pipeline (to {root / spec.name}); drop it")
    out = root / spec.name
    items = [*_dotlist(inline), *_dotlist(overrides), f"{owned}={json.dumps(str(out))}"]
    try:
        loaded = LOADERS[spec.run](path, items)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return Planned(spec, loaded, out, stage_outputs(spec.run, out, loaded))


def plan_pipeline(pipeline: Pipeline) -> list[Planned]:
    """Every stage planned in order (:func:`plan_stage`): all errors come before anything runs."""
    outputs: dict[str, dict[str, str]] = {}
    planned = []
    for spec in pipeline.stages:
        stage = plan_stage(spec, pipeline.dir, outputs, str(pipeline.path))
        outputs[spec.name] = stage.outputs
        planned.append(stage)
    return planned


# --- the record of stages done --------------------------------------------------------------------


def read_state(root: Path) -> dict[str, Any]:
    """DIR/pipeline.json's record of the stages done, by name (empty when there is none)."""
    path = root / STATE_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["stages"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{path} is not a pipeline record ({err}); delete it to start the pipeline over"
        ) from None


def write_state(root: Path, state: dict[str, Any]) -> None:
    """Write DIR/pipeline.json atomically."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.tmp")
    tmp.write_text(json.dumps({"stages": state}, indent=2) + "\n")
    os.replace(tmp, path)


def is_done(stage: Planned) -> bool:
    """Whether the stage's outputs are on disk: a final model (sft, train, dpo, merge), the dataset
    file and summary (sample), results.json (eval)."""
    kind, o = stage.spec.run, stage.outputs
    if kind in ("sft", "train", "dpo", "merge"):
        return (Path(o["final"]) / "config.json").is_file()
    if kind == "sample":
        return Path(o["data"]).is_file() and Path(o["summary"]).is_file()
    return Path(o["results"]).is_file()


def check_records(stages: Sequence[Planned], state: dict[str, Any], origin: str) -> None:
    """Refuse a stage done with other settings (listing them), or a record after a stage not done."""
    from rlvr.training.run_dir import config_differences, format_difference

    missing: str | None = None
    for stage in stages:
        name = stage.spec.name
        record = state.get(name)
        if record is None:
            missing = missing or name
            continue
        if missing is not None:
            raise ConfigError(
                f"{origin}: stage {name!r} is recorded as done but the earlier stage {missing!r} is not: "
                f"pass --from {missing} to redo the stages from it on"
            )
        defaults = settings_of(type(stage.config)())
        changes = config_differences(record["settings"], settings_of(stage.config), defaults)
        if record["run"] != stage.spec.run:
            changes.insert(0, ("run", record["run"], stage.spec.run))
        if changes:
            listed = "\n".join(f"  {format_difference(*c)}" for c in changes)
            raise ConfigError(
                f"{origin}: stage {name!r} was done with other settings (done -> now):\n{listed}\n"
                f"Restore them, or pass --from {name} to redo it and the stages after it"
            )


# --- --from ---------------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clear_stage(stage: Planned) -> list[str]:
    """Delete what the stage wrote in its directory, and nothing else; returns what was deleted."""
    kind, out = stage.spec.run, stage.out
    if not out.exists():
        return []
    if kind in ("sft", "train", "dpo"):
        from rlvr.training.run_dir import prepare_run_dir

        return prepare_run_dir(out, {}, resume=False, overwrite=True)  # the run directory rules
    if kind == "merge":
        if any(out.iterdir()) and not (out / "merge.json").is_file():
            raise ConfigError(f"{out} holds no merged model (no merge.json): not deleted; remove it yourself")
        shutil.rmtree(out)
        return [f"deleted the merged model {out}"]
    names = SAMPLE_FILES if kind == "sample" else EVAL_FILES
    gone = [name for name in names if (out / name).exists()]
    for name in gone:
        _remove(out / name)
    return [f"deleted {', '.join(gone)} in {out}"] if gone else []


# --- running a stage ------------------------------------------------------------------------------


class Interrupted(Exception):
    """A training stage stopped on Ctrl-C with its state saved."""


def _run_training(train_fn: Callable[..., Any], config: Any, out: Path, log: Any) -> None:
    from rlvr.distributed import shutdown
    from rlvr.training.run_dir import holds_a_run

    finished = False
    try:
        result = train_fn(config, resume=holds_a_run(out), overwrite=False, log=log)
        finished = True
    finally:
        shutdown(synchronize=finished)
    if result.interrupted:
        raise Interrupted


def run_train(config: Any, out: Path, log: Any) -> None:
    """``rlvr train``'s entry point; an interrupted run resumes from its latest checkpoint."""
    from rlvr.training.setup import build_task
    from rlvr.training.trainer import train

    task = build_task(config)
    _run_training(lambda c, **kw: train(c, task=task, **kw), config, out, log)


def run_sft(config: Any, out: Path, log: Any) -> None:
    """``rlvr sft``'s entry point; an interrupted run resumes from its latest checkpoint."""
    from rlvr.stages.sft import train_sft

    _run_training(train_sft, config, out, log)


def run_dpo(config: Any, out: Path, log: Any) -> None:
    """``rlvr dpo``'s entry point; an interrupted run resumes from its latest checkpoint."""
    from rlvr.stages.dpo import train_dpo

    _run_training(train_dpo, config, out, log)


def run_sample_stage(config: Any, out: Path, log: Any) -> None:
    """``rlvr sample``'s entry point; it resumes from the batches of samples already written."""
    from rlvr.stages.sample import run_sample

    run_sample(config, log=log)


def run_eval_stage(config: Any, out: Path, log: Any) -> None:
    """``rlvr eval``'s entry point; it resumes from the batches of samples already written."""
    from rlvr.evaluation.run import run_evaluation

    run_evaluation(config, log=log)


def run_merge(config: Any, out: Path, log: Any) -> None:
    """``rlvr merge``'s entry point; a merged model left without its record is merged again."""
    from rlvr.stages.merge import merge_models

    merge_models(replace(config, overwrite=(out / "merge.json").is_file()), log=log)


RUNNERS: dict[str, Callable[[Any, Path, Any], None]] = {
    "train": run_train,
    "sft": run_sft,
    "dpo": run_dpo,
    "sample": run_sample_stage,
    "eval": run_eval_stage,
    "merge": run_merge,
}
"""Each kind's run function: (settings, the stage's directory, log)."""


# --- the pipeline ---------------------------------------------------------------------------------


@dataclass
class StageReport:
    name: str
    run: str
    status: str  # ran, done before, not run
    produced: str
    accuracy: str = ""
    seconds: float | None = None
    """Wall-clock time of the stage's last run (a resumed stage: of the part after the resume)."""


def headline_accuracy(results_file: Path) -> str:
    """``benchmark avg@n XX.X% (length L)`` for each benchmark of an eval stage's results.json,
    L the mean completion length in tokens."""
    results = json.loads(results_file.read_text(encoding="utf-8"))
    n = results["settings"]["samples_per_problem"]
    parts = []
    for name, b in results["benchmarks"].items():
        length = b.get("length_mean")
        parts.append(
            f"{name} avg@{n} {100 * b[f'avg@{n}']:.1f}%" + (f" (length {length:.1f})" if length else "")
        )
    return ", ".join(parts)


def _report(stage: Planned, status: str, seconds: float | None) -> StageReport:
    o = stage.outputs
    produced = o.get("final") or o.get("data") or o.get("results") or o["dir"]
    accuracy = ""
    if stage.spec.run == "eval" and Path(o["results"]).is_file():
        accuracy = headline_accuracy(Path(o["results"]))
    return StageReport(stage.spec.name, stage.spec.run, status, produced, accuracy, seconds)


def format_reports(reports: Sequence[StageReport]) -> str:
    """The table printed at the end: stage, kind, status, seconds, what it produced, accuracy."""
    rows = [("stage", "run", "status", "seconds", "produced", "accuracy")]
    rows += [
        (r.name, r.run, r.status, "" if r.seconds is None else f"{r.seconds:.0f}", r.produced, r.accuracy)
        for r in reports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _start_index(stages: Sequence[Planned], start: str | None, origin: str) -> int:
    names = [s.spec.name for s in stages]
    if start is None:
        return len(names)
    if start not in names:
        raise ConfigError(f"--from {start}: {origin} has no stage {start!r} (stages: {', '.join(names)})")
    return names.index(start)


def run_pipeline(
    path: str | Path, *, start: str | None = None, root: str | Path | None = None, log: Any = print
) -> list[StageReport]:
    """Run the pipeline file ``path`` (module docstring); ``start`` redoes that stage and the ones
    after it. Returns a report per stage; raises :class:`Interrupted` when a stage stopped on Ctrl-C."""
    pipeline = read_pipeline(path, root)
    origin = str(pipeline.path)
    stages = plan_pipeline(pipeline)
    first_redone = _start_index(stages, start, origin)
    state = read_state(pipeline.dir)
    redone = {s.spec.name for s in stages[first_redone:]}
    check_records([s for s in stages if s.spec.name not in redone], state, origin)
    for stage in stages[first_redone:]:
        for line in clear_stage(stage):
            log(f"[{stage.spec.name}] --from {start}: {line}")
        state.pop(stage.spec.name, None)
    write_state(pipeline.dir, state)
    reports = []
    for stage in stages:
        name = stage.spec.name
        if name in state and is_done(stage):
            log(f"[{name}] done before: {stage.outputs.get('final') or stage.outputs['dir']} (not redone)")
            reports.append(_report(stage, "done before", state[name].get("seconds")))
            continue
        log(f"[{name}] rlvr {stage.spec.run} in {stage.out}")
        stage.out.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        RUNNERS[stage.spec.run](stage.config, stage.out, log)
        seconds = round(time.perf_counter() - started, 1)
        state[name] = {
            "run": stage.spec.run,
            "settings": settings_of(stage.config),
            "outputs": stage.outputs,
            "seconds": seconds,
        }
        write_state(pipeline.dir, state)
        reports.append(_report(stage, "ran", seconds))
    log(format_reports(reports))
    return reports
