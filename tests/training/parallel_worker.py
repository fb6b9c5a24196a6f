"""The training side of tests/training/test_parallel.py, run in one process or under torchrun.

    python parallel_worker.py make GROUPS                      real rollouts of the toy model, saved
    [torchrun --nproc_per_node N] parallel_worker.py learn GROUPS OUT STRATEGY SPLIT PRESET...
        one learning step of every preset on the saved rollouts; rank 0 saves the updated weights
        and the metrics to OUT/<preset>.pt
    [torchrun ...] parallel_worker.py filtered OUT STRATEGY
        one dynamic-sampling step in which every group of rank 1 is filtered out
    [torchrun ...] parallel_worker.py ahead OUT STRATEGY
        three steps with rollout.generate_ahead; what the generating copy held after each
    python parallel_worker.py make-agent GROUPS                multi-turn trajectories (calculator), saved
    [torchrun ...] parallel_worker.py learn-agent GROUPS OUT STRATEGY SPLIT PRESET...
        as ``learn``, on the trajectories, in env mode (docs/agents.md); a preset may end in
        ``+turn_rewards`` (env.turn_rewards: each step's reward on its turn's last sampled token)
    [torchrun ...] parallel_worker.py learn-agent-turns GROUPS OUT STRATEGY SPLIT PRESET...
        as ``learn-agent``, each trajectory split into one row per turn (as for a chat template
        that rewrites earlier turns)
    [torchrun ...] parallel_worker.py agent-step OUT STRATEGY
        one whole env-mode step; each rank saves its metrics and its own trajectories

SPLIT ``alternate`` gives rank r the groups at positions r, r + N, ...; ``first`` gives them all to
rank 0, so that the other ranks learn from nothing and only take part in the collectives.
"""

from __future__ import annotations

import dataclasses
import pickle
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from rlvr.algorithms.presets import PRESETS
from rlvr.config import load_config
from rlvr.distributed import init_from_environment, rank, shutdown, world_size
from rlvr.rollout.types import SamplingParams
from rlvr.training.rollouts import ScoredGroup, StepRollouts
from rlvr.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent.parent / "envs"))  # the environment tests' fixtures
from env_fixtures import CALCULATOR_RUN, split_into_turns  # noqa: E402

REWARDS = [[1, 0, 0, 1], [0, 0, 0, 1], [1, 1, 1, 1], [0, 1, 1, 0]]
"""Per group: mixed, one correct, all correct (a zero-variance group), mixed."""


def settings(preset: str, strategy: str, out: str, teacher: str = "toy") -> list[str]:
    """The run's settings; ``strategy`` may end in ``+checkpointing`` (activation checkpointing);
    ``teacher``: the model a distilling preset learns from."""
    strategy, _, extra = strategy.partition("+")
    return [
        *(["model.gradient_checkpointing=true"] if extra == "checkpointing" else []),
        f"preset={preset}",
        *([f"distill.teacher={teacher}"] if "distill.mode" in PRESETS.get(preset).settings else []),
        # pass@k learns only with k below the group size (4 here)
        *(["algorithm.passk_k=2"] if PRESETS.get(preset).algorithm.advantage == "passk" else []),
        "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=12",
        "training.updates_per_step=2",  # two mini-batches: their rows must not depend on the ranks
        "training.micro_batch_tokens=96",  # several micro-batches, in different numbers per rank
        "training.cpu_threads=1",
        "optim.lr=1e-4",
        "optim.warmup_steps=0",
        "critic.pretrain_steps=0",
        "critic.lr=1e-4",
        "task.params.num_train=16",
        "task.params.num_test=2",
        f"parallel.strategy={strategy}",
        f"logging.output_dir={out}",
    ]


AGENT = CALCULATOR_RUN
"""Env mode: the toy model with the calculator tool, turns short enough for a quick test."""


