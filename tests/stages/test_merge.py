"""``rlvr merge``: the math in float64, the streamed merge of real tiny transformers models, the checks
that refuse models that do not fit together, atomic output, and the command line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from rlvr.cli import main
from rlvr.errors import ConfigError, ShapeError
from rlvr.stages import merge as merge_module
from rlvr.stages.merge import MergeConfig, merge_models, task_arithmetic, weighted_average
from rlvr.toy.build import SHIPPED_DIR

VOCAB = 81  # the shipped toy tokenizer's


def tiny_model(seed: int, *, tie: bool = True, layers: int = 2) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # RMSNorm weights start at 1 in every model: make them differ too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def save(model: Qwen2ForCausalLM, path: Path, dtype: torch.dtype = torch.float32, **kwargs) -> Path:
    model.to(dtype).save_pretrained(path, **kwargs)
    AutoTokenizer.from_pretrained(SHIPPED_DIR).save_pretrained(path)
    return path


def stored(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model directory, as stored (one file or shards)."""
    out: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def merge(models, output, **settings) -> Path:
    merge_models(
        MergeConfig(models=[str(m) for m in models], output=str(output), **settings), log=lambda _: None
    )
    return output


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    return save(tiny_model(1), tmp_path / "a"), save(tiny_model(2), tmp_path / "b")


# --- the math, in float64 -------------------------------------------------------------------------


def test_weighted_average_hand_computed() -> None:
    a = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    b = torch.tensor([3.0, 6.0, 1.0], dtype=torch.float64)
    c = torch.tensor([0.0, -4.0, 8.0], dtype=torch.float64)
    # 0.5 a + 0.25 b + 0.25 c = [0.5 + 0.75 + 0, 1 + 1.5 - 1, -1.5 + 0.25 + 2]
    expected = torch.tensor([1.25, 1.5, 0.75], dtype=torch.float64)
    assert torch.equal(weighted_average([a, b, c], [0.5, 0.25, 0.25]), expected)


def test_task_arithmetic_hand_computed() -> None:
    base = torch.tensor([[1.0, 1.0], [0.5, -2.0]], dtype=torch.float64)
    m1 = torch.tensor([[3.0, 0.0], [0.5, -1.0]], dtype=torch.float64)
    m2 = torch.tensor([[1.0, 5.0], [2.5, -2.0]], dtype=torch.float64)
    # base + 0.5 (m1 - base) - 0.25 (m2 - base):
    # [1 + 0.5*2 - 0, 1 - 0.5 - 0.25*4], [0.5 + 0 - 0.25*2, -2 + 0.5 - 0] = [[2, -0.5], [0, -1.5]]
    expected = torch.tensor([[2.0, -0.5], [0.0, -1.5]], dtype=torch.float64)
    assert torch.equal(task_arithmetic(base, [m1, m2], [0.5, -0.25]), expected)


def test_math_rounds_once_to_the_stored_dtype_and_keeps_zero_weight_terms_out() -> None:
    a = torch.tensor([1.0, -0.0, 3.0], dtype=torch.bfloat16)
    b = torch.tensor([float("inf"), 2.0, 1.0], dtype=torch.bfloat16)
    first = weighted_average([a, b], [1.0, 0.0])
    assert first.dtype == torch.bfloat16 and torch.equal(first.view(torch.int16), a.view(torch.int16))
    x = torch.tensor([1.0 + 2**-20], dtype=torch.float32)
    y = torch.tensor([1.0], dtype=torch.float32)
    mean = weighted_average([x, y], [0.5, 0.5], dtype=torch.float64)
    assert mean.item() == 1.0 + 2**-21  # float64 arithmetic, not float32's
    # task arithmetic with weights summing to 1 is the weighted average
    assert torch.allclose(task_arithmetic(y, [x, y], [0.3, 0.7]), weighted_average([x, y], [0.3, 0.7]))


def test_math_refuses_mismatched_terms() -> None:
    with pytest.raises(ShapeError, match="shapes"):
        weighted_average([torch.zeros(2), torch.zeros(3)], [0.5, 0.5])
    with pytest.raises(ShapeError, match="one weight per tensor"):
        weighted_average([torch.zeros(2)], [0.5, 0.5])
    with pytest.raises(ShapeError, match="floating-point"):
        task_arithmetic(torch.zeros(2, dtype=torch.long), [torch.zeros(2, dtype=torch.long)], [1.0])


# --- merging real models --------------------------------------------------------------------------


def test_weights_one_zero_give_the_first_model_bit_for_bit(two, tmp_path) -> None:
    a, b = two
    out = merge([a, b], tmp_path / "out", weights=[1.0, 0.0])
    got, want = stored(out), stored(a)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name].view(torch.int32), want[name].view(torch.int32)), name


