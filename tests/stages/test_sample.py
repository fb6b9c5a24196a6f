"""``rlvr sample``: the selection rules on hand-written graded samples, and the stage end to end on the
shipped tiny model (files and counts, resume, re-selection, the SFT reader, settings errors, the CLI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import rlvr.evaluation.run as eval_run
from rlvr.cli import main
from rlvr.errors import ConfigError
from rlvr.stages.sample import SampleConfig, load_sample_config, run_sample
from rlvr.stages.selection import (
    Graded,
    pair_correct_vs_wrong,
    pair_shortest_vs_longest_correct,
    select,
    select_best,
    select_correct,
    select_first_correct,
    select_shortest_correct,
)

# --- the rules on hand-written samples ------------------------------------------------------------


def g(sample: int, reward: float, correct: bool, length: int, text: str | None = None) -> Graded:
    return Graded(text if text is not None else f"s{sample}", reward, correct, length, sample)


# The module docstring's example: a long correct, a wrong, two correct of equal length.
A, B, C, D = g(0, 1.0, True, 9), g(1, 0.0, False, 3), g(2, 1.0, True, 4), g(3, 1.0, True, 4)
MIXED = [A, B, C, D]
NONE_CORRECT = [g(0, 0.2, False, 5), g(1, 0.5, False, 7), g(2, 0.5, False, 6)]
ALL_CORRECT = [g(0, 1.0, True, 8), g(1, 1.2, True, 5), g(2, 1.2, True, 5), g(3, 1.0, True, 2)]
EQUAL_LENGTHS = [g(0, 1.0, True, 4), g(1, 0.0, False, 4), g(2, 1.0, True, 4)]


def test_correct_keeps_every_correct_sample_in_order():
    assert select_correct(MIXED) == [A, C, D]
    assert select_correct(NONE_CORRECT) == []
    assert select_correct(ALL_CORRECT) == ALL_CORRECT
    assert select_correct(EQUAL_LENGTHS) == [EQUAL_LENGTHS[0], EQUAL_LENGTHS[2]]


def test_first_correct():
    assert select_first_correct(MIXED) == [A]
    assert select_first_correct(NONE_CORRECT) == []
    assert select_first_correct(ALL_CORRECT) == [ALL_CORRECT[0]]
    assert select_first_correct([B, C]) == [C]


def test_shortest_correct_breaks_ties_by_sample_order():
    assert select_shortest_correct(MIXED) == [C]  # C and D have 4 tokens: the earlier one
    assert select_shortest_correct(NONE_CORRECT) == []
    assert select_shortest_correct(ALL_CORRECT) == [ALL_CORRECT[3]]
    assert select_shortest_correct(EQUAL_LENGTHS) == [EQUAL_LENGTHS[0]]
    assert select_shortest_correct([B]) == []  # the shorter wrong sample is never kept


def test_best_takes_the_highest_reward_then_the_shortest_then_the_earliest():
    assert select_best(MIXED) == [C]
    assert select_best(NONE_CORRECT) == [NONE_CORRECT[2]]  # 0.5 twice: 6 tokens beat 7
    assert select_best(ALL_CORRECT) == [ALL_CORRECT[1]]  # 1.2 twice, 5 tokens twice: the earlier
    assert select_best(EQUAL_LENGTHS) == [EQUAL_LENGTHS[0]]
    assert select_best([]) == []


def test_shortest_vs_longest_correct():
    assert pair_shortest_vs_longest_correct(MIXED) == [(C, A)]
    assert pair_shortest_vs_longest_correct(ALL_CORRECT) == [(ALL_CORRECT[3], ALL_CORRECT[0])]
    assert pair_shortest_vs_longest_correct(NONE_CORRECT) == []
    assert pair_shortest_vs_longest_correct([A]) == []  # one correct sample: no pair
    assert pair_shortest_vs_longest_correct(EQUAL_LENGTHS) == []  # no length to prefer


def test_correct_vs_wrong_pairs_each_sample_once():
    assert pair_correct_vs_wrong(MIXED) == [(A, B)]
    assert pair_correct_vs_wrong(NONE_CORRECT) == []
    assert pair_correct_vs_wrong(ALL_CORRECT) == []
    wrong = [g(4, 0.0, False, 1), g(5, 0.0, False, 2)]
    assert pair_correct_vs_wrong([*MIXED, *wrong]) == [(A, B), (C, wrong[0]), (D, wrong[1])]


def test_select_leaves_out_blank_completions_and_caps_rows():
    blank = g(0, 1.0, True, 1, text="  \n")
    assert select([blank, A], "shortest_correct") == [A]
    assert select([blank], "best") == []
    assert select(MIXED, "correct", max_per_problem=2) == [A, C]
    assert select(MIXED, "pairs", pairs="correct_vs_wrong") == [(A, B)]
    assert select(MIXED, "pairs") == [(C, A)]
    assert select(NONE_CORRECT, "pairs", max_per_problem=1) == []


# --- the stage on the shipped tiny model -----------------------------------------------------------

TASK_YAML = """\
task:
  name: arithmetic
  params: {num_train: 40, num_test: 10, digits: 2, ops: ["+"], seed: 1000}
