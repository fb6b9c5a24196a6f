"""Evaluating environments: n multi-turn trajectories per problem on the shipped tiny model, scored by
the environment (real model, real engine, real calculator and guess-the-number environments)."""

import json
import shutil
from collections import Counter

import pytest

from rlvr.cli import main
from rlvr.config import Config, EnvConfig, TaskConfig, to_dict
from rlvr.envs.base import Environment, StepResult
from rlvr.errors import ConfigError
from rlvr.evaluation.config import EvalEnvConfig, load_eval_config
from rlvr.evaluation.run import run_evaluation
from rlvr.evaluation.trajectories import resolve_env_section
from rlvr.toy.build import SHIPPED_DIR

CALCULATOR = {"name": "calculator", "max_turns": 3, "max_turn_tokens": 48, "max_context_tokens": 320}


class CountedVerdictEnv(Environment):
    """One turn; the answer of problem p is its number of correct trajectories c_p: the trajectories
    of p are started in sample order, and the first c_p of them are correct. A negative answer makes
    ``step`` raise (an environment error)."""

    name = "counted_verdict"
    stop_strings = ("\n",)
    started: Counter = Counter()

    def __init__(self, note: str = "") -> None:
        self.note = note

    def reset(self, problem, seed):
        self.correct_count = int(problem.answer)
        self.sample = CountedVerdictEnv.started[problem.id]
        CountedVerdictEnv.started[problem.id] += 1
        return f"{problem.question}\n"

    def step(self, action):
        if self.correct_count < 0:
            raise RuntimeError("the verdict service is down")
        correct = self.sample < self.correct_count
        return StepResult("", float(correct), True, False, {"correct": correct, "tool_call": True})


def quiet(*args, **kwargs):
    pass


def evaluate(out, **settings):
    flags = {"model": "toy", "output_dir": str(out)}
    flags.update(settings)
    return run_evaluation(load_eval_config(flags=flags), log=quiet)["toy"]


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pass_at_k_over_trajectories_is_exact_and_environment_errors_count_as_failures(tmp_path):
    # c = 0, 1, 2, 4 correct of n = 4, and a problem whose environment fails: by Chen et al. eq. 1,
    # pass@2 per problem = 0, 1 - 3/6, 1 - 1/6, 1, 0; pass@3 = 0, 1 - 1/4, 1, 1, 0; pass@4 = 0, 1, 1, 1, 0.
    bench = tmp_path / "verdicts.jsonl"
    bench.write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": a}) + "\n" for i, a in enumerate([0, 1, 2, 4, -1]))
    )
    CountedVerdictEnv.started.clear()
    out = tmp_path / "out"
    results = evaluate(
        out,
        benchmarks=[str(bench)],
        n=4,
        temperature=1.0,
        env={"name": f"{__name__}:CountedVerdictEnv", "params": {"note": "x"}, "max_turn_tokens": 4},
    )
    r = results["benchmarks"]["verdicts"]
    assert r["problems"] == 5 and r["samples_per_problem"] == 4
    assert r["avg@4"] == pytest.approx(r["pass@1"]) == pytest.approx((0 + 1 / 4 + 2 / 4 + 1 + 0) / 5)
    assert r["pass@2"] == pytest.approx((0 + 1 / 2 + 5 / 6 + 1 + 0) / 5)
    assert r["pass@3"] == pytest.approx((0 + 3 / 4 + 1 + 1 + 0) / 5)
    assert r["pass@4"] == pytest.approx(3 / 5)
    assert r["errors"] == 4 and r["error_rate"] == pytest.approx(0.2)
    assert r["turns_mean"] == 1.0 and r["tool_calls_mean"] == 1.0 and r["truncation_rate"] == 0.0
    rows = read_records(out / "samples" / "verdicts.jsonl")
    assert [row["correct"] for row in rows if row["index"] == 2] == [True, True, False, False]
    failed = [row for row in rows if row["index"] == 4]
    assert all(row["outcome"] == "error" and not row["correct"] for row in failed)
    assert "the verdict service is down" in failed[0]["error"]
    assert "environment" in (out / "report.md").read_text()


def test_calculator_trajectories_are_recorded_whole_and_resume_to_the_same_records(tmp_path):
    settings = {
        "task": {"name": "arithmetic"},
        "env": CALCULATOR,
        "n": 2,
        "temperature": 1.0,
        "num_problems": 6,
        "problems_per_batch": 2,
    }
    full = evaluate(tmp_path / "full", **settings)
    samples = tmp_path / "full" / "samples" / "arithmetic.jsonl"
    expected = samples.read_text()
    rows = read_records(samples)
    assert len(rows) == 12
    for row in rows:
        roles = [m["role"] for m in row["conversation"]]
        assert (
            roles[0] == "user"
            and roles[1] == "assistant"
            and row["prompt"] == row["conversation"][0]["content"]
        )
        assert roles.count("assistant") == row["turns"] and roles.count("tool") == row["tool_calls"]
    used_tool = next(row for row in rows if row["tool_calls"])
    turn, answer = used_tool["conversation"][1:3]
    assert turn["content"].endswith("=") and answer["content"].lstrip("-").isdigit()  # the tool's value
    r = full["benchmarks"]["arithmetic"]
    assert r["tool_calls_mean"] > 0 and 1 <= r["turns_mean"] <= 3
    assert r["avg@2"] == pytest.approx(sum(row["correct"] for row in rows) / 12)
    # Interrupted during the third batch's write: two batches whole, half a line of the third.
    part = tmp_path / "part"
    (part / "samples").mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "eval_settings.json", part)
    lines = expected.splitlines(keepends=True)
    (part / "samples" / "arithmetic.jsonl").write_text("".join(lines[:8]) + lines[8][:40])
    resumed = evaluate(part, **settings)
    assert (part / "samples" / "arithmetic.jsonl").read_text() == expected
    assert resumed["benchmarks"] == full["benchmarks"]
    with pytest.raises(ConfigError, match="other settings \\(env: "):
        evaluate(part, **{**settings, "env": {**CALCULATOR, "max_turns": 2}})


