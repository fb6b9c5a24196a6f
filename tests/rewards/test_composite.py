import dataclasses
import re
import textwrap
import uuid

import pytest

from rlvr.errors import ConfigError, RLVRError, ShapeError, UnknownNameError
from rlvr.rewards.base import REWARDS, RewardBatch, RewardResult
from rlvr.rewards.composite import CompositeReward, resolve_reward
from rlvr.rewards.format import format_reward
from rlvr.tasks.base import Problem, RewardSpec

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@REWARDS.register("test_composite_exact", overwrite=True)
def exact_answer_verifier(batch: RewardBatch) -> RewardResult:
    """A small verifier: the last <answer> block must equal the problem's answer exactly."""
    correct, outcomes = [], []
    for completion, problem in zip(batch.completions, batch.problems, strict=True):
        found = _ANSWER.findall(completion)
        if not found:
            correct.append(False)
            outcomes.append("no_answer")
        else:
            correct.append(found[-1].strip() == problem.answer)
            outcomes.append("correct" if correct[-1] else "wrong")
    return RewardResult(
        values=[float(c) for c in correct],
        metrics={"graded": float(len(correct))},
        correct=correct,
        outcomes=outcomes,
    )


@REWARDS.register("test_composite_too_few", overwrite=True)
def too_few_values(batch: RewardBatch) -> RewardResult:
    return RewardResult(values=[0.0] * (len(batch.completions) - 1))


@REWARDS.register("test_composite_nan", overwrite=True)
def nan_values(batch: RewardBatch) -> RewardResult:
    return RewardResult(values=[float("nan")] * len(batch.completions))


@REWARDS.register("test_composite_not_a_result", overwrite=True)
def not_a_result(batch: RewardBatch) -> list[float]:
    return [0.0] * len(batch.completions)


@REWARDS.register("test_composite_needs_scale", overwrite=True)
def needs_scale(batch: RewardBatch, *, scale: float) -> RewardResult:
    return RewardResult(values=[scale] * len(batch.completions))


def five_completions() -> RewardBatch:
    completions = [
        "<think>a</think><answer>4</answer>",  # correct, well formed
        "<think>a</think><answer>5</answer>",  # wrong, well formed
        "<answer>4</answer>",  # correct, no think block
        "no answer here",  # no answer
        "<think>b</think><answer>9</answer>",  # correct, well formed
    ]
    answers = ["4", "4", "4", "9", "9"]
    return RewardBatch(
        completions=completions,
        problems=[Problem(id=f"p{i}", question="q", answer=a) for i, a in enumerate(answers)],
        response_lengths=[10, 20, 30, 5, 15],
        group_ids=[0, 0, 0, 1, 1],
        max_response_length=100,
    )


SPECS = [
    RewardSpec("test_composite_exact", weight=1.0),
    RewardSpec("format", weight=0.5),
    RewardSpec("kimi_length", weight=2.0),
]


def test_weighted_sum_and_correctness_flow_to_shaping_rewards():
    batch = five_completions()
    result = CompositeReward(SPECS)(batch)
    # verifier [1, 0, 1, 0, 1]; format [1, 1, 0, 0, 1];
    # kimi: group 0 lengths 10/20/30 -> lambda 0.5/0/-0.5, correct/wrong/correct -> [0.5, 0, -0.5];
    #       group 1 lengths 5/15 -> lambda 0.5/-0.5, wrong/correct -> [min(0, 0.5) = 0, -0.5].
    # total = v + 0.5 f + 2 k = [1 + 0.5 + 1, 0 + 0.5 + 0, 1 + 0 - 1, 0, 1 + 0.5 - 1] = [2.5, 0.5, 0, 0, 0.5].
    assert result.values == pytest.approx([2.5, 0.5, 0.0, 0.0, 0.5])
    assert result.correct == [True, False, True, False, True]
    assert result.outcomes == ["correct", "wrong", "correct", "no_answer", "correct"]
    assert batch.correct is None  # the caller's batch is not modified