def test_half_half_is_the_mean_and_loads_with_the_logits_of_a_hand_averaged_model(tmp_path) -> None:
    model_a, model_b = tiny_model(1, tie=False), tiny_model(2, tie=False)
    a, b = save(model_a, tmp_path / "a"), save(model_b, tmp_path / "b")
    out = merge([a, b], tmp_path / "out", weights=[0.5, 0.5])
    sa, sb = model_a.state_dict(), model_b.state_dict()
    mean = {k: ((sa[k].double() + sb[k].double()) / 2).float() for k in sa}
    got = stored(out)
    assert "lm_head.weight" in got and got.keys() == mean.keys()
    for name in mean:
        assert torch.equal(got[name], mean[name]), name

    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    by_hand = tiny_model(0, tie=False).eval()
    by_hand.load_state_dict(mean)
    ids = torch.tensor([[5, 9, 17, 3, 40, 2]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, by_hand(ids).logits)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(a).get_vocab()
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 0
    record = json.loads((out / "merge.json").read_text())
    assert record["method"] == "average" and [m["weight"] for m in record["models"]] == [0.5, 0.5]


def test_three_models(tmp_path) -> None:
    paths = [save(tiny_model(s), tmp_path / f"m{s}") for s in (1, 2, 3)]
    weights = [0.2, 0.3, 0.5]
    out = merge(paths, tmp_path / "out", weights=weights)
    inputs = [stored(p) for p in paths]
    for name, tensor in stored(out).items():
        expected = sum(w * t[name].double() for w, t in zip(weights, inputs, strict=True)).float()
        assert torch.equal(tensor, expected), name


def test_task_arithmetic_of_models_matches_float64_by_hand(tmp_path) -> None:
    base, m1, m2 = (save(tiny_model(s), tmp_path / f"m{s}") for s in (0, 1, 2))
    out = merge([m1, m2], tmp_path / "out", base=str(base), weights=[0.7, -0.4])
    b, t1, t2 = stored(base), stored(m1), stored(m2)
    for name, tensor in stored(out).items():
        theta = b[name].double()
        expected = theta + 0.7 * (t1[name].double() - theta) - 0.4 * (t2[name].double() - theta)
        assert torch.equal(tensor, expected.float()), name
    assert json.loads((out / "merge.json").read_text())["method"] == "task_arithmetic"


def test_bfloat16_models_stay_bfloat16_and_round_once(tmp_path) -> None:
    a = save(tiny_model(1), tmp_path / "a", dtype=torch.bfloat16)
    b = save(tiny_model(2), tmp_path / "b", dtype=torch.bfloat16)
    out = merge([a, b], tmp_path / "out", weights=[0.25, 0.75])
    sa, sb = stored(a), stored(b)
    for name, tensor in stored(out).items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, (0.25 * sa[name].double() + 0.75 * sb[name].double()).bfloat16()), name
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_a_dtype_mismatch_is_refused_unless_an_output_dtype_is_set(tmp_path) -> None:
    a = save(tiny_model(1), tmp_path / "a", dtype=torch.bfloat16)
    b = save(tiny_model(2), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"is BF16 in model '.*a' and F32 in '.*b'"):
        merge([a, b], tmp_path / "out")
    out = merge([a, b], tmp_path / "out", dtype="float32")
    sa, sb = stored(a), stored(b)
    for name, tensor in stored(out).items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, (0.5 * sa[name].double() + 0.5 * sb[name].double()).float())