"""


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def task_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("task") / "task.yaml"
    path.write_text(TASK_YAML)
    return path


def settings(task_yaml: Path, out: Path, **extra) -> dict:
    base = {
        "model": "toy",
        "train_config": str(task_yaml),
        "num_problems": 8,
        "n": 8,
        "max_new_tokens": 24,
        "problems_per_batch": 3,
        "output_dir": str(out),
    }
    return {**base, **extra}


def sample(task_yaml: Path, out: Path, **extra) -> dict:
    return run_sample(load_sample_config(flags=settings(task_yaml, out, **extra)), log=quiet)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def sampled(task_yaml, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sampled") / "out"
    return out, sample(task_yaml, out)


def test_sampling_writes_the_files_with_the_counts_of_the_summary(sampled):
    out, summary = sampled
    samples = read_jsonl(out / "samples" / "arithmetic.jsonl")
    rows = read_jsonl(out / "sft.jsonl")
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 8 and summary["samples_per_problem"] == 8
    assert summary["samples"] == len(samples) == 64
    assert summary["pass_rate"] == pytest.approx(sum(s["correct"] for s in samples) / 64)
    assert summary["mean_length"] == pytest.approx(sum(s["length"] for s in samples) / 64)
    assert summary["rows"] == len(rows) == sum(s["correct"] for s in samples) > 0
    with_rows = {r["id"] for r in rows}
    assert summary["problems_without_rows"] == 8 - len(with_rows)
    assert summary["problems_with_a_correct_sample"] == len(with_rows)
    assert summary["mean_length_kept"] == pytest.approx(sum(r["length"] for r in rows) / len(rows))
    for row in rows:
        assert row["correct"] and row["reward"] > 0
        assert row["prompt"] == row["question"]  # the arithmetic task's template is plain
        assert {"id", "gold", "reward", "length", "completion", "sample"} <= set(row)
        stored = next(s for s in samples if s["id"] == row["id"] and s["sample"] == row["sample"])
        assert stored["completion"] == row["completion"] and stored["length"] == row["length"]


def test_correct_rows_load_with_the_sft_reader_at_its_defaults(sampled):
    from transformers import AutoTokenizer

    from rlvr.toy.build import SHIPPED_DIR
    from rlvr.training.sft_data import SFTDataSettings, load_sft_dataset, read_sft_examples

    out, summary = sampled
    examples, skipped = read_sft_examples(out / "sft.jsonl", SFTDataSettings())
    assert len(examples) == summary["rows"] and not skipped
    dataset = load_sft_dataset(
        out / "sft.jsonl", SFTDataSettings(), AutoTokenizer.from_pretrained(SHIPPED_DIR)
    )
    assert len(dataset.examples) == summary["rows"]
    assert all(e.num_targets > 0 for e in dataset.examples)


def test_another_rule_reselects_from_the_stored_samples(sampled, task_yaml, monkeypatch, tmp_path):
    out, first = sampled
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    monkeypatch.setattr(eval_run, "generate_records", _no_generation)
    summary = sample(task_yaml, copy, select="pairs", pairs="correct_vs_wrong", max_per_problem=1)
    rows = read_jsonl(copy / "pairs.jsonl")
    assert summary["samples"] == first["samples"] and summary["pass_rate"] == first["pass_rate"]
    samples = read_jsonl(copy / "samples" / "arithmetic.jsonl")
    verdicts = {i: {s["correct"] for s in samples if s["index"] == i} for i in range(8)}
    assert summary["rows"] == len(rows) == sum(v == {True, False} for v in verdicts.values())
    for row in rows:
        assert row["chosen_correct"] and not row["rejected_correct"]
        assert {"prompt", "chosen", "rejected", "id", "gold", "chosen_length", "rejected_reward"} <= set(row)
    shortest = sample(task_yaml, copy, select="shortest_correct")
    assert shortest["rows"] == first["problems_with_a_correct_sample"]
    shortest_rows = read_jsonl(copy / "sft.jsonl")
    for row in shortest_rows:
        lengths = [s["length"] for s in samples if s["id"] == row["id"] and s["correct"]]
        assert row["length"] == min(lengths)


def _no_generation(*args, **kwargs):
    raise AssertionError("generated although every batch is stored")


def test_an_interrupted_run_generates_only_the_missing_batches(sampled, task_yaml, monkeypatch, tmp_path):
    out, first = sampled
    expected = (out / "samples" / "arithmetic.jsonl").read_text()
    part = tmp_path / "part"
    (part / "samples").mkdir(parents=True)
    shutil.copy(out / "eval_settings.json", part)
    # Killed while writing the second of three batches (3 + 3 + 2 problems, 8 samples each).
    lines = expected.splitlines(keepends=True)
    (part / "samples" / "arithmetic.jsonl").write_text("".join(lines[: 24 + 10]) + lines[34][:20])
    calls = []
    real = eval_run.generate_records

    def counting(engine, tokenizer, eval_set, reward, problems, *args, **kwargs):
        calls.append(list(problems))
        return real(engine, tokenizer, eval_set, reward, problems, *args, **kwargs)

    monkeypatch.setattr(eval_run, "generate_records", counting)
    resumed = sample(task_yaml, part)
    assert calls == [[3, 4, 5], [6, 7]]
    assert (part / "samples" / "arithmetic.jsonl").read_text() == expected
    assert (part / "sft.jsonl").read_text() == (out / "sft.jsonl").read_text()
    assert {k: v for k, v in resumed.items() if k not in ("output", "samples_file")} == {
        k: v for k, v in first.items() if k not in ("output", "samples_file")
    }


def test_other_generation_settings_are_refused_without_overwrite(sampled, task_yaml, tmp_path):
    out, _ = sampled
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    with pytest.raises(ConfigError, match="temperature"):
        sample(task_yaml, copy, temperature=0.7)
    summary = sample(task_yaml, copy, temperature=0.0, overwrite=True)  # greedy: one sample each
    assert summary["samples"] == 8 and len(read_jsonl(copy / "samples" / "arithmetic.jsonl")) == 8


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"select": "shortest"}, "'select'.*shortest_correct"),
        ({"pairs": "correct_vs_wrongs"}, "'pairs'.*correct_vs_wrong"),
        ({"max_per_problem": 0}, "max_per_problem"),
        ({"n": 0}, "'n'"),
        ({"problems": "p.jsonl", "train_config": "t.yaml"}, "'problems' and 'train_config'"),
        ({"problems": "p.jsonl", "split": "test"}, "'split'"),
        ({"problems": "p.txt"}, "'problems'"),
        ({"template": "r2"}, "'template'"),
        ({"checkpoint": "all"}, "'checkpoint'"),
        ({"splits": "test"}, "splits.*split"),
    ],
)
def test_bad_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_sample_config(flags=overrides)


def test_a_model_without_a_task_names_the_settings(tmp_path):
    with pytest.raises(ConfigError, match="train_config.*problems"):
        run_sample(SampleConfig(output_dir=str(tmp_path / "out")), log=quiet)


def test_a_bad_problems_row_is_reported_before_the_model_loads(tmp_path, monkeypatch):
    from rlvr.errors import DataError

    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2="}\n')
    monkeypatch.setattr(eval_run, "load_eval_model", _no_generation)
    with pytest.raises(DataError, match=r"p.jsonl:2.*answer"):
        run_sample(SampleConfig(problems=str(problems), output_dir=str(tmp_path / "out")), log=quiet)


def test_a_problems_file_is_sampled_with_the_default_template_and_graded_by_math(tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "12+13=", "answer": "25"}\n{"question": "40+41=", "answer": "81"}\n')
    config = SampleConfig(problems=str(problems), n=2, max_new_tokens=8, output_dir=str(tmp_path / "out"))
    summary = run_sample(config, log=quiet)
    assert summary["set"] == "p" and summary["samples"] == 4
    assert summary["problems_without_rows"] == 2 - len(
        {r["id"] for r in read_jsonl(tmp_path / "out" / "sft.jsonl")}
    )
    # the toy tokenizer has no chat template: r1_zero
    assert json.loads((tmp_path / "out" / "eval_settings.json").read_text())["templates"] == {"p": "r1_zero"}


def test_the_command_line_writes_pairs(task_yaml, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "sample",
            "toy",
            f"train_config={task_yaml}",
            "num_problems=4",
            "max_new_tokens=24",
            "--n",
            "4",
            "--select",
            "pairs",
            "--pairs",
            "correct_vs_wrong",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["select"] == "pairs" and summary["pairs"] == "correct_vs_wrong"
    assert summary["rows"] == len(read_jsonl(out / "pairs.jsonl"))
    assert "rows kept" in capsys.readouterr().out
    assert main(["sample", "toy", "select=nope", "--output", str(out)]) == 2
    assert "'select'" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_samples(task_yaml, tmp_path):
    """A real ``rlvr sample`` process killed with SIGKILL after its first batch, then run again, writes
    what an uninterrupted run writes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def command(out: Path) -> list[str]:
        items = {**settings(task_yaml, out), "problems_per_batch": 1}
        return [
            sys.executable,
            "-m",
            "rlvr",
            "sample",
            "toy",
            *(f"{k}={v}" for k, v in items.items() if k != "model"),
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out, part = tmp_path / "whole", tmp_path / "part"
    subprocess.run(command(out), env=env, check=True, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(command(part), env=env, stdout=subprocess.DEVNULL)
    store = part / "samples" / "arithmetic.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if store.is_file() and store.read_text().count("\n") >= 8:  # one problem's 8 samples written
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (part / "summary.json").exists()
    subprocess.run(command(part), env=env, check=True, stdout=subprocess.DEVNULL)
    assert store.read_text() == (out / "samples" / "arithmetic.jsonl").read_text()
    assert (part / "sft.jsonl").read_text() == (out / "sft.jsonl").read_text()
