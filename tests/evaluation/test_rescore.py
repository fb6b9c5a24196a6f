"""Re-scoring existing completions: real Qwen2.5-Math outputs with the original evaluator's verdicts."""

import json
from collections import Counter
from pathlib import Path

import pytest

from rlvr.cli import main
from rlvr.errors import ConfigError, DataError
from rlvr.evaluation.config import load_eval_config
from rlvr.evaluation.run import run_evaluation

QWEN = Path(__file__).resolve().parents[1] / "data" / "qwen25_math_cot_100.jsonl"
# The original evaluator's documented false negatives (tests/data/README.md), as (idx, sample).
KNOWN_FALSE_NEGATIVES = {(3, s) for s in range(8)} | {(72, 7)}


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def qwen_rescored(tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen")
    config = load_eval_config(
        flags={"completions": str(QWEN), "output_dir": str(out), "meta_fields": ["level"]}
    )
    return run_evaluation(config, log=quiet)["completions"], out


def test_avg_at_8_matches_the_original_evaluator_except_its_false_negatives(qwen_rescored):
    results, out = qwen_rescored
    rows = [json.loads(line) for line in QWEN.read_text().splitlines()]
    original = sum(sum(r["score"]) for r in rows) / 800  # 728 / 800
    r = results["benchmarks"]["qwen25_math_cot_100"]
    assert r["samples_per_problem"] == 8 and r["problems"] == 100
    assert r["avg@8"] == pytest.approx(original + len(KNOWN_FALSE_NEGATIVES) / 800)
    records = [
        json.loads(line) for line in (out / "samples" / "qwen25_math_cot_100.jsonl").read_text().splitlines()
    ]
    by_key = {(rows[rec["index"]]["idx"], rec["sample"]): rec["correct"] for rec in records}
    differ = {
        k for k, ok in by_key.items() if ok != rows[[r["idx"] for r in rows].index(k[0])]["score"][k[1]]
    }
    assert differ == KNOWN_FALSE_NEGATIVES


def test_pass_and_maj_at_k_on_real_outputs(qwen_rescored):
    results, _ = qwen_rescored
    r = results["benchmarks"]["qwen25_math_cot_100"]
    rows = [json.loads(line) for line in QWEN.read_text().splitlines()]
    corrected = [
        [ok or (row["idx"], i) in KNOWN_FALSE_NEGATIVES for i, ok in enumerate(row["score"])] for row in rows
    ]
    assert r["pass@8"] == pytest.approx(sum(map(any, corrected)) / 100)  # solved at least once: 98
    assert r["avg@8"] <= r["pass@2"] <= r["pass@4"] <= r["pass@8"]
    # maj@8 against a plain majority vote over the harness's own normalised answers, verdicts corrected
    expected = 0.0
    for row in rows:
        votes = Counter(row["pred"])
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        for w in winners:
            i = row["pred"].index(w)
            expected += (row["score"][i] or (row["idx"], i) in KNOWN_FALSE_NEGATIVES) / len(winners)
    assert r["maj@8"] == pytest.approx(expected / 100)
    assert set(r["by_level"]) == {f"Level {i}" for i in range(1, 6)}
    assert sum(v["problems"] for v in r["by_level"].values()) == 100
    assert r["format_rate"] == 1.0 and r["no_answer_rate"] == 0.0


def test_own_samples_file_rescored_gives_the_same_results(qwen_rescored, tmp_path):
    results, out = qwen_rescored
    again = run_evaluation(
        load_eval_config(
            flags={
                "completions": str(out / "samples" / "qwen25_math_cot_100.jsonl"),
                "output_dir": str(tmp_path),
            }
        ),
        log=quiet,
    )["completions"]
    first, second = results["benchmarks"]["qwen25_math_cot_100"], again["benchmarks"]["qwen25_math_cot_100"]
    for key in ("avg@8", "pass@8", "maj@8", "maj@4", "format_rate"):
        assert second[key] == pytest.approx(first[key])


def test_nested_completion_field_and_errors(tmp_path):
    data = tmp_path / "nested.jsonl"
    rows = [
        {"question": "1+1?", "answer": "2", "model": {"solution": "so \\boxed{2}"}},
        {"question": "2+2?", "answer": "4", "model": {"solution": "it is \\boxed{5}"}},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    flags = {
        "completions": str(data),
        "completion_field": "model.solution",
        "output_dir": str(tmp_path / "o"),
    }
    r = run_evaluation(load_eval_config(flags=flags), log=quiet)["completions"]["benchmarks"]["nested"]
    assert r["avg@1"] == 0.5
    flags["completion_field"] = "model.answer"
    with pytest.raises(DataError, match="nested.jsonl:1: field 'model.answer' is missing"):
        run_evaluation(load_eval_config(flags=flags), log=quiet)
    uneven = tmp_path / "uneven.jsonl"
    uneven.write_text(
        json.dumps({"question": "q", "answer": "1", "response": ["a", "b"]})
        + "\n"
        + json.dumps({"question": "q", "answer": "1", "response": ["a"]})
        + "\n"
    )
    with pytest.raises(DataError, match="different numbers of completions"):
        run_evaluation(
            load_eval_config(flags={"completions": str(uneven), "output_dir": str(tmp_path / "u")})
        )


def test_cli_completions(tmp_path, capsys):
    assert main(["eval", "--completions", str(QWEN), "--output", str(tmp_path), "--num-problems", "5"]) == 0
    assert "avg@8" in capsys.readouterr().out


def test_last_number_extraction_for_outputs_without_a_marked_answer(tmp_path):
    # GPT-3's GSM8K solutions (grade-school-math) end "A: n", with no box or "the answer is"
    data = tmp_path / "gpt3.jsonl"
    rows = [
        {"question": "q1", "answer": "3", "response": "1+2 = <<1+2=3>>3 bolts in total\nA: 3"},
        {"question": "q2", "answer": "18", "response": "9 * 2 = <<9*2=18>>18 dollars\nA: 17"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    flags = {"completions": str(data), "output_dir": str(tmp_path / "a")}
    default = run_evaluation(load_eval_config(flags=flags), log=quiet)["completions"]["benchmarks"]["gpt3"]
    assert default["avg@1"] == 0.0 and default["no_answer_rate"] == 1.0  # no credit without an answer
    flags["output_dir"] = str(tmp_path / "b")
    result = run_evaluation(load_eval_config(None, ["extraction=last_number"], flags), log=quiet)[
        "completions"
    ]
    assert result["benchmarks"]["gpt3"]["avg@1"] == 0.5
    assert result["settings"]["extraction"] == "last_number"
    records = [
        json.loads(line) for line in (tmp_path / "b" / "samples" / "gpt3.jsonl").read_text().splitlines()
    ]
    assert [r["answer"] for r in records] == ["3", "17"]
    assert (
        main(
            [
                "eval",
                "--completions",
                str(data),
                "--output",
                str(tmp_path / "c"),
                "--extraction",
                "last_number",
            ]
        )
        == 0
    )


def test_last_number_extraction_needs_completions():
    with pytest.raises(ConfigError, match="needs --completions"):
        load_eval_config(None, ["extraction=last_number"])
    with pytest.raises(ConfigError, match="extraction"):
        load_eval_config(None, ["extraction=first_number"], {"completions": "x.jsonl"})
