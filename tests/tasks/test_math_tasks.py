import pytest

from rlvr.errors import DataError
from rlvr.tasks.benchmarks import BENCHMARKS, load_benchmark
from rlvr.tasks.math import gsm8k_task, math_task


def test_math_task_filters_levels_and_skips_the_four_answerless_rows():
    task = math_task(num_test=50)
    assert task.template == "r1_zero" and task.stop_strings == ("</answer>",)
    assert {p.meta["difficulty"] for p in task.train} == {3.0, 4.0, 5.0}
    # Level 3-5 rows (5563) less the four without an answer and one gold math-verify cannot parse
    # (`\\sin^2 t`, reported at load time rather than scored).
    assert len(task.train) == 5563 - 4 - 1
    assert task.rewards[0].name == "math" and task.rewards[0].params["answer_slot"] == "answer_tag"
    assert len(task.test) == 50 and "math500.jsonl:" in task.test[0].meta["source"]


def test_gsm8k_task_reads_the_hash_answer():
    task = gsm8k_task(num_train=20, num_test=10, template="qwen_boxed")
    assert len(task.train) == 20 and all(p.answer.lstrip("-").isdigit() for p in task.train)
    assert task.stop_strings == ()  # the boxed template has no closing tag to stop at


@pytest.mark.parametrize("name", ["math500", "gsm8k", "aime24", "amc23"])
def test_benchmarks_load_with_graded_golds(name):
    from rlvr.rewards.math import check_gold

    result = load_benchmark(name, check_gold=check_gold)
    expected = {"math500": 500, "gsm8k": 1319, "aime24": 30, "amc23": 40}[name]
    assert len(result.problems) == expected and not result.skipped


def test_benchmarks_with_unparseable_golds_report_them():
    from rlvr.rewards.math import check_gold

    with pytest.raises(DataError, match=r"minerva_math\.jsonl:\d+: field 'solution'"):
        load_benchmark("minerva_math", check_gold=check_gold)
    result = load_benchmark("minerva_math", check_gold=check_gold, skip_bad_rows=True)
    assert len(result.problems) + len(result.skipped) == 272 and result.skipped


def test_every_registered_benchmark_file_ships():
    from rlvr.tasks.benchmarks import benchmark_path

    for name in BENCHMARKS.names():
        assert benchmark_path(name).is_file(), name
