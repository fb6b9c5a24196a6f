"""Rollout/trainer mismatch on the toy model: does the metric see it, and what does the correction do?

Short real trainings of the embedded toy model with the quickstart recipe (``recipes/quickstart.yaml``:
GRPO, 16 prompts x 8 samples, 48 new tokens, lr 1e-4 with 10 warmup steps, one optimizer step per
rollout step, one CPU thread), ``--steps`` steps each, in these runs:

- ``a``: on-policy float32 (the recipe as it is): the sampler and the trainer are the same float32
  model, so the log-ratio should be ~0 (float32 kernel differences only);
- ``b``: ``rollout.generate_ahead: true``: each step's completions were sampled by the weights one
  update older, so ``log pi_old - log mu`` is the change of one update;
- ``c``: ``rollout.autocast: bfloat16``: the sampler runs under bfloat16 autocast, the trainer in
  float32 (its old logprobs recomputed in float32);
- ``b`` and ``c`` each with ``+TIS`` (``algorithm.mismatch_is: token``, cap 2), ``+MIS``
  (``algorithm.mismatch_mask: token``, band [0.5, 2]), ``+IcePop`` (both: IcePop's weight, the ratio
  inside [0.5, 2] and 0 outside) and ``+MIS5`` (the mask with a band of [0.95, 1.05], far tighter
  than the defaults, to see the mask act on a small mismatch); ``a+TIS`` is the control (the
  correction should do nothing on an on-policy batch).

Every step, before the run's own update and on the same batch (same weights, same rollouts), the
script computes the mini-batch's accumulated policy gradient (before clipping) twice, with the
optimizer step left out:

- ``g_off``: as the trainer computes it with no correction (old logprobs: the rollout's in float32,
  recomputed in float32 after a bfloat16 rollout);
- ``g_on``: with the run's correction (for ``a``, ``b``, ``c``: none, so not reported);

and the ``mismatch/*`` metrics. The trainer logs them only when a correction is on; for the runs
without one they come from the same side pass with a band that drops nothing (``mismatch_mask:
token``, ``mismatch_mask_low: 0``, ``mismatch_mask_high: 1e300``), so the run itself is unchanged.
For the corrected runs they are the ones the trainer logged.

Reported per run (means over steps 1 .. steps-1: step 0 of ``b`` is sampled in the step, on-policy;
``max |delta|`` is the largest over those steps): the log-ratio mean, the largest ``|delta_t|``, the
k3 KL(mu || pi_old), the fractions of response tokens the correction truncated or masked, the mean
TIS weight, and the gradient change ``|g_on - g_off| / |g_off|`` with ``cos(g_on, g_off)`` and
``|g_on| / |g_off|`` (over the steps with a nonzero gradient); the fraction of response tokens
whose gradient PPO's clip removed in ``g_off`` (``policy/clipfrac_low + clipfrac_high``); and the
mean training accuracy (``reward/accuracy``). For ``+TIS`` it also prints ``free_change_max``: the
largest change over the steps between the two updates with PPO's clip (``eps_low = eps_high = 1e6``)
and TIS's cap (``mismatch_is_cap = 1e6``) out of the way. Where the uncorrected old logprobs are the
rollout's (``a``, ``b``) both are then ``r_t A_t grad log pi`` and should agree to rounding; after a
bfloat16 rollout they are recomputed, so what is left is TIS's weight ``r_t`` itself.
The twelve default runs of 16 steps take about 6 minutes on one core. Run::

    OMP_NUM_THREADS=1 python benchmarks/mismatch.py --steps 16 [--runs a,b,b+TIS] [--output FILE.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rlvr.algorithms.config import AlgorithmConfig
from rlvr.config import load_config
from rlvr.training.trainer import Trainer
from rlvr.training.update import policy_update

RECIPE = "recipes/quickstart.yaml"
COMMON = [
    "checkpoint.every=0",
    "logging.sample_every=0",
    "logging.tensorboard=false",
    "training.cpu_threads=1",
]
SOURCES = {
    "a": [],
    "b": ["rollout.generate_ahead=true"],
    "c": ["rollout.autocast=bfloat16"],
}
CORRECTIONS = {
    "": [],
    "TIS": ["algorithm.mismatch_is=token", "algorithm.mismatch_is_cap=2.0"],
    "MIS": [
        "algorithm.mismatch_mask=token",
        "algorithm.mismatch_mask_low=0.5",
        "algorithm.mismatch_mask_high=2.0",
    ],
    "IcePop": [  # TIS with cap >= the band's top, plus the mask: IcePop's k inside [0.5, 2], 0 outside
        "algorithm.mismatch_is=token",
        "algorithm.mismatch_is_cap=2.0",
        "algorithm.mismatch_mask=token",
        "algorithm.mismatch_mask_low=0.5",
        "algorithm.mismatch_mask_high=2.0",
    ],
    "MIS5": [  # a band far tighter than the defaults, so that the mask acts on this small mismatch
        "algorithm.mismatch_mask=token",
        "algorithm.mismatch_mask_low=0.95",
        "algorithm.mismatch_mask_high=1.05",
    ],
}
DEFAULT_RUNS = (
    "a",
    "a+TIS",
    "b",
    "b+TIS",
    "b+MIS",
    "b+IcePop",
    "b+MIS5",
    "c",
    "c+TIS",
    "c+MIS",
    "c+IcePop",
    "c+MIS5",
)
MISMATCH_OFF = dict(mismatch_is="none", mismatch_mask="none", mismatch_opsm_delta=None)
"""Every correction off (the AlgorithmConfig fields)."""
METRIC_ONLY = dict(mismatch_mask="token", mismatch_mask_low=0.0, mismatch_mask_high=1e300)
"""A band that keeps every finite ratio: the metrics without changing the advantages."""


def run_overrides(run: str, steps: int, output_dir: Path) -> list[str]:
    source, _, correction = run.partition("+")
    return [
        *COMMON,
        *SOURCES[source],
        *CORRECTIONS[correction],
        f"training.steps={steps}",
        f"logging.output_dir={output_dir}",
    ]


class _NoStep:
    """An optimizer and a scheduler that leave the weights alone (the side pass only reads gradients)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=True)

    def get_last_lr(self) -> list[float]:
        return [0.0]