def test_metrics_are_unweighted_component_means_and_verifier_statistics():
    metrics = CompositeReward(SPECS)(five_completions()).metrics
    assert metrics["reward/test_composite_exact"] == pytest.approx(3 / 5)
    assert metrics["reward/format"] == pytest.approx(3 / 5)  # unweighted: 0.5 is not applied
    assert metrics["reward/kimi_length"] == pytest.approx((0.5 + 0 - 0.5 + 0 - 0.5) / 5)  # -0.1
    assert metrics["reward/total"] == pytest.approx(3.5 / 5)
    assert metrics["reward/accuracy"] == pytest.approx(3 / 5)
    assert metrics["reward/outcome/correct"] == pytest.approx(3 / 5)
    assert metrics["reward/outcome/wrong"] == pytest.approx(1 / 5)
    assert metrics["reward/outcome/no_answer"] == pytest.approx(1 / 5)
    assert metrics["reward/test_composite_exact/graded"] == 5.0  # the verifier's own metric


def test_without_a_verifier_there_is_no_accuracy():
    result = CompositeReward([RewardSpec("format")])(five_completions())
    assert result.values == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert result.correct is None and result.outcomes is None
    assert set(result.metrics) == {"reward/format", "reward/total"}


def test_zero_weight_component_still_runs_and_reports():
    specs = [RewardSpec("test_composite_exact", weight=0.0), RewardSpec("cosine")]
    result = CompositeReward(specs)(five_completions())
    # cosine alone, T = 100, correct t = 10: 1 + 0.5 * (2 - 1) * (1 + cos(0.1 pi)) = 1 + 0.5 * 1.9510565 = 1.9755283;
    # the verifier, weight 0, adds nothing but still reports its mean and hands over `correct`.
    assert result.values[0] == pytest.approx(1.9755282581475768)
    assert result.metrics["reward/test_composite_exact"] == pytest.approx(0.6)


def test_mapping_specs_as_read_from_a_config_file():
    reward = CompositeReward(
        [
            {"name": "test_composite_exact"},
            {"name": "overlong", "weight": 1.0, "params": {"buffer_length": 20}},
        ]
    )
    # overlong: budget 100, buffer 20, free up to 80: nothing penalised here.
    assert reward(five_completions()).values == [1.0, 0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ConfigError, match="unknown key 'wieght'.*did you mean 'weight'"):
        CompositeReward([{"name": "format", "wieght": 1.0}])
    with pytest.raises(ConfigError, match="missing 'name'"):
        CompositeReward([{"weight": 1.0}])


def test_specs_from_a_config_dataclass():
    @dataclasses.dataclass
    class ConfiguredReward:  # the shape of a typed config section: name, weight, params
        name: str
        weight: float = 1.0
        params: dict = dataclasses.field(default_factory=dict)

    reward = CompositeReward([ConfiguredReward("format", 2.0, {"malformed": -1.0})])
    assert reward(five_completions()).values == [2.0, 2.0, -2.0, -2.0, 2.0]
    with pytest.raises(ConfigError, match=r"rewards\[0\] must be a RewardSpec"):
        CompositeReward(["format"])


def test_shaping_reward_before_the_verifier_explains_the_order():
    specs = [RewardSpec("kimi_length"), RewardSpec("test_composite_exact")]
    with pytest.raises(ConfigError, match="list the verifier before 'kimi_length'"):
        CompositeReward(specs)(five_completions())


def test_two_verifiers_are_refused():
    REWARDS.register("test_composite_exact_again", overwrite=True)(exact_answer_verifier)
    specs = [RewardSpec("test_composite_exact"), RewardSpec("test_composite_exact_again")]
    with pytest.raises(ConfigError, match="both return `correct`"):
        CompositeReward(specs)(five_completions())


