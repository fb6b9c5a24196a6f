"""The memory planner: parameter counts against real models, each term by hand, the CLI.

Real components: transformers models built from small configs, peft adapters, the shipped toy
model and its critic, and ``torch.autograd.graph.saved_tensors_hooks`` counting what a real
forward pass keeps for backward.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.errors import ConfigError
from rlvr.memory_plan import (
    ModelShape,
    activation_bytes,
    format_plan,
    kv_cache_bytes,
    layer_activation_bytes,
    load_model_shape,
    logits_bytes,
    lora_parameters,
    model_shape,
    parse_memory_size,
    plan_memory,
)

SMALL = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)

# The shipped toy model (src/rlvr/toy/model/config.json): Qwen2, h 128, 4 layers, 4 heads of 32, 2 kv
# heads, MLP 352, vocabulary 81, tied embeddings.
#   layer: q 128*128 + 128, k and v 128*64 + 64 each, o 128*128, MLP 3*128*352, 2 norms of 128
#        = 16512 + 8256 + 8256 + 16384 + 135168 + 256 = 184832
#   total: 4 * 184832 + 81*128 (embeddings, tied head) + 128 (final norm) = 739328 + 10368 + 128 = 749824
TOY_PARAMETERS = 749_824


def _config(*overrides: str):
    return load_config(None, ["model.path=toy", *overrides])


@pytest.mark.parametrize(
    ("config_cls", "model_cls", "extra"),
    [
        (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
        (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=False)),
        (LlamaConfig, LlamaForCausalLM, dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=False)),
        (LlamaConfig, LlamaForCausalLM, dict(head_dim=24)),
        (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=32, tie_word_embeddings=True)),
    ],
)
def test_parameter_count_formula_matches_real_models(config_cls, model_cls, extra):
    hf_config = config_cls(**SMALL, **extra)
    model = model_cls(hf_config)
    shape = model_shape(hf_config)
    assert shape.total_parameters == sum(p.numel() for p in model.parameters())
    assert shape.layer_parameters == sum(p.numel() for p in model.model.layers[0].parameters())
    assert shape.body_parameters == sum(p.numel() for p in model.model.parameters())


def test_published_parameter_counts_of_qwen2_5():
    # Qwen2.5-0.5B and -7B as their config.json give them: 494,032,768 and 7,615,616,512 parameters
    small = Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    )
    big = Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    )
    assert model_shape(small).total_parameters == 494_032_768
    assert model_shape(big).total_parameters == 7_615_616_512


def test_toy_shape_is_read_from_its_config_json():
    shape = load_model_shape("toy")
    assert (shape.hidden_size, shape.num_layers, shape.num_kv_heads, shape.head_dim) == (128, 4, 2, 32)
    assert shape.total_parameters == TOY_PARAMETERS


def test_unreadable_model_path_is_a_config_error_naming_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="setting 'model.path': cannot read the model config"):
        load_model_shape(str(tmp_path / "no-such-model"))


def test_mixture_of_experts_is_refused():
    from transformers import Qwen2MoeConfig

    with pytest.raises(ConfigError, match="mixture of experts"):
        model_shape(Qwen2MoeConfig(**SMALL))


def test_lora_parameter_count_matches_peft():
    peft = pytest.importorskip("peft")
    hf_config = Qwen2Config(**SMALL)
    targets = ("q_proj", "v_proj", "down_proj")
    model = peft.get_peft_model(
        Qwen2ForCausalLM(hf_config), peft.LoraConfig(r=4, target_modules=list(targets))
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # per layer: q 4*(64 + 64) + v 4*(64 + 32) + down 4*(176 + 64) = 512 + 384 + 960 = 1856; 2 layers
    assert lora_parameters(model_shape(hf_config), 4, targets) == trainable == 3712


def test_weights_row_is_parameters_times_bytes_and_bfloat16_halves_it():
    shape = load_model_shape("toy")
    fp32 = plan_memory(_config("model.dtype=float32"), shape, device="cuda")
    bf16 = plan_memory(_config("model.dtype=bfloat16"), shape, device="cuda")
    auto_gpu = plan_memory(_config(), shape, device="cuda")  # auto: bfloat16 on a GPU
    auto_cpu = plan_memory(_config(), shape, device="cpu")  # auto: float32 on CPU
    assert fp32.phase("update").get("policy weights") == TOY_PARAMETERS * 4
    assert bf16.phase("update").get("policy weights") == TOY_PARAMETERS * 2
    assert auto_gpu.phase("update").get("policy weights") == TOY_PARAMETERS * 2
    assert auto_cpu.phase("update").get("policy weights") == TOY_PARAMETERS * 4
    # AdamW: two states in the weights' dtype; gradients as large as the weights
    assert fp32.phase("update").get("policy AdamW state") == 2 * TOY_PARAMETERS * 4
    assert bf16.phase("update").get("policy gradients") == TOY_PARAMETERS * 2
    # autocast keeps float32 weights and adds the bfloat16 copies of the matmul weights
    autocast = plan_memory(_config("model.autocast=bfloat16"), shape, device="cuda")
    assert autocast.phase("update").get("policy weights") == TOY_PARAMETERS * 4
    # every parameter but the 9 norms of 128 (2 per layer + the final one) and the tied embedding's lookup
    assert autocast.phase("update").get("bfloat16 weight copies") == 2 * (TOY_PARAMETERS - 9 * 128)


def test_fsdp2_divides_sharded_terms_by_the_ranks_and_gathers_the_model_for_generation():
    shape = load_model_shape("toy")
    one = plan_memory(_config("model.dtype=float32"), shape, device="cuda")
    four = plan_memory(
        _config("model.dtype=float32", "parallel.strategy=fsdp2"), shape, nproc=4, device="cuda"
    )
    for row in ("policy weights", "policy AdamW state", "policy gradients"):
        assert four.phase("update").get(row) == one.phase("update").get(row) // 4
    assert four.phase("rollout").get("policy gathered for generation") == TOY_PARAMETERS * 4
    # 2 gathered layers + the root (embeddings and final norm), parameters and unsharded gradients
    gathered = 2 * (2 * 184_832 + 10_496) * 4
    assert four.phase("update").get("gathered layers") == gathered
    # the activations of a rank do not shrink: the same micro-batch shape
    assert four.phase("update").get("activations") == one.phase("update").get("activations")


def test_fsdp2_mixed_precision_gathers_bfloat16_from_float32_shards_and_offload_empties_the_device():
    shape = load_model_shape("toy")
    for dtype in (
        "float32",
        "auto",
    ):  # auto on a GPU would be bfloat16, but mixed precision keeps float32 shards
        mixed = _config(
            f"model.dtype={dtype}", "parallel.strategy=fsdp2", "parallel.mixed_precision=bfloat16"
        )
        plan = plan_memory(mixed, shape, nproc=2, device="cuda")
        assert plan.phase("update").get("policy weights (float32") == TOY_PARAMETERS * 4 // 2
    assert plan.phase("rollout").get("policy gathered for generation") == TOY_PARAMETERS * 2
    # 2 layers + root in bfloat16, their unsharded gradients in bfloat16 and in float32 for the reduction
    assert plan.phase("update").get("gathered layers") == (2 * 184_832 + 10_496) * (2 + 2 + 4)
    offload = _config("parallel.strategy=fsdp2", "parallel.cpu_offload=true", "model.dtype=float32")
    plan = plan_memory(offload, shape, nproc=2, device="cuda")
    for row in ("policy weights", "policy AdamW state", "policy gradients"):
        assert plan.phase("update").get(row) == 0
    assert plan.host_bytes == TOY_PARAMETERS * 4 * 4 // 2  # weights, gradients, two states, halved


def test_ddp_keeps_full_replicas_and_averages_gradients_in_one_bucket_at_a_time():
    from rlvr.training.parallel import GRADIENT_BUCKET_ELEMENTS

    shape = load_model_shape("toy")
    plan = plan_memory(_config("model.dtype=float32", "parallel.strategy=ddp"), shape, nproc=8, device="cuda")
    assert plan.phase("update").get("policy weights") == TOY_PARAMETERS * 4
    assert plan.phase("update").get("policy gradients") == TOY_PARAMETERS * 4
    assert plan.phase("optimizer step").get("gradient all-reduce bucket") == TOY_PARAMETERS * 4
    big = ModelShape(4096, 32, 32, 8, 128, 14336, 128256, False)  # Llama-3-8B: 8.0e9 parameters
    plan = plan_memory(_config("parallel.strategy=ddp"), big, nproc=8, device="cuda")
    assert plan.phase("optimizer step").get("gradient all-reduce bucket") == GRADIENT_BUCKET_ELEMENTS * 2


def test_cpu_offload_on_a_cpu_run_is_refused_naming_the_setting():
    config = _config("parallel.strategy=fsdp2", "parallel.cpu_offload=true")
    with pytest.raises(ConfigError, match="parallel.cpu_offload"):
        plan_memory(config, load_model_shape("toy"), nproc=2, device="cpu")


def test_more_than_one_rank_needs_a_strategy():
    with pytest.raises(ConfigError, match="parallel.strategy"):
        plan_memory(_config("parallel.strategy=none"), load_model_shape("toy"), nproc=2)


def test_work_is_split_over_ranks():
    shape = load_model_shape("toy")
    config = _config(
        "parallel.strategy=ddp",
        "rollout.prompts_per_step=16",
        "rollout.samples_per_prompt=8",
        "rollout.max_batch_sequences=512",
        "rollout.max_prompt_tokens=100",
        "rollout.max_new_tokens=28",
    )
    one, four = (plan_memory(config, shape, nproc=n, device="cuda") for n in (1, 4))
    # 16 prompts x 8 = 128 sequences on one rank, 4 x 8 = 32 per rank on 4
    assert one.phase("rollout").get("KV cache (128 sequences x 128 tokens)") > 0
    assert four.phase("rollout").get("KV cache (32 sequences x 128 tokens)") > 0


def test_kv_cache_by_hand():
    shape = load_model_shape("toy")
    # keys and values: 2 x (4 layers + 1 being grown) x 8 sequences x 100 tokens x (2 kv heads x 32) x 2 bytes
    assert kv_cache_bytes(shape, 8, 100, 2) == 2 * 5 * 8 * 100 * 64 * 2 == 1_024_000
    # max_batch_sequences 20 with 8 samples per prompt: 2 prompts (16 sequences) decoded at once
    config = _config(
        "rollout.max_batch_sequences=20", "rollout.max_prompt_tokens=72", "rollout.max_new_tokens=28"
    )
    plan = plan_memory(config, shape, device="cuda")
    assert plan.phase("rollout").get("KV cache (16 sequences x 100 tokens)") == kv_cache_bytes(
        shape, 16, 100, 2
    )


def test_activations_by_hand_and_checkpointing_reduces_them():
    shape = load_model_shape("toy")
    # float32: (24 h + 20 q + 16 f + 4 heads) per token = 3072 + 2560 + 5632 + 16 = 11280 bytes;
    # 2 rows x 10 tokens = 20 tokens -> 225600, + the float32 padding mask 2 x 10^2 x 4 = 800
    assert layer_activation_bytes(shape, 2, 10, "float32") == 20 * 11280 + 800 == 226_400
    full = activation_bytes(shape, 2, 10, "float32", checkpointing=False)
    ckpt = activation_bytes(shape, 2, 10, "float32", checkpointing=True)
    outside = 8 * 20 * 128  # the final norm's float32 input and output
    assert full == 4 * 226_400 + outside
    # checkpointed: 4 layer inputs of 20 x 128 float32 values, plus one layer recomputed
    assert ckpt == 4 * 20 * 128 * 4 + 226_400 + outside
    assert ckpt < full
    plain, checkpointed = (
        plan_memory(_config(f"model.gradient_checkpointing={flag}"), shape, device="cuda")
        for flag in ("false", "true")
    )
    assert checkpointed.phase("update").get("activations") < plain.phase("update").get("activations")


@pytest.mark.parametrize("mode", ["float32", "bfloat16", "autocast"])
def test_layer_activation_bytes_match_what_a_real_forward_keeps_for_backward(mode):
    """One decoder layer's bytes = (saved by a 2-layer model) - (saved by a 1-layer model)."""
    rows, seq_len = 3, 24

    def saved_bytes(layers: int) -> int:
        torch.manual_seed(0)
        hf_config = Qwen2Config(**{**SMALL, "num_hidden_layers": layers})
        model = Qwen2ForCausalLM(hf_config).to(torch.bfloat16 if mode == "bfloat16" else torch.float32)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                storages[storage.data_ptr()] = storage.nbytes()
            return t

        ids = torch.randint(0, SMALL["vocab_size"], (rows, seq_len))
        attention = torch.ones(rows, seq_len, dtype=torch.long)
        attention[0, :3] = 0  # left padding: the padding mask is built
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else contextlib.nullcontext()
        )
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            model(input_ids=ids, attention_mask=attention, use_cache=False, logits_to_keep=5)
        if mode == "autocast":  # bfloat16 weight copies are counted by their own row
            copies = 2 * sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 or "bias" in n)
            return sum(storages.values()) - copies
        return sum(storages.values())

    measured = saved_bytes(2) - saved_bytes(1)
    estimated = layer_activation_bytes(model_shape(Qwen2Config(**SMALL)), rows, seq_len, mode)
    assert estimated == pytest.approx(measured, rel=0.05), (estimated, measured)


