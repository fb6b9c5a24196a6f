"""Building a run's parts: the data comes first, long prompts are refused before tokenizing."""

import json
import time

import pytest

from rlvr.config import load_config
from rlvr.errors import ConfigError, DataError
from rlvr.tasks.base import Problem
from rlvr.training.setup import build_task, max_chars_per_token, tokenize_prompts


def _math_config(tmp_path, train_file, *extra):
    return load_config(
        None,
        [
            "task.name=math",
            f"task.params={{train_file: {train_file}, levels: null}}",
            f"model.path={tmp_path / 'no_model_here'}",  # a directory with no model: loading it would fail
            f"logging.output_dir={tmp_path / 'run'}",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", r"bad\.jsonl: the file holds no rows"),
        (b'{"problem": "1+1?", "answer": "2"}\n{"problem": "x", \n', r"bad\.jsonl:2: not valid JSON"),
        (b'{"problem": "caf\xe9", "answer": "2"}\n', r"bad\.jsonl:1: not valid UTF-8"),
    ],
)
def test_a_data_error_comes_before_the_tokenizer_and_the_model_load(tmp_path, content, message):
    from rlvr.training.trainer import Trainer

    (tmp_path / "no_model_here").mkdir()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=message):
        Trainer(_math_config(tmp_path, bad))


def test_skipped_rows_are_counted_on_the_task(tmp_path):
    path = tmp_path / "some_bad.jsonl"
    path.write_bytes(b'{"problem": "1+1?", "answer": "2"}\n{"problem": "x"}\n\xff\n')
    task = build_task(_math_config(tmp_path, path, "task.params.skip_bad_rows=true"))
    assert [p.answer for p in task.train] == ["2"]
    assert len(task.skipped_rows) == 2 and "some_bad.jsonl:2" in task.skipped_rows[0]
    with pytest.raises(DataError, match=r"set task\.params\.skip_bad_rows=true to skip such rows"):
        build_task(_math_config(tmp_path, path))


def test_a_huge_question_is_refused_without_tokenizing_it(tokenizer):
    huge = Problem("huge", "1" * 2_000_000, "1", {"source": "big.jsonl:7"})

    class Counting:  # the real tokenizer, counting the characters it is asked to tokenize
        seen = 0

        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, text, **kwargs):
            Counting.seen += len(text)
            return tokenizer(text, **kwargs)

    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"problem huge \(big\.jsonl:7\) has a 2000000-character question"):
        tokenize_prompts([huge], "r1_zero", Counting(), 64)
    assert Counting.seen == 0 and time.perf_counter() - started < 10


def test_the_character_bound_holds_for_every_token(tokenizer):
    # No token decodes to more characters than the bound, so a question over max_tokens x bound
    # characters cannot fit in max_tokens tokens; prompts under it go on to the exact token count.
    bound = max_chars_per_token(tokenizer)
    assert all(len(tokenizer.decode([i])) <= bound for i in range(len(tokenizer)))
    assert tokenize_prompts([Problem("p", "1+2", "3")], "plain", tokenizer, 64)
    with pytest.raises(ConfigError, match=r"-token prompt, more than max_prompt_tokens = 2"):
        tokenize_prompts([Problem("q", "12+34=46", "1")], "plain", tokenizer, 2, "max_prompt_tokens")


def test_a_task_error_in_the_command_line_comes_before_any_model_loads(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n{oops\n")
    out = subprocess.run(
        [sys.executable, "-m", "rlvr", "train", "task.name=math", f"task.params.train_file={bad}",
         f"logging.output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert "bad.jsonl:2: not valid JSON" in out.stderr
    assert "Loading weights" not in out.stderr + out.stdout  # no model was loaded


def test_a_run_reports_its_skipped_rows_on_the_console_and_in_the_metrics(tmp_path):
    from rlvr.training.trainer import train

    path = tmp_path / "some_bad.jsonl"
    path.write_bytes(
        b'{"problem": "1+1?", "answer": "2"}\n{"problem": "x"}\n{"problem": "2+2?", "answer": "4"}\n'
    )
    config = load_config(
        None,
        [
            "task.name=math",
            f"task.params={{train_file: {path}, levels: null, skip_bad_rows: true}}",
            f"logging.output_dir={tmp_path / 'run'}",
            "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
            "training.steps=1", "eval.num_problems=1", "logging.tensorboard=false", "logging.sample_every=0",
        ],
    )  # fmt: skip
    lines: list[str] = []
    train(config, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any(
        "1 bad row(s) of the training data skipped; first:" in line and "some_bad.jsonl:2" in line
        for line in lines
    )
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["data/skipped_rows"] == 1.0


def test_a_bad_row_of_an_evaluation_file_names_the_eval_setting(tmp_path):
    from rlvr.training.trainer import Trainer

    bench = tmp_path / "bench.jsonl"
    bench.write_bytes(b'{"question": "What is 1 + 1?", "answer": "2"}\n{"question": "x"}\n')
    settings = [f"eval.benchmarks=[{bench}]", f"logging.output_dir={tmp_path / 'run'}"]
    with pytest.raises(
        DataError, match=r"bench\.jsonl:2: field 'answer' is missing.*set eval\.skip_bad_rows=true"
    ):
        Trainer(load_config(None, settings))
    lines: list[str] = []
    trainer = Trainer(load_config(None, [*settings, "eval.skip_bad_rows=true"]), log=lines.append)
    assert [len(s.problems) for s in trainer.evaluator.sets] == [1]
    assert any(line.startswith("[bench] 1 bad row(s) left out; first:") for line in lines)
