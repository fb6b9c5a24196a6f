import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlvr.errors import DataError
from rlvr.tasks.loading import FieldMap, load_any, load_problems, read_gold


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_json_and_parquet_give_the_same_problems(tmp_path):
    rows = [{"q": "1+1?", "a": "2", "lvl": 1}, {"q": "2+2?", "a": 4, "lvl": 2}]
    jl = write_jsonl(tmp_path / "d.jsonl", rows)
    js = tmp_path / "d.json"
    js.write_text(json.dumps(rows))
    pqf = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "a": str(r["a"])} for r in rows]), pqf)
    fields = FieldMap("q", "a", meta=("lvl",))
    for path in (jl, js, pqf):
        got = load_problems(path, fields).problems
        assert [(p.question, p.answer, p.meta["lvl"]) for p in got] == [("1+1?", "2", 1), ("2+2?", "4", 2)]
    assert load_problems(jl, fields).problems[1].meta["source"].endswith("d.jsonl:2")


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "ok", "answer": "1"}, {"question": "no answer"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'answer' is missing \(fields: question\)"):
        load_problems(path)
    result = load_problems(path, skip_bad_rows=True)
    assert len(result.problems) == 1 and len(result.skipped) == 1
    assert "bad.jsonl:2" in result.skipped[0]


def test_wrong_types_and_empty_answers_are_errors(tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [{"question": 5, "answer": "1"}, {"question": "q", "answer": ""}, {"question": "q", "answer": True}],
    )
    result = load_problems(path, skip_bad_rows=True)
    assert result.problems == []
    assert "t.jsonl:1: field 'question' must be a non-empty string" in result.skipped[0]
    assert "t.jsonl:2: field 'answer': the answer is empty" in result.skipped[1]
    assert "t.jsonl:3: field 'answer'" in result.skipped[2]


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n{oops\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: not valid JSON"):
        load_problems(path)


def test_check_gold_runs_at_load_time(tmp_path):
    def check(gold):
        if gold == "???":
            raise DataError("cannot parse")

    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "???"}])
    with pytest.raises(DataError, match=r"g\.jsonl:1: field 'answer': cannot parse"):
        load_problems(path, check_gold=check)


def test_gold_formats():
    assert read_gold(27.0, "plain") == "27"  # AMC23 stores floats
    assert read_gold(0.5, "plain") == "0.5"
    assert read_gold("step\nstep\n#### 1,234", "gsm8k") == "1234"
    assert read_gold(["$\\frac{1}{2}$"], "first") == "$\\frac{1}{2}$"
    with pytest.raises(ValueError, match="####"):
        read_gold("no marker", "gsm8k")
    with pytest.raises(ValueError, match="non-empty list"):
        read_gold([], "first")


def test_dotted_and_joined_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "n.jsonl", [{"Body": "Tom has 3.", "Question": "How many?", "gt": {"a": 3.0}}]
    )
    p = load_problems(path, FieldMap("Body+Question", "gt.a")).problems[0]
    assert (p.question, p.answer) == ("Tom has 3. How many?", "3")


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_problems(tmp_path / "d.csv")
    with pytest.raises(DataError, match="no such file"):
        load_problems(tmp_path / "none.jsonl")


def test_hub_name_without_datasets_package_is_a_clear_error():
    pytest.importorskip("pyarrow")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="pip install datasets"):
            load_any("openai/gsm8k", split="train")
    else:
        pytest.skip("the datasets package is installed; the hub path needs network")
