"""On-policy distillation in ``rlvr train`` (distill.teacher), on the shipped toy model.

The issue's invariant: a teacher equal to the student gives zero distillation advantage, so one step
changes nothing beyond what the task reward does. A different teacher (a tiny model built here on
the toy tokenizer) pulls the student toward it: the exact reverse KL on a fixed set of samples falls.
"""

import copy
import math

import pytest
import torch
from training_fixtures import tiny_model

from rlvr.config import load_config
from rlvr.errors import ConfigError
from rlvr.training.batch import aligned_micro_batches
from rlvr.training.trainer import Trainer
from rlvr.training.update import response_logits

TOY = [  # on the quickstart's task (the toy model's own split), small
    "task.params.num_train=64",
    "task.params.num_test=4",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=32",
    "optim.lr=1e-5",
    "optim.warmup_steps=0",
    "training.max_sampling_rounds=1",
    "eval.num_problems=4",
    "logging.tensorboard=false",
    "logging.sample_every=0",
]


def _trainer(tmp_path, *overrides: str) -> Trainer:
    config = load_config("recipes/quickstart.yaml", [*TOY, f"logging.output_dir={tmp_path}", *overrides])
    return Trainer(config, log=lambda *a: None)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny Qwen2 of its own random weights on the toy tokenizer: another model, one vocabulary."""
    from rlvr.toy.tokenizer import build_tokenizer

    path = tmp_path_factory.mktemp("teacher")
    tokenizer = build_tokenizer()
    tiny_model(len(tokenizer), seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --- the teacher equal to the student --------------------------------------------------------------


def test_teacher_equal_to_student_gives_zero_advantage_and_a_step_changes_nothing(tmp_path):
    trainer = _trainer(tmp_path, "distill.teacher=toy", "training.skip_zero_advantage=false")
    before = _params(trainer.model)
    rollouts = trainer.collector.collect(0)
    batch = trainer._make_batch(rollouts.groups).to(trainer.device)
    metrics = trainer.prepare_advantages(batch)
    assert torch.equal(batch.extra["teacher_logprobs"], batch.old_logprobs)
    assert torch.count_nonzero(batch.extra["advantages"]) == 0
    assert metrics["distill/reverse_kl"] == 0.0
    assert metrics["distill/teacher_logprob"] < 0
    trainer.learn(rollouts)
    after = _params(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("mode", ["advantage", "reward"])
def test_teacher_equal_to_student_leaves_the_task_reward_step_as_it_is(tmp_path, mode, monkeypatch):
    """With reward_weight 1 (advantage mode) or any coef (reward mode), a teacher equal to the student
    gives the advantages and the update of the same run without a teacher, bit for bit."""
    weight = ["distill.reward_weight=1.0"] if mode == "advantage" else ["distill.coef=0.5"]
    distilled = _trainer(tmp_path / "a", "distill.teacher=toy", f"distill.mode={mode}", *weight)
    plain = _trainer(tmp_path / "b")
    monkeypatch.setattr(plain, "_needs_recompute", lambda: True)  # the old logprobs of the same forward
    rollouts = plain.collector.collect(0)
    batches = []
    for trainer in (distilled, plain):
        batch = trainer._make_batch(copy.deepcopy(rollouts.groups)).to(trainer.device)
        trainer.prepare_advantages(batch)
        batches.append(batch)
    assert torch.equal(batches[0].extra["advantages"], batches[1].extra["advantages"])
    assert torch.count_nonzero(batches[1].extra["advantages"]) > 0  # the task reward trains something
    distilled.learn(copy.deepcopy(rollouts))
    plain.learn(copy.deepcopy(rollouts))
    a, b = _params(distilled.model), _params(plain.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- a different teacher ---------------------------------------------------------------------------


def _exact_reverse_kl(student, teacher, batch) -> float:
    """Mean over the response positions of KL(pi_student || pi_teacher), over the whole vocabulary."""
    total, count = 0.0, 0.0
    with torch.no_grad():
        for mb in aligned_micro_batches(batch, range(batch.size), 10**9):
            s = torch.log_softmax(response_logits(student, mb).double(), dim=-1)
            t = torch.log_softmax(response_logits(teacher, mb).double(), dim=-1)
            kl = (s.exp() * (s - t)).sum(-1)
            mask = batch.response_mask[mb.rows, : mb.response_width].double()
            total += float((kl * mask).sum())
            count += float(mask.sum())
    return total / count


def test_a_different_teacher_pulls_the_student_toward_it(tmp_path, teacher_dir):
    trainer = _trainer(
        tmp_path,
        "preset=opd",
        f"distill.teacher={teacher_dir}",
        "rollout.prompts_per_step=8",
        "optim.lr=3e-3",
    )
    probe = trainer._make_batch(trainer.collector.collect(0).groups).to(trainer.device)
    kl_before = _exact_reverse_kl(trainer.model, trainer.teacher, probe)  # about 4.1 nats
    history = [trainer.train_step(step) for step in range(6)]
    kl_after = _exact_reverse_kl(trainer.model, trainer.teacher, probe)  # about 0.7
    assert kl_after < 0.5 * kl_before, (kl_before, kl_after)
    reverse_kl = [m["distill/reverse_kl"] for m in history]
    assert all(math.isfinite(x) for x in reverse_kl)
    assert reverse_kl[-1] < reverse_kl[0], reverse_kl


def test_the_opd_preset_runs_two_steps_on_the_toy(tmp_path, teacher_dir):
    trainer = _trainer(tmp_path, "preset=opd", f"distill.teacher={teacher_dir}")
    assert trainer.config.distill.mode == "advantage" and trainer.config.algorithm.kl_coef == 0
    assert trainer.reference is None
    for step in range(2):
        metrics = trainer.train_step(step)
        for key in ("distill/reverse_kl", "distill/teacher_logprob", "loss/policy", "optim/grad_norm"):
            assert math.isfinite(metrics[key]), key
        assert metrics["distill/reverse_kl"] > 0  # a random teacher disagrees with the toy model
        assert metrics["optim/updates"] >= 1


def test_a_teacher_with_another_vocabulary_is_refused_naming_both(tmp_path):
    from rlvr.toy.tokenizer import build_tokenizer

    other = tmp_path / "other_teacher"
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(
        ConfigError, match=r"distill\.teacher.*other_teacher.*model\.path 'toy'.*82 tokens vs 81"
    ):
        _trainer(tmp_path / "run", f"distill.teacher={other}")


def test_a_missing_teacher_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"distill\.teacher.*no_such_dir"):
        _trainer(tmp_path, f"distill.teacher={tmp_path / 'no_such_dir'}")