def side_update(trainer: Trainer, rollouts: Any, algorithm: AlgorithmConfig) -> tuple[dict, torch.Tensor]:
    """The metrics and the accumulated policy gradient (before clipping) of the step's update with
    ``algorithm`` on ``rollouts``, at the current weights; the weights do not move."""
    config = trainer.config
    trainer.config = dataclasses.replace(config, algorithm=algorithm)
    try:
        batch = trainer._make_batch(rollouts.groups).to(trainer.device)
        trainer.prepare_advantages(batch)  # old logprobs (recomputed where this algorithm needs it)
        grads: list[torch.Tensor] = []

        def capture(params: list[torch.nn.Parameter]) -> None:
            grads.append(
                torch.cat(
                    [
                        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().double()
                        for p in params
                    ]
                )
            )

        nothing = _NoStep(trainer.model)
        metrics = policy_update(
            model=trainer.model,
            optimizer=nothing,  # type: ignore[arg-type]
            scheduler=nothing,
            batch=batch,
            algorithm=algorithm,
            settings=trainer.update_settings,
            generator=torch.Generator().manual_seed(0),
            schedule=[torch.arange(batch.size)],  # the recipe's one mini-batch of every completion
            reduce_gradients=capture,
        )
        trainer.model.zero_grad(set_to_none=True)
        return metrics, grads[0]
    finally:
        trainer.config = config


def instrument(trainer: Trainer, corrected: bool, record: list[dict]) -> None:
    """Before each update of ``trainer``, the side passes on the same rollouts; after it, the logged
    metrics. One dict per step goes to ``record``."""
    learn = trainer.learn
    algorithm = trainer.config.algorithm

    def learn_and_compare(rollouts: Any, *, start_time: float | None = None) -> dict[str, float]:
        off = dataclasses.replace(algorithm, **MISMATCH_OFF)
        off_metrics, g_off = side_update(trainer, rollouts, off)
        clipped = off_metrics.get("policy/clipfrac_low", 0.0) + off_metrics.get("policy/clipfrac_high", 0.0)
        side: dict[str, Any] = {"g_off": g_off, "clipped_off": clipped}
        if corrected:
            side["metrics"], side["g_on"] = side_update(trainer, rollouts, algorithm)
            if algorithm.mismatch_is == "token" and algorithm.mismatch_mask == "none":
                # With PPO's clip and TIS's cap out of the way, and the rollout's logprobs as the
                # uncorrected old ones, both are r_t * A_t * grad log pi (ratio to mu, or r_t at ratio 1).
                free = dict(eps_low=1e6, eps_high=1e6)
                _, g_free_off = side_update(trainer, rollouts, dataclasses.replace(off, **free))
                _, g_free_on = side_update(
                    trainer, rollouts, dataclasses.replace(algorithm, mismatch_is_cap=1e6, **free)
                )
                side["free_change"] = float((g_free_on - g_free_off).norm()) / max(
                    float(g_free_off.norm()), 1e-300
                )
        else:
            side["metrics"], _ = side_update(trainer, rollouts, dataclasses.replace(off, **METRIC_ONLY))
        logged = learn(rollouts, start_time=start_time)
        record.append({"side": side, "logged": logged})
        return logged

    trainer.learn = learn_and_compare  # type: ignore[method-assign]