def test_logits_by_hand():
    # 2 rows x (9 + 1) positions x 100 tokens = 2000 values; float32: logits + gradient = 16000 bytes, then
    # max(one float32 block of all 20 positions = 8000 bytes, the padded gradient = 8000 bytes)
    assert logits_bytes(2, 9, 100, 4, "float32", entropy_grad=False) == 16_000 + 8_000
    # an entropy bonus adds a second gradient during the entropy's backward: + 8000
    assert logits_bytes(2, 9, 100, 4, "float32", entropy_grad=True) == 16_000 + 16_000
    # bfloat16 logits: 2 x 4000, then max(float32 block 8000, padded gradient 4000)
    assert logits_bytes(2, 9, 100, 2, "bfloat16", entropy_grad=False) == 8_000 + 8_000


def test_reference_row_only_when_the_algorithm_needs_a_reference():
    shape = load_model_shape("toy")
    grpo = plan_memory(_config("preset=grpo", "model.dtype=float32"), shape, device="cuda")  # kl_coef 0.04
    assert grpo.phase("update").get("reference model") == TOY_PARAMETERS * 4
    no_kl = plan_memory(_config("preset=grpo", "algorithm.kl_coef=0"), shape, device="cuda")
    assert no_kl.phase("update").get("reference model") == 0
    lora = plan_memory(_config("preset=grpo", "model.lora_rank=8"), shape, device="cuda")
    assert lora.phase("update").get("reference model") == 0  # the policy with its adapter off


