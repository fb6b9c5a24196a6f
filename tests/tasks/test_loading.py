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
        [
            {"question": 5, "answer": "1"},
            {"question": "q", "answer": ""},
            {"question": "q", "answer": True},
            {"question": "q", "answer": "4"},
        ],
    )
    result = load_problems(path, skip_bad_rows=True)
    assert [p.answer for p in result.problems] == ["4"]
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


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    rows = [{"question": "1+1?", "answer": "2"}]
    jl = tmp_path / "bom.jsonl"
    jl.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows[0]).encode() + b"\n")
    js = tmp_path / "bom.json"
    js.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    for path in (jl, js):
        assert [p.answer for p in load_problems(path).problems] == ["2"]


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    jl = tmp_path / "latin1.jsonl"
    jl.write_bytes(b'{"question": "a", "answer": "1"}\n{"question": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 18\)"):
        load_problems(jl)
    js = tmp_path / "latin1.json"
    js.write_bytes(b'[{"question": "a", "answer": "1"},\n {"question": "caf\xe9", "answer": "2"}]')
    with pytest.raises(DataError, match=r"latin1\.json:2: not valid UTF-8 \(byte 0xe9 at column 19\)"):
        load_problems(js)


def test_skip_bad_rows_covers_undecodable_and_broken_lines_and_lists_them(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"question": "a", "answer": "1"}\n'
        b'{"question": "caf\xe9", "answer": "2"}\n'
        b'{"question": "b", \n'
        b'{"question": "c"}\n'
        b'{"question": "d", "answer": "4"}\n'
    )
    with pytest.raises(
        DataError, match=r"mixed\.jsonl:2: not valid UTF-8.*set task\.params\.skip_bad_rows=true"
    ):
        load_problems(path, skip_setting="task.params.skip_bad_rows")
    result = load_problems(path, skip_bad_rows=True)
    assert [p.answer for p in result.problems] == ["1", "4"]
    assert [m.split(": ")[0].rsplit("/", 1)[-1] for m in result.skipped] == [
        "mixed.jsonl:2",
        "mixed.jsonl:3",
        "mixed.jsonl:4",
    ]
    assert "not valid JSON" in result.skipped[1] and "field 'answer' is missing" in result.skipped[2]


@pytest.mark.parametrize(
    "name,content", [("e.jsonl", ""), ("e.jsonl", "\n\n"), ("e.json", ""), ("e.json", "[]")]
)
def test_an_empty_file_is_an_error_naming_it(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(
        DataError, match=rf"{name.replace('.', '[.]')}: (the file is empty|the file holds no rows)"
    ):
        load_problems(path)


def test_a_file_with_nothing_left_is_an_error_saying_why(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [{"question": "q", "answer": "1"}, {"question": "q"}])
    with pytest.raises(
        DataError, match=r"f\.jsonl: no problems left of its 2 rows \(1 skipped as bad, 1 left out"
    ):
        load_problems(path, skip_bad_rows=True, keep=lambda p: False)