def summarize(run: str, record: list[dict]) -> dict[str, float]:
    corrected = "+" in run
    steps = record[1:] or record  # step 0 of generate_ahead is on-policy
    mism = [r["logged"] if corrected else r["side"]["metrics"] for r in steps]

    def mean(key: str, rows: list[dict]) -> float:
        values = [r[key] for r in rows if key in r and math.isfinite(r[key])]
        return sum(values) / len(values) if values else float("nan")

    out = {
        "log_ratio_mean": mean("mismatch/log_ratio_mean", mism),
        "abs_log_ratio_max": max(r.get("mismatch/abs_log_ratio_max", float("nan")) for r in mism),
        "k3_kl": mean("mismatch/k3_kl", mism),
        "nonfinite_fraction": mean("mismatch/nonfinite_fraction", mism),
        "is_truncated_fraction": mean("mismatch/is_truncated_fraction", mism),
        "is_weight_mean": mean("mismatch/is_weight_mean", mism),
        "masked_fraction": mean("mismatch/masked_fraction", mism),
        "reward": mean("reward/accuracy", [r["logged"] for r in record]),
        "clipped_off": sum(r["side"]["clipped_off"] for r in steps) / len(steps),
    }
    if corrected:
        # the logged metrics are those of the side pass with the same algorithm and weights
        drift = [abs(r["side"]["metrics"]["mismatch/k3_kl"] - r["logged"]["mismatch/k3_kl"]) for r in record]
        out["logged_vs_side_k3_max_diff"] = max(drift)
        changes, cosines, ratios = [], [], []
        for r in steps:
            g_off, g_on = r["side"]["g_off"], r["side"]["g_on"]
            norm = float(g_off.norm())
            if norm == 0.0:  # every group had equal rewards: no gradient either way
                continue
            changes.append(float((g_on - g_off).norm()) / norm)
            cosines.append(float(torch.dot(g_on, g_off)) / (norm * max(float(g_on.norm()), 1e-300)))
            ratios.append(float(g_on.norm()) / norm)
        out["grad_change"] = sum(changes) / len(changes) if changes else float("nan")
        out["grad_change_max"] = max(changes) if changes else float("nan")
        out["grad_cos"] = sum(cosines) / len(cosines) if cosines else float("nan")
        out["grad_norm_ratio"] = sum(ratios) / len(ratios) if ratios else float("nan")
        out["steps_with_gradient"] = float(len(changes))
        free = [r["side"]["free_change"] for r in steps if "free_change" in r["side"]]
        out["free_change_max"] = max(free) if free else float("nan")
    return out


def _fmt(x: float, pattern: str = ".2e") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, pattern)


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.2g}%"


def table(rows: list[tuple[str, dict[str, float], float]], steps: int) -> str:
    lines = [
        "| run | log-ratio mean | max abs log-ratio | k3 KL | truncated | TIS weight mean | masked "
        "| PPO-clipped w/o correction | grad change | cos | norm ratio | train accuracy | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, s, seconds in rows:
        lines.append(
            f"| `{run}` | {_fmt(s['log_ratio_mean'], '+.2e')} | {_fmt(s['abs_log_ratio_max'], '.3g')} "
            f"| {_fmt(s['k3_kl'])} | {_pct(s['is_truncated_fraction'])} "
            f"| {_fmt(s['is_weight_mean'], '.5f')} | {_pct(s['masked_fraction'])} "
            f"| {_pct(s['clipped_off'])} | {_fmt(s.get('grad_change', float('nan')))} | {_fmt(s.get('grad_cos', float('nan')), '.6f')} "
            f"| {_fmt(s.get('grad_norm_ratio', float('nan')), '.5f')} | {s['reward']:.3f} | {seconds:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="comma-separated, e.g. a,b,b+TIS")
    parser.add_argument("--output", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    rows = []
    for run in args.runs.split(","):
        out = Path(tempfile.mkdtemp(prefix=f"rlvr-mismatch-{run.replace('+', '-')}-"))
        config = load_config(RECIPE, run_overrides(run, args.steps, out))
        start = time.perf_counter()
        trainer = Trainer(config, log=lambda *a: None)
        record: list[dict] = []
        instrument(trainer, "+" in run, record)
        for step in range(args.steps):
            trainer.train_step(step)
            trainer.step += 1
        seconds = time.perf_counter() - start
        summary = summarize(run, record)
        rows.append((run, summary, seconds))
        print(json.dumps({"run": run, **summary, "seconds": round(seconds, 1)}), flush=True)
    text = table(rows, args.steps)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