def test_generate_ahead_adds_a_whole_float32_copy_and_a_generation_beside_the_update():
    shape = load_model_shape("toy")
    plain = plan_memory(
        _config("model.dtype=float32", "parallel.strategy=fsdp2"), shape, nproc=2, device="cuda"
    )
    config = _config("model.dtype=float32", "rollout.generate_ahead=true", "parallel.strategy=fsdp2")
    ahead = plan_memory(config, shape, nproc=2, device="cuda")
    for phase in ("rollout", "update", "optimizer step"):  # never sharded, whatever the strategy
        assert ahead.phase(phase).get("generating copy") == TOY_PARAMETERS * 4
    kv = plain.phase("rollout").get("KV cache")
    assert kv > 0 and ahead.phase("update").get("KV cache") == kv
    assert plain.phase("update").get("KV cache") == 0


def test_lora_trains_only_the_adapter():
    shape = load_model_shape("toy")
    full = plan_memory(_config("model.dtype=bfloat16"), shape, device="cuda")
    lora = plan_memory(_config("model.dtype=bfloat16", "model.lora_rank=8"), shape, device="cuda")
    # rank 8 on all 7 projections: 8 x (256 + 192 + 192 + 256 + 480 + 480 + 480) = 8 x 2336 = 18688 per layer
    adapter = 4 * 18_688
    assert lora.phase("update").get("policy AdamW state") == 2 * adapter * 4  # float32 adapter states
    assert lora.phase("update").get("policy gradients") == adapter * 4
    assert lora.phase("update").get("policy weights") == TOY_PARAMETERS * 2 + adapter * 4
    # 10% of the toy's parameters, in float32 instead of bfloat16: a fifth of the full state
    assert lora.phase("update").get("policy AdamW state") < full.phase("update").get("policy AdamW state") / 4


