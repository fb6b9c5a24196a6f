"""Checkpoints: exact resume (weights, optimizer, schedule, RNG), HF loadability, retention, atomicity."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rlvr.errors import ConfigError, DataError
from rlvr.toy.tokenizer import build_tokenizer
from rlvr.training.checkpoint import (
    CorruptCheckpointError,
    capture_rng_state,
    checkpoint_step,
    export_merged,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def tiny_config(vocab_size: int, *, tie: bool = True, hidden: int = 32) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )


def make_parts(seed: int, *, tie: bool = True, lr: float = 1e-2):
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = Qwen2ForCausalLM(tiny_config(len(tokenizer), tie=tie))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / 4, 1.0))
    return model, tokenizer, optimizer, scheduler


def train_step(model, optimizer, scheduler) -> dict:
    """One optimizer step on a batch drawn from the global RNGs; returns the draws."""
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    draws = {"ids": ids, "python": random.random(), "numpy": float(np.random.rand())}
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return draws


def assert_state_dicts_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_optimizer_states_equal(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for index in sa["state"]:
        for name, value in sa["state"][index].items():
            assert torch.equal(value, sb["state"][index][name]), (index, name)


@pytest.mark.parametrize("tie", [True, False])
def test_save_then_load_into_fresh_objects_continues_identically(tmp_path, tie):
    model, tokenizer, optimizer, scheduler = make_parts(0, tie=tie)
    for _ in range(3):
        train_step(model, optimizer, scheduler)
    generator = torch.Generator().manual_seed(5)
    torch.rand(3, generator=generator)
    trainer_state = {"epoch": 1, "history": [0.5, None], "generator": generator.get_state(), "pair": (1, 2)}
    path = save_checkpoint(
        tmp_path,
        3,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        trainer_state=trainer_state,
        keep_last=2,
    )
    assert path == tmp_path / "checkpoints" / "step-000003"
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    expected_draws = train_step(model, optimizer, scheduler)  # the run without interruption
    expected_after = {k: v.clone() for k, v in model.state_dict().items()}
    expected_lr = scheduler.get_last_lr()

    # The optimizer state the interrupted run had at the save, rebuilt by replaying it.
    reference, _, reference_opt, reference_sched = make_parts(0, tie=tie)
    for _ in range(3):
        train_step(reference, reference_opt, reference_sched)

    fresh, _, fresh_opt, fresh_sched = make_parts(1, tie=tie)
    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # a new process has other RNG states
    state = load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert_state_dicts_equal(fresh.state_dict(), saved_weights)
    assert_optimizer_states_equal(fresh_opt, reference_opt)
    assert fresh_sched.last_epoch == 3 and fresh_sched.state_dict()["_step_count"] == 4
    assert state["step"] == 3 and state["epoch"] == 1 and state["history"] == [0.5, None]
    assert torch.equal(state["generator"], generator.get_state()) and state["pair"] == (1, 2)
    assert json.loads((path / "trainer_state.json").read_text()) == {
        "epoch": 1,
        "history": [0.5, None],
        "step": 3,
    }

    draws = train_step(fresh, fresh_opt, fresh_sched)  # RNG, optimizer and schedule all continue
    assert torch.equal(draws["ids"], expected_draws["ids"])
    assert draws["python"] == expected_draws["python"] and draws["numpy"] == expected_draws["numpy"]
    assert_state_dicts_equal(fresh.state_dict(), expected_after)
    assert fresh_sched.get_last_lr() == expected_lr


@pytest.mark.gpu
def test_cuda_model_optimizer_and_cuda_rng_round_trip(tmp_path):
    model, tokenizer, _, _ = make_parts(0)
    model.cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, model.config.vocab_size, (2, 8), device="cuda")
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer)
    expected = torch.rand(4, device="cuda")

    fresh = Qwen2ForCausalLM(model.config).cuda()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    torch.cuda.manual_seed_all(99)
    load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert torch.equal(torch.rand(4, device="cuda"), expected)
    assert_state_dicts_equal(fresh.state_dict(), model.state_dict())
    assert_optimizer_states_equal(fresh_opt, optimizer)
    assert all(s["exp_avg"].is_cuda for s in fresh_opt.state.values())


def test_checkpoint_is_a_hugging_face_model_directory(tmp_path):
    model, tokenizer, optimizer, scheduler = make_parts(0)
    train_step(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path, 1, model=model, tokenizer=tokenizer, keep_last=None)
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert_state_dicts_equal(loaded.state_dict(), model.state_dict())
    text = "<think>1+2=3</think><answer>3</answer>"
    assert AutoTokenizer.from_pretrained(path)(text).input_ids == tokenizer(text).input_ids
    # Optimizer and scheduler are optional on both sides.
    state = load_checkpoint(path, model=Qwen2ForCausalLM(model.config))
    assert state == {"step": 1}


def test_rng_capture_restore_round_trip():
    state = capture_rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(3))
    restore_rng_state(state)
    second = (random.random(), float(np.random.rand()), torch.rand(3))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])
    restore_rng_state({})  # parts absent from the state are left alone
    assert random.random() != first[0]


def test_keep_last_and_overwriting_a_step(tmp_path):
    model, tokenizer, *_ = make_parts(0)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, model=model, trainer_state={"tag": f"s{step}"}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004", "step-000005"]
    assert latest_checkpoint(tmp_path).name == "step-000005"
    # The same step saved again (e.g. after a final evaluation) replaces it.
    save_checkpoint(tmp_path, 5, model=model, trainer_state={"tag": "again"}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004", "step-000005"]
    assert json.loads((tmp_path / "checkpoints/step-000005/trainer_state.json").read_text())["tag"] == "again"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000004", "step-000005"]
    save_checkpoint(tmp_path, 6, model=model, keep_last=1)
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [6]
    save_checkpoint(tmp_path, 7, model=model, keep_last=None)
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [6, 7]


def test_leftovers_are_ignored_then_cleaned_and_an_interrupted_overwrite_recovers(tmp_path):
    model, *_ = make_parts(0)
    save_checkpoint(tmp_path, 2, model=model, trainer_state={"tag": "two"}, keep_last=3)
    root = tmp_path / "checkpoints"
    # A save killed half-way (temporary directory), a deletion killed half-way, and a directory with a
    # step name but without trainer_state.json (not written by save_checkpoint, so never complete).
    (root / ".tmp-step-000009-0badc0de").mkdir()
    (root / ".tmp-step-000009-0badc0de" / "config.json").write_text("{")
    (root / ".deleting-step-000001-12345678").mkdir()
    (root / "step-000010").mkdir()
    (root / "step-000010" / "model.safetensors").write_bytes(b"partial")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    # Overwrite killed between its two renames: the old copy still counts as step 2.
    os.rename(root / "step-000002", root / ".replaced-step-000002-abcdef01")
    assert latest_checkpoint(tmp_path) == root / ".replaced-step-000002-abcdef01"
    assert load_checkpoint(latest_checkpoint(tmp_path), model=make_parts(1)[0])["tag"] == "two"

    save_checkpoint(tmp_path, 3, model=model, keep_last=3)
    assert sorted(p.name for p in root.iterdir()) == ["step-000002", "step-000003", "step-000010"]
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [2, 3]


def test_bad_arguments_and_bad_checkpoints_are_clear_errors(tmp_path):
    model, *_ = make_parts(0)
    with pytest.raises(ConfigError, match="keep_last"):
        save_checkpoint(tmp_path, 1, model=model, keep_last=0)
    with pytest.raises(ConfigError, match="step"):
        save_checkpoint(tmp_path, -1, model=model)
    with pytest.raises(ConfigError, match=r"trainer_state\['step'\]"):
        save_checkpoint(tmp_path, 1, model=model, trainer_state={"step": 2})
    with pytest.raises(ConfigError, match=r"trainer_state\['bad'\]\[0\]"):
        save_checkpoint(tmp_path, 1, model=model, trainer_state={"bad": [object()]})
    with pytest.raises(ConfigError, match="save_pretrained"):
        save_checkpoint(tmp_path, 1, model=torch.nn.Linear(2, 2))
    assert (
        latest_checkpoint(tmp_path) is None
        and list(p.name for p in (tmp_path / "checkpoints").iterdir()) == []
    )

    with pytest.raises(DataError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path, model=model)
    path = save_checkpoint(tmp_path, 1, model=model)
    other = Qwen2ForCausalLM(tiny_config(model.config.vocab_size, hidden=16))
    with pytest.raises(DataError, match="does not fit"):
        load_checkpoint(path, model=other)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=model.config.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )  # the same names and shapes as the Qwen2 model, but no attention biases
    with pytest.raises(DataError, match="does not have"):  # the biases Llama lacks
        load_checkpoint(path, model=llama)
    with pytest.raises(DataError, match="does not fit"):  # saved without an optimizer
        load_checkpoint(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def _shard(path):
    return next((path / "state").glob("*.distcp"))


def _cut_in_half(file) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


DAMAGES = {
    "scheduler.pt cut short": lambda p: _cut_in_half(p / "scheduler.pt"),
    "scheduler.pt overwritten": lambda p: (p / "scheduler.pt").write_bytes(b"not a torch file"),
    "trainer_state.pt empty": lambda p: (p / "trainer_state.pt").write_bytes(b""),
    "trainer_state.json cut short": lambda p: _cut_in_half(p / "trainer_state.json"),
    "rng.pt cut short": lambda p: _cut_in_half(p / "rng.pt"),
    "critic_sched.pt missing": lambda p: (p / "critic_sched.pt").unlink(),
    "state/.metadata cut short": lambda p: _cut_in_half(p / "state" / ".metadata"),
    "state/ shard cut short": lambda p: _cut_in_half(_shard(p)),
    "state/ shard missing": lambda p: _shard(p).unlink(),
}


def _save_steps(run_dir, model, optimizer, scheduler, critic_sched, steps):
    """One checkpoint per step, each after a step of training; returns the weights saved at each."""
    weights = {}
    for step in steps:
        train_step(model, optimizer, scheduler)
        critic_sched.step()
        save_checkpoint(
            run_dir,
            step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            trainer_state={"generator": torch.ones(2), "tag": step},
            extra_states={"critic_sched": critic_sched},
            keep_last=3,
        )
        weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return weights


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_file_is_named_and_the_previous_checkpoint_is_loaded(tmp_path, damage):
    model, _, optimizer, scheduler = make_parts(0)
    critic_sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    weights = _save_steps(tmp_path, model, optimizer, scheduler, critic_sched, [1, 2])
    newest = tmp_path / "checkpoints" / "step-000002"
    DAMAGES[damage](newest)
    file = damage.split()[0].rstrip("/")

    fresh, _, fresh_opt, fresh_sched = make_parts(1)
    fresh_critic_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=1)
    objects = dict(model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    objects["extra_states"] = {"critic_sched": fresh_critic_sched}
    with pytest.raises(CorruptCheckpointError, match=re.escape(str(newest / file))):
        load_checkpoint(newest, **objects)

    log: list[str] = []
    path, state = load_latest_checkpoint(tmp_path, log=log.append, **objects)
    assert path.name == "step-000001" and state["tag"] == 1 and state["step"] == 1
    assert_state_dicts_equal(fresh.state_dict(), weights[1])
    assert fresh_sched.last_epoch == 1 and fresh_critic_sched.last_epoch == 1
    assert len(log) == 1 and str(newest / file) in log[0]
    assert "falling back to the previous checkpoint, step-000001" in log[0]


def test_no_intact_checkpoint_is_an_error_that_says_what_to_do(tmp_path):
    model, _, optimizer, scheduler = make_parts(0)
    critic_sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    _save_steps(tmp_path, model, optimizer, scheduler, critic_sched, [1, 2])
    for path in list_checkpoints(tmp_path):
        (path / "rng.pt").write_bytes(b"\x00" * 10)
    log: list[str] = []
    with pytest.raises(DataError, match=r"no intact checkpoint to resume from.*--overwrite") as err:
        load_latest_checkpoint(tmp_path, log=log.append, model=model, optimizer=optimizer)
    assert "step-000002/rng.pt" in str(err.value) and "step-000001/rng.pt" in str(err.value)
    assert "no earlier checkpoint is left" in log[-1]
    assert load_latest_checkpoint(tmp_path / "empty", model=model) is None


def test_extra_states_round_trip(tmp_path):
    model, _, optimizer, scheduler = make_parts(0)
    critic = torch.nn.Linear(4, 1)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=0.1)
    critic(torch.ones(1, 4)).sum().backward()
    critic_opt.step()
    path = save_checkpoint(
        tmp_path, 1, model=model, extra_states={"critic": critic, "critic_optimizer": critic_opt}
    )
    fresh_critic = torch.nn.Linear(4, 1)
    fresh_opt = torch.optim.Adam(fresh_critic.parameters(), lr=0.1)
    load_checkpoint(path, model=model, extra_states={"critic": fresh_critic, "critic_optimizer": fresh_opt})
    assert_state_dicts_equal(fresh_critic.state_dict(), critic.state_dict())
    assert_optimizer_states_equal(fresh_opt, critic_opt)
    with pytest.raises(ConfigError, match="extra_states name 'optimizer'"):
        save_checkpoint(tmp_path, 2, model=model, extra_states={"optimizer": critic_opt})


def test_lora_checkpoint_adapter_round_trip_and_merged_export(tmp_path):
    peft = pytest.importorskip("peft")
    base_dir = tmp_path / "base"
    base, tokenizer, *_ = make_parts(0)
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)

    def lora_model():
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        return peft.get_peft_model(
            model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )

    model = lora_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for _ in range(2):
        train_step(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path / "run", 2, model=model, tokenizer=tokenizer, optimizer=optimizer)
    assert (path / "adapter_model.safetensors").is_file() and not (path / "model.safetensors").exists()

    fresh = lora_model()
    fresh_opt = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda s: 1.0)  # as the saved optimizer had one
    load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert_state_dicts_equal(fresh.state_dict(), model.state_dict())
    assert_optimizer_states_equal(fresh_opt, optimizer)

    merged_dir = export_merged(path, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    ids = torch.randint(0, merged.config.vocab_size, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    assert (merged_dir / "tokenizer.json").is_file()
    with pytest.raises(DataError, match="not a LoRA checkpoint"):
        export_merged(save_checkpoint(tmp_path / "full", 1, model=base), tmp_path / "x")
    with pytest.raises(DataError, match="does not have"):  # a full-weight checkpoint into a LoRA model
        load_checkpoint(save_checkpoint(tmp_path / "full", 1, model=base), model=fresh)


def test_export_merged_without_peft_is_a_clear_error(tmp_path):
    if "peft" in sys.modules or _importable("peft"):
        pytest.skip("peft is installed")
    with pytest.raises(ConfigError, match="pip install peft"):
        export_merged(tmp_path, tmp_path / "out")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---------------------------------------------------------------------------------------------------
# Atomicity under SIGKILL

_SAVER = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from rlvr.training.checkpoint import latest_checkpoint, checkpoint_step, save_checkpoint

    run_dir = sys.argv[1]
    config = Qwen2Config(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    latest = latest_checkpoint(run_dir)
    step = checkpoint_step(latest) + 1 if latest is not None else 1
    while True:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(step))
                optimizer.state[p]["momentum_buffer"].fill_(-float(step))
        t0 = time.perf_counter()
        save_checkpoint(run_dir, step, model=model, optimizer=optimizer, trainer_state={"tag": step},
                        keep_last=2)
        print(f"saved {step} {time.perf_counter() - t0:.3f}", flush=True)
        step += 1
    """
)


