"""``rlvr pipeline``: references, stages done not redone, resume after an interruption, ``--from``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlvr.errors import ConfigError
from rlvr.stages import pipeline as pl

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "pipeline_toy.yaml"


def _write(path: Path, stages: list[dict[str, Any]], root: Path) -> Path:
    path.write_text(yaml.safe_dump({"dir": str(root), "stages": stages}))
    return path


def _chain() -> list[dict[str, Any]]:
    """sample -> sft -> eval -> merge, referring to each other's outputs."""
    return [
        {"name": "sample", "run": "sample", "config": {"model": "toy", "select": "shortest_correct"}},
        {
            "name": "sft",
            "run": "sft",
            "config": {"data": {"train": "${stages.sample.sft_data}"}},
            "overrides": {"training.steps": 2},
        },
        {"name": "eval", "run": "eval", "config": {"model": "${stages.sft.final}", "benchmarks": ["task"]}},
        {"name": "merge", "run": "merge", "config": {"models": ["${stages.sft.final}", "toy"]}},
    ]


class FakeStages:
    """Stage functions that write the outputs the pipeline checks, and count their calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_in: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_in = fail_in
        for kind in pl.KINDS:
            monkeypatch.setitem(pl.RUNNERS, kind, self._runner(kind))

    def _runner(self, kind: str) -> Any:
        def run(config: Any, out: Path, log: Any) -> None:
            self.calls.append(out.name)
            if out.name == self.fail_in:
                raise KeyboardInterrupt
            out.mkdir(parents=True, exist_ok=True)
            if kind in ("sft", "train", "dpo"):
                (out / "final").mkdir()
                (out / "final" / "config.json").write_text("{}")
                (out / "config.json").write_text(json.dumps({"training": {}, "logging": {}, "data": {}}))
            elif kind == "merge":
                (out / "config.json").write_text("{}")
                (out / "merge.json").write_text("{}")
            elif kind == "sample":
                (out / "sft.jsonl").write_text("")
                (out / "summary.json").write_text("{}")
            else:
                results = {"settings": {"samples_per_problem": 1}, "benchmarks": {"task": {"avg@1": 0.25}}}
                (out / "results.json").write_text(json.dumps(results))

        return run


# --- references -----------------------------------------------------------------------------------


def test_references_resolve_to_earlier_stage_outputs(tmp_path: Path) -> None:
    stages = pl.plan_pipeline(pl.read_pipeline(_write(tmp_path / "p.yaml", _chain(), tmp_path / "run")))
    sample, sft, evaluate, merge = stages
    assert sample.outputs["sft_data"] == str(tmp_path / "run" / "sample" / "sft.jsonl")
    assert sft.config.data.train == sample.outputs["sft_data"]
    assert sft.config.training.steps == 2
    assert sft.config.logging.output_dir == str(tmp_path / "run" / "sft")
    assert evaluate.config.model == str(tmp_path / "run" / "sft" / "final")
    assert merge.config.models == [str(tmp_path / "run" / "sft" / "final"), "toy"]
    assert merge.config.output == str(tmp_path / "run" / "merge")


def test_reference_inside_a_string() -> None:
    outputs = {"a": {"dir": "/x/a"}}
    assert pl.resolve_references("${stages.a.dir}/sub", outputs, "here") == "/x/a/sub"


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("${stages.nope.final}", "names no earlier stage 'nope'"),
        ("${stages.sample.final}", "stage 'sample' has no output 'final'"),
        ("${stages.sample.pairs}", "stage 'sample' has no output 'pairs'"),  # select is not pairs
        ("${stages.eval.final}", "names no earlier stage 'eval'"),  # a later stage
    ],
)
def test_bad_reference_names_the_stage_and_key(tmp_path: Path, reference: str, message: str) -> None:
    chain = _chain()
    chain[1]["config"]["data"]["train"] = reference
    path = _write(tmp_path / "p.yaml", chain, tmp_path / "run")
    with pytest.raises(ConfigError, match="stage 'sft'") as err:
        pl.run_pipeline(path)
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing ran


def test_pairs_output_when_sampling_pairs(tmp_path: Path) -> None:
    chain = _chain()[:1]
    chain[0]["config"]["select"] = "pairs"
    (stage,) = pl.plan_pipeline(pl.read_pipeline(_write(tmp_path / "p.yaml", chain, tmp_path)))
    assert stage.outputs["pairs"].endswith("pairs.jsonl") and "sft_data" not in stage.outputs


def test_the_pipeline_owns_the_output_setting(tmp_path: Path) -> None:
    chain = _chain()
    chain[1]["overrides"] = {"logging.output_dir": "elsewhere"}
    with pytest.raises(ConfigError, match="stage 'sft'.*'logging.output_dir' is set by the pipeline"):
        pl.plan_pipeline(pl.read_pipeline(_write(tmp_path / "p.yaml", chain, tmp_path)))


def test_unknown_setting_names_the_stage(tmp_path: Path) -> None:
    chain = _chain()
    chain[0]["config"]["nn"] = 3
    with pytest.raises(ConfigError, match="stage 'sample'"):
        pl.plan_pipeline(pl.read_pipeline(_write(tmp_path / "p.yaml", chain, tmp_path)))


def test_bad_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'run' must be one of"):
        pl.read_pipeline(_write(tmp_path / "p.yaml", [{"name": "a", "run": "rl"}], tmp_path))
    with pytest.raises(ConfigError, match="'a' is used twice"):
        pl.read_pipeline(_write(tmp_path / "p.yaml", [{"name": "a", "run": "eval"}] * 2, tmp_path))


# --- done, interrupted, changed, --from -----------------------------------------------------------


def test_done_stages_are_not_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch)
    path = _write(tmp_path / "p.yaml", _chain(), tmp_path / "run")
    reports = pl.run_pipeline(path, log=lambda *a: None)
    assert fake.calls == ["sample", "sft", "eval", "merge"]
    assert reports[2].accuracy == "task avg@1 25.0%"
    reports = pl.run_pipeline(path, log=lambda *a: None)
    assert fake.calls == ["sample", "sft", "eval", "merge"]  # no stage function ran again
    assert [r.status for r in reports] == ["done before"] * 4


def test_interrupted_pipeline_continues_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeStages(monkeypatch, fail_in="eval")
    path = _write(tmp_path / "p.yaml", _chain(), tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        pl.run_pipeline(path, log=lambda *a: None)
    assert fake.calls == ["sample", "sft", "eval"]
    fake.fail_in = None
    pl.run_pipeline(path, log=lambda *a: None)
    assert fake.calls == ["sample", "sft", "eval", "eval", "merge"]


def test_changed_settings_are_refused_with_the_differences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeStages(monkeypatch)
    path = _write(tmp_path / "p.yaml", _chain(), tmp_path / "run")
    pl.run_pipeline(path, log=lambda *a: None)
    chain = _chain()
    chain[1]["overrides"] = {"training.steps": 3}
    _write(path, chain, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"stage 'sft' was done with other settings") as err:
        pl.run_pipeline(path, log=lambda *a: None)
    assert "training.steps: 2 -> 3" in str(err.value) and "--from sft" in str(err.value)
    assert len(fake.calls) == 4  # nothing ran


def test_from_redoes_that_stage_and_the_later_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch)
    path = _write(tmp_path / "p.yaml", _chain(), tmp_path / "run")
    pl.run_pipeline(path, log=lambda *a: None)
    (tmp_path / "run" / "eval" / "mine.txt").write_text("not the pipeline's")
    chain = _chain()
    chain[2]["config"]["n"] = 2  # a change in a stage that is redone is fine
    _write(path, chain, tmp_path / "run")
    reports = pl.run_pipeline(path, start="eval", log=lambda *a: None)
    assert fake.calls == ["sample", "sft", "eval", "merge", "eval", "merge"]
    assert [r.status for r in reports] == ["done before", "done before", "ran", "ran"]
    assert (tmp_path / "run" / "eval" / "mine.txt").is_file()  # only what the pipeline wrote is deleted
    assert (tmp_path / "run" / "sft" / "final").is_dir()
    with pytest.raises(ConfigError, match="--from nope: .* has no stage 'nope'"):
        pl.run_pipeline(path, start="nope", log=lambda *a: None)


def test_cli_pipeline_reports_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlvr.cli import main

    chain = _chain()
    chain[1]["config"]["data"]["train"] = "${stages.sample.nope}"
    assert main(["pipeline", str(_write(tmp_path / "p.yaml", chain, tmp_path / "run"))]) == 2
    assert "stage 'sample' has no output 'nope'" in capsys.readouterr().err


# --- the recipe -----------------------------------------------------------------------------------


def test_toy_recipe_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """recipes/pipeline_toy.yaml as it is (a few seconds on CPU), then again: nothing redone."""
    monkeypatch.chdir(RECIPE.parents[1])
    lines: list[str] = []
    reports = pl.run_pipeline(
        RECIPE, root=tmp_path / "run", log=lambda *a: lines.append(" ".join(map(str, a)))
    )
    assert [r.status for r in reports] == ["ran"] * 5
    assert all(r.seconds is not None and r.seconds >= 0 for r in reports)
    assert (tmp_path / "run" / "merge" / "model.safetensors").is_file()
    assert reports[2].accuracy.startswith("arithmetic avg@1 ") and reports[4].accuracy
    assert "stage" in lines[-1] and "eval_merge" in lines[-1]
    reports = pl.run_pipeline(RECIPE, root=tmp_path / "run", log=lambda *a: None)
    assert [r.status for r in reports] == ["done before"] * 5


@pytest.mark.parametrize(
    "recipe",
    sorted(p.name for p in RECIPE.parent.glob("*.yaml") if "\nstages:" in p.read_text()),
)
def test_every_shipped_pipeline_plans(recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reference and every stage's settings of the shipped pipelines resolve before anything runs."""
    monkeypatch.chdir(RECIPE.parents[1])
    stages = pl.plan_pipeline(pl.read_pipeline(RECIPE.parent / recipe, tmp_path))
    assert stages and all(s.out.parent == tmp_path for s in stages)


def test_a_setting_added_since_a_stage_ran_is_no_change_at_its_default() -> None:
    from rlvr.training.run_dir import config_differences

    saved = {"a": 1, "b": {"c": 2}}
    now = {"a": 1, "b": {"c": 2, "new": 5}, "other": 3}
    defaults = {"a": 0, "b": {"c": 0, "new": 5}, "other": 0}
    assert [(c[0], c[2]) for c in config_differences(saved, now, defaults)] == [("other", 3)]
    assert [c[0] for c in config_differences(saved, now)] == ["b.new", "other"]