def test_tied_embeddings_come_out_tied_even_when_an_input_stores_the_output_embedding(two, tmp_path) -> None:
    a, b = two
    weights = stored(b)
    assert "lm_head.weight" not in weights  # save_pretrained leaves the tied copy out
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, b / "model.safetensors", metadata={"format": "pt"})

    out = merge([a, b], tmp_path / "out")
    got = stored(out)
    assert "lm_head.weight" not in got
    embed = (
        0.5 * stored(a)["model.embed_tokens.weight"].double() + 0.5 * weights["lm_head.weight"].double()
    ).float()
    assert torch.equal(got["model.embed_tokens.weight"], embed)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(loaded.lm_head.weight, embed)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_sharded_inputs_and_outputs(two, tmp_path, monkeypatch) -> None:
    a, b = two
    sharded = save(tiny_model(2), tmp_path / "b_sharded", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    whole = merge([a, b], tmp_path / "whole")
    monkeypatch.setattr(merge_module, "CHUNK_ELEMENTS", 100)  # every tensor read and written in slices
    out = merge([a, sharded], tmp_path / "out", max_shard_size="30KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 1 and sorted(set(index["weight_map"].values())) == files
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stored(out).values())
    got, want = stored(out), stored(whole)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(out)(ids).logits
        assert torch.equal(logits, AutoModelForCausalLM.from_pretrained(whole)(ids).logits)


# --- refusals -------------------------------------------------------------------------------------


def test_architecture_mismatch_names_the_field_and_both_models(two, tmp_path) -> None:
    a, _ = two
    deeper = save(tiny_model(3, layers=3), tmp_path / "deeper")
    with pytest.raises(ConfigError, match=r"'num_hidden_layers' is 2 in '.*a' and 3 in '.*deeper'"):
        merge([a, deeper], tmp_path / "out")


def test_shape_mismatch_names_the_tensor_and_both_models(two, tmp_path) -> None:
    a, b = two
    weights = stored(b)
    weights["model.norm.weight"] = torch.ones(31)
    save_file(weights, b / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ConfigError, match=r"tensor 'model.norm.weight' has shape \[32\] in model '.*a' and \[31\]"
    ):
        merge([a, b], tmp_path / "out")


def test_missing_tensor_names_the_tensor_and_both_models(two, tmp_path) -> None:
    a, b = two
    weights = stored(b)
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, b / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ConfigError, match=r"tensor 'model.layers.1.mlp.up_proj.weight' is in model '.*a' but not"
    ):
        merge([a, b], tmp_path / "out")


def test_vocabulary_mismatch_names_the_token_and_both_models(two, tmp_path) -> None:
    a, b = two
    tokenizer = json.loads((b / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["0"], vocab["1"] = vocab["1"], vocab["0"]
    (b / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(
        ConfigError, match=r"different tokenizers: token '0' is id 6 in '.*a' and id 7 in '.*b'"
    ):
        merge([a, b], tmp_path / "out")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"weights": [0.5, 0.4]}, "sums to 0.9"),
        ({"weights": [0.5, math.inf]}, "not finite"),
        ({"weights": [1.0]}, r"1 weight\(s\) for 2 models"),
        ({"base": "toy"}, "needs setting 'weights'"),
        ({"weights": [1.0, -1.0], "normalize": True}, "sum to 0"),
        ({"dtype": "float64"}, "setting 'dtype'"),
    ],
)
def test_bad_weights_and_settings_are_refused_before_anything_is_read(settings, message, tmp_path) -> None:
    with pytest.raises(ConfigError, match=message):
        merge(["nowhere-a", "nowhere-b"], tmp_path / "out", **settings)
    assert not (tmp_path / "out").exists()


def test_normalize_divides_the_weights_by_their_sum(two, tmp_path) -> None:
    a, b = two
    out = merge([a, b], tmp_path / "out", weights=[2.0, 6.0], normalize=True)
    want = merge([a, b], tmp_path / "want", weights=[0.25, 0.75])
    assert all(torch.equal(t, stored(want)[k]) for k, t in stored(out).items())


def test_an_existing_output_is_refused_without_overwrite(two, tmp_path) -> None:
    a, b = two
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty; pass --overwrite"):
        merge([a, b], out)
    assert (out / "keep.txt").read_text() == "mine"
    merge([a, b], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]  # nothing left beside it
    with pytest.raises(ConfigError, match="holds model"):
        merge([a, b], tmp_path, overwrite=True)


def test_an_interrupted_merge_leaves_no_output(two, tmp_path, monkeypatch) -> None:
    a, b = two
    real = merge_module.write_shard

    def interrupted(path, tensors, chunks):
        real(path, tensors[:3], chunks)
        raise KeyboardInterrupt

    monkeypatch.setattr(merge_module, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge([a, b], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


# --- the command line -----------------------------------------------------------------------------


def test_cli_merges_the_shipped_toy_and_a_run_directory(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(SHIPPED_DIR, run / "final")
    out = tmp_path / "merged"
    assert main(["merge", "toy", str(run), "--weights", "0.5", "0.5", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "merge: average of toy x 0.5" in printed
    got, toy = stored(out), stored(SHIPPED_DIR)
    assert got.keys() == toy.keys() and all(torch.equal(got[k], toy[k]) for k in toy)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "qwen2"

    # a second run refuses the output; key=value settings work as flags do
    assert main(["merge", "toy", "toy", "--output", str(out)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert main(["merge", "toy", "toy", f"output={out}", "overwrite=true", "weights=[1.0,0.0]"]) == 0


def test_cli_mismatch_is_a_one_line_error(two, tmp_path, capsys) -> None:
    a, _ = two
    assert main(["merge", str(a), "toy", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlvr: error: models") and "'hidden_size' is 32" in err and "Traceback" not in err