def test_cli_evaluates_the_calculator_and_a_run_with_its_environment(tmp_path, capsys):
    out = tmp_path / "cli"
    items = [f"env.{k}={v}" for k, v in CALCULATOR.items()]
    code = main(
        ["eval", "toy", "task.name=arithmetic", *items, "--n", "2", "--temperature", "1.0"]
        + ["--num-problems", "3", "--output", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "trajectories in environment calculator" in printed and "turns_mean" in printed
    assert "[arithmetic] 3/3 problems" in printed  # progress as single-turn evaluation shows it
    saved = json.loads((out / "results.json").read_text())
    assert (
        saved["settings"]["env"]["name"] == "calculator"
        and saved["benchmarks"]["arithmetic"]["problems"] == 3
    )
    # A run trained in guess_number is evaluated in guess_number (its config's env section) ...
    run = tmp_path / "run"
    shutil.copytree(SHIPPED_DIR, run / "final")
    trained = Config(task=TaskConfig(name="guess_number"), env=EnvConfig(name="guess_number", max_turns=3))
    (run / "config.json").write_text(json.dumps(to_dict(trained), default=str))
    assert (
        main(
            [
                "eval",
                str(run),
                "--num-problems",
                "2",
                "--max-new-tokens",
                "4",
                "--output",
                str(tmp_path / "g"),
            ]
        )
        == 0
    )
    guess = json.loads((tmp_path / "g" / "results.json").read_text())
    assert guess["settings"]["env"]["max_turns"] == 3 and guess["settings"]["env"]["max_turn_tokens"] is None
    assert 1 <= guess["benchmarks"]["guess_number"]["turns_mean"] <= 3
    # ... and single-turn with env.name=none.
    args = ["eval", str(run), "env.name=none", "--num-problems", "2", "--max-new-tokens", "4"]
    assert main([*args, "--output", str(tmp_path / "s")]) == 0
    single = json.loads((tmp_path / "s" / "results.json").read_text())
    assert single["settings"]["env"] is None and "maj@1" in single["benchmarks"]["guess_number"]


def test_env_sections_are_laid_over_the_training_one():
    trained = EnvConfig(name="calculator", params={"max_tool_calls": 2}, max_turns=3, max_turn_tokens=48)
    same = resolve_env_section(EvalEnvConfig(max_turns=5, params={"instruction": "go"}), trained)
    assert same == EnvConfig(
        name="calculator", params={"max_tool_calls": 2, "instruction": "go"}, max_turns=5, max_turn_tokens=48
    )
    other = resolve_env_section(EvalEnvConfig(name="guess_number"), trained)
    assert other == EnvConfig(name="guess_number")
    assert resolve_env_section(EvalEnvConfig(name="none"), trained) is None
    assert resolve_env_section(EvalEnvConfig(), None) is None


def test_bad_env_settings_name_the_key(tmp_path, capsys):
    with pytest.raises(
        ConfigError, match="setting 'env.name': unknown environment 'calculater'; did you mean 'calculator'"
    ):
        load_eval_config(overrides=["env.name=calculater"])
    with pytest.raises(ConfigError, match="setting 'env.max_turns' must be >= 1"):
        load_eval_config(overrides=["env.name=calculator", "env.max_turns=0"])
    with pytest.raises(ConfigError, match="unknown setting 'env.turn_reward'"):
        load_eval_config(overrides=["env.turn_reward=true"])
    with pytest.raises(ConfigError, match="setting 'env.name': cannot import module 'no_such_module'"):
        load_eval_config(overrides=["env.name=no_such_module:Env"])
    flags = {"model": "toy", "task": {"name": "arithmetic"}, "output_dir": str(tmp_path / "o")}
    config = load_eval_config(flags=flags, overrides=["env.name=calculator", "env.params.max_tool_call=2"])
    with pytest.raises(
        ConfigError, match="setting 'env.params.max_tool_call'.*did you mean 'max_tool_calls'"
    ):
        run_evaluation(config, log=quiet)
    assert not (tmp_path / "o").exists()  # refused before the weights load and anything is written
    assert main(["eval", "toy", "env.name=nope", "--output", str(tmp_path / "o")]) == 2
    assert "setting 'env.name'" in capsys.readouterr().err
