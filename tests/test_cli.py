import subprocess
import sys

from rlvr.cli import main


def test_presets_lists_every_recipe(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("grpo", "dr_grpo", "dapo", "vapo", "ppo", "kimi", "gspo", "cispo", "clip_cov", "kl_cov"):
        assert name in out


def test_config_show_accepts_flags_anywhere_and_overrides(capsys):
    assert main(["config", "show", "recipes/quickstart.yaml", "optim.lr=0.5"]) == 0
    assert "optim.lr = 0.5" in capsys.readouterr().out


def test_bad_key_is_a_one_line_error_before_any_model_loads(capsys):
    assert main(["train", "recipes/quickstart.yaml", "algorithm.eps_hgh=0.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlvr: error: unknown setting 'algorithm.eps_hgh'") and "Traceback" not in err


def test_train_help_lists_settings_with_defaults():
    out = subprocess.run(
        [sys.executable, "-m", "rlvr", "train", "--help"], capture_output=True, text=True
    ).stdout
    assert "rollout.samples_per_prompt = 8" in out and "algorithm.eps_high = 0.2" in out


def test_a_second_train_into_the_same_directory_names_the_flags_and_overwrite_starts_again(tmp_path, capsys):
    """What a user who runs the quickstart twice sees: a refusal naming --resume and --overwrite."""
    run = tmp_path / "quickstart"
    command = [
        "train",
        "recipes/quickstart.yaml",
        "training.steps=1",
        "task.params.num_train=16",
        "task.params.num_test=4",
        "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=8",
        "logging.sample_every=0",
        "logging.tensorboard=false",
        f"logging.output_dir={run}",
        "--no-plot",
    ]
    assert main(command) == 0
    capsys.readouterr()
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"rlvr: error: {run} already holds a run (finished: checkpoint at step 1 of 1)" in err
    assert "Pass --resume to continue it, --overwrite to delete it and start again" in err
    assert "Traceback" not in err
    assert main([*command, "--resume", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert main([*command, "--overwrite"]) == 0
    assert f"--overwrite: deleted the run that was in {run}" in capsys.readouterr().out
