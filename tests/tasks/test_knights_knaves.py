import shutil

import pytest

from rlvr.errors import ConfigError, DataError
from rlvr.rewards.base import RewardBatch
from rlvr.rewards.knights_knaves import knights_knaves_reward
from rlvr.tasks.base import TASKS
from rlvr.tasks.knights_knaves import KK_DIR, LEVELS, kk_file, knights_knaves_task, load_knights_knaves


@pytest.mark.parametrize("level", LEVELS)
def test_row_counts_per_level_match_the_data_readme(level):
    # data README: 900 train and 100 test puzzles for each of 3..7 people
    train = load_knights_knaves([level], "train")
    test = load_knights_knaves([level], "test")
    assert len(train) == 900 and len(test) == 100
    for p in train[:50] + test[:50]:
        assert p.meta["level"] == p.meta["difficulty"] == level
        assert len(p.answer["names"]) == len(p.answer["roles"]) == level
        assert set(p.answer["roles"]) <= {"knight", "knave"}
    assert train[17].meta["source"] == f"kk/{level}ppl_train.parquet:row 17"
    assert not {p.question for p in train} & {p.question for p in test}


def test_first_row_is_read_as_in_the_file():
    (p, *_) = load_knights_knaves([3], "train")
    # 3ppl_train.parquet row 0 (data README): Michael, Zoey, Ethan, all knights
    assert p.answer == {"names": ["Michael", "Zoey", "Ethan"], "roles": ["knight", "knight", "knight"]}
    assert p.meta["solution_text"] == "(1) Michael is a knight\n(2) Zoey is a knight\n(3) Ethan is a knight"
    assert p.question.startswith("A very special island is inhabited only by knights and knaves.")
    assert "<answer>" in p.question


def test_solution_text_agrees_with_names_and_roles_on_every_row():
    for p in load_knights_knaves(LEVELS, "test"):
        expected = "\n".join(
            f"({i}) {name} is a {role}"
            for i, (name, role) in enumerate(zip(p.answer["names"], p.answer["roles"], strict=True), 1)
        )
        assert p.meta["solution_text"] == expected


def test_task_levels_limits_and_rewards():
    task = TASKS.get("knights_knaves")(levels=(3, 5), num_train=100, num_test=20, seed=1)
    assert len(task.train) == 100 and len(task.test) == 20
    assert {p.meta["level"] for p in task.train} == {3, 5}
    assert task.train == knights_knaves_task(levels=(3, 5), num_train=100, num_test=20, seed=1).train
    assert task.stop_strings == ("</answer>",) and task.template == "r1_zero"
    answer_spec, format_spec = task.rewards
    assert answer_spec.name == "knights_knaves" and format_spec.name == "format_strict"
    assert answer_spec.params == {
        "correct_score": 2.0,
        "wrong_score": -1.5,
        "no_answer_score": -2.0,
        "require_format": True,
        "think_opened": True,  # r1_zero ends its prompt with "<think>"
    }
    assert format_spec.params == {"well_formed": 1.0, "malformed": -1.0, "think_opened": True}
    full = knights_knaves_task(levels=(4,))
    assert len(full.train) == 900 and len(full.test) == 100
    binary = knights_knaves_task(levels=(3,), num_train=1, num_test=1, scoring="binary", template="plain")
    assert [s.name for s in binary.rewards] == ["knights_knaves"] and binary.rewards[0].params == {}


def test_real_rows_score_through_the_reward():
    problems = load_knights_knaves([7], "test")[:20]
    completions = [f"reasoning</think>\n<answer>\n{p.meta['solution_text']}\n</answer>" for p in problems]
    result = knights_knaves_reward(
        RewardBatch(completions, problems), require_format=True, think_opened=True, correct_score=2.0
    )
    assert result.values == [2.0] * 20


def test_bad_settings_and_files():
    with pytest.raises(ConfigError, match="level"):
        load_knights_knaves([8], "train")
    with pytest.raises(ConfigError, match="scoring"):
        knights_knaves_task(levels=(3,), scoring="logicrl")
    with pytest.raises(ConfigError, match="levels"):
        knights_knaves_task(levels=())


def test_missing_and_corrupt_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_knights_knaves([3], "train", data_dir=tmp_path)
    (tmp_path / "3ppl_train.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="3ppl_train.parquet"):
        load_knights_knaves([3], "train", data_dir=tmp_path)


def test_a_file_without_a_needed_column_names_it(tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(kk_file(3, "test")).drop_columns(["solution"])
    pq.write_table(table, tmp_path / "3ppl_test.parquet")
    with pytest.raises(DataError, match="solution"):
        load_knights_knaves([3], "test", data_dir=tmp_path)
    shutil.copy(KK_DIR / "3ppl_test.parquet", tmp_path / "3ppl_test.parquet")
    assert len(load_knights_knaves([3], "test", data_dir=tmp_path)) == 100