def test_bad_results_name_the_component():
    batch = five_completions()
    with pytest.raises(ShapeError, match="'test_composite_too_few' returned 4 values for 5 completions"):
        CompositeReward([RewardSpec("format"), RewardSpec("test_composite_too_few")])(batch)
    with pytest.raises(RLVRError, match="'test_composite_nan' returned nan"):
        CompositeReward([RewardSpec("test_composite_nan")])(batch)
    with pytest.raises(ConfigError, match="'test_composite_not_a_result' returned a list"):
        CompositeReward([RewardSpec("test_composite_not_a_result")])(batch)


def test_config_errors_are_raised_when_the_reward_is_built():
    with pytest.raises(UnknownNameError, match="unknown reward 'overlng'; did you mean 'overlong'"):
        CompositeReward([RewardSpec("overlng")])
    with pytest.raises(ConfigError, match="no parameter 'bufer_length'; did you mean 'buffer_length'"):
        CompositeReward([RewardSpec("overlong", params={"bufer_length": 10})])
    with pytest.raises(ConfigError, match="requires the parameter 'scale'"):
        CompositeReward([RewardSpec("test_composite_needs_scale")])
    assert (
        CompositeReward([RewardSpec("test_composite_needs_scale", params={"scale": 2})])(
            five_completions()
        ).values
        == [2] * 5
    )
    with pytest.raises(ConfigError, match="listed twice"):
        CompositeReward([RewardSpec("format"), RewardSpec("format", weight=2.0)])
    with pytest.raises(ConfigError, match="weight must be a finite number"):
        CompositeReward([RewardSpec("format", weight=float("inf"))])
    with pytest.raises(ConfigError, match="non-empty list"):
        CompositeReward([])


def test_empty_batch_gives_no_values_and_no_means():
    empty = RewardBatch(
        completions=[], problems=[], response_lengths=[], group_ids=[], max_response_length=10
    )
    result = CompositeReward(SPECS)(empty)
    assert result.values == [] and result.correct == []
    assert result.metrics == {"reward/test_composite_exact/graded": 0.0}


def test_resolve_reward_registered_names():
    assert resolve_reward("format") is format_reward
    with pytest.raises(ConfigError, match="non-empty string"):
        resolve_reward("")