def agent_settings(preset: str, strategy: str, out: str) -> list[str]:
    preset, _, extra = preset.partition("+")
    return [
        *settings(preset, strategy, out),
        *AGENT,
        *(["env.turn_rewards=true"] if extra == "turn_rewards" else []),
    ]


def make_agent_groups(path: str) -> None:
    """Trajectories of the toy model with the calculator (observation tokens are holes of their
    masks), 4 per problem, with the rewards of REWARDS so that every kind of group is there; the
    last turn of each trajectory carries its reward (for env.turn_rewards)."""
    trainer = Trainer(
        load_config(None, agent_settings("grpo", "none", str(Path(path).parent / "make-agent")))
    )
    problems = list(trainer.task.train)[:4]
    sampling = dataclasses.replace(trainer.sampling, n=4, temperature=1.0, seed=3)
    trajectories = trainer.episodes.run(trainer.engine, problems, sampling)
    assert all(t.error is None for t in trajectories)
    assert any(0 in t.mask for t in trajectories), "no observation tokens: the tool was never called"
    groups = []
    for g in range(4):
        mine = trajectories[4 * g : 4 * g + 4]
        for t, r in zip(mine, REWARDS[g], strict=True):
            t.reward, t.correct = float(r), bool(r)
            t.turn_rewards = [0.0] * (len(t.turn_ends) - 1) + [float(r)]
        groups.append(
            ScoredGroup(
                prompt_index=g,
                completions=mine,
                rewards=[float(r) for r in REWARDS[g]],
                correct=[bool(r) for r in REWARDS[g]],
                outcomes=["correct" if r else "wrong" for r in REWARDS[g]],
                position=g,
            )
        )
    Path(path).write_bytes(pickle.dumps(groups))


def agent_step(out: str, strategy: str) -> None:
    """One env-mode step (generation with the environments included): rank r saves the step's
    metrics and the trajectories it generated to OUT/agent-rank<r>.pt."""
    trainer = Trainer(
        load_config(None, agent_settings("grpo", strategy, f"{out}/run-agent")), log=lambda s: None
    )
    mine = []
    run = trainer.episodes.run

    def recording(*args, **kwargs):
        trajectories = run(*args, **kwargs)
        mine.extend(trajectories)
        return trajectories

    trainer.episodes.run = recording
    metrics = trainer.train_step(0)
    torch.save({"metrics": metrics, "trajectories": mine}, f"{out}/agent-rank{rank()}.pt")


def make_groups(path: str) -> None:
    trainer = Trainer(load_config(None, settings("grpo", "none", str(Path(path).parent / "make"))))
    prompts = trainer.train_prompts[:4]
    completions = trainer.engine.generate(
        prompts, SamplingParams(n=4, max_new_tokens=12, temperature=1.0, seed=3)
    )
    groups = [
        ScoredGroup(
            prompt_index=g,
            completions=completions[4 * g : 4 * g + 4],
            rewards=[float(r) for r in REWARDS[g]],
            correct=[bool(r) for r in REWARDS[g]],
            outcomes=["correct" if r else "wrong" for r in REWARDS[g]],
            position=g,
        )
        for g in range(4)
    ]
    Path(path).write_bytes(pickle.dumps(groups))
    torch.manual_seed(5)  # a teacher for the distilling presets: the toy, moved away from it
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.model.save_pretrained(teacher_dir(path))
    trainer.tokenizer.save_pretrained(teacher_dir(path))


def teacher_dir(groups_path: str) -> str:
    return str(Path(groups_path).parent / "teacher")


def full_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every weight of the policy and the critic, gathered (a collective under fsdp2)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(trainer.model, options=options)
    if trainer.critic is not None:
        critic = get_model_state_dict(trainer.critic.model, options=options)
        weights.update({f"critic.{k}": v for k, v in critic.items()})
    return weights


