"""The embedded toys: what they are warm-started to write, the registry, and a reproducible build."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from rlvr.errors import ConfigError
from rlvr.tasks.arithmetic import arithmetic_task
from rlvr.toy import formats
from rlvr.toy.build import TOYS, ToyBuildConfig, build_toy, toy_named
from rlvr.training.model import resolve_model_path

ROOT = Path(__file__).resolve().parents[2]


def test_addition_columns_carry_into_the_next_column():
    assert formats.addition_columns(47, 38) == [("7+8=15", 5, 1), ("4+3+1=8", 8, 0)]
    assert formats.addition_columns(95, 17) == [("5+7=12", 2, 1), ("9+1+1=11", 1, 1)]
    assert formats.addition_chain_of_thought(5, 3) == "5+3=8"


def test_terse_completion_is_the_toy_format():
    assert formats.terse_completion("47+38=", "85") == "<think>7+8=15 4+3+1=8</think><answer>85</answer>"


def test_every_style_holds_the_same_steps_and_grows_in_words():
    lengths = []
    for style in formats.VERBOSE_STYLES:
        text = formats.verbose_working(47, 38, style)
        assert "7+8=15, write 5, carry 1." in text and "4+3+1=8, write 8." in text
        lengths.append(len(text))
    assert lengths == sorted(lengths) and lengths[-1] > 2 * lengths[0]
    assert formats.verbose_working(47, 38, "worded") == (
        "Add 47 and 38. Ones: 7+8=15, write 5, carry 1. Tens: 4+3+1=8, write 8. So 47+38=85."
    )
    assert formats.verbose_working(47, 38, "checked").endswith(" Again: 7+8=15 4+3+1=8, so 85.")
    with pytest.raises(ValueError, match="unknown working style 'chatty'"):
        formats.verbose_working(1, 2, "chatty")


def test_every_verbose_answer_is_written_in_the_toy_alphabet():
    from rlvr.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    for style in formats.VERBOSE_STYLES:
        text = f"<think>{formats.verbose_working(99, 99, style)}</think><answer>198</answer>"
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_verbose_completions_draw_styles_with_their_weights_from_the_seed():
    def draw(seed):
        rng = random.Random(seed)
        return [formats.verbose_completion("47+38=", "85", rng) for _ in range(4000)]

    first = draw(3)
    assert first == draw(3) and first != draw(4)
    by_length = Counter(len(c) for c in first)
    assert len(by_length) == 4
    shares = [by_length[n] / len(first) for n in sorted(by_length)]
    for share, weight in zip(shares, formats.VERBOSE_STYLE_WEIGHTS, strict=True):
        assert share == pytest.approx(weight, abs=0.03)


def test_the_shipped_cold_start_data_is_the_generator_output():
    task = arithmetic_task(num_train=4000, num_test=200, digits=2, ops=["+"], seed=1000)
    expected = formats.warm_start_rows(task.train[3000:4000])
    lines = (ROOT / "recipes" / "data" / "r1_cold_start_toy.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == expected


def test_toy_names_resolve_to_their_shipped_directories():
    assert set(TOYS) == {"toy", "toy-long", "toy-tool"}
    for name, toy in TOYS.items():
        assert resolve_model_path(name) == str(toy.directory)
        assert (toy.directory / "config.json").is_file()
        assert (toy.directory / "model.safetensors").stat().st_size < 5_000_000
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    with pytest.raises(
        ConfigError, match="no embedded toy model 'toy-short'; the toys are: toy, toy-long, toy-tool"
    ):
        toy_named("toy-short")


def test_the_long_toy_writes_long_answers_that_are_often_right():
    from transformers import AutoModelForCausalLM

    from rlvr.toy.build import greedy_accuracy
    from rlvr.training.model import tokenizer_from_pretrained

    path = resolve_model_path("toy-long")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = tokenizer_from_pretrained(path)
    report = json.loads((Path(path) / "toy_build.json").read_text())
    assert report["name"] == "toy-long" and report["greedy_accuracy_heldout"] > 0.5
    problems = arithmetic_task(num_train=0, num_test=16, seed=1000).test
    assert greedy_accuracy(model, tokenizer, problems, max_new_tokens=160) > 0.4


def test_tool_answers_call_the_calculator_on_most_rows_and_choose_to_on_one_in_ten():
    rng = random.Random(0)
    rows = [formats.tool_completion("12345+6789=", "19134", rng) for _ in range(20000)]
    head = [r for r in rows if len(r) == 1]
    calls = [r for r in rows if len(r) > 1]
    assert head[0] == [("<answer>19134</answer>", True)]
    assert [text for text, _ in calls[0]] == [
        "<think>",
        "12345+6789=",
        "19134",
        "</think><answer>19134</answer>",
    ]
    assert all(not r[2][1] and r[1][1] and r[3][1] for r in calls)  # the tool's output is never trained on
    assert len(calls) / len(rows) == pytest.approx(formats.TOOL_USE_SHARE, abs=0.01)
    chosen = sum(r[0][1] for r in calls)  # rows whose first token (the choice to call) is trained
    assert chosen / (chosen + len(head)) == pytest.approx(formats.TOOL_CALL_RATE, abs=0.01)


def test_untrained_pieces_are_in_the_input_but_not_in_the_loss():
    from rlvr.toy.build import _sft_batch
    from rlvr.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    pieces = [("<think>", False), ("1+2=", True), ("3", False), ("</think><answer>3</answer>", True)]
    ids, mask, labels = _sft_batch(tokenizer, [("1+2=", pieces), ("1+2=", "<answer>3</answer>")])
    text = "1+2=<think>1+2=3</think><answer>3</answer>"
    expected = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    assert ids[0, : len(expected)].tolist() == expected and mask[0].sum() == len(expected)
    trained = [tokenizer.convert_ids_to_tokens(i) for i in labels[0].tolist() if i != -100]
    assert (
        "".join(trained[:-1]) == "1+2=</think><answer>3</answer>"
    )  # prompt, choice and tool output left out
    assert (
        labels[1, :4].tolist() == [-100] * 4 and labels[1, 4].item() == tokenizer("<answer>")["input_ids"][0]
    )


def test_the_tool_toy_calls_the_calculator_rarely_and_copies_its_result():
    from transformers import AutoModelForCausalLM

    from rlvr.toy.build import TOYS, tool_use_check
    from rlvr.training.model import tokenizer_from_pretrained

    path = resolve_model_path("toy-tool")
    report = json.loads((Path(path) / "toy_build.json").read_text())
    assert report["name"] == "toy-tool" and report["greedy_accuracy_heldout"] < 0.05  # not in its head
    assert report["with_calculator_greedy_tool_call_rate"] == 0.0
    assert 0.05 < report["with_calculator_sampled_tool_call_rate"] < 0.2
    assert report["with_calculator_sampled_accuracy"] > 0.5 * report["with_calculator_sampled_tool_call_rate"]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = tokenizer_from_pretrained(path)
    problems = arithmetic_task(num_train=0, num_test=40, digits=[4, 5], seed=1000).test
    measured = tool_use_check(model, tokenizer, problems, TOYS["toy-tool"].config)
    assert measured["with_calculator_greedy_accuracy"] == 0.0
    assert 0.0 < measured["with_calculator_sampled_tool_call_rate"] < 0.3
    assert measured["with_calculator_sampled_accuracy"] > 0.0  # a call's result is copied into the answer


def test_a_build_is_the_same_from_the_same_seed(tmp_path: Path):
    from safetensors.torch import load_file

    cfg = ToyBuildConfig(sft_steps=3, sft_batch=8, sft_problems=32, eval_problems=4, max_new_tokens=8)
    reports = [build_toy(tmp_path / d, cfg, log=lambda *_: None, name="toy-long") for d in ("a", "b")]
    assert reports[0] == reports[1] and reports[0]["name"] == "toy-long"
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("a", "b"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    other = build_toy(tmp_path / "c", ToyBuildConfig(**{**cfg.__dict__, "seed": 1}), log=lambda *_: None)
    c = load_file(tmp_path / "c" / "model.safetensors")
    assert other["name"] == "toy" and not all(a[k].equal(c[k]) for k in a)


def test_the_tool_toy_build_reports_its_tool_use(tmp_path: Path):
    cfg = ToyBuildConfig(sft_steps=2, sft_batch=8, sft_problems=32, eval_problems=4, max_new_tokens=24)
    report = build_toy(tmp_path, cfg, log=lambda *_: None, name="toy-tool")
    assert json.loads((tmp_path / "toy_build.json").read_text()) == report
    for key in ("greedy_accuracy", "greedy_tool_call_rate", "sampled_accuracy", "sampled_tool_call_rate"):
        assert 0.0 <= report[f"with_calculator_{key}"] <= 1.0


def test_cli_builds_a_named_toy_and_refuses_an_unknown_one(capsys):
    from rlvr.cli import main

    assert main(["toy", "build", "toy-short", "--output", "unused"]) == 2
    assert "no embedded toy model 'toy-short'" in capsys.readouterr().err