def test_critic_rows_only_with_a_critic_and_its_size_matches_the_real_value_model():
    from rlvr.training.critic import load_value_model

    shape = load_model_shape("toy")
    grpo = plan_memory(_config("preset=grpo"), shape, device="cuda")
    assert "critic update" not in [p.name for p in grpo.phases]
    assert grpo.phase("update").get("critic") == 0
    config = _config("preset=ppo", "model.dtype=float32")
    plan = plan_memory(config, shape, device="cpu")
    critic = load_value_model(config, torch.device("cpu"))
    trained = sum(p.numel() for p in critic.parameters()) * 4
    # weights + two AdamW states, all float32
    assert plan.phase("update").get("critic weights + AdamW state") == 3 * trained
    assert plan.phase("critic update").get("critic gradients") == trained


def test_parse_memory_size():
    assert parse_memory_size("80GB") == 80 * 10**9
    assert parse_memory_size("80GiB") == 80 * 2**30
    assert parse_memory_size("24000MB") == 24 * 10**9
    assert parse_memory_size("1.5 TiB") == int(1.5 * 2**40)
    assert parse_memory_size("512mib") == 512 * 2**20
    for bad in ("80", "GB", "-5GB", "80XB", "0GB", ""):
        with pytest.raises(ConfigError, match="--device-memory"):
            parse_memory_size(bad)


