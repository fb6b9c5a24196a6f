"""The ``rlvr`` command line: thin — parse, build, call.

rlvr train CONFIG [key=value ...] [--resume | --force-resume | --overwrite]
rlvr eval [MODEL_OR_RUN_DIR] [CONFIG.yaml] [key=value ...] [--benchmarks a,b] [--n N] ...
rlvr config show [CONFIG] [key=value ...]
rlvr presets
rlvr plan CONFIG [key=value ...] [--nproc N] [--device-memory 80GB] [--device cpu|cuda]
rlvr toy build [NAME] [--output DIR] [--seed N]
rlvr plot RUN_DIR
rlvr merge MODEL_A MODEL_B [...] --output DIR [--weights W ...] [--base BASE] [key=value ...]
rlvr sft CONFIG [key=value ...] [--resume | --overwrite]
rlvr dpo CONFIG [key=value ...] [--resume | --overwrite]
rlvr sample MODEL_OR_RUN_DIR [CONFIG.yaml] [key=value ...] [--n N] [--select RULE] [--output DIR] ...
rlvr pipeline FILE [--from STAGE] [--dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rlvr.errors import RLVRError


def _split_config_and_overrides(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """``CONFIG key=value ...``: the config file is the first item without an ``=``, if any."""
    if items and "=" not in items[0]:
        return items[0], list(items[1:])
    return None, list(items)


def _train(args: argparse.Namespace) -> int:
    from rlvr.config import load_config

    path, overrides = _split_config_and_overrides(args.items)
    config = load_config(path, overrides)  # every key checked before any model loads
    from rlvr.config import to_dict
    from rlvr.distributed import rank, restart_count, shutdown, world_size
    from rlvr.training.run_dir import check_run_dir
    from rlvr.training.setup import build_task

    # A group torchrun restarted (--max-restarts) resumes from the last checkpoint, never overwrites.
    run_dir_flags = {
        "resume": args.resume or restart_count() > 0,
        "overwrite": args.overwrite and restart_count() == 0,
        "force_resume": args.force_resume,
    }
    # The run directory, then the data, before the model code is even imported: a refusal or a bad
    # row comes at once, not after the weights load.
    check_run_dir(config.logging.output_dir, to_dict(config), **run_dir_flags)
    task = build_task(config)
    from rlvr.training.trainer import train

    finished = False
    try:
        result = train(config, task=task, **run_dir_flags)
        speaks = rank() == 0
        finished = True
    except RuntimeError as err:
        if not _lost_a_rank(err):
            raise
        raise SystemExit(
            f"rank {rank()} of {world_size()}: training stopped because a collective with the other ranks "
            f"failed: {str(err).splitlines()[0][:300]}\nAnother rank has most likely died: its own error, and "
            "torchrun's summary naming its rank, are in the log. With torchrun --max-restarts N the group "
            "restarts and resumes from the last checkpoint."
        ) from None
    finally:
        shutdown(synchronize=finished)
    if not speaks:  # one summary, from rank 0
        return 0
    before = result.eval_before.get("eval/accuracy")
    after = result.eval_after.get("eval/accuracy")
    if result.interrupted:
        print(f"stopped at step {result.steps}; continue with: rlvr train {' '.join(args.items)} --resume")
        return 130
    if args.plot:
        from rlvr.plot import plot_run

        for png in plot_run(result.output_dir):
            print(f"plot: {png}")
    if before is not None and after is not None:
        print(f"held-out accuracy: {before:.1%} before -> {after:.1%} after {result.steps} steps")
    print(f"run directory: {result.output_dir} (final model in {result.output_dir / 'final'})")
    return 0


def _lost_a_rank(err: RuntimeError) -> bool:
    """Whether ``err`` is a failed collective (a peer died or timed out), not a bug of this rank."""
    import torch.distributed as dist

    text = str(err)
    return dist.is_initialized() and (
        isinstance(err, dist.DistError) or "gloo" in text.lower() or "NCCL" in text or "Timed out" in text
    )


EVAL_FLAGS = (
    # flag, config key, type, help
    ("--benchmarks", "benchmarks", str, "comma-separated: shipped names, files, or 'task'"),
    ("--n", "n", int, "samples per problem"),
    ("--temperature", "temperature", float, "0 decodes greedily (n = 1)"),
    ("--top-p", "top_p", float, "nucleus sampling mass"),
    ("--top-k", "top_k", int, "top-k sampling (0 disables)"),
    ("--template", "template", str, "prompt template (r1, r1_zero, r1_chat, qwen_boxed, chat, plain)"),
    ("--max-new-tokens", "max_new_tokens", int, "generation budget per completion"),
    ("--num-problems", "num_problems", int, "evaluate the first N problems of each benchmark"),
    ("--checkpoint", "checkpoint", str, "run directories: final, latest, all, or a step number"),
    ("--completions", "completions", str, "re-score this file of completions instead of generating"),
    ("--output", "output_dir", str, "output directory"),
    ("--seed", "seed", int, "sampling seed"),
    ("--extraction", "extraction", str, "--completions: answer, or last_number (unmarked: last number)"),
)


def _eval(args: argparse.Namespace) -> int:
    from rlvr.evaluation.config import load_eval_config
    from rlvr.evaluation.run import run_evaluation

    config_path, model, overrides = None, None, []
    for item in args.items:
        if "=" in item:
            overrides.append(item)
        elif item.endswith((".yaml", ".yml")):
            config_path = item
        elif model is None:
            model = item
        else:
            raise RLVRError(f"two models given ({model!r} and {item!r}); evaluate one at a time")
    flags = {key: getattr(args, key) for _, key, _, _ in EVAL_FLAGS}
    if flags["benchmarks"] is not None:
        flags["benchmarks"] = [b.strip() for b in flags["benchmarks"].split(",") if b.strip()]
    flags["model"] = model
    flags["overwrite"] = True if args.overwrite else None
    run_evaluation(load_eval_config(config_path, overrides, flags))
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from rlvr.config import format_config, load_config

    path, overrides = _split_config_and_overrides(args.items)
    print(format_config(load_config(path, overrides)))
    return 0


def _presets(args: argparse.Namespace) -> int:
    from rlvr.algorithms.validation import describe_presets

    print(describe_presets())
    return 0


def _plan(args: argparse.Namespace) -> int:
    from rlvr.config import load_config
    from rlvr.memory_plan import format_plan, parse_memory_size, plan_for_config

    device_memory = parse_memory_size(args.device_memory) if args.device_memory is not None else None
    path, overrides = _split_config_and_overrides(args.items)
    config = load_config(path, overrides)
    plan = plan_for_config(config, nproc=args.nproc, device=args.device, device_memory=device_memory)
    print(format_plan(plan))
    return 0


def _toy_build(args: argparse.Namespace) -> int:
    import dataclasses

    from rlvr.toy.build import build_toy, toy_named

    toy = toy_named(args.name)
    build_toy(args.output, dataclasses.replace(toy.config, seed=args.seed), name=args.name)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from rlvr.plot import plot_run

    for png in plot_run(args.run_dir):
        print(png)
    return 0


def _merge(args: argparse.Namespace) -> int:
    from rlvr.stages.merge import load_merge_config, merge_models

    config_path, models, overrides = None, [], []
    for item in args.items:
        if "=" in item:
            overrides.append(item)
        elif item.endswith((".yaml", ".yml")):
            config_path = item
        else:
            models.append(item)
    flags = {
        "models": models or None,
        "weights": args.weights,
        "base": args.base,
        "output": args.output,
        "dtype": args.dtype,
        "max_shard_size": args.max_shard_size,
        "normalize": True if args.normalize else None,
        "overwrite": True if args.overwrite else None,
    }
    result = merge_models(load_merge_config(config_path, overrides, flags))
    weights = [f for f in result.files if f.endswith(".safetensors")]
    rest = ", ".join(f for f in result.files if f not in weights)
    print(f"wrote {result.output}: {result.tensors} tensors in {len(weights)} safetensors file(s); {rest}")
    return 0


SAMPLE_FLAGS = (
    # flag, config key, type, help
    ("--train-config", "train_config", str, "training config or run directory whose task is sampled"),
    ("--problems", "problems", str, "a .jsonl/.json/.parquet problems file instead of a task"),
    ("--split", "split", str, "the task's split: train (default) or test"),
    ("--n", "n", int, "samples per problem"),
    ("--temperature", "temperature", float, "0 decodes greedily (n = 1)"),
    ("--select", "select", str, "correct, first_correct, shortest_correct, best, or pairs"),
    ("--pairs", "pairs", str, "select=pairs: shortest_vs_longest_correct or correct_vs_wrong"),
    ("--max-per-problem", "max_per_problem", int, "most rows kept per problem"),
    ("--num-problems", "num_problems", int, "sample the first N problems"),
    ("--max-new-tokens", "max_new_tokens", int, "generation budget per completion"),
    ("--template", "template", str, "prompt template (default: the task's)"),
    ("--output", "output_dir", str, "output directory"),
    ("--seed", "seed", int, "sampling seed"),
)


def _sample(args: argparse.Namespace) -> int:
    from rlvr.stages.sample import load_sample_config, run_sample

    config_path, model, overrides = None, None, []
    for item in args.items:
        if "=" in item:
            overrides.append(item)
        elif item.endswith((".yaml", ".yml")):
            config_path = item
        elif model is None:
            model = item
        else:
            raise RLVRError(f"two models given ({model!r} and {item!r}); sample from one teacher")
    flags = {key: getattr(args, key) for _, key, _, _ in SAMPLE_FLAGS}
    flags["model"] = model
    flags["overwrite"] = True if args.overwrite else None
    run_sample(load_sample_config(config_path, overrides, flags))
    return 0


def _sample_settings_help() -> str:
    from rlvr.config import describe
    from rlvr.stages.sample import SampleConfig

    return "\n".join(f"{key} = {value!r}    # {doc}" for key, value, doc in describe(None, SampleConfig))


def _sft(args: argparse.Namespace) -> int:
    from rlvr.config import to_dict
    from rlvr.distributed import rank, restart_count, shutdown
    from rlvr.stages.sft import load_sft_config
    from rlvr.training.run_dir import check_run_dir

    path, overrides = _split_config_and_overrides(args.items)
    config = load_sft_config(path, overrides)  # every key checked before any data or model loads
    # A group torchrun restarted (--max-restarts) resumes from the last checkpoint, never overwrites.
    flags = {
        "resume": args.resume or restart_count() > 0,
        "overwrite": args.overwrite and restart_count() == 0,
    }
    check_run_dir(config.logging.output_dir, to_dict(config), **flags)
    from rlvr.stages.sft import train_sft

    finished = False
    try:
        result = train_sft(config, **flags)
        finished = True
    finally:
        shutdown(synchronize=finished)
    if rank() != 0:
        return 0
    if result.interrupted:
        print(f"stopped at step {result.steps}; continue with: rlvr sft {' '.join(args.items)} --resume")
        return 130
    print(f"run directory: {result.output_dir} (final model in {result.output_dir / 'final'})")
    return 0


def _sft_settings_help() -> str:
    from rlvr.config import describe
    from rlvr.stages.sft import SFTConfig

    return "\n".join(f"{key} = {value!r}    # {doc}" for key, value, doc in describe(None, SFTConfig))


def _dpo(args: argparse.Namespace) -> int:
    from rlvr.config import to_dict
    from rlvr.distributed import rank, restart_count, shutdown
    from rlvr.stages.dpo import load_dpo_config
    from rlvr.training.run_dir import check_run_dir

    path, overrides = _split_config_and_overrides(args.items)
    config = load_dpo_config(path, overrides)  # every key checked before any data or model loads
    # A group torchrun restarted (--max-restarts) resumes from the last checkpoint, never overwrites.
    flags = {
        "resume": args.resume or restart_count() > 0,
        "overwrite": args.overwrite and restart_count() == 0,
    }
    check_run_dir(config.logging.output_dir, to_dict(config), **flags)
    from rlvr.stages.dpo import train_dpo

    finished = False
    try:
        result = train_dpo(config, **flags)
        finished = True
    finally:
        shutdown(synchronize=finished)
    if rank() != 0:
        return 0
    if result.interrupted:
        print(f"stopped at step {result.steps}; continue with: rlvr dpo {' '.join(args.items)} --resume")
        return 130
    print(f"run directory: {result.output_dir} (final model in {result.output_dir / 'final'})")
    return 0


def _dpo_settings_help() -> str:
    from rlvr.config import describe
    from rlvr.stages.dpo import DPOConfig

    return "\n".join(f"{key} = {value!r}    # {doc}" for key, value, doc in describe(None, DPOConfig))


def _pipeline(args: argparse.Namespace) -> int:
    from rlvr.stages.pipeline import Interrupted, run_pipeline

    try:
        run_pipeline(args.file, start=args.start, root=args.dir)
    except Interrupted:
        print(f"stopped; run the same command again to continue: rlvr pipeline {args.file}")
        return 130
    return 0


def _merge_settings_help() -> str:
    from rlvr.config import describe
    from rlvr.stages.merge import MergeConfig

    return "\n".join(f"{key} = {value!r}    # {doc}" for key, value, doc in describe(None, MergeConfig))


def _eval_settings_help() -> str:
    from rlvr.config import describe
    from rlvr.evaluation.config import EvalRunConfig

    return "\n".join(f"{key} = {value!r}    # {doc}" for key, value, doc in describe(None, EvalRunConfig))


def build_parser() -> argparse.ArgumentParser:
    from rlvr.config import format_config

    parser = argparse.ArgumentParser(
        prog="rlvr", description="Reinforcement learning with verifiable rewards."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train a policy with RL",
        description="Train with RL. CONFIG is a YAML file; key=value items override it "
        "(for example algorithm.eps_high=0.28). Settings, with defaults and meanings:",
        epilog=format_config(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("items", nargs="*", metavar="CONFIG | key=value")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in logging.output_dir from its latest checkpoint; only the settings "
        "that do not change what it trains may differ (logging.*, eval.every, training.steps, checkpoint.*, ...)",
    )
    train.add_argument(
        "--force-resume",
        action="store_true",
        help="--resume even with settings that change what the run trains (the differences are logged)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run that logging.output_dir holds and start a new one there",
    )
    train.add_argument("--no-plot", dest="plot", action="store_false", help="do not write plots at the end")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser(
        "eval",
        help="evaluate a model, a run's checkpoints, or a file of completions",
        description="Evaluate MODEL_OR_RUN_DIR (a model directory, hub name, 'toy', or an rlvr train run "
        "directory) on benchmarks: pass@k, maj@k, avg@n. With an environment (env.name=calculator, or a run "
        "trained with one), n multi-turn trajectories per problem are scored by its verdict: pass@k, avg@n, "
        "turns, tool calls, truncations, environment errors. A YAML file and key=value items set any of the "
        "settings below; flags win over both. Settings, with defaults and meanings:",
        epilog=_eval_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("items", nargs="*", metavar="MODEL_OR_RUN_DIR | CONFIG.yaml | key=value")
    for flag, key, kind, text in EVAL_FLAGS:
        evaluate.add_argument(flag, dest=key, type=kind, default=None, help=text)
    evaluate.add_argument(
        "--overwrite", action="store_true", help="discard samples of other settings in the output directory"
    )
    evaluate.set_defaults(func=_eval)

    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print every setting of a config with its meaning")
    show.add_argument("items", nargs="*", metavar="CONFIG | key=value")
    show.set_defaults(func=_config_show)

    presets = sub.add_parser("presets", help="list the named recipes")
    presets.set_defaults(func=_presets)

    plan = sub.add_parser(
        "plan",
        help="estimate the memory per rank of a training run",
        description="Estimate the device memory one rank of `rlvr train CONFIG` needs, phase by phase "
        "(rollout, update, optimizer step, critic update), from the config and the model's config.json "
        "alone; with --device-memory, say whether it fits. See docs/distributed.md.",
    )
    plan.add_argument("items", nargs="*", metavar="CONFIG | key=value")
    plan.add_argument("--nproc", type=int, default=1, help="ranks (torchrun --nproc_per_node); default 1")
    plan.add_argument("--device-memory", default=None, help="memory of one device: 80GB, 80GiB, 24000MB, ...")
    plan.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="default: training.device, auto counting as cuda (bfloat16 weights for model.dtype auto)",
    )
    plan.set_defaults(func=_plan)

    toy = sub.add_parser("toy", help="the embedded tiny model")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    build = toy_sub.add_parser("build", help="build and warm-start a tiny model from nothing")
    build.add_argument(
        "name",
        nargs="?",
        default="toy",
        help="toy: 2-digit addition, terse; toy-long: answers of varying length; toy-tool: 4-5 digit "
        "addition, with a calculator it rarely calls",
    )
    build.add_argument("--output", default=None, help="directory (default: the shipped model's)")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=_toy_build)

    merge = sub.add_parser(
        "merge",
        help="average models of one architecture, or add their task vectors to a base",
        description="Merge MODEL_A MODEL_B ... (model directories, 'toy', or rlvr train run directories) into "
        "one model directory: the weighted average sum_i w_i model_i, or with --base, task arithmetic "
        "base + sum_i w_i (model_i - base). A YAML file and key=value items set any of the settings "
        "below; flags win over both. See docs/pipeline.md. Settings, with defaults and meanings:",
        epilog=_merge_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("items", nargs="*", metavar="MODEL | CONFIG.yaml | key=value")
    merge.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per model")
    merge.add_argument("--base", default=None, help="task arithmetic on this base model")
    merge.add_argument("--output", default=None, help="the model directory to write")
    merge.add_argument(
        "--dtype",
        choices=("input", "float32", "bfloat16", "float16"),
        default=None,
        help="dtype of the merged weights (default: input, each tensor's stored dtype)",
    )
    merge.add_argument("--max-shard-size", default=None, help="largest safetensors file (default 5GB)")
    merge.add_argument("--normalize", action="store_true", help="divide the weights by their sum")
    merge.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    merge.set_defaults(func=_merge)

    sample = sub.add_parser(
        "sample",
        help="rejection sampling: a teacher's graded samples, kept by a rule, as SFT or preference data",
        description="Sample n completions per problem from MODEL_OR_RUN_DIR (a model directory, hub name, "
        "'toy', or an rlvr train run directory) on a training task or a problems file, grade them with the "
        "task's rewards, and keep some by a rule (correct, first_correct, shortest_correct, best, pairs): "
        "writes sft.jsonl (prompt, completion) or pairs.jsonl (prompt, chosen, rejected) and summary.json; "
        "an interrupted run resumes. A YAML file and key=value items set any of the settings below; flags "
        "win over both. See docs/pipeline.md. Settings, with defaults and meanings:",
        epilog=_sample_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sample.add_argument("items", nargs="*", metavar="MODEL_OR_RUN_DIR | CONFIG.yaml | key=value")
    for flag, key, kind, text in SAMPLE_FLAGS:
        sample.add_argument(flag, dest=key, type=kind, default=None, help=text)
    sample.add_argument(
        "--overwrite", action="store_true", help="discard samples of other settings in the output directory"
    )
    sample.set_defaults(func=_sample)

    sft = sub.add_parser(
        "sft",
        help="supervised fine-tuning on prompt/completion pairs or chat conversations",
        description="Fine-tune a model on the completions (assistant turns) of a data file. CONFIG is a "
        "YAML file; key=value items override it (for example training.packing=true). See "
        "docs/pipeline.md. Settings, with defaults and meanings:",
        epilog=_sft_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sft.add_argument("items", nargs="*", metavar="CONFIG | key=value")
    sft.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in logging.output_dir from its latest checkpoint",
    )
    sft.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run that logging.output_dir holds and start again",
    )
    sft.set_defaults(func=_sft)

    dpo = sub.add_parser(
        "dpo",
        help="preference optimisation (DPO, IPO, SimPO) on prompt/chosen/rejected rows",
        description="Train a model to prefer the chosen completion of each row to the rejected one, "
        "against a frozen reference (DPO, IPO) or none (SimPO). CONFIG is a YAML file; key=value items "
        "override it (for example loss.beta=0.2). Reads rlvr sample's pairs.jsonl as it is. See "
        "docs/pipeline.md. Settings, with defaults and meanings:",
        epilog=_dpo_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dpo.add_argument("items", nargs="*", metavar="CONFIG | key=value")
    dpo.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in logging.output_dir from its latest checkpoint",
    )
    dpo.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run that logging.output_dir holds and start again",
    )
    dpo.set_defaults(func=_dpo)

    pipeline = sub.add_parser(
        "pipeline",
        help="run named stages (sft, train, sample, dpo, merge, eval) in order, each one's outputs the next's inputs",
        description="Run the stages of the pipeline FILE in order, each in DIR/NAME; a stage refers to an earlier "
        "one's outputs as ${stages.NAME.KEY}. A stage already done is not redone, an interrupted one resumes, "
        "and one whose settings changed is refused. See docs/pipeline.md.",
    )
    pipeline.add_argument("file", metavar="FILE")
    pipeline.add_argument(
        "--from",
        dest="start",
        default=None,
        metavar="STAGE",
        help="redo STAGE and the stages after it (what the pipeline wrote for them is deleted first)",
    )
    pipeline.add_argument("--dir", default=None, help="run in this directory instead of the file's 'dir'")
    pipeline.set_defaults(func=_pipeline)

    plot = sub.add_parser("plot", help="PNG curves of a run's metrics")
    plot.add_argument("run_dir")
    plot.set_defaults(func=_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Flags may come before, between or after the key=value items.
    args, rest = parser.parse_known_args(argv)
    if rest:
        if not hasattr(args, "items") or any(item.startswith("-") for item in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.items = [*args.items, *rest]
    try:
        return int(args.func(args) or 0)
    except RLVRError as e:
        print(f"rlvr: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
