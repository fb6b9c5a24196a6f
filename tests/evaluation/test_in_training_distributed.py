"""Evaluation during training on 2 ranks (gloo, CPU) gives the metrics of 1 rank."""

import json

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from rlvr.config import load_config

SETTINGS = [
    "task.params.num_train=16",
    "task.params.num_test=5",  # odd: the ranks get 3 and 2 problems
    "eval.samples_per_problem=2",
    "eval.temperature=0",
    "rollout.max_new_tokens=12",
]


def _evaluate() -> dict[str, float]:
    from rlvr.evaluation.in_training import TrainingEvaluator
    from rlvr.rollout.hf_engine import HFEngine
    from rlvr.training.model import load_policy, load_tokenizer
    from rlvr.training.setup import build_task

    config = load_config("recipes/quickstart.yaml", SETTINGS)
    tokenizer = load_tokenizer(config.model)
    model = load_policy(config.model, __import__("torch").device("cpu"))
    evaluator = TrainingEvaluator(config, build_task(config))
    return evaluator(HFEngine(model, tokenizer), tokenizer)


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metrics = _evaluate()
        with open(f"{out}.{rank}", "w") as f:
            json.dump(metrics, f)
        dist.barrier()  # both ranks done before either leaves the group
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_evaluate_like_one(tmp_path):
    single = _evaluate()
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "metrics")), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"metrics.{rank}").read_text()) == single
    assert set(single) >= {"eval/accuracy", "eval/arithmetic/avg@1", "eval/arithmetic/length_mean"}
