"""End-to-end evaluations of the shipped tiny model (real model, real engine, real graders)."""

import json
import shutil

import pytest

from rlvr.cli import main
from rlvr.config import Config, to_dict
from rlvr.errors import ConfigError, DataError
from rlvr.evaluation.config import load_eval_config
from rlvr.evaluation.generation import SampleStore
from rlvr.evaluation.run import resolve_targets, run_evaluation
from rlvr.toy.build import SHIPPED_DIR


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as rlvr train leaves it: the config and a final model (the shipped toy)."""
    run = tmp_path / "run"
    shutil.copytree(SHIPPED_DIR, run / "final")
    (run / "config.json").write_text(json.dumps(to_dict(Config()), default=str))
    return run


def quiet(*args, **kwargs):
    pass


def evaluate(run_dir, out, **settings):
    flags = {"model": str(run_dir), "output_dir": str(out), "num_problems": 6, "max_new_tokens": 24}
    flags.update(settings)
    return run_evaluation(load_eval_config(flags=flags), log=quiet)["final"]


def test_tiny_model_on_its_task_writes_every_output(run_dir, tmp_path):
    out = tmp_path / "eval"
    results = evaluate(run_dir, out, n=4, temperature=1.0)
    r = results["benchmarks"]["arithmetic"]
    assert r["problems"] == 6 and r["samples_per_problem"] == 4
    assert 0.0 <= r["avg@4"] <= r["pass@2"] <= r["pass@4"] <= 1.0
    assert 0.0 <= r["maj@4"] <= 1.0 and r["length_mean"] > 0
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.md", "pass_at_k.png", "samples"}
    rows = [json.loads(line) for line in (out / "samples" / "arithmetic.jsonl").read_text().splitlines()]
    assert len(rows) == 24
    first = rows[0]
    assert {"prompt", "completion", "answer", "gold", "correct", "length", "outcome"} <= set(first)
    assert sum(row["correct"] for row in rows) / 24 == pytest.approx(r["avg@4"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["benchmarks"]["arithmetic"]["avg@4"] == pytest.approx(r["avg@4"])
    assert "| arithmetic |" in (out / "report.md").read_text()


def test_greedy_evaluation_takes_one_sample(run_dir, tmp_path):
    results = evaluate(run_dir, tmp_path / "greedy", n=8, temperature=0.0)
    assert results["benchmarks"]["arithmetic"]["samples_per_problem"] == 1
    assert "avg@1" in results["benchmarks"]["arithmetic"]


def test_interrupted_evaluation_resumes_to_the_same_samples(run_dir, tmp_path):
    settings = {"n": 2, "temperature": 1.0, "problems_per_batch": 2}
    full = evaluate(run_dir, tmp_path / "full", **settings)
    expected = (tmp_path / "full" / "samples" / "arithmetic.jsonl").read_text()
    # Interrupted during the third batch's write: two batches whole, half a line of the third.
    part = tmp_path / "part"
    (part / "samples").mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "eval_settings.json", part)
    lines = expected.splitlines(keepends=True)
    (part / "samples" / "arithmetic.jsonl").write_text("".join(lines[:4]) + lines[4][:30])
    resumed = evaluate(run_dir, part, **settings)
    assert (part / "samples" / "arithmetic.jsonl").read_text() == expected
    assert resumed["benchmarks"] == full["benchmarks"]


def test_sample_store_drops_incomplete_batches(tmp_path):
    store = SampleStore(tmp_path / "s.jsonl", num_problems=3, n=2, batch_size=2)
    batch0 = [{"index": i, "sample": s} for i in (0, 1) for s in (0, 1)]
    store.append(batch0)
    store.append([{"index": 2, "sample": 0}])  # batch 1 needs 2 records
    assert store.load() == {0: batch0}
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 4
    (tmp_path / "s.jsonl").write_text("not json\n")
    with pytest.raises(DataError, match="s.jsonl:1: not a sample record"):
        store.load()


def test_other_settings_in_the_output_directory_are_refused(run_dir, tmp_path):
    out = tmp_path / "eval"
    evaluate(run_dir, out, n=2, temperature=1.0)
    with pytest.raises(ConfigError, match="other settings \\(samples_per_problem: 2 there, 3 now\\)"):
        evaluate(run_dir, out, n=3, temperature=1.0)
    results = evaluate(run_dir, out, n=3, temperature=1.0, overwrite=True)
    assert results["benchmarks"]["arithmetic"]["samples_per_problem"] == 3


def test_checkpoints_of_a_run_are_evaluated_in_turn(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.training.checkpoint import save_checkpoint

    model = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR)
    save_checkpoint(run_dir, 5, model=model, tokenizer=AutoTokenizer.from_pretrained(SHIPPED_DIR))
    labels = [t.label for t in resolve_targets(str(run_dir), "all")]
    assert labels == ["step-000005", "final"]
    assert [t.label for t in resolve_targets(str(run_dir), "5")] == ["step-000005"]
    with pytest.raises(ConfigError, match="no checkpoint at step 7 \\(checkpoints: step-000005\\)"):
        resolve_targets(str(run_dir), "7")
    results = run_evaluation(
        load_eval_config(
            flags={"model": str(run_dir), "checkpoint": "all", "num_problems": 2, "max_new_tokens": 8}
        ),
        log=quiet,
    )
    assert list(results) == ["step-000005", "final"]
    assert (run_dir / "eval" / "step-000005" / "results.json").is_file()
    # the checkpoint holds the same weights as final: the same greedy results
    assert results["step-000005"]["benchmarks"] == results["final"]["benchmarks"]


def test_shipped_benchmark_slice_and_local_file(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text(
        "\n".join(json.dumps({"q": f"What is {i} + 1?", "a": i + 1, "lvl": i % 2}) for i in range(3)) + "\n"
    )
    flags = {
        "model": "toy",
        "benchmarks": ["gsm8k", str(data)],
        "num_problems": 2,
        "max_new_tokens": 8,
        "question_field": "q",
        "answer_field": "a",
        "meta_fields": ["lvl"],
        "output_dir": str(tmp_path / "out"),
    }
    results = run_evaluation(load_eval_config(flags=flags), log=quiet)["toy"]
    assert list(results["benchmarks"]) == ["gsm8k", "mine"]
    assert results["benchmarks"]["mine"]["problems"] == 2
    assert set(results["benchmarks"]["mine"]["by_lvl"]) == {"0", "1"}
    assert set(results["macro"]) >= {"avg@1", "length_mean"}


def test_base_model_on_a_training_task_matches_the_run_evaluation(run_dir, tmp_path):
    # the run's final model is the toy itself, so a base-model evaluation on the same task agrees
    config = tmp_path / "train.yaml"
    config.write_text("task: {name: arithmetic}\n")
    flags = {"num_problems": 4, "max_new_tokens": 24}
    base = run_evaluation(
        load_eval_config(
            flags={**flags, "model": "toy", "train_config": str(config), "output_dir": str(tmp_path / "b")}
        ),
        log=quiet,
    )["toy"]
    run = evaluate(run_dir, tmp_path / "r", **flags)
    assert base["benchmarks"] == run["benchmarks"]


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown benchmark 'math501'; did you mean 'math500'"):
        run_evaluation(load_eval_config(flags={"benchmarks": ["math501"], "output_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match="unknown setting 'temprature'.*did you mean 'temperature'"):
        load_eval_config(overrides=["temprature=0.6"])
    with pytest.raises(ConfigError, match="setting 'top_p' must be in \\(0, 1\\]"):
        load_eval_config(flags={"top_p": 0})
    with pytest.raises(ConfigError, match="benchmark 'task' .* needs a run directory"):
        run_evaluation(load_eval_config(flags={"benchmarks": ["task"], "output_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match="has no final model"):
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        resolve_targets(str(tmp_path / "run"), "final")


def test_cli_eval_with_flags_and_a_config_file(run_dir, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("num_problems: 3\nmax_new_tokens: 16\n")
    out = tmp_path / "cli"
    code = main(
        [
            "eval",
            str(run_dir),
            str(config),
            "--n",
            "2",
            "--temperature",
            "0.7",
            "--output",
            str(out),
            "seed=3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "avg@2" in printed and "pass@2" in printed
    settings = json.loads((out / "eval_settings.json").read_text())
    assert (
        settings["samples_per_problem"] == 2
        and settings["seed"] == 3
        and settings["benchmarks"] == {"arithmetic": 3}
    )
    assert main(["eval", str(run_dir), "--benchmarks", "nope", "--output", str(out)]) == 2


def test_lora_run_is_evaluated_with_its_adapter_merged(tmp_path):
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR)
    lora = peft.get_peft_model(
        base,
        peft.LoraConfig(
            r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False
        ),
    )
    run = tmp_path / "run"
    lora.save_pretrained(run / "final")
    AutoTokenizer.from_pretrained(SHIPPED_DIR).save_pretrained(run / "final")
    (run / "config.json").write_text(json.dumps(to_dict(Config()), default=str))
    from rlvr.evaluation.run import load_eval_model

    model, _ = load_eval_model(str(run / "final"), torch.device("cpu"), "float32")
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(model(ids).logits, lora(ids).logits, atol=1e-5)  # the adapter is applied
    assert not hasattr(model, "peft_config")  # merged into plain weights
    results = evaluate(run, tmp_path / "out", num_problems=2, max_new_tokens=8)
    assert results["benchmarks"]["arithmetic"]["problems"] == 2


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", r"bench\.jsonl: the file holds no rows"),
        (
            b'{"question": "1+1?", "answer": "2"}\n{"question": "caf\xe9", "answer": "2"}\n',
            r"bench\.jsonl:2: not valid UTF-8",
        ),
        (b'{"question": "1+1?"}\n', r"bench\.jsonl:1: field 'answer' is missing.*set skip_bad_rows=true"),
    ],
)
def test_a_bad_benchmark_file_stops_before_the_model_loads(tmp_path, content, message):
    (tmp_path / "not_a_model").mkdir()  # loading a model from here would fail with another error
    bench = tmp_path / "bench.jsonl"
    bench.write_bytes(content)
    flags = {
        "model": str(tmp_path / "not_a_model"),
        "benchmarks": [str(bench)],
        "output_dir": str(tmp_path / "o"),
    }
    with pytest.raises(DataError, match=message):
        run_evaluation(load_eval_config(flags=flags), log=quiet)


def test_skip_bad_rows_leaves_out_and_reports_bad_rows_of_a_file(tmp_path, capsys):
    bench = tmp_path / "bench.jsonl"
    bench.write_bytes(
        b'{"question": "What is 1 + 1?", "answer": "2"}\n{"question": "x"}\n\xff\n'
        b'{"question": "What is 2 + 2?", "answer": "4"}\n'
    )
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "toy",
            "--benchmarks",
            str(bench),
            "--max-new-tokens",
            "8",
            "--output",
            str(out),
            "skip_bad_rows=true",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "[bench] 2 bad row(s) left out; first:" in printed and "bench.jsonl:2" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["benchmarks"]["bench"]["problems"] == 2
    assert results["settings"]["rows_left_out"] == {"bench": 2}


def test_a_prompt_over_the_limit_is_refused_before_anything_is_generated(tmp_path):
    bench = tmp_path / "long.jsonl"
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(40)]
    rows.append({"question": "1 + " * 50_000 + "1?", "answer": "50001"})
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    flags = {"model": "toy", "benchmarks": [str(bench)], "output_dir": str(out), "max_new_tokens": 4}
    with pytest.raises(
        ConfigError, match=r"problem long-40 \(.*long\.jsonl:41\).*more than max_prompt_tokens"
    ):
        run_evaluation(load_eval_config(flags=flags), log=quiet)
    assert not (out / "samples").exists()  # nothing generated