def test_fits_compares_the_peak_with_the_device_memory():
    shape = load_model_shape("toy")
    plan = plan_memory(_config(), shape, device="cuda", device_memory=80 * 10**9)
    assert plan.fits and plan.peak.total == max(p.total for p in plan.phases)
    small = plan_memory(_config(), shape, device="cuda", device_memory=1000)
    assert small.fits is False
    text = format_plan(small)
    assert "does not fit (needs" in text and "has 0.0 MiB" in text
    assert math.isclose(plan.peak.total, sum(r.bytes for r in plan.peak.rows))


def test_cli_prints_the_tables_and_whether_it_fits(capsys):
    assert main(["plan", "recipes/quickstart.yaml", "--device-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    for phase in ("rollout (per rank)", "update (per rank)", "optimizer step (per rank)", "peak:"):
        assert phase in out
    assert "fits in 74.51 GiB" in out
    assert (
        main(["plan", "recipes/quickstart.yaml", "rollout.max_new_tokens=4096", "--device-memory", "1MB"])
        == 0
    )
    assert "does not fit (needs" in capsys.readouterr().out


def test_cli_fsdp2_plan_on_several_ranks(capsys):
    argv = ["plan", "recipes/quickstart.yaml", "parallel.strategy=fsdp2", "--nproc", "2", "--device", "cuda"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 ranks on cuda, strategy fsdp2" in out and "policy gathered for generation" in out


def test_cli_bad_device_memory_names_the_flag(capsys):
    assert main(["plan", "recipes/quickstart.yaml", "--device-memory", "80"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("rlvr: error: --device-memory must be a positive size with a unit")
        and "Traceback" not in err
    )


def test_shape_dataclass_widths():
    shape = ModelShape(64, 2, 4, 2, 24, 176, 96, True)
    assert (shape.query_width, shape.kv_width) == (96, 48)