# --- plugins: "module:function" ---------------------------------------------------------------


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A real module on sys.path with a user reward, an unusable attribute and a broken sibling."""
    name = f"user_rewards_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from rlvr.rewards.base import RewardResult

            def brevity(batch, *, per_char=0.01):
                return RewardResult(values=[-per_char * len(c) for c in batch.completions])

            class Holder:
                @staticmethod
                def zero(batch):
                    return RewardResult(values=[0.0] * len(batch.completions))

            NOT_CALLABLE = 3
            """
        )
    )
    (tmp_path / f"{name}_broken.py").write_text("import a_dependency_that_is_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_plugin_reward_is_used_like_a_registered_one(plugin_module):
    batch = five_completions()
    reward = CompositeReward([RewardSpec(f"{plugin_module}:brevity", weight=2.0, params={"per_char": 0.1})])
    # 2 * -0.1 * len: lengths 34, 34, 18, 14, 34.
    assert reward(batch).values == pytest.approx([-6.8, -6.8, -3.6, -2.8, -6.8])
    assert f"reward/{plugin_module}:brevity" in reward(batch).metrics
    assert resolve_reward(f"{plugin_module}:Holder.zero")(batch).values == [0.0] * 5


def test_plugin_path_errors_name_the_path(plugin_module):
    with pytest.raises(ConfigError, match="'no_such_module_xyz:fn': no module named 'no_such_module_xyz'"):
        resolve_reward("no_such_module_xyz:fn")
    with pytest.raises(
        ConfigError, match=f"'{plugin_module}' has no attribute 'brevty'; did you mean 'brevity'"
    ):
        resolve_reward(f"{plugin_module}:brevty")
    with pytest.raises(ConfigError, match="is not callable \\(type int\\)"):
        resolve_reward(f"{plugin_module}:NOT_CALLABLE")
    with pytest.raises(
        ConfigError, match="importing .*_broken' failed.*a_dependency_that_is_not_installed_xyz"
    ):
        resolve_reward(f"{plugin_module}_broken:fn")
    with pytest.raises(ConfigError, match="must look like 'package.module:function'"):
        resolve_reward(f"{plugin_module}:")
    with pytest.raises(ConfigError, match="no parameter 'per_chr'"):
        CompositeReward([RewardSpec(f"{plugin_module}:brevity", params={"per_chr": 1})])


# --- metrics on N ranks equal the metrics of the same global batch on one rank ---------------


def _split(batch: RewardBatch, rows: list[int]) -> RewardBatch:
    return RewardBatch(
        completions=[batch.completions[i] for i in rows],
        problems=[batch.problems[i] for i in rows],
        response_lengths=[batch.response_lengths[i] for i in rows],
        group_ids=[batch.group_ids[i] for i in rows],
        max_response_length=batch.max_response_length,
    )


def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = [0, 1, 2] if rank == 0 else [3, 4]  # uneven halves; each group stays on one rank
        metrics = CompositeReward(SPECS)(_split(five_completions(), rows)).metrics
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(metrics, f)
        dist.barrier()  # both ranks done before either leaves the group
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_on_two_ranks_equal_one_rank(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = CompositeReward(SPECS)(five_completions()).metrics
    for rank in (0, 1):
        metrics = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for key in ("reward/total", "reward/accuracy", "reward/kimi_length", "reward/outcome/wrong"):
            assert metrics[key] == pytest.approx(single[key]), key


def test_with_the_math_verifier():
    pytest.importorskip("rlvr.rewards.math")
    batch = RewardBatch(
        completions=[
            "<think>2+2</think><answer>\\boxed{4}</answer>",
            "<think>2+2</think><answer>\\boxed{5}</answer>",
        ],
        problems=[
            Problem(id="p0", question="2+2?", answer="4"),
            Problem(id="p1", question="2+2?", answer="4"),
        ],
        response_lengths=[10, 10],
        group_ids=[0, 0],
        max_response_length=100,
    )
    result = CompositeReward([RewardSpec("math"), RewardSpec("kimi_length")])(batch)
    assert result.correct == [True, False]
    assert result.metrics["reward/accuracy"] == 0.5
    assert result.metrics["reward/kimi_length"] == 0.0  # equal lengths: lambda = 0


def test_a_timed_out_check_is_its_own_outcome_in_the_metrics():
    # A real sandbox: the looping program's check runs out of time twice (0.5 s, then 1 s). It
    # scores like a wrong answer, is not correct, and is counted as a timeout, not as wrong.
    square = "def square(x):\n    return x * x\n"
    problem = Problem(id="sq", question="Square x.", answer={"tests": ["assert square(3) == 9"]})
    completions = [f"```python\n{square}```", f"```python\n{square}while True:\n    pass\n```", "none"]
    batch = RewardBatch(completions=completions, problems=[problem] * 3)
    reward = CompositeReward([RewardSpec("code", params={"timeout_s": 0.5, "retry_timeout_s": 1.0})])
    result = reward(batch)
    assert result.outcomes == ["correct", "timeout", "no_answer"]
    assert result.values == [1.0, 0.0, 0.0] and result.correct == [True, False, False]
    m = result.metrics
    assert m["reward/outcome/timeout"] == pytest.approx(1 / 3)
    assert m["reward/outcome/wrong"] == 0.0 and m["reward/accuracy"] == pytest.approx(1 / 3)
    assert m["reward/code/timeouts"] == pytest.approx(1 / 3) and m["reward/code/retried"] == pytest.approx(
        1 / 3
    )