def _check_latest_is_complete(run_dir) -> int:
    latest = latest_checkpoint(run_dir)
    assert latest is not None
    step = checkpoint_step(latest)
    config = Qwen2Config.from_pretrained(latest)
    model = Qwen2ForCausalLM(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = load_checkpoint(latest, model=model, optimizer=optimizer, restore_rng=False)
    assert state == {"tag": step, "step": step}
    for name, p in model.named_parameters():
        assert torch.all(p == float(step)), name
    momentum = [s["momentum_buffer"] for s in optimizer.state.values()]
    assert len(momentum) == len(list(model.parameters()))
    assert all(torch.all(m == -float(step)) for m in momentum)
    return step


@pytest.mark.slow
def test_sigkill_during_save_never_leaves_a_broken_latest_checkpoint(tmp_path):
    """Kill a process that saves checkpoints back to back at random moments; the latest always loads."""
    rng = random.Random(0)
    interrupted_saves, last_step = 0, 0
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        try:
            first = child.stdout.readline().split()  # ["saved", step, seconds]
            assert first and first[0] == "saved", "the saving process died before its first save"
            time.sleep(rng.uniform(0.0, 2.5 * float(first[2])))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
        interrupted_saves += bool(leftovers)
        step = _check_latest_is_complete(tmp_path)
        assert step >= max(last_step, int(first[1]))
        last_step = step
    print(f"kills that interrupted a save or deletion: {interrupted_saves} of 6")


# ---------------------------------------------------------------------------------------------------
# Two ranks (gloo, real processes)

_RANK = textwrap.dedent(
    """
    import json, random, sys, torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    rank, run_dir, init_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from rlvr.logging import MetricsLogger
    from rlvr.training.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)  # the same weights on both ranks
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    torch.manual_seed(100 + rank), random.seed(100 + rank)  # different RNG streams per rank
    path = save_checkpoint(run_dir, 1, model=model, trainer_state={"x": 1})
    after_save = [torch.rand(2).tolist(), random.random()]
    torch.manual_seed(7), random.seed(7)
    state = load_checkpoint(path, model=model)
    after_load = [torch.rand(2).tolist(), random.random()]
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        logger.log(1, {"rank": float(rank)})
    print(json.dumps({"path": str(path), "save": after_save, "load": after_load, "state": state}))
    dist.barrier()  # both ranks done before either leaves the group (a rank that leaves early can abort)
    dist.destroy_process_group()
    """
)


@pytest.mark.slow  # two processes importing transformers: ~20 s on a busy 2-core machine
def test_two_ranks_rank_zero_writes_and_each_rank_gets_its_rng_back(tmp_path):
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK, str(r), str(tmp_path / "run"), str(tmp_path / "pg")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    run = tmp_path / "run"
    assert outputs[0]["path"] == outputs[1]["path"] == str(run / "checkpoints" / "step-000001")
    assert [o["state"] for o in outputs] == [{"x": 1, "step": 1}] * 2
    for o in outputs:
        assert o["load"] == o["save"]  # each rank continues its own stream
    assert outputs[0]["save"] != outputs[1]["save"]
    assert torch.load(run / "checkpoints/step-000001/rng.pt", weights_only=True)["world_size"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["rank"] == 0.0  # only rank 0 logged