def learn(
    groups_path: str,
    out: str,
    strategy: str,
    split: str,
    presets: list[str],
    agent: bool = False,
    turns: bool = False,
) -> None:
    """``turns``: every trajectory split into one row per turn (as for a chat template that
    rewrites earlier turns)."""
    groups: list[ScoredGroup] = pickle.loads(Path(groups_path).read_bytes())
    if turns:
        groups = [
            dataclasses.replace(g, completions=[split_into_turns(t) for t in g.completions]) for g in groups
        ]
    if split == "alternate":
        mine = [g for g in groups if g.position % world_size() == rank()]
    else:
        mine = groups if rank() == 0 else []
    for preset in presets:
        if agent:
            overrides = agent_settings(preset, strategy, f"{out}/run-{preset}")
        else:
            overrides = settings(preset, strategy, f"{out}/run-{preset}", teacher_dir(groups_path))
        trainer = Trainer(load_config(None, overrides), log=lambda s: None)
        metrics = trainer.learn(StepRollouts(groups=mine))
        weights = full_weights(trainer)
        if rank() == 0:
            torch.save({"weights": weights, "metrics": metrics}, f"{out}/{preset}.pt")


def filtered_step(out: str, strategy: str) -> None:
    """DAPO's dynamic sampling with a reward that is 0 for every completion of rank 1."""
    config = load_config(
        None,
        [
            *settings("dapo", strategy, f"{out}/run-filtered"),
            "training.max_sampling_rounds=3",
            "task.rewards=[{name: 'rank_reward:reward_on_rank_0_only'}]",
        ],
    )
    trainer = Trainer(config, log=lambda s: None)
    metrics = trainer.train_step(0)
    weights = full_weights(trainer)
    if rank() == 0:
        torch.save({"weights": weights, "metrics": metrics}, f"{out}/filtered.pt")


def generate_ahead_steps(out: str, strategy: str) -> None:
    """Three steps generating ahead: before step t's update the generating copy must hold the full
    weights after step t - 1 (gathered from the shards under fsdp2)."""
    overrides = [
        *settings("grpo", strategy, f"{out}/run-ahead"),
        "rollout.generate_ahead=true",
        "training.steps=3",
    ]
    config = load_config(None, overrides)
    trainer = Trainer(config, log=lambda s: None)
    report = []
    for step in range(3):
        before = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
        metrics = trainer.train_step(step)
        copy = trainer.ahead.model.state_dict()
        report.append(
            {
                "pending": trainer.ahead.pending[0] if trainer.ahead.pending else None,
                "copy_differs": max((copy[k] - before[k]).abs().max().item() for k in before),
                "accuracy": metrics["reward/accuracy"],
            }
        )
    torch.save(report, f"{out}/ahead-rank{rank()}.pt")


def main(argv: list[str]) -> None:
    command, *args = argv
    init_from_environment(timeout_s=120, use_cuda=False)
    learning = command in ("learn", "learn-agent", "learn-agent-turns")
    Path(args[1] if learning else args[0]).parent.mkdir(parents=True, exist_ok=True)
    if command not in ("make", "make-agent"):
        Path(args[1] if learning else args[0]).mkdir(parents=True, exist_ok=True)
    finished = False
    try:
        if command == "make":
            make_groups(*args)
        elif command == "learn":
            learn(args[0], args[1], args[2], args[3], args[4:])
        elif command == "make-agent":
            make_agent_groups(*args)
        elif command == "learn-agent":
            learn(args[0], args[1], args[2], args[3], args[4:], agent=True)
        elif command == "learn-agent-turns":
            learn(args[0], args[1], args[2], args[3], args[4:], agent=True, turns=True)
        elif command == "filtered":
            filtered_step(*args)
        elif command == "agent-step":
            agent_step(*args)
        elif command == "ahead":
            generate_ahead_steps(*args)
        else:
            raise SystemExit(f"unknown command {command}")
        finished = True
    finally:
        shutdown(synchronize=finished)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # rank_reward
    main(sys.argv[1:])
